//! The archive: a stream's older events copied to compressed, immutable segment files (a
//! directory on the embedded default, S3 on AWS), so hot copies may expire and a replay of the
//! whole store can read segments in parallel.
//!
//! A segment holds events of one aggregate type: per stream, one LZ4 block (a *frame*) of its
//! events in version order, then a JSON index of the frames, then a fixed trailer. The index
//! sits at the end so a segment is written in one pass, and a reader finds any frame with two
//! ranged reads (trailer, index) plus one (the frame). Each frame carries a CRC-32 of its
//! compressed bytes (to catch rot before decompressing) and the chain hashes it enters and
//! leaves with (to link frames into one verifiable chain per stream). The catalog of what is
//! archived is read from the segments themselves: there is no second copy of it to go stale.

use crate::chain::{hash_fields, CanonicalFields, ChainBreak, GENESIS};
use crate::envelope::{format_timestamp, parse_timestamp, EventEnvelope, Metadata, StreamId};
use crate::ports::{RawEvent, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

const SEGMENT_MAGIC: &[u8; 8] = b"CHRSEG01";
const TRAILER_MAGIC: &[u8; 8] = b"CHRSIX01";
/// Index length (u64 LE), index CRC-32 (u32 LE), magic.
const TRAILER_LEN: usize = 8 + 4 + 8;
/// Segment names end so; anything else under the archive's root is not ours.
pub const SEGMENT_SUFFIX: &str = ".seg";

/// Which bytes of a segment to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    All,
    /// `len` bytes from `offset`.
    Span {
        offset: u64,
        len: u64,
    },
    /// The last `n` bytes.
    Suffix(u64),
}

/// Where segments are kept. Names are `/`-separated paths made by [`segment_name`].
#[async_trait]
pub trait Archive: Send + Sync + 'static {
    /// Stores a segment under `name` durably, unless one is there already: never overwrites.
    /// `Ok(false)` when the name was taken (the segment is left as it was).
    async fn put_segment(&self, name: &str, bytes: Vec<u8>) -> Result<bool, StoreError>;
    /// Every segment name under `prefix` (a path prefix, "" for all), in name order.
    async fn list_segments(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Part of a stored segment; reading past its end is [`StoreError::Corrupt`].
    async fn read_segment(&self, name: &str, range: ByteRange) -> Result<Vec<u8>, StoreError>;
}

/// A new segment's name: the aggregate type, then the creation time and a run id, so names
/// sort by creation and two archivers never pick the same one.
pub fn segment_name(aggregate_type: &str, created: DateTime<Utc>, run: &str, part: u32) -> String {
    format!(
        "{aggregate_type}/{}-{run}-{part:05}{SEGMENT_SUFFIX}",
        created.format("%Y%m%dT%H%M%S%.6fZ")
    )
}

/// What a segment's index says of one frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameIndex {
    pub aggregate_id: String,
    pub from_version: u64,
    pub to_version: u64,
    /// The hash of the event before `from_version` (empty for version 1): where the chain enters.
    pub prev_hash: String,
    /// The hash of the event at `to_version`.
    pub head_hash: String,
    pub first_recorded_at: String,
    pub last_recorded_at: String,
    pub offset: u64,
    pub len: u64,
    /// The frame's size decompressed: a bound for the decompressor.
    pub raw_len: u64,
    pub crc32: u32,
}

/// A segment's index, kept at its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentIndex {
    pub format: u32,
    pub aggregate_type: String,
    pub created_at: String,
    pub events: u64,
    pub frames: Vec<FrameIndex>,
}

/// Writes one segment: frames appended stream by stream, then [`SegmentBuilder::finish`].
pub struct SegmentBuilder {
    aggregate_type: String,
    bytes: Vec<u8>,
    frames: Vec<FrameIndex>,
    events: u64,
    scratch: Vec<u8>,
}

