//! Tenants sharing a queue (issue 13's starvation scenario, scaled down and counted, not
//! timed): a job a small tenant enqueues while a big tenant's backlog is being burned down
//! starts after a bounded number of the big tenant's jobs, not after its whole backlog.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use forklift::{
    Handler, HandlerResult, JobContext, JobStatus, NewJob, Outcome, QueueConfig, Worker,
    WorkerConfig,
};
use serde_json::json;

use crate::registry;
use crate::support::{Harness, enqueue_ids, fast_config, wait_status};

/// Counts the starts of the big tenant's jobs; a job with `{"small": true}` records how
/// many had started when it did.
#[derive(Clone, Default)]
struct Starts {
    big: Arc<AtomicUsize>,
    small_saw: Arc<AtomicUsize>,
}

impl Handler for Starts {
    type Payload = serde_json::Value;
    async fn run(&self, payload: serde_json::Value, _: JobContext) -> HandlerResult {
        if payload["small"] == true {
            self.small_saw
                .store(self.big.load(Ordering::SeqCst), Ordering::SeqCst);
        } else {
            self.big.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(Outcome::Success)
    }
}

/// 6,000 jobs of tenant A; once 100 have started, tenant B enqueues one. Without turns
/// between tenants B's job (the newest, same priority) would wait for all of A's left,
/// over 5,000; with them it waits at most for what is already running or leased: the 10
/// slots, what is leased ahead (at most a fetch, 1,000), a fetch in flight that did not see
/// B's job (another 1,000), and B's turn in the next (typically 100–200 in all here).
pub async fn a_small_tenants_job_starts_after_a_bounded_part_of_a_big_tenants_backlog(h: Harness) {
    const BACKLOG: usize = 6_000;
    const BOUND: usize = 2 * 1_000 + 10 + 1;
    let starts = Starts::default();
    let mut reg = registry();
    reg.register("counted", starts.clone());
    let big = h.client();
    enqueue_ids(&big, &vec![NewJob::new("counted", json!({})); BACKLOG]).await;
    let config = WorkerConfig {
        queues: vec![QueueConfig::new("default", 10)],
        ..fast_config()
    };
    let worker = Worker::start(h.dyn_store(), reg, config);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while starts.big.load(Ordering::SeqCst) < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog did not start"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let small_tenant = h.store.tenant_create("small").await.unwrap().tenant_id;
    let small = h.client().for_tenant(small_tenant);
    let before = starts.big.load(Ordering::SeqCst);
    let id = small
        .enqueue(NewJob::new("counted", json!({"small": true})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&small, id, JobStatus::Success).await;
    let between = starts.small_saw.load(Ordering::SeqCst) - before;
    assert!(
        BACKLOG - before > 2 * BOUND,
        "the backlog was nearly done ({before} started) before the small job came: no test"
    );
    assert!(
        between <= BOUND,
        "{between} of the big tenant's jobs started before the small tenant's one"
    );
    worker.shutdown().await;
}
