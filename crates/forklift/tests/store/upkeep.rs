//! Upkeep and the database itself: rescue of lapsed leases, leadership, pruning,
//! migrations, and SQLite's file settings and lock waiting.

use std::time::Duration;

use forklift::{Error, JobStatus, NewJob, SqliteStore, Store};
use serde_json::json;
use sqlx::Connection;

use crate::support::Harness;
use crate::{fetch_one, fetch_params, noop};

pub async fn rescue_requeues_a_lapsed_job_or_fails_it_when_out_of_attempts(h: Harness) {
    let client = h.client();
    let retryable = client
        .enqueue(noop().max_attempts(2))
        .await
        .unwrap()
        .job
        .job_id;
    let last = client
        .enqueue(noop().max_attempts(1))
        .await
        .unwrap()
        .job
        .job_id;
    let live = client.enqueue(noop()).await.unwrap().job.job_id;
    h.store.job_fetch_available(&fetch_params(3)).await.unwrap();
    h.lapse_leases(&[live]).await;
    let rescuer =
        forklift::maintenance::Rescuer::new(h.dyn_store(), crate::support::quick_backoff());
    let rescued = rescuer.run_once().await.unwrap();
    assert_eq!(rescued.len(), 2);
    assert!(rescued.iter().all(|r| r.queue == "default"));
    let r = client.get(retryable).await.unwrap();
    assert_eq!((r.status, r.attempt), (JobStatus::Queued, 1));
    assert_eq!(r.errors[0].code, "lease_expired");
    assert_eq!(
        (r.errors[0].attempt, &r.errors[0].details),
        (1, &json!({"worker": "test-worker"}))
    );
    let wait = (r.run_at - r.updated_at).num_milliseconds();
    assert!(
        (15..=25).contains(&wait),
        "the rescue back-off applies: {wait} ms"
    );
    let failed = client.get(last).await.unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert!(failed.completed_at.is_some());
    assert_eq!(
        client.get(live).await.unwrap().status,
        JobStatus::Running,
        "a live lease is left alone"
    );
}

