//! Port contract suites: every adapter of a port must pass the same tests.
//!
//! Each suite is one public async function taking the adapter behind an [`Arc`]; it panics with
//! a message naming the violated rule. The suites only ever touch streams, idempotency keys and
//! projections they create under fresh uuid-suffixed names, so they may run against a shared,
//! non-empty store (a real DynamoDB table), concurrently with each other and with other writers.
//! Where another writer could make an exact check impossible (the feed's head, the wait timeout),
//! the check is written to hold on a busy store and to be exact on a quiet one.
//!
//! - [`event_store_contract`] checks [`EventStore`];
//! - [`event_feed_contract`] checks [`EventFeed`] (appending through [`EventStore`]);
//! - [`snapshot_store_contract`] checks [`SnapshotStore`];
//! - [`read_model_store_contract`] checks [`ReadModelStore`];
//! - [`command_idempotency_contract`] checks the kernel's command handler on an event store:
//!   idempotent repeats inside the retention, a free key after it.
//!
//! The checks each suite runs are public too, so an adapter's tests can run one alone.

mod commands;
mod fixtures;

pub use commands::{command_idempotency_contract, Tally};
pub use fixtures::{
    event, events, expired_idempotency_record, idempotency_record, new_stream, request, rich_event,
    unique,
};

use fixtures::{append_ok, assert_conflict, assert_events_eq, ok, versions};

use chronicle_kernel::chain;
use chronicle_kernel::envelope::now;
use chronicle_kernel::{
    AppendError, AppendRequest, Doc, DocWrite, EventEnvelope, EventFeed, EventStore, FeedEvent,
    IdempotencyRecord, ModelRef, Publisher, ReadModelStore, ReadRange, Snapshot, SnapshotStore,
    StoreError, StreamId,
};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

async fn read_all<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamId,
    ctx: &str,
) -> Vec<EventEnvelope> {
    ok(
        store.read_stream(stream, ReadRange::all()).await,
        &format!("{ctx}: read_stream({stream}, all)"),
    )
}

async fn version_of<S: EventStore + ?Sized>(store: &S, stream: &StreamId, ctx: &str) -> u64 {
    ok(
        store.stream_version(stream).await,
        &format!("{ctx}: stream_version({stream})"),
    )
}

// ---------------------------------------------------------------------------------------------
// EventStore
// ---------------------------------------------------------------------------------------------

/// The [`EventStore`] contract: appends, reads, optimistic concurrency, atomicity, idempotency.
pub async fn event_store_contract<S: EventStore>(store: Arc<S>) {
    es_append_and_read_back(&*store).await;
    es_read_ranges(&*store).await;
    es_conflict_stores_nothing(&*store).await;
    es_malformed_append_stores_nothing(&*store).await;
    es_idempotency(&*store).await;
    es_idempotency_expiry(&*store).await;
    es_concurrent_appends_same_stream(store.clone()).await;
    es_concurrent_appends_distinct_streams(store.clone()).await;
    es_large_append_is_atomic_and_gapless(&*store).await;
    es_streams_are_keyed_by_type_and_id(&*store).await;
    es_chains_verify_after_a_round_trip(&*store).await;
    es_list_streams(&*store).await;
    es_read_recorded(&*store).await;
}

/// A new stream is empty at version 0; appends at the right expected version are read back
/// exactly (every envelope field, metadata and timestamps to the microsecond), in version order.
pub async fn es_append_and_read_back<S: EventStore + ?Sized>(store: &S) {
    const CTX: &str = "EventStore append/read back";
    let stream = new_stream();
    assert_eq!(
        version_of(store, &stream, CTX).await,
        0,
        "{CTX}: a stream never appended to must be at version 0"
    );
    assert!(
        read_all(store, &stream, CTX).await.is_empty(),
        "{CTX}: a stream never appended to must read back empty"
    );

    let mut first = vec![rich_event(&stream, 1)];
    first.extend(events(&stream, 1, 2));
    // A fixed timestamp with a single microsecond: catches truncation and lost zero padding.
    first[2].recorded_at =
        DateTime::<Utc>::from_timestamp_micros(981_173_106_000_007).expect("valid timestamp");
    append_ok(store, request(&stream, 0, first.clone()), CTX).await;
    assert_events_eq(&read_all(store, &stream, CTX).await, &first, CTX);
    assert_eq!(
        version_of(store, &stream, CTX).await,
        3,
        "{CTX}: after appending 3 events to a new stream, stream_version must be 3"
    );

    let second = events(&stream, 3, 2);
    append_ok(store, request(&stream, 3, second.clone()), CTX).await;
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    let read = read_all(store, &stream, CTX).await;
    assert_events_eq(&read, &all, CTX);
    assert_eq!(
        versions(&read),
        vec![1, 2, 3, 4, 5],
        "{CTX}: read_stream must return events in version order"
    );
    assert_eq!(
        version_of(store, &stream, CTX).await,
        5,
        "{CTX}: after a second append of 2 events, stream_version must be 5"
    );
}

/// `ReadRange`: `from_version`, `to_version` (both inclusive) and `limit`.
pub async fn es_read_ranges<S: EventStore + ?Sized>(store: &S) {
    const CTX: &str = "EventStore read ranges";
    let stream = new_stream();
    let all = events(&stream, 0, 10);
    append_ok(store, request(&stream, 0, all.clone()), CTX).await;

    let cases: Vec<(ReadRange, std::ops::RangeInclusive<u64>)> = vec![
        (ReadRange::all(), 1..=10),
        (ReadRange::from(0), 1..=10),
        (ReadRange::from(1), 1..=10),
        (ReadRange::from(4), 4..=10),
        (ReadRange::from(10), 10..=10),
        (ReadRange::from(4).to(6), 4..=6),
        (ReadRange::from(6).to(6), 6..=6),
        (ReadRange::from(1).to(100), 1..=10),
        (ReadRange::all().limit(3), 1..=3),
        (ReadRange::from(8).limit(5), 8..=10),
        (ReadRange::from(5).to(9).limit(2), 5..=6),
        (ReadRange::from(2).to(4).limit(10), 2..=4),
        (ReadRange::all().limit(1), 1..=1),
    ];
    for (range, want) in cases {
        let want: Vec<EventEnvelope> = all
            .iter()
            .filter(|e| want.contains(&e.version))
            .cloned()
            .collect();
        let got = ok(
            store.read_stream(&stream, range).await,
            &format!("{CTX}: read_stream({range:?})"),
        );
        assert_events_eq(&got, &want, &format!("{CTX}: read_stream({range:?})"));
    }
    for range in [
        ReadRange::from(11),
        ReadRange::from(50).to(60),
        ReadRange::from(5).to(4),
    ] {
        let got = ok(
            store.read_stream(&stream, range).await,
            &format!("{CTX}: read_stream({range:?})"),
        );
        assert!(
            got.is_empty(),
            "{CTX}: read_stream({range:?}) on a stream of 10 events must be empty, got versions {:?}",
            versions(&got)
        );
    }
}

/// A stale (or future) expected version gives `Conflict` with the stream's actual version and
/// stores none of the request's events.
pub async fn es_conflict_stores_nothing<S: EventStore + ?Sized>(store: &S) {
    const CTX: &str = "EventStore conflict";
    let stream = new_stream();

    // A new stream appended to as if it had events.
    let r = store
        .append(&request(&stream, 3, events(&stream, 3, 2)))
        .await;
    assert_conflict(r, &stream, 3, 0, &format!("{CTX} (new stream)"));
    assert!(
        read_all(store, &stream, CTX).await.is_empty(),
        "{CTX}: a conflicting append to a new stream must store nothing"
    );
    assert_eq!(version_of(store, &stream, CTX).await, 0);

    let stored = events(&stream, 0, 2);
    append_ok(store, request(&stream, 0, stored.clone()), CTX).await;

    for expected in [0, 1, 3, 7] {
        // Multi-event requests: none of their events may be stored.
        let evs = events(&stream, expected, 3);
        let r = store.append(&request(&stream, expected, evs)).await;
        assert_conflict(r, &stream, expected, 2, CTX);
        assert_events_eq(
            &read_all(store, &stream, CTX).await,
            &stored,
            &format!("{CTX}: after a conflicting 3-event append at expected {expected}"),
        );
        assert_eq!(
            version_of(store, &stream, CTX).await,
            2,
            "{CTX}: a conflicting append at expected {expected} must not move the stream's version"
        );
    }

    // The stream still takes the right version afterwards.
    let more = events(&stream, 2, 1);
    append_ok(store, request(&stream, 2, more.clone()), CTX).await;
    let all: Vec<_> = stored.iter().chain(&more).cloned().collect();
    assert_events_eq(&read_all(store, &stream, CTX).await, &all, CTX);
}

/// A request whose events don't continue the stream (a version gap, another stream's event) is
/// refused and stores nothing: it would otherwise break the gapless version sequence.
pub async fn es_malformed_append_stores_nothing<S: EventStore + ?Sized>(store: &S) {
    const CTX: &str = "EventStore malformed append";
    let stream = new_stream();
    let stored = events(&stream, 0, 1);
    append_ok(store, request(&stream, 0, stored.clone()), CTX).await;

    let mut gap = events(&stream, 1, 3);
    gap[2].version = 5; // 2, 3, 5
    let r = store.append(&request(&stream, 1, gap)).await;
    assert!(
        r.is_err(),
        "{CTX}: events with versions 2, 3, 5 at expected version 1 must be refused, got {r:?}"
    );

    let other = new_stream();
    let mut foreign = events(&stream, 1, 2);
    foreign[1].aggregate_id = other.aggregate_id.clone();
    let r = store.append(&request(&stream, 1, foreign)).await;
    assert!(
        r.is_err(),
        "{CTX}: a request for {stream} carrying an event of another aggregate must be refused, got {r:?}"
    );

    assert_events_eq(&read_all(store, &stream, CTX).await, &stored, CTX);
    assert_eq!(version_of(store, &stream, CTX).await, 1);
    let other_stream = StreamId::new(&stream.aggregate_type, &other.aggregate_id);
    assert!(
        read_all(store, &other_stream, CTX).await.is_empty(),
        "{CTX}: the refused request's foreign event must not be stored under its own stream"
    );
}