impl SegmentBuilder {
    pub fn new(aggregate_type: &str) -> Self {
        Self {
            aggregate_type: aggregate_type.to_owned(),
            bytes: SEGMENT_MAGIC.to_vec(),
            frames: Vec::new(),
            events: 0,
            scratch: Vec::new(),
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Adds one stream's consecutive events, whose first follows the event hashed `prev_hash`.
    pub fn add_frame(
        &mut self,
        events: &[EventEnvelope],
        prev_hash: &str,
    ) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        for (i, e) in events.iter().enumerate() {
            if e.aggregate_type != self.aggregate_type
                || e.aggregate_id != first.aggregate_id
                || e.version != first.version + i as u64
            {
                return Err(StoreError::Invalid(format!(
                    "a frame holds consecutive events of one {} stream; {}/{} v{} does not follow",
                    self.aggregate_type, e.aggregate_type, e.aggregate_id, e.version
                )));
            }
        }
        self.scratch.clear();
        for e in events {
            encode_event(&mut self.scratch, e);
        }
        let compressed = lz4_flex::block::compress(&self.scratch);
        self.frames.push(FrameIndex {
            aggregate_id: first.aggregate_id.clone(),
            from_version: first.version,
            to_version: last.version,
            prev_hash: prev_hash.to_owned(),
            head_hash: last.hash.clone(),
            first_recorded_at: format_timestamp(&first.recorded_at),
            last_recorded_at: format_timestamp(&last.recorded_at),
            offset: self.bytes.len() as u64,
            len: compressed.len() as u64,
            raw_len: self.scratch.len() as u64,
            crc32: crc32fast::hash(&compressed),
        });
        self.bytes.extend_from_slice(&compressed);
        self.events += events.len() as u64;
        Ok(())
    }

    /// The segment's bytes and its index.
    pub fn finish(mut self, created: DateTime<Utc>) -> (Vec<u8>, SegmentIndex) {
        let index = SegmentIndex {
            format: 1,
            aggregate_type: self.aggregate_type,
            created_at: format_timestamp(&created),
            events: self.events,
            frames: self.frames,
        };
        // Serializing plain strings and numbers can't fail.
        let json = serde_json::to_vec(&index).unwrap_or_default();
        self.bytes.extend_from_slice(&json);
        self.bytes
            .extend_from_slice(&(json.len() as u64).to_le_bytes());
        self.bytes
            .extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        self.bytes.extend_from_slice(TRAILER_MAGIC);
        (self.bytes, index)
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// One event in a frame: version, schema version, then the stored text fields.
fn encode_event(buf: &mut Vec<u8>, e: &EventEnvelope) {
    buf.extend_from_slice(&e.version.to_le_bytes());
    buf.extend_from_slice(&e.schema_version.to_le_bytes());
    put_str(buf, &e.event_id.to_string());
    put_str(buf, &e.event_type);
    put_str(buf, &crate::chain::stored_json(&e.data));
    put_str(buf, &crate::chain::stored_json(&e.metadata));
    put_str(buf, &format_timestamp(&e.recorded_at));
    put_str(buf, &e.hash);
}

/// An archived event as stored, borrowing the decompressed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchivedRecord<'a> {
    pub version: u64,
    pub schema_version: u32,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub data: &'a str,
    pub metadata: &'a str,
    pub recorded_at: &'a str,
    pub hash: &'a str,
}

impl<'a> ArchivedRecord<'a> {
    pub fn canonical(&self, stream: &'a StreamId) -> CanonicalFields<'a> {
        CanonicalFields {
            event_id: self.event_id,
            aggregate_type: &stream.aggregate_type,
            aggregate_id: &stream.aggregate_id,
            version: self.version,
            event_type: self.event_type,
            schema_version: self.schema_version,
            data: self.data,
            metadata: self.metadata,
            recorded_at: self.recorded_at,
        }
    }

    pub fn raw(&self, aggregate_id: &'a str) -> RawEvent<'a> {
        RawEvent {
            aggregate_id,
            version: self.version,
            event_type: self.event_type,
            schema_version: self.schema_version,
            data: self.data,
        }
    }

    pub fn envelope(&self, stream: &StreamId) -> Result<EventEnvelope, StoreError> {
        let bad = |what: &str, e: String| {
            StoreError::Corrupt(format!("archived {stream} v{}: {what}: {e}", self.version))
        };
        Ok(EventEnvelope {
            event_id: self
                .event_id
                .parse()
                .map_err(|e: uuid::Error| bad("event_id", e.to_string()))?,
            aggregate_type: stream.aggregate_type.clone(),
            aggregate_id: stream.aggregate_id.clone(),
            version: self.version,
            event_type: self.event_type.to_owned(),
            schema_version: self.schema_version,
            data: serde_json::from_str(self.data).map_err(|e| bad("data", e.to_string()))?,
            metadata: serde_json::from_str::<Metadata>(self.metadata)
                .map_err(|e| bad("metadata", e.to_string()))?,
            recorded_at: parse_timestamp(self.recorded_at)
                .map_err(|e| bad("recorded_at", e.to_string()))?,
            hash: self.hash.to_owned(),
        })
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn record(&mut self) -> Option<ArchivedRecord<'a>> {
        Some(ArchivedRecord {
            version: self.u64()?,
            schema_version: self.u32()?,
            event_id: self.str()?,
            event_type: self.str()?,
            data: self.str()?,
            metadata: self.str()?,
            recorded_at: self.str()?,
            hash: self.str()?,
        })
    }
}

/// Checks a frame's bytes (as read from its segment) against the index and decompresses them.
pub fn unpack_frame(
    segment: &str,
    frame: &FrameIndex,
    bytes: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let bad = |what: String| {
        StoreError::Corrupt(format!(
            "archive segment {segment}, frame of {} v{}..v{}: {what}",
            frame.aggregate_id, frame.from_version, frame.to_version
        ))
    };
    if bytes.len() as u64 != frame.len {
        return Err(bad(format!(
            "{} bytes where the index says {}",
            bytes.len(),
            frame.len
        )));
    }
    if crc32fast::hash(bytes) != frame.crc32 {
        return Err(bad(
            "the checksum does not match: the segment was changed or damaged".into(),
        ));
    }
    let raw = lz4_flex::block::decompress(bytes, frame.raw_len as usize)
        .map_err(|e| bad(format!("does not decompress: {e}")))?;
    if raw.len() as u64 != frame.raw_len {
        return Err(bad(
            "decompresses to another size than the index says".into()
        ));
    }
    Ok(raw)
}

/// The records of an unpacked frame, checked to be exactly the versions its index names.
pub fn frame_records<'a>(
    segment: &str,
    frame: &FrameIndex,
    raw: &'a [u8],
) -> Result<Vec<ArchivedRecord<'a>>, StoreError> {
    let mut c = Cursor { buf: raw, at: 0 };
    let mut out = Vec::with_capacity((frame.to_version - frame.from_version + 1) as usize);
    while c.at < raw.len() {
        let r = c.record().ok_or_else(|| {
            StoreError::Corrupt(format!(
                "archive segment {segment}: a record of {} is truncated",
                frame.aggregate_id
            ))
        })?;
        if r.version != frame.from_version + out.len() as u64 {
            return Err(StoreError::Corrupt(format!(
                "archive segment {segment}: {} v{} where v{} belongs",
                frame.aggregate_id,
                r.version,
                frame.from_version + out.len() as u64
            )));
        }
        out.push(r);
    }
    if out.last().map(|r| r.version) != Some(frame.to_version) {
        return Err(StoreError::Corrupt(format!(
            "archive segment {segment}: the frame of {} ends before v{}",
            frame.aggregate_id, frame.to_version
        )));
    }
    Ok(out)
}

/// Reads a segment's index from its tail, checking trailer and checksum.
pub async fn read_index(archive: &dyn Archive, name: &str) -> Result<SegmentIndex, StoreError> {
    let bad = |what: String| StoreError::Corrupt(format!("archive segment {name}: {what}"));
    let tail = archive
        .read_segment(name, ByteRange::Suffix(TRAILER_LEN as u64))
        .await?;
    if tail.len() != TRAILER_LEN || &tail[12..] != TRAILER_MAGIC {
        return Err(bad("no segment trailer at its end".into()));
    }
    let len = u64::from_le_bytes(tail[..8].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(tail[8..12].try_into().unwrap_or_default());
    if len > 1 << 30 {
        return Err(bad(format!("an index of {len} bytes")));
    }
    let both = archive
        .read_segment(name, ByteRange::Suffix(len + TRAILER_LEN as u64))
        .await?;
    let json = both
        .get(..len as usize)
        .ok_or_else(|| bad("shorter than its index".into()))?;
    if crc32fast::hash(json) != crc {
        return Err(bad("the index checksum does not match".into()));
    }
    let index: SegmentIndex =
        serde_json::from_slice(json).map_err(|e| bad(format!("unreadable index: {e}")))?;
    if index.format != 1 {
        return Err(bad(format!(
            "segment format {} is newer than this build",
            index.format
        )));
    }
    Ok(index)
}

/// Parses a whole segment's index from its bytes (for readers holding the whole segment).
pub fn index_of(name: &str, bytes: &[u8]) -> Result<SegmentIndex, StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("archive segment {name}: {what}"));
    if bytes.len() < SEGMENT_MAGIC.len() + TRAILER_LEN || &bytes[..8] != SEGMENT_MAGIC {
        return Err(bad("not a segment"));
    }
    let tail = &bytes[bytes.len() - TRAILER_LEN..];
    if &tail[12..] != TRAILER_MAGIC {
        return Err(bad("no segment trailer at its end"));
    }
    let len = u64::from_le_bytes(tail[..8].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(tail[8..12].try_into().unwrap_or_default());
    let start = (bytes.len() - TRAILER_LEN)
        .checked_sub(len)
        .ok_or_else(|| bad("shorter than its index"))?;
    let json = &bytes[start..bytes.len() - TRAILER_LEN];
    if crc32fast::hash(json) != crc {
        return Err(bad("the index checksum does not match"));
    }
    serde_json::from_slice(json).map_err(|e| bad(&format!("unreadable index: {e}")))
}

/// The bytes of one frame within a whole segment.
pub fn frame_bytes<'a>(
    name: &str,
    bytes: &'a [u8],
    frame: &FrameIndex,
) -> Result<&'a [u8], StoreError> {
    bytes
        .get(frame.offset as usize..(frame.offset + frame.len) as usize)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "archive segment {name}: the frame of {} lies past its end",
                frame.aggregate_id
            ))
        })
}

