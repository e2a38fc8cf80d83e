//! What only PgBouncer in transaction pooling mode tests (the `both` tests also run
//! through it, as `pgbouncer::name`): the renewals' direct connection, and enqueue on an
//! application's connection through the pooler.

use std::time::{Duration, Instant};

use forklift::TenantId;
use sqlx::{Connection, Executor};

use crate::support::Harness;
use crate::{fetch_params, lease, noop};

/// Every server connection the pooler has for the database is busy for 5 s: a renewal
/// that queued behind them would take that long (and a lease shorter than that would be
/// lost); on the direct URL it does not wait.
#[tokio::test]
async fn behind_pgbouncer_a_renewal_does_not_wait_for_the_poolers_busy_connections() {
    let h = Harness::pgbouncer().await;
    h.client().enqueue(noop()).await.unwrap();
    let leased = h
        .store
        .job_fetch_available(&fetch_params(1))
        .await
        .unwrap()
        .remove(0);
    // One renewal first, so that the direct pool's first connection is not what is timed.
    let lease = lease(&leased);
    let renew = || {
        h.store
            .job_heartbeat_many(std::slice::from_ref(&lease), Duration::from_secs(30))
    };
    assert_eq!(renew().await.unwrap().len(), 1);
    let through_pooler = h.pg_store().pool().clone();
    let sleepers: Vec<_> = (0..forklift_testkit::PGBOUNCER_POOL_SIZE)
        .map(|_| {
            let pool = through_pooler.clone();
            tokio::spawn(async move { sqlx::raw_sql("select pg_sleep(5)").execute(&pool).await })
        })
        .collect();
    // PgBouncer opens its server connections one at a time: wait until all are asleep.
    let asleep = "select count(*) from pg_stat_activity where query = 'select pg_sleep(5)' and state = 'active'";
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let n: i64 = sqlx::query_scalar(asleep)
            .fetch_one(&h.pg_schema().pool)
            .await
            .unwrap();
        if n as usize == forklift_testkit::PGBOUNCER_POOL_SIZE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of PgBouncer's server connections are busy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    let held = renew().await.unwrap();
    let waited = start.elapsed();
    assert_eq!(held.len(), 1);
    assert!(
        waited < Duration::from_secs(1),
        "the renewal waited {waited:?}"
    );
    for s in sleepers {
        s.await.unwrap().unwrap();
    }
}

/// `enqueue_in` on connections of a pool that goes through the pooler, from 8 tasks at
/// once (so PgBouncer moves clients between its 5 server connections): on a bare
/// connection, which then gets a transaction of its own, and inside a transaction.
#[tokio::test]
async fn behind_pgbouncer_enqueue_in_works_on_a_bare_connection_and_in_a_transaction() {
    let h = Harness::pgbouncer().await;
    let pool = h.pg_store().pool().clone();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, pool) = (h.client(), pool.clone());
            tokio::spawn(async move {
                let mut conn = pool.acquire().await.unwrap();
                for _ in 0..10 {
                    client.enqueue_in(&mut conn, noop()).await.unwrap();
                }
                let mut tx = conn.begin().await.unwrap();
                for _ in 0..10 {
                    client.enqueue_in(&mut *tx, noop()).await.unwrap();
                }
                tx.commit().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let counts = h.store.job_counts(TenantId::DEFAULT).await.unwrap();
    assert_eq!(counts.iter().map(|c| c.count).sum::<i64>(), 160);
}

/// A transaction begun with a plain `BEGIN` (which sqlx does not count) stays the
/// caller's: rolled back, it takes the enqueued job with it. Directly and through PgBouncer.
#[tokio::test]
async fn enqueue_in_after_a_plain_begin_is_rolled_back_with_the_callers_transaction() {
    for h in [Harness::pg().await, Harness::pgbouncer().await] {
        let mut conn = h.pg_store().pool().acquire().await.unwrap();
        conn.execute("begin").await.unwrap();
        h.client().enqueue_in(&mut conn, noop()).await.unwrap();
        conn.execute("rollback").await.unwrap();
        let counts = h.store.job_counts(TenantId::DEFAULT).await.unwrap();
        assert_eq!(counts.iter().map(|c| c.count).sum::<i64>(), 0);
    }
}

/// A direct URL that reaches other tables than the pooler would run the renewals where no
/// lease is: refused at connect, with both names.
#[tokio::test]
async fn a_direct_url_to_another_database_than_the_poolers_is_refused() {
    let db = forklift_testkit::fresh_pooled_database().await;
    let elsewhere: sqlx::postgres::PgConnectOptions =
        forklift_testkit::database_url().await.parse().unwrap();
    let refused =
        forklift::PgStore::connect_through_pooler(db.pooled.clone(), 2, Some(elsewhere)).await;
    let message = refused.err().expect("refused").to_string();
    assert!(message.contains("direct URL"), "{message}");
    let same = db.direct.connect_options();
    forklift::PgStore::connect_through_pooler(db.pooled, 2, Some(same))
        .await
        .expect("the same database is accepted");
}
