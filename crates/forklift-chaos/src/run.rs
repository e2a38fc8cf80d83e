//! One chaos run from start to end: cluster, API, workers, load and faults; then drain,
//! a graceful stop of every worker, and the check.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use forklift::{Client, PgStore, Store};
use serde::Serialize;
use sqlx::PgPool;
use tokio::process::Command;
use tokio::sync::{Mutex, Semaphore};
use uuid::Uuid;

use crate::check;
use crate::cluster::{self, Cluster};
use crate::fleet::Fleet;
use crate::load::{Load, LoadLog};
use crate::plan::{self, Config, FaultKind, Planned};
use crate::report::Report;

/// What happened at one fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub seq: usize,
    pub kind: FaultKind,
    /// The worker hit (its lease owner name), for worker faults.
    pub worker: Option<String>,
    pub at: DateTime<Utc>,
    /// When it ended: the link restored, the database back, the SIGTERMed worker exited.
    pub until: DateTime<Utc>,
    /// Jobs `RUNNING` under the worker right after a kill or a blackhole began: orphans.
    pub held: Vec<Uuid>,
    /// For a SIGTERM: the exit code (`None`: it did not exit in time) and what it left RUNNING.
    pub exit_code: Option<i32>,
    pub left_running: Option<i64>,
    /// For an outage: the API's answers while the database was down.
    pub probes: Vec<Probe>,
}

/// One API request during an outage.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub path: &'static str,
    pub status: Option<u16>,
    pub latency: Duration,
}

/// What the harness saw, for the checker.
pub struct Observed {
    pub faults: Vec<FaultRecord>,
    /// The final SIGTERM of every worker after the drain.
    pub final_stops: Vec<FaultRecord>,
    pub load: Arc<LoadLog>,
    pub drained_in: Option<Duration>,
}

/// Runs the whole thing and returns the checker's report. The cluster and the processes
/// are gone when this returns; the logs stay in the returned folder if the goals failed.
pub async fn run(config: Config) -> anyhow::Result<(Report, PathBuf)> {
    cluster::remove_stale(&config.work_dir);
    let dir = config.work_dir.join(format!(
        "forklift-chaos-{}-{}",
        std::process::id(),
        Utc::now().timestamp_millis()
    ));
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut rng = plan::rng(config.seed);
    let schedule = plan::schedule(&config, &mut rng);
    println!(
        "forklift-chaos: seed {} ({}), {} s, {} workers x {}, {} faults planned; logs in {}",
        config.seed,
        if config.short { "short" } else { "long" },
        config.duration.as_secs(),
        config.workers,
        config.concurrency,
        schedule.len(),
        logs.display()
    );
    let d = dir.clone();
    let cluster = Arc::new(tokio::task::spawn_blocking(move || Cluster::start(&d)).await??);
    let report = drive(&config, cluster.clone(), &logs, schedule).await;
    // Stop and remove the cluster whatever happened (the folder keeps the logs).
    drop(tokio::task::spawn_blocking(move || drop(cluster)).await);
    let report = report?;
    if report.violations(&config).is_empty() && !keep() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok((report, logs))
}

