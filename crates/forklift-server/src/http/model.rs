//! The API's JSON shapes (SPEC §3 and §5), kept apart from the library's types so the
//! wire format changes only on purpose.

use chrono::{DateTime, Utc};
use forklift::{ErrorEntry, Job, NewJob};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, ObjectBuilder, Ref, Schema, SchemaType, Type,
};

use super::error::ApiError;
use super::payload;

/// A job, with every field of SPEC §3.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    /// `job_` + 32 lowercase hex digits.
    #[schema(example = "job_31c8927959d5442e90e3a6bc5a9188ec")]
    pub job_id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub queue: String,
    /// QUEUED, RUNNING, SUCCESS, FAILED, PARTIAL_SUCCESS or CANCELLED.
    #[schema(value_type = StatusName)]
    pub status: String,
    pub priority: i16,
    pub progress: i16,
    pub payload: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub result_url: Option<String>,
    /// One entry per failed attempt or failed item; null when there is none.
    pub errors: Option<Vec<ErrorView>>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub timeout_seconds: Option<i32>,
    pub unique_key: Option<String>,
    /// Always empty until job dependencies ship.
    pub depends_on: Vec<String>,
    pub tags: Vec<String>,
    /// A cancel was asked while the job ran; it ends `CANCELLED` when its handler stops.
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A job's status.
// The library's `JobStatus` has no schema; tests/openapi.rs checks that the two list the
// same statuses.
#[derive(ToSchema)]
#[schema(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(dead_code)] // documents the statuses; never built
pub enum StatusName {
    Queued,
    Running,
    Success,
    Failed,
    PartialSuccess,
    Cancelled,
}

/// One failed attempt or item.
#[derive(Serialize, ToSchema)]
pub struct ErrorView {
    pub message: String,
    pub code: String,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub details: serde_json::Value,
}

impl From<ErrorEntry> for ErrorView {
    fn from(e: ErrorEntry) -> Self {
        ErrorView {
            message: e.message,
            code: e.code,
            attempt: e.attempt,
            at: e.at,
            details: e.details,
        }
    }
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        JobView {
            job_id: j.job_id.to_string(),
            job_type: j.job_type,
            queue: j.queue,
            status: j.status.as_str().to_string(),
            priority: j.priority,
            progress: j.progress,
            payload: j.payload,
            result: j.result,
            result_url: j.result_url,
            errors: if j.errors.is_empty() {
                None
            } else {
                Some(j.errors.into_iter().map(Into::into).collect())
            },
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            run_at: j.run_at,
            timeout_seconds: j.timeout_seconds,
            unique_key: j.unique_key,
            depends_on: Vec::new(),
            tags: j.tags,
            cancel_requested: j.cancel_requested,
            created_at: j.created_at,
            updated_at: j.updated_at,
            started_at: j.started_at,
            completed_at: j.completed_at,
        }
    }
}

/// The body of `POST /jobs` (and each item of a batch). Unknown fields are refused, so a
/// misspelt option is an error rather than silently ignored. `null` for an optional field
/// means its default. `run_at` and `delay_seconds` exclude each other.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// 1–100 characters of `[A-Za-z0-9_.:-]`.
    #[serde(rename = "type")]
    #[schema(example = "bulk_import", pattern = "^[A-Za-z0-9_.:-]{1,100}$")]
    pub job_type: String,
    /// Default `{}`.
    #[serde(default)]
    #[schema(value_type = Payload)]
    pub payload: Option<serde_json::Value>,
    /// 1–100 characters of `[A-Za-z0-9_.:-]`; default `default`.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,100}$")]
    pub queue: Option<String>,
    /// 0–9, 0 runs first; default 5.
    #[serde(default, deserialize_with = "payload::integral")]
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<i16>,
    /// Not before this time (RFC 3339), at most 10 years from now; a time in the past
    /// means now (it does not put the job ahead of jobs already due). Exclusive with
    /// `delay_seconds`.
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Not before this many seconds from now: 0 to 10 years (315360000).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 315_360_000)]
    pub delay_seconds: Option<f64>,
    /// 1–1000; default 5.
    #[serde(default, deserialize_with = "payload::integral")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_attempts: Option<i32>,
    /// 1–604800 (7 days); default none.
    #[serde(default, deserialize_with = "payload::integral")]
    #[schema(minimum = 1, maximum = 604_800)]
    pub timeout_seconds: Option<i32>,
    /// 1–255 characters, not U+0000. At most one unfinished job per tenant has it: a
    /// request with the key of such a job answers 200 with that job, whatever else it
    /// asks. When given, the `Idempotency-Key` header is ignored.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = "^[^\\u0000]*$")]
    pub unique_key: Option<String>,
    /// Reserved for job dependencies (a later release): must be absent or empty.
    #[serde(default)]
    #[schema(max_items = 0)]
    pub depends_on: Option<Vec<String>>,
    /// At most 20 tags of 1–100 characters, not U+0000.
    #[serde(default)]
    #[schema(schema_with = tags_schema)]
    pub tags: Option<Vec<String>>,
}

