//! The PostgreSQL store: the production backend.
//!
//! Workers claim jobs with `FOR UPDATE SKIP LOCKED`, so any number of processes can
//! fetch from one table without waiting on each other or taking the same job. Every
//! write to a running job names its lease token, so a worker that lost its lease
//! (rescued after a crash or a network cut) cannot overwrite what came after it.

mod admin;
mod counts;
mod db;
mod events;
mod insert;
mod list;
mod migrate;
mod row;
mod work;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool, Row};
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use self::db::Db;
use self::events::Notifier;
use self::row::{JOB_COLUMNS, JobRow};
use crate::error::{Error, Result};
use crate::job::{Job, JobId, JobStatus, TenantId};
use crate::new_job::NewJob;
use crate::store::coalesce::{Coalescer, MAX_COALESCED_JOBS, Request};
use crate::store::{
    ApiKeyInfo, Completion, Event, FetchParams, Inserted, JobCount, JobPage, Lease, LeaseStatus,
    LeasedJob, ListParams, MinuteStat, ProgressUpdate, RecentStats, RescueParams, Rescued, Store,
    Tenant, check_batch,
};

pub use self::events::{CANCEL_CHANNEL, JOBS_CHANNEL};

/// A pool of up to `max` connections made with `options`, opened only when used.
///
/// Like the store's own pool, unless `ping` it hands connections out without a ping first
/// (`test_before_acquire(false)`): the ping is a round trip per call, a fifth of a single
/// enqueue's time. A connection the server dropped fails the one call that finds it
/// (which the worker retries and the API answers with 503) and is replaced. The lease
/// renewals' pool pings: a renewal comes every few seconds, and one that fails on a stale
/// connection (every one is stale after a failover) stops the worker's fetching for an
/// interval.
fn side_pool(options: &PgConnectOptions, max: u32, ping: bool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(ping)
        .connect_lazy_with(options.clone())
}

/// Up to four shared inserts in flight; more callers wait and share them.
fn coalescer(pool: Db) -> Coalescer {
    Coalescer::start(
        4,
        Arc::new(move |requests: Vec<Request>| {
            let pool = pool.clone();
            Box::pin(async move {
                let lens: Vec<usize> = requests.iter().map(|r| r.jobs.len()).collect();
                let tenants: Vec<TenantId> = requests
                    .iter()
                    .flat_map(|r| std::iter::repeat_n(r.tenant, r.jobs.len()))
                    .collect();
                let jobs: Vec<NewJob> = requests.into_iter().flat_map(|r| r.jobs).collect();
                let mut inserted = insert::insert_atomically(&pool, &tenants, &jobs).await?;
                let mut answers = Vec::with_capacity(lens.len());
                for n in lens {
                    let rest = inserted.split_off(n);
                    answers.push(std::mem::replace(&mut inserted, rest));
                }
                Ok(answers)
            })
        }),
    )
}

