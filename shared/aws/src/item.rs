//! How events and idempotency records are laid out as DynamoDB items. The stream-driven
//! functions decode the same layout from stream records' `NewImage`.

use chronicle_kernel::envelope::{format_timestamp, parse_timestamp};
use chronicle_kernel::{EventEnvelope, IdempotencyRecord, Metadata, StoreError, StreamId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Partition key attribute of the events table: `{aggregate_type}#{aggregate_id}`.
pub const PK: &str = "stream";
/// Sort key attribute: the version (number); idempotency records use 0.
pub const SK: &str = "version";
pub const IDEMPOTENCY_PREFIX: &str = "idempotency#";
/// The event's chain hash attribute.
pub const HASH: &str = "hash";
/// The table's TTL attribute (epoch seconds; DynamoDB allows one per table): set on event items
/// already archived, by `Expiry::expire`, and on every idempotency record, from its
/// expiry. DynamoDB deletes the item some time (up to days) after it passes.
pub const EXPIRES_AT: &str = "expires_at";
/// An idempotency item's recorded time (RFC 3339, fixed width: compared as text).
pub const RECORDED_AT: &str = "recorded_at";

/// The global secondary index of event items by recorded time: the audit feed. Sparse:
/// idempotency records have neither of its keys, so they are not in it.
pub const TIME_INDEX: &str = "by_time";
/// Partition key of [`TIME_INDEX`]: `{hour}#{shard}`, e.g. `2026-11-26T16#7`.
pub const TIME_BUCKET: &str = "tb";
/// Sort key of [`TIME_INDEX`]: `{recorded_at}#{aggregate_type}#{aggregate_id}#{version:020}`.
/// `#` sorts before every character an id may hold, so text order is the kernel's
/// `recorded_order`.
pub const TIME_KEY: &str = "ts";
/// The partitions one hour's events are spread over, by stream: one hour's writes would
/// otherwise all go to one GSI partition (about 1,000 writes a second at most), throttling
/// the table's writes with it. A read of an hour queries every shard and merges them.
pub const TIME_SHARDS: u32 = 16;

pub fn stream_key(stream: &StreamId) -> String {
    format!("{}#{}", stream.aggregate_type, stream.aggregate_id)
}

pub fn idempotency_key(key: &str) -> String {
    format!("{IDEMPOTENCY_PREFIX}{key}")
}

/// The start of the hour `t` falls in.
pub fn hour_of(t: &DateTime<Utc>) -> DateTime<Utc> {
    let secs = t.timestamp().div_euclid(3600) * 3600;
    DateTime::from_timestamp(secs, 0).unwrap_or(*t)
}

/// The hour part of a [`TIME_BUCKET`], e.g. `2026-11-26T16`.
pub fn hour_label(hour: &DateTime<Utc>) -> String {
    hour.format("%Y-%m-%dT%H").to_string()
}

/// The [`TIME_BUCKET`] of `shard` in the hour labelled `hour`.
pub fn time_bucket(hour: &str, shard: u32) -> String {
    format!("{hour}#{shard}")
}

/// A stream's shard: FNV-1a of its key, a hash that never changes between builds or
/// platforms (a stored item's bucket must be found again by every later reader).
pub fn shard_of(stream_key: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in stream_key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % TIME_SHARDS
}

/// An event's [`TIME_KEY`].
pub fn time_key(e: &EventEnvelope) -> String {
    format!(
        "{}#{}#{}#{:020}",
        format_timestamp(&e.recorded_at),
        e.aggregate_type,
        e.aggregate_id,
        e.version
    )
}

/// One event, one item. `data` is the event's JSON text, kept byte for byte.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventItem {
    pub stream: String,
    pub version: u64,
    pub event_id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub schema_version: u32,
    pub data: String,
    #[serde(default)]
    pub metadata: Metadata,
    pub recorded_at: String,
    /// The chain hash (kernel `chain`); absent on events stored before chains.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// The keys of [`TIME_INDEX`]; absent on events stored before it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tb: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ts: String,
}

impl EventItem {
    pub fn from_envelope(e: &EventEnvelope) -> Self {
        let stream = stream_key(&e.stream());
        Self {
            tb: time_bucket(&hour_label(&hour_of(&e.recorded_at)), shard_of(&stream)),
            ts: time_key(e),
            stream,
            version: e.version,
            event_id: e.event_id.to_string(),
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            data: e.data.to_string(),
            metadata: e.metadata.clone(),
            recorded_at: format_timestamp(&e.recorded_at),
            hash: e.hash.clone(),
        }
    }

    pub fn into_envelope(self) -> Result<EventEnvelope, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("{} v{} {what}: {e}", self.stream, self.version))
        };
        Ok(EventEnvelope {
            event_id: self.event_id.parse().map_err(|e| corrupt("event_id", &e))?,
            data: serde_json::from_str(&self.data).map_err(|e| corrupt("data", &e))?,
            recorded_at: parse_timestamp(&self.recorded_at)
                .map_err(|e| corrupt("recorded_at", &e))?,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            version: self.version,
            event_type: self.event_type,
            schema_version: self.schema_version,
            metadata: self.metadata,
            hash: self.hash,
        })
    }
}

/// A command's idempotency record: partition `idempotency#{key}`, version 0.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdempotencyItem {
    pub stream: String,
    pub version: u64,
    pub key: String,
    pub fingerprint: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The command's response as JSON text.
    pub response: String,
    pub recorded_at: String,
    /// [`EXPIRES_AT`]: epoch seconds. Absent on records stored before records expired, which
    /// count until the default retention after `recorded_at` ([`legacy_expiry`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The id and version of the first event of the command this record claims the key for
    /// (written before the events; see `events.rs`). Absent on records written in one
    /// transaction with their events, which are stored whenever the record is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_version: Option<u64>,
}

