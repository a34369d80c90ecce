//! The segment format (its layout is told on the archive module): writing a segment, reading
//! its index, frames and records; and where segments are kept, the [`Archive`] port.

use crate::chain::{stored_json, CanonicalFields};
use crate::envelope::{format_timestamp, parse_timestamp, EventEnvelope, Metadata, StreamId};
use crate::ports::{RawEvent, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub(super) const SEGMENT_MAGIC: &[u8; 8] = b"CHRSEG01";
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
    put_str(buf, &stored_json(&e.data));
    put_str(buf, &stored_json(&e.metadata));
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

/// Whole segments, `concurrency` at a time, in the order named.
pub(crate) async fn fetch_segments(
    archive: &dyn Archive,
    names: Vec<String>,
    concurrency: usize,
) -> Result<Vec<(String, Arc<Vec<u8>>)>, StoreError> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(names)
        .map(|name| async move {
            let bytes = archive.read_segment(&name, ByteRange::All).await?;
            Ok::<_, StoreError>((name, Arc::new(bytes)))
        })
        .buffered(concurrency)
        .try_collect()
        .await
}

/// Which of `workers` takes a stream's frames (verifying, replaying).
pub(crate) fn shard(id: &str, workers: usize) -> usize {
    use std::hash::BuildHasher;
    (rustc_hash::FxBuildHasher.hash_one(id) % workers as u64) as usize
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::chain::GENESIS;
    use serde_json::json;

    pub(in crate::archive) fn events(id: &str, n: u64) -> Vec<EventEnvelope> {
        let mut out: Vec<EventEnvelope> = (1..=n)
            .map(|v| EventEnvelope {
                event_id: uuid::Uuid::now_v7(),
                aggregate_type: "widgets".into(),
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

    pub(in crate::archive) fn segment(frames: &[(&[EventEnvelope], &str)]) -> Vec<u8> {
        let mut b = SegmentBuilder::new("widgets");
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
        let stream = StreamId::new("widgets", "b");
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
        assert!(SegmentBuilder::new("widgets")
            .add_frame(&a, GENESIS)
            .is_err());
    }
}
