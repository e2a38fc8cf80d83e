//! What each `forklift` subcommand does.

pub mod bench;
pub mod remote;
pub mod serve;
pub mod tenant;

use std::sync::Arc;

use anyhow::{Context, bail};
use forklift::{PgStore, SqliteStore, Store};
use sqlx::postgres::PgConnectOptions;

use crate::cli::{DbArgs, sqlite_path};

/// Opens the store a `--database-url` names and brings its schema up to date.
pub async fn open_store(db: &DbArgs) -> anyhow::Result<Arc<dyn Store>> {
    let url = db.database_url.as_str();
    let store: Arc<dyn Store> =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options: PgConnectOptions = url
                .parse()
                .context("DATABASE_URL is not a valid PostgreSQL URL")?;
            let shown = format!(
                "{}:{}/{}",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or("")
            );
            let store = if db.transaction_pooler {
                let direct = db
                    .direct_database_url
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .context("FORKLIFT_DIRECT_DATABASE_URL is not a valid PostgreSQL URL")?;
                PgStore::connect_through_pooler(options, 20, direct).await
            } else {
                PgStore::connect(options, 20).await
            }
            .with_context(|| format!("could not connect to PostgreSQL at {shown}"))?;
            Arc::new(store)
        } else if db.transaction_pooler {
            bail!("--transaction-pooler needs a postgres:// DATABASE_URL");
        } else if let Some(path) = sqlite_path(url) {
            let store = SqliteStore::connect(url).await.with_context(|| {
                format!("could not open the SQLite database {}", path.display())
            })?;
            Arc::new(store)
        } else {
            bail!("DATABASE_URL must start with postgres:// or sqlite://");
        };
    store
        .migrate()
        .await
        .context("could not bring the database schema up to date")?;
    Ok(store)
}