pub async fn rescue_cancels_a_lapsed_job_whose_cancel_was_asked(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    fetch_one(&h).await;
    client.cancel(id).await.unwrap();
    h.lapse_leases(&[]).await;
    let rescued =
        forklift::maintenance::Rescuer::new(h.dyn_store(), crate::support::quick_backoff())
            .run_once()
            .await
            .unwrap();
    assert_eq!(rescued[0].status, JobStatus::Cancelled);
    let job = client.get(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(job.completed_at.is_some());
}

pub async fn only_one_process_is_leader_until_it_resigns(h: Harness) {
    let ttl = Duration::from_secs(30);
    assert!(h.store.leader_elect("m", "a", ttl).await.unwrap());
    assert!(!h.store.leader_elect("m", "b", ttl).await.unwrap());
    assert!(
        h.store.leader_elect("m", "a", ttl).await.unwrap(),
        "the leader renews"
    );
    assert!(
        h.store.leader_elect("other-role", "b", ttl).await.unwrap(),
        "roles are separate"
    );
    h.store.leader_resign("m", "b").await.unwrap(); // not b's to give up: no effect
    assert!(!h.store.leader_elect("m", "b", ttl).await.unwrap());
    h.store.leader_resign("m", "a").await.unwrap();
    assert!(h.store.leader_elect("m", "b", ttl).await.unwrap());
}

pub async fn a_lapsed_leadership_goes_to_the_next_candidate(h: Harness) {
    assert!(
        h.store
            .leader_elect("m", "a", Duration::from_millis(1))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        h.store
            .leader_elect("m", "b", Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        !h.store
            .leader_elect("m", "a", Duration::from_secs(30))
            .await
            .unwrap()
    );
}

pub async fn prune_deletes_only_old_finished_jobs(h: Harness) {
    let client = h.client();
    let old = client.enqueue(noop()).await.unwrap().job.job_id;
    let recent = client.enqueue(noop()).await.unwrap().job.job_id;
    let live = client.enqueue(noop()).await.unwrap().job.job_id;
    client.cancel(old).await.unwrap();
    h.age_finished(Duration::from_secs(2 * 86_400)).await;
    client.cancel(recent).await.unwrap();
    let pruner = forklift::maintenance::Pruner::new(h.dyn_store(), Duration::from_secs(86_400));
    assert_eq!(pruner.run_once().await.unwrap(), 1);
    assert!(matches!(client.get(old).await, Err(Error::NotFound)));
    assert!(client.get(recent).await.is_ok());
    assert!(client.get(live).await.is_ok());
}

pub async fn migrations_are_safe_to_run_concurrently_and_again(h: Harness) {
    let other = h.other_process().await;
    let (a, b) = tokio::join!(h.store.migrate(), other.migrate());
    a.unwrap();
    b.unwrap();
    let applied = h.scalar("select count(*) from forklift_migrations").await;
    assert_eq!(
        applied,
        h.scalar("select cast(max(version) as bigint) from forklift_migrations")
            .await,
        "each version once"
    );
    assert!(applied >= 2);
}

pub async fn the_file_is_created_in_wal_mode_with_full_sync(h: Harness) {
    let pool = h.sqlite_store().pool();
    let mode: String = sqlx::query_scalar("pragma journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    let sync: i64 = sqlx::query_scalar("pragma synchronous")
        .fetch_one(pool)
        .await
        .unwrap();
    let busy: i64 = sqlx::query_scalar("pragma busy_timeout")
        .fetch_one(pool)
        .await
        .unwrap();
    let fk: i64 = sqlx::query_scalar("pragma foreign_keys")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        (mode.as_str(), sync, busy, fk),
        ("wal", 2, 5_000, 1),
        "WAL, FULL, 5 s, on"
    );
    assert!(std::path::Path::new(&h.sqlite_path()).exists());

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/missing/fresh.db", dir.path().display());
    assert!(
        SqliteStore::connect(&url).await.is_err(),
        "a missing directory is an error, not created"
    );
    let url = format!("sqlite://{}/fresh.db", dir.path().display());
    SqliteStore::connect(&url)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    assert!(
        dir.path().join("fresh.db").exists(),
        "a missing file is created"
    );
    let memory = SqliteStore::connect("sqlite::memory:").await;
    assert!(
        matches!(memory, Err(Error::Invalid { .. })),
        "in memory is refused"
    );
}

pub async fn a_write_waits_for_another_connections_write_instead_of_failing(h: Harness) {
    // Another process's write transaction holds the lock for a moment.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", h.sqlite_path()))
        .await
        .unwrap();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("insert into forklift_leaders values ('x', 'y', 0, 0)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let client = h.client();
    let started = std::time::Instant::now();
    let enqueue = tokio::spawn(async move { client.enqueue(NewJob::new("noop", json!({}))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.commit().await.unwrap();
    let inserted = enqueue
        .await
        .unwrap()
        .expect("the enqueue waited for the lock");
    assert!(inserted.inserted);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

pub async fn pruning_stops_between_batches_once_told_to(h: Harness) {
    h.client().enqueue_many(&vec![noop(); 6_000]).await.unwrap();
    let leased = h
        .store
        .job_fetch_available(&fetch_params(6_000))
        .await
        .unwrap();
    let done: Vec<_> = leased
        .iter()
        .map(|l| crate::completion(l, JobStatus::Success))
        .collect();
    assert_eq!(h.store.job_complete_many(&done).await.unwrap().len(), 6_000);
    h.age_finished(Duration::from_secs(2 * 86_400)).await;
    let pruner = forklift::maintenance::Pruner::new(h.dyn_store(), Duration::from_secs(86_400));
    let batches = std::sync::atomic::AtomicUsize::new(0);
    let pruned = pruner
        .run_while(|| batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 1)
        .await
        .unwrap();
    assert_eq!(pruned, 5_000, "one batch, then the term was over");
    assert_eq!(h.count_jobs().await, 1_000);
    assert_eq!(pruner.run_once().await.unwrap(), 1_000);
}
