//! `forklift bench`: the scenarios of BENCH.md against a fresh schema (PostgreSQL) or a
//! fresh file (SQLite), each repeated, printed as a table of median [min - max], one JSON
//! line, and the summary lines that the peers' `anchors.sh` reads.

mod fairness;
mod history;
mod scale;
mod scenarios;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use forklift::{PgStore, SqliteStore, Store};
use sqlx::postgres::PgConnectOptions;

use crate::cli::sqlite_path;

/// Options of `forklift bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The database to measure: `postgres://…` (a schema `forklift_bench` is dropped and
    /// made anew for each run) or `sqlite://PATH` (a fresh file per run).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://forklift-bench.db"
    )]
    pub database_url: String,
    /// Scenarios, comma-separated: batch, single, burndown, latency, http, api (the
    /// burn-down end to end through `forklift serve` as shipped), and, not run by default,
    /// history (reads and work on an empty table, then with `--history-rows` finished
    /// jobs), backlog (the burn-down behind `--backlog` jobs no process can run) and scale
    /// (the burn-down by 1, 2 and 4 `forklift worker` processes; PostgreSQL only) and
    /// fairness (a big tenant's backlog beside a small tenant enqueueing 20 jobs/s).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "batch,single,burndown,latency,http,api"
    )]
    pub what: Vec<String>,
    /// Runs of each scenario.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Jobs for batch enqueue and burn-down.
    #[arg(long, default_value_t = 50_000)]
    pub jobs: usize,
    /// Jobs per call in batch enqueue (the other figure is the largest call, 10,000).
    #[arg(long, default_value_t = 1_000)]
    pub chunk: usize,
    /// One-job enqueues by one caller (16 callers do twice as many).
    #[arg(long, default_value_t = 3_000)]
    pub single: usize,
    /// Jobs run at once by the burn-down worker; the default is the shipped one
    /// (`forklift serve --concurrency`). Any other value is a tuned figure.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Latency samples, enqueued open loop at `--rate` per second.
    #[arg(long, default_value_t = 2_000)]
    pub latency_jobs: usize,
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Seconds of HTTP enqueue load, 16 keep-alive connections.
    #[arg(long, default_value_t = 20)]
    pub http_seconds: u64,
    /// Jobs of each kind no process can run in the backlog scenario (not run by default).
    #[arg(long, default_value_t = 300_000)]
    pub backlog: usize,
    /// Finished jobs the history scenario adds (PostgreSQL only).
    #[arg(long, default_value_t = 10_000_000)]
    pub history_rows: usize,
    /// For the scale scenario: a PgBouncer URL (transaction pooling) that reaches the bench
    /// schema (PgBouncer's `connect_query` can set its `search_path`); adds a run of one
    /// worker through it.
    #[arg(long)]
    pub pooler_url: Option<String>,
    /// A label for the summary and the JSON line.
    #[arg(long, default_value = "forklift")]
    pub label: String,
}

/// Where the bench's tables go on PostgreSQL, dropped and made anew for each run.
const BENCH_SCHEMA: &str = "forklift_bench";

/// Makes a fresh, empty, migrated store for each run.
pub(crate) struct Fresh {
    url: String,
}

impl Fresh {
    pub(crate) async fn store(&self) -> anyhow::Result<Arc<dyn Store>> {
        Ok(self.stores().await?.0)
    }

