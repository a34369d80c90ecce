//! The sample payloads under `events/` run through the stream and activity handlers against
//! the embedded adapters: the same handler code the Lambda functions run, over the ports,
//! with no AWS endpoint. Fast; always runs.

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::kinesis::KinesisEvent;
use aws_lambda_events::streams::{DynamoDbEventResponse, KinesisEventResponse};
use chronicle_embedded::{EmbeddedStore, JsonlPublisher};
use chronicle_kernel::{
    AppendRequest, Chronicle, EventStore, HandlerConfig, ModelRef, ReadModelStore, SnapshotStore,
    StreamId,
};
use chronicle_lambda::{activity, streams};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

const ID: &str = "acc-stream-1";
/// The payload's records: v1, v2, an idempotency record, v3.
const SEQ_V2: &str = "000000000000000000110";
const SEQ_V3: &str = "000000000000000000120";

fn load<T: serde::de::DeserializeOwned>(path: &str) -> T {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../events")
        .join(path);
    serde_json::from_str(&std::fs::read_to_string(&p).expect("a payload file")).expect("a payload")
}

fn stream_batch() -> Event {
    let batch: Event = load("dynamodb/stream-batch.json");
    assert_eq!(
        batch.records.len(),
        4,
        "the payload changed: update this test"
    );
    batch
}

fn with_records(records: Vec<EventRecord>) -> Event {
    let mut e = Event::default();
    e.records = records;
    e
}

struct Embedded {
    dir: tempfile::TempDir,
    store: Arc<EmbeddedStore>,
    chronicle: Chronicle,
}

fn embedded() -> Embedded {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = EmbeddedStore::open(dir.path().join("store")).expect("the embedded store");
    let chronicle = Chronicle::builder_without_feed(
        store.clone(),
        store.clone(),
        store.clone(),
        HandlerConfig::default(),
    )
    .domain(chronicle_accounts::domain())
    .build();
    Embedded {
        dir,
        store,
        chronicle,
    }
}

impl Embedded {
    /// Stores the payload's events, as the table holds what its stream reports.
    async fn seed(&self, batch: &Event) {
        let decoded = streams::decode(&batch.records);
        assert_eq!(decoded.unreadable_from, None);
        for records in decoded.streams.values() {
            let events: Vec<_> = records
                .iter()
                .map(|r| r.event.clone().expect("a decodable event"))
                .collect();
            self.store
                .append(&AppendRequest {
                    stream: events[0].stream(),
                    expected_version: 0,
                    events,
                    idempotency: None,
                    stored: Vec::new(),
                })
                .await
                .expect("seeding the embedded store");
        }
    }

    async fn project(&self, batch: &Event) -> DynamoDbEventResponse {
        streams::project_into(&self.chronicle, &*self.store, &*self.store, batch).await
    }

    async fn doc(&self, model: &str, key: &str) -> Option<(u64, Value)> {
        self.store
            .get(&ModelRef::active(model), key)
            .await
            .expect("reading the read model")
            .map(|d| (d.version, d.body))
    }
}

fn failures(r: &DynamoDbEventResponse) -> Vec<String> {
    r.batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .collect()
}

fn kinesis_failures(r: &KinesisEventResponse) -> Vec<String> {
    r.batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .collect()
}

#[tokio::test]
async fn projector_writes_the_documents_the_payload_folds_to() {
    let e = embedded();
    let batch = stream_batch();
    e.seed(&batch).await;
    let r = e.project(&batch).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    // Opened by erin in EUR, 250 deposited (stored as Deposited v1, upcast), 50 withdrawn.
    let (version, state) = e.doc("accounts_state", ID).await.expect("projected");
    assert_eq!(version, 3);
    assert_eq!(state["balance"], json!(200), "{state}");
    let found = e
        .store
        .find(&ModelRef::active("accounts_by_owner"), "owner", "erin", 10)
        .await
        .expect("find");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].key.as_str(), found[0].version), (ID, 3));
    assert_eq!(found[0].body["balance"], json!(200));

    // Redelivered: nothing is applied twice.
    let r = e.project(&batch).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    assert_eq!(e.doc("accounts_state", ID).await.unwrap().1["balance"], 200);
}

