//! The processes a chaos run starts: workers built on the library with the `ledger`
//! handler, and the Jobs API run through the same code as `forklift serve`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use forklift::maintenance::MaintenanceConfig;
use forklift::{Backoff, PgStore, QueueConfig, Registry, Store, TypeOptions, Worker, WorkerConfig};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::ledger::LedgerHandler;

/// A worker process's settings; the harness passes short leases so faults resolve fast.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Where to reach PostgreSQL (the worker's own proxy).
    #[arg(long)]
    pub database_url: String,
    /// The lease owner name: slot and generation, e.g. `w2g3`.
    #[arg(long)]
    pub name: String,
    /// Jobs run at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 3000)]
    pub lease_ms: u64,
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    #[arg(long, default_value_t = 1000)]
    pub rescue_ms: u64,
    #[arg(long, default_value_t = 2000)]
    pub leader_ttl_ms: u64,
    #[arg(long, default_value_t = 500)]
    pub poll_ms: u64,
    #[arg(long, default_value_t = 5000)]
    pub grace_ms: u64,
}

impl WorkerArgs {
    /// The command-line form, for the harness to start a worker with.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "worker".to_string(),
            format!("--database-url={}", self.database_url),
            format!("--name={}", self.name),
        ];
        v.extend([
            format!("--concurrency={}", self.concurrency),
            format!("--lease-ms={}", self.lease_ms),
            format!("--heartbeat-ms={}", self.heartbeat_ms),
            format!("--rescue-ms={}", self.rescue_ms),
            format!("--leader-ttl-ms={}", self.leader_ttl_ms),
            format!("--poll-ms={}", self.poll_ms),
            format!("--grace-ms={}", self.grace_ms),
        ]);
        v
    }
}

/// Runs a worker until SIGTERM/SIGINT, then shuts down gracefully (exit 0).
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let options: PgConnectOptions = args.database_url.parse().context("--database-url")?;
    // A worker restarted during a database outage waits for the database (bounded).
    let mut tries = 0;
    let store = loop {
        match PgStore::connect(options.clone(), 10).await {
            Ok(s) => break s,
            Err(e) if tries < 120 => {
                tries += 1;
                tracing::warn!(error = %e, "database not reachable yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("connect"),
        }
    };
    let ledger_pool = PgPoolOptions::new()
        .max_connections(args.concurrency as u32 + 2)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options);
    let mut registry = Registry::new();
    registry.register_with(
        "ledger",
        LedgerHandler {
            pool: ledger_pool,
            worker: args.name.clone(),
        },
        TypeOptions {
            backoff: Backoff {
                base: Duration::from_millis(200),
                cap: Duration::from_secs(2),
                jitter: 0.2,
            },
            ..TypeOptions::default()
        },
    );
    let ms = Duration::from_millis;
    let config = WorkerConfig {
        id: args.name.clone(),
        queues: vec![QueueConfig::new("default", args.concurrency)],
        poll_interval: ms(args.poll_ms),
        lease_ttl: ms(args.lease_ms),
        heartbeat_interval: ms(args.heartbeat_ms),
        progress_interval: ms(500),
        shutdown_grace: ms(args.grace_ms),
        maintenance: Some(MaintenanceConfig {
            leader_ttl: ms(args.leader_ttl_ms),
            rescue_interval: ms(args.rescue_ms),
            // A rescued job runs again at once: recovery time is then lease + sweep.
            rescue_backoff: Backoff {
                base: ms(50),
                cap: ms(100),
                jitter: 0.0,
            },
            retention: None,
            ..MaintenanceConfig::default()
        }),
        ..WorkerConfig::default()
    };
    let store: Arc<dyn Store> = Arc::new(store);
    let worker = Worker::start(store, registry, config);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(name = %args.name, "SIGTERM: shutting down");
    worker.shutdown().await;
    Ok(())
}

/// Runs the Jobs API exactly as `forklift serve --dev --no-workers` does (same parser,
/// same function), so the outage checks see the real server's answers.
pub async fn api(listen: &str, database_url: &str) -> anyhow::Result<()> {
    use clap::Parser;
    use forklift_server::cli::{Cli, Command};
    let cli = Cli::try_parse_from([
        "forklift",
        "serve",
        "--dev",
        "--no-workers",
        "--rate-limit=0",
        "--listen",
        listen,
        "--database-url",
        database_url,
        "--shutdown-grace-seconds=2",
    ])?;
    let Command::Serve(args) = cli.command else {
        unreachable!("parsed a serve command")
    };
    forklift_server::commands::serve::serve(args).await
}
