//! The ports: what the kernel needs from storage. Each has an embedded and an AWS adapter,
//! and each adapter must pass the same contract suite (`chronicle-testkit`).

use crate::envelope::{EventEnvelope, StreamId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::error::{AppendError, PublishError, StoreError};
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
    /// One page of the store's streams, in an order of the store's choosing; `cursor` is the
    /// previous page's `next`. For audits over the whole store (`verify --all`), not hot paths.
    async fn list_streams(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<StreamPage, StoreError>;
    /// A bulk path for verifying every stream's hash chain, each held to its latest snapshot's
    /// recorded head where the store keeps snapshots too; `progress` gets streams done so far.
    /// `None` (the default): no bulk path, and the kernel verifies stream by stream through
    /// `list_streams` and `read_stream`, which must find the same breaks.
    async fn verify_all_chains(
        &self,
        _progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Option<Result<crate::chain::check::VerifyReport, StoreError>> {
        None
    }
    /// Marks hot copies of archived events to expire at `at` (a DynamoDB TTL), each only if
    /// its stored hash is the one given, which is the archived copy's. Returns how many were
    /// marked. Nothing is deleted by this call, ever. The default keeps hot copies for good
    /// (the embedded store is append-only) and marks none.
    async fn expire(
        &self,
        _stream: &StreamId,
        _events: &[(u64, String)],
        _at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// The stored hash of each (stream, version), `None` where the store doesn't hold that
    /// event: how copies kept elsewhere (an archive) are held to the store's chain.
    async fn hashes_at(&self, at: &[(StreamId, u64)]) -> Result<Vec<Option<String>>, StoreError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        stream::iter(at.to_vec())
            .map(|(s, v)| async move {
                let e = self.read_stream(&s, ReadRange::from(v).to(v)).await?;
                Ok::<_, StoreError>(e.into_iter().next().map(|e| e.hash))
            })
            .buffered(16)
            .try_collect()
            .await
    }
    /// The stream's hot events up to `through` not yet marked to expire, as (version, hash):
    /// what an interrupted archiver run left unmarked. None by default (no expiry).
    async fn unexpired(
        &self,
        _stream: &StreamId,
        _through: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        Ok(Vec::new())
    }
    /// Checks copies of events kept beside the store's own (an archive): their chains, and that
    /// they agree with the store. Breaks found; none by default (no copies).
    async fn verify_copies(
        &self,
        _progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Vec<crate::chain::check::ChainBreak>, StoreError> {
        Ok(Vec::new())
    }
    /// [`EventStore::verify_copies`] for one stream.
    async fn verify_stream_copies(
        &self,
        _stream: &StreamId,
    ) -> Result<Option<crate::chain::check::ChainBreak>, StoreError> {
        Ok(None)
    }
    /// Events recorded from `from` to `to` (both inclusive), across streams, in
    /// [`recorded_order`], as stored (not upcast): the global audit feed. At most `limit`
    /// events, all after `after` (a previous page's `next`, opaque to callers). A malformed
    /// `after` or a `limit` of 0 is [`StoreError::Invalid`].
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

/// A page of [`EventStore::read_recorded`].
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

/// A page of [`EventStore::list_streams`]. A store may name a stream on two pages; callers
/// that must see each once deduplicate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamPage {
    pub streams: Vec<StreamId>,
    /// `None` on the last page.
    pub next: Option<String>,
}

/// An event with its position in the store's global order.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedEvent {
    pub position: u64,
    pub event: EventEnvelope,
}

/// A stored event reduced to what a bulk replay needs; `data` is the stored JSON text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent<'a> {
    pub aggregate_id: &'a str,
    pub version: u64,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub data: &'a str,
}

/// A batch of raw events sharing one text buffer: two allocations per batch instead of three
/// per event, which is most of the cost of a bulk replay.
#[derive(Clone, Debug, Default)]
pub struct RawBatch {
    text: String,
    rows: Vec<RawRow>,
}

#[derive(Clone, Debug)]
struct RawRow {
    version: u64,
    schema_version: u32,
    id_end: usize,
    type_end: usize,
    data_end: usize,
}

impl RawBatch {
    pub fn with_capacity(events: usize) -> Self {
        Self {
            text: String::with_capacity(events * 96),
            rows: Vec::with_capacity(events),
        }
    }

    pub fn push(&mut self, event: RawEvent<'_>) {
        self.text.push_str(event.aggregate_id);
        let id_end = self.text.len();
        self.text.push_str(event.event_type);
        let type_end = self.text.len();
        self.text.push_str(event.data);
        self.rows.push(RawRow {
            version: event.version,
            schema_version: event.schema_version,
            id_end,
            type_end,
            data_end: self.text.len(),
        });
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Keeps the first `len` events (undoes pushes past them).
    pub fn truncate(&mut self, len: usize) {
        self.rows.truncate(len);
        let end = self.rows.last().map_or(0, |r| r.data_end);
        self.text.truncate(end);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = RawEvent<'_>> {
        let mut start = 0;
        self.rows.iter().map(move |r| {
            let e = RawEvent {
                aggregate_id: &self.text[start..r.id_end],
                version: r.version,
                event_type: &self.text[r.id_end..r.type_end],
                schema_version: r.schema_version,
                data: &self.text[r.type_end..r.data_end],
            };
            start = r.data_end;
            e
        })
    }
}

/// The store's ordered feed of all events, which projections follow with a checkpoint.
#[async_trait]
pub trait EventFeed: Send + Sync + 'static {
    /// Up to `limit` events with positions greater than `after`, in position order.
    async fn read_feed(&self, after: u64, limit: usize) -> Result<Vec<FeedEvent>, StoreError>;
    /// The position of the newest event, 0 if none.
    async fn feed_head(&self) -> Result<u64, StoreError>;
    /// Resolves once the feed may hold events after `after`, or when `timeout` passes
    /// (writers in other processes can't always signal, so callers poll too).
    async fn wait_for_events(&self, after: u64, timeout: std::time::Duration);
    /// Every event of `aggregate_type` past `after[aggregate_id]` (all of a stream `after`
    /// doesn't name), stream by stream in version order: what a replay from the archive still
    /// has to read from the hot store.
    async fn read_tails(
        &self,
        aggregate_type: &str,
        after: Arc<HashMap<String, u64>>,
    ) -> Result<RawBatch, StoreError>;
    /// Every event of `aggregate_type` in feed order, in batches, read concurrently with the
    /// consumer: the bulk path for replaying whole aggregates.
    fn replay_raw(
        &self,
        aggregate_type: &str,
        batch: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<RawBatch, StoreError>>;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub stream: StreamId,
    pub version: u64,
    /// The aggregate's `STATE_VERSION` when the snapshot was taken.
    pub state_version: u32,
    pub state: Value,
    #[serde(with = "crate::envelope::rfc3339")]
    pub taken_at: DateTime<Utc>,
    /// The hash of the event at `version`: the chain head the state was folded to. `None` on
    /// snapshots taken before chains existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_head: Option<String>,
}

#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The newest snapshot, or the newest at or before `max_version` when given.
    async fn latest(
        &self,
        stream: &StreamId,
        max_version: Option<u64>,
    ) -> Result<Option<Snapshot>, StoreError>;
    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError>;
}

/// A read model: a projection's documents, in one generation. Rebuilds write a new generation
/// while the active one keeps serving, then switch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelRef {
    pub projection: String,
    /// `None`: whichever generation is active.
    pub generation: Option<u64>,
}

