//! Runs one attempt: the handler under a timeout and a panic guard, then turns how it
//! ended into the write that finishes the attempt.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;

use crate::job::{ErrorEntry, Job, JobStatus};
use crate::retry::Backoff;
use crate::store::{Completion, Lease};
use crate::worker::{CancelReason, ErasedHandler, HandlerResult, JobContext, JobError, Outcome};

/// How the handler's future ended.
#[derive(Debug)]
pub(crate) enum Ending {
    Returned(HandlerResult),
    Panicked(String),
    TimedOut(Duration),
}

/// What to do with the job after the attempt.
#[derive(Debug, PartialEq)]
pub(crate) enum After {
    Complete(Completion),
    /// Shutting down: back to the queue, attempt returned.
    Release(Lease),
    /// The lease was lost: another worker or the rescuer owns the job now.
    Discard,
}

pub(crate) async fn run_attempt(
    handler: &dyn ErasedHandler,
    ctx: &JobContext,
    timeout: Option<Duration>,
) -> Ending {
    let fut = AssertUnwindSafe(handler.call(ctx.job().payload.clone(), ctx.clone())).catch_unwind();
    let outcome = match timeout {
        Some(limit) => match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => {
                // The handler's future is dropped here; the token tells tasks it spawned.
                ctx.cancel(CancelReason::Timeout);
                return Ending::TimedOut(limit);
            }
        },
        None => fut.await,
    };
    match outcome {
        Ok(result) => Ending::Returned(result),
        Err(panic) => Ending::Panicked(panic_message(panic.as_ref())),
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into())
}

/// Decides the next status of the job (pure: everything it needs is passed in).
pub(crate) fn decide(
    job: &Job,
    lease: Lease,
    ending: Ending,
    reason: CancelReason,
    backoff: &Backoff,
    ctx_result: (Option<serde_json::Value>, Option<String>),
    progress: Option<i16>,
) -> After {
    let now = Utc::now();
    let entry = |e: JobError| ErrorEntry {
        message: e.message,
        code: e.code,
        attempt: job.attempt,
        at: now,
        details: e.details,
    };
    let (result, result_url) = ctx_result;
    // What the job ends with when it did its work; every other ending stores no result:
    // a failed attempt's half-made result must not pass for the job's.
    let done = Completion {
        lease,
        attempt: job.attempt,
        status: JobStatus::Success,
        result,
        result_url,
        errors: Vec::new(),
        retry_in: Duration::ZERO,
        give_attempt_back: false,
        progress,
    };
    let base = Completion {
        result: None,
        result_url: None,
        ..done.clone()
    };
    let error = match ending {
        _ if reason == CancelReason::LeaseLost => return After::Discard,
        Ending::Returned(Ok(Outcome::Success)) => return After::Complete(done),
        Ending::Returned(Ok(Outcome::Partial(items))) => {
            let errors = items
                .into_iter()
                .map(|i| ErrorEntry {
                    message: i.message,
                    code: i.code,
                    attempt: job.attempt,
                    at: now,
                    details: i.details,
                })
                .collect();
            return After::Complete(Completion {
                status: JobStatus::PartialSuccess,
                errors,
                ..done
            });
        }
        Ending::Returned(Ok(Outcome::Snooze(_)) | Err(_)) if reason == CancelReason::Shutdown => {
            return After::Release(lease);
        }
        Ending::Returned(Ok(Outcome::Snooze(delay))) => {
            return After::Complete(Completion {
                status: JobStatus::Queued,
                retry_in: delay,
                give_attempt_back: true,
                ..base
            });
        }
        Ending::Returned(Err(e)) => e,
        Ending::Panicked(msg) => {
            JobError::retryable(format!("the handler panicked: {msg}")).with_code("panic")
        }
        Ending::TimedOut(limit) => JobError::retryable(format!(
            "the attempt ran longer than its timeout of {} s",
            limit.as_secs_f64()
        ))
        .with_code("timeout"),
    };
    if reason == CancelReason::Requested {
        return After::Complete(Completion {
            status: JobStatus::Cancelled,
            ..base
        });
    }
    if error.retryable && job.attempt < job.max_attempts {
        let retry_in = backoff.delay(job.attempt);
        return After::Complete(Completion {
            status: JobStatus::Queued,
            retry_in,
            errors: vec![entry(error)],
            ..base
        });
    }
    After::Complete(Completion {
        status: JobStatus::Failed,
        errors: vec![entry(error)],
        ..base
    })
}
