//! The catalog: what the archive holds, read from the segments' own indexes (there is no second
//! copy of it to go stale), and reading a stream's archived events through it.

use super::segment::{
    frame_records, read_frame, read_index, unpack_frame, Archive, FrameIndex, SegmentIndex,
};
use crate::chain::GENESIS;
use crate::envelope::{EventEnvelope, StreamId};
use crate::ports::StoreError;
use std::collections::HashMap;
use std::sync::Arc;

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
