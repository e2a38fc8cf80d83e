//! Shared set-up for the engine's integration tests, on both stores: a fresh PostgreSQL
//! schema or a fresh SQLite file per test, migrated; backend-neutral helpers for the few
//! raw-SQL manipulations tests need; and the [`conformance!`] macro that runs each test
//! on both.
#![allow(dead_code, unused_macros, unused_imports)]

pub mod proxy;

use std::sync::Arc;
use std::time::Duration;

use forklift::maintenance::MaintenanceConfig;
use forklift::{Backoff, Client, Job, JobId, JobStatus, PgStore, SqliteStore, Store, WorkerConfig};
use forklift_testkit::TestSchema;
use sqlx::postgres::PgConnectOptions;
use tempfile::TempDir;

/// Instantiates tests written once as `async fn name(h: Harness)`: each name under
/// `both` as `pg::name`, `sqlite::name` and `pgbouncer::name` (PostgreSQL behind PgBouncer
/// in transaction pooling mode), and the names under `pg` or `sqlite` on that store only
/// (for what only one database has: row locks, LISTEN, a SQLite connection).
macro_rules! conformance {
    (both: [$($both:ident),* $(,)?], pg: [$($pg:ident),* $(,)?], sqlite: [$($sqlite:ident),* $(,)?] $(,)?) => {
        mod pg {
            $(#[tokio::test] async fn $both() { super::$both($crate::support::Harness::pg().await).await })*
            $(#[tokio::test] async fn $pg() { super::$pg($crate::support::Harness::pg().await).await })*
        }
        mod pgbouncer {
            $(#[tokio::test] async fn $both() { super::$both($crate::support::Harness::pgbouncer().await).await })*
        }
        mod sqlite {
            $(#[tokio::test] async fn $both() { super::$both($crate::support::Harness::sqlite().await).await })*
            $(#[tokio::test] async fn $sqlite() { super::$sqlite($crate::support::Harness::sqlite().await).await })*
        }
    };
}
pub(crate) use conformance;

/// A store through PgBouncer at `pooled`, listening straight on `direct`.
async fn pooled_store(pooled: &PgConnectOptions, direct: &TestSchema, max: u32) -> PgStore {
    PgStore::connect_through_pooler(pooled.clone(), max, Some(direct.connect_options()))
        .await
        .expect("store connects through PgBouncer")
}

/// One test's database, on one of the two stores.
pub struct Harness {
    /// The store under test.
    pub store: Arc<dyn Store>,
    backend: Backend,
}

enum Backend {
    Pg {
        /// Straight to the server: the tests' own SQL, and LISTEN behind a pooler.
        schema: TestSchema,
        store: PgStore,
        /// Where the store connects when it goes through PgBouncer.
        pooler: Option<Box<PgConnectOptions>>,
    },
    /// The directory holds the database file and goes away with the harness.
    Sqlite { dir: TempDir, store: SqliteStore },
}

impl Harness {
    /// A fresh schema on the test PostgreSQL, migrated.
    pub async fn pg() -> Harness {
        let schema = forklift_testkit::fresh_schema().await;
        let store = PgStore::from_pool(schema.pool.clone());
        store.migrate().await.expect("migrations apply");
        Harness {
            store: Arc::new(store.clone()),
            backend: Backend::Pg {
                schema,
                store,
                pooler: None,
            },
        }
    }

    /// A fresh database behind PgBouncer in transaction pooling mode, migrated through it;
    /// LISTEN connects straight to the server, as the docs advise.
    pub async fn pgbouncer() -> Harness {
        let db = forklift_testkit::fresh_pooled_database().await;
        let store = pooled_store(&db.pooled, &db.direct, 10).await;
        store
            .migrate()
            .await
            .expect("migrations apply through PgBouncer");
        Harness {
            store: Arc::new(store.clone()),
            backend: Backend::Pg {
                schema: db.direct,
                store,
                pooler: Some(Box::new(db.pooled)),
            },
        }
    }

    /// A fresh SQLite file in a temporary directory (the file backend that ships, not
    /// `:memory:`), migrated.
    pub async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store =
            SqliteStore::connect(dir.path().join("forklift.db").to_str().expect("utf-8 path"))
                .await
                .expect("SQLite store opens");
        store.migrate().await.expect("migrations apply");
        Harness {
            store: Arc::new(store.clone()),
            backend: Backend::Sqlite { dir, store },
        }
    }

    pub fn is_sqlite(&self) -> bool {
        matches!(self.backend, Backend::Sqlite { .. })
    }

    pub fn dyn_store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn client(&self) -> Client {
        Client::new(self.dyn_store())
    }

    /// A second, independent store on the same database: another process, as far as
    /// connections, locks and wake-ups go.
    pub async fn other_process(&self) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Pg {
                schema,
                pooler: Some(pooled),
                ..
            } => Arc::new(pooled_store(pooled, schema, 5).await),
            Backend::Pg { schema, .. } => Arc::new(
                PgStore::connect(schema.connect_options(), 5)
                    .await
                    .expect("second store connects"),
            ),
            Backend::Sqlite { .. } => Arc::new(
                SqliteStore::connect(&self.sqlite_path())
                    .await
                    .expect("second store opens"),
            ),
        }
    }

    pub fn pg_store(&self) -> &PgStore {
        match &self.backend {
            Backend::Pg { store, .. } => store,
            Backend::Sqlite { .. } => panic!("a PostgreSQL-only test ran on SQLite"),
        }
    }

    /// A store of its own on this PostgreSQL schema whose connections go through `proxy`.
    pub async fn store_through(&self, proxy: &proxy::Proxy, max_connections: u32) -> PgStore {
        let options = self
            .pg_schema()
            .connect_options()
            .host(&proxy.addr.ip().to_string())
            .port(proxy.addr.port());
        PgStore::connect(options, max_connections)
            .await
            .expect("store connects through the proxy")
    }

    /// Where the test PostgreSQL listens, for a proxy to forward to.
    pub fn upstream(&self) -> std::net::SocketAddr {
        let o = self.pg_schema().connect_options();
        let host = if o.get_host() == "localhost" {
            "127.0.0.1"
        } else {
            o.get_host()
        };
        format!("{host}:{}", o.get_port())
            .parse()
            .expect("the test database is on an IP address")
    }

    pub fn pg_schema(&self) -> &TestSchema {
        match &self.backend {
            Backend::Pg { schema, .. } => schema,
            Backend::Sqlite { .. } => panic!("a PostgreSQL-only test ran on SQLite"),
        }
    }

    pub fn sqlite_store(&self) -> &SqliteStore {
        match &self.backend {
            Backend::Sqlite { store, .. } => store,
            Backend::Pg { .. } => panic!("a SQLite-only test ran on PostgreSQL"),
        }
    }

    /// The SQLite database file.
    pub fn sqlite_path(&self) -> String {
        match &self.backend {
            Backend::Sqlite { dir, .. } => dir
                .path()
                .join("forklift.db")
                .to_str()
                .expect("utf-8 path")
                .to_string(),
            Backend::Pg { .. } => panic!("a SQLite-only test ran on PostgreSQL"),
        }
    }

    /// Runs SQL that both databases understand and that returns one integer.
    pub async fn scalar(&self, sql: &str) -> i64 {
        match &self.backend {
            Backend::Pg { schema, .. } => sqlx::query_scalar(sql)
                .fetch_one(&schema.pool)
                .await
                .expect(sql),
            Backend::Sqlite { store, .. } => sqlx::query_scalar(sql)
                .fetch_one(store.pool())
                .await
                .expect(sql),
        }
    }

    /// How many jobs satisfy `condition`, a WHERE clause both databases understand
    /// (`status = 'SUCCESS' and attempt = 1`; timestamps differ, so not those).
    pub async fn count_where(&self, condition: &str) -> i64 {
        self.scalar(&format!(
            "select count(*) from forklift_jobs where {condition}"
        ))
        .await
    }

    pub async fn count_jobs(&self) -> i64 {
        self.count_where("true").await
    }

    /// Makes every running job's lease lapse a second ago, except those of `except`: their
    /// workers vanished, as far as the rescuer can tell.
    pub async fn lapse_leases(&self, except: &[JobId]) {
        let except: Vec<uuid::Uuid> = except.iter().map(|id| id.0).collect();
        match &self.backend {
            Backend::Pg { schema, .. } => {
                sqlx::query(
                    "update forklift_jobs set lease_expires_at = now() - interval '1 second'
                     where status = 'RUNNING' and not (id = any($1))",
                )
                .bind(&except)
                .execute(&schema.pool)
                .await
                .expect("lapse leases");
            }
            Backend::Sqlite { store, .. } => {
                let except: Vec<String> = except.iter().map(|u| u.simple().to_string()).collect();
                sqlx::query(
                    "update forklift_jobs set lease_expires_at = ?1
                     where status = 'RUNNING' and id not in (select unhex(value) from json_each(?2))",
                )
                .bind(micros_ago(Duration::from_secs(1)))
                .bind(serde_json::to_string(&except).unwrap())
                .execute(store.pool())
                .await
                .expect("lapse leases");
            }
        }
    }

    /// Makes the database refuse, with an error, any job of `job_type` (a trigger): a
    /// failure in the middle of a batch, which validation cannot produce.
    pub async fn refuse_job_type(&self, job_type: &str) {
        match &self.backend {
            Backend::Pg { schema, .. } => {
                let sql = format!(
                    "create function forklift_test_refuse() returns trigger language plpgsql
                        as $$ begin raise exception 'refused by the test'; end $$;
                     create trigger forklift_test_refuse before insert on forklift_jobs for each row
                        when (new.job_type = '{job_type}') execute function forklift_test_refuse();"
                );
                sqlx::raw_sql(&sql)
                    .execute(&schema.pool)
                    .await
                    .expect("trigger");
            }
            Backend::Sqlite { store, .. } => {
                let sql = format!(
                    "create trigger forklift_test_refuse before insert on forklift_jobs
                     when new.job_type = '{job_type}' begin select raise(abort, 'refused by the test'); end"
                );
                sqlx::raw_sql(&sql)
                    .execute(store.pool())
                    .await
                    .expect("trigger");
            }
        }
    }

    /// Makes the database refuse, with an error, any update of a job for which a condition
    /// holds (a trigger; `old` and `new` name the row before and after): a value it cannot
    /// store, or a write that fails, which no input produces on purpose. PostgreSQL raises
    /// a data exception (SQLSTATE 22023), SQLite aborts (a constraint error).
    pub async fn refuse_updates_when(&self, pg_condition: &str, sqlite_condition: &str) {
        let sql = match &self.backend {
            Backend::Pg { .. } => format!(
                "create function forklift_test_refuse_update() returns trigger language plpgsql
                    as $$ begin raise exception 'refused by the test' using errcode = '22023'; end $$;
                 create trigger forklift_test_refuse_update before update on forklift_jobs
                    for each row when ({pg_condition}) execute function forklift_test_refuse_update();"
            ),
            Backend::Sqlite { .. } => format!(
                "create trigger forklift_test_refuse_update before update on forklift_jobs
                 when {sqlite_condition} begin select raise(abort, 'refused by the test'); end"
            ),
        };
        self.raw(&sql).await;
    }

    /// Makes PostgreSQL fail any update of a job for which `condition` holds with an error
    /// that is about no value (SQLSTATE 25006, as a read-only standby answers after a
    /// failover). Undone by [`Harness::allow_updates`].
    pub async fn fail_updates_when(&self, condition: &str) {
        self.raw(&format!(
            "create function forklift_test_refuse_update() returns trigger language plpgsql
                as $$ begin raise exception 'read-only for the test' using errcode = '25006'; end $$;
             create trigger forklift_test_refuse_update before update on forklift_jobs
                for each row when ({condition}) execute function forklift_test_refuse_update();"
        ))
        .await;
    }

    /// Undoes [`Harness::refuse_updates_when`].
    pub async fn allow_updates(&self) {
        let sql = match &self.backend {
            Backend::Pg { .. } => {
                "drop trigger forklift_test_refuse_update on forklift_jobs;
                 drop function forklift_test_refuse_update"
            }
            Backend::Sqlite { .. } => "drop trigger forklift_test_refuse_update",
        };
        self.raw(sql).await;
    }

    async fn raw(&self, sql: &str) {
        match &self.backend {
            Backend::Pg { schema, .. } => {
                sqlx::raw_sql(sql).execute(&schema.pool).await.expect(sql);
            }
            Backend::Sqlite { store, .. } => {
                sqlx::raw_sql(sql).execute(store.pool()).await.expect(sql);
            }
        }
    }

    /// Makes every queued job due now (skips a back-off).
    pub async fn make_due(&self) {
        match &self.backend {
            Backend::Pg { schema, .. } => {
                sqlx::query("update forklift_jobs set run_at = now() where status = 'QUEUED'")
                    .execute(&schema.pool)
                    .await
                    .expect("make due");
            }
            Backend::Sqlite { store, .. } => {
                sqlx::query("update forklift_jobs set run_at = ?1 where status = 'QUEUED'")
                    .bind(micros_ago(Duration::ZERO))
                    .execute(store.pool())
                    .await
                    .expect("make due");
            }
        }
    }

    /// Moves every finished job's `completed_at` back by `by`.
    pub async fn age_finished(&self, by: Duration) {
        match &self.backend {
            Backend::Pg { schema, .. } => {
                sqlx::query(
                    "update forklift_jobs set completed_at = completed_at - make_interval(secs => $1)
                     where completed_at is not null",
                )
                .bind(by.as_secs_f64())
                .execute(&schema.pool)
                .await
                .expect("age finished jobs");
            }
            Backend::Sqlite { store, .. } => {
                sqlx::query("update forklift_jobs set completed_at = completed_at - ?1 where completed_at is not null")
                    .bind(by.as_micros() as i64)
                    .execute(store.pool())
                    .await
                    .expect("age finished jobs");
            }
        }
    }
}

/// Microseconds since the epoch, `ago` before now: SQLite's stored time.
fn micros_ago(ago: Duration) -> i64 {
    chrono::Utc::now().timestamp_micros() - ago.as_micros() as i64
}

/// A worker config for tests: quick to react, no maintenance unless asked.
pub fn fast_config() -> WorkerConfig {
    WorkerConfig {
        poll_interval: Duration::from_millis(100),
        heartbeat_interval: Duration::from_millis(200),
        progress_interval: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(5),
        maintenance: None,
        ..WorkerConfig::default()
    }
}

pub fn fast_maintenance() -> MaintenanceConfig {
    MaintenanceConfig {
        leader_ttl: Duration::from_secs(3),
        rescue_interval: Duration::from_millis(200),
        rescue_backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(10),
            jitter: 0.0,
        },
        ..MaintenanceConfig::default()
    }
}

pub fn quick_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
        jitter: 0.0,
    }
}

/// Enqueues `jobs` in one call and returns their ids, in order.
pub async fn enqueue_ids(client: &Client, jobs: &[forklift::NewJob]) -> Vec<JobId> {
    let inserted = client.enqueue_many(jobs).await.expect("enqueue");
    inserted.into_iter().map(|i| i.job.job_id).collect()
}

/// Waits (up to 20 s) until the job satisfies `done`, and returns it.
pub async fn wait_for(client: &Client, id: JobId, what: &str, done: impl Fn(&Job) -> bool) -> Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let job = client.get(id).await.expect("job readable");
        if done(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; job is {job:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_status(client: &Client, id: JobId, status: JobStatus) -> Job {
    wait_for(client, id, status.as_str(), |j| j.status == status).await
}
