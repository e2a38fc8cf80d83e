//! Values a store cannot keep, and the edges of time: both stores refuse the same inputs
//! (one validation) or store them the same way, and nothing reaches a database as an
//! error. Also the ends of a job that a cancel or a retry must not get wrong.

use std::time::Duration;

use chrono::{DateTime, Utc};
use forklift::store::{Completion, RescueParams};
use forklift::{Backoff, Cursor, Error, JobStatus, ListParams, NewJob};
use serde_json::json;

use crate::support::Harness;
use crate::{completion, error_entry, fetch_one, fetch_params, lease, noop};

/// The first instant of a year (negative years are before Christ, as in RFC 3339's extension).
fn year(y: i32) -> DateTime<Utc> {
    chrono::NaiveDate::from_ymd_opt(y, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
}

fn invalid_field(result: forklift::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::Invalid { field, .. }) => field,
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

pub async fn nul_characters_are_refused_in_every_field_before_anything_is_written(h: Harness) {
    let client = h.client();
    let cases = [
        (noop().tags(["a\0b"]), "tags"),
        (noop().unique_key("k\0"), "unique_key"),
        (NewJob::new("noop", json!({"k": "v\0"})), "payload"),
        (NewJob::new("noop", json!({"k\0": 1})), "payload"),
        (NewJob::new("noop", json!([[{"deep": ["\0"]}]])), "payload"),
    ];
    for (job, field) in cases {
        assert_eq!(
            invalid_field(client.enqueue_many(&[noop(), job]).await),
            field
        );
    }
    assert_eq!(h.count_jobs().await, 0, "a refused batch writes nothing");
    for params in [
        ListParams {
            tag: Some("a\0b".into()),
            ..ListParams::default()
        },
        ListParams {
            job_type: Some("\0".into()),
            ..ListParams::default()
        },
        ListParams {
            queue: Some("q\0".into()),
            ..ListParams::default()
        },
    ] {
        invalid_field(client.list(&params).await);
    }
}

pub async fn a_run_at_in_the_past_is_due_now_and_does_not_jump_the_line(h: Harness) {
    let client = h.client();
    let first = client.enqueue(noop()).await.unwrap().job.job_id;
    let (year_one, before_christ) = (year(1), year(0));
    let ancient = client.enqueue(noop().run_at(year_one)).await.unwrap().job;
    let older = client
        .enqueue(noop().run_at(before_christ))
        .await
        .unwrap()
        .job;
    assert!(ancient.run_at > Utc::now() - chrono::Duration::seconds(60));
    assert!(older.run_at > Utc::now() - chrono::Duration::seconds(60));
    let order: Vec<_> = h
        .store
        .job_fetch_available(&fetch_params(3))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.job.job_id)
        .collect();
    assert_eq!(order, [first, ancient.job_id, older.job_id]);
}

pub async fn a_run_at_more_than_ten_years_ahead_or_before_year_zero_is_refused(h: Harness) {
    let far = Utc::now() + chrono::Duration::days(11 * 365);
    assert_eq!(
        invalid_field(h.client().enqueue(noop().run_at(far)).await),
        "run_at"
    );
    let near = Utc::now() + chrono::Duration::days(9 * 365);
    assert!(h.client().enqueue(noop().run_at(near)).await.is_ok());
    let before_year_zero = year(-4800);
    assert_eq!(
        invalid_field(h.client().enqueue(noop().run_at(before_year_zero)).await),
        "run_at"
    );
}

pub async fn list_time_filters_and_cursors_outside_the_calendar_are_refused_not_failed(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let (min, max) = (year(0), year(9999));
    let all = |after, before| ListParams {
        created_after: Some(after),
        created_before: Some(before),
        ..ListParams::default()
    };
    let page = client.list(&all(min, max)).await.unwrap();
    assert_eq!(page.jobs.iter().map(|j| j.job_id).collect::<Vec<_>>(), [id]);
    assert!(client.list(&all(max, max)).await.unwrap().jobs.is_empty());
    assert!(client.list(&all(min, min)).await.unwrap().jobs.is_empty());
    for outside in [DateTime::<Utc>::MIN_UTC, year(-1), year(10_000)] {
        assert_eq!(
            invalid_field(client.list(&all(outside, max)).await),
            "created_after"
        );
    }
    for token in [
        "1_0190F1D2C3B4A5968778695A4B3C2D1E",
        "-8000000000000000000_0190f1d2c3b4a5968778695a4b3c2d1e",
        "-1_0190f1d2c3b4a5968778695a4b3c2d1e",
        "9223372036854775807_0190f1d2c3b4a5968778695a4b3c2d1e",
    ] {
        assert!(Cursor::decode(token).is_none(), "{token}");
    }
}

