//! The worker's side: fetch order and exclusivity, pauses, heartbeats, progress, and the
//! lease-guarded completions, retries, snoozes and releases.

use std::collections::HashSet;
use std::time::Duration;

use forklift::store::{Completion, FetchParams, Lease, ProgressUpdate};
use forklift::{Error, JobStatus, NewJob, TenantId};
use serde_json::json;
use uuid::Uuid;

use crate::support::Harness;
use crate::{completion, error_entry, fetch_ids, fetch_one, fetch_params, lease, noop};

pub async fn fetch_follows_priority_then_run_at_then_id(h: Harness) {
    let client = h.client();
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(150);
    let low = client.enqueue(noop().priority(9)).await.unwrap().job.job_id;
    let high_late = client
        .enqueue(noop().priority(0).run_at(soon))
        .await
        .unwrap()
        .job
        .job_id;
    let high_early = client.enqueue(noop().priority(0)).await.unwrap().job.job_id;
    let _future = client
        .enqueue(noop().priority(0).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fetched = fetch_ids(&h, 10).await;
    assert_eq!(
        fetched,
        [high_early, high_late, low],
        "the future job waits"
    );
}

pub async fn fetch_takes_only_the_asked_types_and_queue_and_counts_the_attempt(h: Harness) {
    let client = h.client();
    client
        .enqueue(NewJob::new("unknown_type", json!({})))
        .await
        .unwrap();
    client.enqueue(noop().queue("elsewhere")).await.unwrap();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let fetched = h
        .store
        .job_fetch_available(&fetch_params(10))
        .await
        .unwrap();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].job.job_id, id);
    assert_eq!(
        (fetched[0].job.status, fetched[0].job.attempt),
        (JobStatus::Running, 1)
    );
    assert!(
        h.store
            .job_fetch_available(&fetch_params(10))
            .await
            .unwrap()
            .is_empty(),
        "a running job is not fetched"
    );
}

