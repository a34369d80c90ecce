//! Tamper evidence: every event stores a SHA-256 over its canonical envelope and the previous
//! event's hash in the same stream, so changing, removing or reordering a stored event breaks
//! the chain from that version on.
//!
//! The canonical form is built from the fields as both stores keep them (text), so a verifier
//! can hash stored rows without decoding JSON: each field is length-prefixed (u32 LE), which
//! keeps field boundaries unambiguous whatever the fields contain.

use crate::envelope::{format_timestamp, EventEnvelope, StreamId};
use crate::ports::{EventStore, ReadRange, Snapshot, SnapshotStore, StoreError};
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

    fn fields<'a>(&'a self, e: &'a EventEnvelope) -> CanonicalFields<'a> {
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

/// Where a stream's chain breaks, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The first version that does not verify.
    pub version: u64,
    pub problem: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} v{}: {}",
            self.aggregate_type, self.aggregate_id, self.version, self.problem
        )
    }
}

/// Follows one stream's chain, event by event, in the order read.
#[derive(Debug)]
pub struct ChainCheck {
    stream: StreamId,
    version: u64,
    head: String,
    /// The first break; later events are not checked against a broken chain.
    broken: Option<ChainBreak>,
    /// A (version, hash) the chain must pass through: a snapshot's recorded head.
    pin: Option<(u64, String)>,
}

impl ChainCheck {
    pub fn new(stream: StreamId) -> Self {
        Self {
            stream,
            version: 0,
            head: GENESIS.to_owned(),
            broken: None,
            pin: None,
        }
    }

    /// Also holds the chain to a snapshot's recorded head: events cut off the end of a stream
    /// leave a chain that verifies, but not one that reaches the snapshot.
    pub fn pinned(mut self, snapshot: Option<(u64, String)>) -> Self {
        self.pin = snapshot;
        self
    }

    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    fn fail(&mut self, version: u64, problem: String) {
        if self.broken.is_none() {
            self.broken = Some(ChainBreak {
                aggregate_type: self.stream.aggregate_type.clone(),
                aggregate_id: self.stream.aggregate_id.clone(),
                version,
                problem,
            });
        }
    }

    /// Checks the next stored event: its place (version) and its hash.
    pub fn next(&mut self, fields: &CanonicalFields<'_>, stored_hash: &str) {
        if self.broken.is_some() {
            return;
        }
        let expected_version = self.version + 1;
        if fields.aggregate_type != self.stream.aggregate_type
            || fields.aggregate_id != self.stream.aggregate_id
        {
            return self.fail(
                expected_version,
                format!(
                    "the event stored here names {}/{}",
                    fields.aggregate_type, fields.aggregate_id
                ),
            );
        }
        if fields.version != expected_version {
            let problem = if fields.version > expected_version {
                format!("missing: the next stored event is v{}", fields.version)
            } else {
                format!("out of order: v{} is stored again here", fields.version)
            };
            return self.fail(expected_version, problem);
        }
        if stored_hash.is_empty() {
            return self.fail(expected_version, "the event has no hash".to_owned());
        }
        let computed = hash_fields(&self.head, fields);
        if computed != stored_hash {
            return self.fail(
                expected_version,
                "changed: the stored event does not match its hash (or its predecessor's)"
                    .to_owned(),
            );
        }
        self.version = expected_version;
        self.head = computed;
        if let Some((v, head)) = &self.pin {
            if *v == self.version && *head != self.head {
                let problem = format!(
                    "the snapshot at v{v} was taken at another chain head: history up to v{v} was rewritten"
                );
                self.fail(self.version, problem);
            }
        }
    }

    pub fn next_envelope(&mut self, e: &EventEnvelope) {
        self.next(&StoredText::of(e).fields(e), &e.hash);
    }

    /// The last verified version and its hash.
    pub fn head(&self) -> (u64, &str) {
        (self.version, &self.head)
    }

    pub fn finish(mut self) -> Result<u64, ChainBreak> {
        if let Some((v, _)) = &self.pin {
            if self.broken.is_none() && self.version < *v {
                let problem =
                    format!("missing: a snapshot at v{v} covers events that are no longer stored");
                self.fail(self.version + 1, problem);
            }
        }
        match self.broken {
            Some(b) => Err(b),
            None => Ok(self.version),
        }
    }
}

/// Verifies one stream's whole chain through the event-store port; `Ok` holds the number of
/// events verified.
pub async fn verify_stream<E: EventStore + ?Sized>(
    store: &E,
    stream: &StreamId,
) -> Result<Result<u64, ChainBreak>, StoreError> {
    verify_stream_against(store, stream, None).await
}

/// [`verify_stream`], also holding the chain to the head a snapshot recorded: events cut off
/// the end of a stream leave a chain that verifies, but not one that reaches the snapshot.
pub async fn verify_stream_against<E: EventStore + ?Sized>(
    store: &E,
    stream: &StreamId,
    snapshot: Option<&Snapshot>,
) -> Result<Result<u64, ChainBreak>, StoreError> {
    const PAGE: usize = 1000;
    let pin = snapshot.and_then(|s| Some((s.version, s.chain_head.clone()?)));
    let mut check = ChainCheck::new(stream.clone()).pinned(pin);
    let mut from = 1;
    loop {
        let page = store
            .read_stream(stream, ReadRange::from(from).limit(PAGE))
            .await?;
        let n = page.len();
        for e in &page {
            check.next_envelope(e);
        }
        match page.last() {
            Some(last) if n == PAGE && check.broken.is_none() => from = last.version + 1,
            _ => break,
        }
    }
    Ok(check.finish())
}

