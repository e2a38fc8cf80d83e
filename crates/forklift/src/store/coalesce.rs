//! Coalesces small concurrent enqueues into shared commits.
//!
//! Sixteen callers each enqueuing one job would pay sixteen commits, and a commit (its
//! WAL flush) is what one enqueue costs, on PostgreSQL and SQLite alike. Here their
//! requests queue up while the previous write is in flight and go together in the next
//! one: one commit for all of them. A lone caller waits for nothing (its request goes at
//! once). Each caller is answered only after the commit that holds its jobs, so a 202
//! still means durable, and each request stays all or nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::{Error, Result};
use crate::job::TenantId;
use crate::new_job::NewJob;
use crate::store::Inserted;

/// Requests larger than this go straight to the database: they amortise a commit already.
pub const MAX_COALESCED_JOBS: usize = 64;

/// The most requests one write carries.
const MAX_REQUESTS: usize = 256;

/// One caller's jobs.
pub struct Request {
    pub tenant: TenantId,
    pub jobs: Vec<NewJob>,
}

/// Writes requests in one transaction and answers each, in order: what a store provides.
pub type WriteFn = Arc<
    dyn Fn(Vec<Request>) -> Pin<Box<dyn Future<Output = Result<Vec<Vec<Inserted>>>> + Send>>
        + Send
        + Sync,
>;

struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<Vec<Inserted>>>,
}

/// The front of the coalescer; its tasks stop when it is dropped.
pub struct Coalescer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Coalescer {
    /// Starts `in_flight` writers sharing one queue of requests: more than one where the
    /// database takes concurrent commits (PostgreSQL), one where it has one writer (SQLite).
    pub fn start(in_flight: usize, write: WriteFn) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..in_flight.max(1) {
            tokio::spawn(run(write.clone(), rx.clone()));
        }
        Coalescer { tx }
    }

    /// Inserts `jobs` of `tenant`, sharing the commit with concurrent callers.
    pub async fn insert(&self, tenant: TenantId, jobs: Vec<NewJob>) -> Result<Vec<Inserted>> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            request: Request { tenant, jobs },
            reply,
        };
        self.tx
            .send(pending)
            .unwrap_or_else(|_| unreachable!("coalescer tasks live as long as the store"));
        answer
            .await
            .unwrap_or_else(|_| unreachable!("coalescer tasks always answer"))
    }
}

async fn run(write: WriteFn, rx: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>) {
    let mut batch = Vec::with_capacity(MAX_REQUESTS);
    loop {
        // One task at a time takes whatever is waiting; the others are in flight or wait here.
        if rx.lock().await.recv_many(&mut batch, MAX_REQUESTS).await == 0 {
            return;
        }
        let pending = std::mem::take(&mut batch);
        let (requests, replies): (Vec<Request>, Vec<_>) =
            pending.into_iter().map(|p| (p.request, p.reply)).unzip();
        if requests.len() > 1 {
            let copies: Vec<Request> = requests
                .iter()
                .map(|r| Request {
                    tenant: r.tenant,
                    jobs: r.jobs.clone(),
                })
                .collect();
            match write(copies).await {
                Ok(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                    continue;
                }
                // The database is unreachable: every caller gets that answer now, rather
                // than each waiting for its own attempt to time out as well.
                Err(e) if e.is_unreachable() => {
                    let message = e.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(Error::Database(sqlx::Error::Io(
                            std::io::Error::other(message.clone()),
                        ))));
                    }
                    continue;
                }
                // Otherwise write each request alone, so each caller gets its own answer
                // and one bad request cannot fail the others.
                Err(_) => {}
            }
        }
        for (request, reply) in requests.into_iter().zip(replies) {
            let answer = write(vec![request])
                .await
                .map(|mut a| a.pop().unwrap_or_default());
            let _ = reply.send(answer);
        }
    }
}
