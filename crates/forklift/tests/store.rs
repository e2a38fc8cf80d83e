//! The store's guarantees, against a real PostgreSQL: enqueue, unique keys, listing,
//! cancel and retry, fetch order and SKIP LOCKED, lease-guarded completion, rescue.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use forklift::store::{Completion, FetchParams, Lease, LeasedJob, ListParams};
use forklift::{Error, JobId, JobStatus, NewJob, Store, TenantId};
use serde_json::json;
use support::Db;
use uuid::Uuid;

fn noop() -> NewJob {
    NewJob::new("noop", json!({}))
}

fn fetch_params(limit: i64) -> FetchParams {
    FetchParams {
        queue: "default".into(),
        types: vec!["noop".into(), "simulate".into()],
        limit,
        worker_id: "test-worker".into(),
        lease_ttl: Duration::from_secs(30),
    }
}

fn completion(leased: &LeasedJob, status: JobStatus) -> Completion {
    Completion {
        lease: Lease {
            job_id: leased.job.job_id,
            token: leased.lease_token,
        },
        status,
        result: Some(json!({"ok": true})),
        result_url: None,
        errors: Vec::new(),
        retry_in: Duration::ZERO,
        give_attempt_back: false,
        progress: None,
    }
}

#[tokio::test]
async fn enqueue_returns_a_queued_job_with_defaults() {
    let db = Db::new().await;
    let job = db
        .client()
        .enqueue(NewJob::new("bulk_import", json!({"file": "a.csv"})))
        .await
        .unwrap()
        .job;
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(
        (
            job.queue.as_str(),
            job.priority,
            job.max_attempts,
            job.attempt
        ),
        ("default", 5, 5, 0)
    );
    assert_eq!(job.payload, json!({"file": "a.csv"}));
    assert!(job.job_id.to_string().starts_with("job_"));
    assert_eq!(db.client().get(job.job_id).await.unwrap(), job);
}

