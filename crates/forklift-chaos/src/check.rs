//! The checker: reads the jobs table, the ledger and the transition audit after the drain,
//! sets them against what the load generator was answered and what the faults did, and
//! reports every guarantee's figures. [`Report::violations`] lists the goals missed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::plan::{Config, FaultKind};
use crate::run::{FaultRecord, Observed};

/// Slack on top of lease + sweep for an orphan to run again: the rescue back-off (≤ 0.1 s),
/// the wake-up and fetch (≤ 0.2 s normally, one poll of 0.5 s if the NOTIFY is missed),
/// the new execution's ledger write, and scheduling on a 2-core machine that also builds.
pub const RECOVERY_TOLERANCE: Duration = Duration::from_millis(1500);
/// How much later than the lease a cut-off worker may still be working: one step of the
/// ledger job (≤ 0.3 s) plus scheduling.
pub const CUTOFF_TOLERANCE: Duration = Duration::from_millis(750);
/// A database answer the API must give within this while the database is down.
pub const OUTAGE_ANSWER_LIMIT: Duration = Duration::from_secs(2);
/// Work must start again within this after the database is back.
pub const RESUME_LIMIT: Duration = Duration::from_secs(10);

const FINAL: [&str; 4] = ["SUCCESS", "FAILED", "PARTIAL_SUCCESS", "CANCELLED"];

/// The checker's figures.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub faults: BTreeMap<&'static str, usize>,
    pub enqueues: usize,
    pub accepted: usize,
    pub enqueue_errors: usize,
    /// Jobs whose enqueue reported an error but which exist (the commit happened, the
    /// answer was lost): allowed, and counted.
    pub created_despite_error: usize,
    pub final_states: BTreeMap<String, usize>,
    pub executions: usize,
    pub drained_secs: Option<f64>,
    /// Accepted, and not in the table.
    pub lost: Vec<Uuid>,
    /// In the table, not final after the drain.
    pub stuck: Vec<Uuid>,
    /// In the table, never enqueued (or enqueued once and present twice).
    pub unexpected: Vec<Uuid>,
    /// More than one transition into a final status, or a transition out of one.
    pub double_final: Vec<Uuid>,
    /// Attempt and errors that do not add up, or no completed execution with the final attempt.
    pub inconsistent: Vec<String>,
    /// Jobs whose handler completed more than once.
    pub completed_twice: usize,
    pub completed_twice_unexplained: Vec<Uuid>,
    /// Executions beyond the first that were not planned retries.
    pub duplicates: usize,
    pub duplicates_unexplained: Vec<Uuid>,
    /// Σ over faults of the executions each could have interrupted.
    pub duplicate_bound: usize,
    /// The most duplicates one fault explains.
    pub duplicates_most_by_one_fault: usize,
    pub orphans: usize,
    pub orphan_recovery_p50: Option<f64>,
    pub orphan_recovery_max: Option<f64>,
    pub orphan_bound_secs: f64,
    pub orphans_over_bound: Vec<(Uuid, f64)>,
    pub orphans_unrecovered: Vec<Uuid>,
    /// Orphans finished by the dead worker's last write, already on its way.
    pub orphans_finished_by_last_write: usize,
    /// Orphans whose recovery a database fault overlapped (not held to the bound).
    pub orphans_delayed_by_db: usize,
    pub cutoffs: Vec<Cutoff>,
    pub stops: Vec<Stop>,
    pub outages: Vec<DbFault>,
}

/// A blackholed worker.
#[derive(Debug, Serialize)]
pub struct Cutoff {
    pub worker: String,
    pub held: usize,
    /// Executions started after the cut began (the worker must not fetch while cut off).
    pub started_while_cut: usize,
    /// The latest an execution running at the cut ended, from the cut.
    pub last_stop_secs: Option<f64>,
    /// Executions that went on longer than the lease (+ tolerance) after the cut.
    pub late: usize,
    /// Executions whose end the ledger never got.
    pub unknown_end: usize,
}

/// A SIGTERM.
#[derive(Debug, Serialize)]
pub struct Stop {
    pub worker: String,
    pub exit_code: Option<i32>,
    pub secs: f64,
    pub left_running: Option<i64>,
}

