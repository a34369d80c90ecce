//! Verifying chains through the event-store port: one stream, or every stream of a store.

use super::check::{ChainBreak, ChainCheck, VerifyReport};
use crate::envelope::StreamId;
use crate::ports::{EventStore, ReadRange, Snapshot, SnapshotStore, StoreError, StreamListing};

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
            Some(last) if n == PAGE && !check.is_broken() => from = last.version + 1,
            _ => break,
        }
    }
    Ok(check.finish())
}

/// Verifies every stream in the store (each against its latest snapshot when `snapshots` is
/// given), `concurrency` streams at a time; `progress` is called with the streams done so far.
pub async fn verify_all<E: EventStore + StreamListing + ?Sized, S: SnapshotStore + ?Sized>(
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