    /// The store, and the PostgreSQL store behind it when there is one (for transactions).
    pub(crate) async fn stores(&self) -> anyhow::Result<(Arc<dyn Store>, Concrete)> {
        if let Some(path) = sqlite_path(&self.url) {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                let _ = std::fs::remove_file(file);
            }
            let store = SqliteStore::connect(&self.url).await?;
            store.migrate().await?;
            return Ok((Arc::new(store.clone()), Concrete::Sqlite(store)));
        }
        let admin = sqlx::PgPool::connect(&self.url)
            .await
            .context("could not connect to PostgreSQL")?;
        sqlx::query("drop schema if exists forklift_bench cascade")
            .execute(&admin)
            .await?;
        sqlx::query("create schema forklift_bench")
            .execute(&admin)
            .await?;
        admin.close().await;
        let options: PgConnectOptions = self
            .url
            .parse::<PgConnectOptions>()?
            .options([("search_path", BENCH_SCHEMA)]);
        let store = PgStore::connect(options, 40).await?;
        store.migrate().await?;
        Ok((Arc::new(store.clone()), Concrete::Pg(store)))
    }

    /// The bench schema's URL, for other processes (PostgreSQL only).
    pub(crate) fn schema_url(&self) -> Option<String> {
        if sqlite_path(&self.url).is_some() {
            return None;
        }
        let sep = if self.url.contains('?') { '&' } else { '?' };
        Some(format!(
            "{}{sep}options=-c%20search_path%3D{BENCH_SCHEMA}",
            self.url
        ))
    }

    pub(crate) fn backend(&self) -> &'static str {
        if sqlite_path(&self.url).is_some() {
            "sqlite"
        } else {
            "postgres"
        }
    }
}

/// The store under the `dyn Store`, for what only it offers (the caller's transaction).
pub(crate) enum Concrete {
    Pg(PgStore),
    Sqlite(SqliteStore),
}

/// Measurements by name: (unit, one value per run).
#[derive(Default)]
pub(crate) struct Results(BTreeMap<String, (String, Vec<f64>)>);

impl Results {
    pub(crate) fn add(&mut self, name: impl Into<String>, unit: &str, value: f64) {
        self.0
            .entry(name.into())
            .or_insert_with(|| (unit.to_string(), Vec::new()))
            .1
            .push(value);
    }
}

fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut s = values.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    (median, s[0], s[s.len() - 1])
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let fresh = Fresh {
        url: args.database_url.clone(),
    };
    let mut results = Results::default();
    for rep in 1..=args.reps {
        for what in &args.what {
            eprintln!("run {rep}/{}: {what}", args.reps);
            match what.as_str() {
                "batch" => scenarios::batch(&fresh, &args, &mut results).await?,
                "single" => scenarios::single(&fresh, &args, &mut results).await?,
                "burndown" => scenarios::burndown(&fresh, &args, &mut results).await?,
                "latency" => scenarios::latency(&fresh, &args, &mut results).await?,
                "http" => scenarios::http(&fresh, &args, &mut results).await?,
                "api" => scenarios::api(&fresh, &args, &mut results).await?,
                "history" => history::history(&fresh, &args, &mut results).await?,
                "backlog" => scenarios::backlog(&fresh, &args, &mut results).await?,
                "scale" => scale::scale(&fresh, &args, &mut results).await?,
                "fairness" => fairness::fairness(&fresh, &args, &mut results).await?,
                other => {
                    bail!(
                        "unknown scenario `{other}` (batch, single, burndown, latency, http, api, history, backlog, scale, fairness)"
                    )
                }
            }
        }
    }
    results.add("peak RSS of this process", "MiB", scenarios::peak_rss_mib());
    println!(
        "\n=== {} summary on {} (median [min - max] over runs) ===",
        args.label,
        fresh.backend()
    );
    let mut json = serde_json::Map::new();
    for (name, (unit, values)) in &results.0 {
        let (median, min, max) = summary(values);
        let d = if unit == "ms" || unit == "cores" {
            2
        } else {
            0
        };
        println!(
            "{name:<52} {median:>12.d$} {unit:<7} [{min:.d$} - {max:.d$}]  n={}",
            values.len()
        );
        json.insert(
            name.clone(),
            serde_json::json!({"unit": unit, "median": median, "min": min, "max": max, "runs": values}),
        );
    }
    let line = serde_json::json!({
        "label": args.label, "backend": fresh.backend(), "at": chrono::Utc::now(), "results": json,
    });
    println!("(json: {line})");
    Ok(())
}
