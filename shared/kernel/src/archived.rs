//! The archive in use: an event store that reads archived and hot events as one history, the
//! archiver that fills the archive, and a replay that reads segments in parallel.

use crate::aggregate::Aggregate;
use crate::archive::{
    frame_records, read_archived, unpack_frame, Archive, ArchiveVerifier, ArchivedChain, ByteRange,
    Catalog, SegmentBuilder,
};
use crate::chain::{hash_envelope, ChainBreak, VerifyReport};
use crate::envelope::{EventEnvelope, StreamId};
use crate::error::Error;
use crate::ports::{
    AppendError, AppendRequest, EventFeed, EventStore, IdempotencyRecord, ReadRange, RecordedPage,
    SnapshotStore, StoreError, StreamPage,
};
use crate::replay::decode_raw;
use crate::schema::EventSchema;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use rustc_hash::FxHashMap;
use serde::Serialize;
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

    async fn list_streams(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<StreamPage, StoreError> {
        // Every stream keeps its latest event hot, so the hot store names them all.
        self.hot.list_streams(cursor, limit).await
    }

    async fn verify_all_chains(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Option<Result<VerifyReport, StoreError>> {
        let report = match self.hot.verify_all_chains(progress).await? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        // The hot store's bulk path sees only hot events: a stream whose early events expired
        // looks cut. Check each break again through the merged history.
        let mut out = VerifyReport {
            breaks: Vec::new(),
            ..report
        };
        if report.breaks.is_empty() {
            return Some(Ok(report));
        }
        let cat = match self.catalog().await {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        for b in report.breaks {
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
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(out))
    }

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
            let bytes = crate::archive::read_frame(&*self.archive, &seg.name, f).await?;
            frames.push((seg.name.clone(), f.clone(), bytes));
        }
        if frames.is_empty() {
            return Ok(None);
        }
        let mine = vec![crate::archive::verify_frames(stream, &frames)];
        Ok(self.agree_all(&mine).await?.into_iter().next())
    }

    async fn read_recorded(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<String>,
        limit: usize,
    ) -> Result<RecordedPage, StoreError> {
        self.hot.read_recorded(from, to, after, limit).await
    }

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

/// Which of a stream's events the archiver copies: those within every limit given (with
/// none, every event but the stream's latest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchivePolicy {
    /// Only events recorded longer ago than this.
    pub older_than: Option<chrono::Duration>,
    /// Only events at or below the stream's latest snapshot, so loading an aggregate never
    /// needs the archive.
    pub below_snapshot: bool,
}

impl ArchivePolicy {
    pub fn older_than(age: chrono::Duration) -> Self {
        Self {
            older_than: Some(age),
            below_snapshot: false,
        }
    }