/// A pool of up to `max_connections` once its first connection is made: waits up to 5 s
/// (a database that is still starting up), but afterwards a call waits at most
/// [`ACQUIRE_TIMEOUT`] for a connection, so that while the database is down callers get
/// `Error::Database` at once (the API a 503) rather than hanging: sqlx keeps retrying a
/// refused connection until that timeout.
async fn first_connection(options: PgConnectOptions, max_connections: u32) -> Result<PgPool> {
    let pool = side_pool(&options, max_connections, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match pool.acquire().await {
            Ok(_) => return Ok(pool),
            // Refused connections and a server still starting make the pool time out.
            Err(sqlx::Error::PoolTimedOut) if tokio::time::Instant::now() < deadline => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Checks that `direct` (the renewals' pool) reaches the database and schema that
/// `pooled` does: on other tables the renewals would find no lease and stop every job.
async fn same_tables(pooled: &PgPool, direct: &PgPool) -> Result<()> {
    const WHERE: &str = "select current_database()::text, coalesce(current_schema()::text, '')";
    let mut found = Vec::new();
    for pool in [pooled, direct] {
        // A plain string is a simple query: nothing named, fine behind the pooler.
        let row = pool.fetch_one(WHERE).await?;
        found.push((row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?));
    }
    let (through_pooler, straight) = (&found[0], &found[1]);
    if through_pooler != straight {
        return Err(Error::Database(sqlx::Error::Configuration(
            format!(
                "the direct URL reaches database {:?}, schema {:?}, but the pooler {:?}, schema {:?}: \
                 give the direct URL the same database and search_path",
                straight.0, straight.1, through_pooler.0, through_pooler.1
            )
            .into(),
        )));
    }
    Ok(())
}

/// The longest a call of a store made by [`PgStore::connect`] waits for a pooled
/// connection. Short, because while the database is down every call waits this long
/// before it fails; long enough for a busy pool to hand a connection over.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections the store keeps for workers, beside the caller's pool (see [`PgStore`]).
pub const WORK_CONNECTIONS: u32 = 10;

/// Connections the store keeps for lease renewals and progress, beside the others.
pub const LEASE_CONNECTIONS: u32 = 2;

/// The PostgreSQL store. Cheap to clone; clones share the pool and the background tasks,
/// which stop when the last clone is dropped.
///
/// **Connections.** Besides the pool it is given (or makes), used for enqueues, reads and
/// the API, the store opens on demand up to [`WORK_CONNECTIONS`] for workers (fetch,
/// complete, release, maintenance, wake-ups) and [`LEASE_CONNECTIONS`] for lease renewals,
/// with the same connect options. So API traffic, however heavy, cannot make a worker's
/// renewal wait for a connection and lose its lease. Count them when sizing
/// `max_connections` on the server (or a pooler). Behind a transaction pooler the
/// renewals and LISTEN take the direct URL, if one is given
/// ([`connect_through_pooler`](Self::connect_through_pooler)).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The caller's pool: enqueues, reads and the API.
    pool: Db,
    /// Workers' fetches, completions and releases, maintenance, and wake-ups: apart from
    /// `pool`, so that however many API requests wait for a connection, work goes on.
    work: Db,
    /// Lease renewals and progress writes alone: a renewal that waits too long loses the
    /// lease and makes the job run twice, so it queues behind nothing but them. Behind a
    /// pooler, on the direct URL if one was given.
    leases: Db,
    /// Where LISTEN connects: `work`'s pool, or behind a pooler the direct URL if one was
    /// given; none, and workers poll.
    listen: Option<PgPool>,
    events: broadcast::Sender<Event>,
    notifier: Arc<Notifier>,
    coalescer: Coalescer,
    listener_started: OnceLock<()>,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl PgStore {
    /// Connects with a pool of up to `max_connections` and starts the wake-up sender.
    ///
    /// Waits up to 5 s for the first connection (a database that is still starting up),
    /// but afterwards a call waits at most [`ACQUIRE_TIMEOUT`] for a connection, so that
    /// while the database is down callers get `Error::Database` at once (the API a 503)
    /// rather than hanging.
    pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<Self> {
        let pool = first_connection(options, max_connections).await?;
        Ok(Self::from_pool(pool))
    }

    /// [`connect`](Self::connect) through a transaction pooler (PgBouncer with
    /// `pool_mode = transaction`): each statement is unnamed and runs in a transaction of
    /// its own, three round trips more than a statement a direct connection keeps.
    ///
    /// `direct`, a URL straight to the server, carries what a pooler cannot: LISTEN (one
    /// connection), for wake-ups as fast as without the pooler, and the lease renewals (up
    /// to [`LEASE_CONNECTIONS`]), so that however many API requests hold the pooler's
    /// server connections, a renewal never waits behind them. Without it, workers find new
    /// jobs at each poll (`WorkerConfig::poll_interval`, 1 s by default) and cancellations
    /// at the next lease renewal, and renewals queue at the pooler with everything else:
    /// give the pooler room, or a flood of slow API calls can cost running jobs their
    /// leases. Settings made with startup options (`search_path`) do not pass a pooler:
    /// set them on the role or database (`alter role ... set search_path`).
    pub async fn connect_through_pooler(
        options: PgConnectOptions,
        max_connections: u32,
        direct: Option<PgConnectOptions>,
    ) -> Result<Self> {
        let pool = first_connection(options, max_connections).await?;
        let checked = direct.is_some();
        let store = Self::build(pool, true, direct);
        if checked {
            same_tables(&store.inner.pool.pool, &store.inner.leases.pool).await?;
        }
        Ok(store)
    }

    /// Uses a pool the application already has (the one its own transactions use).
    /// Must be called inside a Tokio runtime.
    ///
    /// The workers' connections (see [`PgStore`]) are made with this pool's connect
    /// options, not its pool options: a setting made in `after_connect` (a `search_path`,
    /// a role) is not applied to them, so give it in the connect options instead
    /// (`PgConnectOptions::options`).
    pub fn from_pool(pool: PgPool) -> Self {
        Self::build(pool, false, None)
    }

    /// `pooled`: `pool` goes through a transaction pooler, and `direct` (if any) does not.
    fn build(pool: PgPool, pooled: bool, direct: Option<PgConnectOptions>) -> Self {
        let stop = CancellationToken::new();
        let db = |pool| Db { pool, pooled };
        let options = pool.connect_options();
        let work = db(side_pool(&options, WORK_CONNECTIONS, false));
        let (leases, listen) = match (pooled, direct) {
            (false, _) => (
                db(side_pool(&options, LEASE_CONNECTIONS, true)),
                Some(work.pool.clone()),
            ),
            (true, Some(direct)) => (
                Db {
                    pool: side_pool(&direct, LEASE_CONNECTIONS, true),
                    pooled: false,
                },
                Some(side_pool(&direct, 1, false)),
            ),
            // A ping would queue at the pooler too, and a pooler hides a failover anyway.
            (true, None) => (db(side_pool(&options, LEASE_CONNECTIONS, false)), None),
        };
        let notifier = Notifier::new();
        tokio::spawn(notifier.clone().run(work.clone(), stop.clone()));
        tokio::spawn(counts::fold_forever(work.clone(), stop.clone()));
        let (events, _) = broadcast::channel(4096);
        let pool = db(pool);
        let coalescer = coalescer(pool.clone());
        PgStore {
            inner: Arc::new(Inner {
                pool,
                work,
                leases,
                listen,
                events,
                notifier,
                coalescer,
                listener_started: OnceLock::new(),
                _stop_on_drop: stop.clone().drop_guard(),
                stop,
            }),
        }
    }

    /// The pool, for the application's own queries and transactions. Behind a transaction
    /// pooler ([`connect_through_pooler`](Self::connect_through_pooler)) your statements on
    /// it must be unnamed (`.persistent(false)`) and inside a transaction, for the reasons
    /// given there.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool.pool
    }

    /// Enqueues inside the caller's transaction: the jobs exist if and only if it commits.
    /// The wake-up is a NOTIFY in that transaction, which PostgreSQL delivers on commit.
    ///
    /// The connection may go through a transaction pooler, so the statements are unnamed
    /// (one round trip more each than kept ones), and they must not run outside a
    /// transaction: on a connection in none they run in one of their own. sqlx counts only
    /// the transactions it began, so when it knows of none the server is asked (a
    /// savepoint, which a transaction begun with a plain `BEGIN` accepts): one round trip.
    pub async fn job_insert_many_in(
        conn: &mut PgConnection,
        tenant: TenantId,
        jobs: &[NewJob],
    ) -> Result<Vec<Inserted>> {
        check_batch(jobs)?;
        if conn.is_in_transaction() {
            return Self::insert_and_notify(conn, tenant, jobs).await;
        }
        // A plain string runs as a simple query: no statement to name or keep.
        match conn.execute("savepoint forklift_enqueue").await {
            Ok(_) => {
                let inserted = Self::insert_and_notify(conn, tenant, jobs).await?;
                conn.execute("release savepoint forklift_enqueue").await?;
                Ok(inserted)
            }
            // 25P01: no transaction block.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("25P01") => {
                let mut tx = conn.begin().await?;
                let inserted = Self::insert_and_notify(&mut tx, tenant, jobs).await?;
                tx.commit().await?;
                Ok(inserted)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn insert_and_notify(
        conn: &mut PgConnection,
        tenant: TenantId,
        jobs: &[NewJob],
    ) -> Result<Vec<Inserted>> {
        let inserted = insert::insert_many(conn, tenant, jobs).await?;
        let queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
        sqlx::query("select pg_notify($1, q) from (select distinct unnest($2::text[]) q) s")
            .persistent(false) // the caller's connection may go through a pooler
            .bind(JOBS_CHANNEL)
            .bind(&queues)
            .execute(&mut *conn)
            .await?;
        Ok(inserted)
    }

    fn wake_queues<'a>(&self, queues: impl IntoIterator<Item = &'a str>) {
        let distinct = crate::store::send_jobs_available(&self.inner.events, queues);
        if !distinct.is_empty() {
            self.inner.notifier.jobs_available(distinct);
        }
    }

    async fn job_get_any(&self, tenant: TenantId, id: JobId) -> Result<Option<Job>> {
        let row: Option<JobRow> = sqlx::query_as(&format!(
            "select {JOB_COLUMNS} from forklift_jobs where id = $1 and tenant_id = $2"
        ))
        .bind(id.0)
        .bind(tenant.0)
        .fetch_optional(&self.inner.pool)
        .await?;
        Ok(row.map(JobRow::into_job))
    }

    /// After a guarded update matched no row: unknown job, or one in the wrong status.
    async fn conflict_or_not_found(&self, tenant: TenantId, id: JobId, action: &str) -> Error {
        crate::store::conflict_or_not_found(self.job_get_any(tenant, id).await, action)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        migrate::run(&self.inner.pool).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("select 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    async fn job_insert_many(&self, tenant: TenantId, jobs: &[NewJob]) -> Result<Vec<Inserted>> {
        check_batch(jobs)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let inserted = if jobs.len() <= MAX_COALESCED_JOBS {
            self.inner.coalescer.insert(tenant, jobs.to_vec()).await?
        } else {
            insert::insert_atomically(&self.inner.pool, &vec![tenant; jobs.len()], jobs).await?
        };
        self.wake_queues(
            inserted
                .iter()
                .filter(|i| i.inserted)
                .map(|i| i.job.queue.as_str()),
        );
        Ok(inserted)
    }

    async fn job_get(&self, tenant: TenantId, id: JobId) -> Result<Job> {
        self.job_get_any(tenant, id).await?.ok_or(Error::NotFound)
    }

    async fn job_list(&self, tenant: TenantId, p: &ListParams) -> Result<JobPage> {
        list::list(&self.inner.pool, tenant, &p.validated()?).await
    }

    async fn job_cancel(&self, tenant: TenantId, id: JobId) -> Result<Job> {
        // One statement for both cases: a queued job ends now; a running one is flagged
        // and its worker is told, and the worker's completion (or the rescuer) ends it.
        let row: Option<JobRow> = sqlx::query_as(&format!(
            "update forklift_jobs set
                status = case when status = 'QUEUED' then 'CANCELLED' else status end,
                completed_at = case when status = 'QUEUED' then now() else completed_at end,
                cancel_requested = (status = 'RUNNING'),
                updated_at = now()
             where id = $1 and tenant_id = $2 and status in ('QUEUED', 'RUNNING')
             returning {JOB_COLUMNS}"
        ))
        .bind(id.0)
        .bind(tenant.0)
        .fetch_optional(&self.inner.pool)
        .await?;
        let Some(job) = row.map(JobRow::into_job) else {
            return Err(self.conflict_or_not_found(tenant, id, "cancel").await);
        };
        if job.status == JobStatus::Running {
            let _ = self
                .inner
                .events
                .send(Event::CancelRequested { job_id: id });
            self.inner.notifier.cancel_requested(id);
        }
        Ok(job)
    }

    async fn job_retry(&self, tenant: TenantId, id: JobId) -> Result<Job> {
        let row: std::result::Result<Option<JobRow>, sqlx::Error> = sqlx::query_as(&format!(
            "update forklift_jobs set
                status = 'QUEUED', attempt = 0, progress = 0, run_at = now(), cancel_requested = false,
                result = null, result_url = null,
                started_at = null, completed_at = null, updated_at = now()
             where id = $1 and tenant_id = $2 and status in ('FAILED', 'PARTIAL_SUCCESS', 'CANCELLED')
             returning {JOB_COLUMNS}"
        ))
        .bind(id.0)
        .bind(tenant.0)
        .fetch_optional(&self.inner.pool)
        .await;
        let row = match row {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(Error::Conflict {
                    status: self.job_get(tenant, id).await?.status,
                    message: "another unfinished job holds this job's unique_key".into(),
                });
            }
            other => other?,
        };
        let Some(job) = row.map(JobRow::into_job) else {
            return Err(self.conflict_or_not_found(tenant, id, "retry").await);
        };
        self.wake_queues([job.queue.as_str()]);
        Ok(job)
    }

    async fn job_fetch_available(&self, p: &FetchParams) -> Result<Vec<LeasedJob>> {
        work::fetch(&self.inner.work, p).await
    }

    async fn job_heartbeat_many(
        &self,
        leases: &[Lease],
        ttl: Duration,
    ) -> Result<Vec<LeaseStatus>> {
        work::heartbeat(&self.inner.leases, leases, ttl).await
    }

    async fn job_progress_many(&self, updates: &[ProgressUpdate]) -> Result<()> {
        work::progress(&self.inner.leases, updates).await
    }

    async fn job_complete_many(&self, completions: &[Completion]) -> Result<Vec<JobId>> {
        let completions = crate::store::storable(completions);
        let (accepted, requeued) = work::complete(&self.inner.work, &completions).await?;
        self.wake_queues(requeued.iter().map(String::as_str));
        Ok(accepted)
    }

    async fn job_release_many(&self, leases: &[Lease]) -> Result<u64> {
        let (n, queues) = work::release(&self.inner.work, leases).await?;
        self.wake_queues(queues.iter().map(String::as_str));
        Ok(n)
    }

    async fn job_rescue_lapsed(&self, p: &RescueParams) -> Result<Vec<Rescued>> {
        let rescued = work::rescue(&self.inner.work, p).await?;
        self.wake_queues(
            rescued
                .iter()
                .filter(|r| r.status == JobStatus::Queued)
                .map(|r| r.queue.as_str()),
        );
        Ok(rescued)
    }

    async fn job_prune_finished(&self, older_than: Duration, limit: i64) -> Result<u64> {
        let done = sqlx::query(
            "delete from forklift_jobs where id in (
                select id from forklift_jobs
                where status in ('SUCCESS', 'FAILED', 'PARTIAL_SUCCESS', 'CANCELLED')
                  and completed_at < now() - make_interval(secs => $1)
                limit $2)",
        )
        .bind(older_than.as_secs_f64())
        .bind(limit)
        .execute(&self.inner.work)
        .await?;
        Ok(done.rows_affected())
    }

    async fn queue_pause(&self, tenant: TenantId, queue: &str) -> Result<()> {
        crate::new_job::check_name("queue", queue)?;
        sqlx::query("insert into forklift_queue_pauses (tenant_id, queue) values ($1, $2) on conflict do nothing")
            .bind(tenant.0)
            .bind(queue)
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    async fn queue_resume(&self, tenant: TenantId, queue: &str) -> Result<()> {
        crate::new_job::check_name("queue", queue)?;
        sqlx::query("delete from forklift_queue_pauses where tenant_id = $1 and queue = $2")
            .bind(tenant.0)
            .bind(queue)
            .execute(&self.inner.pool)
            .await?;
        self.wake_queues([queue]);
        Ok(())
    }

    async fn leader_elect(&self, name: &str, leader_id: &str, ttl: Duration) -> Result<bool> {
        // Take the role if it is free or lapsed, or extend it if it is ours; the WHERE on
        // the conflict branch makes the check and the write one atomic step.
        let won: Option<String> = sqlx::query_scalar(
            "insert into forklift_leaders (name, leader_id, elected_at, expires_at)
             values ($1, $2, now(), now() + make_interval(secs => $3))
             on conflict (name) do update set
                leader_id = excluded.leader_id,
                expires_at = excluded.expires_at,
                elected_at = case when forklift_leaders.leader_id = excluded.leader_id
                                  then forklift_leaders.elected_at else now() end
             where forklift_leaders.leader_id = excluded.leader_id or forklift_leaders.expires_at < now()
             returning leader_id",
        )
        .bind(name)
        .bind(leader_id)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.inner.work)
        .await?;
        Ok(won.is_some())
    }

    async fn leader_resign(&self, name: &str, leader_id: &str) -> Result<()> {
        sqlx::query("delete from forklift_leaders where name = $1 and leader_id = $2")
            .bind(name)
            .bind(leader_id)
            .execute(&self.inner.work)
            .await?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        let rx = self.inner.events.subscribe();
        let Some(listen) = &self.inner.listen else {
            return rx; // behind a pooler without a direct connection: workers poll
        };
        self.inner.listener_started.get_or_init(|| {
            tokio::spawn(events::listen(
                listen.clone(),
                self.inner.events.clone(),
                self.inner.stop.clone(),
                Duration::from_secs(30),
            ));
        });
        rx
    }

    async fn job_counts(&self, tenant: TenantId) -> Result<Vec<JobCount>> {
        counts::job_counts(&self.inner.pool, tenant).await
    }

    async fn queue_paused_list(&self, tenant: TenantId) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "select queue from forklift_queue_pauses where tenant_id = $1 order by queue",
        )
        .bind(tenant.0)
        .fetch_all(&self.inner.pool)
        .await?)
    }

    async fn job_stats_recent(&self, tenant: TenantId, window: Duration) -> Result<RecentStats> {
        counts::stats_recent(&self.inner.pool, tenant, window).await
    }

    async fn stats_add(&self, stats: &[MinuteStat]) -> Result<()> {
        counts::stats_add(&self.inner.work, stats).await
    }

    async fn queue_depths(&self) -> Result<Vec<JobCount>> {
        admin::queue_depths(&self.inner.pool).await
    }

    async fn tenant_create(&self, name: &str) -> Result<Tenant> {
        admin::tenant_create(&self.inner.pool, name).await
    }

    async fn tenant_list(&self) -> Result<Vec<Tenant>> {
        admin::tenant_list(&self.inner.pool).await
    }

    async fn api_key_insert(&self, tenant: TenantId, prefix: &str, key_hash: &str) -> Result<()> {
        admin::api_key_insert(&self.inner.pool, tenant, prefix, key_hash).await
    }

    async fn api_key_tenant(&self, key_hash: &str) -> Result<Option<TenantId>> {
        admin::api_key_tenant(&self.inner.pool, key_hash).await
    }

    async fn api_key_list(&self) -> Result<Vec<ApiKeyInfo>> {
        admin::api_key_list(&self.inner.pool).await
    }

    async fn api_key_revoke(&self, prefix: &str) -> Result<bool> {
        admin::api_key_revoke(&self.inner.pool, prefix).await
    }
}
