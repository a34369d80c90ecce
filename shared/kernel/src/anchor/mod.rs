//! Anchoring: every stream's head (type, id, version, chain hash) committed to one Merkle root,
//! kept outside the store in a chain of its own. A stream's hash chain proves its events weren't
//! changed or reordered; it can't prove its tail wasn't cut, or rewritten whole with recomputed
//! hashes. An anchor can: the store must still hold every anchored head, with the anchored hash.
//!
//! [`take`] anchors a store's heads now; [`check`] holds a store to its latest anchor (and the
//! anchors to their own chain); [`proof`] gives one stream's inclusion path to an anchor's root,
//! which anyone can check with the anchor alone ([`Proof::check`]).

pub mod merkle;

pub use merkle::{Head, Step};

use crate::chain::ChainBreak;
use crate::envelope::{format_timestamp, now, StreamId};
use crate::error::StoreError;
use crate::ports::{AnchorLog, StoredHashes, StreamHeads};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Tags an anchor's hash so it can't be mistaken for any other hash Chronicle makes.
const DOMAIN: &[u8] = b"chronicle.anchor.v1";

/// One anchor: the root of every stream's head at a moment, linked to the anchor before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// 1, 2, 3... in the anchor chain.
    pub sequence: u64,
    /// The Merkle root of the heads (lower-case hex).
    pub root: String,
    pub streams: u64,
    /// Events under the heads (the sum of their versions).
    pub events: u64,
    #[serde(with = "crate::envelope::rfc3339")]
    pub anchored_at: DateTime<Utc>,
    /// The previous anchor's `hash`; empty for the first.
    pub previous: String,
    /// SHA-256 over the fields above.
    pub hash: String,
}

impl Anchor {
    /// The anchor after `previous` for `heads` (sorted by stream), at `at`.
    pub fn next(previous: Option<&Anchor>, heads: &[Head], at: DateTime<Utc>) -> Self {
        let leaves: Vec<[u8; 32]> = heads.iter().map(Head::leaf).collect();
        let mut anchor = Self {
            sequence: previous.map_or(1, |p| p.sequence + 1),
            root: hex::encode(merkle::root(&leaves)),
            streams: heads.len() as u64,
            events: heads.iter().map(|h| h.version).sum(),
            anchored_at: at,
            previous: previous.map(|p| p.hash.clone()).unwrap_or_default(),
            hash: String::new(),
        };
        anchor.hash = anchor.expected_hash();
        anchor
    }

    /// The hash its fields make (what `hash` must be).
    pub fn expected_hash(&self) -> String {
        let mut h = Sha256::new();
        for field in [
            DOMAIN,
            self.sequence.to_string().as_bytes(),
            self.root.as_bytes(),
            self.streams.to_string().as_bytes(),
            self.events.to_string().as_bytes(),
            format_timestamp(&self.anchored_at).as_bytes(),
            self.previous.as_bytes(),
        ] {
            h.update((field.len() as u32).to_le_bytes());
            h.update(field);
        }
        hex::encode(h.finalize())
    }
}

/// Anchors `heads` of the store now, after the log's last anchor.
pub async fn take(heads: &dyn StreamHeads, log: &dyn AnchorLog) -> Result<Anchor, StoreError> {
    let mut all = heads.heads().await?;
    // The port promises this order; a root must not depend on a store's whim.
    all.sort_unstable();
    let anchors = log.anchors().await?;
    let anchor = Anchor::next(anchors.last(), &all, now());
    log.append(&anchor, &all).await?;
    Ok(anchor)
}

/// What holding a store to its anchors found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnchorReport {
    /// The anchor the store was held to (the latest), if there is one.
    pub anchor: Option<Anchor>,
    /// Anchors in the log.
    pub anchors: u64,
    /// Streams whose anchored head is missing, shorter, or differs, by stream.
    pub breaks: Vec<ChainBreak>,
    /// The anchor log's own faults: a broken anchor chain, heads that don't make their root.
    pub log_problems: Vec<String>,
}

impl AnchorReport {
    pub fn is_clean(&self) -> bool {
        self.breaks.is_empty() && self.log_problems.is_empty()
    }
}

