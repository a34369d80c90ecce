//! Chronicle's ports on AWS: events and idempotency records in DynamoDB ([`DynamoEventStore`]),
//! read models in DynamoDB ([`DynamoReadModelStore`]), snapshots in S3 ([`S3SnapshotStore`]),
//! archived event segments in S3 ([`S3Archive`]) and distribution through Kinesis
//! ([`KinesisPublisher`]). Each passes the same contract suite as its embedded counterpart.
//!
//! Everything talks to AWS through the standard settings (`AWS_REGION`, credentials,
//! `AWS_ENDPOINT_URL` for a local endpoint), so the same code runs on moto, LocalStack or AWS.

mod archive;
mod config;
mod events;
pub mod item;
mod publisher;
mod read_models;
pub mod setup;
mod snapshots;
pub mod testing;

pub use archive::S3Archive;
pub use config::{parse_retention, Clients, ConfigError, Settings};
pub use events::{DynamoEventStore, MAX_HOURS_PER_PAGE, MAX_TRANSACTION_ACTIONS};
pub use publisher::KinesisPublisher;
pub use read_models::DynamoReadModelStore;
pub use snapshots::S3SnapshotStore;

use aws_smithy_types::error::display::DisplayErrorContext;
use chronicle_kernel::StoreError;

/// An SDK error as a backend failure, with its whole cause chain (the SDK's `Display` alone
/// says only "service error").
pub(crate) fn backend<E: std::error::Error>(what: &str, e: E) -> StoreError {
    StoreError::Backend(format!("{what}: {}", DisplayErrorContext(e)))
}
