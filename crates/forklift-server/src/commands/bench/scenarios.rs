//! The BENCH.md scenarios, one function each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use forklift::store::JobCount;
use forklift::{
    Client, Handler, HandlerResult, JobContext, NewJob, Outcome, QueueConfig, Registry,
    TxConnection, Worker, WorkerConfig, builtin,
};
use serde::Deserialize;

use super::{BenchArgs, Concrete, Fresh, Results};
use crate::http::{ApiConfig, AppState, router};

pub(super) fn noop() -> NewJob {
    NewJob::new("noop", serde_json::json!({}))
}

/// A worker as shipped, but for its concurrency (default 100, as `forklift serve`'s).
pub(super) fn bench_worker(
    store: Arc<dyn forklift::Store>,
    registry: Registry,
    concurrency: usize,
) -> Worker {
    let config = WorkerConfig {
        queues: vec![QueueConfig::new("default", concurrency)],
        maintenance: None,
        ..WorkerConfig::default()
    };
    Worker::start(store, registry, config)
}

/// [`bench_worker`] running noop jobs.
pub(super) fn noop_worker(store: Arc<dyn forklift::Store>, concurrency: usize) -> Worker {
    let mut registry = Registry::new();
    registry.register("noop", builtin::Noop);
    bench_worker(store, registry, concurrency)
}

