//! Hostile and careless requests, through a real server on a loopback port: ambiguous
//! headers, malformed paths, foreign charsets, reused idempotency keys, numbers past f64,
//! input a store cannot hold, and web pages calling a `--dev` server. (Hostile connections
//! are in slow_clients.rs.)

mod support;

use forklift_server::ApiConfig;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use support::{Backend, TestApi, error_code, on_both_stores};

on_both_stores!(
    repeated_authorization_idempotency_key_or_content_type_headers_get_400,
    every_rejection_answers_in_the_error_shape,
    a_json_body_in_another_charset_than_utf8_gets_415,
    an_idempotency_key_reused_with_another_request_gets_409,
    payload_numbers_keep_every_digit,
    input_a_store_cannot_hold_gets_400_and_writes_nothing,
    dev_mode_refuses_foreign_hosts_and_web_pages_of_other_origins,
);

fn no_rate_limit() -> ApiConfig {
    ApiConfig {
        rate_limit_per_second: 0,
        ..ApiConfig::default()
    }
}

async fn repeated_authorization_idempotency_key_or_content_type_headers_get_400(b: Backend) {
    let api = TestApi::start(b).await;
    let jobs = format!("{}/jobs", api.base);
    let twice = [
        api.raw()
            .get(&jobs)
            .bearer_auth(&api.key_a)
            .bearer_auth(&api.key_a),
        api.raw()
            .get(&jobs)
            .bearer_auth(&api.key_a)
            .bearer_auth(&api.key_b),
        api.raw()
            .get(&jobs)
            .bearer_auth("nonsense")
            .bearer_auth(&api.key_a),
        api.raw()
            .post(&jobs)
            .bearer_auth(&api.key_a)
            .header("Idempotency-Key", "a")
            .header("Idempotency-Key", "b")
            .json(&json!({"type": "noop"})),
        api.raw()
            .post(&jobs)
            .bearer_auth(&api.key_a)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(r#"{"type": "noop"}"#),
    ];
    for request in twice {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error_code(&resp.json().await.unwrap()), "duplicate_header");
    }
    let (_, list) = api.get("/jobs").await;
    assert_eq!(list["jobs"], json!([]), "nothing was written");
}

async fn every_rejection_answers_in_the_error_shape(b: Backend) {
    let api = TestApi::start(b).await;
    let cases = [
        (Method::GET, "/jobs/%FF", StatusCode::NOT_FOUND),
        (Method::POST, "/jobs/%FF/cancel", StatusCode::NOT_FOUND),
        (Method::POST, "/jobs/job_%FF/retry", StatusCode::NOT_FOUND),
        (Method::POST, "/queues/%FF/pause", StatusCode::BAD_REQUEST),
        (
            Method::POST,
            "/queues/%FF%FE/resume",
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, "/jobs?limit=many", StatusCode::BAD_REQUEST),
        (Method::GET, "/jobs?limit=%FF", StatusCode::BAD_REQUEST),
        (Method::GET, "/jobs?type=%FF", StatusCode::BAD_REQUEST),
        (
            Method::GET,
            "/jobs?created_after=%FF",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/jobs?limit=1&limit=2",
            StatusCode::BAD_REQUEST,
        ),
        (Method::DELETE, "/jobs", StatusCode::METHOD_NOT_ALLOWED),
        (Method::PUT, "/jobs/%FF", StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/%FF", StatusCode::NOT_FOUND),
    ];
    for (method, path, status) in cases {
        let resp = api
            .raw()
            .request(method.clone(), format!("{}{path}", api.base))
            .bearer_auth(&api.key_a)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{method} {path}");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/json",
            "{method} {path}"
        );
        error_code(&resp.json().await.unwrap());
    }
}

