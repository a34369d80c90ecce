//! Verifying the archive: each frame's checksum and decoding, each event's hash, and the links
//! between a stream's frames from version 1.

use super::segment::{frame_bytes, frame_records, index_of, shard, unpack_frame, FrameIndex};
use crate::chain::{hash_fields, ChainBreak, GENESIS};
use crate::envelope::StreamId;
use std::collections::HashMap;
use std::sync::Arc;

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
    use super::super::segment::tests::{events, segment};
    use super::super::segment::SEGMENT_MAGIC;
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
