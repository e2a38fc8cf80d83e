//! The OpenAPI document lists every route the router serves, and only those.

mod support;

use reqwest::{Method, StatusCode};
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
