//! Forklift: a background job queue and worker framework on PostgreSQL or SQLite.
//!
//! ```no_run
//! use std::sync::Arc;
//! use forklift::{builtin, Client, NewJob, PgStore, Registry, Store, Worker, WorkerConfig};
//!
//! # async fn demo() -> forklift::Result<()> {
//! let store = PgStore::connect("postgres://localhost/app".parse()?, 10).await?;
//! store.migrate().await?;
//! let store: Arc<dyn Store> = Arc::new(store);
//! let client = Client::new(store.clone());
//! client.enqueue(NewJob::new("noop", serde_json::json!({}))).await?;
//! let mut registry = Registry::new();
//! builtin::register(&mut registry);
//! let worker = Worker::start(store, registry, WorkerConfig::default());
//! // ... until the process is asked to stop:
//! worker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! With no server to run, [`SqliteStore`] keeps everything in one file, with the same
//! semantics for one machine: `SqliteStore::connect("sqlite://forklift.db")` in place of
//! the first line.
//!
//! Error policy: every fallible call returns [`Error`]; nothing panics on bad input.

pub mod builtin;
mod client;
mod error;
mod job;
pub mod maintenance;
pub mod metric_labels;
mod new_job;
pub mod retry;
pub mod runtime;
pub mod store;
mod worker;

pub use client::Client;
pub use error::{Error, Result};
pub use job::{ErrorEntry, InvalidJobId, Job, JobId, JobStatus, TenantId};
pub use new_job::{JobArgs, MAX_BATCH, NewJob, check_name};
pub use retry::Backoff;
pub use runtime::{QueueConfig, Worker, WorkerConfig};
pub use store::postgres::PgStore;
pub use store::sqlite::SqliteStore;
pub use store::{Cursor, Inserted, JobPage, ListParams, Store, TxConnection};
pub use worker::{
    CancelReason, Handler, HandlerResult, ItemError, JobContext, JobError, Outcome, Registry,
    TypeOptions,
};