/// A segment known to the catalog.
#[derive(Clone, Debug)]
pub struct CatalogSegment {
    pub name: String,
    pub index: Arc<SegmentIndex>,
}

/// One frame of a stream: which segment, which frame.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef {
    pub segment: usize,
    pub frame: usize,
}

/// What the archive holds, read from the segments' indexes.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub segments: Vec<CatalogSegment>,
    /// Each stream's frames, by `from_version` (then segment name).
    streams: HashMap<StreamId, Vec<FrameRef>>,
}

impl Catalog {
    /// Reads every segment's index.
    pub async fn load(archive: &dyn Archive) -> Result<Self, StoreError> {
        Self::default().refreshed(archive).await
    }

    /// This catalog plus the segments written since it was read.
    pub async fn refreshed(&self, archive: &dyn Archive) -> Result<Self, StoreError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let known: std::collections::HashSet<&str> =
            self.segments.iter().map(|s| s.name.as_str()).collect();
        let names: Vec<String> = archive
            .list_segments("")
            .await?
            .into_iter()
            .filter(|n| !known.contains(n.as_str()))
            .collect();
        let fresh: Vec<CatalogSegment> = stream::iter(names)
            .map(|name| async move {
                let index = read_index(archive, &name).await?;
                Ok::<_, StoreError>(CatalogSegment {
                    name,
                    index: Arc::new(index),
                })
            })
            .buffered(16)
            .try_collect()
            .await?;
        let mut segments = self.segments.clone();
        segments.extend(fresh);
        segments.sort_by(|a, b| a.name.cmp(&b.name));
        let mut streams: HashMap<StreamId, Vec<FrameRef>> = HashMap::new();
        for (si, s) in segments.iter().enumerate() {
            for (fi, f) in s.index.frames.iter().enumerate() {
                streams
                    .entry(StreamId::new(&s.index.aggregate_type, &f.aggregate_id))
                    .or_default()
                    .push(FrameRef {
                        segment: si,
                        frame: fi,
                    });
            }
        }
        for frames in streams.values_mut() {
            frames.sort_by_key(|r| {
                (
                    segments[r.segment].index.frames[r.frame].from_version,
                    r.segment,
                )
            });
        }
        Ok(Self { segments, streams })
    }

    pub fn frame(&self, r: FrameRef) -> (&CatalogSegment, &FrameIndex) {
        let s = &self.segments[r.segment];
        (s, &s.index.frames[r.frame])
    }

    /// The stream's frames, by version.
    pub fn frames(&self, stream: &StreamId) -> &[FrameRef] {
        self.streams.get(stream).map_or(&[], |v| v.as_slice())
    }

    /// The version up to which the stream is archived without a gap from version 1, with the
    /// hash there (0 and the genesis hash when nothing is).
    pub fn archived_head(&self, stream: &StreamId) -> (u64, String) {
        let mut head = (0, GENESIS.to_owned());
        for r in self.frames(stream) {
            let (_, f) = self.frame(*r);
            if f.from_version > head.0 + 1 {
                break;
            }
            if f.to_version > head.0 {
                head = (f.to_version, f.head_hash.clone());
            }
        }
        head
    }

    /// Segments of one aggregate type, in name order.
    pub fn segments_of<'a>(
        &'a self,
        aggregate_type: &'a str,
    ) -> impl Iterator<Item = &'a CatalogSegment> + 'a {
        self.segments
            .iter()
            .filter(move |s| s.index.aggregate_type == aggregate_type)
    }

    pub fn events(&self) -> u64 {
        self.segments.iter().map(|s| s.index.events).sum()
    }
}

