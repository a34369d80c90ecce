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
mod events;
mod feed;
mod fixtures;
mod read_models;
mod snapshots;

pub use commands::{command_idempotency_contract, Tally};
pub use events::{
    es_append_and_read_back, es_chains_verify_after_a_round_trip,
    es_concurrent_appends_distinct_streams, es_concurrent_appends_same_stream,
    es_conflict_stores_nothing, es_idempotency, es_idempotency_expiry,
    es_large_append_is_atomic_and_gapless, es_list_streams, es_malformed_append_stores_nothing,
    es_read_ranges, es_read_recorded, es_streams_are_keyed_by_type_and_id, event_store_contract,
    read_recorded_all, unique_window_start,
};
pub use feed::{
    event_feed_contract, feed_head_is_last_position, feed_order_paging_and_coverage,
    feed_replay_raw, feed_wait_times_out, feed_wait_wakes_on_append,
};
pub use fixtures::{
    event, events, expired_idempotency_record, idempotency_record, new_stream, request, rich_event,
    unique,
};
pub use read_models::{
    doc_write, read_model_store_contract, rm_apply_and_get, rm_checkpoints, rm_find_by_index,
    rm_generations, rm_missing, rm_versions_only_move_forward,
};
pub use snapshots::{snapshot, snapshot_store_contract};

use fixtures::{assert_events_eq, ok};

use chronicle_kernel::chain;
use chronicle_kernel::envelope::now;
use chronicle_kernel::{
    AppendError, AppendRequest, EventEnvelope, EventStore, Publisher, ReadRange, SnapshotStore,
    StreamId,
};
use std::sync::Arc;

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
