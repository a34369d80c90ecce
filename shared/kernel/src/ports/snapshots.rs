//! Snapshots of aggregate state, so a stream need not be replayed from its start.

use crate::envelope::StreamId;
use crate::error::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub stream: StreamId,
    pub version: u64,
    /// The aggregate's `STATE_VERSION` when the snapshot was taken.
    pub state_version: u32,
    pub state: Value,
    #[serde(with = "crate::envelope::rfc3339")]
    pub taken_at: DateTime<Utc>,
    /// The hash of the event at `version`: the chain head the state was folded to. `None` on
    /// snapshots taken before chains existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_head: Option<String>,
}

#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The newest snapshot, or the newest at or before `max_version` when given.
    async fn latest(
        &self,
        stream: &StreamId,
        max_version: Option<u64>,
    ) -> Result<Option<Snapshot>, StoreError>;
    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError>;
}
