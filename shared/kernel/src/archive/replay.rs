//! The archived replay: every aggregate of a type folded from the archive's segments in
//! parallel, then from the hot events past each stream's archived head.

use super::catalog::{Catalog, CatalogSegment};
use super::segment::{fetch_segments, frame_bytes, frame_records, shard, unpack_frame, Archive};
use crate::aggregate::Aggregate;
use crate::error::Error;
use crate::ports::{BulkReplay, StoreError};
use crate::replay::decode_raw;
use crate::schema::EventSchema;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::sync::Arc;

/// What [`replay_archived`] read, and from where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayCounts {
    pub archived_events: u64,
    pub hot_events: u64,
    pub segments: u64,
}

/// Folds every `A` from the archive's segments, read and decoded on `workers` threads (each
/// owning a share of the streams), then from the hot events past each stream's archived head.
pub async fn replay_archived<A: Aggregate>(
    archive: &dyn Archive,
    catalog: &Catalog,
    feed: &dyn BulkReplay,
    schema: &EventSchema,
    workers: usize,
) -> Result<(FxHashMap<String, (u64, A)>, ReplayCounts), Error> {
    let workers = workers.max(1);
    let segments: Vec<_> = catalog.segments_of(A::TYPE).cloned().collect();
    let mut counts = ReplayCounts {
        segments: segments.len() as u64,
        ..Default::default()
    };
    let mut shards: Vec<FxHashMap<String, (u64, A)>> =
        (0..workers).map(|_| FxHashMap::default()).collect();
    // A window of segments in memory at a time, fetched while the previous one is folded.
    let window = workers;
    let fetch = |names: Vec<String>| async move {
        let fetched = fetch_segments(archive, names, window).await?;
        Ok::<_, StoreError>(fetched.into_iter().map(|(_, b)| b).collect::<Vec<_>>())
    };
    let chunks: Vec<Vec<CatalogSegment>> = segments.chunks(window).map(|c| c.to_vec()).collect();
    let names = |c: &[CatalogSegment]| c.iter().map(|s| s.name.clone()).collect();
    let mut pending: Option<Vec<Arc<Vec<u8>>>> = None;
    for (i, chunk) in chunks.iter().enumerate() {
        let bytes = match pending.take() {
            Some(b) => b,
            None => fetch(names(chunk)).await?,
        };
        let fold = async {
            let chunk = chunk.clone();
            let taken = std::mem::take(&mut shards);
            let schema = schema.clone();
            tokio::task::spawn_blocking(move || fold_window::<A>(&chunk, &bytes, taken, &schema))
                .await
                .map_err(|e| Error::Decode(format!("replay worker failed: {e}")))?
        };
        let folded = match chunks.get(i + 1) {
            Some(c) => {
                let (folded, fetched) = futures::join!(fold, fetch(names(c)));
                pending = Some(fetched?);
                folded
            }
            None => fold.await,
        };
        let (back, n) = folded?;
        shards = back;
        counts.archived_events += n;
    }
    let mut states: FxHashMap<String, (u64, A)> = FxHashMap::default();
    for s in shards {
        states.extend(s);
    }
    // The hot tail: whatever each stream has past its archived head.
    let after: std::collections::HashMap<String, u64> =
        states.iter().map(|(id, (v, _))| (id.clone(), *v)).collect();
    let tails = feed.read_tails(A::TYPE, Arc::new(after)).await?;
    for raw in tails.iter() {
        let event = decode_raw::<A>(schema, &raw)?;
        let slot = match states.get_mut(raw.aggregate_id) {
            Some(slot) => slot,
            None => states
                .entry(raw.aggregate_id.to_owned())
                .or_insert_with(|| (0, A::default())),
        };
        if raw.version != slot.0 + 1 {
            return Err(Error::Store(StoreError::Corrupt(format!(
                "{}/{} v{} follows v{} (archive and hot store)",
                A::TYPE,
                raw.aggregate_id,
                raw.version,
                slot.0
            ))));
        }
        slot.1.evolve(&event);
        slot.0 = raw.version;
        counts.hot_events += 1;
    }
    Ok((states, counts))
}

type States<A> = FxHashMap<String, (u64, A)>;
type Shards<A> = Vec<States<A>>;

/// Folds one window of segments: each worker takes the frames of its share of the streams.
fn fold_window<A: Aggregate>(
    segments: &[CatalogSegment],
    bytes: &[Arc<Vec<u8>>],
    shards: Shards<A>,
    schema: &EventSchema,
) -> Result<(Shards<A>, u64), Error> {
    let workers = shards.len();
    std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .into_iter()
            .enumerate()
            .map(|(w, mut states)| {
                scope.spawn(move || -> Result<(States<A>, u64), Error> {
                    let mut n = 0u64;
                    for (seg, bytes) in segments.iter().zip(bytes) {
                        for f in &seg.index.frames {
                            if shard(&f.aggregate_id, workers) != w {
                                continue;
                            }
                            let frame = frame_bytes(&seg.name, bytes, f)?;
                            let raw = unpack_frame(&seg.name, f, frame)?;
                            let slot = states
                                .entry(f.aggregate_id.clone())
                                .or_insert_with(|| (0, A::default()));
                            for rec in frame_records(&seg.name, f, &raw)? {
                                if rec.version <= slot.0 {
                                    continue; // an overlapping frame
                                }
                                if rec.version != slot.0 + 1 {
                                    return Err(Error::Store(StoreError::Corrupt(format!(
                                        "archive segment {}: {}/{} v{} follows v{}",
                                        seg.name,
                                        A::TYPE,
                                        f.aggregate_id,
                                        rec.version,
                                        slot.0
                                    ))));
                                }
                                let event = decode_raw::<A>(schema, &rec.raw(&f.aggregate_id))?;
                                slot.1.evolve(&event);
                                slot.0 = rec.version;
                                n += 1;
                            }
                        }
                    }
                    Ok((states, n))
                })
            })
            .collect();
        let mut out = Vec::with_capacity(workers);
        let mut total = 0;
        for h in handles {
            let (s, n) = h
                .join()
                .map_err(|_| Error::Decode("a replay worker panicked".into()))??;
            out.push(s);
            total += n;
        }
        Ok((out, total))
    })
}
