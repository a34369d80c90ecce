//! Appending and reading streams, and the two whole-store reads every back end has: listing
//! streams and the audit feed by recorded time.

use crate::envelope::{EventEnvelope, StreamId};
use crate::error::{AppendError, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The outcome of a command, kept under its idempotency key so a repeat returns it unchanged,
/// until `expires_at`: from then on the key is free again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub key: String,
    /// Hash of what the command was (aggregate and body): a reused key with another command differs.
    pub fingerprint: String,
    pub stream: StreamId,
    pub response: Value,
    #[serde(with = "crate::envelope::rfc3339")]
    pub recorded_at: DateTime<Utc>,
    /// When the record stops counting, a whole second ([`IdempotencyRecord::expiry`]): the
    /// kernel sets it, so every store expires a record at the same moment.
    #[serde(with = "crate::envelope::rfc3339")]
    pub expires_at: DateTime<Utc>,
}

impl IdempotencyRecord {
    /// `recorded_at + retention`, rounded up to a whole second: DynamoDB's TTL attribute holds
    /// epoch seconds, and every store keeps the same value (a record lives at least `retention`).
    pub fn expiry(recorded_at: DateTime<Utc>, retention: std::time::Duration) -> DateTime<Utc> {
        let end = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|r| recorded_at.checked_add_signed(r))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let secs = end
            .timestamp()
            .saturating_add(i64::from(end.timestamp_subsec_nanos() > 0));
        // At the end of time the second can't be rounded up: rounded down instead.
        DateTime::from_timestamp(secs, 0)
            .or_else(|| DateTime::from_timestamp(end.timestamp(), 0))
            .unwrap_or(end)
    }

    /// [`IdempotencyRecord::expires_at`] in epoch seconds, rounded up (the kernel's are whole
    /// seconds already): what stores keep and compare.
    pub fn expires_at_secs(&self) -> i64 {
        let t = &self.expires_at;
        t.timestamp()
            .saturating_add(i64::from(t.timestamp_subsec_nanos() > 0))
    }

    /// Whether the record still answers for its key at `now`: until its expiry, exclusive.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }
}

/// All events of one command, appended atomically iff the stream is at `expected_version`.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub stream: StreamId,
    pub expected_version: u64,
    /// Versions `expected_version + 1 ..`, in order.
    pub events: Vec<EventEnvelope>,
    /// Stored with the events. Its key is taken (the append fails with
    /// [`AppendError::DuplicateIdempotencyKey`]) while a stored record under it is live at
    /// this record's `recorded_at`; an expired one is replaced, deleted or not.
    pub idempotency: Option<IdempotencyRecord>,
    /// Each event's stored text as sealed ([`crate::chain::hash::seal_stored`]), which a store may
    /// write instead of rendering the envelopes again; empty when the caller has none.
    pub stored: Vec<crate::chain::hash::StoredText>,
    /// The caller read or wrote `expected_version` of this stream, so that version exists and a
    /// store may skip checking it: appending after a version that does not exist would leave a
    /// gap, and a store that can't check it in the same write (DynamoDB's is a transaction) saves
    /// the check when the caller knows. False: the store checks.
    pub expected_known: bool,
}

/// Which part of a stream to read; versions are inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRange {
    pub from_version: u64,
    pub to_version: Option<u64>,
    pub limit: Option<usize>,
}

impl ReadRange {
    pub fn all() -> Self {
        Self::from(1)
    }
    pub fn from(from_version: u64) -> Self {
        Self {
            from_version: from_version.max(1),
            to_version: None,
            limit: None,
        }
    }
    pub fn to(mut self, to_version: u64) -> Self {
        self.to_version = Some(to_version);
        self
    }
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The versions this range asks of a stream whose head is at `head`, both ends included
    /// (`from > to` when none).
    pub fn versions(&self, head: u64) -> (u64, u64) {
        let from = self.from_version.max(1);
        let to = self.to_version.unwrap_or(u64::MAX).min(head);
        match self.limit {
            Some(0) => (from, 0),
            Some(l) => (from, to.min(from.saturating_add(l as u64 - 1))),
            None => (from, to),
        }
    }
}

/// Streams: what commands need. Append with optimistic concurrency, read back, and the
/// idempotency records stored with appends.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Stores all of the request's events or none of them. By reference: the caller keeps
    /// the events to answer with, and an adapter copies only what it stores.
    async fn append(&self, request: &AppendRequest) -> Result<(), AppendError>;
    /// The stream's events in version order, as stored (not upcast).
    async fn read_stream(
        &self,
        stream: &StreamId,
        range: ReadRange,
    ) -> Result<Vec<EventEnvelope>, StoreError>;
    /// The stream's latest version, 0 if it has no events.
    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError>;
    /// The live record under `key` ([`IdempotencyRecord::is_live`] now), `None` if there is
    /// none. A store may keep expired records a while (DynamoDB's TTL deletes lazily) but
    /// never returns one.
    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError>;
}

/// Every stream in the store, page by page: for audits over the whole store (`verify --all`),
/// rebuilds and the archiver, not hot paths.
#[async_trait]
pub trait StreamListing: Send + Sync + 'static {
    /// One page of the store's streams, in an order of the store's choosing; `cursor` is the
    /// previous page's `next`.
    async fn list_streams(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<StreamPage, StoreError>;
}

/// Events across streams by the time they were recorded: the global audit feed.
#[async_trait]
pub trait RecordedFeed: Send + Sync + 'static {
    /// Events recorded from `from` to `to` (both inclusive), across streams, in
    /// [`recorded_order`], as stored (not upcast). At most `limit` events, all after `after`
    /// (a previous page's `next`, opaque to callers). A malformed `after` or a `limit` of 0 is
    /// [`StoreError::Invalid`].
    ///
    /// A page may hold fewer than `limit` events, even none, and still have a `next`: a store
    /// may bound the work of one call. `next` is `None` once the range is read to its end.
    async fn read_recorded(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<String>,
        limit: usize,
    ) -> Result<RecordedPage, StoreError>;
}

/// What the registry ([`crate::Chronicle`]) holds: streams, the listing and the audit feed.
/// Every event store has all three; implemented for each that does.
pub trait EventLog: EventStore + StreamListing + RecordedFeed {}
impl<T: EventStore + StreamListing + RecordedFeed + ?Sized> EventLog for T {}

/// A page of [`RecordedFeed::read_recorded`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordedPage {
    pub events: Vec<EventEnvelope>,
    /// Where the next page starts; `None` when the range has been read to its end.
    pub next: Option<String>,
}

/// The audit feed's order, total and stable: recorded time, then aggregate type, aggregate id
/// (compared bytewise, as the stores compare text) and version.
pub fn recorded_order(a: &EventEnvelope, b: &EventEnvelope) -> std::cmp::Ordering {
    (
        a.recorded_at,
        a.aggregate_type.as_bytes(),
        a.aggregate_id.as_bytes(),
        a.version,
    )
        .cmp(&(
            b.recorded_at,
            b.aggregate_type.as_bytes(),
            b.aggregate_id.as_bytes(),
            b.version,
        ))
}

/// A page of [`StreamListing::list_streams`]. A store may name a stream on two pages; callers
/// that must see each once deduplicate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamPage {
    pub streams: Vec<StreamId>,
    /// `None` on the last page.
    pub next: Option<String>,
}
