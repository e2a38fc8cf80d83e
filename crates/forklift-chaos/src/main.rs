//! `forklift-chaos`: runs the chaos suite (default), or one of its processes (`worker`,
//! `api`), which the suite starts itself.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use forklift_chaos::node::{self, WorkerArgs};
use forklift_chaos::{Config, run};

/// Chaos run: workers killed, stopped and cut off, PostgreSQL restarted, on a seeded
/// schedule; then a check that no job was lost or finished twice.
#[derive(Parser, Debug)]
#[command(name = "forklift-chaos")]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Seconds of load and faults (the drain and check follow).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Replays a run's schedule; random when absent (and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Jobs each worker runs at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Jobs enqueued per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// The short mode's fault mix (every kind at least once) instead of random faults.
    #[arg(long)]
    short: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// A worker process (started by the suite).
    Worker(WorkerArgs),
    /// The Jobs API process, as `forklift serve --dev --no-workers` (started by the suite).
    Api {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        database_url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("the Tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Some(Sub::Worker(args)) => node::worker(args).await.map(|_| true),
            Some(Sub::Api {
                listen,
                database_url,
            }) => node::api(&listen, &database_url).await.map(|_| true),
            None => {
                let exe = std::env::current_exe()?;
                let seed = cli.seed.unwrap_or_else(rand::random);
                let config = Config {
                    duration: Duration::from_secs(cli.duration),
                    workers: cli.workers,
                    concurrency: cli.concurrency,
                    rate: cli.rate,
                    short: cli.short,
                    ..Config::short(seed, exe)
                };
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                // On SIGINT/SIGTERM the run is dropped: its processes are killed and its
                // cluster stopped and removed.
                let (report, logs) = tokio::select! {
                    r = run(config.clone()) => r?,
                    _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
                    _ = term.recv() => anyhow::bail!("terminated"),
                };
                report.print(&config);
                if let Some(path) = cli.json {
                    std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
                }
                let ok = report.violations(&config).is_empty();
                if !ok {
                    println!("logs kept in {}", logs.display());
                }
                println!(
                    "replay: forklift-chaos --duration {} --seed {}{}",
                    cli.duration,
                    seed,
                    if cli.short { " --short" } else { "" }
                );
                Ok(ok)
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
