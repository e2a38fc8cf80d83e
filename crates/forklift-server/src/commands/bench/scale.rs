//! The scale-out scenario: one burn-down shared by 1, 2 and 4 `forklift worker`
//! processes on one PostgreSQL, each as shipped (concurrency 100, maintenance on).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use forklift::Client;
use tokio::process::{Child, Command};

use super::scenarios::{enqueue_in_calls_of_1000, resume_and_drain};
use super::{BenchArgs, Fresh, Results};

pub async fn scale(fresh: &Fresh, args: &BenchArgs, out: &mut Results) -> anyhow::Result<()> {
    let Some(url) = fresh.schema_url() else {
        bail!("the scale scenario needs PostgreSQL (several processes on one database)");
    };
    let mut runs: Vec<(usize, Option<&str>)> = vec![(1, None), (2, None), (4, None)];
    if let Some(pooler) = &args.pooler_url {
        runs.push((1, Some(pooler)));
    }
    for (processes, pooler) in runs {
        let client = Client::new(fresh.store().await?);
        client.pause_queue("default").await?;
        let (n, _) = enqueue_in_calls_of_1000(&client, args.jobs).await?;
        let mut workers = Vec::new();
        for _ in 0..processes {
            workers.push(spawn_worker(&url, pooler)?);
        }
        // Time to connect and take their first (empty) look at the paused queue.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for w in &mut workers {
            if let Some(status) = w.try_wait()? {
                bail!("a `forklift worker` exited at start: {status}");
            }
        }
        let (machine, ours, me) = (busy_ticks(), worker_ticks(&workers), process_ticks("self"));
        let start = std::time::Instant::now();
        let rate = resume_and_drain(&client, n).await?;
        let seconds = start.elapsed().as_secs_f64() * USER_HZ;
        let through = if pooler.is_some() {
            " through PgBouncer"
        } else {
            ""
        };
        let label = format!("burn-down {n}, {processes} `forklift worker` process(es){through}");
        out.add(&label, "jobs/s", rate);
        let workers_cores = (worker_ticks(&workers) - ours) as f64 / seconds;
        let bench_cores = (process_ticks("self") - me) as f64 / seconds;
        let machine_cores = (busy_ticks() - machine) as f64 / seconds;
        let rest = machine_cores - workers_cores - bench_cores;
        out.add(
            format!("{label}: CPU busy, machine"),
            "cores",
            machine_cores,
        );
        out.add(
            format!("{label}: CPU busy, workers"),
            "cores",
            workers_cores,
        );
        out.add(
            format!("{label}: CPU busy, PostgreSQL (and the rest)"),
            "cores",
            rest,
        );
        for mut w in workers {
            w.kill().await?;
        }
    }
    Ok(())
}

/// CPU time the whole machine spent busy so far (all but idle and iowait), in clock ticks.
fn busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    ticks.iter().take(8).sum::<u64>() - idle
}

/// CPU time (user and system) the worker processes spent so far, in clock ticks.
fn worker_ticks(workers: &[Child]) -> u64 {
    let pids = workers.iter().filter_map(Child::id);
    pids.map(|pid| process_ticks(&pid.to_string())).sum()
}

/// CPU time (user and system) of `/proc/{pid}` so far, in clock ticks.
fn process_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) and its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let field = |i: usize| f.get(i).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Linux's USER_HZ, the clock tick /proc counts in: 100 on every architecture.
const USER_HZ: f64 = 100.0;

/// `forklift worker` (this very binary) on the bench schema, as shipped; through a
/// transaction pooler at `pooler` (with `url` as the direct URL) when given.
fn spawn_worker(url: &str, pooler: Option<&str>) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["worker", "--queues", "default"]);
    match pooler {
        Some(pooler) => cmd
            .env("DATABASE_URL", pooler)
            .env("FORKLIFT_TRANSACTION_POOLER", "true")
            .env("FORKLIFT_DIRECT_DATABASE_URL", url),
        None => cmd.env("DATABASE_URL", url),
    };
    cmd.env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start `forklift worker`")
}