/// A restart or outage of the database.
#[derive(Debug, Serialize)]
pub struct DbFault {
    pub kind: &'static str,
    pub down_secs: f64,
    /// For outages: the API's answers meanwhile, `(path, status, seconds)`.
    pub api_answers: Vec<(String, Option<u16>, f64)>,
    /// From the database's return to the next execution's start.
    pub resumed_after_secs: Option<f64>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    status: String,
    attempt: i32,
    max_attempts: i32,
    n: Option<i64>,
    error_attempts: Vec<i32>,
}

#[derive(sqlx::FromRow, Clone)]
struct Exec {
    job_id: Uuid,
    attempt: i32,
    worker: String,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    outcome: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Transition {
    job_id: Uuid,
    old_status: String,
    new_status: String,
    old_owner: Option<String>,
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// Reads the database and computes the report.
pub async fn check(pool: &PgPool, config: &Config, o: &Observed) -> anyhow::Result<Report> {
    let jobs: Vec<JobRow> = sqlx::query_as(
        "select id, status, attempt, max_attempts, (payload->>'n')::int8 as n,
                coalesce((select array_agg((e->>'attempt')::int4) from jsonb_array_elements(errors) e), '{}') as error_attempts
         from forklift_jobs",
    )
    .fetch_all(pool)
    .await?;
    let execs: Vec<Exec> = sqlx::query_as(
        "select job_id, attempt, worker, started_at, ended_at, outcome from chaos_ledger order by started_at",
    )
    .fetch_all(pool)
    .await?;
    let transitions: Vec<Transition> = sqlx::query_as(
        "select job_id, old_status, new_status, old_owner from chaos_transitions order by at",
    )
    .fetch_all(pool)
    .await?;
    let enqueued = o.load.enqueued.lock().await.clone();
    let cancel_asked = o.load.cancel_asked.lock().await.clone();

    let mut r = Report {
        seed: config.seed,
        enqueues: enqueued.len(),
        executions: execs.len(),
        drained_secs: o.drained_in.map(|d| d.as_secs_f64()),
        ..Report::default()
    };
    for f in &o.faults {
        *r.faults.entry(f.kind.name()).or_default() += 1;
    }

    // Accepted, lost, unexpected.
    let by_n: HashMap<i64, Option<Uuid>> = enqueued.iter().map(|e| (e.n, e.job_id)).collect();
    let accepted: HashSet<Uuid> = enqueued.iter().filter_map(|e| e.job_id).collect();
    r.accepted = accepted.len();
    r.enqueue_errors = enqueued.iter().filter(|e| e.job_id.is_none()).count();
    let in_table: HashSet<Uuid> = jobs.iter().map(|j| j.id).collect();
    r.lost = accepted.difference(&in_table).copied().collect();
    let mut seen_n = HashSet::new();
    for j in &jobs {
        let fresh = j.n.is_some_and(|n| seen_n.insert(n));
        match j.n.and_then(|n| by_n.get(&n)) {
            Some(Some(id)) if fresh && *id == j.id => {}
            Some(None) if fresh => r.created_despite_error += 1,
            _ => r.unexpected.push(j.id),
        }
        if FINAL.contains(&j.status.as_str()) {
            *r.final_states.entry(j.status.clone()).or_default() += 1;
        } else {
            r.stuck.push(j.id);
        }
    }

    // Final states, from the audit: one transition into a final status, none out of one.
    let mut finals: HashMap<Uuid, usize> = HashMap::new();
    let mut last_owner: HashMap<Uuid, Option<String>> = HashMap::new();
    for t in &transitions {
        if FINAL.contains(&t.old_status.as_str()) {
            r.double_final.push(t.job_id);
        }
        if FINAL.contains(&t.new_status.as_str()) {
            *finals.entry(t.job_id).or_default() += 1;
            last_owner.insert(t.job_id, t.old_owner.clone());
        }
    }
    r.double_final
        .extend(finals.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id));
    r.double_final.sort();
    r.double_final.dedup();

    // Executions per job, in order.
    let mut per_job: HashMap<Uuid, Vec<Exec>> = HashMap::new();
    for e in &execs {
        per_job.entry(e.job_id).or_default().push(e.clone());
    }

    // Attempt and errors consistency.
    for j in &jobs {
        let runs = per_job.get(&j.id).map(Vec::as_slice).unwrap_or(&[]);
        let mut errs = j.error_attempts.clone();
        errs.sort();
        let distinct = errs.windows(2).all(|w| w[0] != w[1]);
        match j.status.as_str() {
            "SUCCESS" => {
                if errs.len() as i32 != j.attempt - 1 || !distinct {
                    r.inconsistent.push(format!(
                        "{}: SUCCESS at attempt {} with errors of attempts {errs:?}",
                        j.id, j.attempt
                    ));
                }
                let completed = |e: &&Exec| e.outcome.as_deref() == Some("completed");
                if !runs
                    .iter()
                    .filter(completed)
                    .any(|e| e.attempt == j.attempt)
                {
                    r.inconsistent.push(format!(
                        "{}: SUCCESS at attempt {}, but no execution of that attempt completed",
                        j.id, j.attempt
                    ));
                }
            }
            "FAILED" if errs.len() as i32 != j.attempt || j.attempt < j.max_attempts => {
                r.inconsistent.push(format!(
                    "{}: FAILED at attempt {} of {} with errors of attempts {errs:?}",
                    j.id, j.attempt, j.max_attempts
                ));
            }
            "CANCELLED" if !cancel_asked.contains(&j.id) => {
                r.inconsistent
                    .push(format!("{}: CANCELLED, but no cancel was asked", j.id));
            }
            _ => {}
        }
    }

    // Duplicates, and whether a fault explains each.
    let lease = chrono::TimeDelta::from_std(config.timing.lease)?;
    let half = chrono::TimeDelta::milliseconds(500);
    let explains = |f: &FaultRecord, worker: &str, from: DateTime<Utc>, to: DateTime<Utc>| {
        if f.kind.is_db() {
            f.at <= to && f.until + lease + half >= from
        } else {
            f.worker.as_deref() == Some(worker) && f.at <= to && f.until >= from - half
        }
    };
    let mut per_fault: HashMap<usize, usize> = HashMap::new();
    for (job, runs) in &per_job {
        for pair in runs.windows(2) {
            let (e, next) = (&pair[0], &pair[1]);
            if e.outcome.as_deref() == Some("failed_on_purpose") {
                continue;
            }
            r.duplicates += 1;
            let why = o
                .faults
                .iter()
                .find(|f| explains(f, &e.worker, e.started_at - half, next.started_at));
            match why {
                Some(f) => *per_fault.entry(f.seq).or_default() += 1,
                None => r.duplicates_unexplained.push(*job),
            }
        }
        let completed: Vec<&Exec> = runs
            .iter()
            .filter(|e| e.outcome.as_deref() == Some("completed"))
            .collect();
        if completed.len() > 1 {
            r.completed_twice += 1;
            for pair in completed.windows(2) {
                let end = pair[0].ended_at.unwrap_or(pair[0].started_at);
                let explained = o
                    .faults
                    .iter()
                    .any(|f| explains(f, &pair[0].worker, end - half, pair[1].started_at));
                if !explained {
                    r.completed_twice_unexplained.push(*job);
                }
            }
        }
    }
    r.duplicate_bound = o
        .faults
        .iter()
        .map(|f| {
            if f.kind.is_db() {
                config.slots()
            } else {
                config.concurrency
            }
        })
        .sum();

    // Orphans: jobs RUNNING under a killed or cut-off worker, until they run elsewhere.
    let bound = config.timing.lease + config.timing.rescue + RECOVERY_TOLERANCE;
    r.orphan_bound_secs = bound.as_secs_f64();
    let db_faults: Vec<&FaultRecord> = o.faults.iter().filter(|f| f.kind.is_db()).collect();
    let mut recoveries = Vec::new();
    for f in o.faults.iter().filter(|f| !f.held.is_empty()) {
        let dead = f.worker.as_deref().unwrap_or_default();
        for job in &f.held {
            r.orphans += 1;
            let next = per_job.get(job).and_then(|runs| {
                runs.iter()
                    .find(|e| e.started_at > f.at && e.worker != dead)
            });
            let Some(next) = next else {
                let status = jobs
                    .iter()
                    .find(|j| j.id == *job)
                    .map(|j| j.status.as_str());
                let by_dead = last_owner
                    .get(job)
                    .is_some_and(|o| o.as_deref() == Some(dead));
                if status.is_some_and(|s| FINAL.contains(&s))
                    && (by_dead || cancel_asked.contains(job))
                {
                    r.orphans_finished_by_last_write += 1;
                } else {
                    r.orphans_unrecovered.push(*job);
                }
                continue;
            };
            let took = secs(next.started_at - f.at);
            let window_end = f.at + chrono::TimeDelta::from_std(bound)?;
            if db_faults
                .iter()
                .any(|d| d.at <= window_end && d.until >= f.at)
            {
                r.orphans_delayed_by_db += 1;
                continue;
            }
            recoveries.push(took);
            if took > bound.as_secs_f64() {
                r.orphans_over_bound.push((*job, took));
            }
        }
    }
    recoveries.sort_by(f64::total_cmp);
    r.orphan_recovery_p50 = recoveries.get(recoveries.len() / 2).copied();
    r.orphan_recovery_max = recoveries.last().copied();

    // Cut-off workers: no new work while cut off, and running work stopped by the lease.
    for f in o.faults.iter().filter(|f| f.kind == FaultKind::Blackhole) {
        let worker = f.worker.clone().unwrap_or_default();
        let mine: Vec<&Exec> = execs.iter().filter(|e| e.worker == worker).collect();
        let started_while_cut = mine
            .iter()
            .filter(|e| e.started_at > f.at + half && e.started_at < f.until)
            .count();
        let active: Vec<&&Exec> = mine
            .iter()
            .filter(|e| e.started_at <= f.at + half && e.ended_at.is_none_or(|t| t > f.at))
            .collect();
        let stops: Vec<f64> = active
            .iter()
            .filter_map(|e| e.ended_at.map(|t| secs(t - f.at)))
            .collect();
        let limit = (config.timing.lease + CUTOFF_TOLERANCE).as_secs_f64();
        r.cutoffs.push(Cutoff {
            worker,
            held: f.held.len(),
            started_while_cut,
            last_stop_secs: stops.iter().copied().reduce(f64::max),
            late: stops.iter().filter(|s| **s > limit).count(),
            unknown_end: active.len() - stops.len(),
        });
    }

    for f in o.faults.iter().chain(&o.final_stops) {
        if f.kind == FaultKind::Term {
            r.stops.push(Stop {
                worker: f.worker.clone().unwrap_or_default(),
                exit_code: f.exit_code,
                secs: secs(f.until - f.at),
                left_running: f.left_running,
            });
        }
    }

    for f in &db_faults {
        let resumed = execs
            .iter()
            .find(|e| e.started_at > f.until)
            .map(|e| secs(e.started_at - f.until));
        r.outages.push(DbFault {
            kind: f.kind.name(),
            down_secs: secs(f.until - f.at),
            api_answers: f
                .probes
                .iter()
                .map(|p| (p.path.to_string(), p.status, p.latency.as_secs_f64()))
                .collect(),
            resumed_after_secs: resumed,
        });
    }
    r.duplicates_most_by_one_fault = per_fault.values().copied().max().unwrap_or(0);
    Ok(r)
}

impl Report {
    /// The goals missed; empty when every guarantee held.
    pub fn violations(&self, config: &Config) -> Vec<String> {
        let mut v = Vec::new();
        let mut check = |ok: bool, what: String| {
            if !ok {
                v.push(what)
            }
        };
        check(self.lost.is_empty(), format!("lost: {:?}", self.lost));
        check(self.stuck.is_empty(), format!("stuck: {:?}", self.stuck));
        check(
            self.unexpected.is_empty(),
            format!("unexpected: {:?}", self.unexpected),
        );
        check(
            self.double_final.is_empty(),
            format!("double final states: {:?}", self.double_final),
        );
        check(
            self.inconsistent.is_empty(),
            format!("inconsistent: {:?}", self.inconsistent),
        );
        check(
            self.completed_twice_unexplained.is_empty(),
            format!(
                "completed twice with no fault around: {:?}",
                self.completed_twice_unexplained
            ),
        );
        check(
            self.duplicates_unexplained.is_empty(),
            format!(
                "duplicate executions with no fault around: {:?}",
                self.duplicates_unexplained
            ),
        );
        check(
            self.duplicates <= self.duplicate_bound,
            format!(
                "{} duplicate executions, bound {}",
                self.duplicates, self.duplicate_bound
            ),
        );
        check(
            self.orphans_over_bound.is_empty(),
            format!(
                "orphans recovered later than {} s: {:?}",
                self.orphan_bound_secs, self.orphans_over_bound
            ),
        );
        check(
            self.orphans_unrecovered.is_empty(),
            format!("orphans never recovered: {:?}", self.orphans_unrecovered),
        );
        for c in &self.cutoffs {
            check(
                c.started_while_cut == 0 && c.late == 0,
                format!("cut-off worker kept working: {c:?}"),
            );
        }
        for s in &self.stops {
            check(
                s.exit_code == Some(0) && s.left_running == Some(0),
                format!("SIGTERM did not end cleanly: {s:?}"),
            );
        }
        for d in &self.outages {
            check(
                d.resumed_after_secs
                    .is_some_and(|s| s <= RESUME_LIMIT.as_secs_f64()),
                format!(
                    "work did not resume within {RESUME_LIMIT:?} of the database's return: {d:?}"
                ),
            );
            for (path, status, secs) in &d.api_answers {
                check(
                    *status == Some(503) && *secs <= OUTAGE_ANSWER_LIMIT.as_secs_f64(),
                    format!("{path} during the outage answered {status:?} after {secs:.2} s"),
                );
            }
        }
        check(
            self.drained_secs.is_some(),
            "the drain did not finish".into(),
        );
        if config.short {
            for kind in [
                "kill",
                "term",
                "blackhole",
                "pg_restart_fast",
                "pg_restart_immediate",
                "pg_outage",
            ] {
                check(
                    self.faults.contains_key(kind),
                    format!("no {kind} fault was injected"),
                );
            }
        }
        v
    }

