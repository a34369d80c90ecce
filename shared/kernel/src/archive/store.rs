//! The archived event store: reads archived and hot events as one history.

use super::catalog::{read_archived, Catalog};
use super::segment::{fetch_segments, read_frame, Archive};
use super::verify::{verify_frames, ArchiveVerifier, ArchivedChain};
use crate::chain::{ChainBreak, VerifyReport};
use crate::envelope::{EventEnvelope, StreamId};
use crate::ports::{
    AppendError, AppendRequest, BulkVerify, CopyAudit, EventStore, Expiry, IdempotencyRecord,
    ReadRange, RecordedFeed, RecordedPage, StoreError, StoredHashes, StreamListing, StreamPage,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// An event store whose older events may live in an archive: reads go to the hot store first
/// and fill what it no longer holds from the archive, so callers see one ordered history.
/// Writes, versions and idempotency are the hot store's.
pub struct ArchivedEventStore<E: ?Sized> {
    hot: Arc<E>,
    archive: Arc<dyn Archive>,
    catalog: tokio::sync::RwLock<Option<Arc<Catalog>>>,
}

impl<E: EventStore + ?Sized> ArchivedEventStore<E> {
    pub fn new(hot: Arc<E>, archive: Arc<dyn Archive>) -> Self {
        Self {
            hot,
            archive,
            catalog: tokio::sync::RwLock::new(None),
        }
    }

    /// The catalog as last read (read on first use).
    pub async fn catalog(&self) -> Result<Arc<Catalog>, StoreError> {
        if let Some(c) = self.catalog.read().await.as_ref() {
            return Ok(c.clone());
        }
        self.refresh().await
    }

    /// Reads the indexes of segments written since the catalog was last read.
    pub async fn refresh(&self) -> Result<Arc<Catalog>, StoreError> {
        let mut slot = self.catalog.write().await;
        let fresh = match slot.as_ref() {
            Some(c) => c.refreshed(&*self.archive).await?,
            None => Catalog::load(&*self.archive).await?,
        };
        let fresh = Arc::new(fresh);
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    /// A catalog that covers the stream up to `version`, re-read once if the cached one
    /// doesn't (another process may have archived since).
    async fn catalog_covering(
        &self,
        stream: &StreamId,
        version: u64,
    ) -> Result<Arc<Catalog>, StoreError> {
        let cat = self.catalog().await?;
        if cat.archived_head(stream).0 >= version {
            return Ok(cat);
        }
        let cat = self.refresh().await?;
        let head = cat.archived_head(stream).0;
        if head >= version {
            return Ok(cat);
        }
        Err(StoreError::Corrupt(format!(
            "{stream} v{}..v{version} are neither in the hot store nor in the archive",
            head + 1
        )))
    }

    /// Verifies the named segments (in name order) a window at a time: the next window is
    /// fetched while one is checked on `workers` blocking threads, so memory stays bounded
    /// whatever the archive's size. `progress` gets events checked so far.
    async fn verify_segments(
        &self,
        names: Vec<String>,
        workers: usize,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Vec<ArchivedChain>, StoreError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let archive = &*self.archive;
        let window = workers.max(1) * 2;
        let fetch = |names: Vec<String>| fetch_segments(archive, names, window);
        let chunks: Vec<Vec<String>> = names.chunks(window).map(|c| c.to_vec()).collect();
        let done = Arc::new(AtomicU64::new(0));
        let mut verifier = ArchiveVerifier::new(workers);
        let mut pending = None;
        for (i, chunk) in chunks.iter().enumerate() {
            let segments = match pending.take() {
                Some(s) => s,
                None => fetch(chunk.clone()).await?,
            };
            let counter = done.clone();
            let check = async {
                let mut job = tokio::task::spawn_blocking(move || {
                    verifier.window(&segments, &|n| counter.store(n, Ordering::Relaxed));
                    verifier
                });
                loop {
                    tokio::select! {
                        r = &mut job => return r.map_err(|e| StoreError::Backend(format!("archive verify failed: {e}"))),
                        _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                            progress(done.load(Ordering::Relaxed));
                        }
                    }
                }
            };
            verifier = match chunks.get(i + 1) {
                Some(next) => {
                    let (checked, fetched) = futures::join!(check, fetch(next.clone()));
                    pending = Some(fetched?);
                    checked?
                }
                None => check.await?,
            };
        }
        Ok(verifier.finish())
    }
}

impl<E: EventStore + StoredHashes + ?Sized> ArchivedEventStore<E> {
    /// Holds verified archived chains to the hot store's copies of the same events: equal
    /// hashes at the archived head mean equal histories up to it (each hash covers its
    /// predecessors). One bulk lookup of the hot hashes.
    async fn agree_all(&self, chains: &[ArchivedChain]) -> Result<Vec<ChainBreak>, StoreError> {
        let mut out: Vec<ChainBreak> = chains.iter().filter_map(|c| c.broken.clone()).collect();
        let whole: Vec<&ArchivedChain> = chains
            .iter()
            .filter(|c| c.broken.is_none() && c.version > 0)
            .collect();
        let at: Vec<(StreamId, u64)> = whole
            .iter()
            .map(|c| (c.stream.clone(), c.version))
            .collect();
        let hot = self.hot.hashes_at(&at).await?;
        for (c, h) in whole.into_iter().zip(hot) {
            // No hot hash: expired from the hot store, whose link to the archive the merged
            // read checks instead.
            if h.is_some_and(|h| h != c.head) {
                out.push(self.first_difference(c).await?);
            }
        }
        Ok(out)
    }

    /// Rare: where a verified archived chain and the hot copy of it part, found by reading
    /// both up to the archived head.
    async fn first_difference(&self, chain: &ArchivedChain) -> Result<ChainBreak, StoreError> {
        let cat = self.catalog().await?;
        let archived = read_archived(&*self.archive, &cat, &chain.stream, 1, chain.version).await?;
        let hot: std::collections::HashMap<u64, String> = self
            .hot
            .read_stream(&chain.stream, ReadRange::from(1).to(chain.version))
            .await?
            .into_iter()
            .map(|e| (e.version, e.hash))
            .collect();
        let first = archived
            .iter()
            .find(|a| hot.get(&a.version).is_some_and(|h| *h != a.hash))
            .map_or(chain.version, |a| a.version);
        Ok(ChainBreak {
            aggregate_type: chain.stream.aggregate_type.clone(),
            aggregate_id: chain.stream.aggregate_id.clone(),
            version: first,
            problem: "the archived copy and the hot store's copy differ".into(),
        })
    }
}

#[async_trait]
impl<E: EventStore + ?Sized> EventStore for ArchivedEventStore<E> {
    async fn append(&self, request: &AppendRequest) -> Result<(), AppendError> {
        self.hot.append(request).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: ReadRange,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let hot = self.hot.read_stream(stream, range).await?;
        // The archiver never archives a stream's latest event, so an open-ended read that
        // finds nothing hot is past the stream's end, and one that starts where asked is whole.
        let end = match hot.first() {
            Some(e) if e.version <= range.from_version => return Ok(hot),
            Some(e) => e.version - 1,
            None if range.to_version.is_none() => return Ok(hot),
            None => {
                let head = self.hot.stream_version(stream).await?;
                if head < range.from_version {
                    return Ok(hot);
                }
                range.to_version.unwrap_or(head).min(head)
            }
        };
        let cat = self.catalog_covering(stream, end).await?;
        let mut out = read_archived(&*self.archive, &cat, stream, range.from_version, end).await?;
        out.extend(hot);
        if let Some(limit) = range.limit {
            out.truncate(limit);
        }
        Ok(out)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        self.hot.stream_version(stream).await
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.hot.idempotency_record(key).await
    }
}

#[async_trait]
impl<E: EventStore + StreamListing + ?Sized> StreamListing for ArchivedEventStore<E> {
    async fn list_streams(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<StreamPage, StoreError> {
        // Every stream keeps its latest event hot, so the hot store names them all.
        self.hot.list_streams(cursor, limit).await
    }
}

/// The hot store's bulk path, with each break it finds inside the archived range checked again
/// through the merged history.
#[async_trait]
impl<E: EventStore + BulkVerify + ?Sized> BulkVerify for ArchivedEventStore<E> {
    async fn verify_all_chains(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<VerifyReport, StoreError> {
        let mut report = self.hot.verify_all_chains(progress).await?;
        if report.breaks.is_empty() {
            return Ok(report);
        }
        // The hot store's bulk path sees only hot events: a stream whose early events expired
        // looks cut. Check each break again through the merged history.
        let breaks = std::mem::take(&mut report.breaks);
        let mut out = report;
        let cat = self.catalog().await?;
        for b in breaks {
            let stream = StreamId::new(&b.aggregate_type, &b.aggregate_id);
            // Only a break inside the archived range can be the hot store's expiry; any other
            // (a cut tail held to its snapshot, say) stands as the hot store found it.
            if b.version > cat.archived_head(&stream).0 {
                out.breaks.push(b);
                continue;
            }
            match crate::chain::verify_stream(self, &stream).await {
                Ok(Ok(n)) => out.events += n - (b.version - 1),
                Ok(Err(merged)) => {
                    out.events += merged.version.saturating_sub(b.version);
                    out.breaks.push(merged)
                }
                // The archive can't fill the gap (a damaged segment): the hot break stands,
                // with why; the archive check names the segment.
                Err(StoreError::Corrupt(why)) => out.breaks.push(ChainBreak {
                    problem: format!("{}; {why}", b.problem),
                    ..b
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl<E: EventStore + StoredHashes + ?Sized> CopyAudit for ArchivedEventStore<E> {
    async fn verify_copies(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Vec<ChainBreak>, StoreError> {
        let cat = self.refresh().await?;
        let names: Vec<String> = cat.segments.iter().map(|s| s.name.clone()).collect();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let chains = self.verify_segments(names, workers, progress).await?;
        self.agree_all(&chains).await
    }

    async fn verify_stream_copies(
        &self,
        stream: &StreamId,
    ) -> Result<Option<ChainBreak>, StoreError> {
        let cat = self.refresh().await?;
        // Only this stream's frames, by ranged reads.
        let mut frames = Vec::new();
        for r in cat.frames(stream) {
            let (seg, f) = cat.frame(*r);
            let bytes = read_frame(&*self.archive, &seg.name, f).await?;
            frames.push((seg.name.clone(), f.clone(), bytes));
        }
        if frames.is_empty() {
            return Ok(None);
        }
        let mine = vec![verify_frames(stream, &frames)];
        Ok(self.agree_all(&mine).await?.into_iter().next())
    }
}

#[async_trait]
impl<E: EventStore + RecordedFeed + ?Sized> RecordedFeed for ArchivedEventStore<E> {
    async fn read_recorded(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<String>,
        limit: usize,
    ) -> Result<RecordedPage, StoreError> {
        self.hot.read_recorded(from, to, after, limit).await
    }
}

#[async_trait]
impl<E: EventStore + Expiry + ?Sized> Expiry for ArchivedEventStore<E> {
    async fn expire(
        &self,
        stream: &StreamId,
        events: &[(u64, String)],
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.hot.expire(stream, events, at).await
    }

    async fn unexpired(
        &self,
        stream: &StreamId,
        through: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        self.hot.unexpired(stream, through).await
    }
}

#[async_trait]
impl<E: EventStore + StoredHashes + ?Sized> StoredHashes for ArchivedEventStore<E> {
    /// The hot store's hashes (its bulk lookup where it has one), not the merged history's:
    /// those would fill expired events from the archive this is to be held against.
    async fn hashes_at(&self, at: &[(StreamId, u64)]) -> Result<Vec<Option<String>>, StoreError> {
        self.hot.hashes_at(at).await
    }
}
