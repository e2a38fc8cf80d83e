//! Job types every Forklift binary has: `noop` and `simulate` (SPEC §8). They live in the
//! library so that tests, the server and the benchmarks share one implementation.

use std::time::Duration;

use serde::Deserialize;

use crate::worker::{Handler, HandlerResult, ItemError, JobContext, JobError, Outcome, Registry};

/// Succeeds at once, whatever the payload. For benchmarks and smoke tests.
pub struct Noop;

impl Handler for Noop {
    type Payload = serde_json::Value;

    async fn run(&self, _payload: serde_json::Value, _ctx: JobContext) -> HandlerResult {
        Ok(Outcome::Success)
    }
}

/// The `simulate` payload. Every field is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulateArgs {
    /// Steps to run. Default 5.
    pub steps: u32,
    /// Milliseconds per step. Default 200.
    pub step_ms: u64,
    /// The first this-many attempts fail. Default 0.
    pub fail_attempts: i32,
    /// Those failures are permanent. Default false.
    pub permanent: bool,
    /// End `PARTIAL_SUCCESS` with one item error. Default false.
    pub partial: bool,
    /// Panic after the steps. Default false.
    pub panic: bool,
}

impl Default for SimulateArgs {
    fn default() -> Self {
        SimulateArgs {
            steps: 5,
            step_ms: 200,
            fail_attempts: 0,
            permanent: false,
            partial: false,
            panic: false,
        }
    }
}

/// A scripted workload for demos, tests and chaos runs: runs steps, reports progress after
/// each, honours cancellation, then fails, panics or succeeds as its payload says.
pub struct Simulate;

impl Handler for Simulate {
    type Payload = SimulateArgs;

    async fn run(&self, args: SimulateArgs, ctx: JobContext) -> HandlerResult {
        for step in 1..=args.steps {
            tokio::select! {
                _ = ctx.cancelled() => {
                    return Err(JobError::retryable(format!("stopped at step {step} of {}", args.steps)).with_code("cancelled"));
                }
                _ = tokio::time::sleep(Duration::from_millis(args.step_ms)) => {}
            }
            ctx.set_progress((step * 100 / args.steps.max(1)).min(100) as u8);
        }
        if args.panic {
            panic!("simulated panic");
        }
        if ctx.attempt() <= args.fail_attempts {
            let e = format!("simulated failure of attempt {}", ctx.attempt());
            return Err(if args.permanent {
                JobError::permanent(e)
            } else {
                JobError::retryable(e)
            }
            .with_code("simulated"));
        }
        ctx.set_result(&serde_json::json!({ "steps": args.steps, "attempt": ctx.attempt() }));
        if args.partial {
            let item = ItemError::new("simulated item failure", serde_json::json!({ "item": 1 }));
            return Ok(Outcome::Partial(vec![item]));
        }
        Ok(Outcome::Success)
    }
}

/// Registers `noop` and `simulate`.
pub fn register(registry: &mut Registry) {
    registry.register("noop", Noop);
    registry.register("simulate", Simulate);
}
