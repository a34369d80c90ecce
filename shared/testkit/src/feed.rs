//! The [`EventFeed`] contract: the global order of every appended event, paging, the head,
//! waiting for new events and raw replay by type.

use crate::fixtures::{
    append_ok, assert_conflict, assert_events_eq, events, new_stream, ok, request, unique,
};
use chronicle_kernel::{BulkReplay, EventEnvelope, EventFeed, EventStore, FeedEvent, StreamId};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The [`EventFeed`] contract: global order, `after`/`limit`, head, waiting for events.
pub async fn event_feed_contract<S: EventStore + EventFeed + BulkReplay>(store: Arc<S>) {
    feed_order_paging_and_coverage(&*store).await;
    feed_head_is_last_position(&*store).await;
    feed_wait_wakes_on_append(store.clone()).await;
    feed_wait_times_out(&*store).await;
    feed_replay_raw(&*store).await;
}

/// `replay_raw(type, batch)` yields every event of that type exactly as stored, in feed order
/// (so per stream in version order), in batches of at most `batch`, and nothing of other types.
pub async fn feed_replay_raw<S: EventStore + BulkReplay + ?Sized>(store: &S) {
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
