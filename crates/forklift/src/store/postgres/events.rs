//! Wake-ups across processes through LISTEN/NOTIFY, and within this process directly.
//!
//! Enqueue does not NOTIFY inside its own transaction: PostgreSQL serialises the commits
//! of notifying transactions, which caps concurrent enqueuers at a few thousand per
//! second. Instead a [`Notifier`] task sends the pending wake-ups after the commit, one
//! statement for all that gathered while the previous one was in flight.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;

use super::db::Db;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::job::JobId;
use crate::store::Event;

/// The least time between two wake-up statements. Each NOTIFY is a transaction of its
/// own, with a commit to flush: under a stream of enqueues, spacing them lets one carry
/// what gathered meanwhile instead of doubling the commits. A lone enqueue is not
/// delayed (the first wake-up after a quiet spell goes at once).
const MIN_GAP: Duration = Duration::from_millis(2);

/// The channel that carries a queue name when jobs become available.
pub const JOBS_CHANNEL: &str = "forklift_jobs";
/// The channel that carries a job's uuid when a cancel of a running job is asked.
pub const CANCEL_CHANNEL: &str = "forklift_cancel";

/// Wake-ups waiting to be sent.
#[derive(Default)]
struct Pending {
    queues: BTreeSet<String>,
    cancels: BTreeSet<Uuid>,
}

/// Coalesces wake-ups and sends them from a background task.
pub struct Notifier {
    pending: Mutex<Pending>,
    wake: Notify,
}

impl Notifier {
    pub fn new() -> Arc<Self> {
        Arc::new(Notifier {
            pending: Mutex::default(),
            wake: Notify::new(),
        })
    }

    pub fn jobs_available<'a>(&self, queues: impl IntoIterator<Item = &'a str>) {
        self.pending
            .lock()
            .unwrap()
            .queues
            .extend(queues.into_iter().map(str::to_owned));
        self.wake.notify_one();
    }

    pub fn cancel_requested(&self, job: JobId) {
        self.pending.lock().unwrap().cancels.insert(job.0);
        self.wake.notify_one();
    }

    /// Sends what is pending until `stop`; each round sends all that gathered meanwhile.
    pub async fn run(self: Arc<Self>, pool: Db, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            let Pending { queues, cancels } = std::mem::take(&mut *self.pending.lock().unwrap());
            let queues: Vec<String> = queues.into_iter().collect();
            let cancels: Vec<String> = cancels.into_iter().map(|u| u.to_string()).collect();
            let sent = sqlx::query(
                "select pg_notify($1, q) from unnest($2::text[]) q
                 union all
                 select pg_notify($3, c) from unnest($4::text[]) c",
            )
            .bind(JOBS_CHANNEL)
            .bind(&queues)
            .bind(CANCEL_CHANNEL)
            .bind(&cancels)
            .execute(&pool)
            .await;
            if let Err(e) = sent {
                // Workers still poll, and the rescuer still sweeps: a lost wake-up only delays.
                tracing::warn!(error = %e, "could not send wake-ups");
            }
            tokio::time::sleep(MIN_GAP).await;
        }
    }
}

/// Forwards notifications from PostgreSQL to this process's subscribers until `stop`.
///
/// A listener can die quietly (a proxy drops the connection, the server restarts), so it
/// is pinged every `ping_every`; when it fails it is replaced, and a `Resync` tells the
/// workers to look at the database for whatever was missed meanwhile.
pub async fn listen(
    pool: PgPool,
    events: broadcast::Sender<Event>,
    stop: CancellationToken,
    ping_every: Duration,
) {
    loop {
        let mut listener = match connect(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; retrying in 1 s");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let _ = events.send(Event::Resync);
        let mut ping = tokio::time::interval(ping_every);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = listener.try_recv() => match msg {
                    Ok(Some(n)) => forward(&events, n.channel(), n.payload()),
                    // The connection dropped; try_recv reconnects on the next call. Anything
                    // sent meanwhile is lost, so ask the workers to look again.
                    Ok(None) => { let _ = events.send(Event::Resync); }
                    Err(e) => { tracing::warn!(error = %e, "LISTEN connection lost"); break; }
                },
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(Duration::from_secs(5), sqlx::query("select 1").execute(&mut listener)).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        tracing::warn!("LISTEN connection did not answer a ping; replacing it");
                        break;
                    }
                }
            }
        }
    }
}

async fn connect(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all([JOBS_CHANNEL, CANCEL_CHANNEL]).await?;
    Ok(listener)
}

fn forward(events: &broadcast::Sender<Event>, channel: &str, payload: &str) {
    let event = match channel {
        JOBS_CHANNEL => Event::JobsAvailable {
            queue: payload.to_string(),
        },
        CANCEL_CHANNEL => match Uuid::try_parse(payload) {
            Ok(id) => Event::CancelRequested { job_id: JobId(id) },
            Err(_) => return,
        },
        _ => return,
    };
    // No subscriber is fine: then nobody here is waiting.
    let _ = events.send(event);
}
