//! What a caller asks to enqueue, and its validation (pure).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The largest number of jobs one enqueue call may carry.
pub const MAX_BATCH: usize = 10_000;

/// The furthest ahead a job can be put off: `delay_seconds`, `run_at`, a retry's back-off
/// and a snooze alike. Far enough for any schedule, and far inside the time range of both
/// stores, so that no computed time can overflow a column.
pub const MAX_DELAY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A job to enqueue. Build it with [`NewJob::new`] and the chained setters; every
/// field is checked by [`NewJob::validate`] before anything is written.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// 1–100 characters of `[A-Za-z0-9_.:-]`.
    pub job_type: String,
    /// Any JSON value without NUL characters (which PostgreSQL cannot store). Default `{}`.
    pub payload: serde_json::Value,
    /// Named queue, same charset as the type. Default `default`.
    pub queue: String,
    /// 0–9, 0 runs first. Default 5.
    pub priority: i16,
    /// Not before this time, at most 10 years ahead. A time in the past means now: it
    /// does not put the job ahead of jobs already due. Default: now (the database's clock).
    pub run_at: Option<DateTime<Utc>>,
    /// Not before this long from now (the database's clock); exclusive with `run_at`.
    pub delay: Option<Duration>,
    /// Attempts allowed, 1–1000. Default 5.
    pub max_attempts: i32,
    /// An attempt running longer is stopped and fails (retryable). Default: none.
    pub timeout_seconds: Option<i32>,
    /// Idempotency key: at most one unfinished job per tenant has it. Default: none.
    pub unique_key: Option<String>,
    /// Free labels for filtering, at most 20 of 1–100 characters. Default: none.
    pub tags: Vec<String>,
}

/// A typed job payload: the type name travels with the Rust type, so enqueuing and
/// handling cannot disagree on it.
pub trait JobArgs: Serialize + DeserializeOwned + Send + 'static {
    /// The job type this payload belongs to.
    const TYPE: &'static str;

    /// Enqueue options that apply unless the caller overrides them.
    fn defaults(job: NewJob) -> NewJob {
        job
    }
}

impl NewJob {
    /// A job of `job_type` with `payload` and every option at its default.
    pub fn new(job_type: impl Into<String>, payload: serde_json::Value) -> Self {
        NewJob {
            job_type: job_type.into(),
            payload,
            queue: "default".into(),
            priority: 5,
            run_at: None,
            delay: None,
            max_attempts: 5,
            timeout_seconds: None,
            unique_key: None,
            tags: Vec::new(),
        }
    }

    /// A job from typed arguments, with the type's defaults applied.
    pub fn from_args<A: JobArgs>(args: &A) -> Result<Self> {
        let payload =
            serde_json::to_value(args).map_err(|e| Error::invalid("payload", e.to_string()))?;
        Ok(A::defaults(NewJob::new(A::TYPE, payload)))
    }

    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n;
        self
    }
    pub fn timeout_seconds(mut self, secs: i32) -> Self {
        self.timeout_seconds = Some(secs);
        self
    }
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
    pub fn tags<S: Into<String>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        check_name("type", &self.job_type)?;
        check_name("queue", &self.queue)?;
        if !(0..=9).contains(&self.priority) {
            return Err(Error::invalid("priority", "must be an integer from 0 to 9"));
        }
        if !(1..=1000).contains(&self.max_attempts) {
            return Err(Error::invalid(
                "max_attempts",
                "must be an integer from 1 to 1000",
            ));
        }
        if let Some(t) = self.timeout_seconds
            && !(1..=7 * 86_400).contains(&t)
        {
            return Err(Error::invalid(
                "timeout_seconds",
                "must be from 1 to 604800 (7 days)",
            ));
        }
        if self.run_at.is_some() && self.delay.is_some() {
            return Err(Error::invalid(
                "run_at",
                "give either run_at or delay_seconds, not both",
            ));
        }
        if let Some(d) = self.delay
            && d > MAX_DELAY
        {
            return Err(Error::invalid("delay_seconds", "must be at most 10 years"));
        }
        if let Some(at) = self.run_at {
            check_year("run_at", &at)?;
            if at > Utc::now() + MAX_DELAY {
                return Err(Error::invalid(
                    "run_at",
                    "must be at most 10 years from now",
                ));
            }
        }
        if let Some(key) = &self.unique_key {
            if key.is_empty() || key.chars().count() > 255 {
                return Err(Error::invalid("unique_key", "must be 1 to 255 characters"));
            }
            check_text("unique_key", key)?;
        }
        check_json("payload", &self.payload)?;
        if self.tags.len() > 20 {
            return Err(Error::invalid("tags", "at most 20 tags"));
        }
        if self
            .tags
            .iter()
            .any(|t| t.is_empty() || t.chars().count() > 100)
        {
            return Err(Error::invalid(
                "tags",
                "each tag must be 1 to 100 characters",
            ));
        }
        self.tags.iter().try_for_each(|t| check_text("tags", t))
    }

    /// When the job becomes due, if it is later than now: a `run_at` in the past (year 1,
    /// say) is now, so that it cannot jump ahead of every job already waiting, and so that
    /// no store is asked to keep a time outside its range.
    pub(crate) fn future_run_at(&self) -> Option<DateTime<Utc>> {
        self.run_at.filter(|at| *at > Utc::now())
    }
}