/// An append's idempotency record is stored with it; a second append under the same key is
/// refused with `DuplicateIdempotencyKey` and appends nothing, even at the right version; a
/// failed append does not record its key.
pub async fn es_idempotency<S: EventStore + ?Sized>(store: &S) {
    const CTX: &str = "EventStore idempotency";
    let stream = new_stream();
    let key = unique("idem-key");
    assert_eq!(
        ok(store.idempotency_record(&key).await, CTX),
        None,
        "{CTX}: an unused key must have no record"
    );

    let record = idempotency_record(&key, &stream);
    let first = events(&stream, 0, 2);
    let mut req = request(&stream, 0, first.clone());
    req.idempotency = Some(record.clone());
    append_ok(store, req, CTX).await;
    assert_eq!(
        ok(store.idempotency_record(&key).await, CTX),
        Some(record.clone()),
        "{CTX}: idempotency_record must return the stored record unchanged"
    );
    assert_events_eq(&read_all(store, &stream, CTX).await, &first, CTX);

    // Same key, right expected version: refused, nothing appended.
    let mut again = request(&stream, 2, events(&stream, 2, 2));
    again.idempotency = Some(idempotency_record(&key, &stream));
    match store.append(&again).await {
        Err(AppendError::DuplicateIdempotencyKey(k)) => assert_eq!(
            k, key,
            "{CTX}: DuplicateIdempotencyKey must name the duplicated key"
        ),
        other => panic!(
            "{CTX}: a second append with key {key} (at the right expected version) must give \
             DuplicateIdempotencyKey, got {other:?}"
        ),
    }
    assert_events_eq(
        &read_all(store, &stream, CTX).await,
        &first,
        &format!("{CTX}: after a duplicate-key append"),
    );
    assert_eq!(version_of(store, &stream, CTX).await, 2);
    assert_eq!(
        ok(store.idempotency_record(&key).await, CTX),
        Some(record),
        "{CTX}: a refused duplicate must not replace the stored record"
    );

    // Same key on another stream: refused too; that stream stays empty.
    let other = new_stream();
    let mut elsewhere = request(&other, 0, events(&other, 0, 1));
    elsewhere.idempotency = Some(idempotency_record(&key, &other));
    match store.append(&elsewhere).await {
        Err(AppendError::DuplicateIdempotencyKey(k)) => assert_eq!(k, key),
        other => panic!(
            "{CTX}: key {key} reused on another stream must give DuplicateIdempotencyKey, got {other:?}"
        ),
    }
    assert!(
        read_all(store, &other, CTX).await.is_empty(),
        "{CTX}: a duplicate-key append to another stream must store nothing"
    );

    // A conflicting append does not record its key: the retry at the right version succeeds.
    let key2 = unique("idem-key");
    let mut stale = request(&stream, 1, events(&stream, 1, 1));
    stale.idempotency = Some(idempotency_record(&key2, &stream));
    assert_conflict(
        store.append(&stale).await,
        &stream,
        1,
        2,
        &format!("{CTX} (conflict carrying a key)"),
    );
    assert_eq!(
        ok(store.idempotency_record(&key2).await, CTX),
        None,
        "{CTX}: an append that failed with Conflict must not record its idempotency key"
    );
    let record2 = idempotency_record(&key2, &stream);
    let retry_events = events(&stream, 2, 1);
    let mut retry = request(&stream, 2, retry_events.clone());
    retry.idempotency = Some(record2.clone());
    append_ok(store, retry, &format!("{CTX}: retry after conflict")).await;
    assert_eq!(
        ok(store.idempotency_record(&key2).await, CTX),
        Some(record2)
    );
    let all: Vec<_> = first.iter().chain(&retry_events).cloned().collect();
    assert_events_eq(&read_all(store, &stream, CTX).await, &all, CTX);
}

/// An idempotency record counts until its `expires_at`: an expired one is absent to reads
/// and does not take its key, deleted yet or not, and the boundary is exact (a record is live
/// at an append recorded a microsecond before its expiry, expired at one recorded at it).
pub async fn es_idempotency_expiry<S: EventStore + ?Sized>(store: &S) {
    const CTX: &str = "EventStore idempotency expiry";
    let stream = new_stream();
    let key = unique("idem-expired");

    let old = expired_idempotency_record(&key, &stream);
    let mut req = request(&stream, 0, events(&stream, 0, 1));
    req.idempotency = Some(old);
    append_ok(store, req, CTX).await;
    assert_eq!(
        ok(store.idempotency_record(&key).await, CTX),
        None,
        "{CTX}: a record whose expires_at has passed must read as absent"
    );

    // The expired record does not take its key: a new append with it is stored, with its record.
    let fresh = idempotency_record(&key, &stream);
    let mut req = request(&stream, 1, events(&stream, 1, 1));
    req.idempotency = Some(fresh.clone());
    append_ok(store, req, &format!("{CTX}: reusing an expired key")).await;
    assert_eq!(
        ok(store.idempotency_record(&key).await, CTX),
        Some(fresh.clone()),
        "{CTX}: the new record must replace the expired one"
    );
    assert_eq!(version_of(store, &stream, CTX).await, 2);

    // The live record takes the key again, for any stream.
    let mut again = request(&stream, 2, events(&stream, 2, 1));
    again.idempotency = Some(idempotency_record(&key, &stream));
    match store.append(&again).await {
        Err(AppendError::DuplicateIdempotencyKey(k)) => assert_eq!(k, key),
        other => panic!(
            "{CTX}: key {key} with a live record must give DuplicateIdempotencyKey, got {other:?}"
        ),
    }
    assert_eq!(version_of(store, &stream, CTX).await, 2);

    // The boundary, on the append's recorded time: a microsecond before the expiry the record
    // is live, at the expiry it is not.
    let just_before = IdempotencyRecord {
        recorded_at: fresh.expires_at - chrono::Duration::microseconds(1),
        expires_at: fresh.expires_at + chrono::Duration::hours(1),
        ..idempotency_record(&key, &stream)
    };
    let mut req = request(&stream, 2, events(&stream, 2, 1));
    req.idempotency = Some(just_before);
    match store.append(&req).await {
        Err(AppendError::DuplicateIdempotencyKey(k)) => assert_eq!(k, key),
        other => panic!(
            "{CTX}: an append recorded 1 µs before the stored record's expiry must give \
             DuplicateIdempotencyKey, got {other:?}"
        ),
    }
    let at_expiry = IdempotencyRecord {
        recorded_at: fresh.expires_at,
        expires_at: fresh.expires_at + chrono::Duration::hours(1),
        ..idempotency_record(&key, &stream)
    };
    let mut req = request(&stream, 2, events(&stream, 2, 1));
    req.idempotency = Some(at_expiry.clone());
    append_ok(
        store,
        req,
        &format!("{CTX}: an append recorded at the stored record's expiry"),
    )
    .await;
    assert_eq!(
        ok(store.idempotency_record(&key).await, CTX),
        Some(at_expiry),
        "{CTX}: the record appended at the old one's expiry must be the one stored"
    );

    // A conflicting append over an expired record stores nothing: the old record stays expired.
    let key2 = unique("idem-expired");
    let other = new_stream();
    let mut req = request(&other, 0, events(&other, 0, 1));
    req.idempotency = Some(expired_idempotency_record(&key2, &other));
    append_ok(store, req, CTX).await;
    let mut stale = request(&other, 0, events(&other, 0, 1));
    stale.idempotency = Some(idempotency_record(&key2, &other));
    assert_conflict(
        store.append(&stale).await,
        &other,
        0,
        1,
        &format!("{CTX} (conflict over an expired key)"),
    );
    assert_eq!(
        ok(store.idempotency_record(&key2).await, CTX),
        None,
        "{CTX}: a conflicting append must not store its record over an expired one"
    );
}

/// 32 concurrent appends to one stream at the same expected version: exactly one succeeds, the
/// others get `Conflict` with the winner's version, and only the winner's events are stored.
pub async fn es_concurrent_appends_same_stream<S: EventStore>(store: Arc<S>) {
    const CTX: &str = "EventStore concurrent appends to one stream";
    const TASKS: usize = 32;
    let stream = new_stream();
    let seed = events(&stream, 0, 1);
    append_ok(&*store, request(&stream, 0, seed.clone()), CTX).await;

    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
        let evs = events(&stream, 1, 2);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = store.append(&request(&stream, 1, evs.clone())).await;
            (r, evs)
        }));
    }
    let mut winners = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (r, evs) = t.await.expect("append task panicked");
        match r {
            Ok(()) => winners.push(evs),
            Err(AppendError::Conflict {
                expected, actual, ..
            }) => {
                assert_eq!(
                    expected, 1,
                    "{CTX}: Conflict must report the request's version"
                );
                assert_eq!(
                    actual, 3,
                    "{CTX}: losers must see the winner's version 3 as actual"
                );
                conflicts += 1;
            }
            Err(e) => panic!("{CTX}: an append failed with {e:?}; only Conflict is acceptable"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "{CTX}: exactly one of {TASKS} appends at the same expected version must succeed"
    );
    assert_eq!(conflicts, TASKS - 1, "{CTX}: all others must conflict");
    let want: Vec<_> = seed.iter().chain(&winners[0]).cloned().collect();
    assert_events_eq(&read_all(&*store, &stream, CTX).await, &want, CTX);
    assert_eq!(version_of(&*store, &stream, CTX).await, 3);
}

/// 32 concurrent appends, each to its own stream: all succeed and each stream holds its events.
pub async fn es_concurrent_appends_distinct_streams<S: EventStore>(store: Arc<S>) {
    const CTX: &str = "EventStore concurrent appends to distinct streams";
    const TASKS: usize = 32;
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, barrier) = (store.clone(), barrier.clone());
        let stream = new_stream();
        let evs = events(&stream, 0, 3);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = store.append(&request(&stream, 0, evs.clone())).await;
            (r, stream, evs)
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        let (r, stream, evs) = t.await.expect("append task panicked");
        ok(r, &format!("{CTX}: append to {stream}"));
        done.push((stream, evs));
    }
    for (stream, evs) in done {
        assert_events_eq(&read_all(&*store, &stream, CTX).await, &evs, CTX);
        assert_eq!(version_of(&*store, &stream, CTX).await, 3);
    }
}