pub async fn a_completion_with_nul_characters_is_stored_with_them_replaced(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let leased = fetch_one(&h).await;
    let done = Completion {
        status: JobStatus::PartialSuccess,
        result: Some(json!({"k\0": ["v\0"]})),
        result_url: Some("https://x/\0".into()),
        errors: vec![error_entry("bad\0byte", 1)],
        ..completion(&leased, JobStatus::PartialSuccess)
    };
    assert_eq!(h.store.job_complete_many(&[done]).await.unwrap(), [id]);
    let job = client.get(id).await.unwrap();
    assert_eq!(job.status, JobStatus::PartialSuccess);
    assert_eq!(job.result, Some(json!({"k\u{FFFD}": ["v\u{FFFD}"]})));
    assert_eq!(job.result_url.as_deref(), Some("https://x/\u{FFFD}"));
    assert_eq!(job.errors[0].message, "bad\u{FFFD}byte");
}

pub async fn a_retry_delay_past_any_calendar_is_cut_to_ten_years(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let leased = fetch_one(&h).await;
    let snooze = Completion {
        retry_in: Duration::MAX,
        give_attempt_back: true,
        ..completion(&leased, JobStatus::Queued)
    };
    assert_eq!(h.store.job_complete_many(&[snooze]).await.unwrap(), [id]);
    let job = client.get(id).await.unwrap();
    let ahead = job.run_at - Utc::now();
    assert_eq!(job.status, JobStatus::Queued);
    assert!(
        (ahead.num_days() - 3650).abs() <= 1,
        "run_at is ten years ahead: {ahead}"
    );
}

pub async fn a_rescue_back_off_past_any_calendar_is_cut_to_ten_years(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    fetch_one(&h).await;
    h.lapse_leases(&[]).await;
    let params = RescueParams {
        backoff: Backoff {
            base: Duration::MAX,
            cap: Duration::MAX,
            jitter: 0.0,
        },
        limit: 10,
    };
    let rescued = h.store.job_rescue_lapsed(&params).await.unwrap();
    assert_eq!(rescued.len(), 1);
    let ahead = client.get(id).await.unwrap().run_at - Utc::now();
    assert!((ahead.num_days() - 3650).abs() <= 1, "{ahead}");
}

pub async fn releasing_a_job_whose_cancel_was_asked_cancels_it(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let leased = fetch_one(&h).await;
    client.cancel(id).await.unwrap();
    assert_eq!(
        h.store.job_release_many(&[lease(&leased)]).await.unwrap(),
        1
    );
    let job = client.get(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(job.completed_at.is_some());
    assert!(
        h.store
            .job_fetch_available(&fetch_params(1))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn a_failure_of_a_job_whose_cancel_the_worker_never_heard_of_ends_cancelled(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let leased = fetch_one(&h).await;
    client.cancel(id).await.unwrap();
    let failed = Completion {
        errors: vec![error_entry("gave up", 1)],
        result: None,
        ..completion(&leased, JobStatus::Failed)
    };
    h.store.job_complete_many(&[failed]).await.unwrap();
    assert_eq!(client.get(id).await.unwrap().status, JobStatus::Cancelled);
}

pub async fn retry_clears_the_result_of_the_earlier_run(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let leased = fetch_one(&h).await;
    let partial = Completion {
        result_url: Some("https://files/old.csv".into()),
        ..completion(&leased, JobStatus::PartialSuccess)
    };
    h.store.job_complete_many(&[partial]).await.unwrap();
    let job = client.retry(id).await.unwrap();
    assert_eq!((job.result, job.result_url), (None, None));
    let stored = client.get(id).await.unwrap();
    assert_eq!((stored.result, stored.result_url), (None, None));
}