/// One frame's bytes, by a ranged read of its segment.
pub async fn read_frame(
    archive: &dyn Archive,
    segment: &str,
    frame: &FrameIndex,
) -> Result<Vec<u8>, StoreError> {
    let span = ByteRange::Span {
        offset: frame.offset,
        len: frame.len,
    };
    archive.read_segment(segment, span).await
}

/// Reads a stream's archived events from `from` to `to` (inclusive), in version order, as stored.
pub async fn read_archived(
    archive: &dyn Archive,
    catalog: &Catalog,
    stream: &StreamId,
    from: u64,
    to: u64,
) -> Result<Vec<EventEnvelope>, StoreError> {
    let mut out: Vec<EventEnvelope> = Vec::new();
    for r in catalog.frames(stream) {
        let (seg, f) = catalog.frame(*r);
        let next = out.last().map_or(from, |e| e.version + 1);
        if f.to_version < next || f.from_version > to {
            continue;
        }
        let bytes = read_frame(archive, &seg.name, f).await?;
        let raw = unpack_frame(&seg.name, f, &bytes)?;
        for rec in frame_records(&seg.name, f, &raw)? {
            if rec.version >= next && rec.version <= to {
                out.push(rec.envelope(stream)?);
            }
        }
    }
    Ok(out)
}