#[tokio::test]
async fn invalid_job_is_refused_and_nothing_is_written() {
    let db = Db::new().await;
    let client = db.client();
    let err = client
        .enqueue_many(&[noop(), noop().priority(12)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Invalid { ref field, .. } if field == "priority"),
        "{err:?}"
    );
    assert!(
        client
            .list(&ListParams::default())
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
}

#[tokio::test]
async fn enqueue_many_keeps_request_order() {
    let db = Db::new().await;
    let jobs: Vec<NewJob> = (0..500)
        .map(|i| NewJob::new("noop", json!({ "i": i })))
        .collect();
    let inserted = db.client().enqueue_many(&jobs).await.unwrap();
    assert_eq!(inserted.len(), 500);
    for (i, ins) in inserted.iter().enumerate() {
        assert!(ins.inserted);
        assert_eq!(ins.job.payload, json!({ "i": i }));
    }
}

#[tokio::test]
async fn more_than_ten_thousand_jobs_at_once_is_refused() {
    let db = Db::new().await;
    let jobs = vec![noop(); 10_001];
    assert!(matches!(
        db.client().enqueue_many(&jobs).await,
        Err(Error::Invalid { .. })
    ));
}

#[tokio::test]
async fn thirty_two_concurrent_enqueues_of_one_unique_key_make_one_job() {
    let db = Db::new().await;
    let client = db.client();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .enqueue(noop().unique_key("import-42"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut inserted = 0;
    for t in tasks {
        let r = t.await.unwrap();
        ids.insert(r.job.job_id);
        inserted += usize::from(r.inserted);
    }
    assert_eq!(ids.len(), 1, "every caller gets the same job");
    assert_eq!(inserted, 1, "exactly one caller inserted it");
    let count: i64 = sqlx::query_scalar("select count(*) from forklift_jobs")
        .fetch_one(&db.schema.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn unique_key_is_free_again_once_the_job_finished() {
    let db = Db::new().await;
    let client = db.client();
    let first = client.enqueue(noop().unique_key("k")).await.unwrap().job;
    client.cancel(first.job_id).await.unwrap();
    let second = client.enqueue(noop().unique_key("k")).await.unwrap();
    assert!(second.inserted);
    assert_ne!(second.job.job_id, first.job_id);
}

#[tokio::test]
async fn unique_keys_are_per_tenant() {
    let db = Db::new().await;
    let a = db.client();
    let b = a.for_tenant(TenantId(Uuid::new_v4()));
    let ja = a.enqueue(noop().unique_key("same")).await.unwrap();
    let jb = b.enqueue(noop().unique_key("same")).await.unwrap();
    assert!(ja.inserted && jb.inserted);
}

#[tokio::test]
async fn another_tenants_job_is_not_found() {
    let db = Db::new().await;
    let a = db.client();
    let b = a.for_tenant(TenantId(Uuid::new_v4()));
    let job = a.enqueue(noop()).await.unwrap().job;
    assert!(matches!(b.get(job.job_id).await, Err(Error::NotFound)));
    assert!(matches!(b.cancel(job.job_id).await, Err(Error::NotFound)));
    assert!(matches!(b.retry(job.job_id).await, Err(Error::NotFound)));
    assert!(
        b.list(&ListParams::default())
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
}

#[tokio::test]
async fn transactional_enqueue_exists_only_if_the_transaction_commits() {
    let db = Db::new().await;
    let client = db.client();
    let mut tx = db.store.pool().begin().await.unwrap();
    let rolled_back = client.enqueue_in(&mut tx, noop()).await.unwrap().job.job_id;
    tx.rollback().await.unwrap();
    assert!(matches!(
        client.get(rolled_back).await,
        Err(Error::NotFound)
    ));

    let mut tx = db.store.pool().begin().await.unwrap();
    let committed = client.enqueue_in(&mut tx, noop()).await.unwrap().job.job_id;
    tx.commit().await.unwrap();
    assert_eq!(
        client.get(committed).await.unwrap().status,
        JobStatus::Queued
    );
}

#[tokio::test]
async fn list_is_newest_first_with_filters_and_a_cursor() {
    let db = Db::new().await;
    let client = db.client();
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
}

#[tokio::test]
async fn cancelling_a_queued_job_ends_it_at_once_and_a_finished_one_conflicts() {
    let db = Db::new().await;
    let client = db.client();
    let id = client
        .enqueue(noop().delay(Duration::from_secs(3600)))
        .await
        .unwrap()
        .job
        .job_id;
    let job = client.cancel(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(job.completed_at.is_some());
    match client.cancel(id).await {
        Err(Error::Conflict { status, .. }) => assert_eq!(status, JobStatus::Cancelled),
        other => panic!("expected conflict, got {other:?}"),
    }
    assert!(matches!(
        client.cancel(JobId::new()).await,
        Err(Error::NotFound)
    ));
}

#[tokio::test]
async fn retry_requeues_a_finished_job_with_fresh_attempts_and_refuses_a_live_one() {
    let db = Db::new().await;
    let client = db.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    assert!(matches!(
        client.retry(id).await,
        Err(Error::Conflict {
            status: JobStatus::Queued,
            ..
        })
    ));
    let leased = db
        .store
        .job_fetch_available(&fetch_params(1))
        .await
        .unwrap()
        .remove(0);
    let mut failed = completion(&leased, JobStatus::Failed);
    failed.errors = vec![forklift::ErrorEntry {
        message: "boom".into(),
        code: "x".into(),
        attempt: 1,
        at: chrono::Utc::now(),
        details: json!(null),
    }];
    db.store.job_complete_many(&[failed]).await.unwrap();
    let job = client.retry(id).await.unwrap();
    assert_eq!((job.status, job.attempt), (JobStatus::Queued, 0));
    assert_eq!(job.errors.len(), 1, "errors are kept");
}

#[tokio::test]
async fn fetch_follows_priority_then_run_at_then_id() {
    let db = Db::new().await;
    let client = db.client();
    let past = chrono::Utc::now() - chrono::Duration::seconds(60);
    let low = client.enqueue(noop().priority(9)).await.unwrap().job.job_id;
    let high_late = client.enqueue(noop().priority(0)).await.unwrap().job.job_id;
    let high_early = client
        .enqueue(noop().priority(0).run_at(past))
        .await
        .unwrap()
        .job
        .job_id;
    let _future = client
        .enqueue(noop().priority(0).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let fetched: Vec<JobId> = db
        .store
        .job_fetch_available(&fetch_params(10))
        .await
        .unwrap()
        .iter()
        .map(|l| l.job.job_id)
        .collect();
    assert_eq!(
        fetched,
        [high_early, high_late, low],
        "the future job waits"
    );
}

#[tokio::test]
async fn fetch_takes_only_the_asked_types_and_queue_and_counts_the_attempt() {
    let db = Db::new().await;
    let client = db.client();
    client
        .enqueue(NewJob::new("unknown_type", json!({})))
        .await
        .unwrap();
    client.enqueue(noop().queue("elsewhere")).await.unwrap();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let fetched = db
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
}

#[tokio::test]
async fn fetch_skips_jobs_locked_by_another_worker() {
    let db = Db::new().await;
    let client = db.client();
    let first = client.enqueue(noop().priority(0)).await.unwrap().job.job_id;
    let second = client.enqueue(noop().priority(1)).await.unwrap().job.job_id;
    let mut tx = db.schema.pool.begin().await.unwrap();
    sqlx::query("select 1 from forklift_jobs where id = $1 for update")
        .bind(first.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    let fetched = db
        .store
        .job_fetch_available(&fetch_params(10))
        .await
        .unwrap();
    assert_eq!(
        fetched.iter().map(|l| l.job.job_id).collect::<Vec<_>>(),
        [second]
    );
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn two_workers_racing_never_take_the_same_job() {
    let db = Db::new().await;
    let other = db.other_process().await;
    db.client().enqueue_many(&vec![noop(); 400]).await.unwrap();
    let mut seen = HashSet::new();
    let mut total = 0;
    for _ in 0..10 {
        let params = fetch_params(25);
        let (a, b) = tokio::join!(
            db.store.job_fetch_available(&params),
            other.job_fetch_available(&params)
        );
        for l in a.unwrap().into_iter().chain(b.unwrap()) {
            total += 1;
            assert!(seen.insert(l.job.job_id), "job leased twice");
        }
    }
    assert_eq!(total, 400);
}

#[tokio::test]
async fn paused_queue_is_not_fetched_until_resumed_and_only_for_that_tenant() {
    let db = Db::new().await;
    let a = db.client();
    let b = a.for_tenant(TenantId(Uuid::new_v4()));
    a.enqueue(noop()).await.unwrap();
    let jb = b.enqueue(noop()).await.unwrap().job.job_id;
    a.pause_queue("default").await.unwrap();
    let fetched = db
        .store
        .job_fetch_available(&fetch_params(10))
        .await
        .unwrap();
    assert_eq!(
        fetched.iter().map(|l| l.job.job_id).collect::<Vec<_>>(),
        [jb]
    );
    a.resume_queue("default").await.unwrap();
    assert_eq!(
        db.store
            .job_fetch_available(&fetch_params(10))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn completion_after_the_lease_was_lost_is_rejected() {
    let db = Db::new().await;
    let client = db.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let first = db
        .store
        .job_fetch_available(&fetch_params(1))
        .await
        .unwrap()
        .remove(0);
    // The first worker vanishes; its lease lapses and the job is rescued and re-leased.
    db.sql("update forklift_jobs set lease_expires_at = now() - interval '1 second'")
        .await;
    let rescued = forklift::maintenance::Rescuer::new(db.dyn_store(), support::quick_backoff())
        .run_once()
        .await
        .unwrap();
    assert_eq!(rescued.len(), 1);
    db.sql("update forklift_jobs set run_at = now()").await;
    let second = db
        .store
        .job_fetch_available(&fetch_params(1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.job.attempt, 2);

    let late = db
        .store
        .job_complete_many(&[completion(&first, JobStatus::Failed)])
        .await
        .unwrap();
    assert!(late.is_empty(), "the stale lease changes nothing");
    assert!(
        db.store
            .job_heartbeat_many(
                &[Lease {
                    job_id: id,
                    token: first.lease_token
                }],
                Duration::from_secs(30)
            )
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(client.get(id).await.unwrap().status, JobStatus::Running);

    let ok = db
        .store
        .job_complete_many(&[completion(&second, JobStatus::Success)])
        .await
        .unwrap();
    assert_eq!(ok, [id]);
    let again = db
        .store
        .job_complete_many(&[completion(&second, JobStatus::Failed)])
        .await
        .unwrap();
    assert!(again.is_empty(), "a final state is reached once");
    let job = client.get(id).await.unwrap();
    assert_eq!((job.status, job.progress), (JobStatus::Success, 100));
    assert_eq!(job.result, Some(json!({"ok": true})));
}

#[tokio::test]
async fn rescue_requeues_a_lapsed_job_or_fails_it_when_out_of_attempts() {
    let db = Db::new().await;
    let client = db.client();
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
    db.store
        .job_fetch_available(&fetch_params(3))
        .await
        .unwrap();
    db.sql(&format!(
        "update forklift_jobs set lease_expires_at = now() - interval '1 second' where id <> '{}'",
        live.0
    ))
    .await;
    let rescuer = forklift::maintenance::Rescuer::new(db.dyn_store(), support::quick_backoff());
    assert_eq!(rescuer.run_once().await.unwrap().len(), 2);
    let r = client.get(retryable).await.unwrap();
    assert_eq!(r.status, JobStatus::Queued);
    assert_eq!(r.errors[0].code, "lease_expired");
    assert_eq!(client.get(last).await.unwrap().status, JobStatus::Failed);
    assert_eq!(
        client.get(live).await.unwrap().status,
        JobStatus::Running,
        "a live lease is left alone"
    );
}

#[tokio::test]
async fn a_retry_of_a_job_whose_cancel_was_asked_ends_cancelled() {
    let db = Db::new().await;
    let client = db.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let leased = db
        .store
        .job_fetch_available(&fetch_params(1))
        .await
        .unwrap()
        .remove(0);
    let asked = client.cancel(id).await.unwrap();
    assert_eq!(
        (asked.status, asked.cancel_requested),
        (JobStatus::Running, true)
    );
    let retry = Completion {
        retry_in: Duration::from_secs(1),
        ..completion(&leased, JobStatus::Queued)
    };
    db.store.job_complete_many(&[retry]).await.unwrap();
    assert_eq!(client.get(id).await.unwrap().status, JobStatus::Cancelled);
}

#[tokio::test]
async fn release_returns_the_attempt() {
    let db = Db::new().await;
    let client = db.client();
    let id = client.enqueue(noop()).await.unwrap().job.job_id;
    let leased = db
        .store
        .job_fetch_available(&fetch_params(1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        db.store
            .job_release_many(&[Lease {
                job_id: id,
                token: leased.lease_token
            }])
            .await
            .unwrap(),
        1
    );
    let job = client.get(id).await.unwrap();
    assert_eq!((job.status, job.attempt), (JobStatus::Queued, 0));
}

#[tokio::test]
async fn only_one_process_is_leader_until_it_resigns() {
    let db = Db::new().await;
    let ttl = Duration::from_secs(30);
    assert!(db.store.leader_elect("m", "a", ttl).await.unwrap());
    assert!(!db.store.leader_elect("m", "b", ttl).await.unwrap());
    assert!(
        db.store.leader_elect("m", "a", ttl).await.unwrap(),
        "the leader renews"
    );
    db.store.leader_resign("m", "a").await.unwrap();
    assert!(db.store.leader_elect("m", "b", ttl).await.unwrap());
}

#[tokio::test]
async fn prune_deletes_only_old_finished_jobs() {
    let db = Db::new().await;
    let client = db.client();
    let old = client.enqueue(noop()).await.unwrap().job.job_id;
    let live = client.enqueue(noop()).await.unwrap().job.job_id;
    client.cancel(old).await.unwrap();
    db.sql("update forklift_jobs set completed_at = now() - interval '2 days' where completed_at is not null").await;
    let pruner = forklift::maintenance::Pruner::new(db.dyn_store(), Duration::from_secs(86_400));
    assert_eq!(pruner.run_once().await.unwrap(), 1);
    assert!(matches!(client.get(old).await, Err(Error::NotFound)));
    assert!(client.get(live).await.is_ok());
}

#[tokio::test]
async fn migrations_are_safe_to_run_concurrently_and_again() {
    let db = Db::new().await;
    let other = db.other_process().await;
    let (a, b) = tokio::join!(db.store.migrate(), other.migrate());
    a.unwrap();
    b.unwrap();
}

#[tokio::test]
async fn concurrent_single_enqueues_from_many_tenants_each_get_their_own_job() {
    let db = Db::new().await;
    let base = db.client();
    let tenants: Vec<TenantId> = (0..4).map(|_| TenantId(Uuid::new_v4())).collect();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = base.for_tenant(tenants[i % 4]);
            tokio::spawn(async move {
                (
                    i,
                    client
                        .enqueue(NewJob::new("noop", json!({ "i": i })))
                        .await
                        .unwrap(),
                )
            })
        })
        .collect();
    for t in tasks {
        let (i, ins) = t.await.unwrap();
        assert!(ins.inserted);
        assert_eq!(
            ins.job.payload,
            json!({ "i": i }),
            "each caller gets its own job back"
        );
        assert_eq!(ins.job.tenant_id, tenants[i % 4]);
        let mine = base
            .for_tenant(tenants[i % 4])
            .get(ins.job.job_id)
            .await
            .unwrap();
        assert_eq!(mine.payload, json!({ "i": i }));
        assert!(matches!(
            base.for_tenant(tenants[(i + 1) % 4])
                .get(ins.job.job_id)
                .await,
            Err(Error::NotFound)
        ));
    }
}
