//! The local runners against the in-memory store of `common`, whose feed can leave events
//! out: the projection step fills a version gap from the event store, and the publish step
//! stops where an event can't go out.

mod common;

use async_trait::async_trait;
use chronicle_kernel::publishing::{publish_batch, PublishRunner};
use chronicle_kernel::{
    Error, EventEnvelope, EventSchema, ModelRef, Projection, ProjectionError, ProjectionRunner,
    PublishError, Publisher, ReadModelStore,
};
use common::{events, Memory};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

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
