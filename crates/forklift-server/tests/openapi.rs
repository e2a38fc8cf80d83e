//! The OpenAPI document lists every route the router serves, and only those, with the
//! parameters and limits the server enforces (tests/schemathesis.sh checks the same
//! against a running server).

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::TestApi;

/// The endpoints of SPEC §5 that this server covers.
const SPEC_ROUTES: &[(&str, &str)] = &[
    ("post", "/jobs"),
    ("post", "/jobs/batch"),
    ("get", "/jobs/{job_id}"),
    ("get", "/jobs"),
    ("post", "/jobs/{job_id}/cancel"),
    ("post", "/jobs/{job_id}/retry"),
    ("get", "/queues"),
    ("post", "/queues/{name}/pause"),
    ("post", "/queues/{name}/resume"),
    ("get", "/stats"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

fn documented(doc: &serde_json::Value) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.push((method.clone(), path.clone()));
        }
    }
    routes.sort();
    routes
}

#[tokio::test]
async fn every_spec_route_is_documented_and_every_documented_route_is_served() {
    let api = TestApi::start(support::Backend::Pg).await;
    let (status, doc) = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let routes = documented(&doc);
    let mut expected: Vec<(String, String)> = SPEC_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(routes, expected);
    for (method, path) in routes {
        let concrete = path
            .replace("{job_id}", "job_31c8927959d5442e90e3a6bc5a9188ec")
            .replace("{name}", "default");
        let method: Method = method.to_uppercase().parse().unwrap();
        let (status, body) = api
            .call(method.clone(), &concrete, Some(&api.key_a), None)
            .await;
        let unrouted =
            body["error"]["code"] == "no_route" || status == StatusCode::METHOD_NOT_ALLOWED;
        assert!(
            !unrouted,
            "{method} {path} is documented but not served: {status} {body}"
        );
    }
}

#[test]
fn every_operation_documents_its_error_answers() {
    let doc = serde_json::to_value(forklift_server::openapi()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|c| c.starts_with('2')),
                "{method} {path} documents success"
            );
            let schemes = op["security"].to_string();
            // Tenants' calls: key, rate limit and database. `/metrics` takes the operator's
            // token, and no rate limit or database answer of its own.
            let expected: &[&str] = if schemes.contains("api_key") {
                &["401", "429", "503"]
            } else if schemes.contains("metrics_token") {
                &["401"]
            } else {
                &[]
            };
            {
                for code in expected {
                    assert!(
                        responses.contains_key(*code),
                        "{method} {path} documents {code}"
                    );
                }
            }
        }
    }
}

fn document() -> serde_json::Value {
    serde_json::to_value(forklift_server::openapi()).unwrap()
}

#[test]
fn list_filters_are_optional_query_parameters_with_their_limits() {
    let doc = document();
    let params = doc["paths"]["/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let param = |name: &str| {
        params
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is documented"))
    };
    for p in params {
        assert_eq!(
            (&p["in"], &p["required"]),
            (&json!("query"), &json!(false)),
            "{p}"
        );
        assert!(
            p["schema"]["type"].is_string(),
            "a query parameter is never null: {p}"
        );
    }
    let names: Vec<&str> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "status",
            "type",
            "queue",
            "tag",
            "created_after",
            "created_before",
            "limit",
            "cursor"
        ]
    );
    let status = param("status");
    assert_eq!(
        (&status["style"], &status["explode"]),
        (&json!("form"), &json!(false))
    );
    assert_eq!(status["schema"]["minItems"], 1);
    let limit = &param("limit")["schema"];
    assert_eq!(
        (&limit["minimum"], &limit["maximum"]),
        (&json!(1), &json!(500))
    );
    for name in ["type", "queue"] {
        assert_eq!(param(name)["schema"]["pattern"], NAME);
    }
    let tag = &param("tag")["schema"];
    assert_eq!(
        (&tag["minLength"], &tag["maxLength"]),
        (&json!(1), &json!(100))
    );
    assert_eq!(
        param("cursor")["schema"]["pattern"],
        "^[0-9]{1,17}_[0-9a-f]{32}$"
    );
}

const NAME: &str = "^[A-Za-z0-9_.:-]{1,100}$";

#[test]
fn the_enqueue_body_states_every_limit_the_server_enforces() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let field = |name: &str| &schemas["EnqueueRequest"]["properties"][name];
    let range = |name: &str| {
        (
            field(name)["minimum"].clone(),
            field(name)["maximum"].clone(),
        )
    };
    assert_eq!(range("priority"), (json!(0), json!(9)));
    assert_eq!(range("max_attempts"), (json!(1), json!(1000)));
    assert_eq!(range("timeout_seconds"), (json!(1), json!(604_800)));
    assert_eq!(range("delay_seconds"), (json!(0), json!(315_360_000)));
    assert_eq!(field("type")["pattern"], NAME);
    assert_eq!(field("queue")["pattern"], NAME);
    let key = field("unique_key");
    assert_eq!(
        (&key["minLength"], &key["maxLength"]),
        (&json!(1), &json!(255))
    );
    let tags = field("tags");
    assert_eq!(tags["maxItems"], 20);
    assert_eq!(
        (&tags["items"]["minLength"], &tags["items"]["maxLength"]),
        (&json!(1), &json!(100))
    );
    assert_eq!(field("depends_on")["maxItems"], 0);
    assert_eq!(
        schemas["EnqueueRequest"]["not"]["required"],
        json!(["run_at", "delay_seconds"]),
        "run_at and delay_seconds exclude each other"
    );
    let jobs = &schemas["BatchRequest"]["properties"]["jobs"];
    assert_eq!(
        (&jobs["minItems"], &jobs["maxItems"]),
        (&json!(1), &json!(10_000))
    );
    let header = &doc["paths"]["/jobs"]["post"]["parameters"][0];
    assert_eq!(
        (&header["name"], &header["in"]),
        (&json!("Idempotency-Key"), &json!("header"))
    );
    assert_eq!(
        (
            &header["schema"]["minLength"],
            &header["schema"]["maxLength"]
        ),
        (&json!(1), &json!(255))
    );
}

#[test]
fn path_parameters_state_their_shapes() {
    let doc = document();
    for path in [
        "/jobs/{job_id}",
        "/jobs/{job_id}/cancel",
        "/jobs/{job_id}/retry",
    ] {
        let item = doc["paths"][path].as_object().unwrap();
        let op = item.values().next().unwrap();
        assert_eq!(
            op["parameters"][0]["schema"]["pattern"], "^job_[0-9a-f]{32}$",
            "{path}"
        );
    }
    for path in ["/queues/{name}/pause", "/queues/{name}/resume"] {
        assert_eq!(
            doc["paths"][path]["post"]["parameters"][0]["schema"]["pattern"],
            NAME
        );
    }
}

#[test]
fn the_document_lists_the_library_statuses() {
    let doc = document();
    let documented = &doc["components"]["schemas"]["StatusName"]["enum"];
    let statuses: Vec<&str> = forklift::JobStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(documented, &json!(statuses));
}
