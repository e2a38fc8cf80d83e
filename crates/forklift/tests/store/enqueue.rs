//! Enqueue: defaults, validation, batches, unique keys, tenants, and enqueue inside the
//! caller's transaction (one variant per database).

use std::collections::HashSet;
use std::time::Duration;

use forklift::store::{Event, ListParams};
use forklift::{Error, JobId, JobStatus, NewJob, SqliteStore, TenantId};
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;

use crate::noop;
use crate::support::Harness;

pub async fn enqueue_returns_a_queued_job_with_defaults(h: Harness) {
    let job = h
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
    assert!(job.run_at <= chrono::Utc::now() && job.created_at == job.updated_at);
    assert_eq!(h.client().get(job.job_id).await.unwrap(), job);
}

pub async fn invalid_job_is_refused_and_nothing_is_written(h: Harness) {
    let client = h.client();
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

pub async fn enqueue_many_keeps_request_order(h: Harness) {
    let jobs: Vec<NewJob> = (0..500)
        .map(|i| NewJob::new("noop", json!({ "i": i })))
        .collect();
    let inserted = h.client().enqueue_many(&jobs).await.unwrap();
    assert_eq!(inserted.len(), 500);
    for (i, ins) in inserted.iter().enumerate() {
        assert!(ins.inserted);
        assert_eq!(ins.job.payload, json!({ "i": i }));
    }
}

pub async fn ten_thousand_jobs_in_one_call_are_all_inserted_in_order(h: Harness) {
    let jobs: Vec<NewJob> = (0..10_000)
        .map(|i| NewJob::new("noop", json!({ "i": i })).tags([format!("t{i}")]))
        .collect();
    let inserted = h.client().enqueue_many(&jobs).await.unwrap();
    assert_eq!(inserted.len(), 10_000);
    for (i, ins) in inserted.iter().enumerate() {
        assert!(ins.inserted);
        assert_eq!(
            (&ins.job.payload, &ins.job.tags),
            (&json!({ "i": i }), &vec![format!("t{i}")])
        );
    }
    let ids: HashSet<JobId> = inserted.iter().map(|i| i.job.job_id).collect();
    assert_eq!(ids.len(), 10_000);
    assert_eq!(h.count_jobs().await, 10_000);
    for i in [0, 999, 1_000, 9_999] {
        let job = &inserted[i].job;
        assert_eq!(
            &h.client().get(job.job_id).await.unwrap(),
            job,
            "job {i} reads back as returned"
        );
    }
    // One transaction, not 10,000 commits: even an unoptimised test build is far quicker.
}

pub async fn a_batch_that_fails_partway_writes_nothing(h: Harness) {
    h.refuse_job_type("poison").await;
    // Far in, so that on SQLite the first chunks were written before the failure.
    let mut jobs = vec![noop(); 2_500];
    jobs[2_400] = NewJob::new("poison", json!({}));
    let err = h.client().enqueue_many(&jobs).await.unwrap_err();
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    assert_eq!(h.count_jobs().await, 0);
    assert!(
        h.client().enqueue(noop()).await.unwrap().inserted,
        "the store goes on"
    );
}

pub async fn more_than_ten_thousand_jobs_at_once_is_refused(h: Harness) {
    let jobs = vec![noop(); 10_001];
    assert!(matches!(
        h.client().enqueue_many(&jobs).await,
        Err(Error::Invalid { .. })
    ));
}

pub async fn a_unique_key_repeated_in_one_batch_makes_one_job(h: Harness) {
    // Far apart, so that on SQLite the copies land in different insert chunks.
    let mut jobs = vec![noop(); 2_500];
    for i in [0, 1_500, 2_499] {
        jobs[i] = noop().unique_key("dup");
    }
    let inserted = h.client().enqueue_many(&jobs).await.unwrap();
    assert!(inserted[0].inserted && !inserted[1_500].inserted && !inserted[2_499].inserted);
    assert_eq!(inserted[1_500].job.job_id, inserted[0].job.job_id);
    assert_eq!(inserted[2_499].job.job_id, inserted[0].job.job_id);
    assert_eq!(h.count_jobs().await, 2_498);
    for i in [0, 1, 2_498] {
        let job = &inserted[i].job;
        assert_eq!(
            &h.client().get(job.job_id).await.unwrap(),
            job,
            "job {i} reads back as returned"
        );
    }
}

pub async fn thirty_two_concurrent_enqueues_of_one_unique_key_make_one_job(h: Harness) {
    let client = h.client();
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
    assert_eq!(h.count_jobs().await, 1);
}

pub async fn unique_key_is_free_again_once_the_job_finished(h: Harness) {
    let client = h.client();
    let first = client.enqueue(noop().unique_key("k")).await.unwrap().job;
    client.cancel(first.job_id).await.unwrap();
    let second = client.enqueue(noop().unique_key("k")).await.unwrap();
    assert!(second.inserted);
    assert_ne!(second.job.job_id, first.job_id);
}

pub async fn unique_keys_are_per_tenant(h: Harness) {
    let a = h.client();
    let b = a.for_tenant(TenantId(Uuid::new_v4()));
    let ja = a.enqueue(noop().unique_key("same")).await.unwrap();
    let jb = b.enqueue(noop().unique_key("same")).await.unwrap();
    assert!(ja.inserted && jb.inserted);
}

pub async fn another_tenants_job_is_not_found(h: Harness) {
    let a = h.client();
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

pub async fn transactional_enqueue_on_postgres_exists_only_if_the_transaction_commits(h: Harness) {
    let client = h.client();
    let mut tx = h.pg_store().pool().begin().await.unwrap();
    let rolled_back = client.enqueue_in(&mut tx, noop()).await.unwrap().job.job_id;
    tx.rollback().await.unwrap();
    assert!(matches!(
        client.get(rolled_back).await,
        Err(Error::NotFound)
    ));

    let mut tx = h.pg_store().pool().begin().await.unwrap();
    let committed = client.enqueue_in(&mut tx, noop()).await.unwrap().job.job_id;
    tx.commit().await.unwrap();
    assert_eq!(
        client.get(committed).await.unwrap().status,
        JobStatus::Queued
    );
}

pub async fn transactional_enqueue_on_sqlite_exists_only_if_the_transaction_commits(h: Harness) {
    let client = h.client();
    let store = h.sqlite_store();
    let mut events = h.store.subscribe();

    let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    let rolled_back = client.enqueue_in(&mut tx, noop()).await.unwrap().job.job_id;
    // A batch over several insert chunks goes the same way.
    let batch = client
        .enqueue_many_in(&mut tx, &vec![noop(); 2_500])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(matches!(
        client.get(rolled_back).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        client.get(batch[2_499].job.job_id).await,
        Err(Error::NotFound)
    ));
    assert_eq!(h.count_jobs().await, 0);

    // On a connection of the application's own, not the store's.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", h.sqlite_path()))
        .await
        .unwrap();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let committed = client
        .enqueue_in(&mut tx, noop().queue("txq"))
        .await
        .unwrap()
        .job
        .job_id;
    tx.commit().await.unwrap();
    assert_eq!(
        client.get(committed).await.unwrap().status,
        JobStatus::Queued
    );
    // The store's workers in this process are woken, with no store at hand.
    let woken = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::JobsAvailable { queue } = events.recv().await.unwrap()
                && queue == "txq"
            {
                return;
            }
        }
    });
    woken
        .await
        .expect("a wake-up for the transactional enqueue");

    // A batch that fails partway, inside the caller's transaction, is undone (a savepoint)
    // and leaves the transaction usable: its other writes commit.
    h.refuse_job_type("poison").await;
    let mut poisoned = vec![noop(); 2_500];
    poisoned[2_400] = NewJob::new("poison", json!({}));
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let kept = client.enqueue_in(&mut tx, noop()).await.unwrap().job.job_id;
    assert!(client.enqueue_many_in(&mut tx, &poisoned).await.is_err());
    tx.commit().await.unwrap();
    assert!(client.get(kept).await.is_ok());
    assert_eq!(h.count_jobs().await, 2);

    // On a bare connection (no transaction of the caller's) the batch is a transaction of
    // its own: all or nothing.
    assert!(
        SqliteStore::job_insert_many_in(&mut conn, TenantId::DEFAULT, &poisoned)
            .await
            .is_err()
    );
    assert_eq!(h.count_jobs().await, 2);
    assert!(
        client
            .enqueue_many_in(&mut conn, &vec![noop(); 3])
            .await
            .unwrap()
            .iter()
            .all(|i| i.inserted)
    );
    assert_eq!(h.count_jobs().await, 5);
}

