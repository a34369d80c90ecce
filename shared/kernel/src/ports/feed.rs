//! The store's ordered feed of all events, and bulk replays of one aggregate type.

use crate::envelope::EventEnvelope;
use crate::error::StoreError;
use crate::raw::RawBatch;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;

/// An event with its position in the store's global order.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedEvent {
    pub position: u64,
    pub event: EventEnvelope,
}

/// The store's ordered feed of all events, which projections follow with a checkpoint.
#[async_trait]
pub trait EventFeed: Send + Sync + 'static {
    /// Up to `limit` events with positions greater than `after`, in position order.
    async fn read_feed(&self, after: u64, limit: usize) -> Result<Vec<FeedEvent>, StoreError>;
    /// The position of the newest event, 0 if none.
    async fn feed_head(&self) -> Result<u64, StoreError>;
    /// Resolves once the feed may hold events after `after`, or when `timeout` passes
    /// (writers in other processes can't always signal, so callers poll too).
    async fn wait_for_events(&self, after: u64, timeout: std::time::Duration);
}

/// Whole aggregate types read in bulk, as stored text: replays and archived replays.
#[async_trait]
pub trait BulkReplay: Send + Sync + 'static {
    /// Every event of `aggregate_type` past `after[aggregate_id]` (all of a stream `after`
    /// doesn't name), stream by stream in version order: what a replay from the archive still
    /// has to read from the hot store.
    async fn read_tails(
        &self,
        aggregate_type: &str,
        after: Arc<HashMap<String, u64>>,
    ) -> Result<RawBatch, StoreError>;
    /// Every event of `aggregate_type` in feed order, in batches, read concurrently with the
    /// consumer: the bulk path for replaying whole aggregates.
    fn replay_raw(
        &self,
        aggregate_type: &str,
        batch: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<RawBatch, StoreError>>;
}
