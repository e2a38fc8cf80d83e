//! Every endpoint of the Jobs API through a real server on a loopback port and a real
//! PostgreSQL: the happy path, each error, and tenant isolation.

mod support;

use std::time::Duration;

use forklift_server::ApiConfig;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use support::{Backend, TestApi, error_code, on_both_stores};

on_both_stores!(
    enqueue_answers_202_with_the_job_and_get_returns_every_field,
    a_live_unique_key_answers_200_with_the_existing_job,
    bad_input_gets_a_clear_4xx_and_changes_nothing,
    a_body_over_the_limit_is_refused_with_413,
    requests_without_a_valid_key_get_401,
    a_revoked_key_stops_working,
    unknown_and_malformed_job_ids_answer_404,
    batch_enqueues_in_order_all_or_nothing,
    list_filters_and_pages_with_a_cursor,
    cancel_then_retry_and_the_409s,
    queues_count_by_status_and_pause_and_resume,
    stats_count_by_status_type_and_queue,
    another_tenants_jobs_are_invisible_everywhere,
    rate_limited_tenants_get_429_with_retry_after,
    a_tenants_quota_of_unfinished_jobs_answers_429_and_frees_as_jobs_end,
    dev_mode_serves_requests_without_a_key_as_the_default_tenant,
    health_ready_and_metrics_answer,
    unknown_routes_and_methods_answer_in_the_error_shape,
    values_a_store_cannot_keep_get_400_on_both_stores,
);

async fn enqueue_answers_202_with_the_job_and_get_returns_every_field(b: Backend) {
    let api = TestApi::start(b).await;
    let (status, job) = api
        .post("/jobs", json!({"type": "bulk_import", "payload": {"file_url": "https://x/a.csv", "format": "csv"}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = job["job_id"].as_str().unwrap();
    assert!(id.starts_with("job_") && id.len() == 36);
    assert_eq!(job["status"], "QUEUED");
    let (status, got) = api.get(&format!("/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    for field in [
        "job_id",
        "type",
        "queue",
        "status",
        "priority",
        "progress",
        "payload",
        "result",
        "result_url",
        "errors",
        "attempt",
        "max_attempts",
        "run_at",
        "timeout_seconds",
        "unique_key",
        "depends_on",
        "tags",
        "created_at",
        "updated_at",
        "started_at",
        "completed_at",
    ] {
        assert!(got.get(field).is_some(), "missing {field} in {got}");
    }
    assert_eq!(got["payload"]["format"], "csv");
    assert_eq!(
        (got["priority"].as_i64(), got["max_attempts"].as_i64()),
        (Some(5), Some(5))
    );
    assert!(got["created_at"].as_str().unwrap().ends_with('Z'));
}

async fn a_live_unique_key_answers_200_with_the_existing_job(b: Backend) {
    let api = TestApi::start(b).await;
    let (s1, first) = api
        .post("/jobs", json!({"type": "noop", "unique_key": "order-7"}))
        .await;
    let (s2, second) = api
        .post("/jobs", json!({"type": "noop", "unique_key": "order-7"}))
        .await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::OK));
    assert_eq!(first["job_id"], second["job_id"]);
    // The header is the same thing.
    let send = || {
        api.raw()
            .post(format!("{}/jobs", api.base))
            .bearer_auth(&api.key_a)
            .header("Idempotency-Key", "hdr-1")
            .json(&json!({"type": "noop"}))
            .send()
    };
    let (r1, r2) = (send().await.unwrap(), send().await.unwrap());
    assert_eq!(
        (r1.status(), r2.status()),
        (StatusCode::ACCEPTED, StatusCode::OK)
    );
}

async fn bad_input_gets_a_clear_4xx_and_changes_nothing(b: Backend) {
    let api = TestApi::start(b).await;
    let cases = [
        (json!({"payload": {}}), "invalid_field", ""),
        (json!({"type": "has space"}), "invalid_field", "type"),
        (
            json!({"type": "noop", "priority": 10}),
            "invalid_field",
            "priority",
        ),
        (
            json!({"type": "noop", "priority": "high"}),
            "invalid_field",
            "priority",
        ),
        (
            json!({"type": "noop", "max_attempts": 0}),
            "invalid_field",
            "max_attempts",
        ),
        (
            json!({"type": "noop", "delay_seconds": -1}),
            "invalid_field",
            "delay_seconds",
        ),
        (
            json!({"type": "noop", "run_at": "yesterday"}),
            "invalid_field",
            "run_at",
        ),
        (
            json!({"type": "noop", "prority": 1}),
            "invalid_field",
            "prority",
        ),
        (
            json!({"type": "noop", "depends_on": ["job_31c8927959d5442e90e3a6bc5a9188ec"]}),
            "invalid_field",
            "depends_on",
        ),
        (json!([1, 2]), "invalid_field", ""),
    ];
    for (body, code, mentions) in cases {
        let (status, err) = api.post("/jobs", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_code(&err), code, "{body}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(mentions),
            "{body} -> {err}"
        );
    }
    let malformed = api
        .raw()
        .post(format!("{}/jobs", api.base))
        .bearer_auth(&api.key_a)
        .header(header::CONTENT_TYPE, "application/json")
        .body("{\"type\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        error_code(&malformed.json().await.unwrap()),
        "malformed_json"
    );
    let not_json = api
        .raw()
        .post(format!("{}/jobs", api.base))
        .bearer_auth(&api.key_a)
        .body("type=noop")
        .send()
        .await;
    let not_json = not_json.unwrap();
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        error_code(&not_json.json().await.unwrap()),
        "unsupported_media_type"
    );
    let (_, list) = api.get("/jobs").await;
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        0,
        "nothing was written"
    );
}

