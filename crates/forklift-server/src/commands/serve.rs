//! `forklift serve` and `forklift worker`: run until SIGTERM/SIGINT, then shut down
//! gracefully and exit 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use forklift::maintenance::MaintenanceConfig;
use forklift::{Client, QueueConfig, Registry, Store, Worker, WorkerConfig, builtin};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use super::open_store;
use crate::cli::{ServeArgs, WorkerArgs};
use crate::http::{ApiConfig, AppState, router};
use crate::server::{self, ServerConfig, nofile};

pub(crate) fn worker_config(args: &WorkerArgs) -> WorkerConfig {
    WorkerConfig {
        queues: args
            .queues
            .iter()
            .map(|q| QueueConfig::new(q.trim(), args.concurrency))
            .collect(),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
        maintenance: Some(MaintenanceConfig {
            retention: (args.retention_days > 0)
                .then(|| Duration::from_secs(args.retention_days.saturating_mul(86_400))),
            ..MaintenanceConfig::default()
        }),
        ..WorkerConfig::default()
    }
}

pub(crate) fn registry(args: &WorkerArgs) -> Registry {
    let mut enabled = Registry::new();
    if !args.disable_types.iter().any(|t| t == "noop") {
        enabled.register("noop", builtin::Noop);
    }
    if !args.disable_types.iter().any(|t| t == "simulate") {
        enabled.register("simulate", builtin::Simulate);
    }
    enabled
}

fn start_worker(store: Arc<dyn Store>, args: &WorkerArgs) -> anyhow::Result<Worker> {
    for q in &args.queues {
        forklift::check_name("queue", q.trim()).context("--queues")?;
    }
    Ok(Worker::start(store, registry(args), worker_config(args)))
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)?
        .install_recorder()
        .context("could not install the metrics recorder")
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.dev && !args.listen.ip().is_loopback() {
        bail!(
            "--dev serves requests without an API key, so it listens only on a loopback address (127.0.0.1 or ::1), not {}",
            args.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "could not listen on {} (is another server using the port?)",
                args.listen
            )
        })?;
    let store = open_store(&args.worker.db).await?;
    let metrics = install_metrics()?;
    let config = ApiConfig {
        dev: args.dev,
        max_body_bytes: args.max_body_bytes,
        body_timeout: Duration::from_secs(args.body_timeout_seconds),
        rate_limit_per_second: args.rate_limit,
        rate_limit_burst: args.rate_burst,
        max_unfinished_jobs: args.max_unfinished_jobs,
        metrics_token: args
            .metrics_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from),
        ..ApiConfig::default()
    };
    let limits = ServerConfig {
        max_connections: nofile::fit_connections(args.max_connections as usize),
        header_timeout: Duration::from_secs(args.header_timeout_seconds),
        write_timeout: Duration::from_secs(args.write_timeout_seconds),
    };
    let state = AppState::new(Client::new(store.clone()), config, Some(metrics));
    let worker = if args.no_workers {
        None
    } else {
        Some(start_worker(store, &args.worker)?)
    };
    let stop = CancellationToken::new();
    tracing::info!(listen = %args.listen, dev = args.dev, max_connections = limits.max_connections, "serving the Jobs API");
    let server = tokio::spawn(server::serve(listener, router(state), limits, stop.clone()));
    shutdown_signal().await;
    stop.cancel();
    if let Some(w) = worker {
        w.shutdown().await;
    }
    // Open connections (long polls, slow clients) get one more grace period, then close.
    let grace = Duration::from_secs(args.worker.shutdown_grace_seconds.max(1));
    match tokio::time::timeout(grace, server).await {
        Ok(r) => r.context("server task")?,
        Err(_) => tracing::warn!("connections still open after the grace period; closing"),
    }
    Ok(())
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let store = open_store(&args.db).await?;
    let worker = start_worker(store, &args)?;
    shutdown_signal().await;
    worker.shutdown().await;
    Ok(())
}