/// Waits until the client's tenant has no unfinished job (or 120 s pass), by its counts:
/// what `GET /queues` reads, the same cost whatever the history.
pub(super) async fn drained(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let counts = client.store().job_counts(client.tenant()).await?;
        if JobCount::unfinished(&counts) == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("jobs still unfinished after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Enqueues `n` noop jobs (rounded up to thousands) in calls of 1,000; returns how many
/// and at what rate.
pub(super) async fn enqueue_in_calls_of_1000(
    client: &Client,
    n: usize,
) -> anyhow::Result<(usize, f64)> {
    let (calls, jobs) = (n.div_ceil(1_000), vec![noop(); 1_000]);
    let start = Instant::now();
    for _ in 0..calls {
        client.enqueue_many(&jobs).await?;
    }
    let n = calls * 1_000;
    Ok((n, n as f64 / start.elapsed().as_secs_f64()))
}

/// Resumes the `default` queue, holding `n` jobs, and waits until nothing is unfinished;
/// returns jobs/s.
pub(super) async fn resume_and_drain(client: &Client, n: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    client.resume_queue("default").await?;
    drained(client).await?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub async fn batch(fresh: &Fresh, args: &BenchArgs, out: &mut Results) -> anyhow::Result<()> {
    for chunk in [args.chunk, forklift::MAX_BATCH] {
        let client = Client::new(fresh.store().await?);
        let jobs = vec![noop(); chunk.min(args.jobs)];
        let start = Instant::now();
        let mut left = args.jobs;
        while left > 0 {
            let k = left.min(jobs.len());
            client.enqueue_many(&jobs[..k]).await?;
            left -= k;
        }
        out.add(
            format!("batch enqueue {} (calls of {chunk})", args.jobs),
            "jobs/s",
            args.jobs as f64 / start.elapsed().as_secs_f64(),
        );
    }
    Ok(())
}

pub async fn single(fresh: &Fresh, args: &BenchArgs, out: &mut Results) -> anyhow::Result<()> {
    for callers in [1usize, 16] {
        let client = Client::new(fresh.store().await?);
        let total = if callers == 1 {
            args.single
        } else {
            args.single * 2
        };
        let start = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|c| {
                let client = client.clone();
                let n = total / callers + usize::from(c < total % callers);
                tokio::spawn(async move {
                    for _ in 0..n {
                        client.enqueue(noop()).await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        out.add(
            format!("single enqueue, {callers} caller(s)"),
            "jobs/s",
            total as f64 / start.elapsed().as_secs_f64(),
        );
    }
    Ok(())
}

pub async fn burndown(fresh: &Fresh, args: &BenchArgs, out: &mut Results) -> anyhow::Result<()> {
    let (store, pg) = fresh.stores().await?;
    let worker = noop_worker(store.clone(), args.concurrency);
    tokio::time::sleep(Duration::from_millis(300)).await; // started and idle
    let client = Client::new(store.clone());
    let jobs = vec![noop(); args.jobs.min(forklift::MAX_BATCH)];
    // All jobs committed at once: calls of 10,000 inside one transaction.
    match pg {
        Concrete::Pg(pg) => {
            let mut tx = pg.pool().begin().await?;
            insert_all(&client, &mut tx, &jobs, args.jobs).await?;
            tx.commit().await?;
        }
        Concrete::Sqlite(lite) => {
            let mut tx = lite.pool().begin_with("BEGIN IMMEDIATE").await?;
            insert_all(&client, &mut tx, &jobs, args.jobs).await?;
            tx.commit().await?;
        }
    }
    let start = Instant::now();
    drained(&client).await?;
    let rate = args.jobs as f64 / start.elapsed().as_secs_f64();
    out.add(
        format!(
            "throughput burn-down {} (c={})",
            args.jobs, args.concurrency
        ),
        "jobs/s",
        rate,
    );
    worker.shutdown().await;
    Ok(())
}

async fn insert_all(
    client: &Client,
    tx: &mut impl TxConnection,
    jobs: &[NewJob],
    n: usize,
) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(jobs.len());
        client.enqueue_many_in(tx, &jobs[..k]).await?;
        left -= k;
    }
    Ok(())
}

/// A handler that notes when it started, by sequence number.
struct Probe(Arc<Vec<OnceLock<Instant>>>);

#[derive(Deserialize)]
struct ProbeArgs {
    seq: usize,
}

impl Handler for Probe {
    type Payload = ProbeArgs;
    async fn run(&self, args: ProbeArgs, _ctx: JobContext) -> HandlerResult {
        if let Some(slot) = self.0.get(args.seq) {
            let _ = slot.set(Instant::now());
        }
        Ok(Outcome::Success)
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

pub async fn latency(fresh: &Fresh, args: &BenchArgs, out: &mut Results) -> anyhow::Result<()> {
    let store = fresh.store().await?;
    let n = args.latency_jobs;
    let started: Arc<Vec<OnceLock<Instant>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());
    let ran: Arc<Vec<OnceLock<Instant>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());
    let mut registry = Registry::new();
    registry.register("probe", Probe(ran.clone()));
    let worker = bench_worker(store.clone(), registry, 100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = Client::new(store);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let t0 = tokio::time::Instant::now();
    let mut sends = Vec::with_capacity(n);
    for seq in 0..n {
        tokio::time::sleep_until(t0 + interval * seq as u32).await;
        let (client, started) = (client.clone(), started.clone());
        sends.push(tokio::spawn(async move {
            let _ = started[seq].set(Instant::now());
            client
                .enqueue(NewJob::new("probe", serde_json::json!({ "seq": seq })))
                .await
        }));
    }
    for s in sends {
        s.await?.context("enqueue")?;
    }
    drained(&client).await?;
    worker.shutdown().await;
    let mut ms: Vec<f64> = (0..n)
        .filter_map(|i| {
            Some(
                ran[i]
                    .get()?
                    .duration_since(*started[i].get()?)
                    .as_secs_f64()
                    * 1e3,
            )
        })
        .collect();
    if ms.len() < n {
        bail!("only {} of {n} probes ran", ms.len());
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let label = format!("@{}/s (enqueue call -> start)", args.rate);
    out.add(format!("latency p50 {label}"), "ms", percentile(&ms, 0.5));
    out.add(format!("latency p99 {label}"), "ms", percentile(&ms, 0.99));
    out.add(format!("latency max {label}"), "ms", ms[ms.len() - 1]);
    Ok(())
}

pub async fn http(fresh: &Fresh, args: &BenchArgs, out: &mut Results) -> anyhow::Result<()> {
    let store = fresh.store().await?;
    let config = ApiConfig {
        dev: true,
        rate_limit_per_second: 0,
        ..ApiConfig::default()
    };
    let state = AppState::new(Client::new(store), config, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/jobs", listener.local_addr()?);
    // The binary's own serving loop, so that the figure includes its limits.
    let server = tokio::spawn(crate::server::serve(
        listener,
        router(state),
        crate::server::ServerConfig::default(),
        tokio_util::sync::CancellationToken::new(),
    ));
    let until = Instant::now() + Duration::from_secs(args.http_seconds);
    let count = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (url, count) = (url.clone(), count.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()?;
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    let resp = http
                        .post(&url)
                        .json(&serde_json::json!({"type": "noop"}))
                        .send()
                        .await?;
                    if resp.status() != reqwest::StatusCode::ACCEPTED {
                        bail!("POST /jobs answered {}", resp.status());
                    }
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    server.abort();
    all.sort_by(|a, b| a.total_cmp(b));
    out.add(
        "HTTP enqueue, 16 connections",
        "req/s",
        count.load(Ordering::Relaxed) as f64 / secs,
    );
    out.add(
        "HTTP enqueue p99, 16 connections",
        "ms",
        percentile(&all, 0.99),
    );
    Ok(())
}

/// The most memory this process has held (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `forklift serve` as shipped, in this process: the API's router on a loopback port and
/// the worker `serve` starts with no flags (but the per-tenant rate limit when `limited`
/// is false). Returns the API's base URL and the worker.
pub(super) async fn serve_as_shipped(
    store: Arc<dyn forklift::Store>,
    limited: bool,
) -> anyhow::Result<(String, Worker)> {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        worker: crate::cli::WorkerArgs,
    }
    let defaults = <Defaults as clap::Parser>::try_parse_from(["forklift"])?.worker;
    let worker = Worker::start(
        store.clone(),
        crate::commands::serve::registry(&defaults),
        crate::commands::serve::worker_config(&defaults),
    );
    // `--dev`: the README's first command; every other API setting as shipped.
    let mut config = ApiConfig {
        dev: true,
        ..ApiConfig::default()
    };
    if !limited {
        config.rate_limit_per_second = 0;
    }
    let state = AppState::new(Client::new(store), config, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(crate::server::serve(
        listener,
        router(state),
        crate::server::ServerConfig::default(),
        tokio_util::sync::CancellationToken::new(),
    ));
    Ok((base, worker))
}

/// How many jobs `GET /queues` shows in `queue`, by status.
async fn queue_counts(
    http: &reqwest::Client,
    base: &str,
    queue: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    let list: serde_json::Value = http
        .get(format!("{base}/queues"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let found = list["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == queue))
        .map(|q| serde_json::from_value(q["counts"].clone()))
        .transpose()?;
    Ok(found.unwrap_or_default())
}

/// The burn-down end to end, as BENCH.md has it: `POST /jobs/batch` (calls of 1,000) into
/// a paused queue, resume, done when `GET /queues` shows every job finished; once with a
/// dashboard polling `GET /stats` every 100 ms, once without.
pub async fn api(fresh: &Fresh, args: &BenchArgs, out: &mut Results) -> anyhow::Result<()> {
    for polled in [true, false] {
        let store = fresh.store().await?;
        let (base, worker) = serve_as_shipped(store, true).await?;
        let http = reqwest::Client::new();
        http.post(format!("{base}/queues/default/pause"))
            .send()
            .await?
            .error_for_status()?;
        let body = serde_json::json!({ "jobs": vec![serde_json::json!({"type": "noop"}); 1_000] });
        for _ in 0..args.jobs.div_ceil(1_000) {
            http.post(format!("{base}/jobs/batch"))
                .json(&body)
                .send()
                .await?
                .error_for_status()?;
        }
        let total = args.jobs.div_ceil(1_000) * 1_000;
        let stop = tokio_util::sync::CancellationToken::new();
        let poller = polled.then(|| {
            let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(100));
                let mut slowest = Duration::ZERO;
                while !stop.is_cancelled() {
                    every.tick().await;
                    let t = Instant::now();
                    let ok = http
                        .get(format!("{base}/stats"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if !ok {
                        bail!("GET /stats failed during the burn-down");
                    }
                    slowest = slowest.max(t.elapsed());
                }
                anyhow::Ok(slowest)
            })
        });
        let start = Instant::now();
        http.post(format!("{base}/queues/default/resume"))
            .send()
            .await?
            .error_for_status()?;
        let deadline = start + Duration::from_secs(300);
        loop {
            let counts = queue_counts(&http, &base, "default").await?;
            if counts.get("SUCCESS").copied().unwrap_or(0) as usize >= total {
                break;
            }
            if Instant::now() > deadline {
                bail!("jobs still unfinished after 300 s: {counts:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        stop.cancel();
        let label = if polled {
            "GET /stats polled every 100 ms"
        } else {
            "no polling"
        };
        out.add(
            format!("burn-down through the API {total}, serve defaults, {label}"),
            "jobs/s",
            rate,
        );
        if let Some(p) = poller {
            let slowest = p.await??;
            out.add(
                "GET /stats during the burn-down, slowest",
                "ms",
                slowest.as_secs_f64() * 1e3,
            );
        }
        worker.shutdown().await;
    }
    Ok(())
}

/// Jobs no process can run, ahead of the runnable ones: `--backlog` queued jobs of a type
/// no worker handles and as many of a tenant whose queue is paused, all at priority 0
/// (first in every order the fetch knows). The burn-down of `--jobs` runnable jobs
/// behind them, beside the same burn-down without them, in one run.
pub async fn backlog(fresh: &Fresh, args: &BenchArgs, out: &mut Results) -> anyhow::Result<()> {
    for with_backlog in [false, true] {
        let (store, _) = fresh.stores().await?;
        let client = Client::new(store.clone());
        if with_backlog {
            // Other tenants', so that the runnable tenant's counts show when it is done.
            let other = client.for_tenant(forklift::TenantId(uuid::Uuid::new_v4()));
            let paused = client.for_tenant(forklift::TenantId(uuid::Uuid::new_v4()));
            paused.pause_queue("default").await?;
            let unhandled = vec![
                NewJob::new("nobody_runs_this", serde_json::json!({})).priority(0);
                forklift::MAX_BATCH
            ];
            let blocked = vec![noop().priority(0); forklift::MAX_BATCH];
            for _ in 0..args.backlog.div_ceil(forklift::MAX_BATCH) {
                other.enqueue_many(&unhandled).await?;
                paused.enqueue_many(&blocked).await?;
            }
        }
        let worker = noop_worker(store.clone(), args.concurrency);
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.pause_queue("default").await?;
        let n = enqueue_in_calls_of_1000(&client, args.jobs).await?.0;
        let rate = resume_and_drain(&client, n).await?;
        let label = if with_backlog {
            format!(
                "behind {} unhandled + {} paused-tenant jobs",
                args.backlog, args.backlog
            )
        } else {
            "no backlog".to_string()
        };
        out.add(format!("burn-down {n}, {label}"), "jobs/s", rate);
        worker.shutdown().await;
    }
    Ok(())
}
