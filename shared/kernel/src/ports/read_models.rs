//! Read models: projections' documents, in generations.

use crate::error::StoreError;
use async_trait::async_trait;
use serde_json::Value;

/// A read model: a projection's documents, in one generation. Rebuilds write a new generation
/// while the active one keeps serving, then switch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelRef {
    pub projection: String,
    /// `None`: whichever generation is active.
    pub generation: Option<u64>,
}

impl ModelRef {
    pub fn active(projection: &str) -> Self {
        Self {
            projection: projection.to_owned(),
            generation: None,
        }
    }
    pub fn generation(projection: &str, generation: u64) -> Self {
        Self {
            projection: projection.to_owned(),
            generation: Some(generation),
        }
    }
}

/// A read-model document; `version` is the last applied version of its aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub key: String,
    pub version: u64,
    pub body: Value,
}

/// Writes `body` under `key` only if the stored document's version is lower than `version`.
#[derive(Clone, Debug, PartialEq)]
pub struct DocWrite {
    pub key: String,
    pub version: u64,
    pub body: Value,
    /// (field, value) pairs the document can be found by.
    pub index: Vec<(String, String)>,
}

#[async_trait]
pub trait ReadModelStore: Send + Sync + 'static {
    /// The generation reads go to; 1 before any rebuild.
    async fn active_generation(&self, projection: &str) -> Result<u64, StoreError>;
    async fn get(&self, model: &ModelRef, key: &str) -> Result<Option<Doc>, StoreError>;
    async fn find(
        &self,
        model: &ModelRef,
        field: &str,
        value: &str,
        limit: usize,
    ) -> Result<Vec<Doc>, StoreError>;
    /// Applies each write whose version is newer than the stored one, and (when given) moves the
    /// model's checkpoint, as one unit where the backend allows it. Returns how many were applied.
    async fn apply(
        &self,
        model: &ModelRef,
        writes: Vec<DocWrite>,
        checkpoint: Option<u64>,
    ) -> Result<usize, StoreError>;
    /// The feed position this model has applied up to, 0 if none.
    async fn checkpoint(&self, model: &ModelRef) -> Result<u64, StoreError>;
    /// Makes `generation` the one reads go to.
    async fn activate(&self, projection: &str, generation: u64) -> Result<(), StoreError>;
    /// Removes a generation's documents (never the active one).
    async fn drop_generation(&self, projection: &str, generation: u64) -> Result<(), StoreError>;
}
