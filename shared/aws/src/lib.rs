//! Chronicle's ports on AWS: events and idempotency records in DynamoDB ([`DynamoEventStore`]),
//! read models in DynamoDB ([`DynamoReadModelStore`]), snapshots in S3 ([`S3SnapshotStore`]),
//! archived event segments in S3 ([`S3Archive`]), distribution through Kinesis
//! ([`KinesisPublisher`]) and data subjects' keys in a DynamoDB table of their own, optionally
//! wrapped with KMS ([`DynamoKeyStore`]). Each passes the same contract suite as its embedded
//! counterpart.
//!
//! Everything talks to AWS through the standard settings (`AWS_REGION`, credentials,
//! `AWS_ENDPOINT_URL` for a local endpoint), so the same code runs on moto, LocalStack or AWS.

mod anchors;
mod archive;
mod config;
mod events;
pub mod item;
pub mod keys;
pub mod metering;
mod outcome;
mod publisher;
mod read_models;
pub mod setup;
mod snapshots;
pub mod stream_records;
pub mod testing;

pub use anchors::{S3AnchorLog, ANCHOR_PARTITION};
pub use archive::S3Archive;
pub use config::{https_client, parse_retention, Clients, ConfigError, Settings};
pub use events::{DynamoEventStore, MAX_HOURS_PER_PAGE, MAX_TRANSACTION_ACTIONS};
pub use keys::DynamoKeyStore;
pub use publisher::KinesisPublisher;
pub use read_models::DynamoReadModelStore;
pub use snapshots::S3SnapshotStore;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::error::display::DisplayErrorContext;
use chronicle_kernel::StoreError;

/// An SDK error as a store error, with its whole cause chain (the SDK's `Display` alone says
/// only "service error"): [`StoreError::Unavailable`] when it is transient (throttled, timed
/// out, a 5xx), so callers answer 503 with `Retry-After`; else [`StoreError::Backend`].
pub(crate) fn backend<E: Failure>(what: &str, e: E) -> StoreError {
    let text = format!("{what}: {}", DisplayErrorContext(&e));
    if e.transient() {
        StoreError::Unavailable(text)
    } else {
        StoreError::Backend(text)
    }
}

/// Error codes AWS services throttle with (the SDK's standard retry treats them so too).
pub(crate) const THROTTLING_CODES: [&str; 9] = [
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TransactionInProgressException",
    "SlowDown",
    "LimitExceededException",
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
];

/// Errors [`backend`] takes: whether one is worth retrying later.
pub(crate) trait Failure: std::error::Error {
    fn transient(&self) -> bool {
        false
    }
}

impl Failure for serde_json::Error {}

impl<E: ProvideErrorMetadata + std::error::Error + 'static> Failure for SdkError<E, HttpResponse> {
    fn transient(&self) -> bool {
        match self {
            // No answer (a timeout, a dropped connection) or a cut-off one: after the SDK's
            // own retries, still nothing that says the request is wrong.
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(ctx) => {
                matches!(ctx.raw().status().as_u16(), 500 | 502 | 503 | 504)
                    || ctx
                        .err()
                        .code()
                        .is_some_and(|c| THROTTLING_CODES.contains(&c))
            }
            _ => false,
        }
    }
}
