//! Following one stream's chain event by event, and what a check found.

use super::hash::{hash_fields, CanonicalFields, StoredText, GENESIS};
use crate::envelope::{EventEnvelope, StreamId};
use serde::Serialize;

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

/// What `verify --all` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub streams: u64,
    pub events: u64,
    /// Every broken stream's first break, ordered by stream: its chain, its copies, or its
    /// anchored head missing, shorter or different.
    pub breaks: Vec<ChainBreak>,
    /// The anchor the store was held to (its sequence), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor: Option<u64>,
    /// Faults of the anchor log itself: a broken anchor chain, heads that don't make their
    /// root.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub anchor_log: Vec<String>,
}

impl VerifyReport {
    /// Whether nothing failed.
    pub fn is_clean(&self) -> bool {
        self.breaks.is_empty() && self.anchor_log.is_empty()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::hash::{hash_envelope, seal, seal_stored};
    use crate::envelope::Metadata;
    use serde_json::json;
    use uuid::Uuid;

    fn event(version: u64, amount: i64) -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7(),
            aggregate_type: "widgets".into(),
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
        let mut c = ChainCheck::new(StreamId::new("widgets", "a1"));
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