/// A 50-event append is stored whole, versions 1..=50 without gaps; a conflicting 50-event
/// append after it stores none of its events.
pub async fn es_large_append_is_atomic_and_gapless<S: EventStore + ?Sized>(store: &S) {
    const CTX: &str = "EventStore 50-event append";
    let stream = new_stream();
    let big = events(&stream, 0, 50);
    append_ok(store, request(&stream, 0, big.clone()), CTX).await;
    let read = read_all(store, &stream, CTX).await;
    assert_eq!(
        versions(&read),
        (1..=50).collect::<Vec<u64>>(),
        "{CTX}: versions must be 1..=50, gapless and in order"
    );
    assert_events_eq(&read, &big, CTX);
    assert_eq!(version_of(store, &stream, CTX).await, 50);

    let r = store
        .append(&request(&stream, 10, events(&stream, 10, 50)))
        .await;
    assert_conflict(r, &stream, 10, 50, CTX);
    assert_events_eq(
        &read_all(store, &stream, CTX).await,
        &big,
        &format!("{CTX}: after a conflicting 50-event append"),
    );

    let next = events(&stream, 50, 50);
    append_ok(store, request(&stream, 50, next.clone()), CTX).await;
    let read = read_all(store, &stream, CTX).await;
    assert_eq!(versions(&read), (1..=100).collect::<Vec<u64>>());
    let want: Vec<_> = big.iter().chain(&next).cloned().collect();
    assert_events_eq(&read, &want, CTX);
}

/// Streams are keyed by (aggregate type, aggregate id): the same id under two types gives two
/// independent streams.
pub async fn es_streams_are_keyed_by_type_and_id<S: EventStore + ?Sized>(store: &S) {
    const CTX: &str = "EventStore streams keyed by type and id";
    let id = unique("shared-id");
    let a = StreamId::new("ContractAccount", &id);
    let b = StreamId::new("ContractLedger", &id);
    let a_events = events(&a, 0, 2);
    append_ok(store, request(&a, 0, a_events.clone()), CTX).await;
    assert_eq!(
        version_of(store, &b, CTX).await,
        0,
        "{CTX}: appending to {a} must not touch {b}"
    );
    // b starts at 0 although a, with the same id, is at 2.
    let b_events = events(&b, 0, 1);
    append_ok(store, request(&b, 0, b_events.clone()), CTX).await;
    assert_events_eq(&read_all(store, &a, CTX).await, &a_events, CTX);
    assert_events_eq(&read_all(store, &b, CTX).await, &b_events, CTX);
    assert_eq!(version_of(store, &a, CTX).await, 2);
    assert_eq!(version_of(store, &b, CTX).await, 1);
    let r = store.append(&request(&b, 2, events(&b, 2, 1))).await;
    assert_conflict(r, &b, 2, 1, CTX);
    let r = store.append(&request(&a, 1, events(&a, 1, 1))).await;
    assert_conflict(r, &a, 1, 2, CTX);
}

/// A hash-chained stream (the kernel's `chain::seal`) verifies after a round trip through the
/// store: the store keeps every hashed field exactly (JSON text, timestamps, metadata).
pub async fn es_chains_verify_after_a_round_trip<S: EventStore + ?Sized>(store: &S) {
    const CTX: &str = "EventStore hash chains";
    let stream = new_stream();
    let mut all = vec![rich_event(&stream, 1)];
    all.extend(events(&stream, 1, 4));
    let head = chain::seal(chain::GENESIS, &mut all[..3]);
    chain::seal(&head, &mut all[3..]);
    append_ok(store, request(&stream, 0, all[..3].to_vec()), CTX).await;
    append_ok(store, request(&stream, 3, all[3..].to_vec()), CTX).await;
    let verified = chain::verify_stream(store, &stream)
        .await
        .unwrap_or_else(|e| panic!("{CTX}: reading {stream} failed: {e}"));
    assert_eq!(
        verified,
        Ok(5),
        "{CTX}: the chain of {stream} must verify as stored"
    );
}

