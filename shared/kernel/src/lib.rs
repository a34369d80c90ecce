//! Chronicle's event-sourcing kernel. It knows nothing of AWS or SQLite: storage comes in
//! through the ports in [`ports`], domains through [`aggregate::Aggregate`].

pub mod admin;
pub mod aggregate;
pub mod anchor;
pub mod archive;
pub mod audit;
mod cache;
pub mod chain;
pub mod command;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod personal;
pub mod ports;
pub mod projection;
pub mod publishing;
mod raw;
pub mod reaction;
pub mod rebuild;
pub mod replay;
pub mod schema;
pub mod service;

/// The archive in use, by its path from before `archive/` held it all: the merged event store,
/// the archiver and the parallel replay.
pub mod archived {
    pub use crate::archive::archiver::{
        run_archiver, run_archiver_expiring, ArchivePolicy, ArchiveReport, ArchiverOptions,
    };
    pub use crate::archive::replay::{replay_archived, ReplayCounts};
    pub use crate::archive::store::ArchivedEventStore;
}

pub use aggregate::{Aggregate, DomainError, DomainEvent, Refusal};
pub use command::{
    CommandHandler, CommandOptions, CommandOutcome, CommandResult, HandlerConfig, Origin,
    DEFAULT_IDEMPOTENCY_RETENTION,
};
pub use domain::Domain;
pub use envelope::{EventEnvelope, Metadata, StreamId};
pub use error::Error;
pub use personal::SubjectOf;
pub use ports::*;
pub use projection::{
    doc_write, fold_event, index_values, Projection, ProjectionError, ProjectionRunner, Rebuilt,
    StateProjection,
};
pub use publishing::PublishRunner;
pub use reaction::{Dispatch, Reaction, ReactionRunner};
pub use schema::{EventSchema, UpcastError};
pub use schemars;
pub use service::{
    AggregateApi, AggregateService, Chronicle, ChronicleBuilder, Forgotten, StartRebuildError,
    StateView,
};

/// Aggregate ids: 1 to 128 characters from `[A-Za-z0-9._:-]`, safe as a key everywhere.
pub fn validate_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > 128 {
        return Err(Error::invalid(
            "invalid_id",
            format!(
                "an id has 1 to 128 characters, this one has {}",
                id.chars().count()
            ),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(Error::invalid(
            "invalid_id",
            format!("an id may contain only A-Z, a-z, 0-9, '.', '_', ':' and '-', not {c:?}"),
        ));
    }
    Ok(())
}
