//! The local runners against an in-memory store (event store, feed and read models in one):
//! the publish step stops where an event can't go out.

use async_trait::async_trait;
use chronicle_kernel::publishing::{publish_batch, PublishRunner};
use chronicle_kernel::{
    AppendError, AppendRequest, Doc, DocWrite, Error, EventEnvelope, EventFeed, EventStore,
    FeedEvent, IdempotencyRecord, Metadata, ModelRef, PublishError, Publisher, RawBatch,
    ReadModelStore, ReadRange, RecordedPage, StoreError, StreamId, StreamPage,
};
use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Memory {
    /// Every stored event, by stream and version.
    events: Mutex<Vec<EventEnvelope>>,
    /// What the feed hands out: not every stored event, where a test leaves some out.
    feed: Mutex<Vec<FeedEvent>>,
    docs: Mutex<HashMap<(String, u64, String), Doc>>,
    checkpoints: Mutex<HashMap<(String, u64), u64>>,
}

fn generation(model: &ModelRef) -> u64 {
    model.generation.unwrap_or(1)
}

impl Memory {
    /// Stores the events, and feeds those whose version is in `fed`.
    fn add(&self, events: Vec<EventEnvelope>, fed: &[u64]) {
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
    async fn list_streams(
        &self,
        _cursor: Option<String>,
        _limit: usize,
    ) -> Result<StreamPage, StoreError> {
        Ok(StreamPage::default())
    }
    async fn read_recorded(
        &self,
        _from: DateTime<Utc>,
        _to: DateTime<Utc>,
        _after: Option<String>,
        _limit: usize,
    ) -> Result<RecordedPage, StoreError> {
        Ok(RecordedPage::default())
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
    async fn read_tails(
        &self,
        _aggregate_type: &str,
        _after: Arc<HashMap<String, u64>>,
    ) -> Result<RawBatch, StoreError> {
        Ok(RawBatch::default())
    }
    fn replay_raw(
        &self,
        _aggregate_type: &str,
        _batch: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<RawBatch, StoreError>> {
        tokio::sync::mpsc::channel(1).1
    }
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

fn events(id: &str, n: u64) -> Vec<EventEnvelope> {
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

/// Records what it was handed; fails the batch indexes in `fail`.
#[derive(Default)]
struct Recording {
    sent: Mutex<Vec<(String, u64)>>,
    fail: Mutex<Vec<usize>>,
}

#[async_trait]
impl Publisher for Recording {
    async fn publish(&self, events: &[EventEnvelope]) -> Result<(), PublishError> {
        let fail = std::mem::take(&mut *self.fail.lock().unwrap());
        let mut sent = self.sent.lock().unwrap();
        for (i, e) in events.iter().enumerate() {
            if !fail.contains(&i) {
                sent.push((e.aggregate_id.clone(), e.version));
            }
        }
        if fail.is_empty() {
            return Ok(());
        }
        Err(PublishError {
            total: events.len(),
            failed: fail,
            reason: "throttled".into(),
        })
    }
}

/// Upcasts every type but `Unknown`.
fn upcast(e: EventEnvelope) -> Result<EventEnvelope, Error> {
    if e.event_type == "Unknown" {
        return Err(Error::Decode("no schema".into()));
    }
    Ok(e)
}

#[tokio::test]
async fn the_publish_step_stops_at_the_first_event_that_cannot_go_out() {
    let publisher = Recording::default();
    let (a, b) = (events("a", 2), events("b", 2));
    // An undecodable record at index 12: nothing from there on goes out.
    let batch = vec![
        (10, Ok(a[0].clone())),
        (11, Ok(b[0].clone())),
        (12, Err("bad record".to_owned())),
        (13, Ok(a[1].clone())),
    ];
    let stop = publish_batch(&publisher, &upcast, batch)
        .await
        .expect_err("stops");
    assert_eq!(stop.index, 12);
    assert_eq!(
        *publisher.sent.lock().unwrap(),
        [("a".to_owned(), 1), ("b".to_owned(), 1)]
    );

    // The publisher fails b's event (and a's after it, as it must): the retry starts at b's.
    let publisher = Recording::default();
    *publisher.fail.lock().unwrap() = vec![1, 2];
    let mut unknown = b[1].clone();
    unknown.event_type = "Unknown".into();
    let batch = vec![
        (0, Ok(a[0].clone())),
        (1, Ok(b[0].clone())),
        (2, Ok(a[1].clone())),
        (3, Ok(unknown)),
    ];
    let stop = publish_batch(&publisher, &upcast, batch)
        .await
        .expect_err("stops");
    assert_eq!(stop.index, 1);
    assert!(
        matches!(
            stop.error,
            chronicle_kernel::publishing::PublishRunError::Publish(_)
        ),
        "{:?}",
        stop.error
    );
    assert_eq!(*publisher.sent.lock().unwrap(), [("a".to_owned(), 1)]);
}

#[tokio::test]
async fn the_publish_runner_checkpoints_what_went_out_before_a_failure() {
    let memory = Arc::new(Memory::default());
    let mut c1 = events("c1", 3);
    c1[1].event_type = "Unknown".into();
    memory.add(c1, &[1, 2, 3]);
    let publisher = Arc::new(Recording::default());
    let runner = PublishRunner::new(
        memory.clone(),
        memory.clone(),
        publisher.clone(),
        Arc::new(upcast),
    );
    let err = runner.step().await.expect_err("stalls on the unknown type");
    assert!(err.to_string().contains("no schema"), "{err}");
    assert_eq!(*publisher.sent.lock().unwrap(), [("c1".to_owned(), 1)]);
    let model = ModelRef::generation(chronicle_kernel::publishing::PUBLISHER_CHECKPOINT, 1);
    assert_eq!(memory.checkpoint(&model).await.unwrap(), 1);
    // The retry starts at the event that failed, and sends nothing twice.
    runner.step().await.expect_err("still stalled");
    assert_eq!(publisher.sent.lock().unwrap().len(), 1);
}
