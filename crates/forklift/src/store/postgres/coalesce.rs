//! Coalesces small concurrent enqueues into shared statements.
//!
//! Sixteen callers each enqueuing one job would pay sixteen commits, and a commit (its
//! WAL flush) is what one enqueue costs. Here their requests queue up while the previous
//! statement is in flight and go together in the next one: one commit for all of them.
//! A lone caller waits for nothing (its request goes at once). Each caller is answered
//! only after the commit that holds its jobs, so a 202 still means durable.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::insert;
use crate::error::Result;
use crate::job::TenantId;
use crate::new_job::NewJob;
use crate::store::Inserted;

/// Requests larger than this go straight to the database: they amortise a commit already.
pub const MAX_COALESCED_JOBS: usize = 64;

/// How many statements may be in flight at once; more requests wait and share them.
const IN_FLIGHT: usize = 4;

/// The most requests one statement carries.
const MAX_REQUESTS: usize = 256;

struct Request {
    tenant: TenantId,
    jobs: Vec<NewJob>,
    reply: oneshot::Sender<Result<Vec<Inserted>>>,
}

/// The front of the coalescer; its tasks stop when it is dropped.
pub struct Coalescer {
    tx: mpsc::UnboundedSender<Request>,
}

impl Coalescer {
    pub fn start(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..IN_FLIGHT {
            tokio::spawn(run(pool.clone(), rx.clone()));
        }
        Coalescer { tx }
    }

    /// Inserts `jobs` of `tenant`, sharing the statement with concurrent callers.
    pub async fn insert(&self, tenant: TenantId, jobs: Vec<NewJob>) -> Result<Vec<Inserted>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request {
                tenant,
                jobs,
                reply,
            })
            .expect("coalescer tasks live as long as the store");
        answer.await.expect("coalescer tasks always answer")
    }
}

async fn run(pool: PgPool, rx: Arc<Mutex<mpsc::UnboundedReceiver<Request>>>) {
    let mut batch = Vec::with_capacity(MAX_REQUESTS);
    loop {
        // One task at a time takes whatever is waiting; the others are in flight or wait here.
        if rx.lock().await.recv_many(&mut batch, MAX_REQUESTS).await == 0 {
            return;
        }
        write(&pool, std::mem::take(&mut batch)).await;
    }
}

async fn write(pool: &PgPool, batch: Vec<Request>) {
    if batch.len() > 1 {
        let tenants: Vec<TenantId> = batch
            .iter()
            .flat_map(|r| std::iter::repeat_n(r.tenant, r.jobs.len()))
            .collect();
        let jobs: Vec<NewJob> = batch.iter().flat_map(|r| r.jobs.iter().cloned()).collect();
        let shared = async {
            let mut conn = pool.acquire().await?;
            insert::insert_for_tenants(&mut conn, &tenants, &jobs).await
        };
        if let Ok(mut inserted) = shared.await {
            for r in batch {
                let rest = inserted.split_off(r.jobs.len());
                let _ = r.reply.send(Ok(std::mem::replace(&mut inserted, rest)));
            }
            return;
        }
        // The shared statement failed: run each request alone, so each caller gets its
        // own answer and one bad request cannot fail the others.
    }
    for r in batch {
        let alone = async {
            let mut conn = pool.acquire().await?;
            insert::insert_many(&mut conn, r.tenant, &r.jobs).await
        };
        let _ = r.reply.send(alone.await);
    }
}
