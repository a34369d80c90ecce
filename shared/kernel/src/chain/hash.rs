//! The chain's hash: an event's canonical fields, length-prefixed, and its predecessor's hash.

use crate::envelope::{format_timestamp, EventEnvelope};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Tags the canonical form so a future change of it can't be mistaken for this one.
const DOMAIN: &[u8] = b"chronicle.event.v1";

/// The previous hash of a stream's first event.
pub const GENESIS: &str = "";

/// An event's fields as stored: what the hash covers.
#[derive(Clone, Copy, Debug)]
pub struct CanonicalFields<'a> {
    pub event_id: &'a str,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub version: u64,
    pub event_type: &'a str,
    pub schema_version: u32,
    /// The data's compact JSON text, as stored.
    pub data: &'a str,
    /// The metadata's compact JSON text, as stored.
    pub metadata: &'a str,
    /// RFC 3339 as [`format_timestamp`] writes it.
    pub recorded_at: &'a str,
}

/// The hash of one event given its predecessor's (lower-case hex).
pub fn hash_fields(prev: &str, f: &CanonicalFields<'_>) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u32).to_le_bytes());
        h.update(bytes);
    };
    field(DOMAIN);
    field(prev.as_bytes());
    field(f.event_id.as_bytes());
    field(f.aggregate_type.as_bytes());
    field(f.aggregate_id.as_bytes());
    field(f.version.to_string().as_bytes());
    field(f.event_type.as_bytes());
    field(f.schema_version.to_string().as_bytes());
    field(f.data.as_bytes());
    field(f.metadata.as_bytes());
    field(f.recorded_at.as_bytes());
    hex::encode(h.finalize())
}

/// The JSON text a store keeps for `value`; the same text the hash covers.
pub fn stored_json<T: Serialize + ?Sized>(value: &T) -> String {
    // Serializing a Value or Metadata can't fail: their keys are strings.
    serde_json::to_string(value).unwrap_or_default()
}

/// A decoded envelope's fields rendered as the stores keep them: the text its hash covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredText {
    pub event_id: String,
    pub data: String,
    pub metadata: String,
    pub recorded_at: String,
}

impl StoredText {
    pub fn of(e: &EventEnvelope) -> Self {
        Self {
            event_id: e.event_id.to_string(),
            data: stored_json(&e.data),
            metadata: stored_json(&e.metadata),
            recorded_at: format_timestamp(&e.recorded_at),
        }
    }

    pub(super) fn fields<'a>(&'a self, e: &'a EventEnvelope) -> CanonicalFields<'a> {
        CanonicalFields {
            event_id: &self.event_id,
            aggregate_type: &e.aggregate_type,
            aggregate_id: &e.aggregate_id,
            version: e.version,
            event_type: &e.event_type,
            schema_version: e.schema_version,
            data: &self.data,
            metadata: &self.metadata,
            recorded_at: &self.recorded_at,
        }
    }
}

/// The hash of a decoded envelope (as stored, not upcast) given its predecessor's.
pub fn hash_envelope(prev: &str, e: &EventEnvelope) -> String {
    hash_fields(prev, &StoredText::of(e).fields(e))
}

/// Sets each event's hash, chaining from `prev`; returns the new head.
pub fn seal(prev: &str, events: &mut [EventEnvelope]) -> String {
    seal_stored(prev, events).0
}

/// [`seal`], also returning each event's stored text (what its hash covers), so a store
/// can write it without rendering the envelope a second time.
pub fn seal_stored(prev: &str, events: &mut [EventEnvelope]) -> (String, Vec<StoredText>) {
    let mut head = prev.to_owned();
    let mut texts = Vec::with_capacity(events.len());
    for e in events {
        let text = StoredText::of(e);
        e.hash = hash_fields(&head, &text.fields(e));
        head.clone_from(&e.hash);
        texts.push(text);
    }
    (head, texts)
}