    /// The figures, for a person.
    pub fn print(&self, config: &Config) {
        println!("== forklift-chaos report (seed {}) ==", self.seed);
        println!("faults injected        {:?}", self.faults);
        println!(
            "enqueues               {} ({} accepted, {} answered with an error, {} of those created anyway)",
            self.enqueues, self.accepted, self.enqueue_errors, self.created_despite_error
        );
        println!("final states           {:?}", self.final_states);
        println!("executions             {}", self.executions);
        println!("drained in             {}", opt(self.drained_secs));
        println!("lost                   {}", self.lost.len());
        println!("double final states    {}", self.double_final.len());
        println!("stuck                  {}", self.stuck.len());
        println!("unexpected jobs        {}", self.unexpected.len());
        println!("attempt/errors off     {}", self.inconsistent.len());
        println!(
            "duplicate executions   {} (bound {}, most by one fault {}, unexplained by a fault {})",
            self.duplicates,
            self.duplicate_bound,
            self.duplicates_most_by_one_fault,
            self.duplicates_unexplained.len()
        );
        println!(
            "completed twice        {} (unexplained by a fault {})",
            self.completed_twice,
            self.completed_twice_unexplained.len()
        );
        println!(
            "orphans                {} : recovered p50 {} s, max {} s (bound {:.1} s), over bound {}, never {}, finished by last write {}, delayed by a DB fault {}",
            self.orphans,
            opt(self.orphan_recovery_p50),
            opt(self.orphan_recovery_max),
            self.orphan_bound_secs,
            self.orphans_over_bound.len(),
            self.orphans_unrecovered.len(),
            self.orphans_finished_by_last_write,
            self.orphans_delayed_by_db
        );
        for c in &self.cutoffs {
            println!(
                "cut off {:<14} held {}, started while cut {}, last stop after {} s, late {}, end unknown {}",
                c.worker,
                c.held,
                c.started_while_cut,
                opt(c.last_stop_secs),
                c.late,
                c.unknown_end
            );
        }
        for s in &self.stops {
            println!(
                "SIGTERM {:<14} exit {:?} in {:.2} s, left RUNNING {:?}",
                s.worker, s.exit_code, s.secs, s.left_running
            );
        }
        for d in &self.outages {
            let worst = d.api_answers.iter().map(|a| a.2).reduce(f64::max);
            let statuses: BTreeMap<String, usize> =
                d.api_answers.iter().fold(BTreeMap::new(), |mut m, a| {
                    *m.entry(format!("{} {:?}", a.0, a.1)).or_default() += 1;
                    m
                });
            println!(
                "{:<22} down {:.2} s, resumed after {} s; API answers {:?}, slowest {} s",
                d.kind,
                d.down_secs,
                opt(d.resumed_after_secs),
                statuses,
                opt(worst)
            );
        }
        let v = self.violations(config);
        if v.is_empty() {
            println!("every goal met");
        } else {
            println!("GOALS MISSED:");
            for line in v {
                println!("  - {line}");
            }
        }
    }
}

/// An optional number of seconds as `1.23`, or `-`.
fn opt(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.2}")).unwrap_or_else(|| "-".into())
}