impl ModelRef {
    pub fn active(projection: &str) -> Self {
        Self {
            projection: projection.to_owned(),
            generation: None,
        }
    }
    pub fn generation(projection: &str, generation: u64) -> Self {
        Self {
            projection: projection.to_owned(),
            generation: Some(generation),
        }
    }
}

/// A read-model document; `version` is the last applied version of its aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub key: String,
    pub version: u64,
    pub body: Value,
}

/// Writes `body` under `key` only if the stored document's version is lower than `version`.
#[derive(Clone, Debug, PartialEq)]
pub struct DocWrite {
    pub key: String,
    pub version: u64,
    pub body: Value,
    /// (field, value) pairs the document can be found by.
    pub index: Vec<(String, String)>,
}

#[async_trait]
pub trait ReadModelStore: Send + Sync + 'static {
    /// The generation reads go to; 1 before any rebuild.
    async fn active_generation(&self, projection: &str) -> Result<u64, StoreError>;
    async fn get(&self, model: &ModelRef, key: &str) -> Result<Option<Doc>, StoreError>;
    async fn find(
        &self,
        model: &ModelRef,
        field: &str,
        value: &str,
        limit: usize,
    ) -> Result<Vec<Doc>, StoreError>;
    /// Applies each write whose version is newer than the stored one, and (when given) moves the
    /// model's checkpoint, as one unit where the backend allows it. Returns how many were applied.
    async fn apply(
        &self,
        model: &ModelRef,
        writes: Vec<DocWrite>,
        checkpoint: Option<u64>,
    ) -> Result<usize, StoreError>;
    /// The feed position this model has applied up to, 0 if none.
    async fn checkpoint(&self, model: &ModelRef) -> Result<u64, StoreError>;
    /// Makes `generation` the one reads go to.
    async fn activate(&self, projection: &str, generation: u64) -> Result<(), StoreError>;
    /// Removes a generation's documents (never the active one).
    async fn drop_generation(&self, projection: &str, generation: u64) -> Result<(), StoreError>;
}

/// Distributes events (upcast to the current schema) to other services: Kinesis on AWS, a
/// JSON-lines log on the embedded default. At least once; consumers deduplicate on
/// (aggregate_type, aggregate_id, version).
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `events`, each aggregate's in the order given.
    async fn publish(&self, events: &[EventEnvelope]) -> Result<(), PublishError>;
}