/// The attribute holding a claim's first event id.
pub const CLAIM_ID: &str = "claim_id";

/// The expiry of a record stored without one: the kernel's default retention after it was
/// recorded, as the embedded store fills in for its old rows.
pub fn legacy_expiry(recorded_at: DateTime<Utc>) -> DateTime<Utc> {
    IdempotencyRecord::expiry(recorded_at, chronicle_kernel::DEFAULT_IDEMPOTENCY_RETENTION)
}

impl IdempotencyItem {
    /// The record as a claim for the command whose first event is `first`.
    pub fn claiming(r: &IdempotencyRecord, first: &EventEnvelope) -> Self {
        Self {
            claim_id: Some(first.event_id.to_string()),
            claim_version: Some(first.version),
            ..Self::from_record(r)
        }
    }

    pub fn from_record(r: &IdempotencyRecord) -> Self {
        Self {
            claim_id: None,
            claim_version: None,
            stream: idempotency_key(&r.key),
            version: 0,
            key: r.key.clone(),
            fingerprint: r.fingerprint.clone(),
            aggregate_type: r.stream.aggregate_type.clone(),
            aggregate_id: r.stream.aggregate_id.clone(),
            response: r.response.to_string(),
            recorded_at: format_timestamp(&r.recorded_at),
            expires_at: Some(r.expires_at_secs()),
        }
    }

    pub fn into_record(self) -> Result<IdempotencyRecord, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("idempotency record {}: {what}: {e}", self.key))
        };
        let recorded_at =
            parse_timestamp(&self.recorded_at).map_err(|e| corrupt("recorded_at", &e))?;
        let expires_at = match self.expires_at {
            Some(s) => DateTime::from_timestamp(s, 0)
                .ok_or_else(|| corrupt("expires_at", &format!("{s} is out of range")))?,
            None => legacy_expiry(recorded_at),
        };
        Ok(IdempotencyRecord {
            response: serde_json::from_str(&self.response).map_err(|e| corrupt("response", &e))?,
            recorded_at,
            expires_at,
            stream: StreamId::new(self.aggregate_type, self.aggregate_id),
            key: self.key,
            fingerprint: self.fingerprint,
        })
    }
}

/// What a stream record of the events table holds.
#[derive(Debug)]
pub enum StoredItem {
    Event(Box<EventEnvelope>),
    /// An idempotency record (or another non-event item): nothing for consumers.
    Other,
}

/// Decodes an item of the events table (from a query or a stream record's `NewImage`).
pub fn decode_item<I>(item: I) -> Result<StoredItem, StoreError>
where
    I: Into<serde_dynamo::Item>,
{
    let item: serde_dynamo::Item = item.into();
    let is_event = matches!(item.get("stream"), Some(serde_dynamo::AttributeValue::S(s)) if !s.starts_with(IDEMPOTENCY_PREFIX));
    if !is_event {
        return Ok(StoredItem::Other);
    }
    let ev: EventItem = serde_dynamo::from_item(item)
        .map_err(|e| StoreError::Corrupt(format!("event item does not decode: {e}")))?;
    Ok(StoredItem::Event(Box::new(ev.into_envelope()?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_kernel::envelope::parse_timestamp;

    fn at(t: &str) -> DateTime<Utc> {
        parse_timestamp(t).expect("a time")
    }

    #[test]
    fn buckets_are_hours_and_shards_are_stable() {
        assert_eq!(
            hour_label(&hour_of(&at("2026-11-26T16:59:59.999999Z"))),
            "2026-11-26T16"
        );
        assert_eq!(
            hour_of(&at("2026-11-26T17:00:00Z")),
            at("2026-11-26T17:00:00Z")
        );
        // Fixed values: a changed hash would hide every stored event from the feed.
        assert_eq!(shard_of("widgets#w-1"), shard_of("widgets#w-1"));
        assert_eq!(shard_of(""), 0x811c_9dc5 % TIME_SHARDS);
        assert_eq!(shard_of("a"), 0xe40c_292c % TIME_SHARDS);
        let shards: std::collections::HashSet<u32> = (0..200)
            .map(|i| shard_of(&format!("widgets#w-{i}")))
            .collect();
        assert_eq!(
            shards.len(),
            TIME_SHARDS as usize,
            "streams spread over every shard"
        );
    }

    #[test]
    fn time_keys_sort_like_recorded_order() {
        let e = |t: &str, ty: &str, id: &str, v: u64| EventEnvelope {
            event_id: uuid::Uuid::nil(),
            aggregate_type: ty.into(),
            aggregate_id: id.into(),
            version: v,
            event_type: "E".into(),
            schema_version: 1,
            data: serde_json::json!({}),
            metadata: Metadata::default(),
            recorded_at: at(t),
            hash: String::new(),
        };
        let t = "2026-11-26T16:00:00Z";
        let mut events = vec![
            e(t, "a", "b", 1),
            e(t, "a", "a-b", 1),
            e(t, "a", "a", 10),
            e(t, "a", "a", 9),
            e(t, "a-b", "a", 1),
            e(t, "a", "a.", 1),
            e(t, "b", "", 1),
            e("2026-11-26T15:59:59.999999Z", "z", "z", 1),
            e("2026-11-26T16:00:00.000001Z", "a", "a", 1),
        ];
        let mut by_key = events.clone();
        by_key.sort_by_key(time_key);
        events.sort_by(chronicle_kernel::recorded_order);
        assert_eq!(by_key, events);
        assert_eq!(
            time_key(&events[1]),
            "2026-11-26T16:00:00.000000Z#a#a#00000000000000000009"
        );
    }
}
