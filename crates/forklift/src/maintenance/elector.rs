//! Leader election through a row in `forklift_leaders`.
//!
//! A row with an expiry rather than a session advisory lock: it survives connection
//! poolers, needs no connection held open, works the same on SQLite, and a leader cut off
//! from the database simply stops renewing and is replaced after the TTL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::Store;

pub struct Elector {
    store: Arc<dyn Store>,
    name: String,
    leader_id: String,
    ttl: Duration,
    is_leader: AtomicBool,
    /// When the term won last ends, counted from before the election was asked for, so
    /// never later than the database's own expiry (clocks aside).
    term_ends: Mutex<Option<Instant>>,
}

impl Elector {
    pub fn new(store: Arc<dyn Store>, name: &str, leader_id: String, ttl: Duration) -> Self {
        Elector {
            store,
            name: name.into(),
            leader_id,
            ttl,
            is_leader: AtomicBool::new(false),
            term_ends: Mutex::new(None),
        }
    }

    /// Takes or keeps leadership if possible; returns whether this process leads.
    pub async fn campaign(&self) -> bool {
        let asked = Instant::now();
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
        *self.term_ends.lock().unwrap() = won.then(|| asked + self.ttl);
        if won != self.is_leader.swap(won, Ordering::AcqRel) {
            tracing::info!(role = %self.name, leader_id = %self.leader_id, leader = won, "leadership changed");
        }
        won
    }

    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Acquire)
    }

    /// How much of the current term is left; `None` when this process does not lead.
    pub fn term_left(&self) -> Option<Duration> {
        let ends = (*self.term_ends.lock().unwrap())?;
        let left = ends.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    pub async fn resign(&self) {
        *self.term_ends.lock().unwrap() = None;
        if self.is_leader.swap(false, Ordering::AcqRel)
            && let Err(e) = self.store.leader_resign(&self.name, &self.leader_id).await
        {
            tracing::warn!(error = %e, "could not resign leadership; it lapses by itself");
        }
    }
}
