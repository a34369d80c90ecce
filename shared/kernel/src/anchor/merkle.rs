//! A Merkle tree over stream heads, after RFC 6962 (Certificate Transparency): leaves and inner
//! nodes hashed with different prefixes (so neither can pass for the other), an odd node carried
//! up a level as it is. An inclusion path proves one head is under a root with log2(n) hashes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One stream's head as anchored: the stream, its last version and that event's chain hash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Head {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub version: u64,
    pub hash: String,
}

impl Head {
    /// The leaf hash: `0x00`, then each field length-prefixed (u32 LE).
    pub fn leaf(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([0u8]);
        for field in [
            self.aggregate_type.as_bytes(),
            self.aggregate_id.as_bytes(),
            self.version.to_string().as_bytes(),
            self.hash.as_bytes(),
        ] {
            h.update((field.len() as u32).to_le_bytes());
            h.update(field);
        }
        h.finalize().into()
    }
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the leaves in order; the hash of nothing for none.
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return Sha256::digest(b"").into();
    }
    let mut level: Vec<[u8; 32]> = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node(l, r),
                [only] => *only,
                _ => unreachable!("chunks of two"),
            })
            .collect();
    }
    level[0]
}

/// One step of an inclusion path: the sibling's hash, and whether it is on the left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub sibling: String,
    pub left: bool,
}

/// The inclusion path of leaf `index` among `leaves`: the siblings from the leaf up.
pub fn path(leaves: &[[u8; 32]], mut index: usize) -> Vec<Step> {
    let mut out = Vec::new();
    let mut level: Vec<[u8; 32]> = leaves.to_vec();
    while level.len() > 1 {
        let sibling = index ^ 1;
        if sibling < level.len() {
            out.push(Step {
                sibling: hex::encode(level[sibling]),
                left: sibling < index,
            });
        }
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node(l, r),
                [only] => *only,
                _ => unreachable!("chunks of two"),
            })
            .collect();
        index /= 2;
    }
    out
}

/// The root a leaf and its path lead to; `None` if a sibling is not a hash.
pub fn root_from_path(leaf: [u8; 32], path: &[Step]) -> Option<[u8; 32]> {
    let mut at = leaf;
    for step in path {
        let mut sibling = [0u8; 32];
        hex::decode_to_slice(&step.sibling, &mut sibling).ok()?;
        at = if step.left {
            node(&sibling, &at)
        } else {
            node(&at, &sibling)
        };
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(i: usize) -> Head {
        Head {
            aggregate_type: "widgets".into(),
            aggregate_id: format!("w-{i:03}"),
            version: i as u64 + 1,
            hash: format!("{i:064x}"),
        }
    }

    #[test]
    fn every_leaf_proves_its_way_to_the_root() {
        for n in [1usize, 2, 3, 4, 5, 7, 8, 9, 31, 100] {
            let leaves: Vec<[u8; 32]> = (0..n).map(|i| head(i).leaf()).collect();
            let r = root(&leaves);
            for (i, leaf) in leaves.iter().enumerate() {
                let p = path(&leaves, i);
                assert!(p.len() <= (n as f64).log2().ceil() as usize, "n={n} i={i}");
                assert_eq!(root_from_path(*leaf, &p), Some(r), "n={n} i={i}");
                // Another leaf does not prove with this path.
                let other = head(n + 1).leaf();
                assert_ne!(root_from_path(other, &p), Some(r), "n={n} i={i}");
            }
        }
    }

    #[test]
    fn any_change_moves_the_root() {
        let heads: Vec<Head> = (0..10).map(head).collect();
        let base = root(&heads.iter().map(Head::leaf).collect::<Vec<_>>());
        let mut shorter = heads.clone();
        shorter[4].version -= 1;
        let mut rewritten = heads.clone();
        rewritten[4].hash = "f".repeat(64);
        let mut dropped = heads.clone();
        dropped.remove(4);
        for changed in [shorter, rewritten, dropped] {
            let r = root(&changed.iter().map(Head::leaf).collect::<Vec<_>>());
            assert_ne!(r, base);
        }
        // A leaf can't pass for an inner node: a two-leaf root is not a leaf of anything.
        let two = root(&[head(0).leaf(), head(1).leaf()]);
        assert_ne!(two, head(0).leaf());
    }
}
