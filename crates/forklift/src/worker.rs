//! What users implement: a [`Handler`] per job type, the [`JobContext`] it receives,
//! and the outcomes it can return.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::job::{Job, JobId, TenantId};
use crate::retry::Backoff;

/// Runs jobs of one type. Implement it with `async fn run`.
///
/// ```
/// use forklift::{Handler, JobContext, HandlerResult, Outcome};
/// struct Resize;
/// impl Handler for Resize {
///     type Payload = serde_json::Value;
///     async fn run(&self, payload: Self::Payload, ctx: JobContext) -> HandlerResult {
///         ctx.set_progress(50);
///         ctx.set_result(&payload);
///         Ok(Outcome::Success)
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The job's payload, deserialized from its JSON. A payload that does not deserialize
    /// fails the job permanently (`invalid_payload`): retrying would not change it.
    type Payload: DeserializeOwned + Send + 'static;

    /// Runs one attempt. A panic here fails this attempt (retryable), never the worker.
    fn run(
        &self,
        payload: Self::Payload,
        ctx: JobContext,
    ) -> impl Future<Output = HandlerResult> + Send;
}

/// What a handler returns: an [`Outcome`], or a [`JobError`] (`?` turns any error into a
/// retryable one).
pub type HandlerResult = Result<Outcome, JobError>;

/// How an attempt ended, when it did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done. The result, if any, was set on the context.
    Success,
    /// Done, but these items failed. The job ends `PARTIAL_SUCCESS` with them in `errors`.
    Partial(Vec<ItemError>),
    /// Not now: run again after this long, without using up an attempt.
    Snooze(Duration),
}

/// One failed item of a partial success.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemError {
    pub message: String,
    pub code: String,
    /// Which item, and anything else useful.
    pub details: serde_json::Value,
}

impl ItemError {
    pub fn new(message: impl Into<String>, details: serde_json::Value) -> Self {
        ItemError {
            message: message.into(),
            code: "item_failed".into(),
            details,
        }
    }
}

/// A failed attempt. Retryable errors are tried again with back-off while attempts
/// remain; permanent ones fail the job at once.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    pub message: String,
    /// snake_case, for programs. Default `handler_error`.
    pub code: String,
    pub retryable: bool,
    pub details: serde_json::Value,
}

impl JobError {
    /// An error worth trying again (a timeout, a 503 from a dependency).
    pub fn retryable(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            code: "handler_error".into(),
            retryable: true,
            details: serde_json::Value::Null,
        }
    }

    /// An error that another attempt would repeat (bad input): the job fails now.
    pub fn permanent(message: impl Into<String>) -> Self {
        JobError {
            retryable: false,
            ..JobError::retryable(message)
        }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = code.into();
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// Any error converts into a retryable `JobError`, so handlers can use `?`. (That is why
/// `JobError` itself does not implement `std::error::Error`.)
impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        JobError::retryable(message)
    }
}

/// Why a running handler's cancellation token fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CancelReason {
    /// Not cancelled.
    None = 0,
    /// A user cancelled the job: it ends `CANCELLED`.
    Requested = 1,
    /// The attempt ran past its timeout: it fails (retryable).
    Timeout = 2,
    /// The process is shutting down: the job goes back to the queue, attempt returned.
    Shutdown = 3,
    /// This worker lost the job's lease: whatever it does now is discarded.
    LeaseLost = 4,
}

/// What a handler knows about its attempt, and how it talks back while it runs.
/// Cheap to clone, so it can go into tasks the handler spawns.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    job: Job,
    cancel: CancellationToken,
    reason: AtomicU8,
    /// Set when the attempt starts (a job may wait a moment in the worker's fetch-ahead
    /// buffer between its lease and its start).
    deadline: OnceLock<Option<Instant>>,
    /// The latest progress; written to the database by a flusher, not per call.
    progress: AtomicI16,
    progress_dirty: AtomicBool,
    result: Mutex<Option<serde_json::Value>>,
    result_url: Mutex<Option<String>>,
}

impl JobContext {
    pub(crate) fn new(job: Job) -> Self {
        let progress = job.progress;
        JobContext {
            inner: Arc::new(ContextInner {
                job,
                cancel: CancellationToken::new(),
                reason: AtomicU8::new(CancelReason::None as u8),
                deadline: OnceLock::new(),
                progress: AtomicI16::new(progress),
                progress_dirty: AtomicBool::new(false),
                result: Mutex::new(None),
                result_url: Mutex::new(None),
            }),
        }
    }

