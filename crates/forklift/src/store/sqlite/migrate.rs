//! Versioned schema migrations, embedded in the crate and applied in order.

use sqlx::{Connection, Executor, SqliteConnection};

use super::row::now_micros;
use crate::error::{Error, Result};

/// Each migration: its version, a name, and its SQL. Append only; never edit a shipped one.
/// Versions and names match the PostgreSQL list, so both stores report the same history.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "jobs",
        include_str!("../../../migrations/sqlite/0001_jobs.sql"),
    ),
    (
        2,
        "tenants",
        include_str!("../../../migrations/sqlite/0002_tenants.sql"),
    ),
    (
        3,
        "due_by_tenant_and_type",
        include_str!("../../../migrations/sqlite/0003_due_by_tenant_and_type.sql"),
    ),
    (
        4,
        "counters",
        include_str!("../../../migrations/sqlite/0004_counters.sql"),
    ),
    (
        5,
        "lease_token_means_running",
        include_str!("../../../migrations/sqlite/0005_lease_token_means_running.sql"),
    ),
    (
        6,
        "list_by_status",
        include_str!("../../../migrations/sqlite/0006_list_by_status.sql"),
    ),
];

/// Applies the migrations this database lacks, in one transaction.
///
/// `BEGIN IMMEDIATE` takes SQLite's write lock before reading which versions are applied,
/// so processes starting at once take turns (waiting up to the busy timeout); the second
/// finds everything applied and does nothing. SQLite's DDL is transactional: a migration
/// that fails leaves nothing behind.
pub async fn run(conn: &mut SqliteConnection) -> Result<()> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let conn: &mut SqliteConnection = &mut tx;
    sqlx::query(
        "create table if not exists forklift_migrations (
            version    integer primary key,
            name       text not null,
            applied_at integer not null
        ) strict",
    )
    .execute(&mut *conn)
    .await?;
    let applied: Vec<i32> = sqlx::query_scalar("select version from forklift_migrations")
        .fetch_all(&mut *conn)
        .await?;
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        if let Err(e) = conn.execute(sql).await {
            return Err(Error::Migration(format!("{version} {name}: {e}")));
        }
        sqlx::query(
            "insert into forklift_migrations (version, name, applied_at) values (?1, ?2, ?3)",
        )
        .bind(version)
        .bind(name)
        .bind(now_micros())
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
