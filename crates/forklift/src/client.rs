//! The [`Client`]: enqueue and manage jobs for one tenant.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::Result;
use crate::job::{Job, JobId, TenantId};
use crate::new_job::{JobArgs, NewJob};
use crate::store::{Inserted, JobPage, ListParams, Store, TxConnection};

/// Enqueues and manages jobs, acting for one tenant. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    store: Arc<dyn Store>,
    tenant: TenantId,
}

impl Client {
    /// A client for the default tenant (what a single-tenant application wants).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Client {
            store,
            tenant: TenantId::DEFAULT,
        }
    }

    /// The same store, acting for another tenant.
    pub fn for_tenant(&self, tenant: TenantId) -> Client {
        Client {
            store: self.store.clone(),
            tenant,
        }
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Enqueues one job. With a unique key that an unfinished job holds, returns that job
    /// with `inserted: false` and enqueues nothing.
    pub async fn enqueue(&self, job: NewJob) -> Result<Inserted> {
        let mut one = self.enqueue_many(std::slice::from_ref(&job)).await?;
        Ok(one.pop().expect("one job in, one result out"))
    }

    /// Enqueues a typed job.
    pub async fn enqueue_args<A: JobArgs>(&self, args: &A) -> Result<Inserted> {
        self.enqueue(NewJob::from_args(args)?).await
    }

    /// Enqueues up to 10,000 jobs in one round trip, all or nothing; results in order.
    pub async fn enqueue_many(&self, jobs: &[NewJob]) -> Result<Vec<Inserted>> {
        let inserted = self.store.job_insert_many(self.tenant, jobs).await?;
        count_enqueued(&inserted);
        Ok(inserted)
    }

    /// Enqueues inside the caller's transaction (or on its connection): the job exists if
    /// and only if that transaction commits. The connection is the application's own, on
    /// the database the store uses: PostgreSQL or SQLite (see [`TxConnection`]).
    ///
    /// ```no_run
    /// # async fn f(pool: sqlx::PgPool, client: forklift::Client) -> forklift::Result<()> {
    /// let mut tx = pool.begin().await?;
    /// // ... the application's own writes ...
    /// client.enqueue_in(&mut tx, forklift::NewJob::new("send_receipt", serde_json::json!({"order": 7}))).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// On SQLite, begin the transaction with `BEGIN IMMEDIATE`, as for any SQLite write:
    ///
    /// ```no_run
    /// # async fn f(store: forklift::SqliteStore, client: forklift::Client) -> forklift::Result<()> {
    /// let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await?;
    /// client.enqueue_in(&mut tx, forklift::NewJob::new("send_receipt", serde_json::json!({"order": 7}))).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_in(&self, conn: &mut impl TxConnection, job: NewJob) -> Result<Inserted> {
        let mut one = self
            .enqueue_many_in(conn, std::slice::from_ref(&job))
            .await?;
        Ok(one.pop().expect("one job in, one result out"))
    }

    /// [`Client::enqueue_many`] inside the caller's transaction.
    pub async fn enqueue_many_in(
        &self,
        conn: &mut impl TxConnection,
        jobs: &[NewJob],
    ) -> Result<Vec<Inserted>> {
        let inserted = conn.job_insert_many_in(self.tenant, jobs).await?;
        count_enqueued(&inserted);
        Ok(inserted)
    }

    pub async fn get(&self, id: JobId) -> Result<Job> {
        self.store.job_get(self.tenant, id).await
    }

    /// A page of jobs, newest first; pass the page's `next_cursor` back for the next one.
    pub async fn list(&self, params: &ListParams) -> Result<JobPage> {
        self.store.job_list(self.tenant, params).await
    }

    /// Cancels a queued job at once, or asks a running one to stop (it ends `CANCELLED`).
    pub async fn cancel(&self, id: JobId) -> Result<Job> {
        self.store.job_cancel(self.tenant, id).await
    }

    /// Queues a failed, partly failed or cancelled job again, with fresh attempts.
    pub async fn retry(&self, id: JobId) -> Result<Job> {
        self.store.job_retry(self.tenant, id).await
    }

    pub async fn pause_queue(&self, queue: &str) -> Result<()> {
        self.store.queue_pause(self.tenant, queue).await
    }

    pub async fn resume_queue(&self, queue: &str) -> Result<()> {
        self.store.queue_resume(self.tenant, queue).await
    }
}

/// Counts new jobs for `/metrics`, one increment per type and queue rather than per job.
fn count_enqueued(inserted: &[Inserted]) {
    let mut counts: HashMap<(&str, &str), u64> = HashMap::new();
    for i in inserted.iter().filter(|i| i.inserted) {
        *counts
            .entry((i.job.job_type.as_str(), i.job.queue.as_str()))
            .or_default() += 1;
    }
    for ((job_type, queue), n) in counts {
        let (job_type, queue) = crate::metric_labels::enqueue_labels(job_type, queue);
        metrics::counter!("forklift_jobs_enqueued_total", "type" => job_type, "queue" => queue)
            .increment(n);
    }
}
