//! What a client does with a job: read it back field for field, list, cancel, retry; and
//! the wake-ups those send to this process.

use std::time::Duration;

use chrono::DurationRound;
use forklift::store::minutes::bucket_of;
use forklift::store::{Completion, Event, ListParams, Metric, MinuteStat};
use forklift::{Error, ErrorEntry, JobId, JobStatus, NewJob, TenantId};
use serde_json::json;
use sqlx::Connection;

use crate::support::Harness;
use crate::{completion, error_entry, fetch_one, fetch_params, lease, noop};

pub async fn every_field_round_trips(h: Harness) {
    let client = h.client();
    // A little ahead: a time in the past would be stored as now.
    let run_at =
        chrono::DateTime::from_timestamp_micros(chrono::Utc::now().timestamp_micros() + 300_000)
            .unwrap();
    let payload =
        json!({"s": "é ✓", "n": 1.5, "big": 9_007_199_254_740_993u64, "a": [1, null, {"k": true}]});
    let new = NewJob::new("simulate", payload.clone())
        .priority(2)
        .run_at(run_at)
        .max_attempts(7)
        .timeout_seconds(90)
        .unique_key("every-field")
        .tags(["a", "b"]);
    let queued = client.enqueue(new).await.unwrap().job;
    assert_eq!(
        (
            queued.job_type.as_str(),
            queued.priority,
            queued.max_attempts
        ),
        ("simulate", 2, 7)
    );
    assert_eq!((queued.run_at, queued.timeout_seconds), (run_at, Some(90)));
    assert_eq!(
        (queued.unique_key.as_deref(), queued.tags.clone()),
        (Some("every-field"), vec!["a".into(), "b".into()])
    );
    assert_eq!(queued.payload, payload);
    assert!(queued.result.is_none() && queued.result_url.is_none() && queued.errors.is_empty());
    assert!(
        queued.started_at.is_none() && queued.completed_at.is_none() && !queued.cancel_requested
    );

    tokio::time::sleep(Duration::from_millis(350)).await;
    let leased = fetch_one(&h).await;
    assert_eq!(
        (leased.job.status, leased.job.attempt),
        (JobStatus::Running, 1)
    );
    assert!(leased.job.started_at.is_some());
    assert_eq!(
        leased.lease_token.get_version_num(),
        4,
        "a lease token is a random uuid"
    );
    let mut done = completion(&leased, JobStatus::PartialSuccess);
    done.result = Some(json!({"rows": 10, "note": "ünïcode"}));
    done.result_url = Some("file:///tmp/out.csv".into());
    done.errors = vec![error_entry("row 3", 1), error_entry("row 7", 1)];
    done.progress = Some(80);
    assert_eq!(
        h.store.job_complete_many(&[done.clone()]).await.unwrap(),
        [queued.job_id]
    );

    let job = client.get(queued.job_id).await.unwrap();
    assert_eq!(job.status, JobStatus::PartialSuccess);
    assert_eq!((job.progress, job.attempt), (80, 1));
    assert_eq!(job.result, done.result);
    assert_eq!(job.result_url, done.result_url);
    assert_eq!(job.errors, done.errors);
    assert!(job.completed_at.is_some() && job.updated_at >= job.created_at);
    assert_eq!(
        (job.created_at, job.run_at, job.payload.clone()),
        (queued.created_at, run_at, payload)
    );
}

