//! What only PgBouncer in transaction pooling mode tests (the `both` tests also run
//! through it, as `pgbouncer::name`): the renewals' direct connection, and enqueue on an
//! application's connection through the pooler.

use std::time::{Duration, Instant};

use forklift::TenantId;

use crate::support::Harness;
use crate::{fetch_params, lease, noop};

/// Every server connection the pooler has for the database is busy for 3 s: a renewal
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
    let through_pooler = h.pg_store().pool().clone();
    let sleepers: Vec<_> = (0..forklift_testkit::PGBOUNCER_POOL_SIZE)
        .map(|_| {
            let pool = through_pooler.clone();
            tokio::spawn(async move { sqlx::raw_sql("select pg_sleep(3)").execute(&pool).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let held = h
        .store
        .job_heartbeat_many(&[lease(&leased)], Duration::from_secs(30))
        .await
        .unwrap();
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
                let mut tx = pool.begin().await.unwrap();
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
