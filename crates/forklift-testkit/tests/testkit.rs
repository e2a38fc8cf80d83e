//! Runs against whichever server `database_url()` resolves; to exercise the throwaway
//! cluster, run with `DATABASE_URL` unset and `FORKLIFT_TEST_PG_PROBE=127.0.0.1:1`.

use forklift_testkit::{TestSchema, fresh_schema};
use sqlx::{Connection, PgConnection};

async fn current_schema(conn: &mut PgConnection) -> String {
    sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn count(schema: &TestSchema) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&schema.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn fresh_schemas_are_distinct_and_independent() {
    let (a, b) = (fresh_schema().await, fresh_schema().await);
    assert_ne!(a.name, b.name);
    for s in [&a, &b] {
        // The same table name in both: each lands in its own schema.
        sqlx::query("CREATE TABLE t(x int)")
            .execute(&s.pool)
            .await
            .unwrap();
        let mut conn = s.pool.acquire().await.unwrap();
        assert_eq!(current_schema(&mut conn).await, s.name);
    }
    sqlx::query("INSERT INTO t VALUES (1), (2)")
        .execute(&a.pool)
        .await
        .unwrap();
    assert_eq!(count(&a).await, 2);
    assert_eq!(count(&b).await, 0);
}

#[tokio::test]
async fn url_and_connect_options_use_the_same_schema() {
    let s = fresh_schema().await;
    sqlx::query("CREATE TABLE t(x int)")
        .execute(&s.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (42)")
        .execute(&s.pool)
        .await
        .unwrap();
    let by_url = PgConnection::connect(&s.url).await.unwrap();
    let by_options = PgConnection::connect_with(&s.connect_options())
        .await
        .unwrap();
    for mut conn in [by_url, by_options] {
        assert_eq!(current_schema(&mut conn).await, s.name);
        let x: i32 = sqlx::query_scalar("SELECT x FROM t")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(x, 42);
    }
}

/// Manual check that the heartbeat keeps a throwaway cluster alive while a process uses it:
/// `FORKLIFT_TEST_PG_PROBE=127.0.0.1:1 FORKLIFT_TEST_PG_IDLE_SECS=15 cargo test -p
/// forklift-testkit -- --ignored` holds a schema for three idle periods, then uses it again.
#[tokio::test]
#[ignore = "slow; only meaningful with the throwaway cluster"]
async fn heartbeat_keeps_the_cluster_alive() {
    let s = fresh_schema().await;
    let idle: u64 = std::env::var("FORKLIFT_TEST_PG_IDLE_SECS").map_or(90, |v| v.parse().unwrap());
    tokio::time::sleep(std::time::Duration::from_secs(3 * idle)).await;
    let mut conn = PgConnection::connect(&s.url).await.unwrap();
    assert_eq!(current_schema(&mut conn).await, s.name);
}