pub async fn concurrent_single_enqueues_from_many_tenants_each_get_their_own_job(h: Harness) {
    let base = h.client();
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

/// A keyed batch on PostgreSQL can take several rounds: insert, look up the keys' holders,
/// insert again where a holder finished in between. Triggers stage that race here: the
/// first round's statement finishes the holder, and the second round is refused. Before
/// the rounds shared a transaction, the first round's rows stayed while the caller heard
/// of an error.
pub async fn a_keyed_batch_that_fails_in_a_later_round_writes_nothing(h: Harness) {
    let client = h.client();
    let holder = client
        .enqueue(noop().unique_key("k"))
        .await
        .unwrap()
        .job
        .job_id;
    sqlx::raw_sql(
        "create function forklift_test_finish_holder() returns trigger language plpgsql as $$
            begin update forklift_jobs set status = 'SUCCESS', completed_at = now()
                  where unique_key = 'k' and status = 'QUEUED'; return null; end $$;
         create trigger forklift_test_finish_holder after insert on forklift_jobs
            for each statement execute function forklift_test_finish_holder();
         create function forklift_test_refuse_second() returns trigger language plpgsql as $$
            begin
              if exists (select 1 from forklift_jobs where unique_key = 'k' and status = 'SUCCESS')
              then raise exception 'refused in the second round'; end if;
              return new;
            end $$;
         create trigger forklift_test_refuse_second before insert on forklift_jobs
            for each row when (new.unique_key = 'k') execute function forklift_test_refuse_second();",
    )
    .execute(&h.pg_schema().pool)
    .await
    .unwrap();
    let batch = vec![noop(), noop().unique_key("k"), noop()];
    let err = client.enqueue_many(&batch).await.unwrap_err();
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    assert_eq!(h.count_jobs().await, 1, "only the holder");
    let job = client.get(holder).await.unwrap();
    assert_eq!(
        job.status,
        JobStatus::Queued,
        "the holder's change rolled back"
    );
}
