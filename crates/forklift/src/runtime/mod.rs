//! The worker runtime: per-queue producers that lease jobs, executors that run them,
//! a completer that writes their ends in batches, a keeper that renews leases, and
//! the shutdown that puts unfinished work back.

mod completer;
mod executor;
mod keeper;
mod producer;
mod running;
mod telemetry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::keeper::Keeper;
use self::producer::{QueueState, Shared};
use self::running::Running;
use crate::maintenance::{Maintainer, MaintenanceConfig};
use crate::new_job::MAX_DELAY;
use crate::store::{Lease, Store};
use crate::worker::{CancelReason, Registry};

/// How long handlers get to return after their token fires at the end of the grace period.
const SHUTDOWN_ASK_TIME: Duration = Duration::from_secs(1);

/// One queue this worker serves, and how many of its jobs may run at once here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub name: String,
    /// Default 100.
    pub concurrency: usize,
}

impl QueueConfig {
    pub fn new(name: impl Into<String>, concurrency: usize) -> Self {
        QueueConfig {
            name: name.into(),
            concurrency,
        }
    }
}

/// How a worker runs. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// Written on each lease, to tell processes apart. Default: host name, pid and a random suffix.
    pub id: String,
    /// Default: `default` with concurrency 100.
    pub queues: Vec<QueueConfig>,
    /// The most jobs one fetch leases. Default 1,000: measured fastest per job on
    /// PostgreSQL beside 500 (0.8×) and 2,000 (about the same), and a queue leases this
    /// deep only when its jobs are short (see the runtime's docs on leasing ahead).
    pub fetch_batch: usize,
    /// How often a queue is polled when no wake-up comes (the fallback for lost
    /// notifications and for scheduled jobs coming due). Default 1 s.
    pub poll_interval: Duration,
    /// How long a lease lasts without renewal. Default 30 s.
    pub lease_ttl: Duration,
    /// How often leases are renewed. Default 10 s.
    pub heartbeat_interval: Duration,
    /// How often handlers' progress is written. Default 500 ms.
    pub progress_interval: Duration,
    /// How long shutdown lets running jobs finish before releasing them. Default 30 s.
    pub shutdown_grace: Duration,
    /// Leader-elected background upkeep (rescue, prune). `None` runs none in this process.
    /// Default: on, with [`MaintenanceConfig::default`].
    pub maintenance: Option<MaintenanceConfig>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: default_worker_id(),
            queues: vec![QueueConfig::new("default", 100)],
            fetch_batch: 1000,
            poll_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            progress_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(30),
            maintenance: Some(MaintenanceConfig::default()),
        }
    }
}

impl WorkerConfig {
    /// The settings as the runtime uses them: every interval at least 1 ms (a zero one
    /// would panic) and at most [`MAX_DELAY`] (a longer one would overflow a database
    /// interval or an `Instant`), NUL characters (which PostgreSQL cannot store) in the id
    /// and queue names replaced, and the maintenance settings likewise.
    pub fn normalized(&self) -> WorkerConfig {
        let scrub = |s: &str| s.replace('\0', "\u{FFFD}");
        WorkerConfig {
            id: scrub(&self.id),
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let concurrency = q.concurrency.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
                    QueueConfig::new(scrub(&q.name), concurrency)
                })
                .collect(),
            poll_interval: bounded(self.poll_interval),
            lease_ttl: bounded(self.lease_ttl),
            heartbeat_interval: bounded(self.heartbeat_interval),
            progress_interval: bounded(self.progress_interval),
            shutdown_grace: self.shutdown_grace.min(MAX_DELAY),
            fetch_batch: self.fetch_batch.max(1),
            maintenance: self.maintenance.as_ref().map(MaintenanceConfig::normalized),
        }
    }
}