pub async fn fetch_skips_jobs_locked_by_another_transaction(h: Harness) {
    let client = h.client();
    let first = client.enqueue(noop().priority(0)).await.unwrap().job.job_id;
    let second = client.enqueue(noop().priority(1)).await.unwrap().job.job_id;
    let mut tx = h.pg_schema().pool.begin().await.unwrap();
    sqlx::query("select 1 from forklift_jobs where id = $1 for update")
        .bind(first.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(fetch_ids(&h, 10).await, [second]);
    tx.rollback().await.unwrap();
}

pub async fn two_processes_racing_never_take_the_same_job(h: Harness) {
    let other = h.other_process().await;
    h.client().enqueue_many(&vec![noop(); 400]).await.unwrap();
    let mut seen = HashSet::new();
    let mut total = 0;
    for _ in 0..10 {
        let params = fetch_params(25);
        let (a, b) = tokio::join!(
            h.store.job_fetch_available(&params),
            other.job_fetch_available(&params)
        );
        for l in a.unwrap().into_iter().chain(b.unwrap()) {
            total += 1;
            assert!(seen.insert(l.job.job_id), "job leased twice");
        }
    }
    assert_eq!(total, 400);
}

pub async fn paused_queue_is_not_fetched_until_resumed_and_only_for_that_tenant(h: Harness) {
    let a = h.client();
    let b = a.for_tenant(TenantId(Uuid::new_v4()));
    a.enqueue(noop()).await.unwrap();
    let jb = b.enqueue(noop()).await.unwrap().job.job_id;
    a.pause_queue("default").await.unwrap();
    a.pause_queue("default").await.unwrap(); // pausing twice is fine
    assert_eq!(fetch_ids(&h, 10).await, [jb]);
    a.resume_queue("default").await.unwrap();
    assert_eq!(
        h.store
            .job_fetch_available(&fetch_params(10))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(matches!(
        a.pause_queue("no spaces").await,
        Err(Error::Invalid { .. })
    ));
}

pub async fn heartbeat_extends_only_leases_still_held(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let short = FetchParams {
        lease_ttl: Duration::from_millis(1),
        ..fetch_params(1)
    };
    let leased = h.store.job_fetch_available(&short).await.unwrap().remove(0);
    let forged = Lease {
        job_id: id,
        token: Uuid::new_v4(),
    };
    let held = h
        .store
        .job_heartbeat_many(&[lease(&leased), forged], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].job_id, held[0].cancel_requested), (id, false));
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Renewed for a minute, so the 1 ms lease it started with no longer lapses.
    let rescuer =
        forklift::maintenance::Rescuer::new(h.dyn_store(), crate::support::quick_backoff());
    assert!(rescuer.run_once().await.unwrap().is_empty());
    assert!(
        h.store
            .job_heartbeat_many(&[], Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn progress_is_written_only_under_the_current_lease(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let leased = fetch_one(&h).await;
    let stale = ProgressUpdate {
        lease: Lease {
            job_id: id,
            token: Uuid::new_v4(),
        },
        progress: 90,
    };
    h.store
        .job_progress_many(&[
            ProgressUpdate {
                lease: lease(&leased),
                progress: 40,
            },
            stale,
        ])
        .await
        .unwrap();
    assert_eq!(client.get(id).await.unwrap().progress, 40);
    h.store
        .job_progress_many(&[ProgressUpdate {
            lease: lease(&leased),
            progress: 250,
        }])
        .await
        .unwrap();
    assert_eq!(
        client.get(id).await.unwrap().progress,
        100,
        "clamped to 0-100"
    );
}

pub async fn completion_after_the_lease_was_lost_is_rejected(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let first = fetch_one(&h).await;
    // The first worker vanishes; its lease lapses and the job is rescued and re-leased.
    h.lapse_leases(&[]).await;
    let rescued =
        forklift::maintenance::Rescuer::new(h.dyn_store(), crate::support::quick_backoff())
            .run_once()
            .await
            .unwrap();
    assert_eq!(rescued.len(), 1);
    h.make_due().await;
    let second = fetch_one(&h).await;
    assert_eq!(second.job.attempt, 2);
    assert_ne!(second.lease_token, first.lease_token);

    let late = h
        .store
        .job_complete_many(&[completion(&first, JobStatus::Failed)])
        .await
        .unwrap();
    assert!(late.is_empty(), "the stale lease changes nothing");
    assert!(
        h.store
            .job_heartbeat_many(&[lease(&first)], Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(h.store.job_release_many(&[lease(&first)]).await.unwrap(), 0);
    assert_eq!(client.get(id).await.unwrap().status, JobStatus::Running);

    let ok = h
        .store
        .job_complete_many(&[completion(&second, JobStatus::Success)])
        .await
        .unwrap();
    assert_eq!(ok, [id]);
    let again = h
        .store
        .job_complete_many(&[completion(&second, JobStatus::Failed)])
        .await
        .unwrap();
    assert!(again.is_empty(), "a final state is reached once");
    let job = client.get(id).await.unwrap();
    assert_eq!((job.status, job.progress), (JobStatus::Success, 100));
    assert_eq!(job.result, Some(json!({"ok": true})));
}

pub async fn a_failed_attempt_with_attempts_left_backs_off_and_keeps_its_errors_in_order(
    h: Harness,
) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let leased = fetch_one(&h).await;
    let retry = Completion {
        retry_in: Duration::from_secs(60),
        errors: vec![error_entry("e1", 1), error_entry("e2", 1)],
        result: None,
        ..completion(&leased, JobStatus::Queued)
    };
    h.store.job_complete_many(&[retry]).await.unwrap();
    let job = client.get(id).await.unwrap();
    assert_eq!((job.status, job.attempt), (JobStatus::Queued, 1));
    assert!(job.completed_at.is_none() && job.result.is_none());
    let wait = (job.run_at - job.updated_at).num_milliseconds();
    assert!(
        (59_000..=61_000).contains(&wait),
        "run_at is the back-off away: {wait} ms"
    );
    assert!(
        h.store
            .job_fetch_available(&fetch_params(1))
            .await
            .unwrap()
            .is_empty(),
        "not before run_at"
    );

    h.make_due().await;
    let again = fetch_one(&h).await;
    assert_eq!(again.job.attempt, 2);
    let failed = Completion {
        errors: vec![error_entry("e3", 2)],
        ..completion(&again, JobStatus::Failed)
    };
    h.store.job_complete_many(&[failed]).await.unwrap();
    let job = client.get(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(
        job.errors
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>(),
        ["e1", "e2", "e3"]
    );
    assert_eq!(job.errors[2].details, json!({"n": "e3"}));
}

pub async fn a_snooze_gives_the_attempt_back(h: Harness) {
    let client = h.client();
    let id = client
        .enqueue(noop().max_attempts(1))
        .await
        .unwrap()
        .job
        .job_id;
    let leased = fetch_one(&h).await;
    let snooze = Completion {
        give_attempt_back: true,
        ..completion(&leased, JobStatus::Queued)
    };
    h.store.job_complete_many(&[snooze]).await.unwrap();
    let job = client.get(id).await.unwrap();
    assert_eq!(
        (job.status, job.attempt, job.errors.len()),
        (JobStatus::Queued, 0, 0)
    );
}

pub async fn a_retry_of_a_job_whose_cancel_was_asked_ends_cancelled(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let leased = fetch_one(&h).await;
    let asked = client.cancel(id).await.unwrap();
    assert_eq!(
        (asked.status, asked.cancel_requested),
        (JobStatus::Running, true)
    );
    let retry = Completion {
        retry_in: Duration::from_secs(1),
        ..completion(&leased, JobStatus::Queued)
    };
    h.store.job_complete_many(&[retry]).await.unwrap();
    let job = client.get(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(job.completed_at.is_some());
}

pub async fn release_returns_the_attempt(h: Harness) {
    let client = h.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let leased = fetch_one(&h).await;
    assert_eq!(
        h.store.job_release_many(&[lease(&leased)]).await.unwrap(),
        1
    );
    let job = client.get(id).await.unwrap();
    assert_eq!((job.status, job.attempt), (JobStatus::Queued, 0));
    assert!(job.started_at.is_none());
    assert_eq!(fetch_one(&h).await.job.job_id, id, "it runs again");
}

pub async fn at_one_priority_tenants_with_due_jobs_take_turns(h: Harness) {
    let a = h.client();
    let b = a.for_tenant(TenantId(Uuid::new_v4()));
    // A's backlog is older than B's jobs; a queue in run_at order would serve A first.
    let a_jobs = crate::support::enqueue_ids(&a, &vec![noop(); 6]).await;
    let urgent = a.enqueue(noop().priority(0)).await.unwrap().job.job_id;
    let b_jobs = crate::support::enqueue_ids(&b, &vec![noop(); 2]).await;
    let fetched = fetch_ids(&h, 5).await;
    // Priority first; then A and B alternate, each in its own run_at order.
    assert_eq!(
        fetched,
        [urgent, a_jobs[0], b_jobs[0], a_jobs[1], b_jobs[1]]
    );
    assert_eq!(fetch_ids(&h, 10).await, a_jobs[2..]);
}

pub async fn a_backlog_no_fetch_may_take_is_stepped_over(h: Harness) {
    let a = h.client();
    let paused = a.for_tenant(TenantId(Uuid::new_v4()));
    // Ahead of the runnable jobs in every order the fetch knows: priority 0, older.
    let unhandled = vec![NewJob::new("nobody_runs_this", json!({})).priority(0); 2_000];
    a.enqueue_many(&unhandled).await.unwrap();
    paused.pause_queue("default").await.unwrap();
    paused
        .enqueue_many(&vec![noop().priority(0); 2_000])
        .await
        .unwrap();
    let runnable = crate::support::enqueue_ids(&a, &vec![noop(); 3]).await;
    assert_eq!(fetch_ids(&h, 10).await, runnable);
    // Many tenants with a few jobs each: every one is found, however the shares fall.
    let tenants: Vec<_> = (0..30)
        .map(|_| a.for_tenant(TenantId(Uuid::new_v4())))
        .collect();
    for t in &tenants {
        t.enqueue_many(&vec![noop(); 3]).await.unwrap();
    }
    let mut taken = 0;
    loop {
        let n = h
            .store
            .job_fetch_available(&fetch_params(25))
            .await
            .unwrap()
            .len();
        if n == 0 {
            break;
        }
        taken += n;
    }
    assert_eq!(taken, 90);
}

pub async fn tenants_with_nothing_due_take_no_share_of_a_fetch(h: Harness) {
    let a = h.client();
    a.enqueue_many(&vec![noop(); 100]).await.unwrap();
    for _ in 0..30 {
        a.for_tenant(TenantId(Uuid::new_v4()))
            .enqueue(noop().delay(Duration::from_secs(3600)))
            .await
            .unwrap();
    }
    let fetched = h
        .store
        .job_fetch_available(&fetch_params(50))
        .await
        .unwrap();
    assert_eq!(fetched.len(), 50);
}