/// A job's payload as the document describes it: any JSON value both stores can hold.
/// (The field itself is a `serde_json::Value`, checked by the library's `NewJob::validate`.)
pub struct Payload;

impl utoipa::PartialSchema for Payload {
    fn schema() -> RefOr<Schema> {
        let itself = || Ref::from_schema_name("Payload");
        let no_nul = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[^\\u0000]*$"))
        };
        AnyOfBuilder::new()
            .description(Some(
                "Any JSON value. Numbers keep the digits they were sent with, up to 100 characters \
                 and within a double's range; strings and keys cannot hold U+0000.",
            ))
            .item(ObjectBuilder::new().schema_type(SchemaType::from_iter([
                Type::Null,
                Type::Boolean,
                Type::Number,
            ])))
            .item(no_nul())
            .item(ArrayBuilder::new().items(itself()))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .property_names(Some(no_nul()))
                    .additional_properties(Some(itself())),
            )
            .into()
    }
}

impl utoipa::ToSchema for Payload {}

/// utoipa has no attribute for the items of a `Vec<String>` field.
fn tags_schema() -> utoipa::openapi::schema::Array {
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .description(Some("At most 20 tags of 1–100 characters, not U+0000."))
        .max_items(Some(20))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(100))
                .pattern(Some("^[^\\u0000]*$")),
        )
        .build()
}

/// Says in the document that `run_at` and `delay_seconds` exclude each other: JSON
/// Schema's `not`, which utoipa's schema type lacks, so it goes in through the extensions
/// map (serialized flat into the schema object, under any key).
pub fn document_exclusive_fields(doc: &mut utoipa::openapi::OpenApi) {
    let schemas = doc.components.as_mut().map(|c| &mut c.schemas);
    if let Some(RefOr::T(Schema::Object(request))) =
        schemas.and_then(|s| s.get_mut("EnqueueRequest"))
    {
        request.extensions.get_or_insert_default().insert(
            "not".into(),
            serde_json::json!({
                "required": ["run_at", "delay_seconds"],
                "properties": {"run_at": {"type": "string"}, "delay_seconds": {"type": "number"}}
            }),
        );
    }
}

impl EnqueueRequest {
    /// The library's job, with every field checked by the library's one validation (which
    /// the store runs again).
    pub fn into_new_job(self, idempotency_key: Option<String>) -> Result<NewJob, ApiError> {
        if self.depends_on.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(ApiError::invalid(
                "depends_on",
                "job dependencies are not supported yet",
            ));
        }
        let mut job = NewJob::new(
            self.job_type,
            self.payload.unwrap_or_else(|| serde_json::json!({})),
        );
        if let Some(q) = self.queue {
            job.queue = q;
        }
        if let Some(p) = self.priority {
            job.priority = p;
        }
        job.run_at = self.run_at;
        if let Some(d) = self.delay_seconds {
            if !(d.is_finite() && d >= 0.0) {
                return Err(ApiError::invalid("delay_seconds", "must be a number ≥ 0"));
            }
            job.delay = Some(std::time::Duration::from_secs_f64(d.min(1e10)));
        }
        if let Some(m) = self.max_attempts {
            job.max_attempts = m;
        }
        job.timeout_seconds = self.timeout_seconds;
        job.unique_key = self.unique_key.or(idempotency_key);
        job.tags = self.tags.unwrap_or_default();
        job.validate()?;
        Ok(job)
    }
}

/// The body of `POST /jobs/batch`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 10,000 jobs, enqueued all or nothing.
    #[schema(min_items = 1, max_items = 10_000)]
    pub jobs: Vec<EnqueueRequest>,
}

/// The answer to `POST /jobs/batch`.
#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    /// In request order. A job whose unique key an unfinished job held is that job's id.
    pub job_ids: Vec<String>,
}

/// A page of `GET /jobs`.
#[derive(Serialize, ToSchema)]
pub struct JobList {
    /// Newest first. With a `type`, `queue` or `tag` filter, a page reads at most 10,000
    /// jobs of each status and may hold fewer than `limit`, even none, before the last.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; null on the last (only null ends the list).
    pub next_cursor: Option<String>,
}