/// `list_streams` pages through every stream, whatever else the store holds.
pub async fn es_list_streams<S: EventStore + ?Sized>(store: &S) {
    const CTX: &str = "EventStore list_streams";
    let id = unique("listed");
    let mine = [
        StreamId::new("ContractAccount", format!("{id}-a")),
        StreamId::new("ContractAccount", format!("{id}-b")),
        StreamId::new("ContractLedger", format!("{id}-a")),
    ];
    for s in &mine {
        append_ok(store, request(s, 0, events(s, 0, 3)), CTX).await;
    }
    let mut found = HashSet::new();
    let mut cursor = None;
    for _ in 0..100_000 {
        let page = store
            .list_streams(cursor.take(), 7)
            .await
            .unwrap_or_else(|e| panic!("{CTX}: list_streams failed: {e}"));
        assert!(
            page.streams.len() <= 7,
            "{CTX}: a page holds at most limit streams"
        );
        found.extend(page.streams);
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    for s in &mine {
        assert!(found.contains(s), "{CTX}: {s} was not listed");
    }
    let bad = store.list_streams(Some("not a cursor".into()), 7).await;
    assert!(bad.is_err(), "{CTX}: a malformed cursor must be refused");
}

/// A time window no other check (or run) writes into: a random hour between the years 2200
/// and 8999, so a shared store's other events (stamped now) stay out of it. Four-digit years
/// keep stored timestamps fixed-width.
pub fn unique_window_start() -> DateTime<Utc> {
    let r = Uuid::new_v4().as_u128();
    let hours_2200_to_9000 = 6800 * 8766;
    let hour = (r % hours_2200_to_9000) as i64;
    let start = DateTime::parse_from_rfc3339("2200-01-01T00:00:00Z")
        .expect("a valid time")
        .with_timezone(&Utc);
    start + chrono::TimeDelta::hours(hour)
}

/// Follows `read_recorded` from the first page to the last, checking each page's size; returns
/// the pages' event counts and every event in the order read.
pub async fn read_recorded_all<S: EventStore + ?Sized>(
    store: &S,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: usize,
    ctx: &str,
) -> (Vec<usize>, Vec<EventEnvelope>) {
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    let mut after = None;
    for _ in 0..10_000 {
        let page = ok(
            store.read_recorded(from, to, after.take(), limit).await,
            &format!("{ctx}: read_recorded(limit {limit})"),
        );
        assert!(
            page.events.len() <= limit,
            "{ctx}: a page of {} events with limit {limit}",
            page.events.len()
        );
        sizes.push(page.events.len());
        all.extend(page.events);
        match page.next {
            Some(n) => after = Some(n),
            None => return (sizes, all),
        }
    }
    panic!("{ctx}: read_recorded did not reach the end of the range in 10000 pages");
}

/// `read_recorded` returns exactly the events recorded in the range (bounds inclusive), across
/// streams and types, in (recorded_at, aggregate_type, aggregate_id, version) order whatever the
/// order of versions or appends, page by page without duplicates or gaps; a malformed cursor
/// or a limit of 0 is `Invalid`. The events are stamped with times in a window of their own,
/// so the store may hold any others.
pub async fn es_read_recorded<S: EventStore + ?Sized>(store: &S) {
    use chrono::TimeDelta;
    const CTX: &str = "EventStore read_recorded";
    let t0 = unique_window_start();
    let (from, to) = (t0, t0 + TimeDelta::minutes(150));
    let us = TimeDelta::microseconds(1);
    let id = unique("audited");
    // Ids and types chosen so that the order by type and id differs from the append order.
    let a = StreamId::new("ContractAccount", format!("{id}-b"));
    let b = StreamId::new("ContractAccount", format!("{id}-a"));
    let c = StreamId::new("ContractLedger", format!("{id}-a"));
    // (stream, recorded times of the events of one append), in append order.
    let plan: Vec<(&StreamId, Vec<DateTime<Utc>>)> = vec![
        (&a, vec![from - us]),                        // a v1: just before the range
        (&a, vec![from]),                             // a v2: at `from`
        (&c, vec![from]),                             // c v1: same time, later type
        (&b, vec![from, from]),                       // b v1, v2: same time, earlier id
        (&c, vec![t0 + TimeDelta::minutes(30)]),      // c v2
        (&b, vec![t0 + TimeDelta::minutes(20)]),      // b v3: a clock behind c's
        (&a, vec![t0 + TimeDelta::hours(2) + us]),    // hour 1 is empty
        (&c, vec![t0 + TimeDelta::hours(2) + us; 3]), // c v3..v5: one append, one time
        (&b, vec![to - us, to]),                      // b v4, v5: the last two in range
        (&a, vec![to]),                               // a v4: at `to`
        (&a, vec![to + us]),                          // a v5: just after the range
    ];
    let mut appended: Vec<EventEnvelope> = Vec::new();
    for (stream, times) in plan {
        let at = appended.iter().filter(|e| e.stream() == *stream).count() as u64;
        let mut evs = events(stream, at, times.len());
        for (e, t) in evs.iter_mut().zip(times) {
            e.recorded_at = t;
        }
        append_ok(store, request(stream, at, evs.clone()), CTX).await;
        appended.extend(evs);
    }
    let mut want: Vec<EventEnvelope> = appended
        .iter()
        .filter(|e| e.recorded_at >= from && e.recorded_at <= to)
        .cloned()
        .collect();
    want.sort_by(chronicle_kernel::recorded_order);
    assert_eq!(
        want.len(),
        13,
        "{CTX}: the plan puts 13 events in the range"
    );
    // A time index may be eventually consistent (a DynamoDB GSI): wait until it holds every
    // event, then check exactly (it never loses one again).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, got) = read_recorded_all(store, from, to, 1000, CTX).await;
        if got.len() >= want.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = |e: &EventEnvelope| (e.aggregate_id.clone(), e.aggregate_type.clone(), e.version);
    for limit in [1, 3, 1000] {
        let ctx = format!("{CTX} with limit {limit}");
        let (_, got) = read_recorded_all(store, from, to, limit, &ctx).await;
        let mut seen = HashSet::new();
        for e in &got {
            assert!(
                seen.insert(key(e)),
                "{ctx}: {} v{} read twice",
                e.stream(),
                e.version
            );
        }
        assert_events_eq(&got, &want, &ctx);
    }
    // `from == to`: the events at that instant only.
    let (_, got) = read_recorded_all(store, from, from, 2, CTX).await;
    let at_from: Vec<_> = want
        .iter()
        .filter(|e| e.recorded_at == from)
        .cloned()
        .collect();
    assert_eq!(at_from.len(), 4);
    assert_events_eq(&got, &at_from, &format!("{CTX}: from == to"));
    // A window with nothing in it.
    let (_, got) = read_recorded_all(store, from + us, from + TimeDelta::minutes(19), 2, CTX).await;
    assert_events_eq(&got, &[], &format!("{CTX}: an empty window"));
    // A cursor carries on where its page ended, also with another limit.
    let first = ok(store.read_recorded(from, to, None, 4).await, CTX);
    assert_events_eq(&first.events, &want[..4], &format!("{CTX}: the first page"));
    let next = first.next.expect("more pages after 4 of 13 events");
    let (_, rest) = {
        let mut all = Vec::new();
        let mut after = Some(next);
        let mut sizes = Vec::new();
        while let Some(c) = after.take() {
            let page = ok(store.read_recorded(from, to, Some(c), 7).await, CTX);
            sizes.push(page.events.len());
            all.extend(page.events);
            after = page.next;
            assert!(sizes.len() < 1000, "{CTX}: pages never end");
        }
        (sizes, all)
    };
    assert_events_eq(
        &rest,
        &want[4..],
        &format!("{CTX}: the pages after the first"),
    );

    for bad in ["not a cursor", "", "[1, 2]", "{\"x\": 1}"] {
        match store.read_recorded(from, to, Some(bad.to_owned()), 2).await {
            Err(StoreError::Invalid(_)) => {}
            other => panic!("{CTX}: cursor {bad:?} must be refused as Invalid, got {other:?}"),
        }
    }
    match store.read_recorded(from, to, None, 0).await {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("{CTX}: limit 0 must be refused as Invalid, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// EventFeed
// ---------------------------------------------------------------------------------------------

/// The [`EventFeed`] contract: global order, `after`/`limit`, head, waiting for events.
pub async fn event_feed_contract<S: EventStore + EventFeed>(store: Arc<S>) {
    feed_order_paging_and_coverage(&*store).await;
    feed_head_is_last_position(&*store).await;
    feed_wait_wakes_on_append(store.clone()).await;
    feed_wait_times_out(&*store).await;
    feed_replay_raw(&*store).await;
}

/// `replay_raw(type, batch)` yields every event of that type exactly as stored, in feed order
/// (so per stream in version order), in batches of at most `batch`, and nothing of other types.
pub async fn feed_replay_raw<S: EventStore + EventFeed + ?Sized>(store: &S) {
    const CTX: &str = "EventFeed replay_raw";
    // A type of its own, so a shared store's other events don't show up.
    let aggregate_type = unique("ReplayType");
    let streams: Vec<StreamId> = (0..3)
        .map(|_| StreamId::new(aggregate_type.clone(), unique("r")))
        .collect();
    let other = new_stream();
    let mut expected: Vec<EventEnvelope> = Vec::new();
    // Interleave the streams so feed order differs from stream order.
    for round in 0..4u64 {
        for stream in &streams {
            let evs = events(stream, round * 2, 2);
            ok(
                store.append(&request(stream, round * 2, evs.clone())).await,
                &format!("{CTX}: append {stream} round {round}"),
            );
            expected.extend(evs);
        }
        ok(
            store
                .append(&request(&other, round, events(&other, round, 1)))
                .await,
            &format!("{CTX}: append to another type"),
        );
    }
    for batch in [1usize, 5, 1000] {
        let mut rx = store.replay_raw(&aggregate_type, batch);
        let mut got: Vec<(String, u64, String, u32, Value)> = Vec::new();
        while let Some(b) = rx.recv().await {
            let b = ok(b, &format!("{CTX}: batch of {batch}"));
            assert!(
                !b.is_empty() && b.len() <= batch,
                "{CTX}: a batch of {} events with batch size {batch}",
                b.len()
            );
            for e in b.iter() {
                let data: Value = serde_json::from_str(e.data)
                    .unwrap_or_else(|err| panic!("{CTX}: data is not JSON ({err}): {}", e.data));
                got.push((
                    e.aggregate_id.to_owned(),
                    e.version,
                    e.event_type.to_owned(),
                    e.schema_version,
                    data,
                ));
            }
        }
        let want: Vec<(String, u64, String, u32, Value)> = expected
            .iter()
            .map(|e| {
                (
                    e.aggregate_id.clone(),
                    e.version,
                    e.event_type.clone(),
                    e.schema_version,
                    e.data.clone(),
                )
            })
            .collect();
        assert_eq!(
            got, want,
            "{CTX}: batch size {batch}: every event, as stored, in feed order"
        );
    }
}

/// Reads the feed after `after` in pages of `page` until a page is empty or reaches `until`,
/// checking every page: at most `page` events, positions above `after` and strictly increasing.
async fn read_feed_until<S: EventFeed + ?Sized>(
    store: &S,
    after: u64,
    page: usize,
    until: u64,
    ctx: &str,
) -> Vec<FeedEvent> {
    let mut out: Vec<FeedEvent> = Vec::new();
    let mut cursor = after;
    for _ in 0..100_000 {
        let got = ok(
            store.read_feed(cursor, page).await,
            &format!("{ctx}: read_feed({cursor}, {page})"),
        );
        assert!(
            got.len() <= page,
            "{ctx}: read_feed({cursor}, {page}) returned {} events, more than the limit",
            got.len()
        );
        for f in &got {
            assert!(
                f.position > cursor,
                "{ctx}: read_feed({cursor}, {page}) returned position {}, not after {cursor}",
                f.position
            );
            cursor = f.position;
        }
        let done = got.is_empty() || cursor >= until;
        out.extend(got);
        if done {
            return out;
        }
    }
    panic!("{ctx}: the feed after {after} did not reach position {until} in 100000 pages");
}

fn positions(feed: &[FeedEvent]) -> Vec<u64> {
    feed.iter().map(|f| f.position).collect()
}

/// The feed returns events in strictly increasing position order, honours `after` and `limit`,
/// and holds every appended event exactly once (and no event of a failed append).
pub async fn feed_order_paging_and_coverage<S: EventStore + EventFeed + ?Sized>(store: &S) {
    const CTX: &str = "EventFeed order/paging/coverage";
    let start = ok(store.feed_head().await, CTX);
    let (a, b, c) = (new_stream(), new_stream(), new_stream());
    // Interleaved appends: the feed must follow append order, across streams.
    let plan: Vec<(StreamId, u64, usize)> = vec![
        (a.clone(), 0, 2),
        (b.clone(), 0, 1),
        (a.clone(), 2, 1),
        (c.clone(), 0, 3),
        (b.clone(), 1, 2),
    ];
    let mut appended = Vec::new();
    for (stream, expected, n) in plan {
        let evs = events(&stream, expected, n);
        append_ok(store, request(&stream, expected, evs.clone()), CTX).await;
        appended.extend(evs);
    }
    // A failed append must not reach the feed.
    let failed = events(&a, 0, 2);
    assert_conflict(
        store.append(&request(&a, 0, failed.clone())).await,
        &a,
        0,
        3,
        CTX,
    );
    let ours: HashSet<&str> = [&a, &b, &c]
        .iter()
        .map(|s| s.aggregate_id.as_str())
        .collect();
    let failed_ids: HashSet<Uuid> = failed.iter().map(|e| e.event_id).collect();
    let head = ok(store.feed_head().await, CTX);
    assert!(
        head > start,
        "{CTX}: feed_head must grow with appends ({start} before, {head} after 9 events)"
    );

    let one_read = read_feed_until(store, start, 10_000, head, CTX).await;
    let paged = read_feed_until(store, start, 4, head, CTX).await;
    for (name, feed) in [("one read", &one_read), ("pages of 4", &paged)] {
        let ctx = format!("{CTX} ({name})");
        let pos = positions(feed);
        assert!(
            pos.windows(2).all(|w| w[0] < w[1]),
            "{ctx}: positions must be unique and strictly increasing, got {pos:?}"
        );
        assert!(
            feed.iter().all(|f| !failed_ids.contains(&f.event.event_id)),
            "{ctx}: an event of a conflicting (failed) append appeared in the feed"
        );
        let mine: Vec<EventEnvelope> = feed
            .iter()
            .filter(|f| ours.contains(f.event.aggregate_id.as_str()))
            .map(|f| f.event.clone())
            .collect();
        // Every appended event exactly once, equal, in the order appended.
        assert_events_eq(&mine, &appended, &format!("{ctx}: our events in the feed"));
        assert!(
            pos.contains(&head),
            "{ctx}: the feed must hold an event at feed_head {head}, positions read: {pos:?}"
        );
    }
    // Positions are stable: both reads give our events the same positions.
    let ours_pos = |feed: &[FeedEvent]| -> Vec<(Uuid, u64)> {
        feed.iter()
            .filter(|f| ours.contains(f.event.aggregate_id.as_str()))
            .map(|f| (f.event.event_id, f.position))
            .collect()
    };
    assert_eq!(
        ours_pos(&one_read),
        ours_pos(&paged),
        "{CTX}: an event's position must not change between reads"
    );
    let our_positions: Vec<u64> = ours_pos(&one_read).iter().map(|p| p.1).collect();

    // `after` in the middle of our events: only later ones come back.
    let mid = our_positions[4];
    let after_mid = read_feed_until(store, mid, 10_000, head, CTX).await;
    let mine: Vec<EventEnvelope> = after_mid
        .iter()
        .filter(|f| ours.contains(f.event.aggregate_id.as_str()))
        .map(|f| f.event.clone())
        .collect();
    assert_events_eq(
        &mine,
        &appended[5..],
        &format!("{CTX}: read_feed(after the 5th event's position {mid})"),
    );

    // Small limits.
    for limit in [1, 2, 3] {
        let got = ok(store.read_feed(start, limit).await, CTX);
        assert_eq!(
            got.len(),
            limit,
            "{CTX}: read_feed({start}, {limit}) with 9+ events after {start} must return exactly {limit}"
        );
        assert!(got.iter().all(|f| f.position > start));
        assert_eq!(
            positions(&got),
            positions(&one_read[..limit]),
            "{CTX}: read_feed({start}, {limit}) must return the first {limit} events after {start}"
        );
    }
    let last = *our_positions.last().expect("our events are in the feed");
    let at_end = ok(store.read_feed(last, 10).await, CTX);
    assert!(
        at_end
            .iter()
            .all(|f| f.position > last && !ours.contains(f.event.aggregate_id.as_str())),
        "{CTX}: read_feed(after our last event {last}) must not return our events again"
    );
}

/// `feed_head` is the position of the newest event.
pub async fn feed_head_is_last_position<S: EventStore + EventFeed + ?Sized>(store: &S) {
    const CTX: &str = "EventFeed head";
    let before = ok(store.feed_head().await, CTX);
    let stream = new_stream();
    let evs = events(&stream, 0, 3);
    append_ok(store, request(&stream, 0, evs.clone()), CTX).await;
    let head = ok(store.feed_head().await, CTX);
    assert!(
        head > before,
        "{CTX}: feed_head must grow with an append: {before} before, {head} after"
    );
    let feed = read_feed_until(store, before, 1000, head, CTX).await;
    let mine: Vec<&FeedEvent> = feed
        .iter()
        .filter(|f| f.event.aggregate_id == stream.aggregate_id)
        .collect();
    assert_eq!(
        mine.len(),
        3,
        "{CTX}: the 3 appended events must be in the feed"
    );
    let our_last = mine[2].position;
    assert!(
        head >= our_last,
        "{CTX}: feed_head {head} is below the position {our_last} of an event appended before it was read"
    );
    // The event at `head` exists (positions may have gaps, so read from head - 1).
    let at_head = ok(store.read_feed(head - 1, 1).await, CTX);
    assert_eq!(
        positions(&at_head),
        vec![head],
        "{CTX}: feed_head {head} must be the position of a stored event"
    );
    // On a quiet store nothing follows our last event, so the head must be exactly it.
    if ok(store.read_feed(our_last, 1).await, CTX).is_empty() {
        assert_eq!(
            head, our_last,
            "{CTX}: no event follows position {our_last}, so feed_head must be {our_last}"
        );
    }
}

/// `wait_for_events` resolves promptly once an event is appended after `after`, and at once when
/// the feed already holds events after `after`.
pub async fn feed_wait_wakes_on_append<S: EventStore + EventFeed>(store: Arc<S>) {
    const CTX: &str = "EventFeed wait_for_events wakes";
    const TIMEOUT: Duration = Duration::from_secs(5);
    const PROMPT: Duration = Duration::from_secs(2);
    let after = ok(store.feed_head().await, CTX);
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            store.wait_for_events(after, TIMEOUT).await;
            t.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stream = new_stream();
    let appended_at = Instant::now();
    append_ok(&*store, request(&stream, 0, events(&stream, 0, 1)), CTX).await;
    let waited = waiter.await.expect("waiting task panicked");
    assert!(
        waited < PROMPT,
        "{CTX}: wait_for_events({after}, {TIMEOUT:?}) took {waited:?}, {:?} after the append; \
         it must resolve within {PROMPT:?}",
        appended_at.elapsed()
    );

    // Events already after `after`: no waiting.
    let t = Instant::now();
    store.wait_for_events(after, TIMEOUT).await;
    let waited = t.elapsed();
    assert!(
        waited < PROMPT,
        "{CTX}: wait_for_events({after}) with events already after {after} took {waited:?}"
    );
}

/// `wait_for_events` returns when its timeout passes and nothing was appended.
pub async fn feed_wait_times_out<S: EventFeed + ?Sized>(store: &S) {
    const CTX: &str = "EventFeed wait_for_events timeout";
    const TIMEOUT: Duration = Duration::from_millis(400);
    let after = ok(store.feed_head().await, CTX);
    let t = Instant::now();
    store.wait_for_events(after, TIMEOUT).await;
    let waited = t.elapsed();
    assert!(
        waited < TIMEOUT + Duration::from_secs(2),
        "{CTX}: wait_for_events({after}, {TIMEOUT:?}) returned only after {waited:?}"
    );
    if waited + Duration::from_millis(5) < TIMEOUT {
        // Early is fine only if something was appended meanwhile (a shared store is busy).
        let head = ok(store.feed_head().await, CTX);
        assert!(
            head > after,
            "{CTX}: wait_for_events({after}, {TIMEOUT:?}) returned after {waited:?} \
             although nothing was appended (feed_head still {head})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SnapshotStore
// ---------------------------------------------------------------------------------------------

/// A snapshot of `stream` at `version`, stamped now, with a state naming `tag`.
pub fn snapshot(stream: &StreamId, version: u64, state_version: u32, tag: &str) -> Snapshot {
    Snapshot {
        stream: stream.clone(),
        version,
        state_version,
        state: json!({
            "tag": tag,
            "version": version,
            "balance": version as i64 * 100 - 7,
            "ratio": 0.25,
            "owner": "Zoë ✓",
            "history": [version, { "nested": null }],
        }),
        taken_at: now(),
        chain_head: Some(format!("head-{version}-{tag}")),
    }
}

async fn latest_of<S: SnapshotStore + ?Sized>(
    store: &S,
    stream: &StreamId,
    max_version: Option<u64>,
) -> Option<Snapshot> {
    ok(
        store.latest(stream, max_version).await,
        &format!("SnapshotStore: latest({stream}, {max_version:?})"),
    )
}

/// The [`SnapshotStore`] contract: save, latest, `max_version`, replacing a version.
pub async fn snapshot_store_contract<S: SnapshotStore>(store: Arc<S>) {
    const CTX: &str = "SnapshotStore";
    let store = &*store;
    let stream = new_stream();
    assert_eq!(
        latest_of(store, &stream, None).await,
        None,
        "{CTX}: latest of a stream without snapshots must be None"
    );
    assert_eq!(latest_of(store, &stream, Some(100)).await, None);

    let s5 = snapshot(&stream, 5, 1, "five");
    ok(store.save(s5.clone()).await, CTX);
    assert_eq!(
        latest_of(store, &stream, None).await,
        Some(s5.clone()),
        "{CTX}: latest must return the saved snapshot unchanged"
    );
    assert_eq!(latest_of(store, &stream, Some(5)).await, Some(s5.clone()));
    assert_eq!(latest_of(store, &stream, Some(100)).await, Some(s5.clone()));
    assert_eq!(
        latest_of(store, &stream, Some(4)).await,
        None,
        "{CTX}: latest(max_version 4) with only a snapshot at 5 must be None"
    );

    // Saved out of order: latest is the highest version, not the last saved.
    let s20 = snapshot(&stream, 20, 2, "twenty");
    let s10 = snapshot(&stream, 10, 1, "ten");
    let s15 = snapshot(&stream, 15, 2, "fifteen");
    for s in [&s20, &s10, &s15] {
        ok(store.save(s.clone()).await, CTX);
    }
    assert_eq!(
        latest_of(store, &stream, None).await,
        Some(s20.clone()),
        "{CTX}: latest must pick the highest version (20), not the last saved (15)"
    );
    for (max, want) in [
        (0, None),
        (4, None),
        (5, Some(&s5)),
        (9, Some(&s5)),
        (10, Some(&s10)),
        (14, Some(&s10)),
        (15, Some(&s15)),
        (19, Some(&s15)),
        (20, Some(&s20)),
        (1000, Some(&s20)),
    ] {
        assert_eq!(
            latest_of(store, &stream, Some(max)).await,
            want.cloned(),
            "{CTX}: latest(max_version {max}) must be the newest snapshot at or before {max}"
        );
    }

    // Saving a version again replaces it.
    let s10b = snapshot(&stream, 10, 3, "ten again");
    ok(store.save(s10b.clone()).await, CTX);
    assert_eq!(
        latest_of(store, &stream, Some(14)).await,
        Some(s10b.clone()),
        "{CTX}: saving version 10 again must replace the stored snapshot"
    );
    assert_eq!(latest_of(store, &stream, Some(10)).await, Some(s10b));
    assert_eq!(latest_of(store, &stream, None).await, Some(s20.clone()));
    let s20b = snapshot(&stream, 20, 4, "twenty again");
    ok(store.save(s20b.clone()).await, CTX);
    assert_eq!(latest_of(store, &stream, None).await, Some(s20b));

    // Streams are keyed by type and id; other streams are untouched.
    let same_id = StreamId::new("ContractLedger", &stream.aggregate_id);
    assert_eq!(
        latest_of(store, &same_id, None).await,
        None,
        "{CTX}: {same_id} must not see the snapshots of {stream}"
    );
    let other = new_stream();
    assert_eq!(latest_of(store, &other, None).await, None);
    let o1 = snapshot(&other, 1, 1, "other");
    ok(store.save(o1.clone()).await, CTX);
    assert_eq!(latest_of(store, &other, None).await, Some(o1));
    assert_eq!(latest_of(store, &stream, Some(9)).await, Some(s5));
}

// ---------------------------------------------------------------------------------------------
// ReadModelStore
// ---------------------------------------------------------------------------------------------

/// A document write of `key` at `version` with `body`, findable by `index`.
pub fn doc_write(key: &str, version: u64, body: Value, index: &[(&str, &str)]) -> DocWrite {
    DocWrite {
        key: key.to_owned(),
        version,
        body,
        index: index
            .iter()
            .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn doc(key: &str, version: u64, body: Value) -> Doc {
    Doc {
        key: key.to_owned(),
        version,
        body,
    }
}

async fn get_doc<S: ReadModelStore + ?Sized>(
    store: &S,
    model: &ModelRef,
    key: &str,
) -> Option<Doc> {
    ok(
        store.get(model, key).await,
        &format!("ReadModelStore: get({model:?}, {key})"),
    )
}

async fn find_docs<S: ReadModelStore + ?Sized>(
    store: &S,
    model: &ModelRef,
    field: &str,
    value: &str,
    limit: usize,
) -> Vec<Doc> {
    ok(
        store.find(model, field, value, limit).await,
        &format!("ReadModelStore: find({model:?}, {field}={value}, {limit})"),
    )
}

async fn apply_docs<S: ReadModelStore + ?Sized>(
    store: &S,
    model: &ModelRef,
    writes: Vec<DocWrite>,
    checkpoint: Option<u64>,
) -> usize {
    ok(
        store.apply(model, writes, checkpoint).await,
        &format!("ReadModelStore: apply({model:?}, checkpoint {checkpoint:?})"),
    )
}

async fn checkpoint_of<S: ReadModelStore + ?Sized>(store: &S, model: &ModelRef) -> u64 {
    ok(
        store.checkpoint(model).await,
        &format!("ReadModelStore: checkpoint({model:?})"),
    )
}

fn keys(docs: &[Doc]) -> Vec<&str> {
    docs.iter().map(|d| d.key.as_str()).collect()
}

/// The [`ReadModelStore`] contract: documents, versions, index, checkpoints, generations.
pub async fn read_model_store_contract<S: ReadModelStore>(store: Arc<S>) {
    rm_missing(&*store).await;
    rm_apply_and_get(&*store).await;
    rm_versions_only_move_forward(&*store).await;
    rm_find_by_index(&*store).await;
    rm_checkpoints(&*store).await;
    rm_generations(&*store).await;
}

/// A projection nothing was written to: no documents, checkpoint 0, generation 1.
pub async fn rm_missing<S: ReadModelStore + ?Sized>(store: &S) {
    const CTX: &str = "ReadModelStore missing";
    let p = unique("contract-proj");
    assert_eq!(
        ok(store.active_generation(&p).await, CTX),
        1,
        "{CTX}: active_generation must be 1 before any activation"
    );
    for model in [
        ModelRef::active(&p),
        ModelRef::generation(&p, 1),
        ModelRef::generation(&p, 2),
    ] {
        assert_eq!(
            get_doc(store, &model, "nope").await,
            None,
            "{CTX}: get of a missing key must be None"
        );
        assert!(find_docs(store, &model, "status", "open", 10)
            .await
            .is_empty());
        assert_eq!(
            checkpoint_of(store, &model).await,
            0,
            "{CTX}: a model's checkpoint must start at 0"
        );
    }
}

/// `apply` writes documents, returns how many it applied; `get` reads them back equal.
pub async fn rm_apply_and_get<S: ReadModelStore + ?Sized>(store: &S) {
    const CTX: &str = "ReadModelStore apply/get";
    let p = unique("contract-proj");
    let model = ModelRef::active(&p);
    let bodies = [
        json!({ "name": "Zoë ✓", "balance": 100, "ratio": 0.1, "tags": ["a"], "none": null }),
        json!({ "name": "b", "nested": { "deep": [1, 2, { "x": true }] } }),
        json!({}),
    ];
    let writes: Vec<DocWrite> = ["acct-1", "acct-2", "acct:3.x_y-z"]
        .iter()
        .zip(&bodies)
        .enumerate()
        .map(|(i, (k, b))| doc_write(k, i as u64 + 1, b.clone(), &[("status", "open")]))
        .collect();
    assert_eq!(
        apply_docs(store, &model, writes.clone(), None).await,
        3,
        "{CTX}: applying 3 new documents must report 3 applied"
    );
    for w in &writes {
        let want = Some(doc(&w.key, w.version, w.body.clone()));
        assert_eq!(
            get_doc(store, &model, &w.key).await,
            want,
            "{CTX}: get({}) through the active model must return the applied document",
            w.key
        );
        assert_eq!(
            get_doc(store, &ModelRef::generation(&p, 1), &w.key).await,
            want,
            "{CTX}: the active model is generation 1 before any activation"
        );
        assert_eq!(
            get_doc(store, &ModelRef::generation(&p, 2), &w.key).await,
            None,
            "{CTX}: writes to generation 1 must not appear in generation 2"
        );
    }
    let other = unique("contract-proj");
    assert_eq!(
        get_doc(store, &ModelRef::active(&other), "acct-1").await,
        None,
        "{CTX}: another projection must not see these documents"
    );
    assert_eq!(
        apply_docs(store, &model, Vec::new(), None).await,
        0,
        "{CTX}: applying nothing applies nothing"
    );
}

/// A write whose version is not above the stored one is ignored, unindexed and not counted.
pub async fn rm_versions_only_move_forward<S: ReadModelStore + ?Sized>(store: &S) {
    const CTX: &str = "ReadModelStore versions";
    let p = unique("contract-proj");
    let model = ModelRef::active(&p);
    let v3 = json!({ "state": "v3" });
    assert_eq!(
        apply_docs(
            store,
            &model,
            vec![doc_write("k1", 3, v3.clone(), &[("status", "open")])],
            None
        )
        .await,
        1
    );

    // The same version again (a duplicate), then an older one (a replay).
    for (version, status) in [(3, "dup"), (2, "old"), (1, "older")] {
        let n = apply_docs(
            store,
            &model,
            vec![doc_write(
                "k1",
                version,
                json!({ "state": status }),
                &[("status", status)],
            )],
            None,
        )
        .await;
        assert_eq!(
            n, 0,
            "{CTX}: a write at version {version} over stored version 3 must be ignored and not counted"
        );
        assert_eq!(
            get_doc(store, &model, "k1").await,
            Some(doc("k1", 3, v3.clone())),
            "{CTX}: a write at version {version} over stored version 3 must change nothing"
        );
        assert!(
            find_docs(store, &model, "status", status, 10)
                .await
                .is_empty(),
            "{CTX}: an ignored write's index entries must not be stored"
        );
        assert_eq!(
            keys(&find_docs(store, &model, "status", "open", 10).await),
            vec!["k1"],
            "{CTX}: an ignored write must not remove the document's index entries"
        );
    }

    // A batch mixing ignored and applied writes counts only the applied ones.
    let n = apply_docs(
        store,
        &model,
        vec![
            doc_write("k1", 2, json!({ "state": "stale" }), &[]),
            doc_write("k2", 1, json!({ "state": "new" }), &[]),
            doc_write("k3", 9, json!({ "state": "new" }), &[]),
        ],
        None,
    )
    .await;
    assert_eq!(
        n, 2,
        "{CTX}: one stale and two new writes must report 2 applied"
    );
    let n = apply_docs(
        store,
        &model,
        vec![
            doc_write("k1", 4, json!({ "state": "v4" }), &[]),
            doc_write("k2", 1, json!({ "state": "dup" }), &[]),
            doc_write("k3", 10, json!({ "state": "v10" }), &[]),
        ],
        None,
    )
    .await;
    assert_eq!(
        n, 2,
        "{CTX}: two newer writes and a duplicate must report 2 applied"
    );
    assert_eq!(
        get_doc(store, &model, "k1").await,
        Some(doc("k1", 4, json!({ "state": "v4" })))
    );
    assert_eq!(
        get_doc(store, &model, "k2").await,
        Some(doc("k2", 1, json!({ "state": "new" })))
    );
    assert_eq!(
        get_doc(store, &model, "k3").await,
        Some(doc("k3", 10, json!({ "state": "v10" })))
    );
    // Versions may jump: only "greater than stored" matters.
    assert_eq!(
        apply_docs(
            store,
            &model,
            vec![doc_write("k2", 1000, json!({ "state": "far" }), &[])],
            None
        )
        .await,
        1
    );
    assert_eq!(
        get_doc(store, &model, "k2").await,
        Some(doc("k2", 1000, json!({ "state": "far" })))
    );
}

/// `find` by an index field: matching documents in key order, up to `limit`, following index
/// changes.
pub async fn rm_find_by_index<S: ReadModelStore + ?Sized>(store: &S) {
    const CTX: &str = "ReadModelStore find";
    let p = unique("contract-proj");
    let model = ModelRef::active(&p);
    // Written out of key order, with two index fields.
    let spec = [
        ("k-c", "red", "small"),
        ("k-a", "red", "large"),
        ("k-e", "blue", "small"),
        ("k-b", "blue", "large"),
        ("k-d", "red", "small"),
    ];
    let writes: Vec<DocWrite> = spec
        .iter()
        .map(|(k, color, size)| {
            doc_write(
                k,
                1,
                json!({ "key": k, "color": color, "size": size }),
                &[("color", color), ("size", size)],
            )
        })
        .collect();
    assert_eq!(apply_docs(store, &model, writes, None).await, 5);

    let red = find_docs(store, &model, "color", "red", 10).await;
    assert_eq!(
        keys(&red),
        vec!["k-a", "k-c", "k-d"],
        "{CTX}: find(color=red) must return the red documents ordered by key"
    );
    assert_eq!(
        red[0],
        doc(
            "k-a",
            1,
            json!({ "key": "k-a", "color": "red", "size": "large" })
        ),
        "{CTX}: find must return whole documents"
    );
    assert_eq!(
        keys(&find_docs(store, &model, "color", "red", 2).await),
        vec!["k-a", "k-c"],
        "{CTX}: find(color=red, limit 2) must return the first 2 by key"
    );
    assert_eq!(
        keys(&find_docs(store, &model, "color", "red", 1).await),
        vec!["k-a"]
    );
    assert_eq!(
        keys(&find_docs(store, &model, "color", "blue", 10).await),
        vec!["k-b", "k-e"]
    );
    assert_eq!(
        keys(&find_docs(store, &model, "size", "small", 10).await),
        vec!["k-c", "k-d", "k-e"]
    );
    assert!(
        find_docs(store, &model, "color", "green", 10)
            .await
            .is_empty(),
        "{CTX}: find with no match must be empty"
    );
    assert!(
        find_docs(store, &model, "size", "red", 10).await.is_empty(),
        "{CTX}: find must match the field, not only the value"
    );
    assert!(
        find_docs(store, &model, "colour", "red", 10)
            .await
            .is_empty(),
        "{CTX}: find by an unknown field must be empty"
    );

    // k-c turns blue: no longer found as red; k-d loses its index entirely.
    let n = apply_docs(
        store,
        &model,
        vec![
            doc_write(
                "k-c",
                2,
                json!({ "key": "k-c", "color": "blue", "size": "small" }),
                &[("color", "blue"), ("size", "small")],
            ),
            doc_write("k-d", 2, json!({ "key": "k-d", "gone": true }), &[]),
        ],
        None,
    )
    .await;
    assert_eq!(n, 2);
    assert_eq!(
        keys(&find_docs(store, &model, "color", "red", 10).await),
        vec!["k-a"],
        "{CTX}: documents whose indexed field changed must not be found under the old value"
    );
    let blue = find_docs(store, &model, "color", "blue", 10).await;
    assert_eq!(
        keys(&blue),
        vec!["k-b", "k-c", "k-e"],
        "{CTX}: a document must be found under its new indexed value"
    );
    assert_eq!(
        blue[1],
        doc(
            "k-c",
            2,
            json!({ "key": "k-c", "color": "blue", "size": "small" })
        ),
        "{CTX}: find must return the current document"
    );
    assert_eq!(
        keys(&find_docs(store, &model, "size", "small", 10).await),
        vec!["k-c", "k-e"],
        "{CTX}: a document written without index entries must not be found"
    );
    assert_eq!(
        get_doc(store, &model, "k-d").await,
        Some(doc("k-d", 2, json!({ "key": "k-d", "gone": true }))),
        "{CTX}: an unindexed document is still readable by key"
    );
    // Another projection with the same index values sees nothing of these.
    assert!(find_docs(
        store,
        &ModelRef::active(&unique("contract-proj")),
        "color",
        "blue",
        10
    )
    .await
    .is_empty());
}

/// The checkpoint starts at 0, moves with `apply(…, Some(p))` and never moves backwards.
pub async fn rm_checkpoints<S: ReadModelStore + ?Sized>(store: &S) {
    const CTX: &str = "ReadModelStore checkpoints";
    let p = unique("contract-proj");
    let model = ModelRef::active(&p);
    assert_eq!(checkpoint_of(store, &model).await, 0);

    assert_eq!(apply_docs(store, &model, Vec::new(), Some(10)).await, 0);
    assert_eq!(
        checkpoint_of(store, &model).await,
        10,
        "{CTX}: apply(no writes, Some(10)) must move the checkpoint to 10"
    );
    let n = apply_docs(
        store,
        &model,
        vec![doc_write("k1", 1, json!({ "n": 1 }), &[])],
        Some(15),
    )
    .await;
    assert_eq!(n, 1);
    assert_eq!(checkpoint_of(store, &model).await, 15);
    assert_eq!(
        checkpoint_of(store, &ModelRef::generation(&p, 1)).await,
        15,
        "{CTX}: the active model's checkpoint is generation 1's"
    );

    // Backwards and equal positions leave it; the writes still apply.
    let n = apply_docs(
        store,
        &model,
        vec![doc_write("k2", 1, json!({ "n": 2 }), &[])],
        Some(5),
    )
    .await;
    assert_eq!(
        n, 1,
        "{CTX}: writes apply even when the checkpoint given is behind"
    );
    assert_eq!(
        checkpoint_of(store, &model).await,
        15,
        "{CTX}: apply(…, Some(5)) after 15 must not move the checkpoint backwards"
    );
    assert_eq!(
        get_doc(store, &model, "k2").await,
        Some(doc("k2", 1, json!({ "n": 2 })))
    );
    apply_docs(store, &model, Vec::new(), Some(15)).await;
    assert_eq!(checkpoint_of(store, &model).await, 15);
    apply_docs(store, &model, Vec::new(), Some(0)).await;
    assert_eq!(checkpoint_of(store, &model).await, 15);
    apply_docs(
        store,
        &model,
        vec![doc_write("k3", 1, json!({}), &[])],
        None,
    )
    .await;
    assert_eq!(
        checkpoint_of(store, &model).await,
        15,
        "{CTX}: apply(…, None) must leave the checkpoint"
    );
    apply_docs(store, &model, Vec::new(), Some(1_000_000)).await;
    assert_eq!(checkpoint_of(store, &model).await, 1_000_000);

    // Checkpoints are per projection and generation.
    assert_eq!(
        checkpoint_of(store, &ModelRef::generation(&p, 2)).await,
        0,
        "{CTX}: generation 2 has its own checkpoint"
    );
    assert_eq!(
        checkpoint_of(store, &ModelRef::active(&unique("contract-proj"))).await,
        0
    );
}

/// Generations: writes to generation 2 are invisible through the active model until
/// `activate(2)`; the active generation cannot be dropped; dropping another removes its
/// documents and checkpoint.
pub async fn rm_generations<S: ReadModelStore + ?Sized>(store: &S) {
    const CTX: &str = "ReadModelStore generations";
    let p = unique("contract-proj");
    let active = ModelRef::active(&p);
    let g1 = ModelRef::generation(&p, 1);
    let g2 = ModelRef::generation(&p, 2);
    assert_eq!(ok(store.active_generation(&p).await, CTX), 1);
    assert!(
        store.drop_generation(&p, 1).await.is_err(),
        "{CTX}: dropping generation 1 while it is (implicitly) active must be refused"
    );

    let n = apply_docs(
        store,
        &active,
        vec![
            doc_write("k1", 5, json!({ "gen": 1 }), &[("status", "open")]),
            doc_write("only-g1", 1, json!({ "gen": 1 }), &[("status", "open")]),
        ],
        Some(70),
    )
    .await;
    assert_eq!(n, 2);

    // The rebuild writes generation 2 from scratch: versions restart, independent of gen 1.
    let n = apply_docs(
        store,
        &g2,
        vec![
            doc_write("k1", 1, json!({ "gen": 2 }), &[("status", "open")]),
            doc_write("only-g2", 1, json!({ "gen": 2 }), &[("status", "open")]),
        ],
        Some(30),
    )
    .await;
    assert_eq!(
        n, 2,
        "{CTX}: generation 2's documents are independent of generation 1's versions"
    );
    assert_eq!(
        ok(store.active_generation(&p).await, CTX),
        1,
        "{CTX}: writing generation 2 must not activate it"
    );
    assert_eq!(
        get_doc(store, &active, "k1").await,
        Some(doc("k1", 5, json!({ "gen": 1 }))),
        "{CTX}: before activate, the active model must still read generation 1"
    );
    assert_eq!(
        get_doc(store, &active, "only-g2").await,
        None,
        "{CTX}: generation 2's documents must be invisible through the active model before activate"
    );
    assert_eq!(
        keys(&find_docs(store, &active, "status", "open", 10).await),
        vec!["k1", "only-g1"]
    );
    assert_eq!(checkpoint_of(store, &active).await, 70);
    assert_eq!(
        get_doc(store, &g2, "k1").await,
        Some(doc("k1", 1, json!({ "gen": 2 })))
    );
    assert_eq!(checkpoint_of(store, &g2).await, 30);

    ok(store.activate(&p, 2).await, CTX);
    assert_eq!(
        ok(store.active_generation(&p).await, CTX),
        2,
        "{CTX}: after activate(2) the active generation must be 2"
    );
    assert_eq!(
        get_doc(store, &active, "k1").await,
        Some(doc("k1", 1, json!({ "gen": 2 }))),
        "{CTX}: after activate(2) the active model must read generation 2"
    );
    assert_eq!(
        get_doc(store, &active, "only-g2").await,
        Some(doc("only-g2", 1, json!({ "gen": 2 })))
    );
    assert_eq!(get_doc(store, &active, "only-g1").await, None);
    assert_eq!(
        keys(&find_docs(store, &active, "status", "open", 10).await),
        vec!["k1", "only-g2"],
        "{CTX}: after activate(2), find through the active model must search generation 2"
    );
    assert_eq!(
        checkpoint_of(store, &active).await,
        30,
        "{CTX}: after activate(2), the active model's checkpoint is generation 2's"
    );
    // Writes through the active model now go to generation 2.
    assert_eq!(
        apply_docs(
            store,
            &active,
            vec![doc_write("new", 1, json!({ "gen": 2 }), &[])],
            Some(80)
        )
        .await,
        1
    );
    assert_eq!(
        get_doc(store, &g2, "new").await,
        Some(doc("new", 1, json!({ "gen": 2 }))),
        "{CTX}: after activate(2), writes through the active model must go to generation 2"
    );
    assert_eq!(get_doc(store, &g1, "new").await, None);
    assert_eq!(checkpoint_of(store, &g2).await, 80);
    assert_eq!(checkpoint_of(store, &g1).await, 70);
    // Generation 1 is still there until dropped.
    assert_eq!(
        get_doc(store, &g1, "only-g1").await,
        Some(doc("only-g1", 1, json!({ "gen": 1 })))
    );

    assert!(
        store.drop_generation(&p, 2).await.is_err(),
        "{CTX}: dropping the active generation 2 must be refused"
    );
    assert_eq!(
        get_doc(store, &active, "k1").await,
        Some(doc("k1", 1, json!({ "gen": 2 }))),
        "{CTX}: a refused drop must leave the active generation's documents"
    );
    assert_eq!(checkpoint_of(store, &g2).await, 80);

    ok(store.drop_generation(&p, 1).await, CTX);
    assert_eq!(
        get_doc(store, &g1, "k1").await,
        None,
        "{CTX}: drop_generation(1) must remove generation 1's documents"
    );
    assert_eq!(get_doc(store, &g1, "only-g1").await, None);
    assert!(
        find_docs(store, &g1, "status", "open", 10).await.is_empty(),
        "{CTX}: drop_generation(1) must remove generation 1's index entries"
    );
    assert_eq!(
        checkpoint_of(store, &g1).await,
        0,
        "{CTX}: drop_generation(1) must remove generation 1's checkpoint"
    );
    assert_eq!(ok(store.active_generation(&p).await, CTX), 2);
    assert_eq!(
        keys(&find_docs(store, &active, "status", "open", 10).await),
        vec!["k1", "only-g2"],
        "{CTX}: dropping generation 1 must leave the active generation 2"
    );
    assert_eq!(checkpoint_of(store, &active).await, 80);

    // A dropped generation can be rebuilt from scratch, and switched back to.
    assert_eq!(
        apply_docs(
            store,
            &g1,
            vec![doc_write("k1", 1, json!({ "gen": "1b" }), &[])],
            None
        )
        .await,
        1,
        "{CTX}: after a drop, the generation's old versions must not block new writes"
    );
    ok(store.activate(&p, 1).await, CTX);
    assert_eq!(ok(store.active_generation(&p).await, CTX), 1);
    assert_eq!(
        get_doc(store, &active, "k1").await,
        Some(doc("k1", 1, json!({ "gen": "1b" })))
    );
    ok(store.drop_generation(&p, 2).await, CTX);
    assert_eq!(get_doc(store, &g2, "k1").await, None);
    assert_eq!(checkpoint_of(store, &g2).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------------------------

/// The [`Publisher`] contract. `read_back` returns everything published so far as the consumer
/// side sees it (the log file, the Kinesis stream). Every event arrives, each aggregate's in
/// the order published; consumers may see duplicates but never a gap.
pub async fn publisher_contract<P, F, Fut>(publisher: Arc<P>, read_back: F)
where
    P: Publisher,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<EventEnvelope>>,
{
    const CTX: &str = "Publisher";
    publisher
        .publish(&[])
        .await
        .unwrap_or_else(|e| panic!("{CTX}: publishing nothing must succeed: {e}"));
    let a = new_stream();
    let b = new_stream();
    let (ea, eb) = (events(&a, 0, 5), events(&b, 0, 3));
    // Interleaved, as a stream batch of two aggregates would be.
    let mut batch = Vec::new();
    for (i, e) in ea.iter().enumerate() {
        batch.push(e.clone());
        if let Some(e) = eb.get(i) {
            batch.push(e.clone());
        }
    }
    publisher
        .publish(&batch)
        .await
        .unwrap_or_else(|e| panic!("{CTX}: publish failed: {e}"));
    let more = events(&a, 5, 2);
    publisher
        .publish(&more)
        .await
        .unwrap_or_else(|e| panic!("{CTX}: second publish failed: {e}"));
    let got = read_back().await;
    for (stream, want) in [
        (&a, ea.iter().chain(&more).cloned().collect::<Vec<_>>()),
        (&b, eb.clone()),
    ] {
        let mut seen: Vec<EventEnvelope> = got
            .iter()
            .filter(|e| e.aggregate_id == stream.aggregate_id)
            .cloned()
            .collect();
        // Duplicates are allowed (at least once); their first arrivals must be in order.
        let mut firsts = Vec::new();
        for e in seen.drain(..) {
            if !firsts
                .iter()
                .any(|f: &EventEnvelope| f.event_id == e.event_id)
            {
                firsts.push(e);
            }
        }
        assert_events_eq(
            &firsts,
            &want,
            &format!("{CTX}: events of {stream} as consumed"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Archive
// ---------------------------------------------------------------------------------------------

use chronicle_kernel::archive::{segment_name, Archive, ByteRange, SegmentBuilder};
use chronicle_kernel::archived::{
    run_archiver, ArchivePolicy, ArchivedEventStore, ArchiverOptions,
};

/// The [`Archive`] contract: segments stored whole, listed in name order under a prefix, read in
/// ranges, and never overwritten. Names are unique to the run, so a shared bucket will do.
pub async fn archive_contract<A: Archive>(archive: Arc<A>) {
    const CTX: &str = "Archive";
    let root = unique("contract");
    let a = format!("{root}/a/0001.seg");
    let b = format!("{root}/a/0002.seg");
    let c = format!("{root}/b/0001.seg");
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    for name in [&b, &a, &c] {
        assert!(
            ok(archive.put_segment(name, bytes.clone()).await, CTX),
            "{CTX}: a new segment name is stored"
        );
    }
    assert_eq!(
        ok(archive.list_segments(&format!("{root}/a/")).await, CTX),
        vec![a.clone(), b.clone()],
        "{CTX}: list_segments gives the names under a prefix, in name order"
    );
    let all = ok(archive.list_segments(&format!("{root}/")).await, CTX);
    assert_eq!(
        all,
        vec![a.clone(), b.clone(), c.clone()],
        "{CTX}: every prefix is listed"
    );
    assert_eq!(
        ok(archive.read_segment(&a, ByteRange::All).await, CTX),
        bytes
    );
    assert_eq!(
        ok(
            archive
                .read_segment(
                    &a,
                    ByteRange::Span {
                        offset: 100,
                        len: 50
                    }
                )
                .await,
            CTX
        ),
        bytes[100..150].to_vec(),
        "{CTX}: a span reads those bytes"
    );
    assert_eq!(
        ok(archive.read_segment(&a, ByteRange::Suffix(20)).await, CTX),
        bytes[bytes.len() - 20..].to_vec(),
        "{CTX}: a suffix reads the last bytes"
    );
    assert!(
        archive
            .read_segment(
                &a,
                ByteRange::Span {
                    offset: 4990,
                    len: 50
                }
            )
            .await
            .is_err(),
        "{CTX}: reading past a segment's end is an error, not a short read"
    );
    assert!(
        archive
            .read_segment(&format!("{root}/missing.seg"), ByteRange::All)
            .await
            .is_err(),
        "{CTX}: reading a missing segment is an error"
    );
    // Never overwritten: a second put under a taken name leaves the first.
    assert!(
        !ok(archive.put_segment(&a, vec![1, 2, 3]).await, CTX),
        "{CTX}: a taken name is reported as taken"
    );
    assert_eq!(
        ok(archive.read_segment(&a, ByteRange::All).await, CTX),
        bytes,
        "{CTX}: a segment is never overwritten"
    );
    // Concurrent puts of one name: exactly one wins.
    let d = format!("{root}/a/0003.seg");
    let (x, y) = tokio::join!(
        archive.put_segment(&d, vec![1; 64]),
        archive.put_segment(&d, vec![2; 64])
    );
    let (x, y) = (ok(x, CTX), ok(y, CTX));
    assert!(
        x ^ y,
        "{CTX}: of two racing puts of one name exactly one stores"
    );
    let stored = ok(archive.read_segment(&d, ByteRange::All).await, CTX);
    assert!(
        stored == vec![1; 64] || stored == vec![2; 64],
        "{CTX}: the winner is whole"
    );
}

/// Events of a fresh stream with a real hash chain (the archiver copies only verified chains).
pub fn sealed_events(stream: &StreamId, n: usize) -> Vec<EventEnvelope> {
    let mut evs = events(stream, 0, n);
    chain::seal(chain::GENESIS, &mut evs);
    evs
}

/// Reads through an [`ArchivedEventStore`] stay one history while the hot store loses archived
/// events. `hot` must hold nothing but what this check appends (the archiver walks every
/// stream); `expire_hot(stream, through)` removes the hot copies of versions `1..=through`
/// behind the store's back, as a TTL would.
pub async fn archived_reads_contract<S, N, F, Fut>(
    hot: Arc<S>,
    snapshots: Arc<N>,
    archive: Arc<dyn Archive>,
    expire_hot: F,
) where
    S: EventStore,
    N: SnapshotStore,
    F: Fn(StreamId, u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    const CTX: &str = "ArchivedEventStore";
    let store = ArchivedEventStore::new(hot.clone(), archive.clone());
    let s = new_stream();
    let all = sealed_events(&s, 12);
    let req = AppendRequest {
        stream: s.clone(),
        expected_version: 0,
        events: all[..10].to_vec(),
        idempotency: None,
        stored: Vec::new(),
    };
    ok(store.append(&req).await.map_err(|e| format!("{e}")), CTX);
    let mut snap = snapshot(&s, 8, 1, "archive");
    snap.chain_head = Some(all[7].hash.clone());
    ok(snapshots.save(snap).await, CTX);

    // Below the snapshot: v1..=8 are copied; the head (v10) never is.
    let opts = ArchiverOptions::new(ArchivePolicy::below_snapshot());
    let report = ok(
        run_archiver(&*hot, &*snapshots, &*archive, &opts, |_| {}).await,
        CTX,
    );
    assert_eq!(
        report.events_archived, 8,
        "{CTX}: the archiver copies v1..=snapshot"
    );
    assert_eq!(report.segments.len(), 1);
    let again = ok(
        run_archiver(&*hot, &*snapshots, &*archive, &opts, |_| {}).await,
        CTX,
    );
    assert_eq!(
        again.events_archived, 0,
        "{CTX}: a second run copies nothing twice"
    );

    // By age: everything but the head is old enough with a zero horizon.
    let req = AppendRequest {
        stream: s.clone(),
        expected_version: 10,
        events: all[10..].to_vec(),
        idempotency: None,
        stored: Vec::new(),
    };
    ok(store.append(&req).await.map_err(|e| format!("{e}")), CTX);
    let aged = ArchiverOptions::new(ArchivePolicy::older_than(chrono::Duration::zero()));
    let report = ok(
        run_archiver(&*hot, &*snapshots, &*archive, &aged, |_| {}).await,
        CTX,
    );
    assert_eq!(
        report.events_archived, 3,
        "{CTX}: v9..=11 join in a new segment"
    );
    let young = ArchiverOptions::new(ArchivePolicy::older_than(chrono::Duration::days(1)));
    let report = ok(
        run_archiver(&*hot, &*snapshots, &*archive, &young, |_| {}).await,
        CTX,
    );
    assert_eq!(
        report.events_archived, 0,
        "{CTX}: nothing is older than a day"
    );

    // The hot store loses v1..=9: reads fill them from two segments.
    expire_hot(s.clone(), 9).await;
    let hot_left = ok(hot.read_stream(&s, ReadRange::all()).await, CTX);
    assert_eq!(
        hot_left.first().map(|e| e.version),
        Some(10),
        "{CTX}: expire_hot took v1..=9"
    );
    let read = |r: ReadRange| {
        let store = &store;
        let s = s.clone();
        async move { ok(store.read_stream(&s, r).await, CTX) }
    };
    assert_eq!(
        read(ReadRange::all()).await,
        all,
        "{CTX}: one ordered history"
    );
    assert_eq!(read(ReadRange::from(3).to(11)).await, all[2..11].to_vec());
    assert_eq!(read(ReadRange::from(2).limit(4)).await, all[1..5].to_vec());
    assert_eq!(
        read(ReadRange::from(4).to(6)).await,
        all[3..6].to_vec(),
        "{CTX}: archive only"
    );
    assert_eq!(
        read(ReadRange::from(13)).await,
        vec![],
        "{CTX}: past the end"
    );
    assert_eq!(read(ReadRange::from(13).to(20)).await, vec![]);
    assert_eq!(ok(store.stream_version(&s).await, CTX), 12);
    assert_eq!(
        ok(chain::verify_stream(&store, &s).await, CTX),
        Ok(12),
        "{CTX}: the chain verifies across archive and hot store"
    );
    assert_eq!(ok(store.verify_stream_copies(&s).await, CTX), None);
    let breaks = ok(store.verify_copies(&|_| {}).await, CTX);
    assert!(breaks.is_empty(), "{CTX}: the archive verifies: {breaks:?}");

    // A conflicting append is still refused by the hot store.
    let stale = AppendRequest {
        stream: s.clone(),
        expected_version: 3,
        events: events(&s, 3, 1),
        idempotency: None,
        stored: Vec::new(),
    };
    assert!(
        matches!(
            store.append(&stale).await,
            Err(AppendError::Conflict { actual: 12, .. })
        ),
        "{CTX}: appends keep optimistic concurrency"
    );

    // An archived copy that verifies on its own but is not the hot history (a segment from
    // elsewhere): both checks name the first version where the two part.
    let other = new_stream();
    let hot_copy = sealed_events(&other, 4);
    let req = AppendRequest {
        stream: other.clone(),
        expected_version: 0,
        events: hot_copy.clone(),
        idempotency: None,
        stored: Vec::new(),
    };
    ok(store.append(&req).await.map_err(|e| format!("{e}")), CTX);
    let foreign = sealed_events(&other, 3);
    let mut builder = SegmentBuilder::new(&other.aggregate_type);
    ok(
        builder
            .add_frame(&foreign, chain::GENESIS)
            .map_err(|e| format!("{e}")),
        CTX,
    );
    let (bytes, _) = builder.finish(now());
    let name = segment_name(&other.aggregate_type, now(), &unique("run"), 1);
    assert!(ok(archive.put_segment(&name, bytes).await, CTX));
    let differ = |b: &chain::ChainBreak| {
        b.aggregate_id == other.aggregate_id && b.version == 1 && b.problem.contains("differ")
    };
    let breaks = ok(store.verify_copies(&|_| {}).await, CTX);
    assert!(
        breaks.iter().any(differ),
        "{CTX}: a foreign archived copy is named at v1: {breaks:?}"
    );
    let one = ok(store.verify_stream_copies(&other).await, CTX);
    assert!(
        one.as_ref().is_some_and(differ),
        "{CTX}: and by the one-stream check: {one:?}"
    );
}
