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
//!
//! In use, the archive is an event store that reads archived and hot events as one history
//! ([`store`]), the archiver that fills it ([`archiver`]), and a replay that reads segments in
//! parallel ([`replay`]); [`verify`] checks it, [`catalog`] says what it holds, [`segment`] is
//! the format.

pub mod archiver;
pub mod catalog;
pub mod replay;
pub mod segment;
pub mod store;
pub mod verify;

pub use archiver::{run_archiver, ArchivePolicy, ArchiveReport, ArchiverOptions};
pub use catalog::{read_archived, Catalog, CatalogSegment, FrameRef};
pub use replay::{replay_archived, ReplayCounts};
pub use segment::{
    frame_bytes, frame_records, index_of, read_frame, read_index, segment_name, unpack_frame,
    Archive, ArchivedRecord, ByteRange, FrameIndex, SegmentBuilder, SegmentIndex, SEGMENT_SUFFIX,
};
pub use store::ArchivedEventStore;
pub use verify::{verify_frames, ArchiveVerifier, ArchivedChain};
