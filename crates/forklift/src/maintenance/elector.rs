//! Leader election through a row in `forklift_leaders`.
//!
//! A row with an expiry rather than a session advisory lock: it survives connection
//! poolers, needs no connection held open, works the same on SQLite, and a leader cut off
//! from the database simply stops renewing and is replaced after the TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::store::Store;

pub struct Elector {
    store: Arc<dyn Store>,
    name: String,
    leader_id: String,
    ttl: Duration,
    is_leader: AtomicBool,
}

impl Elector {
    pub fn new(store: Arc<dyn Store>, name: &str, leader_id: String, ttl: Duration) -> Self {
        Elector {
            store,
            name: name.into(),
            leader_id,
            ttl,
            is_leader: AtomicBool::new(false),
        }
    }

    /// Takes or keeps leadership if possible; returns whether this process leads.
    pub async fn campaign(&self) -> bool {
        let won = match self
            .store
            .leader_elect(&self.name, &self.leader_id, self.ttl)
            .await
        {
            Ok(won) => won,
            Err(e) => {
                tracing::warn!(error = %e, "leader election failed");
                false
            }
        };
        if won != self.is_leader.swap(won, Ordering::AcqRel) {
            tracing::info!(role = %self.name, leader_id = %self.leader_id, leader = won, "leadership changed");
        }
        won
    }

    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Acquire)
    }

    pub async fn resign(&self) {
        if self.is_leader.swap(false, Ordering::AcqRel)
            && let Err(e) = self.store.leader_resign(&self.name, &self.leader_id).await
        {
            tracing::warn!(error = %e, "could not resign leadership; it lapses by itself");
        }
    }
}