/// Refuses a time whose year is outside 0000–9999: RFC 3339 has four-digit years, and
/// PostgreSQL keeps nothing before 4713 BC, so an earlier one would fail there (and not on
/// SQLite) instead of here.
pub fn check_year(field: &str, at: &DateTime<Utc>) -> Result<()> {
    use chrono::Datelike;
    if !(0..=9999).contains(&at.year()) {
        return Err(Error::invalid(field, "the year must be from 0000 to 9999"));
    }
    Ok(())
}

/// Refuses a string that a store cannot keep: PostgreSQL's `text` and `jsonb` refuse the
/// NUL character. One check for both stores, so that they accept the same values.
pub fn check_text(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid(
            field,
            "must not contain the NUL character (\\u0000)",
        ));
    }
    Ok(())
}

/// The longest JSON number kept, in characters: numbers are kept exactly as sent, and a
/// longer one (thousands of digits) is no quantity anyone means, while PostgreSQL's
/// `numeric` refuses some of them and SQLite keeps them: refused, so both stores agree.
const MAX_NUMBER_CHARS: usize = 100;

/// Whether both stores keep `n` as sent: at most [`MAX_NUMBER_CHARS`], and within a
/// double's range, neither overflowing it nor underflowing to 0 (PostgreSQL's `numeric`
/// refuses `1e-16384`, which SQLite would keep as text).
fn storable_number(n: &serde_json::Number) -> bool {
    if n.is_i64() || n.is_u64() {
        return true; // at most 20 characters, and exact
    }
    let text = n.to_string();
    let Some(value) = n.as_f64().filter(|f| f.is_finite()) else {
        return false;
    };
    let mantissa = text.split(['e', 'E']).next().unwrap_or_default();
    let written_zero = mantissa
        .bytes()
        .all(|b| matches!(b, b'0' | b'.' | b'-' | b'+'));
    text.len() <= MAX_NUMBER_CHARS && (value != 0.0 || written_zero)
}

/// [`check_text`] over every key and string of a JSON value; numbers must be finite and
/// at most 100 characters long.
pub fn check_json(field: &str, value: &serde_json::Value) -> Result<()> {
    let mut refusal = None;
    json_leaves(value, &mut |leaf| {
        refusal = match leaf {
            JsonLeaf::Text(s) => check_text(field, s).err(),
            JsonLeaf::Number(n) if !storable_number(n) => Some(Error::invalid(
                field,
                "numbers must be at most 100 characters, within a double's range",
            )),
            JsonLeaf::Number(_) => None,
        };
        refusal.is_none()
    });
    refusal.map_or(Ok(()), Err)
}

