//! The library's one error type.

use crate::job::JobStatus;

/// What can go wrong when using Forklift. Callers match on the kind: `Invalid` is the
/// caller's input (answer 400), `NotFound` and `Conflict` are about the job's existence
/// and status (404, 409), `Database` is the store being unreachable or failing (503).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field of the input is invalid; nothing was written.
    #[error("invalid `{field}`: {message}")]
    Invalid { field: String, message: String },
    /// No such job for this tenant (another tenant's job is reported the same way).
    #[error("job not found")]
    NotFound,
    /// The job's status does not allow the operation.
    #[error("{message}")]
    Conflict { status: JobStatus, message: String },
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("migration failed: {0}")]
    Migration(String),
}

impl Error {
    /// The database could not be reached or stopped answering: the error says nothing
    /// about the request, and the same request may succeed once the database is back.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Error::Database(
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            )
        )
    }

    /// The database refused a value it was given, alike on both stores: data exceptions
    /// (PostgreSQL's SQLSTATE class 22: a character or a time it cannot store, a number out
    /// of range; SQLite's TOOBIG and MISMATCH), NOT NULL and CHECK violations, a trigger's
    /// refusal, and PostgreSQL's program limits (class 54).
    /// Sending the same value again fails again, so it is the caller's error (a 400), not
    /// the database's.
    pub fn is_refused_value(&self) -> bool {
        let Error::Database(sqlx::Error::Database(db)) = self else {
            return false;
        };
        let Some(code) = db.code() else {
            return false;
        };
        if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
            // Extended result codes: TOOBIG (18), MISMATCH (20), and of the constraint
            // errors those about a value: CHECK (275, such as a JSON column's
            // `json_valid`), NOTNULL (1299), TRIGGER (1811, a trigger's RAISE) and
            // DATATYPE (3091). Not UNIQUE or a key: those are about other rows.
            let code = code.parse::<i32>().unwrap_or(0);
            return matches!(code & 0xff, 18 | 20) || matches!(code, 275 | 1299 | 1811 | 3091);
        }
        // Also a trigger's plain RAISE (P0001), as SQLite's TRIGGER: a user's rule about
        // the value.
        code.starts_with("22")
            || matches!(code.as_ref(), "23502" | "23514" | "P0001")
            || code.starts_with("54")
    }

    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
