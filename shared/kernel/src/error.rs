//! Every error type of the kernel, in one place below everything else, so any module can name
//! any of them without importing the module that raises it. The ports', the schema's and the
//! runners' errors are re-exported where they were defined first.

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The backend is throttling or did not answer in time: transient, worth retrying after
    /// a pause (HTTP 503 with `Retry-After`).
    #[error("storage backend is busy or did not answer in time; retry shortly: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("request refused by the store: {0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// The optimistic-concurrency check failed: someone else appended first.
    #[error("version conflict on {stream}: expected version {expected}, actual {actual}")]
    Conflict {
        stream: String,
        expected: u64,
        actual: u64,
    },
    /// The command's idempotency key is already recorded: nothing was appended.
    #[error("idempotency key `{0}` is already recorded")]
    DuplicateIdempotencyKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why some events were not published. `failed` holds indexes into the published slice, in
/// order; every event of an aggregate after its first failed one is among them, so a retry
/// from the first failure keeps each aggregate's order.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{} of {total} events not published: {reason}", failed.len())]
pub struct PublishError {
    pub total: usize,
    pub failed: Vec<usize>,
    pub reason: String,
}

/// Why a stored event can't be brought to the current schema.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpcastError {
    #[error("unknown event type `{event_type}` (stored as {stream} v{version})")]
    UnknownEventType {
        event_type: String,
        stream: String,
        version: u64,
    },
    #[error("event `{event_type}` has schema version {found}, newer than the {current} this build knows (stored as {stream} v{version})")]
    NewerSchemaVersion {
        event_type: String,
        found: u32,
        current: u32,
        stream: String,
        version: u64,
    },
    #[error("no upcaster for `{event_type}` from schema version {from}")]
    MissingUpcaster { event_type: String, from: u32 },
    #[error("upcasting `{event_type}` from schema version {from} failed: {reason}")]
    Failed {
        event_type: String,
        from: u32,
        reason: String,
    },
}

/// Why a projection stopped: an event it could not fold, or the store.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("projection `{projection}` failed at feed position {position} ({stream} v{version}): {reason}")]
    Event {
        projection: String,
        position: u64,
        stream: String,
        version: u64,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why the publish runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum PublishRunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// An event that can't be brought to the current schema: the runner stalls on it.
    #[error(transparent)]
    Event(#[from] Error),
}

/// The one error type callers of the kernel see. Each variant maps to one HTTP status.
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
