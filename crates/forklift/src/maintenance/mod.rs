//! Background upkeep that exactly one process should do at a time: the leader, elected
//! through the database. Each service has a `run_once` that tests call directly.

mod elector;
mod pruner;
mod rescuer;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use self::elector::Elector;
pub use self::pruner::Pruner;
pub use self::rescuer::Rescuer;
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

/// Runs the leader's services while this process is the leader.
pub struct Maintainer {
    elector: Elector,
    rescuer: Rescuer,
    pruner: Option<Pruner>,
    config: MaintenanceConfig,
}

impl Maintainer {
    pub fn new(store: Arc<dyn Store>, leader_id: String, config: MaintenanceConfig) -> Self {
        Maintainer {
            elector: Elector::new(store.clone(), "maintenance", leader_id, config.leader_ttl),
            rescuer: Rescuer::new(store.clone(), config.rescue_backoff),
            pruner: config.retention.map(|r| Pruner::new(store, r)),
            config,
        }
    }

    /// Campaigns for leadership and, while leader, runs each service on its interval.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut elect = tokio::time::interval(self.config.leader_ttl / 3);
        let mut rescue = tokio::time::interval(self.config.rescue_interval);
        let mut prune = tokio::time::interval(self.config.prune_interval);
        let mut leader = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = elect.tick() => leader = self.elector.campaign().await,
                _ = rescue.tick(), if leader => {
                    if let Err(e) = self.rescuer.run_once().await {
                        tracing::warn!(error = %e, "rescue failed");
                    }
                }
                _ = prune.tick(), if leader => {
                    if let Some(p) = &self.pruner && let Err(e) = p.run_once().await {
                        tracing::warn!(error = %e, "prune failed");
                    }
                }
            }
        }
    }

    /// Gives leadership up, so that another process takes over without waiting.
    pub async fn resign(&self) {
        self.elector.resign().await;
    }
}
