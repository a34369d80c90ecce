//! An in-memory store for the kernel's tests: event store, feed and read models in one, with a
//! feed that can leave stored events out.
// Each test file uses part of it.
#![allow(dead_code)]

use async_trait::async_trait;
use chronicle_kernel::{
    AppendError, AppendRequest, Doc, DocWrite, EventEnvelope, EventFeed, EventStore, FeedEvent,
    IdempotencyRecord, Metadata, ModelRef, ReadModelStore, ReadRange, StoreError, StoredHashes,
    StreamId,
};
use chrono::Utc;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Memory {
    /// Every stored event, by stream and version.
    pub events: Mutex<Vec<EventEnvelope>>,
    /// What the feed hands out: not every stored event, where a test leaves some out.
    pub feed: Mutex<Vec<FeedEvent>>,
    pub docs: Mutex<HashMap<(String, u64, String), Doc>>,
    pub checkpoints: Mutex<HashMap<(String, u64), u64>>,
}

fn generation(model: &ModelRef) -> u64 {
    model.generation.unwrap_or(1)
}

impl Memory {
    /// Stores the events, and feeds those whose version is in `fed`.
    pub fn add(&self, events: Vec<EventEnvelope>, fed: &[u64]) {
        let mut feed = self.feed.lock().unwrap();
        for e in &events {
            if fed.contains(&e.version) {
                let position = feed.len() as u64 + 1;
                feed.push(FeedEvent {
                    position,
                    event: e.clone(),
                });
            }
        }
        self.events.lock().unwrap().extend(events);
    }

    pub fn doc(&self, key: &str) -> Option<Doc> {
        let docs = self.docs.lock().unwrap();
        docs.get(&("versions".to_owned(), 1, key.to_owned()))
            .cloned()
    }
}

#[async_trait]
impl EventStore for Memory {
    async fn append(&self, _request: &AppendRequest) -> Result<(), AppendError> {
        Err(StoreError::Invalid("read-only".into()).into())
    }
    async fn read_stream(
        &self,
        stream: &StreamId,
        range: ReadRange,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let (from, to) = range.versions(u64::MAX);
        Ok(self
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.stream() == *stream && (from..=to).contains(&e.version))
            .cloned()
            .collect())
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let events = self.read_stream(stream, ReadRange::all()).await?;
        Ok(events.last().map_or(0, |e| e.version))
    }
    async fn idempotency_record(
        &self,
        _key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(None)
    }
}

#[async_trait]
impl StoredHashes for Memory {
    async fn hashes_at(&self, at: &[(StreamId, u64)]) -> Result<Vec<Option<String>>, StoreError> {
        chronicle_kernel::hashes_by_reads(self, at).await
    }
}

#[async_trait]
impl EventFeed for Memory {
    async fn read_feed(&self, after: u64, limit: usize) -> Result<Vec<FeedEvent>, StoreError> {
        let feed = self.feed.lock().unwrap();
        Ok(feed
            .iter()
            .filter(|f| f.position > after)
            .take(limit)
            .cloned()
            .collect())
    }
    async fn feed_head(&self) -> Result<u64, StoreError> {
        Ok(self.feed.lock().unwrap().len() as u64)
    }
    async fn wait_for_events(&self, _after: u64, _timeout: std::time::Duration) {}
}

#[async_trait]
impl ReadModelStore for Memory {
    async fn active_generation(&self, _projection: &str) -> Result<u64, StoreError> {
        Ok(1)
    }
    async fn get(&self, model: &ModelRef, key: &str) -> Result<Option<Doc>, StoreError> {
        let k = (model.projection.clone(), generation(model), key.to_owned());
        Ok(self.docs.lock().unwrap().get(&k).cloned())
    }
    async fn find(
        &self,
        _model: &ModelRef,
        _field: &str,
        _value: &str,
        _limit: usize,
    ) -> Result<Vec<Doc>, StoreError> {
        Ok(Vec::new())
    }
    async fn apply(
        &self,
        model: &ModelRef,
        writes: Vec<DocWrite>,
        checkpoint: Option<u64>,
    ) -> Result<usize, StoreError> {
        let mut docs = self.docs.lock().unwrap();
        let mut applied = 0;
        for w in writes {
            let k = (model.projection.clone(), generation(model), w.key.clone());
            if docs.get(&k).is_none_or(|d| d.version < w.version) {
                docs.insert(
                    k,
                    Doc {
                        key: w.key,
                        version: w.version,
                        body: w.body,
                    },
                );
                applied += 1;
            }
        }
        if let Some(at) = checkpoint {
            let k = (model.projection.clone(), generation(model));
            self.checkpoints.lock().unwrap().insert(k, at);
        }
        Ok(applied)
    }
    async fn checkpoint(&self, model: &ModelRef) -> Result<u64, StoreError> {
        let k = (model.projection.clone(), generation(model));
        Ok(self
            .checkpoints
            .lock()
            .unwrap()
            .get(&k)
            .copied()
            .unwrap_or(0))
    }
    async fn activate(&self, _projection: &str, _generation: u64) -> Result<(), StoreError> {
        Ok(())
    }
    async fn drop_generation(&self, _projection: &str, _generation: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

pub fn events(id: &str, n: u64) -> Vec<EventEnvelope> {
    (1..=n)
        .map(|version| EventEnvelope {
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: "counters".into(),
            aggregate_id: id.into(),
            version,
            event_type: "Added".into(),
            schema_version: 1,
            data: json!({}),
            metadata: Metadata::default(),
            recorded_at: Utc::now(),
            hash: String::new(),
        })
        .collect()
}