async fn a_json_body_in_another_charset_than_utf8_gets_415(b: Backend) {
    let api = TestApi::start(b).await;
    let send = |content_type: &'static str| {
        api.raw()
            .post(format!("{}/jobs", api.base))
            .bearer_auth(&api.key_a)
            .header(header::CONTENT_TYPE, content_type)
            .body(r#"{"type": "noop"}"#)
            .send()
    };
    for refused in [
        "application/json; charset=utf-16",
        "application/json; charset=iso-8859-1",
        "application/json; charset=\"utf-16le\"",
        "text/plain; charset=utf-8",
        "application/jsonx",
    ] {
        let resp = send(refused).await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{refused}"
        );
        assert_eq!(
            error_code(&resp.json().await.unwrap()),
            "unsupported_media_type"
        );
    }
    let (_, list) = api.get("/jobs").await;
    assert_eq!(list["jobs"], json!([]), "nothing was written");
    for accepted in [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=\"UTF-8\"",
        "application/vnd.forklift+json",
    ] {
        assert_eq!(
            send(accepted).await.unwrap().status(),
            StatusCode::ACCEPTED,
            "{accepted}"
        );
    }
}

async fn an_idempotency_key_reused_with_another_request_gets_409(b: Backend) {
    let api = TestApi::start(b).await;
    let send = |key: &'static str, body: Value| {
        api.raw()
            .post(format!("{}/jobs", api.base))
            .bearer_auth(&api.key_a)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = json!({
        "type": "report", "payload": {"b": [1, 2.5], "a": 100}, "queue": "slow", "priority": 3,
        "max_attempts": 7, "timeout_seconds": 60, "tags": ["x", "y"], "delay_seconds": 3600,
    });
    let resp = send("order-7", first.clone()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job: Value = resp.json().await.unwrap();
    // The same request again (keys and tags reordered, numbers spelt differently, a
    // later time): the same job.
    let mut again = first.clone();
    again["payload"] = serde_json::from_str(r#"{"a": 1e2, "b": [1, 2.50]}"#).unwrap();
    again["delay_seconds"] = json!(7200);
    again["tags"] = json!(["y", "x"]);
    let resp = send("order-7", again).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["job_id"], job["job_id"]);
    // Any difference in what the job is: 409, naming the field.
    for (field, value) in [
        ("type", json!("other")),
        ("payload", json!({"a": 100, "b": [1, 2.5, 3]})),
        ("queue", json!("default")),
        ("priority", json!(4)),
        ("max_attempts", json!(5)),
        ("timeout_seconds", Value::Null),
        ("tags", json!(["x", "z"])),
    ] {
        let mut other = first.clone();
        other[field] = value;
        let resp = send("order-7", other).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CONFLICT, "{field}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(error_code(&err), "idempotency_key_reused", "{field}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{field}`")),
            "{err}"
        );
    }
    // The body's unique_key keeps its meaning: the live job answers, whatever the request.
    let (status, _) = api
        .post("/jobs", json!({"type": "noop", "unique_key": "u-1"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, same) = api
        .post(
            "/jobs",
            json!({"type": "other", "unique_key": "u-1", "priority": 0}),
        )
        .await;
    assert_eq!(
        (status, same["type"].as_str()),
        (StatusCode::OK, Some("noop"))
    );
    // A body with its own unique_key makes the header ignored.
    let resp = send("order-7", json!({"type": "noop", "unique_key": "k-2"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.json::<Value>().await.unwrap()["unique_key"], "k-2");
    let (_, list) = api.get("/jobs").await;
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        3,
        "no refused request wrote a job"
    );
}

async fn payload_numbers_keep_every_digit(b: Backend) {
    let api = TestApi::start(b).await;
    let numbers = r#"{"big": 123456789012345678901234567890, "negative": -98765432109876543210987654321, "decimal": 0.1000000000000000000000000001, "small": 2}"#;
    let resp = api
        .raw()
        .post(format!("{}/jobs", api.base))
        .bearer_auth(&api.key_a)
        .header(header::CONTENT_TYPE, "application/json")
        .body(format!(r#"{{"type": "noop", "payload": {numbers}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let enqueued = resp.text().await.unwrap();
    let id = serde_json::from_str::<Value>(&enqueued).unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let read = api
        .raw()
        .get(format!("{}/jobs/{id}", api.base))
        .bearer_auth(&api.key_a)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for answer in [&enqueued, &read] {
        for digits in [
            r#""big":123456789012345678901234567890"#,
            r#""negative":-98765432109876543210987654321"#,
            r#""decimal":0.1000000000000000000000000001"#,
            r#""small":2"#,
        ] {
            assert!(answer.contains(digits), "{digits} in {answer}");
        }
    }
}

async fn input_a_store_cannot_hold_gets_400_and_writes_nothing(b: Backend) {
    let api = TestApi::start(b).await;
    let bodies = [
        (
            r#"{"type": "noop", "payload": {"text": "a\u0000b"}}"#,
            "payload",
        ),
        (r#"{"type": "noop", "payload": {"a\u0000": 1}}"#, "payload"),
        (r#"{"type": "noop", "payload": [1e131072]}"#, "payload"),
        (r#"{"type": "noop", "payload": [1e-16384]}"#, "payload"),
        (r#"{"type": "noop", "tags": ["a\u0000"]}"#, "tags"),
        (r#"{"type": "noop", "unique_key": "k\u0000"}"#, "unique_key"),
        (
            r#"{"type": "noop", "run_at": "-10000-01-01T00:00:00Z"}"#,
            "run_at",
        ),
        (
            r#"{"type": "noop", "run_at": "-0001-01-01T00:00:00Z"}"#,
            "run_at",
        ),
    ];
    for (body, field) in bodies {
        let resp = api
            .raw()
            .post(format!("{}/jobs", api.base))
            .bearer_auth(&api.key_a)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(error_code(&err), "invalid_field", "{body}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(field),
            "{err}"
        );
    }
    for query in [
        "tag=%00",
        "tag=",
        "type=%00",
        "queue=a%00",
        "created_after=-10000-01-01T00:00:00Z",
        "created_before=-0001-12-31T00:00:00Z",
        "cursor=-8000000000000000000_01a235735f5e71539f92aca7fac1ebb1",
        "cursor=1_01A235735F5E71539F92ACA7FAC1EBB1",
    ] {
        let (status, err) = api.get(&format!("/jobs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(error_code(&err), "invalid_field", "{query}");
    }
    let (status, list) = api.get("/jobs").await;
    assert_eq!(
        (status, &list["jobs"]),
        (StatusCode::OK, &json!([])),
        "nothing was written"
    );
}

async fn dev_mode_refuses_foreign_hosts_and_web_pages_of_other_origins(b: Backend) {
    let api = TestApi::with_config(
        b,
        ApiConfig {
            dev: true,
            ..no_rate_limit()
        },
    )
    .await;
    let port = api.addr().port();
    let pause = |host: Option<String>, origin: Option<&'static str>| {
        let mut req = api.raw().post(format!("{}/queues/default/pause", api.base));
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        req.send()
    };
    for (host, origin) in [
        (Some("evil.example".to_string()), None),
        (Some(format!("evil.example:{port}")), None),
        (Some(format!("127.0.0.1.nip.io:{port}")), None),
        (None, Some("http://evil.example")),
        (None, Some("null")),
        (None, Some("http://localhost.evil.example:3000")),
        (
            Some(format!("localhost:{port}")),
            Some("https://evil.example"),
        ),
    ] {
        let resp = pause(host.clone(), origin).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{host:?} {origin:?}");
        assert_eq!(error_code(&resp.json().await.unwrap()), "forbidden");
    }
    let (_, queues) = api.call(Method::GET, "/queues", None, None).await;
    assert_eq!(
        queues["queues"],
        json!([]),
        "no refused request paused the queue"
    );
    for (host, origin) in [
        (None, None),
        (Some(format!("localhost:{port}")), None),
        (Some(format!("[::1]:{port}")), None),
        (None, Some("http://localhost:3000")),
        (None, Some("http://127.0.0.1:8080")),
        (Some(format!("127.0.0.1:{port}")), Some("https://[::1]")),
    ] {
        let resp = pause(host.clone(), origin).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{host:?} {origin:?}");
    }
}

#[tokio::test]
async fn without_dev_mode_any_host_and_origin_may_call_with_a_key() {
    let api = TestApi::start(Backend::Sqlite).await;
    let resp = api
        .raw()
        .get(format!("{}/jobs", api.base))
        .bearer_auth(&api.key_a)
        .header(header::HOST, "jobs.example.com")
        .header(header::ORIGIN, "https://dashboard.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
