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
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