/// The same steps on both stores give the same job, field for field, in its public
/// (JSON) form; only the id and the clock's readings differ, and those have one format.
#[tokio::test]
pub async fn both_stores_return_the_same_job() {
    async fn lifecycle(h: Harness) -> serde_json::Value {
        let run_at = chrono::Utc::now() + chrono::Duration::milliseconds(200);
        let payload = json!({"file": "a.csv", "n": [1, 2.5, null], "nested": {"z": 1, "a": "é"}});
        let new = NewJob::new("noop", payload)
            .priority(3)
            .run_at(run_at)
            .timeout_seconds(9)
            .unique_key("u")
            .tags(["x"]);
        let id = h.client().enqueue(new).await.unwrap().job.job_id;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let leased = fetch_one(&h).await;
        let at = "2025-01-02T03:04:06.5Z".parse().unwrap();
        let entry = ErrorEntry {
            message: "row 3".into(),
            code: "item_failed".into(),
            attempt: 1,
            at,
            details: json!({"row": 3}),
        };
        let done = Completion {
            errors: vec![entry],
            progress: Some(70),
            result_url: Some("https://example.invalid/r".into()),
            ..completion(&leased, JobStatus::PartialSuccess)
        };
        h.store.job_complete_many(&[done]).await.unwrap();
        let mut job = serde_json::to_value(h.client().get(id).await.unwrap()).unwrap();
        for key in [
            "job_id",
            "created_at",
            "updated_at",
            "started_at",
            "completed_at",
            "run_at",
        ] {
            let value = job[key].as_str().unwrap_or_else(|| panic!("{key} is set"));
            if key != "job_id" {
                let parsed = chrono::DateTime::parse_from_rfc3339(value).unwrap();
                assert!(
                    value.ends_with('Z') && parsed.offset().local_minus_utc() == 0,
                    "{key} = {value} is RFC 3339 UTC"
                );
            }
            job[key] = json!(key);
        }
        job
    }
    let pg = lifecycle(Harness::pg().await).await;
    let sqlite = lifecycle(Harness::sqlite().await).await;
    assert_eq!(pg, sqlite);
}