/// Holds the store to the log: the anchor chain first (every anchor's hash recomputed and
/// linked to the one before), then the latest anchor's heads (they must make its root), then
/// the store (every anchored head still there, with the anchored hash).
pub async fn check(
    log: &dyn AnchorLog,
    heads: &dyn StreamHeads,
    hashes: &dyn StoredHashes,
) -> Result<AnchorReport, StoreError> {
    let anchors = log.anchors().await?;
    let mut report = AnchorReport {
        anchors: anchors.len() as u64,
        ..AnchorReport::default()
    };
    let mut previous: Option<&Anchor> = None;
    for (i, a) in anchors.iter().enumerate() {
        if a.sequence != i as u64 + 1 {
            report.log_problems.push(format!(
                "anchor #{} is at place {} of the log",
                a.sequence,
                i + 1
            ));
        }
        if a.hash != a.expected_hash() {
            report.log_problems.push(format!(
                "anchor #{}: its hash {} is not what its fields make ({})",
                a.sequence,
                a.hash,
                a.expected_hash()
            ));
        }
        let want = previous.map(|p| p.hash.as_str()).unwrap_or_default();
        if a.previous != want {
            report.log_problems.push(format!(
                "anchor #{}: it links to {:?}, the anchor before it is {:?}",
                a.sequence, a.previous, want
            ));
        }
        previous = Some(a);
    }
    let Some(latest) = anchors.last().cloned() else {
        return Ok(report);
    };
    let anchored = log.heads(latest.sequence).await?;
    let leaves: Vec<[u8; 32]> = anchored.iter().map(Head::leaf).collect();
    if hex::encode(merkle::root(&leaves)) != latest.root || anchored.len() as u64 != latest.streams
    {
        report.log_problems.push(format!(
            "anchor #{}: the heads kept with it ({} streams) do not make its root {}",
            latest.sequence,
            anchored.len(),
            latest.root
        ));
    }
    // Merge the anchored heads with the store's: unchanged streams compare at once; streams
    // that moved on need the hash at their anchored version.
    let mut current = heads.heads().await?;
    current.sort_unstable();
    let mut moved: Vec<&Head> = Vec::new();
    let mut at = 0;
    for h in &anchored {
        let key = (&h.aggregate_type, &h.aggregate_id);
        while at < current.len() && (&current[at].aggregate_type, &current[at].aggregate_id) < key {
            at += 1;
        }
        let now = current
            .get(at)
            .filter(|c| (&c.aggregate_type, &c.aggregate_id) == key);
        match now {
            None => report
                .breaks
                .push(anchor_break(h, "the store has no such stream".into())),
            Some(c) if c.version < h.version => report
                .breaks
                .push(anchor_break(h, format!("store ends at v{}", c.version))),
            Some(c) if c.version == h.version && c.hash != h.hash => report
                .breaks
                .push(anchor_break(h, format!("store has {} there", c.hash))),
            Some(c) if c.version > h.version => moved.push(h),
            Some(_) => {}
        }
    }
    for chunk in moved.chunks(10_000) {
        let at: Vec<(StreamId, u64)> = chunk
            .iter()
            .map(|h| (StreamId::new(&h.aggregate_type, &h.aggregate_id), h.version))
            .collect();
        let stored = hashes.hashes_at(&at).await?;
        for (h, s) in chunk.iter().zip(stored) {
            match s {
                Some(s) if s == h.hash => {}
                Some(s) => report
                    .breaks
                    .push(anchor_break(h, format!("store has {s} there"))),
                None => report.breaks.push(anchor_break(
                    h,
                    "the store does not hold that version".into(),
                )),
            }
        }
    }
    report.breaks.sort_by(|a, b| {
        (&a.aggregate_type, &a.aggregate_id).cmp(&(&b.aggregate_type, &b.aggregate_id))
    });
    report.anchor = Some(latest);
    Ok(report)
}

fn anchor_break(h: &Head, what: String) -> ChainBreak {
    ChainBreak {
        aggregate_type: h.aggregate_type.clone(),
        aggregate_id: h.aggregate_id.clone(),
        version: h.version,
        problem: format!("anchored v{} {}, {what}", h.version, h.hash),
    }
}

/// One stream's place under an anchor: its head, the path to the root, and the anchor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub head: Head,
    /// Siblings from the head's leaf up to the root.
    pub path: Vec<Step>,
    pub anchor: Anchor,
}

impl Proof {
    /// Whether the head leads to the anchor's root along the path and the anchor's hash is
    /// what its fields make: nothing but the proof is needed.
    pub fn check(&self) -> Result<(), String> {
        if self.anchor.hash != self.anchor.expected_hash() {
            return Err("the anchor's hash is not what its fields make".into());
        }
        match merkle::root_from_path(self.head.leaf(), &self.path) {
            Some(r) if hex::encode(r) == self.anchor.root => Ok(()),
            Some(r) => Err(format!(
                "the path leads to {}, the anchor's root is {}",
                hex::encode(r),
                self.anchor.root
            )),
            None => Err("the path holds a sibling that is not a hash".into()),
        }
    }
}

/// The proof of `stream` under the latest anchor; `None` when no anchor holds it.
pub async fn proof(log: &dyn AnchorLog, stream: &StreamId) -> Result<Option<Proof>, StoreError> {
    let Some(anchor) = log.anchors().await?.pop() else {
        return Ok(None);
    };
    let heads = log.heads(anchor.sequence).await?;
    let Ok(index) = heads.binary_search_by(|h| {
        (h.aggregate_type.as_str(), h.aggregate_id.as_str())
            .cmp(&(stream.aggregate_type.as_str(), stream.aggregate_id.as_str()))
    }) else {
        return Ok(None);
    };
    let leaves: Vec<[u8; 32]> = heads.iter().map(Head::leaf).collect();
    Ok(Some(Proof {
        head: heads[index].clone(),
        path: merkle::path(&leaves, index),
        anchor,
    }))
}