    /// The job as it was leased (attempt already counted).
    pub fn job(&self) -> &Job {
        &self.inner.job
    }
    pub fn job_id(&self) -> JobId {
        self.inner.job.job_id
    }
    pub fn tenant_id(&self) -> TenantId {
        self.inner.job.tenant_id
    }
    /// This attempt's number, from 1.
    pub fn attempt(&self) -> i32 {
        self.inner.job.attempt
    }
    /// When this attempt will be stopped, if the job or its type has a timeout.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline.get().copied().flatten()
    }

    /// Starts the attempt's clock: `timeout` from now, if any.
    pub(crate) fn set_deadline(&self, timeout: Option<Duration>) {
        // A timeout past what an Instant can hold means none (adding would panic).
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let _ = self.inner.deadline.set(deadline);
    }

    /// Reports progress, 0–100. Cheap: calls are coalesced and written every few hundred ms.
    pub fn set_progress(&self, percent: u8) {
        self.inner
            .progress
            .store(i16::from(percent.min(100)), Ordering::Relaxed);
        self.inner.progress_dirty.store(true, Ordering::Release);
    }

    /// Stores a small JSON result with the job (written when the attempt succeeds).
    pub fn set_result<T: Serialize + ?Sized>(&self, result: &T) {
        let value = serde_json::to_value(result).unwrap_or(serde_json::Value::Null);
        *self.inner.result.lock().unwrap() = Some(value);
    }

    /// Stores where a large result (a file) can be downloaded.
    pub fn set_result_url(&self, url: impl Into<String>) {
        *self.inner.result_url.lock().unwrap() = Some(url.into());
    }

    /// Whether the handler should stop: the job was cancelled, timed out, or the worker
    /// is shutting down or lost the job.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when the handler should stop; `select!` on it around long waits.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.inner.cancel.cancelled()
    }

    /// The token itself, to hand to code that takes a `CancellationToken`.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.inner.cancel.clone()
    }

    /// Why the token fired (the first reason wins).
    pub fn cancel_reason(&self) -> CancelReason {
        match self.inner.reason.load(Ordering::Acquire) {
            1 => CancelReason::Requested,
            2 => CancelReason::Timeout,
            3 => CancelReason::Shutdown,
            4 => CancelReason::LeaseLost,
            _ => CancelReason::None,
        }
    }

    pub(crate) fn cancel(&self, reason: CancelReason) {
        let _ = self.inner.reason.compare_exchange(
            CancelReason::None as u8,
            reason as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.inner.cancel.cancel();
    }

    /// The progress to write, if it changed since the last call.
    pub(crate) fn take_progress(&self) -> Option<i16> {
        self.inner
            .progress_dirty
            .swap(false, Ordering::AcqRel)
            .then(|| self.inner.progress.load(Ordering::Relaxed))
    }

    pub(crate) fn latest_progress(&self) -> i16 {
        self.inner.progress.load(Ordering::Relaxed)
    }

    pub(crate) fn take_result(&self) -> (Option<serde_json::Value>, Option<String>) {
        (
            self.inner.result.lock().unwrap().take(),
            self.inner.result_url.lock().unwrap().take(),
        )
    }
}

/// A handler with its payload type erased, so handlers of different types share a map.
pub(crate) trait ErasedHandler: Send + Sync {
    fn call(
        &self,
        payload: serde_json::Value,
        ctx: JobContext,
    ) -> BoxFuture<'static, HandlerResult>;
}

struct Erased<H>(Arc<H>);

impl<H: Handler> ErasedHandler for Erased<H> {
    fn call(
        &self,
        payload: serde_json::Value,
        ctx: JobContext,
    ) -> BoxFuture<'static, HandlerResult> {
        let handler = self.0.clone();
        Box::pin(async move {
            let payload: H::Payload = serde_json::from_value(payload).map_err(|e| {
                JobError::permanent(format!("the payload does not fit this job type: {e}"))
                    .with_code("invalid_payload")
            })?;
            handler.run(payload, ctx).await
        })
    }
}

/// Per-type settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeOptions {
    /// At most this many jobs of the type run at once in this process. Default: no limit
    /// beyond the queue's.
    pub concurrency: Option<usize>,
    /// Stops an attempt after this long, unless the job sets its own `timeout_seconds`.
    /// Default: none.
    pub timeout: Option<Duration>,
    /// Back-off between retries. Default: 1 s doubling to 1 h, ±20 %.
    pub backoff: Backoff,
}

pub(crate) struct Registered {
    pub handler: Arc<dyn ErasedHandler>,
    pub options: TypeOptions,
}

/// The handlers a worker runs, by job type. A worker fetches only the types it has.
#[derive(Default)]
pub struct Registry {
    pub(crate) handlers: HashMap<String, Registered>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs jobs of `job_type` with `handler` and default options. Replaces an earlier one.
    pub fn register<H: Handler>(&mut self, job_type: impl Into<String>, handler: H) -> &mut Self {
        self.register_with(job_type, handler, TypeOptions::default())
    }

    /// Like [`Registry::register`], with per-type concurrency, timeout and back-off.
    pub fn register_with<H: Handler>(
        &mut self,
        job_type: impl Into<String>,
        handler: H,
        options: TypeOptions,
    ) -> &mut Self {
        let handler: Arc<dyn ErasedHandler> = Arc::new(Erased(Arc::new(handler)));
        self.handlers
            .insert(job_type.into(), Registered { handler, options });
        self
    }

    /// The registered types, sorted.
    pub fn types(&self) -> Vec<String> {
        let mut types: Vec<String> = self.handlers.keys().cloned().collect();
        types.sort();
        types
    }
}