/// What `verify --all` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub streams: u64,
    pub events: u64,
    /// Every broken stream's first break, ordered by stream.
    pub breaks: Vec<ChainBreak>,
}

impl VerifyReport {
    /// Counts one stream's outcome: its events up to the break, if any.
    pub fn add(&mut self, outcome: Result<u64, ChainBreak>) {
        self.streams += 1;
        match outcome {
            Ok(n) => self.events += n,
            Err(b) => {
                self.events += b.version - 1;
                self.breaks.push(b);
            }
        }
    }
}

/// Verifies every stream in the store (each against its latest snapshot when `snapshots` is
/// given), `concurrency` streams at a time; `progress` is called with the streams done so far.
pub async fn verify_all<E: EventStore + ?Sized, S: SnapshotStore + ?Sized>(
    store: &E,
    snapshots: Option<&S>,
    concurrency: usize,
    progress: impl Fn(u64),
) -> Result<VerifyReport, StoreError> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let mut report = VerifyReport::default();
    let mut seen = std::collections::HashSet::new();
    let mut cursor = None;
    loop {
        let page = store.list_streams(cursor.take(), 1000).await?;
        let fresh: Vec<StreamId> = page
            .streams
            .into_iter()
            .filter(|s| seen.insert(s.clone()))
            .collect();
        let results: Vec<Result<u64, ChainBreak>> = stream::iter(fresh)
            .map(|s| async move {
                let snap = match snapshots {
                    Some(snaps) => snaps.latest(&s, None).await?,
                    None => None,
                };
                verify_stream_against(store, &s, snap.as_ref()).await
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
        for r in results {
            report.add(r);
        }
        progress(report.streams);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    report.breaks.sort_by(|a, b| {
        (&a.aggregate_type, &a.aggregate_id).cmp(&(&b.aggregate_type, &b.aggregate_id))
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Metadata;
    use serde_json::json;
    use uuid::Uuid;

    fn event(version: u64, amount: i64) -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7(),
            aggregate_type: "accounts".into(),
            aggregate_id: "a1".into(),
            version,
            event_type: "Deposited".into(),
            schema_version: 2,
            data: json!({"amount": amount, "currency": "EUR"}),
            metadata: Metadata::default(),
            recorded_at: crate::envelope::now(),
            hash: String::new(),
        }
    }

    fn chain(n: u64) -> Vec<EventEnvelope> {
        let mut events: Vec<_> = (1..=n).map(|v| event(v, v as i64)).collect();
        seal(GENESIS, &mut events);
        events
    }

    #[test]
    fn sealing_hands_back_the_text_each_hash_covers() {
        let mut events: Vec<_> = (1..=3).map(|v| event(v, v as i64)).collect();
        let (head, texts) = seal_stored(GENESIS, &mut events);
        assert_eq!(head, events[2].hash);
        assert_eq!(texts.len(), 3);
        let mut prev = GENESIS.to_owned();
        for (e, t) in events.iter().zip(&texts) {
            // What a store writes from the text is what the hash was taken over.
            assert_eq!(t, &StoredText::of(e));
            assert_eq!(hash_fields(&prev, &t.fields(e)), e.hash);
            prev.clone_from(&e.hash);
        }
        assert_eq!(check(&events), Ok(3));
    }

    fn check(events: &[EventEnvelope]) -> Result<u64, ChainBreak> {
        let mut c = ChainCheck::new(StreamId::new("accounts", "a1"));
        for e in events {
            c.next_envelope(e);
        }
        c.finish()
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert_eq!(check(&chain(5)), Ok(5));
    }

    #[test]
    fn a_changed_event_is_named() {
        let mut events = chain(5);
        events[2].data = json!({"amount": 1_000_000, "currency": "EUR"});
        let b = check(&events).unwrap_err();
        assert_eq!(b.version, 3);
        assert!(b.problem.starts_with("changed"), "{b}");
    }

    #[test]
    fn a_rehashed_event_breaks_its_successor() {
        // Someone who recomputes the changed event's own hash still breaks the next link.
        let mut events = chain(5);
        events[2].data = json!({"amount": 7, "currency": "EUR"});
        let prev = events[1].hash.clone();
        events[2].hash = hash_envelope(&prev, &events[2]);
        assert_eq!(check(&events).unwrap_err().version, 4);
    }

    #[test]
    fn a_removed_event_is_named() {
        let mut events = chain(5);
        events.remove(3);
        let b = check(&events).unwrap_err();
        assert_eq!(b.version, 4);
        assert!(b.problem.starts_with("missing"), "{b}");
    }

    #[test]
    fn reordered_events_are_named() {
        let mut events = chain(5);
        events.swap(1, 2);
        assert_eq!(check(&events).unwrap_err().version, 2);
    }

    #[test]
    fn every_field_is_covered() {
        let base = chain(1);
        let mutations: [fn(&mut EventEnvelope); 5] = [
            |e| e.event_id = Uuid::now_v7(),
            |e| e.event_type = "Withdrawn".into(),
            |e| e.schema_version = 1,
            |e| e.metadata.correlation_id = Some("x".into()),
            |e| e.recorded_at += chrono::Duration::microseconds(1),
        ];
        for m in mutations {
            let mut e = base.clone();
            m(&mut e[0]);
            assert!(check(&e).is_err());
        }
    }
}
