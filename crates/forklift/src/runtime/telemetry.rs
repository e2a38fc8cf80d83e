//! This worker's per-minute stats for `/stats`: attempts ended by status, and histograms
//! of their wait and run time. Added up in memory and written once a second, so they
//! cost one small write a second instead of work in every fetch and completion. (A
//! process that dies loses at most its last second of them; the counts by status, which
//! must be exact, are kept by the database itself.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use crate::job::{JobStatus, TenantId};
use crate::store::minutes::{MINUTES_KEPT, bucket_of};
use crate::store::{Metric, MinuteStat, Store};

const FLUSH_EVERY: Duration = Duration::from_secs(1);

type Key = (TenantId, DateTime<Utc>, Metric, i16);

#[derive(Default)]
pub(crate) struct Telemetry {
    pending: Mutex<HashMap<Key, i64>>,
}

fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(at)
}

impl Telemetry {
    fn add(&self, tenant: TenantId, at: DateTime<Utc>, metric: Metric, bucket: i16) {
        *self
            .pending
            .lock()
            .unwrap()
            .entry((tenant, minute_of(at), metric, bucket))
            .or_default() += 1;
    }

    /// An attempt started at `started`, `wait` after its `run_at`.
    pub fn started(&self, tenant: TenantId, started: DateTime<Utc>, wait: Duration) {
        self.add(tenant, started, Metric::Wait, bucket_of(wait));
    }

    /// An attempt ended at `at` with `status` after running `run`: counted if final.
    pub fn ended(&self, tenant: TenantId, status: JobStatus, at: DateTime<Utc>, run: Duration) {
        let metric = match status {
            JobStatus::Success | JobStatus::PartialSuccess => Metric::Completed,
            JobStatus::Failed => Metric::Failed,
            _ => return,
        };
        self.add(tenant, at, metric, 0);
        self.add(tenant, at, Metric::Run, bucket_of(run));
    }

    fn take(&self) -> Vec<MinuteStat> {
        self.pending
            .lock()
            .unwrap()
            .drain()
            .map(|((tenant, minute, metric, bucket), jobs)| MinuteStat {
                tenant,
                minute,
                metric,
                bucket,
                jobs,
            })
            .collect()
    }

    /// Puts back what could not be written, but for minutes no window shows any more:
    /// while the database is away, this holds at most two hours of minutes.
    fn put_back(&self, stats: Vec<MinuteStat>) {
        let oldest = Utc::now() - MINUTES_KEPT;
        let mut pending = self.pending.lock().unwrap();
        for s in stats.into_iter().filter(|s| s.minute >= oldest) {
            *pending
                .entry((s.tenant, s.minute, s.metric, s.bucket))
                .or_default() += s.jobs;
        }
    }

    async fn flush(&self, store: &dyn Store) {
        let stats = self.take();
        if stats.is_empty() {
            return;
        }
        if let Err(e) = store.stats_add(&stats).await {
            tracing::debug!(error = %e, "could not write stats; keeping them for the next try");
            self.put_back(stats);
        }
    }

    /// Writes every [`FLUSH_EVERY`] until `stop`, then once more.
    pub async fn flush_forever(self: Arc<Self>, store: Arc<dyn Store>, stop: CancellationToken) {
        let mut every = tokio::time::interval(FLUSH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => self.flush(&*store).await,
            }
        }
        self.flush(&*store).await;
    }
}
