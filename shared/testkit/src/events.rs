//! The [`EventStore`] contract: appends, reads, optimistic concurrency, atomicity,
//! idempotency, stream listing and reads by recorded time.

use crate::fixtures::{
    append_ok, assert_conflict, assert_events_eq, events, expired_idempotency_record,
    idempotency_record, new_stream, ok, request, rich_event, unique, versions,
};
use chronicle_kernel::chain;
use chronicle_kernel::{
    AppendError, EventEnvelope, EventLog, EventStore, IdempotencyRecord, ReadRange, RecordedFeed,
    StoreError, StreamId, StreamListing,
};
use chrono::{DateTime, Utc};
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

/// The [`EventStore`] contract: appends, reads, optimistic concurrency, atomicity, idempotency.
pub async fn event_store_contract<S: EventLog>(store: Arc<S>) {
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
pub async fn es_list_streams<S: EventStore + StreamListing + ?Sized>(store: &S) {
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
pub async fn read_recorded_all<S: RecordedFeed + ?Sized>(
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
pub async fn es_read_recorded<S: EventStore + RecordedFeed + ?Sized>(store: &S) {
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
