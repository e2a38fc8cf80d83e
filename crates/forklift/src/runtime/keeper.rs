//! Keeps this process's leases and hears from the store: renews leases, writes progress,
//! passes cancels to handlers and wake-ups to producers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
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
    /// When the last renewal that succeeded was sent: our leases run at least until
    /// then + `lease_ttl`, and may lapse from that moment on.
    pub last_renewed: Mutex<Instant>,
}

impl Keeper {
    /// Renews leases every `heartbeat_interval` and flushes progress every
    /// `progress_interval`, until `stop`.
    ///
    /// Every call here is bounded: a database that stops answering without closing the
    /// connection (a dead switch, a partition) would otherwise hold the keeper inside one
    /// call forever, and the handlers would go on working on jobs whose leases lapsed and
    /// that another worker already runs.
    pub async fn renew(self: Arc<Self>, stop: CancellationToken) {
        // Progress in a task of its own, so that a write that hangs cannot delay renewals.
        let progress = tokio::spawn(self.clone().flush_progress(stop.clone()));
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        let mut lapse_handled = None;
        loop {
            let last_renewed = *self.last_renewed.lock().unwrap();
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = heartbeat.tick() => self.heartbeat().await,
                // The moment our leases can lapse, whatever the renewals are doing (failing
                // fast, or each timing out just before it): stop the handlers then.
                _ = tokio::time::sleep_until(last_renewed + self.lease_ttl),
                    if lapse_handled != Some(last_renewed) =>
                {
                    lapse_handled = Some(last_renewed);
                    if self.running.len() > 0 {
                        tracing::warn!("leases not renewed for a lease TTL; stopping their handlers");
                        self.running.cancel_all(CancelReason::LeaseLost);
                    }
                }
            }
        }
        let _ = progress.await;
    }

    /// Writes handlers' progress every `progress_interval`, until `stop`.
    async fn flush_progress(self: Arc<Self>, stop: CancellationToken) {
        let mut progress = tokio::time::interval(self.progress_interval);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = progress.tick() => {}
            }
            let updates = self.running.progress_updates();
            // Best effort: a lost progress value is overwritten by the next one.
            let write = self.store.job_progress_many(&updates);
            match tokio::time::timeout(self.heartbeat_interval, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "could not write progress"),
                Err(_) => tracing::debug!("progress write did not answer"),
            }
        }
    }

    async fn heartbeat(&self) {
        let leases = self.running.leases();
        if leases.is_empty() {
            // Nothing held, so nothing to lose: fetch again. A fetch is itself the probe
            // (on the workers' own pool): if the database still fails, it fails too, and
            // the leases it would make cannot outlive a renewal that fails.
            *self.last_renewed.lock().unwrap() = Instant::now();
            if self.running.set_renewals_failing(false) {
                self.queues.iter().for_each(|q| q.poke());
            }
            return;
        }
        let started = Instant::now();
        let last_renewed = *self.last_renewed.lock().unwrap();
        // Wait for the answer until our leases can lapse; once they may have, give each
        // renewal one interval (so that it gets its chance when the database is back).
        let lapse_at = last_renewed + self.lease_ttl;
        let deadline = if lapse_at > started {
            lapse_at
        } else {
            started + self.heartbeat_interval
        };
        let renewal = self.store.job_heartbeat_many(&leases, self.lease_ttl);
        match tokio::time::timeout_at(deadline, renewal).await {
            Ok(Ok(held)) => {
                *self.last_renewed.lock().unwrap() = started;
                if self.running.set_renewals_failing(false) {
                    tracing::info!("lease renewals succeed again; taking new jobs");
                    self.queues.iter().for_each(|q| q.poke());
                }
                let held_ids: HashSet<_> = held.iter().map(|s| s.job_id).collect();
                for lease in leases.iter().filter(|l| !held_ids.contains(&l.job_id)) {
                    // Rescued or finished elsewhere: stop working on it.
                    self.running.cancel(lease.job_id, CancelReason::LeaseLost);
                }
                for status in held.iter().filter(|s| s.cancel_requested) {
                    self.running.cancel(status.job_id, CancelReason::Requested);
                }
            }
            failed => {
                // Stop taking new jobs until a renewal succeeds: their leases would lapse too.
                self.running.set_renewals_failing(true);
                match failed {
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, jobs = leases.len(), "could not renew leases")
                    }
                    _ => tracing::warn!(jobs = leases.len(), "lease renewal did not answer"),
                }
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
                    self.heartbeat().await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}
