//! The checker: reads the jobs table, the ledger and the transition audit after the drain,
//! sets them against what the load generator was answered and what the faults did, and
//! reports every guarantee's figures. [`Report::violations`] lists the goals missed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::plan::{Config, FaultKind};
use crate::report::{Cutoff, DbFault, Report, Stop};
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
    at: DateTime<Utc>,
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
        "select job_id, old_status, new_status, old_owner, at from chaos_transitions order by at",
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
    for t in &transitions {
        if FINAL.contains(&t.old_status.as_str()) {
            r.double_final.push(t.job_id);
        }
        if FINAL.contains(&t.new_status.as_str()) {
            *finals.entry(t.job_id).or_default() += 1;
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

    // Orphans: jobs RUNNING under a killed or cut-off worker. Recovered = back in the
    // queue (the rescue's transition out of RUNNING), which the engine bounds; the next
    // execution's start adds the queue's wait, reported alongside.
    let bound = config.timing.lease + config.timing.rescue + RECOVERY_TOLERANCE;
    r.orphan_bound_secs = bound.as_secs_f64();
    let db_faults: Vec<&FaultRecord> = o.faults.iter().filter(|f| f.kind.is_db()).collect();
    let (mut rescues, mut restarts) = (Vec::new(), Vec::new());
    for f in o.faults.iter().filter(|f| !f.held.is_empty()) {
        let dead = f.worker.as_deref().unwrap_or_default();
        for job in &f.held {
            r.orphans += 1;
            let left_running = transitions.iter().find(|t| {
                t.job_id == *job
                    && t.old_status == "RUNNING"
                    && t.old_owner.as_deref() == Some(dead)
                    && t.at >= f.at
            });
            let Some(left) = left_running else {
                r.orphans_unrecovered.push(*job);
                continue;
            };
            let took = secs(left.at - f.at);
            if took < 0.5 {
                // The dead worker's last write (a completion already on its way) landed.
                r.orphans_finished_by_last_write += 1;
                continue;
            }
            let window_end = f.at + chrono::TimeDelta::from_std(bound)?;
            if db_faults
                .iter()
                .any(|d| d.at <= window_end && d.until >= f.at)
            {
                r.orphans_delayed_by_db += 1;
                continue;
            }
            rescues.push(took);
            if took > bound.as_secs_f64() {
                r.orphans_over_bound.push((*job, took));
            }
            let next = per_job.get(job).and_then(|runs| {
                runs.iter()
                    .find(|e| e.started_at > f.at && e.worker != dead)
            });
            if let Some(next) = next {
                restarts.push(secs(next.started_at - f.at));
            }
        }
    }
    rescues.sort_by(f64::total_cmp);
    restarts.sort_by(f64::total_cmp);
    r.orphan_rescue_p50 = rescues.get(rescues.len() / 2).copied();
    r.orphan_rescue_max = rescues.last().copied();
    r.orphan_rerun_p50 = restarts.get(restarts.len() / 2).copied();
    r.orphan_rerun_max = restarts.last().copied();

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
