//! Versioned schema migrations, embedded in the crate and applied in order.

use sqlx::{Executor, PgConnection};

use super::db::Db;

use crate::error::{Error, Result};

/// Each migration: its version, a name, and its SQL. Append only; never edit a shipped one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "jobs",
        include_str!("../../../migrations/postgres/0001_jobs.sql"),
    ),
    (
        2,
        "tenants",
        include_str!("../../../migrations/postgres/0002_tenants.sql"),
    ),
    (
        3,
        "due_by_tenant_and_type",
        include_str!("../../../migrations/postgres/0003_due_by_tenant_and_type.sql"),
    ),
    (
        4,
        "counters",
        include_str!("../../../migrations/postgres/0004_counters.sql"),
    ),
    (
        5,
        "lease_token_means_running",
        include_str!("../../../migrations/postgres/0005_lease_token_means_running.sql"),
    ),
    (
        6,
        "list_by_status",
        include_str!("../../../migrations/postgres/0006_list_by_status.sql"),
    ),
];

/// Applies the migrations this database lacks, in one transaction. Its statements are
/// unnamed (they run once), so they work behind a transaction pooler as well.
///
/// Several processes may start at once: a transaction-scoped advisory lock, keyed by the
/// schema so that separate schemas in one database do not wait on each other, makes them
/// take turns; the second finds everything applied and does nothing.
pub async fn run(pool: &Db) -> Result<()> {
    let mut tx = pool.pool.begin().await?;
    let conn: &mut PgConnection = &mut tx;
    sqlx::query("select pg_advisory_xact_lock(hashtext('forklift_migrate:' || current_schema()))")
        .persistent(false)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "create table if not exists forklift_migrations (
            version    integer primary key,
            name       text not null,
            applied_at timestamptz not null default now()
        )",
    )
    .persistent(false)
    .execute(&mut *conn)
    .await?;
    let applied: Vec<i32> = sqlx::query_scalar("select version from forklift_migrations")
        .persistent(false)
        .fetch_all(&mut *conn)
        .await?;
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        if let Err(e) = conn.execute(sql).await {
            return Err(Error::Migration(format!("{version} {name}: {e}")));
        }
        sqlx::query("insert into forklift_migrations (version, name) values ($1, $2)")
            .persistent(false)
            .bind(version)
            .bind(name)
            .execute(&mut *conn)
            .await?;
        tracing::info!(version, name, "applied migration");
    }
    if let Some(newest) = applied.iter().max()
        && *newest > MIGRATIONS.len() as i32
    {
        return Err(Error::Migration(format!(
            "the database is at version {newest}, newer than this build knows ({}): upgrade Forklift",
            MIGRATIONS.len()
        )));
    }
    tx.commit().await?;
    Ok(())
}