#[tokio::test]
async fn projector_fills_a_gap_from_the_event_store_or_fails_at_it() {
    let batch = stream_batch();
    // v2's record lost (a bisected batch): v1, the idempotency record, v3.
    let mut gapped = batch.records.clone();
    gapped.remove(1);
    let gapped = with_records(gapped);

    // The store doesn't hold v2: the projector stops at v3 and names it; v1 is projected.
    let empty = embedded();
    let r = empty.project(&gapped).await;
    assert_eq!(failures(&r), vec![SEQ_V3.to_owned()], "{r:?}");
    let (version, state) = empty.doc("accounts_state", ID).await.expect("v1 projected");
    assert_eq!((version, &state["balance"]), (1, &json!(0)), "{state}");

    // The store holds it: the gap is filled from there.
    let seeded = embedded();
    seeded.seed(&batch).await;
    let r = seeded.project(&gapped).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    let (version, state) = seeded.doc("accounts_state", ID).await.expect("projected");
    assert_eq!((version, &state["balance"]), (3, &json!(200)), "{state}");
}

#[tokio::test]
async fn projector_reports_a_malformed_record_and_projects_up_to_it() {
    let e = embedded();
    let batch = stream_batch();
    e.seed(&batch).await;
    let mut records = batch.records.clone();
    records[1].change.new_image.insert(
        "event_type".into(),
        serde_dynamo::AttributeValue::S("NoSuchEvent".into()),
    );
    let r = e.project(&with_records(records.clone())).await;
    assert_eq!(failures(&r), vec![SEQ_V2.to_owned()], "{r:?}");
    assert_eq!(e.doc("accounts_state", ID).await.expect("v1").0, 1);

    // A record whose image is not an event item at all (no `data`): undecodable.
    let mut records = batch.records.clone();
    records[3].change.new_image.remove("data");
    let r = e.project(&with_records(records)).await;
    assert_eq!(failures(&r), vec![SEQ_V3.to_owned()], "{r:?}");
    assert_eq!(e.doc("accounts_state", ID).await.expect("v2").0, 2);
}

#[tokio::test]
async fn publisher_publishes_the_events_upcast_and_skips_the_idempotency_record() {
    let e = embedded();
    let batch = stream_batch();
    let log = e.dir.path().join("published.jsonl");
    let publisher = JsonlPublisher::open(&log).expect("the publish log");
    let r = streams::publish_to(&e.chronicle, &publisher, &batch).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    let published = JsonlPublisher::read_all(&log).expect("the publish log");
    let got: Vec<_> = published
        .iter()
        .map(|e| {
            (
                e.aggregate_id.as_str(),
                e.version,
                e.event_type.as_str(),
                e.schema_version,
                e.data.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                ID,
                1,
                "AccountOpened",
                1,
                json!({"owner": "erin", "currency": "EUR"})
            ),
            // Stored as v1 without a currency; published as the current v2.
            (
                ID,
                2,
                "Deposited",
                2,
                json!({"amount": 250, "currency": "EUR"})
            ),
            (ID, 3, "Withdrawn", 1, json!({"amount": 50})),
        ]
    );
    assert_eq!(
        published[0].event_id.to_string(),
        "019ac0de-0000-7000-8000-000000000001"
    );

    // A record whose stream can't be told: it and everything after it are left for the retry.
    let mut records = batch.records.clone();
    records[3].change.keys.remove("stream");
    let log2 = e.dir.path().join("published-2.jsonl");
    let publisher = JsonlPublisher::open(&log2).expect("the publish log");
    let r = streams::publish_to(&e.chronicle, &publisher, &with_records(records)).await;
    assert_eq!(failures(&r), vec![SEQ_V3.to_owned()], "{r:?}");
    let versions: Vec<u64> = JsonlPublisher::read_all(&log2)
        .expect("the publish log")
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, vec![1, 2]);
}

