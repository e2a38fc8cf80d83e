//! The worker processes: one slot each, with its own proxy to the database, started,
//! killed, stopped and started again as the schedule says.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::node::WorkerArgs;
use crate::plan::Config;
use crate::proxy::Proxy;

/// One worker slot.
struct Slot {
    proxy: Proxy,
    child: Option<Child>,
    /// Bumped at each start, so each process has its own lease owner name.
    generation: u32,
    name: String,
}

/// Every worker slot of the run.
pub struct Fleet {
    slots: Vec<Mutex<Slot>>,
    exe: PathBuf,
    logs: PathBuf,
    template: WorkerArgs,
}

/// How a SIGTERM ended.
#[derive(Debug, Clone)]
pub struct Stopped {
    pub name: String,
    /// `None` when it did not exit in time (it was then killed).
    pub exit_code: Option<i32>,
    pub took: Duration,
}

impl Fleet {
    /// Starts a proxy per slot to PostgreSQL at `pg` (the workers are started by [`Fleet::start`]).
    pub async fn new(config: &Config, pg: SocketAddr, logs: PathBuf) -> anyhow::Result<Fleet> {
        let mut slots = Vec::new();
        for _ in 0..config.workers {
            slots.push(Mutex::new(Slot {
                proxy: Proxy::start(pg).await.context("start proxy")?,
                child: None,
                generation: 0,
                name: String::new(),
            }));
        }
        let t = &config.timing;
        let template = WorkerArgs {
            database_url: String::new(),
            name: String::new(),
            concurrency: config.concurrency,
            lease_ms: t.lease.as_millis() as u64,
            heartbeat_ms: t.heartbeat.as_millis() as u64,
            rescue_ms: t.rescue.as_millis() as u64,
            leader_ttl_ms: t.leader_ttl.as_millis() as u64,
            poll_ms: t.poll.as_millis() as u64,
            grace_ms: t.grace.as_millis() as u64,
        };
        Ok(Fleet {
            slots,
            exe: config.exe.clone(),
            logs,
            template,
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Starts a new process in the slot (a no-op if one runs); returns its name.
    pub async fn start(&self, i: usize) -> anyhow::Result<String> {
        let mut slot = self.slots[i].lock().await;
        if slot.child.is_some() {
            return Ok(slot.name.clone());
        }
        slot.generation += 1;
        slot.name = format!("w{i}g{}", slot.generation);
        let args = WorkerArgs {
            database_url: format!("postgres://postgres@{}/postgres", slot.proxy.addr),
            name: slot.name.clone(),
            ..self.template.clone()
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("w{i}.log")))?;
        let mut cmd = Command::new(&self.exe);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the worker
        // if the harness dies, so that a crashed run leaves no workers behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .args(args.to_args())
            .env("RUST_LOG", "warn,forklift=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {:?} worker", self.exe))?;
        slot.child = Some(child);
        Ok(slot.name.clone())
    }

    /// The name of the process running in the slot, if one runs.
    pub async fn running_name(&self, i: usize) -> Option<String> {
        let slot = self.slots[i].lock().await;
        slot.child.as_ref().map(|_| slot.name.clone())
    }

    /// A slot with a running process, starting the search at `i`.
    pub async fn live_slot(&self, i: usize) -> Option<usize> {
        for k in 0..self.len() {
            let j = (i + k) % self.len();
            if self.running_name(j).await.is_some() {
                return Some(j);
            }
        }
        None
    }

    /// SIGKILL, then reaps the process; returns its name.
    pub async fn kill(&self, i: usize) -> Option<String> {
        let mut slot = self.slots[i].lock().await;
        let mut child = slot.child.take()?;
        let _ = child.start_kill();
        let _ = child.wait().await;
        Some(slot.name.clone())
    }

    /// SIGTERM, then waits up to `limit` for the exit (then kills it).
    pub async fn term(&self, i: usize, limit: Duration) -> Option<Stopped> {
        let mut slot = self.slots[i].lock().await;
        let mut child = slot.child.take()?;
        let began = Instant::now();
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let exit_code = match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) => Some(status.code().unwrap_or(-1)),
            _ => {
                let _ = child.kill().await;
                None
            }
        };
        Some(Stopped {
            name: slot.name.clone(),
            exit_code,
            took: began.elapsed(),
        })
    }

    /// Stops or resumes forwarding the slot's database traffic.
    pub async fn set_blackholed(&self, i: usize, on: bool) {
        self.slots[i].lock().await.proxy.set_blackholed(on);
    }

    /// Restarts any slot whose process exited by itself (it should not happen; logged).
    pub async fn revive_exited(&self) -> Vec<String> {
        let mut revived = Vec::new();
        for i in 0..self.len() {
            let exited = {
                let mut slot = self.slots[i].lock().await;
                match slot.child.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(Some(status))) => {
                        tracing::error!(worker = %slot.name, %status, "worker exited by itself");
                        slot.child = None;
                        true
                    }
                    _ => false,
                }
            };
            if exited && let Ok(name) = self.start(i).await {
                revived.push(name);
            }
        }
        revived
    }
}
