//! Background upkeep that one process at a time does: the leader, elected through the
//! database, acting only within its term. Each service has a `run_once` that tests call
//! directly.

mod elector;
mod pruner;
mod rescuer;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use self::elector::Elector;
pub use self::pruner::Pruner;
pub use self::rescuer::Rescuer;
use crate::error::Result;
use crate::retry::Backoff;
use crate::store::Store;

/// Settings of the leader's services. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceConfig {
    /// How long leadership lasts without renewal; renewed every third of it. Default 15 s.
    pub leader_ttl: Duration,
    /// How often lapsed leases are looked for. With the 30 s lease, a job whose worker
    /// died is back in the queue within 35 s. Default 5 s.
    pub rescue_interval: Duration,
    /// Back-off before a rescued job runs again. Default: as for retries.
    pub rescue_backoff: Backoff,
    /// Finished jobs older than this are deleted; `None` keeps them. Default 7 days.
    pub retention: Option<Duration>,
    /// How often old jobs are pruned. Default 60 s.
    pub prune_interval: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            leader_ttl: Duration::from_secs(15),
            rescue_interval: Duration::from_secs(5),
            rescue_backoff: Backoff::default(),
            retention: Some(Duration::from_secs(7 * 86_400)),
            prune_interval: Duration::from_secs(60),
        }
    }
}

impl MaintenanceConfig {
    /// The settings as the services use them: intervals from 1 ms to
    /// [`MAX_DELAY`](crate::new_job::MAX_DELAY), retention at most that, a jitter in 0–1.
    pub fn normalized(&self) -> MaintenanceConfig {
        use crate::runtime::bounded;
        let jitter = self.rescue_backoff.jitter;
        MaintenanceConfig {
            leader_ttl: bounded(self.leader_ttl),
            rescue_interval: bounded(self.rescue_interval),
            rescue_backoff: Backoff {
                jitter: if jitter.is_nan() {
                    0.0
                } else {
                    jitter.clamp(0.0, 1.0)
                },
                ..self.rescue_backoff
            },
            retention: self.retention.map(bounded),
            prune_interval: bounded(self.prune_interval),
        }
    }
}

/// Runs the leader's services while this process is the leader.
pub struct Maintainer {
    elector: Elector,
    rescuer: Rescuer,
    pruner: Option<Pruner>,
    config: MaintenanceConfig,
}

impl Maintainer {
    pub fn new(store: Arc<dyn Store>, leader_id: String, config: MaintenanceConfig) -> Self {
        let config = config.normalized();
        Maintainer {
            elector: Elector::new(store.clone(), "maintenance", leader_id, config.leader_ttl),
            rescuer: Rescuer::new(store.clone(), config.rescue_backoff),
            pruner: config.retention.map(|r| Pruner::new(store, r)),
            config,
        }
    }

    /// Campaigns for leadership and, while leader, runs each service on its interval.
    ///
    /// At most one process holds the term at a time, and the leader acts only within it:
    /// the campaign runs on its own clock (a long prune cannot keep the leader from renewing
    /// its term), a service starts only with term left, the pruner checks the term before
    /// each batch, and a rescue still running when the term it started in ends is stopped.
    /// What can outlast a term is the one statement in flight at that moment, and every
    /// statement is guarded (by status and lease expiry), so a step that two leaders
    /// overlap on changes nothing twice.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let campaign = tokio::spawn(self.clone().campaign(stop.clone()));
        let mut rescue = tokio::time::interval(self.config.rescue_interval);
        let mut prune = tokio::time::interval(self.config.prune_interval);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = rescue.tick() => self.within_term("rescue", self.rescuer.run_once()).await,
                _ = prune.tick() => {
                    // Batch by batch, each while the term (renewed meanwhile) lasts.
                    if let Some(p) = &self.pruner
                        && self.elector.term_left().is_some()
                        && let Err(e) = p.run_while(|| self.elector.term_left().is_some()).await
                    {
                        tracing::warn!(error = %e, "prune failed");
                    }
                }
            }
        }
        let _ = campaign.await;
    }

    async fn campaign(self: Arc<Self>, stop: CancellationToken) {
        let mut elect = tokio::time::interval(self.config.leader_ttl / 3);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = elect.tick() => { self.elector.campaign().await; }
            }
        }
    }

    /// Runs one step of a service if this process leads, for at most the term it has left.
    async fn within_term<T>(&self, service: &str, step: impl Future<Output = Result<T>>) {
        let Some(left) = self.elector.term_left() else {
            return;
        };
        match tokio::time::timeout(left, step).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "{service} failed"),
            Err(_) => tracing::warn!("{service} stopped at the end of the leader's term"),
        }
    }

    /// Gives leadership up, so that another process takes over without waiting.
    pub async fn resign(&self) {
        self.elector.resign().await;
    }
}