#[tokio::test]
async fn snapshotter_stores_the_folded_state_when_the_batch_crosses_the_interval() {
    let e = embedded();
    let batch = stream_batch();
    let stream = StreamId::new("accounts", ID);

    // Not crossing a multiple of 100: no snapshot.
    e.seed(&batch).await;
    let r = streams::snapshot_with(&e.chronicle, 100, &batch).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    assert!(e.store.latest(&stream, None).await.expect("read").is_none());

    // v1..=v3 crosses 2: the state at v3.
    let r = streams::snapshot_with(&e.chronicle, 2, &batch).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    let snap = e
        .store
        .latest(&stream, None)
        .await
        .expect("read")
        .expect("a snapshot");
    assert_eq!(snap.version, 3);
    assert_eq!(snap.state["balance"], json!(200), "{}", snap.state);
    assert_eq!(snap.state["owner"], json!("erin"), "{}", snap.state);

    // A malformed record in the stream: reported, nothing snapshotted past it.
    let fresh = embedded();
    fresh.seed(&batch).await;
    let mut records = batch.records.clone();
    records[3].change.new_image.remove("data");
    let r = streams::snapshot_with(&fresh.chronicle, 2, &with_records(records)).await;
    assert_eq!(failures(&r), vec![SEQ_V3.to_owned()], "{r:?}");
    let snap = fresh.store.latest(&stream, None).await.expect("read");
    assert_eq!(snap.map(|s| s.version), Some(2), "v1..=v2 crosses 2");
}

#[tokio::test]
async fn activity_consumer_writes_one_entry_per_event_once() {
    let e = embedded();
    let kinesis: KinesisEvent = load("kinesis/batch.json");
    assert_eq!(
        kinesis.records.len(),
        3,
        "the payload changed: update this test"
    );
    let model = ModelRef::active(activity::ACTIVITY_FEED);
    for _ in 0..2 {
        // Delivered twice: the entries are written once.
        let r = activity::consume_into(&*e.store, &kinesis).await;
        assert!(kinesis_failures(&r).is_empty(), "{r:?}");
        let mut feed = e
            .store
            .find(&model, "aggregate", &format!("accounts/{ID}"), 10)
            .await
            .expect("find");
        feed.sort_by(|a, b| a.key.cmp(&b.key));
        let got: Vec<_> = feed
            .iter()
            .map(|d| {
                (
                    d.version,
                    d.body["version"].clone(),
                    d.body["event_type"].clone(),
                    d.body["data"].clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    1,
                    json!(1),
                    json!("AccountOpened"),
                    json!({"owner": "erin", "currency": "EUR"})
                ),
                (
                    1,
                    json!(2),
                    json!("Deposited"),
                    json!({"amount": 250, "currency": "EUR"})
                ),
                (1, json!(3), json!("Withdrawn"), json!({"amount": 50})),
            ]
        );
        assert_eq!(feed[0].key, format!("accounts/{ID}/{:020}", 1));
    }

    // Not an envelope: that record is reported; the aggregate stops there.
    let fresh = embedded();
    let mut bad = kinesis.clone();
    *bad.records[1].kinesis.data = b"not json".to_vec();
    let r = activity::consume_into(&*fresh.store, &bad).await;
    assert_eq!(
        kinesis_failures(&r),
        vec![bad.records[1].kinesis.sequence_number.clone()],
        "{r:?}"
    );
    let feed = fresh
        .store
        .find(&model, "aggregate", &format!("accounts/{ID}"), 10)
        .await
        .expect("find");
    assert_eq!(feed.len(), 1, "only v1 before the bad record: {feed:?}");
}
