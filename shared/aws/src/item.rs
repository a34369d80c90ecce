//! How events and idempotency records are laid out as DynamoDB items. The stream-driven
//! functions decode the same layout from stream records' `NewImage`.

use chronicle_kernel::envelope::{format_timestamp, parse_timestamp};
use chronicle_kernel::{EventEnvelope, IdempotencyRecord, Metadata, StoreError, StreamId};
use serde::{Deserialize, Serialize};

/// Partition key attribute of the events table: `{aggregate_type}#{aggregate_id}`.
pub const PK: &str = "stream";
/// Sort key attribute: the version (number); idempotency records use 0.
pub const SK: &str = "version";
pub const IDEMPOTENCY_PREFIX: &str = "idempotency#";

pub fn stream_key(stream: &StreamId) -> String {
    format!("{}#{}", stream.aggregate_type, stream.aggregate_id)
}

pub fn idempotency_key(key: &str) -> String {
    format!("{IDEMPOTENCY_PREFIX}{key}")
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
}

impl EventItem {
    pub fn from_envelope(e: &EventEnvelope) -> Self {
        Self {
            stream: stream_key(&e.stream()),
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
}

impl IdempotencyItem {
    pub fn from_record(r: &IdempotencyRecord) -> Self {
        Self {
            stream: idempotency_key(&r.key),
            version: 0,
            key: r.key.clone(),
            fingerprint: r.fingerprint.clone(),
            aggregate_type: r.stream.aggregate_type.clone(),
            aggregate_id: r.stream.aggregate_id.clone(),
            response: r.response.to_string(),
            recorded_at: format_timestamp(&r.recorded_at),
        }
    }

    pub fn into_record(self) -> Result<IdempotencyRecord, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("idempotency record {}: {what}: {e}", self.key))
        };
        Ok(IdempotencyRecord {
            response: serde_json::from_str(&self.response).map_err(|e| corrupt("response", &e))?,
            recorded_at: parse_timestamp(&self.recorded_at)
                .map_err(|e| corrupt("recorded_at", &e))?,
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