pub async fn list_is_newest_first_with_filters_and_a_cursor(h: Harness) {
    let client = h.client();
    let mut ids = Vec::new();
    for i in 0..7 {
        let job = if i % 2 == 0 {
            noop().tags(["even"])
        } else {
            NewJob::new("other", json!({})).queue("q2")
        };
        ids.push(client.enqueue(job).await.unwrap().job.job_id);
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = client
            .list(&ListParams {
                limit: 3,
                cursor,
                ..ListParams::default()
            })
            .await
            .unwrap();
        seen.extend(page.jobs.iter().map(|j| j.job_id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "all jobs, newest first, each once");

    let evens = client
        .list(&ListParams {
            tag: Some("even".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(evens.jobs.len(), 4);
    let q2 = client
        .list(&ListParams {
            queue: Some("q2".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(q2.jobs.iter().all(|j| j.job_type == "other") && q2.jobs.len() == 3);
    let by_type = client
        .list(&ListParams {
            job_type: Some("noop".into()),
            limit: 100,
            ..Default::default()
        })
        .await;
    assert_eq!(by_type.unwrap().jobs.len(), 4);
    client.cancel(ids[0]).await.unwrap();
    let cancelled = client
        .list(&ListParams {
            statuses: vec![JobStatus::Cancelled],
            limit: 100,
            ..Default::default()
        })
        .await;
    assert_eq!(
        cancelled
            .unwrap()
            .jobs
            .iter()
            .map(|j| j.job_id)
            .collect::<Vec<_>>(),
        [ids[0]]
    );
    let two = ListParams {
        statuses: vec![JobStatus::Cancelled, JobStatus::Queued],
        limit: 100,
        ..Default::default()
    };
    assert_eq!(client.list(&two).await.unwrap().jobs.len(), 7);
}

pub async fn list_filters_by_creation_time(h: Harness) {
    let client = h.client();
    let first = client.enqueue(noop()).await.unwrap().job;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = client.enqueue(noop()).await.unwrap().job;
    let after = ListParams {
        created_after: Some(first.created_at),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        client
            .list(&after)
            .await
            .unwrap()
            .jobs
            .iter()
            .map(|j| j.job_id)
            .collect::<Vec<_>>(),
        [second.job_id]
    );
    let before = ListParams {
        created_before: Some(second.created_at),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        client
            .list(&before)
            .await
            .unwrap()
            .jobs
            .iter()
            .map(|j| j.job_id)
            .collect::<Vec<_>>(),
        [first.job_id]
    );
}

pub async fn cancelling_a_queued_job_ends_it_at_once_and_a_finished_one_conflicts(h: Harness) {
    let client = h.client();
    let id = client
        .enqueue(noop().delay(Duration::from_secs(3600)))
        .await
        .unwrap()
        .job
        .job_id;
    let job = client.cancel(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(job.completed_at.is_some() && !job.cancel_requested);
    match client.cancel(id).await {
        Err(Error::Conflict { status, .. }) => assert_eq!(status, JobStatus::Cancelled),
        other => panic!("expected conflict, got {other:?}"),
    }
    assert!(matches!(
        client.cancel(JobId::new()).await,
        Err(Error::NotFound)
    ));
}

pub async fn cancelling_a_running_job_flags_it_and_tells_this_process(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let leased = fetch_one(&h).await;
    let mut events = h.store.subscribe();
    let asked = client.cancel(id).await.unwrap();
    assert_eq!(
        (asked.status, asked.cancel_requested),
        (JobStatus::Running, true)
    );
    assert!(asked.completed_at.is_none());
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await.unwrap() {
                Event::CancelRequested { job_id } => return job_id,
                _ => continue,
            }
        }
    })
    .await
    .expect("a cancel event");
    assert_eq!(event, id);
    // A worker elsewhere learns it from its next heartbeat.
    let held = h
        .store
        .job_heartbeat_many(&[lease(&leased)], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!((held.len(), held[0].cancel_requested), (1, true));
}

pub async fn enqueue_retry_and_resume_wake_this_process(h: Harness) {
    let client = h.client();
    let mut events = h.store.subscribe();
    async fn jobs_available(events: &mut tokio::sync::broadcast::Receiver<Event>, queue: &str) {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Event::JobsAvailable { queue: q } = events.recv().await.unwrap()
                    && q == queue
                {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no wake-up for {queue}"));
    }
    let id = client.enqueue(noop().queue("wq")).await.unwrap().job.job_id;
    jobs_available(&mut events, "wq").await;
    client.cancel(id).await.unwrap();
    client.retry(id).await.unwrap();
    jobs_available(&mut events, "wq").await;
    client.pause_queue("paused").await.unwrap();
    client.resume_queue("paused").await.unwrap();
    jobs_available(&mut events, "paused").await;
}

pub async fn retry_requeues_a_finished_job_with_fresh_attempts_and_refuses_a_live_one(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    assert!(matches!(
        client.retry(id).await,
        Err(Error::Conflict {
            status: JobStatus::Queued,
            ..
        })
    ));
    let leased = fetch_one(&h).await;
    let mut failed = completion(&leased, JobStatus::Failed);
    failed.errors = vec![error_entry("boom", 1)];
    h.store.job_complete_many(&[failed]).await.unwrap();
    let job = client.retry(id).await.unwrap();
    assert_eq!(
        (job.status, job.attempt, job.progress),
        (JobStatus::Queued, 0, 0)
    );
    assert!(job.completed_at.is_none() && job.started_at.is_none());
    assert_eq!(job.errors.len(), 1, "errors are kept");
    assert!(matches!(
        client.retry(JobId::new()).await,
        Err(Error::NotFound)
    ));
}

pub async fn retry_conflicts_while_another_live_job_holds_the_unique_key(h: Harness) {
    let client = h.client();
    let first = client
        .enqueue(noop().unique_key("k"))
        .await
        .unwrap()
        .job
        .job_id;
    client.cancel(first).await.unwrap();
    client.enqueue(noop().unique_key("k")).await.unwrap();
    match client.retry(first).await {
        Err(Error::Conflict { status, .. }) => assert_eq!(status, JobStatus::Cancelled),
        other => panic!("expected conflict, got {other:?}"),
    }
    assert_eq!(
        client.get(first).await.unwrap().status,
        JobStatus::Cancelled,
        "nothing changed"
    );
}

pub async fn tenants_have_unique_names_and_keys_resolve_until_revoked(h: Harness) {
    let store = &h.store;
    let acme = store.tenant_create("acme").await.unwrap();
    assert!(
        matches!(store.tenant_create("acme").await, Err(forklift::Error::Invalid { ref field, .. }) if field == "name")
    );
    assert!(matches!(
        store.tenant_create(" ").await,
        Err(forklift::Error::Invalid { .. })
    ));
    store
        .api_key_insert(acme.tenant_id, "abcd1234", "hash-1")
        .await
        .unwrap();
    assert_eq!(
        store.api_key_tenant("hash-1").await.unwrap(),
        Some(acme.tenant_id)
    );
    assert_eq!(store.api_key_tenant("hash-2").await.unwrap(), None);
    let keys = store.api_key_list().await.unwrap();
    assert_eq!(
        (keys.len(), keys[0].tenant_name.as_str(), keys[0].revoked_at),
        (1, "acme", None)
    );
    assert!(store.api_key_revoke("abcd1234").await.unwrap());
    assert!(
        !store.api_key_revoke("abcd1234").await.unwrap(),
        "revoking twice changes nothing"
    );
    assert_eq!(store.api_key_tenant("hash-1").await.unwrap(), None);
    assert_eq!(store.tenant_list().await.unwrap(), [acme]);
}

pub async fn counts_follow_every_change_exactly(h: Harness) {
    let a = h.client();
    let other = a.for_tenant(TenantId(uuid::Uuid::new_v4()));
    other.enqueue(noop().queue("elsewhere")).await.unwrap();
    a.enqueue(NewJob::new("other", json!({})).queue("q2"))
        .await
        .unwrap();
    let ids = crate::support::enqueue_ids(&a, &vec![noop().max_attempts(1); 9]).await;
    let leased = h.store.job_fetch_available(&fetch_params(6)).await.unwrap();
    let ended = [
        completion(&leased[0], JobStatus::Success),
        completion(&leased[1], JobStatus::Success),
        completion(&leased[2], JobStatus::Failed),
        completion(&leased[3], JobStatus::Queued),
    ];
    h.store.job_complete_many(&ended).await.unwrap();
    h.store
        .job_release_many(&[lease(&leased[4])])
        .await
        .unwrap();
    h.lapse_leases(&[]).await;
    let rescuer =
        forklift::maintenance::Rescuer::new(h.dyn_store(), crate::support::quick_backoff());
    assert_eq!(rescuer.run_once().await.unwrap().len(), 1);
    a.cancel(ids[7]).await.unwrap();
    a.retry(leased[2].job.job_id).await.unwrap();
    a.cancel(ids[8]).await.unwrap();
    h.age_finished(Duration::from_secs(2 * 86_400)).await;
    let pruner = forklift::maintenance::Pruner::new(h.dyn_store(), Duration::from_secs(86_400));
    assert!(pruner.run_once().await.unwrap() > 0);
    // The counters against the table itself.
    let counts = h.store.job_counts(a.tenant()).await.unwrap();
    for status in JobStatus::ALL {
        let counted: i64 = counts
            .iter()
            .filter(|c| c.status == status)
            .map(|c| c.count)
            .sum();
        let others = i64::from(status == JobStatus::Queued);
        let stored = h
            .count_where(&format!("status = '{}'", status.as_str()))
            .await;
        assert_eq!(counted, stored - others, "{status}: {counts:?}");
    }
    let theirs = h.store.job_counts(other.tenant()).await.unwrap();
    assert_eq!(
        theirs
            .iter()
            .map(|c| (c.queue.as_str(), c.status, c.count))
            .collect::<Vec<_>>(),
        [("elsewhere", JobStatus::Queued, 1)]
    );
}

pub async fn counts_depths_and_recent_stats_are_per_tenant(h: Harness) {
    let a = h.client();
    let b = a.for_tenant(TenantId(uuid::Uuid::new_v4()));
    a.enqueue_many(&[noop(), noop().queue("q2"), NewJob::new("other", json!({}))])
        .await
        .unwrap();
    b.enqueue(noop()).await.unwrap();
    let id = a.enqueue(noop()).await.unwrap().job.job_id;
    a.cancel(id).await.unwrap();
    let counts = h.store.job_counts(a.tenant()).await.unwrap();
    let total: i64 = counts.iter().map(|c| c.count).sum();
    assert_eq!(total, 4, "{counts:?}");
    assert!(
        counts
            .iter()
            .any(|c| c.job_type == "other" && c.status == JobStatus::Queued && c.count == 1)
    );
    assert!(
        counts
            .iter()
            .any(|c| c.status == JobStatus::Cancelled && c.count == 1)
    );
    let depths = h.store.queue_depths().await.unwrap();
    let queued_default: i64 = depths
        .iter()
        .filter(|d| d.queue == "default" && d.status == JobStatus::Queued)
        .map(|d| d.count)
        .sum();
    assert_eq!(
        queued_default, 3,
        "all tenants, unfinished only: {depths:?}"
    );
    a.pause_queue("q2").await.unwrap();
    assert_eq!(h.store.queue_paused_list(a.tenant()).await.unwrap(), ["q2"]);
    assert!(
        h.store
            .queue_paused_list(b.tenant())
            .await
            .unwrap()
            .is_empty()
    );
    let stats = h
        .store
        .job_stats_recent(a.tenant(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(stats.per_minute.is_empty());
    assert_eq!((stats.wait_p50, stats.run_p50), (None, None));
    // What workers report, added up per tenant and minute.
    let minute = chrono::Utc::now()
        .duration_trunc(chrono::TimeDelta::minutes(1))
        .unwrap();
    let stat = |tenant, minute, metric, bucket, jobs| MinuteStat {
        tenant,
        minute,
        metric,
        bucket,
        jobs,
    };
    let ten_ms = bucket_of(Duration::from_millis(10));
    let two_s = bucket_of(Duration::from_secs(2));
    let report = [
        stat(a.tenant(), minute, Metric::Completed, 0, 3),
        stat(a.tenant(), minute, Metric::Failed, 0, 1),
        stat(a.tenant(), minute, Metric::Wait, ten_ms, 19),
        stat(a.tenant(), minute, Metric::Wait, two_s, 1),
        stat(a.tenant(), minute, Metric::Run, two_s, 4),
        stat(b.tenant(), minute, Metric::Completed, 0, 7),
        // Past any window: not shown, and forgotten.
        stat(
            a.tenant(),
            minute - chrono::TimeDelta::hours(3),
            Metric::Completed,
            0,
            100,
        ),
    ];
    h.store.stats_add(&report).await.unwrap();
    h.store.stats_add(&report[..1]).await.unwrap();
    let stats = h
        .store
        .job_stats_recent(a.tenant(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        stats
            .per_minute
            .iter()
            .map(|m| (m.minute, m.completed, m.failed))
            .collect::<Vec<_>>(),
        [(minute, 6, 1)]
    );
    let near = |got: Option<f64>, want: f64| got.is_some_and(|g| (g / want - 1.0).abs() < 0.1);
    assert!(near(stats.wait_p50, 0.010), "{:?}", stats.wait_p50);
    assert!(near(stats.wait_p95, 0.010), "{:?}", stats.wait_p95);
    assert!(near(stats.run_p50, 2.0), "{:?}", stats.run_p50);
    h.store.ping().await.unwrap();
}

pub async fn a_narrow_filter_reads_a_bounded_range_and_says_where_to_go_on(h: Harness) {
    let client = h.client();
    let rare = client
        .enqueue(NewJob::new("rare", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    // Newer than it, and more than one page reads: the filter's first page stops short.
    for _ in 0..2 {
        client
            .enqueue_many(&vec![noop(); forklift::MAX_BATCH])
            .await
            .unwrap();
    }
    let mut params = ListParams {
        job_type: Some("rare".into()),
        limit: 10,
        ..ListParams::default()
    };
    let (mut found, mut pages) = (Vec::new(), 0);
    loop {
        let page = client.list(&params).await.unwrap();
        pages += 1;
        found.extend(page.jobs.iter().map(|j| j.job_id));
        match page.next_cursor {
            Some(c) => params.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(found, [rare]);
    assert!(
        pages > 1,
        "20,001 jobs are more than one page may read for a narrow filter"
    );
    // A status filter is read from its own index range: full pages at once.
    client.cancel(rare).await.unwrap();
    let cancelled = client
        .list(&ListParams {
            statuses: vec![JobStatus::Cancelled],
            limit: 10,
            ..ListParams::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (cancelled.jobs.len(), cancelled.next_cursor),
        (1, None),
        "{cancelled:?}"
    );
}

pub async fn a_write_by_a_schema_qualified_name_is_counted_in_that_schema(h: Harness) {
    let a = h.client();
    let id = a.enqueue(noop()).await.unwrap().job.job_id;
    // An operator's session on the database's default search_path.
    let mut conn = sqlx::PgConnection::connect(&forklift_testkit::database_url().await)
        .await
        .unwrap();
    sqlx::query(&format!(
        "update {}.forklift_jobs set status = 'CANCELLED', completed_at = now() where id = $1",
        h.pg_schema().name
    ))
    .bind(id.0)
    .execute(&mut conn)
    .await
    .unwrap();
    let counts = h.store.job_counts(a.tenant()).await.unwrap();
    assert_eq!(
        counts
            .iter()
            .map(|c| (c.status, c.count))
            .collect::<Vec<_>>(),
        [(JobStatus::Cancelled, 1)]
    );
}
