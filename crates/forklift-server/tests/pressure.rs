//! Heavy API traffic must not reach the workers, and `/metrics` must stay small and true:
//! a flood of requests (most with made-up keys) while jobs run loses no lease, and
//! metrics bound their labels and put an emptied queue's depth back to 0.

mod support;

use std::sync::Arc;
use std::time::Duration;

use forklift::{
    Client, JobStatus, NewJob, PgStore, Registry, Store, Worker, WorkerConfig, builtin,
};
use forklift_server::auth::issue_key;
use forklift_server::{ApiConfig, AppState, router};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_api_requests_does_not_cost_a_running_job_its_lease() {
    let schema = forklift_testkit::fresh_schema().await;
    // A small API pool with the production acquire timeout, so that the flood saturates
    // it: what the workers need must come from elsewhere.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(forklift::store::postgres::ACQUIRE_TIMEOUT)
        .connect_with(schema.connect_options())
        .await
        .unwrap();
    let store = Arc::new(PgStore::from_pool(pool.clone()));
    store.migrate().await.unwrap();
    let tenant = store.tenant_create("busy").await.unwrap().tenant_id;
    let key = issue_key(&*store, tenant).await.unwrap().key;
    // A history that makes each `GET /stats` hold a connection for a while.
    let client = Client::new(store.clone()).for_tenant(tenant);
    for _ in 0..10 {
        client
            .enqueue_many(&vec![NewJob::new("old", json!({})); 10_000])
            .await
            .unwrap();
    }
    sqlx::query(
        "update forklift_jobs set status = 'SUCCESS', started_at = now(), completed_at = now()",
    )
    .execute(&pool)
    .await
    .unwrap();
    let config = ApiConfig {
        rate_limit_per_second: 0,
        ..ApiConfig::default()
    };
    let base = support::serve(store.clone(), config).await;

    let mut registry = Registry::new();
    registry.register("simulate", builtin::Simulate);
    let worker_config = WorkerConfig {
        lease_ttl: Duration::from_secs(2),
        heartbeat_interval: Duration::from_millis(300),
        poll_interval: Duration::from_millis(100),
        maintenance: None,
        ..WorkerConfig::default()
    };
    let worker = Worker::start(store.clone(), registry, worker_config);
    let jobs = vec![NewJob::new("simulate", json!({"steps": 8, "step_ms": 500})); 3];
    let ids: Vec<_> = client
        .enqueue_many(&jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.job.job_id)
        .collect();

    let stop = tokio_util::sync::CancellationToken::new();
    let http = reqwest::Client::new();
    let mut flood = Vec::new();
    for i in 0..64 {
        let (http, base, key, stop) = (http.clone(), base.clone(), key.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                // Made-up keys of the right shape (each a look-up), and a real tenant's reads.
                let made_up = format!("fk_{:08x}_{:032x}", i, rand::random::<u128>());
                let (path, bearer) = if sent.is_multiple_of(2) {
                    ("/jobs", made_up.as_str())
                } else {
                    ("/stats", key.as_str())
                };
                let _ = http
                    .get(format!("{base}{path}"))
                    .bearer_auth(bearer)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                sent += 1;
            }
            sent
        }));
    }
    for id in &ids {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let job = client.get(*id).await;
            if let Ok(job) = job
                && job.status != JobStatus::Running
                && job.status != JobStatus::Queued
            {
                assert_eq!(
                    (job.status, job.attempt),
                    (JobStatus::Success, 1),
                    "errors: {:?}",
                    job.errors
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not finish"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.cancel();
    let mut sent = 0;
    for f in flood {
        sent += f.await.unwrap();
    }
    assert!(sent > 100, "the flood was a flood: {sent} requests");
    worker.shutdown().await;
}

#[tokio::test]
async fn metrics_bound_their_labels_and_an_emptied_queue_reads_zero() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    let store: Arc<dyn Store> = Arc::new(
        forklift::SqliteStore::connect(path.to_str().unwrap())
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let config = ApiConfig {
        dev: true,
        rate_limit_per_second: 0,
        metrics_token: Some("scrape".into()),
        ..ApiConfig::default()
    };
    let state = AppState::new(Client::new(store.clone()), config, Some(handle));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    let http = reqwest::Client::new();
    let scrape = || async {
        http.get(format!("{base}/metrics"))
            .bearer_auth("scrape")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };

    let jobs: Vec<_> = (0..150)
        .map(|i| json!({"type": format!("made_up_{i}"), "queue": "flooded"}))
        .collect();
    let answer: serde_json::Value = http
        .post(format!("{base}/jobs/batch"))
        .json(&json!({"jobs": jobs}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = scrape().await;
    let enqueued: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("forklift_jobs_enqueued_total{"))
        .collect();
    assert!(
        enqueued.len() <= forklift::metric_labels::MAX_LABELLED + 1,
        "{} series",
        enqueued.len()
    );
    assert!(enqueued.iter().any(|l| l.contains("type=\"_other\"")));
    let depth = |text: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("forklift_queue_depth{")
                    && l.contains("queue=\"flooded\"")
                    && l.contains("status=\"QUEUED\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse::<f64>().unwrap())
    };
    assert_eq!(depth(&text), Some(150.0));

    for id in answer["job_ids"].as_array().unwrap() {
        let id = id.as_str().unwrap();
        http.post(format!("{base}/jobs/{id}/cancel"))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5_100)).await; // the depth reading's lifetime
    assert_eq!(depth(&scrape().await), Some(0.0), "the queue emptied");
}

/// While key look-ups are backed up, a key seen a moment ago keeps its last answer, but not
/// for ever: a revoked key cannot be kept alive by a flood that holds every look-up.
#[tokio::test]
async fn a_flood_of_look_ups_does_not_keep_a_revoked_key_alive() {
    let schema = forklift_testkit::fresh_schema().await;
    let store = Arc::new(PgStore::from_pool(schema.pool.clone()));
    store.migrate().await.unwrap();
    let tenant = store.tenant_create("revoked").await.unwrap().tenant_id;
    let key = issue_key(&*store, tenant).await.unwrap();
    let ttl = Duration::from_millis(100);
    let cache = Arc::new(forklift_server::auth::KeyCache::new(store.clone(), ttl));
    assert_eq!(cache.tenant_of(&key.key).await.unwrap(), Some(tenant));
    assert!(store.api_key_revoke(&key.prefix).await.unwrap());
    tokio::time::sleep(ttl * 4).await;
    // Hold every look-up: the keys table is locked, so each waits.
    let mut lock = schema.pool.begin().await.unwrap();
    sqlx::query("lock table forklift_api_keys in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let held: Vec<_> = (0..4)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let made_up = format!("fk_{i:08x}_{:032x}", rand::random::<u128>());
                let _ = cache.tenant_of(&made_up).await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = cache.tenant_of(&key.key).await;
    assert!(
        answer.is_err(),
        "a revoked key is not served from an old answer: {:?}",
        answer.map(|t| t.is_some())
    );
    lock.rollback().await.unwrap();
    for h in held {
        h.await.unwrap();
    }
}
