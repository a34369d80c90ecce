//! Shared fixtures: unique names and the test data every suite builds on (streams, events,
//! append requests, idempotency records), and the assertion helpers the suites share.

use chronicle_kernel::envelope::now;
use chronicle_kernel::{
    AppendError, AppendRequest, EventEnvelope, EventStore, IdempotencyRecord, Metadata, StreamId,
};
use serde_json::{json, Value};
use std::fmt::Debug;
use std::time::Duration;
use uuid::Uuid;

/// `prefix` with a fresh uuid: a name no other run (or other check) uses.
/// Valid as an aggregate id, idempotency key and projection name.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

/// A new stream of the suites' aggregate type with a unique id.
pub fn new_stream() -> StreamId {
    StreamId::new("ContractAccount", unique("acct"))
}

/// An event of `stream` at `version`, stamped now, with the given type and data.
pub fn event(stream: &StreamId, version: u64, event_type: &str, data: Value) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::new_v4(),
        aggregate_type: stream.aggregate_type.clone(),
        aggregate_id: stream.aggregate_id.clone(),
        version,
        event_type: event_type.to_owned(),
        schema_version: 1,
        data,
        metadata: Metadata::default(),
        recorded_at: now(),
        // Opaque to a store, which must keep it as given.
        hash: format!("{version:08}{}", Uuid::new_v4().simple()),
    }
}

/// `n` varied events continuing `stream` after `after_version`: versions `after_version + 1 ..`.
/// Types, schema versions and metadata vary so a store that mixes fields up is caught.
pub fn events(stream: &StreamId, after_version: u64, n: usize) -> Vec<EventEnvelope> {
    (1..=n as u64)
        .map(|i| {
            let v = after_version + i;
            let mut e = event(
                stream,
                v,
                if v.is_multiple_of(2) {
                    "Withdrawn"
                } else {
                    "Deposited"
                },
                json!({ "n": v, "amount": v * 10, "memo": format!("event {v} of {stream}") }),
            );
            e.schema_version = (v % 3) as u32 + 1;
            if v % 2 == 1 {
                e.metadata = Metadata {
                    command_id: Some(Uuid::new_v4()),
                    correlation_id: Some(format!("corr-{v}")),
                    causation_id: None,
                    idempotency_key: None,
                };
            }
            e
        })
        .collect()
}

/// An event using every envelope field to the full: rich JSON, all metadata, schema version.
pub fn rich_event(stream: &StreamId, version: u64) -> EventEnvelope {
    let mut e = event(
        stream,
        version,
        "AccountOpened",
        json!({
            "owner": "Zoë Ünïcødé ✓ \"quoted\" \\ back\nslash",
            "amount": 1234,
            "negative": -42,
            "big": u64::MAX,
            "ratio": 0.1,
            "precise": 1.2345678901234567,
            "tiny": 1e-7,
            "flag": true,
            "nothing": null,
            "tags": ["a", "b", "c"],
            "empty_object": {},
            "empty_array": [],
            "nested": { "deep": { "list": [1, { "x": "y" }, [2, 3]] } },
        }),
    );
    e.schema_version = 7;
    e.metadata = Metadata {
        command_id: Some(Uuid::new_v4()),
        correlation_id: Some(unique("corr")),
        causation_id: Some(unique("cause")),
        idempotency_key: Some(unique("idem")),
    };
    e
}

/// A request appending `events` to `stream` at `expected_version`, without idempotency.
pub fn request(
    stream: &StreamId,
    expected_version: u64,
    events: Vec<EventEnvelope>,
) -> AppendRequest {
    AppendRequest {
        stream: stream.clone(),
        expected_version,
        events,
        idempotency: None,
        stored: Vec::new(),
        expected_known: false,
    }
}

/// An idempotency record for `stream` under `key`, stamped now, live for an hour.
pub fn idempotency_record(key: &str, stream: &StreamId) -> IdempotencyRecord {
    let recorded_at = now();
    IdempotencyRecord {
        key: key.to_owned(),
        fingerprint: format!("sha256:{}", Uuid::new_v4().simple()),
        stream: stream.clone(),
        response: json!({ "status": "accepted", "version": 1, "body": { "ok": true, "n": [1, 2] } }),
        recorded_at,
        expires_at: IdempotencyRecord::expiry(recorded_at, Duration::from_secs(3600)),
    }
}

/// An idempotency record for `stream` under `key` that expired an hour ago (recorded two
/// hours ago with an hour's retention): what a store may still hold until it prunes it.
pub fn expired_idempotency_record(key: &str, stream: &StreamId) -> IdempotencyRecord {
    let recorded_at = now() - chrono::Duration::hours(2);
    IdempotencyRecord {
        recorded_at,
        expires_at: IdempotencyRecord::expiry(recorded_at, Duration::from_secs(3600)),
        ..idempotency_record(key, stream)
    }
}

pub(crate) fn ok<T, E: Debug>(r: Result<T, E>, ctx: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{ctx}: unexpected error {e:?}"),
    }
}

pub(crate) async fn append_ok<S: EventStore + ?Sized>(store: &S, req: AppendRequest, ctx: &str) {
    let what = format!(
        "{ctx}: appending {} event(s) to {} at expected version {}",
        req.events.len(),
        req.stream,
        req.expected_version
    );
    ok(store.append(&req).await, &what);
}

pub(crate) fn assert_conflict(
    r: Result<(), AppendError>,
    stream: &StreamId,
    want_expected: u64,
    want_actual: u64,
    ctx: &str,
) {
    match r {
        Err(AppendError::Conflict {
            stream: s,
            expected,
            actual,
        }) => {
            assert_eq!(
                expected, want_expected,
                "{ctx}: Conflict on {stream} reports expected {expected}, the request's was {want_expected}"
            );
            assert_eq!(
                actual, want_actual,
                "{ctx}: Conflict on {stream} reports actual {actual}, the stream is at {want_actual}"
            );
            assert!(
                s.contains(&stream.aggregate_id),
                "{ctx}: Conflict names stream `{s}`, not {stream}"
            );
        }
        other => panic!(
            "{ctx}: appending to {stream} at expected {want_expected} (stream at {want_actual}) \
             must give AppendError::Conflict {{ expected: {want_expected}, actual: {want_actual} }}, \
             got {other:?}"
        ),
    }
}

pub(crate) fn versions(events: &[EventEnvelope]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

/// Asserts two event lists are equal, naming the first differing event.
pub(crate) fn assert_events_eq(got: &[EventEnvelope], want: &[EventEnvelope], ctx: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g, w,
            "{ctx}: event #{i} read back differs from the one appended (left: read, right: appended)"
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{ctx}: read {} events (versions {:?}), expected {} (versions {:?})",
        got.len(),
        versions(got),
        want.len(),
        versions(want)
    );
}
