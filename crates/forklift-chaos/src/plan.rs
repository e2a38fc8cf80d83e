//! What a run does: its settings, and the fault schedule drawn from the seed.

use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Lease and maintenance timings given to every worker. Short, so faults resolve in
/// seconds rather than the production defaults' half minute.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub lease: Duration,
    pub heartbeat: Duration,
    pub rescue: Duration,
    /// At most three quarters of the lease: when the leader itself is killed, a new one is
    /// elected (within 4/3 of this) before the orphans' leases lapse, so the rescue is
    /// not delayed by the election.
    pub leader_ttl: Duration,
    pub poll: Duration,
    pub grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease: Duration::from_secs(3),
            heartbeat: Duration::from_secs(1),
            rescue: Duration::from_secs(1),
            leader_ttl: Duration::from_secs(2),
            poll: Duration::from_millis(500),
            grace: Duration::from_secs(5),
        }
    }
}

/// A chaos run's settings.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Seeds the fault schedule, the targets and the load; print it, pass it back to replay.
    pub seed: u64,
    /// How long load and faults go on; then the run drains and checks.
    pub duration: Duration,
    /// Worker processes.
    pub workers: usize,
    /// Jobs each worker runs at once.
    pub concurrency: usize,
    /// Jobs enqueued per second, on average.
    pub rate: f64,
    /// The share of enqueues sent through the HTTP API rather than the library.
    pub api_share: f64,
    /// Short mode: a fixed mix with every kind of fault at least once, spread evenly.
    pub short: bool,
    /// How long, at most, the drain waits for every job to be final.
    pub drain: Duration,
    pub timing: Timing,
    /// The `forklift-chaos` executable, started with `worker` and `api`.
    pub exe: PathBuf,
    /// Where the cluster and the logs go; a new folder under it per run.
    pub work_dir: PathBuf,
}

impl Config {
    /// The settings of the short mode that `cargo test` runs (under ~2 minutes).
    pub fn short(seed: u64, exe: PathBuf) -> Config {
        Config {
            seed,
            duration: Duration::from_secs(60),
            workers: 4,
            concurrency: 8,
            rate: 20.0,
            api_share: 0.2,
            short: true,
            drain: Duration::from_secs(60),
            timing: Timing::default(),
            exe,
            work_dir: std::env::temp_dir(),
        }
    }

    /// A fault's worst effect on executions: how many may run again because of it.
    pub fn slots(&self) -> usize {
        self.workers * self.concurrency
    }
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FaultKind {
    /// SIGKILL a worker; restart it after a short pause.
    Kill,
    /// SIGTERM a worker under load: it must exit 0 and leave nothing RUNNING of its own.
    Term,
    /// Stop forwarding a worker's database traffic, without closing, for longer than the lease.
    Blackhole,
    /// `pg_ctl restart -m fast`.
    RestartFast,
    /// `pg_ctl restart -m immediate`: a crash of the server, then recovery.
    RestartImmediate,
    /// The database stopped for several seconds: the API must answer 503 quickly.
    Outage,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Term => "term",
            FaultKind::Blackhole => "blackhole",
            FaultKind::RestartFast => "pg_restart_fast",
            FaultKind::RestartImmediate => "pg_restart_immediate",
            FaultKind::Outage => "pg_outage",
        }
    }

    /// Whether it hits the database (every worker) rather than one worker.
    pub fn is_db(self) -> bool {
        matches!(
            self,
            FaultKind::RestartFast | FaultKind::RestartImmediate | FaultKind::Outage
        )
    }
}

/// A fault planned for a moment of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    /// From the start of the load.
    pub at: Duration,
    pub kind: FaultKind,
    /// The worker slot, for worker faults (the harness picks a live one if it is down).
    pub slot: usize,
    /// How long the fault lasts (blackhole, outage) or the restart pause (kill, term).
    pub hold: Duration,
}

/// The schedule: in short mode every kind at least once (three kills), shuffled into even
/// slots; otherwise faults every 4–12 s, kinds drawn by weight. Faults never overlap: the
/// harness runs them one after another.
pub fn schedule(config: &Config, rng: &mut StdRng) -> Vec<Planned> {
    let lease = config.timing.lease;
    let draw = |kind: FaultKind, at: Duration, rng: &mut StdRng| {
        let hold = match kind {
            FaultKind::Blackhole => lease * 2 + Duration::from_millis(rng.random_range(0..1000)),
            FaultKind::Outage => Duration::from_millis(rng.random_range(4000..6000)),
            _ => Duration::from_millis(rng.random_range(500..2500)),
        };
        Planned {
            at,
            kind,
            slot: rng.random_range(0..config.workers),
            hold,
        }
    };
    let end = config.duration.saturating_sub(Duration::from_secs(8));
    let start = Duration::from_secs(4);
    if config.short {
        use FaultKind::*;
        let mut kinds = vec![
            Kill,
            Kill,
            Kill,
            Term,
            Blackhole,
            RestartFast,
            RestartImmediate,
            Outage,
        ];
        kinds.shuffle(rng);
        let slot = (end.saturating_sub(start)) / kinds.len() as u32;
        let jitter = (slot.as_millis() as u64 / 4).max(1);
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                let at =
                    start + slot * i as u32 + Duration::from_millis(rng.random_range(0..jitter));
                draw(kind, at, rng)
            })
            .collect()
    } else {
        let weighted = [
            (FaultKind::Kill, 40),
            (FaultKind::Term, 15),
            (FaultKind::Blackhole, 15),
            (FaultKind::RestartFast, 10),
            (FaultKind::RestartImmediate, 10),
            (FaultKind::Outage, 10),
        ];
        let total: u32 = weighted.iter().map(|(_, w)| w).sum();
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let mut pick = rng.random_range(0..total);
            let kind = weighted
                .iter()
                .find(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map(|(k, _)| *k)
                .unwrap_or(FaultKind::Kill);
            out.push(draw(kind, at, rng));
            at += Duration::from_millis(rng.random_range(4000..12000));
        }
        out
    }
}

/// A generator for everything random in the run, from the seed.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}
