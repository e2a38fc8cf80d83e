//! Keeps this process's leases and hears from the store: renews leases, writes progress,
//! passes cancels to handlers and wake-ups to producers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::producer::QueueState;
use super::running::Running;
use crate::store::{Event, Store};
use crate::worker::CancelReason;

pub(crate) struct Keeper {
    pub store: Arc<dyn Store>,
    pub running: Arc<Running>,
    pub queues: Vec<Arc<QueueState>>,
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    pub progress_interval: Duration,
}

impl Keeper {
    /// Renews leases every `heartbeat_interval` and flushes progress every
    /// `progress_interval`, until `stop`.
    pub async fn renew(self: Arc<Self>, stop: CancellationToken) {
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        let mut progress = tokio::time::interval(self.progress_interval);
        let mut last_renewed = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = heartbeat.tick() => self.heartbeat(&mut last_renewed).await,
                _ = progress.tick() => {
                    let updates = self.running.progress_updates();
                    if let Err(e) = self.store.job_progress_many(&updates).await {
                        tracing::debug!(error = %e, "could not write progress");
                    }
                }
            }
        }
    }

    async fn heartbeat(&self, last_renewed: &mut Instant) {
        let leases = self.running.leases();
        let started = Instant::now();
        match self.store.job_heartbeat_many(&leases, self.lease_ttl).await {
            Ok(held) => {
                *last_renewed = started;
                let held_ids: HashSet<_> = held.iter().map(|s| s.job_id).collect();
                for lease in leases.iter().filter(|l| !held_ids.contains(&l.job_id)) {
                    // Rescued or finished elsewhere: stop working on it.
                    self.running.cancel(lease.job_id, CancelReason::LeaseLost);
                }
                for status in held.iter().filter(|s| s.cancel_requested) {
                    self.running.cancel(status.job_id, CancelReason::Requested);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = leases.len(), "could not renew leases");
                if last_renewed.elapsed() >= self.lease_ttl {
                    // Our leases have lapsed by now and the jobs may already run elsewhere.
                    self.running.cancel_all(CancelReason::LeaseLost);
                }
            }
        }
    }

    /// Passes the store's events on, until `stop`.
    pub async fn listen(self: Arc<Self>, stop: CancellationToken) {
        let mut events = self.store.subscribe();
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = events.recv() => e,
            };
            match event {
                Ok(Event::JobsAvailable { queue }) => {
                    if let Some(q) = self.queues.iter().find(|q| q.name == queue) {
                        q.poke();
                    }
                }
                Ok(Event::CancelRequested { job_id }) => {
                    self.running.cancel(job_id, CancelReason::Requested)
                }
                // Missed events: look at everything again.
                Ok(Event::Resync) | Err(RecvError::Lagged(_)) => {
                    self.queues.iter().for_each(|q| q.poke());
                    let mut ignored = Instant::now();
                    self.heartbeat(&mut ignored).await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}
