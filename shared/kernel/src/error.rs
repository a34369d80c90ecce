//! The one error type callers of the kernel see. Each variant maps to one HTTP status.

use crate::ports::StoreError;
use crate::schema::UpcastError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed or invalid input (HTTP 400).
    #[error("{message}")]
    InvalidInput { code: &'static str, message: String },
    /// The aggregate, version or route target does not exist (HTTP 404).
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// Optimistic concurrency: the stream was not at the expected version (HTTP 409).
    #[error("version conflict on {stream}: expected version {expected}, actual version {actual}")]
    Conflict {
        stream: String,
        expected: u64,
        actual: u64,
    },
    /// The idempotency key was first used with a different command (HTTP 422).
    #[error("idempotency key `{key}` was already used for a different command")]
    IdempotencyKeyReused { key: String },
    /// A domain rule refused the command (HTTP 422).
    #[error("{message}")]
    Rejected { code: &'static str, message: String },
    /// A stored event can't be brought to the current schema (HTTP 500): never skipped silently.
    #[error(transparent)]
    Schema(#[from] UpcastError),
    /// A stored event or state does not decode into the domain's types (HTTP 500).
    #[error("stored data does not decode: {0}")]
    Decode(String),
    /// The storage backend failed or is busy (HTTP 503 with `Retry-After`).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            code,
            message: message.into(),
        }
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound {
            code,
            message: message.into(),
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidInput { code, .. }
            | Error::NotFound { code, .. }
            | Error::Rejected { code, .. } => code,
            Error::Conflict { .. } => "version_conflict",
            Error::IdempotencyKeyReused { .. } => "idempotency_key_reused",
            Error::Schema(_) => "schema_error",
            Error::Decode(_) => "decode_error",
            Error::Store(StoreError::Invalid(_)) => "store_refused",
            Error::Store(StoreError::Corrupt(_)) => "store_corrupt",
            Error::Store(StoreError::Unavailable(_)) => "store_busy",
            Error::Store(_) => "store_unavailable",
        }
    }
}
