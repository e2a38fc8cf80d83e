//! Property tests of the completion path on both stores: whatever a handler ends with
//! (any status, any strings, NUL characters included, any JSON, any delay or progress),
//! its completion is written, the job takes the status decided for it, and nothing is
//! left for the database to refuse.

mod support;

use std::time::Duration;

use forklift::store::{Completion, FetchParams, Lease};
use forklift::{ErrorEntry, JobStatus, NewJob};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::Harness;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z\u{0}é✓]{0,12}",
        Just("\u{0}".to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
struct Outcome {
    status: JobStatus,
    result: Option<Value>,
    result_url: Option<String>,
    errors: Vec<(String, String, Value)>,
    retry_in: Duration,
    give_back: bool,
    progress: Option<i16>,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    (
        prop::sample::select(vec![
            JobStatus::Success,
            JobStatus::PartialSuccess,
            JobStatus::Failed,
            JobStatus::Cancelled,
            JobStatus::Queued,
        ]),
        prop::option::of(json_value()),
        prop::option::of(text()),
        prop::collection::vec((text(), text(), json_value()), 0..3),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        any::<bool>(),
        prop::option::of(any::<i16>()),
    )
        .prop_map(
            |(status, result, result_url, errors, retry_in, give_back, progress)| Outcome {
                status,
                result,
                result_url,
                errors,
                retry_in,
                give_back,
                progress,
            },
        )
}

async fn complete_one(h: &Harness, o: &Outcome) {
    let client = h.client();
    let id = client
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    let params = FetchParams {
        queue: "default".into(),
        types: vec!["noop".into()],
        limit: 1,
        worker_id: "prop".into(),
        lease_ttl: Duration::from_secs(30),
    };
    let leased = h
        .store
        .job_fetch_available(&params)
        .await
        .unwrap()
        .remove(0);
    let completion = Completion {
        lease: Lease {
            job_id: id,
            token: leased.lease_token,
        },
        attempt: leased.job.attempt,
        status: o.status,
        result: o.result.clone(),
        result_url: o.result_url.clone(),
        errors: o
            .errors
            .iter()
            .map(|(message, code, details)| ErrorEntry {
                message: message.clone(),
                code: code.clone(),
                attempt: 1,
                at: chrono::Utc::now(),
                details: details.clone(),
            })
            .collect(),
        retry_in: o.retry_in,
        give_attempt_back: o.give_back,
        progress: o.progress,
    };
    let accepted = h.store.job_complete_many(&[completion]).await;
    assert_eq!(accepted.unwrap(), [id], "{o:?}");
    let job = client.get(id).await.unwrap();
    assert_eq!(job.status, o.status);
    assert!((0..=100).contains(&job.progress));
    assert_eq!(job.errors.len(), o.errors.len());
    let no_nul = |s: &str| !s.contains('\0');
    assert!(
        job.errors
            .iter()
            .all(|e| no_nul(&e.message) && no_nul(&e.code))
    );
    if let Some(r) = &job.result {
        assert!(!r.to_string().contains("\\u0000"), "{r}");
    }
    if o.status == JobStatus::Queued {
        let ahead = job.run_at - chrono::Utc::now();
        assert!(ahead.num_days() <= 3651, "{ahead}");
    }
}

fn check_store<F: Future<Output = Harness>>(make: impl FnOnce() -> F) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let h = runtime.block_on(make());
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    proptest!(config, |(o in outcome())| {
        runtime.block_on(complete_one(&h, &o));
    });
}

#[test]
fn any_outcome_is_written_on_postgres() {
    check_store(Harness::pg);
}

#[test]
fn any_outcome_is_written_on_sqlite() {
    check_store(Harness::sqlite);
}
