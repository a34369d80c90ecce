//! The ports: what the kernel needs from storage, one small trait per job. Each has an embedded
//! and an AWS adapter where the back end can do the job, and each adapter passes the same
//! contract suite (`chronicle-testkit`). A store that cannot do a job does not implement its
//! trait: there are no "not supported" defaults.
//!
//! | trait | methods | embedded | DynamoDB |
//! | --- | --- | --- | --- |
//! | [`EventStore`] | append, read_stream, stream_version, idempotency_record | yes | yes |
//! | [`StreamListing`] | list_streams | yes | yes |
//! | [`RecordedFeed`] | read_recorded | yes | yes |
//! | [`StoredHashes`] | hashes_at | yes (bulk) | yes (by reads) |
//! | [`BulkVerify`] | verify_all_chains | yes | no |
//! | [`Expiry`] | expire, unexpired | no (append-only) | yes (TTL) |
//! | [`CopyAudit`] | verify_copies, verify_stream_copies | via [`crate::archived::ArchivedEventStore`] | same |
//! | [`EventFeed`] | read_feed, feed_head, wait_for_events | yes | no (DynamoDB Streams) |
//! | [`BulkReplay`] | read_tails, replay_raw | yes | no |
//! | [`SnapshotStore`] | latest, save | yes | S3 |
//! | [`ReadModelStore`] | active_generation, get, find, apply, checkpoint, activate, drop_generation | yes | yes |
//! | [`Publisher`] | publish | JSON lines | Kinesis |
//! | [`StreamHeads`] | heads | one query | one Scan |
//! | [`AnchorLog`] | append, anchors, heads | an append-only file | S3 under Object Lock |
//! | [`KeyStore`] | key_for_writing, keys, forget | a separate SQLite file | a separate table (keys optionally KMS-wrapped) |
//! | [`Outbound`] | call | the domain's adapters (a reaction's calls out) | same |
//!
//! [`EventLog`] bundles the first three: what the registry holds.

mod anchors;
mod copies;
mod events;
mod feed;
mod keys;
mod outbound;
mod publisher;
mod read_models;
mod snapshots;

pub use crate::error::{AppendError, PublishError, StoreError};
pub use crate::raw::{RawBatch, RawEvent};
pub use anchors::{AnchorLog, StreamHeads};
pub use copies::{hashes_by_reads, BulkVerify, CopyAudit, Expiry, StoredHashes};
pub use events::{
    recorded_order, AppendRequest, EventLog, EventStore, IdempotencyRecord, ReadRange,
    RecordedFeed, RecordedPage, StreamListing, StreamPage,
};
pub use feed::{BulkReplay, EventFeed, FeedEvent};
pub use keys::{DataKey, Forgetting, KeyStore, SubjectKey};
pub use outbound::{Outbound, OutboundError};
pub use publisher::Publisher;
pub use read_models::{Doc, DocWrite, ModelRef, ReadModelStore};
pub use snapshots::{Snapshot, SnapshotStore};