/// A key, string or number inside a JSON value.
pub(crate) enum JsonLeaf<'a> {
    Text(&'a str),
    Number(&'a serde_json::Number),
}

/// Calls `f` on every key, string and number of `value` until it answers false; returns
/// whether it went through them all.
pub(crate) fn json_leaves<'a>(
    value: &'a serde_json::Value,
    f: &mut impl FnMut(JsonLeaf<'a>) -> bool,
) -> bool {
    use serde_json::Value;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        let go_on = match v {
            Value::String(s) => f(JsonLeaf::Text(s)),
            Value::Number(n) => f(JsonLeaf::Number(n)),
            Value::Array(items) => {
                stack.extend(items);
                true
            }
            Value::Object(map) => map.iter().all(|(k, item)| {
                stack.push(item);
                f(JsonLeaf::Text(k))
            }),
            Value::Null | Value::Bool(_) => true,
        };
        if !go_on {
            return false;
        }
    }
    true
}

/// Checks a job type or queue name: 1–100 characters of `[A-Za-z0-9_.:-]`.
pub fn check_name(field: &str, value: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
    if value.is_empty() || value.len() > 100 || !value.chars().all(ok_char) {
        return Err(Error::invalid(
            field,
            "must be 1 to 100 characters of A-Z a-z 0-9 _ . : -",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(job: NewJob) -> String {
        match job.validate() {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let job = NewJob::new("bulk_import", json!({}));
        assert!(job.validate().is_ok());
        assert_eq!(
            (job.queue.as_str(), job.priority, job.max_attempts),
            ("default", 5, 5)
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let ok = || NewJob::new("a.b:c-d_e", json!(null));
        assert_eq!(field_of(NewJob::new("", json!({}))), "type");
        assert_eq!(field_of(NewJob::new("has space", json!({}))), "type");
        assert_eq!(field_of(NewJob::new("x".repeat(101), json!({}))), "type");
        assert_eq!(field_of(ok().queue("q/1")), "queue");
        assert_eq!(field_of(ok().priority(10)), "priority");
        assert_eq!(field_of(ok().priority(-1)), "priority");
        assert_eq!(field_of(ok().max_attempts(0)), "max_attempts");
        assert_eq!(field_of(ok().timeout_seconds(0)), "timeout_seconds");
        assert_eq!(field_of(ok().unique_key("")), "unique_key");
        assert_eq!(field_of(ok().tags([""])), "tags");
        assert_eq!(field_of(ok().tags((0..21).map(|i| i.to_string()))), "tags");
        assert_eq!(
            field_of(ok().run_at(Utc::now()).delay(Duration::from_secs(1))),
            "run_at"
        );
        assert!(ok().priority(0).max_attempts(1000).validate().is_ok());
    }

    #[test]
    fn numbers_past_any_store_are_refused_and_ordinary_ones_kept() {
        assert!(check_json("payload", &json!([1, -2.5, 1e308, u64::MAX, i64::MIN])).is_ok());
        for zero in ["0", "-0", "0.0", "0e5", "0.000e-3"] {
            let v: serde_json::Value = serde_json::from_str(zero).unwrap();
            assert!(check_json("payload", &v).is_ok(), "{zero}");
        }
        let long = format!("1{}", "0".repeat(120));
        for text in ["1e400", "1e-16384", "-1e-400", long.as_str()] {
            // Kept as sent only with serde_json's arbitrary precision (the server's); without
            // it these do not parse, or become an ordinary double (1e120).
            let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                continue;
            };
            let spelled = v.to_string();
            if spelled == text {
                assert!(check_json("payload", &v).is_err(), "{text}");
            }
        }
    }

    #[test]
    fn typed_args_carry_their_type_and_defaults() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Report {
            id: u32,
        }
        impl JobArgs for Report {
            const TYPE: &'static str = "report";
            fn defaults(job: NewJob) -> NewJob {
                job.queue("reports").max_attempts(3)
            }
        }
        let job = NewJob::from_args(&Report { id: 7 }).unwrap();
        assert_eq!(job.job_type, "report");
        assert_eq!(job.payload, json!({"id": 7}));
        assert_eq!((job.queue.as_str(), job.max_attempts), ("reports", 3));
    }
}