/// What checking the archive found for one stream: how far its archived chain verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedChain {
    pub stream: StreamId,
    /// The last version of the unbroken archived chain from version 1, and its hash.
    pub version: u64,
    pub head: String,
    pub broken: Option<ChainBreak>,
    pub events: u64,
}

/// Verifies the archive's frames: checksums, decoding, each event's hash and the links between
/// a stream's frames from version 1, a window of segments at a time (in name order), so an
/// archive of any size is checked in bounded memory: each stream's chain is carried from one
/// window on. Workers share the streams. Blocking: run it off the async runtime.
pub struct ArchiveVerifier {
    shards: Vec<HashMap<StreamId, ArchivedChain>>,
    done: u64,
}

impl ArchiveVerifier {
    pub fn new(workers: usize) -> Self {
        Self {
            shards: (0..workers.max(1)).map(|_| HashMap::new()).collect(),
            done: 0,
        }
    }

    /// Checks the next segments (by name order); blocking.
    pub fn window(
        &mut self,
        segments: &[(String, Arc<Vec<u8>>)],
        progress: &(dyn Fn(u64) + Send + Sync),
    ) {
        use std::sync::atomic::{AtomicU64, Ordering};
        let workers = self.shards.len();
        let done = AtomicU64::new(self.done);
        let shards = std::mem::take(&mut self.shards);
        self.shards = std::thread::scope(|scope| {
            let handles: Vec<_> = shards
                .into_iter()
                .enumerate()
                .map(|(w, mut chains)| {
                    let done = &done;
                    scope.spawn(move || {
                        let mut frames: Vec<(&str, &[u8], FrameIndex, String)> = Vec::new();
                        for (name, bytes) in segments {
                            let index = match index_of(name, bytes) {
                                Ok(i) => i,
                                // Every worker sees it; worker 0 reports it.
                                Err(e) if w == 0 => {
                                    let ty = name.split('/').next().unwrap_or("");
                                    let stream = StreamId::new(ty, format!("*{name}"));
                                    chains.insert(
                                        stream.clone(),
                                        ArchivedChain {
                                            broken: Some(ChainBreak {
                                                aggregate_type: ty.to_owned(),
                                                aggregate_id: format!("(segment {name})"),
                                                version: 0,
                                                problem: e.to_string(),
                                            }),
                                            stream,
                                            version: 0,
                                            head: String::new(),
                                            events: 0,
                                        },
                                    );
                                    continue;
                                }
                                Err(_) => continue,
                            };
                            for f in index.frames {
                                if shard(&f.aggregate_id, workers) == w {
                                    frames.push((name, bytes, f, index.aggregate_type.clone()));
                                }
                            }
                        }
                        // By stream, then version: links are checked in order.
                        frames.sort_by(|a, b| {
                            (&a.3, &a.2.aggregate_id, a.2.from_version).cmp(&(
                                &b.3,
                                &b.2.aggregate_id,
                                b.2.from_version,
                            ))
                        });
                        for (name, bytes, f, ty) in &frames {
                            let stream = StreamId::new(ty, &f.aggregate_id);
                            let chain =
                                chains
                                    .entry(stream.clone())
                                    .or_insert_with(|| ArchivedChain {
                                        stream: stream.clone(),
                                        version: 0,
                                        head: GENESIS.to_owned(),
                                        broken: None,
                                        events: 0,
                                    });
                            let n = check_frame(name, bytes, f, chain);
                            done.fetch_add(n, Ordering::Relaxed);
                            progress(done.load(Ordering::Relaxed));
                        }
                        chains
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        self.done = done.load(Ordering::Relaxed);
    }

    /// Every stream's chain, by stream.
    pub fn finish(self) -> Vec<ArchivedChain> {
        let mut all: Vec<ArchivedChain> = self
            .shards
            .into_iter()
            .flat_map(|m| m.into_values())
            .collect();
        all.sort_by(|a, b| a.stream.cmp(&b.stream));
        all
    }
}

pub(crate) fn shard(id: &str, workers: usize) -> usize {
    use std::hash::BuildHasher;
    (rustc_hash::FxBuildHasher.hash_one(id) % workers as u64) as usize
}

/// Verifies one stream's archived chain from its frames alone (each as `(segment, index,
/// the frame's bytes)`, in version order), without reading whole segments.
pub fn verify_frames(stream: &StreamId, frames: &[(String, FrameIndex, Vec<u8>)]) -> ArchivedChain {
    let mut chain = ArchivedChain {
        stream: stream.clone(),
        version: 0,
        head: GENESIS.to_owned(),
        broken: None,
        events: 0,
    };
    for (name, f, bytes) in frames {
        // The bytes are the frame alone: it starts at offset 0 of them.
        let at_zero = FrameIndex {
            offset: 0,
            ..f.clone()
        };
        check_frame(name, bytes, &at_zero, &mut chain);
    }
    chain
}

/// Follows one frame on from `chain`; returns the events it checked.
fn check_frame(name: &str, bytes: &[u8], f: &FrameIndex, chain: &mut ArchivedChain) -> u64 {
    if chain.broken.is_some() {
        return 0;
    }
    let stream = chain.stream.clone();
    let fail = |chain: &mut ArchivedChain, version: u64, problem: String| {
        chain.broken = Some(ChainBreak {
            aggregate_type: stream.aggregate_type.clone(),
            aggregate_id: stream.aggregate_id.clone(),
            version,
            problem: format!("archive segment {name}: {problem}"),
        });
    };
    if f.to_version <= chain.version {
        // An overlapping frame (two archivers raced): it must agree where it ends.
        return 0;
    }
    if f.from_version > chain.version + 1 {
        fail(
            chain,
            chain.version + 1,
            format!(
                "missing: the next archived frame starts at v{}",
                f.from_version
            ),
        );
        return 0;
    }
    let records = match frame_bytes(name, bytes, f).and_then(|b| unpack_frame(name, f, b)) {
        Ok(raw) => raw,
        Err(e) => {
            fail(chain, f.from_version.max(chain.version + 1), e.to_string());
            return 0;
        }
    };
    let records = match frame_records(name, f, &records) {
        Ok(r) => r,
        Err(e) => {
            fail(chain, f.from_version.max(chain.version + 1), e.to_string());
            return 0;
        }
    };
    let mut n = 0;
    for r in records {
        if r.version <= chain.version {
            // Overlap with an earlier frame: the copies must be the same event.
            continue;
        }
        let computed = hash_fields(&chain.head, &r.canonical(&stream));
        if computed != r.hash {
            fail(
                chain,
                r.version,
                "changed: the archived event does not match its hash (or its predecessor's)".into(),
            );
            return n;
        }
        chain.version = r.version;
        chain.head = computed;
        chain.events += 1;
        n += 1;
    }
    if f.head_hash != chain.head {
        fail(
            chain,
            f.to_version,
            "the index names another chain head than its events".into(),
        );
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The whole archive in one window.
    fn verify_archive_blocking(
        segments: &[(String, Arc<Vec<u8>>)],
        workers: usize,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Vec<ArchivedChain> {
        let mut v = ArchiveVerifier::new(workers);
        v.window(segments, progress);
        v.finish()
    }

    fn events(id: &str, n: u64) -> Vec<EventEnvelope> {
        let mut out: Vec<EventEnvelope> = (1..=n)
            .map(|v| EventEnvelope {
                event_id: uuid::Uuid::now_v7(),
                aggregate_type: "accounts".into(),
                aggregate_id: id.into(),
                version: v,
                event_type: "Deposited".into(),
                schema_version: 2,
                data: json!({"amount": v, "currency": "EUR"}),
                metadata: Metadata::default(),
                recorded_at: crate::envelope::now(),
                hash: String::new(),
            })
            .collect();
        crate::chain::seal(GENESIS, &mut out);
        out
    }

    fn segment(frames: &[(&[EventEnvelope], &str)]) -> Vec<u8> {
        let mut b = SegmentBuilder::new("accounts");
        for (events, prev) in frames {
            b.add_frame(events, prev).unwrap();
        }
        b.finish(Utc::now()).0
    }

    #[test]
    fn a_segment_round_trips() {
        let a = events("a", 5);
        let b = events("b", 3);
        let bytes = segment(&[(&a, GENESIS), (&b, GENESIS)]);
        let index = index_of("s", &bytes).unwrap();
        assert_eq!(index.events, 8);
        let f = &index.frames[1];
        let raw = unpack_frame("s", f, frame_bytes("s", &bytes, f).unwrap()).unwrap();
        let stream = StreamId::new("accounts", "b");
        let back: Vec<EventEnvelope> = frame_records("s", f, &raw)
            .unwrap()
            .iter()
            .map(|r| r.envelope(&stream).unwrap())
            .collect();
        assert_eq!(back, b);
    }

    #[test]
    fn a_frame_of_gapped_events_is_refused() {
        let mut a = events("a", 3);
        a.remove(1);
        assert!(SegmentBuilder::new("accounts")
            .add_frame(&a, GENESIS)
            .is_err());
    }

    #[test]
    fn verify_links_frames_and_names_a_changed_event() {
        let a = events("a", 6);
        let s1 = segment(&[(&a[..3], GENESIS)]);
        let s2 = segment(&[(&a[3..], &a[2].hash)]);
        let segs = vec![
            ("1".to_owned(), Arc::new(s1)),
            ("2".to_owned(), Arc::new(s2.clone())),
        ];
        let out = verify_archive_blocking(&segs, 2, &|_| {});
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].version, out[0].broken.clone()), (6, None));

        // Change a byte of the second segment's frame and fix its CRC: the hash still tells.
        let mut forged = a.clone();
        forged[4].data = json!({"amount": 999, "currency": "EUR"});
        let s2b = segment(&[(&forged[3..], &a[2].hash)]);
        let segs = vec![segs[0].clone(), ("2".to_owned(), Arc::new(s2b))];
        let out = verify_archive_blocking(&segs, 1, &|_| {});
        let b = out[0].broken.clone().unwrap();
        assert_eq!(b.version, 5, "{b}");

        // Flip a compressed byte: the checksum tells.
        let mut rotten = s2;
        rotten[SEGMENT_MAGIC.len() + 2] ^= 0xff;
        let segs = vec![segs[0].clone(), ("2".to_owned(), Arc::new(rotten))];
        let out = verify_archive_blocking(&segs, 1, &|_| {});
        let b = out[0].broken.clone().unwrap();
        assert_eq!(b.version, 4);
        assert!(b.problem.contains("checksum"), "{b}");
    }

    #[test]
    fn a_missing_frame_is_named() {
        let a = events("a", 6);
        let s2 = segment(&[(&a[3..], &a[2].hash)]);
        let out = verify_archive_blocking(&[("2".to_owned(), Arc::new(s2))], 1, &|_| {});
        assert_eq!(out[0].broken.clone().unwrap().version, 1);
    }
}