/// A duration from 1 ms to [`MAX_DELAY`].
pub(crate) fn bounded(d: Duration) -> Duration {
    d.clamp(Duration::from_millis(1), MAX_DELAY)
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "worker".to_string()
    } else {
        host
    };
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// A running worker. Call [`Worker::shutdown`] to stop it gracefully. Dropping it stops
/// it too, without a grace period: fetching stops at once, running handlers are asked to
/// stop, and their jobs are released (in a task on the runtime it was started on; if that
/// runtime stops first, their leases lapse and the rescuer puts them back).
#[must_use = "dropping a Worker stops it"]
pub struct Worker {
    parts: Option<Parts>,
    grace: Duration,
    /// The runtime it was started on, where a drop releases its jobs.
    runtime: tokio::runtime::Handle,
}

/// What a running worker is made of, taken out by shutdown or drop.
struct Parts {
    stop_fetching: CancellationToken,
    stop_background: CancellationToken,
    producers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    completer: JoinHandle<()>,
    shared: Arc<Shared>,
    maintainer: Option<Arc<Maintainer>>,
}

impl Worker {
    /// Starts fetching and running jobs of the registry's types. Must be called inside a
    /// Tokio runtime. Migrations are the caller's (`store.migrate()`), done once at start-up.
    pub fn start(store: Arc<dyn Store>, registry: Registry, config: WorkerConfig) -> Worker {
        let config = config.normalized();
        for q in &config.queues {
            if let Err(e) = crate::new_job::check_name("queue", &q.name) {
                // No job can be enqueued there: say so rather than poll it in silence.
                tracing::error!(queue = %q.name, error = %e, "this worker serves a queue no job can be in");
            }
        }
        let stop_fetching = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let completer = tokio::spawn(completer::run(store.clone(), rx));
        let queues: Vec<Arc<QueueState>> = config
            .queues
            .iter()
            .map(|q| QueueState::new(q.name.clone(), q.concurrency))
            .collect();
        let types = registry.types();
        let queue_names: Vec<String> = config.queues.iter().map(|q| q.name.clone()).collect();
        let shared = Arc::new(Shared {
            store: store.clone(),
            handlers: registry
                .handlers
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect::<HashMap<_, _>>(),
            running: Arc::new(Running::default()),
            per_type: Mutex::default(),
            queues: queues.clone(),
            labels: crate::metric_labels::RunLabels::new(&types, &queue_names),
            telemetry: Arc::default(),
            completions: tx,
            tasks: TaskTracker::new(),
            stop_fetching: stop_fetching.clone(),
            worker_id: config.id.clone(),
            fetch_batch: config.fetch_batch.max(1),
            poll_interval: config.poll_interval,
            lease_ttl: config.lease_ttl,
        });
        let stop_background = CancellationToken::new();
        let keeper = Arc::new(Keeper {
            store: store.clone(),
            running: shared.running.clone(),
            queues: queues.clone(),
            lease_ttl: config.lease_ttl,
            heartbeat_interval: config.heartbeat_interval,
            progress_interval: config.progress_interval,
            last_renewed: std::sync::Mutex::new(tokio::time::Instant::now()),
        });
        let mut background = vec![
            tokio::spawn(keeper.clone().renew(stop_background.clone())),
            tokio::spawn(keeper.listen(stop_background.clone())),
            tokio::spawn(
                shared
                    .telemetry
                    .clone()
                    .flush_forever(store.clone(), stop_background.clone()),
            ),
        ];
        let maintainer = config
            .maintenance
            .map(|m| Arc::new(Maintainer::new(store.clone(), config.id.clone(), m)));
        if let Some(m) = &maintainer {
            background.push(tokio::spawn(m.clone().run(stop_background.clone())));
        }
        let producers = if shared.handlers.is_empty() {
            Vec::new() // nothing to run: a process that only enqueues, or only maintains
        } else {
            queues
                .iter()
                .map(|q| {
                    tokio::spawn(producer::run(
                        shared.clone(),
                        q.clone(),
                        stop_fetching.clone(),
                    ))
                })
                .collect()
        };
        tracing::info!(worker_id = %config.id, queues = config.queues.len(), types = shared.handlers.len(), "worker started");
        Worker {
            parts: Some(Parts {
                stop_fetching,
                stop_background,
                producers,
                background,
                completer,
                shared,
                maintainer,
            }),
            grace: config.shutdown_grace,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// How many jobs this process holds now: running, or leased ahead and about to start.
    pub fn running(&self) -> usize {
        self.parts.as_ref().map_or(0, |p| p.shared.running.len())
    }

    /// Stops taking jobs, lets running ones finish within the grace period, then stops
    /// the rest and puts them back in the queue without using up their attempt. When
    /// this returns, nothing this worker leased is left `RUNNING`.
    pub async fn shutdown(mut self) {
        if let Some(parts) = self.parts.take() {
            parts.shutdown(self.grace).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let Some(parts) = self.parts.take() else {
            return; // shut down already
        };
        parts.stop_fetching.cancel();
        // On the runtime it started on; if that is shutting down, the task does not run
        // and the leases lapse (the rescuer puts the jobs back).
        self.runtime.spawn(parts.shutdown(Duration::ZERO));
    }
}

impl Parts {
    async fn shutdown(self, grace: Duration) {
        self.stop_fetching.cancel();
        for p in self.producers {
            let _ = p.await;
        }
        let running = &self.shared.running;
        producer::give_back_all_ready(&self.shared).await;
        let tasks = &self.shared.tasks;
        tasks.close();
        if tokio::time::timeout(grace, running.wait_empty())
            .await
            .is_err()
        {
            tracing::info!(
                jobs = running.len(),
                "grace period over; stopping and releasing running jobs"
            );
            // Ask first: a handler that honours its token returns within a moment and its
            // job is released cleanly. Then stop whatever still runs.
            running.cancel_all(CancelReason::Shutdown);
            if tokio::time::timeout(SHUTDOWN_ASK_TIME, tasks.wait())
                .await
                .is_err()
            {
                running.abort_all();
            }
        }
        tasks.wait().await;
        let leftover: Vec<Lease> = running.drain().into_iter().map(|j| j.lease).collect();
        if !leftover.is_empty() {
            match self.shared.store.job_release_many(&leftover).await {
                Ok(n) => tracing::info!(released = n, "released unfinished jobs"),
                Err(e) => {
                    tracing::error!(error = %e, "could not release jobs; the rescuer will retry them")
                }
            }
        }
        // The completer ends once the last sender is gone and its queue is written.
        drop(self.shared);
        let _ = self.completer.await;
        self.stop_background.cancel();
        for b in self.background {
            let _ = b.await;
        }
        if let Some(m) = self.maintainer {
            m.resign().await;
        }
        tracing::info!("worker stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_past_what_the_runtime_can_hold_are_brought_within_it() {
        let wild = WorkerConfig {
            id: "w\0".into(),
            queues: vec![QueueConfig::new("q\0", 1)],
            poll_interval: Duration::ZERO,
            lease_ttl: Duration::MAX,
            heartbeat_interval: Duration::ZERO,
            progress_interval: Duration::MAX,
            shutdown_grace: Duration::MAX,
            maintenance: Some(MaintenanceConfig {
                leader_ttl: Duration::MAX,
                rescue_interval: Duration::ZERO,
                rescue_backoff: crate::retry::Backoff {
                    jitter: f64::NAN,
                    ..Default::default()
                },
                retention: Some(Duration::MAX),
                prune_interval: Duration::ZERO,
            }),
            ..WorkerConfig::default()
        };
        let n = wild.normalized();
        assert_eq!(
            (n.id.as_str(), n.queues[0].name.as_str()),
            ("w\u{FFFD}", "q\u{FFFD}")
        );
        assert_eq!(n.poll_interval, Duration::from_millis(1));
        assert_eq!((n.lease_ttl, n.shutdown_grace), (MAX_DELAY, MAX_DELAY));
        let m = n.maintenance.unwrap();
        assert_eq!((m.leader_ttl, m.retention), (MAX_DELAY, Some(MAX_DELAY)));
        assert_eq!(m.rescue_interval, Duration::from_millis(1));
        assert_eq!(m.rescue_backoff.jitter, 0.0);
        assert_eq!(
            WorkerConfig::default().normalized().lease_ttl,
            Duration::from_secs(30)
        );
    }
}
