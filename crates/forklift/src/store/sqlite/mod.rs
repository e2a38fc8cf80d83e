//! The SQLite store: the embedded default, with PostgreSQL's semantics for one machine.
//!
//! SQLite has a single writer, so every write runs in a `BEGIN IMMEDIATE` transaction
//! on a one-connection write pool: the guard and the change of each statement cannot be
//! interleaved with another write, which is what `FOR UPDATE SKIP LOCKED` and the row
//! locks buy on PostgreSQL. Every write to a running job still names its lease token, so a
//! worker that lost its lease cannot overwrite what came after it.

mod admin;
mod insert;
mod list;
mod migrate;
mod row;
mod wake;
mod work;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::broadcast;

use self::row::{JOB_COLUMNS, JobRow, duration_micros, now_micros};
use crate::error::{Error, Result};
use crate::job::{Job, JobId, JobStatus, TenantId};
use crate::new_job::NewJob;
use crate::store::coalesce::{Coalescer, MAX_COALESCED_JOBS, Request};
use crate::store::{
    ApiKeyInfo, Completion, Event, FetchParams, Inserted, JobCount, JobPage, Lease, LeaseStatus,
    LeasedJob, ListParams, MinuteStat, ProgressUpdate, RecentStats, RescueParams, Rescued, Store,
    Tenant, check_batch,
};

/// How long a writer waits for another connection's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections, besides the one writer: WAL lets readers run alongside it.
const READERS: u32 = 4;

/// The SQLite store. Cheap to clone; clones share the connections.
///
/// **Durability.** The database runs in WAL mode with `synchronous = FULL`: each commit
/// is flushed to disk (fsync) before it returns, so a job whose enqueue returned (a 202
/// answered) survives `kill -9` of the process and a power cut alike. `NORMAL` would be
/// faster but may lose the last commits on power loss, which a job queue must not.
///
/// **Several processes on one file: safe, with wake-ups per process.** Every write runs
/// in `BEGIN IMMEDIATE`, which takes SQLite's one write lock before reading anything,
/// and a busy timeout of 5 s makes a writer wait for the lock rather than fail. So
/// several processes may share one file (a `forklift serve` and a `forklift enqueue`
/// from the command line, or two workers): each job is leased to one worker at a time, a
/// stale lease changes nothing, and a job reaches one final state, as with one process.
/// What processes do not share is wake-ups: SQLite has no LISTEN/NOTIFY, so they are
/// in-process only, and a worker learns of a job enqueued by another process at its next
/// poll (`WorkerConfig::poll_interval`, default 1 s) and of a cancel asked by another
/// process at its next lease renewal (`WorkerConfig::heartbeat_interval`, default 10 s).
/// Writers take turns, so more processes do not mean more throughput: for more than one
/// machine, or many busy processes, use PostgreSQL. The file must be on a local disk (WAL
/// needs shared memory, which network file systems do not provide).
///
/// **Connections.** One connection writes (a pool of one), so that this process's writers
/// queue in order for it instead of racing each other for the file lock; up to four more
/// read. A connection in memory is refused: the store needs a file that its connections
/// share.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: SqlitePool,
    reader: SqlitePool,
    events: Arc<broadcast::Sender<Event>>,
    /// Concurrent small enqueues share one commit (one fsync) instead of one each.
    coalescer: Coalescer,
}

