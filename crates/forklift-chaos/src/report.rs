//! The checker's figures, the goals they are held to, and how they are printed.

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use crate::check::{OUTAGE_ANSWER_LIMIT, RESUME_LIMIT};
use crate::plan::Config;

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
    /// From the fault to the job's rescue (back in the queue): held to the bound.
    pub orphan_rescue_p50: Option<f64>,
    pub orphan_rescue_max: Option<f64>,
    /// From the fault to the next execution's start (adds the queue's wait): reported.
    pub orphan_rerun_p50: Option<f64>,
    pub orphan_rerun_max: Option<f64>,
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
                "orphans rescued later than {} s: {:?}",
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
            "orphans                {} : back in the queue p50 {} s, max {} s (bound {:.1} s); running again p50 {} s, max {} s; over bound {}, never {}, finished by last write {}, delayed by a DB fault {}",
            self.orphans,
            opt(self.orphan_rescue_p50),
            opt(self.orphan_rescue_max),
            self.orphan_bound_secs,
            opt(self.orphan_rerun_p50),
            opt(self.orphan_rerun_max),
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
