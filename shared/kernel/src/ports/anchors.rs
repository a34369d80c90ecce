//! Anchors: every stream's head committed to a Merkle root kept where the store's writers can't
//! rewrite it, so a store that lost or rewrote a stream's tail is caught.

use crate::anchor::{Anchor, Head};
use crate::error::StoreError;
use async_trait::async_trait;

/// Every stream's head: its last version and that event's chain hash.
#[async_trait]
pub trait StreamHeads: Send + Sync + 'static {
    /// Every stream's head, sorted by (aggregate type, aggregate id).
    async fn heads(&self) -> Result<Vec<Head>, StoreError>;
}

/// Where anchors are kept: append-only, outside the reach of the store's writers (an
/// append-only file beside the store, an S3 object under Object Lock).
#[async_trait]
pub trait AnchorLog: Send + Sync + 'static {
    /// Appends `anchor` (the next in its chain) and the heads it commits to, durably.
    async fn append(&self, anchor: &Anchor, heads: &[Head]) -> Result<(), StoreError>;
    /// Every anchor, oldest first, as stored (a broken chain is the caller's to find).
    async fn anchors(&self) -> Result<Vec<Anchor>, StoreError>;
    /// The heads anchor `sequence` committed to, as stored.
    async fn heads(&self, sequence: u64) -> Result<Vec<Head>, StoreError>;
}