/// Inserts each request's jobs in one write transaction (one commit), then wakes this
/// process's workers.
async fn write_requests(
    writer: &SqlitePool,
    events: &broadcast::Sender<Event>,
    requests: Vec<Request>,
) -> Result<Vec<Vec<Inserted>>> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let mut answers = Vec::with_capacity(requests.len());
    for r in &requests {
        answers.push(insert::insert_many(&mut tx, r.tenant, &r.jobs).await?);
    }
    tx.commit().await?;
    crate::store::send_jobs_available(
        events,
        answers
            .iter()
            .flatten()
            .filter(|i| i.inserted)
            .map(|i| i.job.queue.as_str()),
    );
    Ok(answers)
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `sqlite://PATH`, `sqlite:PATH` or a
    /// plain file path, with the settings described on [`SqliteStore`].
    pub async fn connect(path_or_url: &str) -> Result<Self> {
        let options = if path_or_url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(path_or_url)?
        } else {
            SqliteConnectOptions::new().filename(path_or_url)
        };
        Self::connect_with(options).await
    }

    /// Opens the database with the caller's options (say, a page size); the settings the
    /// guarantees rest on (WAL, `synchronous = FULL`, busy timeout, foreign keys,
    /// create if missing) are applied over them.
    pub async fn connect_with(options: SqliteConnectOptions) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Rows cross from SQLite's thread in a bounded channel (50 by default); batches
            // return hundreds of rows, which a small channel passes with a context switch
            // every few dozen.
            .row_buffer_size(1_024);
        // The writer first: its connection creates the file and switches it to WAL.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        let file: String =
            sqlx::query_scalar("select file from pragma_database_list where name = 'main'")
                .fetch_one(&writer)
                .await?;
        if file.is_empty() {
            return Err(Error::invalid(
                "database_url",
                "the SQLite store needs a database file (an in-memory database is not shared by its connections)",
            ));
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        let (events, _) = broadcast::channel(4096);
        let events = Arc::new(events);
        wake::register(&file, &events);
        // SQLite has one writer: one shared write in flight, the next gathering meanwhile.
        let coalescer = {
            let (writer, events) = (writer.clone(), events.clone());
            Coalescer::start(
                1,
                Arc::new(move |requests: Vec<Request>| {
                    let (writer, events) = (writer.clone(), events.clone());
                    Box::pin(async move { write_requests(&writer, &events, requests).await })
                }),
            )
        };
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer,
                reader,
                events,
                coalescer,
            }),
        })
    }

    /// The write pool (one connection), for the application's own transactions.
    ///
    /// A transaction that writes should start with `BEGIN IMMEDIATE`
    /// (`store.pool().begin_with("BEGIN IMMEDIATE")`), as every SQLite writer should: a
    /// plain `BEGIN` that reads first may fail with "database is locked" when it then
    /// writes. While it is open, the store's own writes wait for it: keep it short, and do
    /// not call the store's non-transactional methods from inside it (they would wait for
    /// the connection it holds).
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.writer
    }

    /// Enqueues on the caller's connection, normally inside its transaction: the jobs
    /// exist if and only if it commits. The jobs are inserted in a savepoint (a
    /// transaction of their own on a bare connection), so a batch is all or nothing.
    ///
    /// Wake-ups: this process's stores on the same file are told at once, before the
    /// caller commits. That is safe on SQLite: the caller's transaction holds the write
    /// lock since the insert, and a woken worker claims jobs in a write transaction, which
    /// waits for that lock; so it sees the jobs once committed and nothing if rolled back.
    /// A transaction held open past the busy timeout leaves the jobs to the next poll.
    pub async fn job_insert_many_in(
        conn: &mut SqliteConnection,
        tenant: TenantId,
        jobs: &[NewJob],
    ) -> Result<Vec<Inserted>> {
        check_batch(jobs)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = if conn.is_in_transaction() {
            conn.begin().await?
        } else {
            conn.begin_with("BEGIN IMMEDIATE").await?
        };
        let inserted = insert::insert_many(&mut tx, tenant, jobs).await?;
        tx.commit().await?;
        let file: String =
            sqlx::query_scalar("select file from pragma_database_list where name = 'main'")
                .fetch_one(&mut *conn)
                .await?;
        wake::jobs_available_on(
            &file,
            inserted
                .iter()
                .filter(|i| i.inserted)
                .map(|i| i.job.queue.as_str()),
        );
        Ok(inserted)
    }

    /// A write transaction: takes the write lock now, waiting for it up to the busy timeout.
    async fn write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.inner.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    fn wake_queues<'a>(&self, queues: impl IntoIterator<Item = &'a str>) {
        crate::store::send_jobs_available(&self.inner.events, queues);
    }

    async fn job_get_any(&self, tenant: TenantId, id: JobId) -> Result<Option<Job>> {
        let row: Option<JobRow> = sqlx::query_as(&format!(
            "select {JOB_COLUMNS} from forklift_jobs where id = ?1 and tenant_id = ?2"
        ))
        .bind(id.0)
        .bind(tenant.0)
        .fetch_optional(&self.inner.reader)
        .await?;
        Ok(row.map(JobRow::into_job))
    }

    /// After a guarded update matched no row: unknown job, or one in the wrong status.
    async fn conflict_or_not_found(&self, tenant: TenantId, id: JobId, action: &str) -> Error {
        crate::store::conflict_or_not_found(self.job_get_any(tenant, id).await, action)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        let mut conn = self.inner.writer.acquire().await?;
        migrate::run(&mut conn).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("select 1").execute(&self.inner.reader).await?;
        Ok(())
    }

    async fn job_insert_many(&self, tenant: TenantId, jobs: &[NewJob]) -> Result<Vec<Inserted>> {
        check_batch(jobs)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        if jobs.len() <= MAX_COALESCED_JOBS {
            return self.inner.coalescer.insert(tenant, jobs.to_vec()).await;
        }
        let answers = write_requests(
            &self.inner.writer,
            &self.inner.events,
            vec![Request {
                tenant,
                jobs: jobs.to_vec(),
            }],
        )
        .await?;
        Ok(answers.into_iter().next().unwrap_or_default())
    }

    async fn job_get(&self, tenant: TenantId, id: JobId) -> Result<Job> {
        self.job_get_any(tenant, id).await?.ok_or(Error::NotFound)
    }

    async fn job_list(&self, tenant: TenantId, p: &ListParams) -> Result<JobPage> {
        list::list(&self.inner.reader, tenant, &p.validated()?).await
    }

    async fn job_cancel(&self, tenant: TenantId, id: JobId) -> Result<Job> {
        // One statement for both cases: a queued job ends now; a running one is flagged
        // and its worker is told, and the worker's completion (or the rescuer) ends it.
        let mut tx = self.write().await?;
        let row: Option<JobRow> = sqlx::query_as(&format!(
            "update forklift_jobs set
                status = case when status = 'QUEUED' then 'CANCELLED' else status end,
                completed_at = case when status = 'QUEUED' then ?3 else completed_at end,
                cancel_requested = (status = 'RUNNING'),
                updated_at = ?3
             where id = ?1 and tenant_id = ?2 and status in ('QUEUED', 'RUNNING')
             returning {JOB_COLUMNS}"
        ))
        .bind(id.0)
        .bind(tenant.0)
        .bind(now_micros())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some(job) = row.map(JobRow::into_job) else {
            return Err(self.conflict_or_not_found(tenant, id, "cancel").await);
        };
        if job.status == JobStatus::Running {
            // This process's worker, if it runs the job, stops at once; a worker in another
            // process sees the flag at its next lease renewal.
            let _ = self
                .inner
                .events
                .send(Event::CancelRequested { job_id: id });
        }
        Ok(job)
    }

    async fn job_retry(&self, tenant: TenantId, id: JobId) -> Result<Job> {
        let mut tx = self.write().await?;
        let row: std::result::Result<Option<JobRow>, sqlx::Error> = sqlx::query_as(&format!(
            "update forklift_jobs set
                status = 'QUEUED', attempt = 0, progress = 0, run_at = ?3, cancel_requested = 0,
                result = null, result_url = null,
                started_at = null, completed_at = null, updated_at = ?3
             where id = ?1 and tenant_id = ?2 and status in ('FAILED', 'PARTIAL_SUCCESS', 'CANCELLED')
             returning {JOB_COLUMNS}"
        ))
        .bind(id.0)
        .bind(tenant.0)
        .bind(now_micros())
        .fetch_optional(&mut *tx)
        .await;
        let row = match row {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                drop(tx);
                return Err(Error::Conflict {
                    status: self.job_get(tenant, id).await?.status,
                    message: "another unfinished job holds this job's unique_key".into(),
                });
            }
            other => other?,
        };
        tx.commit().await?;
        let Some(job) = row.map(JobRow::into_job) else {
            return Err(self.conflict_or_not_found(tenant, id, "retry").await);
        };
        self.wake_queues([job.queue.as_str()]);
        Ok(job)
    }

    async fn job_fetch_available(&self, p: &FetchParams) -> Result<Vec<LeasedJob>> {
        let mut tx = self.write().await?;
        let leased = work::fetch(&mut tx, p).await?;
        tx.commit().await?;
        Ok(leased)
    }

    async fn job_heartbeat_many(
        &self,
        leases: &[Lease],
        ttl: Duration,
    ) -> Result<Vec<LeaseStatus>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let held = work::heartbeat(&mut tx, leases, ttl).await?;
        tx.commit().await?;
        Ok(held)
    }

    async fn job_progress_many(&self, updates: &[ProgressUpdate]) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        work::progress(&mut tx, updates).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn job_complete_many(&self, completions: &[Completion]) -> Result<Vec<JobId>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let completions = crate::store::storable(completions);
        let (accepted, requeued) = work::complete(&mut tx, &completions).await?;
        tx.commit().await?;
        self.wake_queues(requeued.iter().map(String::as_str));
        Ok(accepted)
    }

    async fn job_release_many(&self, leases: &[Lease]) -> Result<u64> {
        if leases.is_empty() {
            return Ok(0);
        }
        let mut tx = self.write().await?;
        let (released, queues) = work::release(&mut tx, leases).await?;
        tx.commit().await?;
        self.wake_queues(queues.iter().map(String::as_str));
        Ok(released)
    }

    async fn job_rescue_lapsed(&self, p: &RescueParams) -> Result<Vec<Rescued>> {
        let mut tx = self.write().await?;
        let rescued = work::rescue(&mut tx, p).await?;
        tx.commit().await?;
        self.wake_queues(
            rescued
                .iter()
                .filter(|r| r.status == JobStatus::Queued)
                .map(|r| r.queue.as_str()),
        );
        Ok(rescued)
    }

    async fn job_prune_finished(&self, older_than: Duration, limit: i64) -> Result<u64> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "delete from forklift_jobs where id in (
                select id from forklift_jobs
                where status in ('SUCCESS', 'FAILED', 'PARTIAL_SUCCESS', 'CANCELLED') and completed_at < ?1
                limit ?2)",
        )
        .bind(now_micros().saturating_sub(duration_micros(older_than)))
        .bind(limit)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn queue_pause(&self, tenant: TenantId, queue: &str) -> Result<()> {
        crate::new_job::check_name("queue", queue)?;
        let mut tx = self.write().await?;
        sqlx::query("insert into forklift_queue_pauses (tenant_id, queue, paused_at) values (?1, ?2, ?3) on conflict do nothing")
            .bind(tenant.0)
            .bind(queue)
            .bind(now_micros())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn queue_resume(&self, tenant: TenantId, queue: &str) -> Result<()> {
        crate::new_job::check_name("queue", queue)?;
        let mut tx = self.write().await?;
        sqlx::query("delete from forklift_queue_pauses where tenant_id = ?1 and queue = ?2")
            .bind(tenant.0)
            .bind(queue)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.wake_queues([queue]);
        Ok(())
    }

    async fn leader_elect(&self, name: &str, leader_id: &str, ttl: Duration) -> Result<bool> {
        // Take the role if it is free or lapsed, or extend it if it is ours; the WHERE on
        // the conflict branch makes the check and the write one atomic step.
        let now = now_micros();
        let mut tx = self.write().await?;
        let won: Option<String> = sqlx::query_scalar(
            "insert into forklift_leaders (name, leader_id, elected_at, expires_at)
             values (?1, ?2, ?3, ?4)
             on conflict (name) do update set
                leader_id = excluded.leader_id,
                expires_at = excluded.expires_at,
                elected_at = case when forklift_leaders.leader_id = excluded.leader_id
                                  then forklift_leaders.elected_at else excluded.elected_at end
             where forklift_leaders.leader_id = excluded.leader_id or forklift_leaders.expires_at < ?3
             returning leader_id",
        )
        .bind(name)
        .bind(leader_id)
        .bind(now)
        .bind(now.saturating_add(duration_micros(ttl)))
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(won.is_some())
    }

    async fn leader_resign(&self, name: &str, leader_id: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("delete from forklift_leaders where name = ?1 and leader_id = ?2")
            .bind(name)
            .bind(leader_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    async fn job_counts(&self, tenant: TenantId) -> Result<Vec<JobCount>> {
        admin::job_counts(&self.inner.reader, tenant).await
    }

    async fn queue_paused_list(&self, tenant: TenantId) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "select queue from forklift_queue_pauses where tenant_id = ?1 order by queue",
        )
        .bind(tenant.0)
        .fetch_all(&self.inner.reader)
        .await?)
    }

    async fn job_stats_recent(&self, tenant: TenantId, window: Duration) -> Result<RecentStats> {
        admin::stats_recent(&self.inner.reader, tenant, window).await
    }

    async fn stats_add(&self, stats: &[MinuteStat]) -> Result<()> {
        if stats.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        admin::stats_add(&mut tx, stats).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn queue_depths(&self) -> Result<Vec<JobCount>> {
        admin::queue_depths(&self.inner.reader).await
    }

    async fn tenant_create(&self, name: &str) -> Result<Tenant> {
        admin::tenant_create(&self.inner.writer, name).await
    }

    async fn tenant_list(&self) -> Result<Vec<Tenant>> {
        admin::tenant_list(&self.inner.reader).await
    }

    async fn api_key_insert(&self, tenant: TenantId, prefix: &str, key_hash: &str) -> Result<()> {
        admin::api_key_insert(&self.inner.writer, tenant, prefix, key_hash).await
    }

    async fn api_key_tenant(&self, key_hash: &str) -> Result<Option<TenantId>> {
        admin::api_key_tenant(&self.inner.reader, key_hash).await
    }

    async fn api_key_list(&self) -> Result<Vec<ApiKeyInfo>> {
        admin::api_key_list(&self.inner.reader).await
    }

    async fn api_key_revoke(&self, prefix: &str) -> Result<bool> {
        admin::api_key_revoke(&self.inner.writer, prefix).await
    }
}