async fn a_body_over_the_limit_is_refused_with_413(b: Backend) {
    let api = TestApi::start(b).await;
    let big = json!({"type": "noop", "payload": {"blob": "x".repeat(1024 * 1024 + 10)}});
    let (status, err) = api.post("/jobs", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&err), "payload_too_large");
}

async fn requests_without_a_valid_key_get_401(b: Backend) {
    let api = TestApi::start(b).await;
    for key in [
        None,
        Some("fk_00000000_00000000000000000000000000000000"),
        Some(""),
    ] {
        let (status, err) = api.call(Method::GET, "/jobs", key, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(error_code(&err), "unauthorized");
    }
    let basic = api
        .raw()
        .get(format!("{}/jobs", api.base))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
}

async fn a_revoked_key_stops_working(b: Backend) {
    let api = TestApi::with_config(
        b,
        ApiConfig {
            key_cache_ttl: Duration::ZERO,
            rate_limit_per_second: 0,
            ..ApiConfig::default()
        },
    )
    .await;
    assert_eq!(api.get("/jobs").await.0, StatusCode::OK);
    let prefix = api.key_a.split('_').nth(1).unwrap();
    assert!(api.store.api_key_revoke(prefix).await.unwrap());
    assert_eq!(api.get("/jobs").await.0, StatusCode::UNAUTHORIZED);
}

async fn unknown_and_malformed_job_ids_answer_404(b: Backend) {
    let api = TestApi::start(b).await;
    for path in [
        "/jobs/job_31c8927959d5442e90e3a6bc5a9188ec",
        "/jobs/nope",
        "/jobs/job_31c8927959d5442e90e3a6bc5a9188ec/cancel",
    ] {
        let method = if path.ends_with("cancel") {
            Method::POST
        } else {
            Method::GET
        };
        let (status, err) = api.call(method, path, Some(&api.key_a), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(&err), "not_found");
    }
}

async fn batch_enqueues_in_order_all_or_nothing(b: Backend) {
    let api = TestApi::start(b).await;
    let jobs: Vec<Value> = (0..50)
        .map(|i| json!({"type": "noop", "payload": {"i": i}}))
        .collect();
    let (status, body) = api.post("/jobs/batch", json!({ "jobs": jobs })).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let ids = body["job_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 50);
    let (_, tenth) = api
        .get(&format!("/jobs/{}", ids[10].as_str().unwrap()))
        .await;
    assert_eq!(tenth["payload"]["i"], 10);

    let (status, err) = api
        .post(
            "/jobs/batch",
            json!({"jobs": [{"type": "noop"}, {"type": "noop", "priority": 99}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("jobs[1]"),
        "{err}"
    );
    let (status, _) = api.post("/jobs/batch", json!({"jobs": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, list) = api.get("/jobs?limit=500").await;
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        50,
        "the refused batches wrote nothing"
    );
}

async fn list_filters_and_pages_with_a_cursor(b: Backend) {
    let api = TestApi::start(b).await;
    for i in 0..5 {
        api.post(
            "/jobs",
            json!({"type": "noop", "queue": if i < 3 { "a" } else { "b" }, "tags": ["t"]}),
        )
        .await;
    }
    api.post("/jobs", json!({"type": "other"})).await;
    let (_, page1) = api.get("/jobs?limit=4").await;
    assert_eq!(page1["jobs"].as_array().unwrap().len(), 4);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = api.get(&format!("/jobs?limit=4&cursor={cursor}")).await;
    assert_eq!(page2["jobs"].as_array().unwrap().len(), 2);
    assert!(page2["next_cursor"].is_null());
    assert_eq!(
        api.get("/jobs?queue=a").await.1["jobs"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        api.get("/jobs?type=other").await.1["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.get("/jobs?tag=t&status=QUEUED,RUNNING").await.1["jobs"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        api.get("/jobs?created_after=2000-01-01T00:00:00Z").await.1["jobs"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        api.get("/jobs?created_before=2000-01-01T00:00:00Z").await.1["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    for bad in [
        "/jobs?limit=0",
        "/jobs?limit=501",
        "/jobs?status=DONE",
        "/jobs?cursor=zzz",
        "/jobs?created_after=x",
        "/jobs?colour=red",
    ] {
        let (status, err) = api.get(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(&err), "invalid_field", "{bad}");
    }
}

async fn cancel_then_retry_and_the_409s(b: Backend) {
    let api = TestApi::start(b).await;
    let (_, job) = api
        .post("/jobs", json!({"type": "noop", "delay_seconds": 3600}))
        .await;
    let id = job["job_id"].as_str().unwrap();
    let (status, err) = api.post(&format!("/jobs/{id}/retry"), json!({})).await;
    assert_eq!(
        (status, error_code(&err)),
        (StatusCode::CONFLICT, "invalid_status")
    );
    let (status, cancelled) = api.post(&format!("/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (StatusCode::OK, Some("CANCELLED"))
    );
    let (status, err) = api.post(&format!("/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(
        (status, error_code(&err)),
        (StatusCode::CONFLICT, "invalid_status")
    );
    let (status, retried) = api.post(&format!("/jobs/{id}/retry"), json!({})).await;
    assert_eq!(
        (
            status,
            retried["status"].as_str(),
            retried["attempt"].as_i64()
        ),
        (StatusCode::OK, Some("QUEUED"), Some(0))
    );
}

async fn queues_count_by_status_and_pause_and_resume(b: Backend) {
    let api = TestApi::start(b).await;
    api.post("/jobs", json!({"type": "noop", "queue": "imports"}))
        .await;
    let (status, q) = api.post("/queues/imports/pause", json!({})).await;
    assert_eq!(
        (status, q["paused"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    assert_eq!(q["counts"]["QUEUED"], 1);
    let (_, list) = api.get("/queues").await;
    let imports = list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "imports")
        .unwrap()
        .clone();
    assert_eq!(imports["paused"], true);
    let (_, q) = api.post("/queues/imports/resume", json!({})).await;
    assert_eq!(q["paused"], false);
    let (status, err) = api.post("/queues/bad%20name/pause", json!({})).await;
    assert_eq!(
        (status, error_code(&err)),
        (StatusCode::BAD_REQUEST, "invalid_field")
    );
}

async fn stats_count_by_status_type_and_queue(b: Backend) {
    let api = TestApi::start(b).await;
    api.post("/jobs", json!({"type": "noop"})).await;
    api.post("/jobs", json!({"type": "report", "queue": "slow"}))
        .await;
    let (status, stats) = api.get("/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["counts"]["by_status"]["QUEUED"], 2);
    assert_eq!(stats["counts"]["by_type"]["report"]["QUEUED"], 1);
    assert_eq!(stats["counts"]["by_queue"]["slow"]["QUEUED"], 1);
    assert!(stats["wait_seconds"].get("p50").is_some() && stats["per_minute"].is_array());
}

async fn another_tenants_jobs_are_invisible_everywhere(b: Backend) {
    let api = TestApi::start(b).await;
    let (_, job) = api
        .post(
            "/jobs",
            json!({"type": "noop", "queue": "secret", "unique_key": "k"}),
        )
        .await;
    let id = job["job_id"].as_str().unwrap();
    let b = Some(api.key_b.as_str());
    let (unknown_status, unknown_body) = api
        .call(
            Method::GET,
            "/jobs/job_31c8927959d5442e90e3a6bc5a9188ec",
            b,
            None,
        )
        .await;
    for (method, path) in [
        (Method::GET, format!("/jobs/{id}")),
        (Method::POST, format!("/jobs/{id}/cancel")),
        (Method::POST, format!("/jobs/{id}/retry")),
    ] {
        let (status, body) = api.call(method, &path, b, None).await;
        assert_eq!(
            (status, &body),
            (unknown_status, &unknown_body),
            "{path} answers like an unknown job"
        );
    }
    let (_, list) = api.call(Method::GET, "/jobs", b, None).await;
    assert!(list["jobs"].as_array().unwrap().is_empty());
    let (_, queues) = api.call(Method::GET, "/queues", b, None).await;
    assert!(queues["queues"].as_array().unwrap().is_empty());
    let (_, stats) = api.call(Method::GET, "/stats", b, None).await;
    assert_eq!(stats["counts"]["by_status"]["QUEUED"], 0);
    // Same unique key, other tenant: a new job, not A's.
    let (status, theirs) = api
        .call(
            Method::POST,
            "/jobs",
            b,
            Some(json!({"type": "noop", "unique_key": "k"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(theirs["job_id"], job["job_id"]);
    // B pausing "secret" does not pause A's queue.
    api.call(Method::POST, "/queues/secret/pause", b, None)
        .await;
    let (_, a_queues) = api.get("/queues").await;
    assert_eq!(a_queues["queues"][0]["paused"], false);
}

async fn a_tenants_quota_of_unfinished_jobs_answers_429_and_frees_as_jobs_end(b: Backend) {
    let api = TestApi::with_config(
        b,
        ApiConfig {
            max_unfinished_jobs: 3,
            ..ApiConfig::default()
        },
    )
    .await;
    // No worker runs `report`: the jobs stay queued.
    let job = || json!({"type": "report"});
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, body) = api.post("/jobs", job()).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        ids.push(body["job_id"].as_str().unwrap().to_string());
    }
    let resp = api
        .raw()
        .post(format!("{}/jobs", api.base))
        .bearer_auth(&api.key_a)
        .json(&job())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(error_code(&resp.json().await.unwrap()), "quota_exceeded");
    let batch = json!({"jobs": [job()]});
    let (status, body) = api.post("/jobs/batch", batch.clone()).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
    );
    // Another tenant has a quota of its own.
    let (status, _) = api
        .call(Method::POST, "/jobs", Some(&api.key_b), Some(job()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // A job that ends frees its place; a batch larger than the room left is refused whole.
    let (status, _) = api
        .post(&format!("/jobs/{}/cancel", ids[0]), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let two = json!({"jobs": [job(), job()]});
    let (status, body) = api.post("/jobs/batch", two).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
    );
    let (status, _) = api.post("/jobs/batch", batch).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Retrying the cancelled job would make a fourth unfinished one.
    let (status, body) = api
        .post(&format!("/jobs/{}/retry", ids[0]), json!({}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
    );
    let (_, listed) = api.get("/jobs?status=QUEUED").await;
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        3,
        "the refused calls wrote nothing"
    );

    // Twenty batches of 10 at once against room for 47: each sees the others in flight,
    // so no more than the room is accepted.
    let api = TestApi::with_config(
        b,
        ApiConfig {
            max_unfinished_jobs: 50,
            rate_limit_per_second: 0,
            ..ApiConfig::default()
        },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(api.post("/jobs", job()).await.0, StatusCode::ACCEPTED);
    }
    let too_many = json!({"jobs": vec![job(); 51]});
    let (status, body) = api.post("/jobs/batch", too_many).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "batch_exceeds_quota"),
        "a batch that can never fit is not a 429 to retry"
    );
    let ten = json!({"jobs": vec![job(); 10]});
    let calls = (0..20).map(|_| api.post("/jobs/batch", ten.clone()));
    let answers = futures::future::join_all(calls).await;
    let accepted = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    assert!(
        answers
            .iter()
            .all(|(s, body)| *s == StatusCode::ACCEPTED || error_code(body) == "quota_exceeded")
    );
    assert!(
        accepted <= 4,
        "{accepted} batches of 10 accepted into room for 47"
    );
}

async fn rate_limited_tenants_get_429_with_retry_after(b: Backend) {
    let api = TestApi::with_config(
        b,
        ApiConfig {
            rate_limit_per_second: 1,
            rate_limit_burst: 2,
            ..ApiConfig::default()
        },
    )
    .await;
    assert_eq!(api.get("/jobs").await.0, StatusCode::OK);
    assert_eq!(api.get("/jobs").await.0, StatusCode::OK);
    let resp = api
        .raw()
        .get(format!("{}/jobs", api.base))
        .bearer_auth(&api.key_a)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        resp.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(error_code(&resp.json().await.unwrap()), "rate_limited");
    let (status, _) = api.call(Method::GET, "/jobs", Some(&api.key_b), None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "other tenants keep their own budget"
    );
}

async fn dev_mode_serves_requests_without_a_key_as_the_default_tenant(b: Backend) {
    let api = TestApi::with_config(
        b,
        ApiConfig {
            dev: true,
            rate_limit_per_second: 0,
            ..ApiConfig::default()
        },
    )
    .await;
    let (status, job) = api
        .call(Method::POST, "/jobs", None, Some(json!({"type": "noop"})))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = api
        .call(
            Method::GET,
            &format!("/jobs/{}", job["job_id"].as_str().unwrap()),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(
            Method::GET,
            &format!("/jobs/{}", job["job_id"].as_str().unwrap()),
            Some(&api.key_a),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a real key still acts for its own tenant"
    );
}

async fn health_ready_and_metrics_answer(b: Backend) {
    let api = TestApi::with_config(
        b,
        ApiConfig {
            rate_limit_per_second: 0,
            metrics_token: Some("scrape-secret".into()),
            ..ApiConfig::default()
        },
    )
    .await;
    assert_eq!(
        api.call(Method::GET, "/health", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Method::GET, "/ready", None, None).await.1["status"],
        "ready"
    );
    let (status, body) = api.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let tenant_key = api.key_a.clone();
    let (status, _) = api
        .call(Method::GET, "/metrics", Some(&tenant_key), None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a tenant's key does not open it"
    );
    let (status, _) = api
        .call(Method::GET, "/metrics", Some("scrape-secret"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_database_that_is_down_gets_a_quick_503_not_a_hang() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let store = std::sync::Arc::new(forklift::PgStore::from_pool(pool));
    let base = support::serve(
        store,
        ApiConfig {
            dev: true,
            ..ApiConfig::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let resp = http
        .post(format!("{base}/jobs"))
        .json(&json!({"type": "noop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        error_code(&resp.json().await.unwrap()),
        "database_unavailable"
    );
    assert_eq!(
        http.get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        http.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered without hanging"
    );
}

async fn unknown_routes_and_methods_answer_in_the_error_shape(b: Backend) {
    let api = TestApi::start(b).await;
    let (status, err) = api.get("/nowhere").await;
    assert_eq!(
        (status, error_code(&err)),
        (StatusCode::NOT_FOUND, "no_route")
    );
    let (status, err) = api
        .call(Method::DELETE, "/jobs", Some(&api.key_a), None)
        .await;
    assert_eq!(
        (status, error_code(&err)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

/// Values PostgreSQL cannot keep once answered 503 (and clients retried forever), while
/// SQLite took them: now both stores refuse them alike, with a 400 naming the field.
async fn values_a_store_cannot_keep_get_400_on_both_stores(b: Backend) {
    let api = TestApi::start(b).await;
    let key = api.key_a.clone();
    let bodies = [
        (json!({"type": "t", "payload": {"k": "a\u{0}b"}}), "payload"),
        (json!({"type": "t", "payload": {"k\u{0}": 1}}), "payload"),
        (json!({"type": "t", "tags": ["a\u{0}"]}), "tags"),
        (json!({"type": "t", "unique_key": "u\u{0}"}), "unique_key"),
        (
            json!({"type": "t", "run_at": "9999-01-01T00:00:00Z"}),
            "run_at",
        ),
    ];
    for (body, field) in bodies {
        let (status, answer) = api
            .call(Method::POST, "/jobs", Some(&key), Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    let (status, answer) = api
        .call(
            Method::POST,
            "/jobs",
            Some(&key),
            Some(json!({"type": "t", "run_at": "0001-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "a past run_at is now: {answer}"
    );
    for (query, expected) in [
        ("tag=a%00b", StatusCode::BAD_REQUEST),
        ("type=%00", StatusCode::BAD_REQUEST),
        (
            "cursor=-8000000000000000000_0190f1d2c3b4a5968778695a4b3c2d1e",
            StatusCode::BAD_REQUEST,
        ),
        (
            "cursor=-1_0190f1d2c3b4a5968778695a4b3c2d1e",
            StatusCode::BAD_REQUEST,
        ),
        (
            "created_before=-262143-01-01T00:00:00Z",
            StatusCode::BAD_REQUEST,
        ),
        (
            "created_after=%2B262142-12-31T00:00:00Z",
            StatusCode::BAD_REQUEST,
        ),
        ("created_after=1900-01-01T00:00:00Z", StatusCode::OK),
    ] {
        let (status, answer) = api
            .call(Method::GET, &format!("/jobs?{query}"), Some(&key), None)
            .await;
        assert_eq!(status, expected, "{query}: {answer}");
        if status == StatusCode::BAD_REQUEST {
            assert_eq!(
                error_code(&answer),
                "invalid_field",
                "{query}: validation caught it"
            );
        }
    }
    let (_, list) = api.call(Method::GET, "/jobs", Some(&key), None).await;
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        1,
        "only the valid job"
    );
}
