//! The archived reads contract: an [`ArchivedEventStore`] over a hot store and an archive, fed
//! by the archiver, reads one history while the hot store loses archived events.

use crate::fixtures::{events, new_stream, ok, unique};
use crate::snapshots::snapshot;
use chronicle_kernel::archive::{segment_name, Archive, SegmentBuilder};
use chronicle_kernel::archived::{
    run_archiver, ArchivePolicy, ArchivedEventStore, ArchiverOptions,
};
use chronicle_kernel::chain;
use chronicle_kernel::envelope::now;
use chronicle_kernel::{
    AppendError, AppendRequest, CopyAudit, EventEnvelope, EventStore, ReadRange, SnapshotStore,
    StoredHashes, StreamId, StreamListing,
};
use std::sync::Arc;

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
    S: EventStore + StreamListing + StoredHashes,
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
        expected_known: false,
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
        expected_known: false,
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
        expected_known: false,
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
        expected_known: false,
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