    pub fn below_snapshot() -> Self {
        Self {
            older_than: None,
            below_snapshot: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ArchiverOptions {
    pub policy: ArchivePolicy,
    /// A segment is closed once it holds this many events.
    pub segment_events: u64,
    /// When given, archived hot copies are marked to expire this long after archiving (a
    /// DynamoDB TTL); `None` keeps them.
    pub expire_after: Option<chrono::Duration>,
}

impl ArchiverOptions {
    pub fn new(policy: ArchivePolicy) -> Self {
        Self {
            policy,
            segment_events: 100_000,
            expire_after: None,
        }
    }
}

/// What an archiver run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ArchiveReport {
    pub streams: u64,
    pub streams_archived: u64,
    pub events_archived: u64,
    pub segments: Vec<String>,
    pub bytes: u64,
    /// Hot copies marked to expire.
    pub events_expiring: u64,
    /// Streams not archived because their stored chain does not verify: archiving would copy
    /// the damage. `chronicle verify` names the rest.
    pub refused: Vec<ChainBreak>,
}

/// A stream's events in an open segment: (version, hash) each, what expiry needs.
struct Framed {
    stream: StreamId,
    events: Vec<(u64, String)>,
}

/// One stream's events picked for a segment.
struct Pick {
    /// Archived earlier but left unmarked (a run cut short): (version, archived hash).
    catch_up: Vec<(u64, String)>,
    stream: StreamId,
    events: Vec<EventEnvelope>,
    prev_hash: String,
}

/// Copies every stream's events that `opts.policy` picks, and that are not archived yet, into
/// new segments; never the stream's latest event (the hot store keeps each stream's head).
/// Segments are written whole and never overwritten; only once one is stored are its events'
/// hot copies marked to expire (when configured). `progress` gets streams looked at so far.
pub async fn run_archiver<E, S>(
    hot: &E,
    snapshots: &S,
    archive: &dyn Archive,
    opts: &ArchiverOptions,
    progress: impl Fn(u64),
) -> Result<ArchiveReport, StoreError>
where
    E: EventStore + ?Sized,
    S: SnapshotStore + ?Sized,
{
    let started = crate::envelope::now();
    let mut writer = SegmentWriter {
        hot,
        archive,
        opts,
        started,
        run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        part: 0,
    };
    let catalog = Catalog::load(archive).await?;
    let mut report = ArchiveReport::default();
    let mut open: FxHashMap<String, (SegmentBuilder, Vec<Framed>)> = FxHashMap::default();
    let mut cursor = None;
    loop {
        let page = hot.list_streams(cursor.take(), 1000).await?;
        let picks: Vec<Result<Pick, ChainBreak>> = stream::iter(page.streams)
            .map(|s| pick(hot, snapshots, (archive, &catalog), s, opts, started))
            .buffered(16)
            .try_collect()
            .await?;
        for p in picks {
            report.streams += 1;
            if let (Ok(p), Some(after)) = (&p, opts.expire_after) {
                if !p.catch_up.is_empty() {
                    let at = crate::envelope::now() + after;
                    report.events_expiring += hot.expire(&p.stream, &p.catch_up, at).await?;
                }
            }
            let p = match p {
                Ok(p) if p.events.is_empty() => continue,
                Ok(p) => p,
                Err(b) => {
                    report.refused.push(b);
                    continue;
                }
            };
            let ty = p.stream.aggregate_type.clone();
            let slot = open
                .entry(ty.clone())
                .or_insert_with(|| (SegmentBuilder::new(&ty), Vec::new()));
            slot.0.add_frame(&p.events, &p.prev_hash)?;
            // Only what expiry needs is kept until the segment is stored.
            slot.1.push(Framed {
                events: p
                    .events
                    .iter()
                    .map(|e| (e.version, e.hash.clone()))
                    .collect(),
                stream: p.stream,
            });
            if slot.0.events() >= opts.segment_events {
                if let Some((b, picks)) = open.remove(&ty) {
                    writer.flush(b, picks, &mut report).await?;
                }
            }
        }
        progress(report.streams);
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let rest: Vec<_> = open.into_values().collect();
    for (b, picks) in rest {
        writer.flush(b, picks, &mut report).await?;
    }
    Ok(report)
}

async fn pick<E, S>(
    hot: &E,
    snapshots: &S,
    (archive, catalog): (&dyn Archive, &Catalog),
    stream: StreamId,
    opts: &ArchiverOptions,
    now: DateTime<Utc>,
) -> Result<Result<Pick, ChainBreak>, StoreError>
where
    E: EventStore + ?Sized,
    S: SnapshotStore + ?Sized,
{
    let policy = opts.policy;
    let (archived, prev_hash) = catalog.archived_head(&stream);
    let latest = hot.stream_version(&stream).await?;
    let mut upto = latest.saturating_sub(1);
    if policy.below_snapshot {
        let snap = snapshots.latest(&stream, None).await?;
        upto = upto.min(snap.map_or(0, |s| s.version));
    }
    let mut events = Vec::new();
    if upto > archived {
        events = hot
            .read_stream(&stream, ReadRange::from(archived + 1).to(upto))
            .await?;
    }
    if let Some(age) = policy.older_than {
        let cutoff = now - age;
        let keep = events.iter().take_while(|e| e.recorded_at < cutoff).count();
        events.truncate(keep);
    }
    // Only a chain that verifies from the archive's head is copied.
    let mut head = prev_hash.clone();
    for (i, e) in events.iter().enumerate() {
        let problem = if e.version != archived + 1 + i as u64 {
            Some(format!(
                "missing: v{} is stored where v{} belongs",
                e.version,
                archived + 1 + i as u64
            ))
        } else if hash_envelope(&head, e) != e.hash {
            Some(
                "changed: the stored event does not match its hash (or its predecessor's)"
                    .to_owned(),
            )
        } else {
            None
        };
        if let Some(problem) = problem {
            return Ok(Err(ChainBreak {
                aggregate_type: stream.aggregate_type.clone(),
                aggregate_id: stream.aggregate_id.clone(),
                version: archived + 1 + i as u64,
                problem,
            }));
        }
        head.clone_from(&e.hash);
    }
    // Archived by an earlier run but never marked (it was cut short): mark them now, each
    // only if the hot copy is still the archived one.
    let mut catch_up = Vec::new();
    if opts.expire_after.is_some() && archived > 0 {
        let left = hot.unexpired(&stream, archived).await?;
        if let (Some(first), Some(last)) = (left.first(), left.last()) {
            let copies = read_archived(archive, catalog, &stream, first.0, last.0).await?;
            let archived_hash: std::collections::HashMap<u64, &str> = copies
                .iter()
                .map(|e| (e.version, e.hash.as_str()))
                .collect();
            catch_up = left
                .iter()
                .filter_map(|(v, _)| archived_hash.get(v).map(|h| (*v, (*h).to_owned())))
                .collect();
        }
    }
    Ok(Ok(Pick {
        catch_up,
        stream,
        events,
        prev_hash,
    }))
}

/// Stores one run's segments, named by the run's start, its id and a counter.
struct SegmentWriter<'a, E: ?Sized> {
    hot: &'a E,
    archive: &'a dyn Archive,
    opts: &'a ArchiverOptions,
    started: DateTime<Utc>,
    run: String,
    part: u32,
}

impl<E: EventStore + ?Sized> SegmentWriter<'_, E> {
    /// Stores a finished segment, then (when configured) marks its events' hot copies.
    async fn flush(
        &mut self,
        builder: SegmentBuilder,
        picks: Vec<Framed>,
        report: &mut ArchiveReport,
    ) -> Result<(), StoreError> {
        let (hot, archive, opts) = (self.hot, self.archive, self.opts);
        let Some(first) = picks.first() else {
            return Ok(());
        };
        self.part += 1;
        let name = crate::archive::segment_name(
            &first.stream.aggregate_type,
            self.started,
            &self.run,
            self.part,
        );
        let (bytes, index) = builder.finish(crate::envelope::now());
        let size = bytes.len() as u64;
        // Kept for the rare check below: a copy costs far less than the PUT itself.
        if !archive.put_segment(&name, bytes.clone()).await? {
            // The name is this run's own, so the writer there is most likely this run: a PUT
            // that stored but lost its answer, which the client's retry then found taken. The
            // same bytes there: ours, go on; anything else is left alone.
            let there = archive.read_segment(&name, ByteRange::All).await?;
            if there != bytes {
                return Err(StoreError::Invalid(format!(
                    "archive segment {name} already exists; it was left as it was"
                )));
            }
            tracing::info!(segment = %name, "segment already stored by a lost attempt of this run");
        }
        report.segments.push(name);
        report.bytes += size;
        report.events_archived += index.events;
        report.streams_archived += picks.len() as u64;
        if let Some(after) = opts.expire_after {
            let at = crate::envelope::now() + after;
            let marked: Vec<u64> = stream::iter(picks.iter())
                .map(|p| hot.expire(&p.stream, &p.events, at))
                .buffer_unordered(8)
                .try_collect()
                .await?;
            report.events_expiring += marked.iter().sum::<u64>();
        }
        Ok(())
    }
}

/// Whole segments, `concurrency` at a time, in the order named.
async fn fetch_segments(
    archive: &dyn Archive,
    names: Vec<String>,
    concurrency: usize,
) -> Result<Vec<(String, Arc<Vec<u8>>)>, StoreError> {
    stream::iter(names)
        .map(|name| async move {
            let bytes = archive.read_segment(&name, ByteRange::All).await?;
            Ok::<_, StoreError>((name, Arc::new(bytes)))
        })
        .buffered(concurrency)
        .try_collect()
        .await
}

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
    feed: &dyn EventFeed,
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
    let chunks: Vec<Vec<crate::archive::CatalogSegment>> =
        segments.chunks(window).map(|c| c.to_vec()).collect();
    let names = |c: &[crate::archive::CatalogSegment]| c.iter().map(|s| s.name.clone()).collect();
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
    segments: &[crate::archive::CatalogSegment],
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
                            if crate::archive::shard(&f.aggregate_id, workers) != w {
                                continue;
                            }
                            let frame = crate::archive::frame_bytes(&seg.name, bytes, f)?;
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
