//! The archiver: copies streams' older events into new segments, and (when configured) marks
//! their hot copies to expire once a segment is stored.

use super::catalog::{read_archived, Catalog};
use super::segment::{segment_name, Archive, ByteRange, SegmentBuilder};
use crate::chain::{hash_envelope, ChainBreak};
use crate::envelope::{EventEnvelope, StreamId};
use crate::ports::{EventStore, Expiry, ReadRange, SnapshotStore, StoreError, StreamListing};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use rustc_hash::FxHashMap;
use serde::Serialize;

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
    /// DynamoDB TTL; [`run_archiver_expiring`] only); `None` keeps them.
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
///
/// For a store that keeps every hot copy (no [`Expiry`]): `opts.expire_after` is refused.
pub async fn run_archiver<E, S>(
    hot: &E,
    snapshots: &S,
    archive: &dyn Archive,
    opts: &ArchiverOptions,
    progress: impl Fn(u64),
) -> Result<ArchiveReport, StoreError>
where
    E: EventStore + StreamListing + ?Sized,
    S: SnapshotStore + ?Sized,
{
    if opts.expire_after.is_some() {
        return Err(StoreError::Invalid(
            "this store keeps every event: its hot copies cannot be set to expire".into(),
        ));
    }
    archive_all::<E, S, NoExpiry>(hot, None, snapshots, archive, opts, progress).await
}

/// [`run_archiver`] for a store whose hot copies can expire: with `opts.expire_after`, each
/// archived event's hot copy is marked once its segment is stored.
pub async fn run_archiver_expiring<E, S>(
    hot: &E,
    snapshots: &S,
    archive: &dyn Archive,
    opts: &ArchiverOptions,
    progress: impl Fn(u64),
) -> Result<ArchiveReport, StoreError>
where
    E: EventStore + StreamListing + Expiry + ?Sized,
    S: SnapshotStore + ?Sized,
{
    archive_all(hot, Some(hot), snapshots, archive, opts, progress).await
}

/// No expiry, as a type: [`run_archiver`]'s, which never calls it.
enum NoExpiry {}

#[async_trait::async_trait]
impl Expiry for NoExpiry {
    async fn expire(
        &self,
        _: &StreamId,
        _: &[(u64, String)],
        _: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        match *self {}
    }
    async fn unexpired(&self, _: &StreamId, _: u64) -> Result<Vec<(u64, String)>, StoreError> {
        match *self {}
    }
}

async fn archive_all<E, S, X>(
    hot: &E,
    expiry: Option<&X>,
    snapshots: &S,
    archive: &dyn Archive,
    opts: &ArchiverOptions,
    progress: impl Fn(u64),
) -> Result<ArchiveReport, StoreError>
where
    E: EventStore + StreamListing + ?Sized,
    S: SnapshotStore + ?Sized,
    X: Expiry + ?Sized,
{
    let expiry = expiry.zip(opts.expire_after);
    let started = crate::envelope::now();
    let mut writer = SegmentWriter {
        expiry,
        archive,
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
            .map(|s| {
                pick(
                    hot,
                    expiry.map(|e| e.0),
                    snapshots,
                    (archive, &catalog),
                    s,
                    opts,
                    started,
                )
            })
            .buffered(16)
            .try_collect()
            .await?;
        for p in picks {
            report.streams += 1;
            if let (Ok(p), Some((expiry, after))) = (&p, expiry) {
                if !p.catch_up.is_empty() {
                    let at = crate::envelope::now() + after;
                    report.events_expiring += expiry.expire(&p.stream, &p.catch_up, at).await?;
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

async fn pick<E, S, X>(
    hot: &E,
    expiry: Option<&X>,
    snapshots: &S,
    (archive, catalog): (&dyn Archive, &Catalog),
    stream: StreamId,
    opts: &ArchiverOptions,
    now: DateTime<Utc>,
) -> Result<Result<Pick, ChainBreak>, StoreError>
where
    E: EventStore + ?Sized,
    S: SnapshotStore + ?Sized,
    X: Expiry + ?Sized,
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
    if let (Some(expiry), true) = (expiry, archived > 0) {
        let left = expiry.unexpired(&stream, archived).await?;
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
struct SegmentWriter<'a, X: ?Sized> {
    /// Where archived copies are marked to expire, and after how long.
    expiry: Option<(&'a X, chrono::Duration)>,
    archive: &'a dyn Archive,
    started: DateTime<Utc>,
    run: String,
    part: u32,
}

impl<X: Expiry + ?Sized> SegmentWriter<'_, X> {
    /// Stores a finished segment, then (when configured) marks its events' hot copies.
    async fn flush(
        &mut self,
        builder: SegmentBuilder,
        picks: Vec<Framed>,
        report: &mut ArchiveReport,
    ) -> Result<(), StoreError> {
        let (archive, expiry) = (self.archive, self.expiry);
        let Some(first) = picks.first() else {
            return Ok(());
        };
        self.part += 1;
        let name = segment_name(
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
        if let Some((expiry, after)) = expiry {
            let at = crate::envelope::now() + after;
            let marked: Vec<u64> = stream::iter(picks.iter())
                .map(|p| expiry.expire(&p.stream, &p.events, at))
                .buffer_unordered(8)
                .try_collect()
                .await?;
            report.events_expiring += marked.iter().sum::<u64>();
        }
        Ok(())
    }
}
