//! The local runners against an in-memory store (event store, feed and read models in one),
//! with a feed that can leave events out: the projection step fills a version gap from the
//! event store, and the publish step stops where an event can't go out.

use async_trait::async_trait;
use chronicle_kernel::publishing::{publish_batch, PublishRunner};
use chronicle_kernel::{
    AppendError, AppendRequest, Doc, DocWrite, Error, EventEnvelope, EventFeed, EventSchema,
    EventStore, FeedEvent, IdempotencyRecord, Metadata, ModelRef, Projection, ProjectionError,
    ProjectionRunner, PublishError, Publisher, RawBatch, ReadModelStore, ReadRange, RecordedPage,
    StoreError, StreamId, StreamPage,
};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
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

    fn doc(&self, key: &str) -> Option<Doc> {
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

/// Remembers every version it folded, in order.
struct Versions;

impl Projection for Versions {
    fn name(&self) -> &str {
        "versions"
    }
    fn aggregate_type(&self) -> &str {
        "counters"
    }
    fn apply(&self, doc: Option<&Value>, event: &EventEnvelope) -> Result<Value, String> {
        let mut seen = doc.map_or_else(Vec::new, |d| d["versions"].as_array().cloned().unwrap());
        seen.push(json!(event.version));
        Ok(json!({ "versions": seen }))
    }
}

fn runner(memory: &Arc<Memory>, batch: usize) -> ProjectionRunner {
    let schema = EventSchema::new().event("Added", 1);
    let mut r = ProjectionRunner::new(
        memory.clone(),
        memory.clone(),
        memory.clone(),
        Arc::new(Versions),
        Arc::new(schema),
    );
    r.batch_size = batch;
    r
}

#[tokio::test]
async fn the_projection_runner_fills_a_version_gap_from_the_event_store() {
    let memory = Arc::new(Memory::default());
    // The feed skips v3 and v4 of c1; the event store holds them.
    memory.add(events("c1", 5), &[1, 2, 5]);
    memory.add(events("c2", 1), &[1]);
    let runner = runner(&memory, 2);

    let step = runner.step(1).await.expect("first step");
    assert_eq!((step.read, step.written, step.position), (2, 1, 2));
    assert_eq!(memory.doc("c1").map(|d| d.version), Some(2));

    // The next batch starts at v5: the cached document at v2 isn't trusted, the stored one is
    // read, and v3..v4 come from the event store before v5 is folded.
    let step = runner.step(1).await.expect("second step");
    assert_eq!((step.read, step.written, step.position), (2, 2, 4));
    let doc = memory.doc("c1").expect("c1's document");
    assert_eq!(doc.version, 5);
    assert_eq!(doc.body, json!({ "versions": [1, 2, 3, 4, 5] }));
    assert_eq!(memory.doc("c2").map(|d| d.version), Some(1));
}

#[tokio::test]
async fn the_projection_runner_stops_at_a_gap_the_store_does_not_hold_yet() {
    let memory = Arc::new(Memory::default());
    let mut c1 = events("c1", 3);
    c1.remove(1);
    // v2 is neither fed nor stored.
    memory.add(c1, &[1, 3]);
    memory.add(events("c2", 1), &[1]);
    let runner = runner(&memory, 10);

    match runner.step(1).await {
        Err(ProjectionError::Event {
            position,
            version,
            stream,
            ..
        }) => assert_eq!((position, version, stream.as_str()), (2, 3, "counters/c1")),
        other => panic!("expected the gap to stop the step: {other:?}"),
    }
    // Nothing moved: neither the checkpoint nor any document (c2's neither: one unit).
    let model = ModelRef::generation("versions", 1);
    assert_eq!(memory.checkpoint(&model).await.unwrap(), 0);
    assert_eq!(memory.doc("c1"), None);
    assert_eq!(memory.doc("c2"), None);

    // Once the store holds v2 (a late write), the same batch goes through.
    memory
        .events
        .lock()
        .unwrap()
        .push(events("c1", 2).remove(1));
    let step = runner.step(1).await.expect("step");
    assert_eq!(step.position, 3);
    let doc = memory.doc("c1").expect("c1's document");
    assert_eq!(doc.body, json!({ "versions": [1, 2, 3] }));
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