async fn drive(
    config: &Config,
    cluster: Arc<Cluster>,
    logs: &Path,
    schedule: Vec<Planned>,
) -> anyhow::Result<Report> {
    let url = cluster.url();
    cluster::wait_ready(&url, Duration::from_secs(30)).await?;
    let store = PgStore::connect(url.parse()?, 16).await?;
    store.migrate().await?;
    let pool = store.pool().clone();
    sqlx::raw_sql(crate::ledger::SCHEMA).execute(&pool).await?;

    let api_port = cluster::free_port()?;
    let api_addr = format!("127.0.0.1:{api_port}");
    let api_log = std::fs::File::create(logs.join("api.log"))?;
    let mut api = Command::new(&config.exe);
    // SAFETY: as for the workers (see `Fleet::start`): only prctl between fork and exec.
    unsafe {
        api.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut api = api
        .args(["api", "--listen", &api_addr, "--database-url", &url])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(api_log.try_clone()?)
        .stderr(api_log)
        .kill_on_drop(true)
        .spawn()
        .context("start the API process")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let api_url = format!("http://{api_addr}");
    wait_http(&http, &format!("{api_url}/health")).await?;

    let pg: SocketAddr = format!("127.0.0.1:{}", cluster.port).parse()?;
    let fleet = Arc::new(Fleet::new(config, pg, logs.to_path_buf()).await?);
    for i in 0..fleet.len() {
        fleet.start(i).await?;
    }
    let store: Arc<dyn Store> = Arc::new(store);
    let load = Arc::new(Load {
        client: Client::new(store),
        http,
        api: api_url,
        log: Arc::new(LoadLog::default()),
        in_flight: Arc::new(Semaphore::new(64)),
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let load_rng = plan::rng(config.seed.wrapping_add(1));
    let load_task = {
        let (load, until) = (load.clone(), started + config.duration);
        let (rate, share) = (config.rate, config.api_share);
        tokio::spawn(async move { load.run(rate, share, until, load_rng).await })
    };
    let faults = Faults {
        config: config.clone(),
        cluster,
        fleet: fleet.clone(),
        pool: pool.clone(),
        load: load.clone(),
        restarts: Mutex::new(tokio::task::JoinSet::new()),
    };
    let mut records = Vec::new();
    for (seq, p) in schedule.into_iter().enumerate() {
        tokio::time::sleep_until((started + p.at).into()).await;
        if let Some(r) = faults.inject(seq, &p).await {
            println!(
                "  fault {seq:>3} at {:>6.1} s: {:<22} {}",
                started.elapsed().as_secs_f64(),
                r.kind.name(),
                r.worker.as_deref().unwrap_or("")
            );
            records.push(r);
        }
    }
    load_task.await?;
    let mut restarts = std::mem::take(&mut *faults.restarts.lock().await);
    while restarts.join_next().await.is_some() {}
    fleet.revive_exited().await;

    let drain_began = Instant::now();
    let drained_in = loop {
        let open: i64 = sqlx::query_scalar(
            "select count(*) from forklift_jobs where status in ('QUEUED', 'RUNNING')",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(-1);
        if open == 0 {
            break Some(drain_began.elapsed());
        }
        if drain_began.elapsed() > config.drain {
            break None;
        }
        fleet.revive_exited().await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut final_stops = Vec::new();
    for i in 0..fleet.len() {
        let at = Utc::now();
        if let Some(r) = faults.stop_gracefully(10_000 + i, i, at).await {
            final_stops.push(r);
        }
    }
    if let Some(pid) = api.id() {
        // SAFETY: kill(2) on the API process we spawned and have not reaped.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), api.wait()).await;

    let observed = Observed {
        faults: records,
        final_stops,
        load: load.log.clone(),
        drained_in,
    };
    persist(&pool, &observed).await?;
    let report = check::check(&pool, config, &observed).await?;
    if keep() || !report.violations(config).is_empty() {
        dump(&pool, logs).await;
    }
    Ok(report)
}

/// `FORKLIFT_CHAOS_KEEP=1` keeps the logs and the tables (as CSV) of a run that met its goals.
fn keep() -> bool {
    std::env::var("FORKLIFT_CHAOS_KEEP").is_ok_and(|v| v == "1")
}

/// Copies the tables a person needs to see why a goal was missed into CSV files next to
/// the logs (the cluster itself is removed).
async fn dump(pool: &PgPool, logs: &Path) {
    let tables = [
        (
            "jobs",
            "select id, status, attempt, max_attempts, cancel_requested, lease_owner, payload, errors, created_at, started_at, completed_at from forklift_jobs",
        ),
        ("ledger", "select * from chaos_ledger order by started_at"),
        ("transitions", "select * from chaos_transitions order by at"),
        ("accepted", "select * from chaos_accepted order by n"),
        ("faults", "select * from chaos_faults order by seq"),
    ];
    for (name, query) in tables {
        let copy = format!("copy ({query}) to stdout with csv header");
        let Ok(mut conn) = pool.acquire().await else {
            return;
        };
        let Ok(mut stream) = conn.copy_out_raw(&copy).await else {
            continue;
        };
        let mut bytes = Vec::new();
        while let Some(Ok(chunk)) = futures::StreamExt::next(&mut stream).await {
            bytes.extend_from_slice(&chunk);
        }
        let _ = std::fs::write(logs.join(format!("{name}.csv")), bytes);
    }
}

/// Injects faults, one at a time.
struct Faults {
    config: Config,
    cluster: Arc<Cluster>,
    fleet: Arc<Fleet>,
    pool: PgPool,
    load: Arc<Load>,
    restarts: Mutex<tokio::task::JoinSet<()>>,
}

impl Faults {
    async fn inject(&self, seq: usize, p: &Planned) -> Option<FaultRecord> {
        let at = Utc::now();
        let mut record = FaultRecord {
            seq,
            kind: p.kind,
            worker: None,
            at,
            until: at,
            held: Vec::new(),
            exit_code: None,
            left_running: None,
            probes: Vec::new(),
        };
        match p.kind {
            FaultKind::Kill => {
                let i = self.fleet.live_slot(p.slot).await?;
                record.at = Utc::now();
                record.worker = self.fleet.kill(i).await;
                record.until = Utc::now();
                record.held = self.running_of(record.worker.as_deref()?).await;
                self.restart_later(i, p.hold).await;
            }
            FaultKind::Term => {
                let i = self.fleet.live_slot(p.slot).await?;
                let r = self.stop_gracefully(seq, i, at).await?;
                self.restart_later(i, p.hold).await;
                record = r;
            }
            FaultKind::Blackhole => {
                let i = self.fleet.live_slot(p.slot).await?;
                record.worker = self.fleet.running_name(i).await;
                record.at = Utc::now();
                self.fleet.set_blackholed(i, true).await;
                record.held = self.running_of(record.worker.as_deref()?).await;
                tokio::time::sleep(p.hold).await;
                self.fleet.set_blackholed(i, false).await;
                record.until = Utc::now();
            }
            FaultKind::RestartFast | FaultKind::RestartImmediate => {
                let mode = if p.kind == FaultKind::RestartFast {
                    "fast"
                } else {
                    "immediate"
                };
                let c = self.cluster.clone();
                let done = tokio::task::spawn_blocking(move || c.restart(mode)).await;
                if !matches!(done, Ok(Ok(()))) {
                    tracing::error!(?done, "pg_ctl restart failed");
                }
                record.until = Utc::now();
            }
            FaultKind::Outage => {
                let c = self.cluster.clone();
                let _ = tokio::task::spawn_blocking(move || c.stop("fast")).await;
                record.at = Utc::now();
                let began = Instant::now();
                while began.elapsed() < p.hold {
                    record.probes.push(self.probe_enqueue().await);
                    record.probes.push(self.probe_ready().await);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let c = self.cluster.clone();
                let done = tokio::task::spawn_blocking(move || c.start_again()).await;
                if !matches!(done, Ok(Ok(()))) {
                    tracing::error!(?done, "pg_ctl start failed");
                }
                record.until = Utc::now();
            }
        }
        Some(record)
    }

    async fn probe_enqueue(&self) -> Probe {
        let began = Instant::now();
        let job = self.load.probe_payload();
        self.load.enqueue_api(&job).await;
        let log = self.load.log.enqueued.lock().await;
        let status = log
            .iter()
            .rev()
            .find(|e| e.n == job.n)
            .and_then(|e| e.status);
        Probe {
            path: "POST /jobs",
            status,
            latency: began.elapsed(),
        }
    }

    async fn probe_ready(&self) -> Probe {
        let began = Instant::now();
        let answer = self
            .load
            .http
            .get(format!("{}/ready", self.load.api))
            .send()
            .await;
        Probe {
            path: "GET /ready",
            status: answer.ok().map(|r| r.status().as_u16()),
            latency: began.elapsed(),
        }
    }

    /// SIGTERM, wait for the exit, and count what the worker left RUNNING.
    async fn stop_gracefully(
        &self,
        seq: usize,
        i: usize,
        at: DateTime<Utc>,
    ) -> Option<FaultRecord> {
        let limit = self.config.timing.grace + Duration::from_secs(15);
        let stopped = self.fleet.term(i, limit).await?;
        let left: i64 = sqlx::query_scalar(
            "select count(*) from forklift_jobs where status = 'RUNNING' and lease_owner = $1",
        )
        .bind(&stopped.name)
        .fetch_one(&self.pool)
        .await
        .unwrap_or(-1);
        Some(FaultRecord {
            seq,
            kind: FaultKind::Term,
            worker: Some(stopped.name),
            at,
            until: Utc::now(),
            held: Vec::new(),
            exit_code: stopped.exit_code,
            left_running: Some(left),
            probes: Vec::new(),
        })
    }

    async fn restart_later(&self, i: usize, pause: Duration) {
        let fleet = self.fleet.clone();
        self.restarts.lock().await.spawn(async move {
            tokio::time::sleep(pause).await;
            if let Err(e) = fleet.start(i).await {
                tracing::error!(error = %e, "could not restart worker {i}");
            }
        });
    }

    /// The jobs the database shows `RUNNING` under this worker.
    async fn running_of(&self, worker: &str) -> Vec<Uuid> {
        for _ in 0..20 {
            let held = sqlx::query_scalar(
                "select id from forklift_jobs where status = 'RUNNING' and lease_owner = $1",
            )
            .bind(worker)
            .fetch_all(&self.pool)
            .await;
            if let Ok(held) = held {
                return held;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Vec::new()
    }
}

async fn wait_http(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{url} did not answer within 30 s")
}

/// Writes what the harness saw into `chaos_accepted` and `chaos_faults`, for a person to
/// query after a run (the checker works from memory).
async fn persist(pool: &PgPool, o: &Observed) -> anyhow::Result<()> {
    let enqueued = o.load.enqueued.lock().await;
    let n: Vec<i64> = enqueued.iter().map(|e| e.n).collect();
    let id: Vec<Option<Uuid>> = enqueued.iter().map(|e| e.job_id).collect();
    let via: Vec<String> = enqueued
        .iter()
        .map(|e| format!("{:?}", e.via).to_lowercase())
        .collect();
    let outcome: Vec<&str> = enqueued
        .iter()
        .map(|e| {
            if e.job_id.is_some() {
                "accepted"
            } else {
                "failed"
            }
        })
        .collect();
    let sent: Vec<DateTime<Utc>> = enqueued.iter().map(|e| e.sent_at).collect();
    sqlx::query(
        "insert into chaos_accepted (n, job_id, via, outcome, sent_at)
         select * from unnest($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[])
         on conflict (n) do nothing",
    )
    .bind(&n)
    .bind(&id)
    .bind(&via)
    .bind(&outcome)
    .bind(&sent)
    .execute(pool)
    .await?;
    for f in o.faults.iter().chain(&o.final_stops) {
        sqlx::query(
            "insert into chaos_faults (seq, kind, worker, at, until_at) values ($1, $2, $3, $4, $5)
             on conflict do nothing",
        )
        .bind(f.seq as i32)
        .bind(f.kind.name())
        .bind(&f.worker)
        .bind(f.at)
        .bind(f.until)
        .execute(pool)
        .await?;
    }
    Ok(())
}
