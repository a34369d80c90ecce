//! The sample payloads under `events/` run through the stream and activity handlers against
//! the embedded adapters: the same handler code the Lambda functions run, over the ports,
//! with no AWS endpoint; and the reactor fed Kinesis batches of events stored by the orders
//! sample (redelivered, reordered, malformed). Fast; always runs.

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::kinesis::{KinesisEvent, KinesisEventRecord};
use aws_lambda_events::streams::{DynamoDbEventResponse, KinesisEventResponse};
use chronicle_embedded::{EmbeddedStore, JsonlPublisher};
use chronicle_kernel::reaction::CommandBus;
use chronicle_kernel::{
    AppendRequest, Chronicle, CommandOptions, Domain, EventEnvelope, EventStore, HandlerConfig,
    ModelRef, ReadModelStore, ReadRange, SnapshotStore, StreamId,
};
use chronicle_lambda::{activity, reactions, streams};
use serde_json::{json, Value};
use std::collections::BTreeMap;
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
    embedded_with(chronicle_accounts::domain())
}

/// An embedded store serving `domain`, with no feed: nothing runs a reaction but the handler
/// under test.
fn embedded_with(domain: Domain) -> Embedded {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = EmbeddedStore::open(dir.path().join("store")).expect("the embedded store");
    let chronicle = Chronicle::builder_without_feed(
        store.clone(),
        store.clone(),
        store.clone(),
        HandlerConfig::default(),
    )
    .domain(domain)
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
                    expected_known: false,
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

// The reactor: the fulfilment reaction of the orders sample fed Kinesis batches of stored
// events, as the publisher puts them on the stream (the envelope upcast, as JSON; the
// aggregate id as partition key).

/// Every sample domain (accounts, orders, inventory and the fulfilment reaction).
fn samples() -> Embedded {
    embedded_with(chronicle_samples::domain())
}

/// Builds Kinesis records one shard would hold: sequence numbers increase record by record.
struct Shard {
    template: KinesisEventRecord,
    next: u64,
}

impl Shard {
    fn new() -> Self {
        let batch: KinesisEvent = load("kinesis/batch.json");
        Self {
            template: batch.records[0].clone(),
            next: 1,
        }
    }

    fn record(&mut self, partition_key: &str, data: Vec<u8>) -> KinesisEventRecord {
        let mut r = self.template.clone();
        *r.kinesis.data = data;
        r.kinesis.partition_key = partition_key.to_owned();
        r.kinesis.sequence_number = format!("4959{:052}", self.next);
        r.event_id = Some(format!(
            "shardId-000000000000:{}",
            r.kinesis.sequence_number
        ));
        self.next += 1;
        r
    }

    /// A published event: its JSON, keyed by its aggregate id.
    fn published(&mut self, event: &EventEnvelope) -> KinesisEventRecord {
        let data = serde_json::to_vec(event).expect("an envelope serializes");
        self.record(&event.aggregate_id, data)
    }

    fn batch(&mut self, events: &[EventEnvelope]) -> KinesisEvent {
        batch_of(events.iter().map(|e| self.published(e)).collect())
    }
}

fn batch_of(records: Vec<KinesisEventRecord>) -> KinesisEvent {
    let mut e = KinesisEvent::default();
    e.records = records;
    e
}

fn place(lines: &[(&str, u64)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
        .collect();
    json!({"type": "Place", "customer": "c-1", "lines": lines})
}

impl Embedded {
    /// A client's command.
    async fn send(&self, aggregate_type: &str, id: &str, command: Value) {
        self.chronicle
            .dispatch(
                aggregate_type,
                id,
                command.to_string().as_bytes(),
                CommandOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{aggregate_type}/{id} {command}: {e}"));
    }

    async fn restock(&self, sku: &str, quantity: u64) {
        self.send(
            "inventory",
            sku,
            json!({"type": "Restock", "quantity": quantity}),
        )
        .await;
    }

    /// A stream's events as stored, upcast (what the publisher puts on Kinesis).
    async fn stream(&self, aggregate_type: &str, id: &str) -> Vec<EventEnvelope> {
        self.store
            .read_stream(&StreamId::new(aggregate_type, id), ReadRange::all())
            .await
            .expect("reading a stream")
            .into_iter()
            .map(|e| self.chronicle.upcast(e).expect("an upcast event"))
            .collect()
    }

    async fn event_types(&self, aggregate_type: &str, id: &str) -> Vec<String> {
        self.stream(aggregate_type, id)
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    /// The events of an inventory's stream of type `event_type`, counted per order.
    async fn per_order(&self, sku: &str, event_type: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in self.stream("inventory", sku).await {
            if e.event_type == event_type {
                let order = e.data["order"].as_str().expect("an order").to_owned();
                *out.entry(order).or_default() += 1;
            }
        }
        out
    }

    /// The state folded from the store.
    async fn state(&self, aggregate_type: &str, id: &str) -> Value {
        self.chronicle
            .aggregate(aggregate_type)
            .expect("a registered type")
            .state(id, None)
            .await
            .unwrap_or_else(|e| panic!("the state of {aggregate_type}/{id}: {e}"))
            .body
    }

    async fn stock(&self, sku: &str) -> (u64, u64) {
        let s = self.state("inventory", sku).await;
        (
            s["available"].as_u64().expect("available"),
            s["reserved"].as_u64().expect("reserved"),
        )
    }

    async fn react(&self, batch: &KinesisEvent) -> KinesisEventResponse {
        reactions::react_with(&self.chronicle, &*self.store, &self.chronicle, batch).await
    }
}

fn once(orders: &[&str]) -> BTreeMap<String, usize> {
    orders.iter().map(|o| ((*o).to_owned(), 1)).collect()
}

#[tokio::test]
async fn reactor_reserves_each_line_of_a_placed_order_once() {
    let e = samples();
    e.restock("sku-a", 5).await;
    e.restock("sku-b", 2).await;
    e.send("orders", "o-1", place(&[("sku-a", 2), ("sku-b", 1)]))
        .await;
    let placed = e.stream("orders", "o-1").await;
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].event_type, "OrderPlaced");
    let mut shard = Shard::new();
    let batch = shard.batch(&placed);

    for delivery in 0..2 {
        let r = e.react(&batch).await;
        assert!(
            kinesis_failures(&r).is_empty(),
            "delivery {delivery}: {r:?}"
        );
        for sku in ["sku-a", "sku-b"] {
            assert_eq!(
                e.per_order(sku, "StockReserved").await,
                once(&["o-1"]),
                "delivery {delivery}: {sku}"
            );
            assert_eq!(
                e.event_types("inventory", sku).await,
                ["Restocked", "StockReserved"],
                "delivery {delivery}: {sku}"
            );
        }
        assert_eq!(e.stock("sku-a").await, (3, 2));
        assert_eq!(e.stock("sku-b").await, (1, 1));
        // No inventory answer was delivered: the order waits for them.
        assert_eq!(e.event_types("orders", "o-1").await, ["OrderPlaced"]);
        assert_eq!(e.state("orders", "o-1").await["status"], "placed");
    }
    // The reservation names its cause and carries the reaction's idempotency key.
    let reserved = &e.stream("inventory", "sku-a").await[1];
    assert_eq!(
        reserved.metadata.causation_id.as_deref(),
        Some(placed[0].event_id.to_string().as_str())
    );
    assert!(
        reserved
            .metadata
            .idempotency_key
            .as_deref()
            .is_some_and(|k| k.starts_with("order_fulfilment:")),
        "{:?}",
        reserved.metadata
    );
}

#[tokio::test]
async fn reactor_confirms_once_however_the_answers_are_ordered_or_repeated() {
    let e = samples();
    e.restock("sku-a", 5).await;
    e.restock("sku-b", 2).await;
    e.send("orders", "o-1", place(&[("sku-a", 2), ("sku-b", 1)]))
        .await;
    let mut shard = Shard::new();
    let placed = shard.batch(&e.stream("orders", "o-1").await);
    for _ in 0..2 {
        let r = e.react(&placed).await;
        assert!(kinesis_failures(&r).is_empty(), "{r:?}");
    }

    // The inventories' answers, last first, each batch delivered twice.
    let mut answers = Vec::new();
    for sku in ["sku-a", "sku-b"] {
        answers.extend(
            e.stream("inventory", sku)
                .await
                .into_iter()
                .filter(|x| x.event_type == "StockReserved"),
        );
    }
    assert_eq!(answers.len(), 2);
    answers.reverse();
    let answers = shard.batch(&answers);
    for delivery in 0..2 {
        let r = e.react(&answers).await;
        assert!(
            kinesis_failures(&r).is_empty(),
            "delivery {delivery}: {r:?}"
        );
        assert_eq!(
            e.event_types("orders", "o-1").await,
            ["OrderPlaced", "OrderConfirmed"],
            "delivery {delivery}: one Confirm"
        );
    }
    // Published twice more (a publisher retry puts records again, under new sequence
    // numbers), interleaved with the placement's late redelivery: still one of each.
    let mut again = answers.records.clone();
    again.insert(1, placed.records[0].clone());
    again.extend(answers.records.iter().cloned());
    let again: Vec<_> = again
        .into_iter()
        .map(|r| {
            let data = r.kinesis.data.to_vec();
            shard.record(&r.kinesis.partition_key, data)
        })
        .collect();
    let r = e.react(&batch_of(again)).await;
    assert!(kinesis_failures(&r).is_empty(), "{r:?}");

    assert_eq!(
        e.event_types("orders", "o-1").await,
        ["OrderPlaced", "OrderConfirmed"]
    );
    assert_eq!(e.state("orders", "o-1").await["status"], "confirmed");
    for sku in ["sku-a", "sku-b"] {
        assert_eq!(
            e.per_order(sku, "StockReserved").await,
            once(&["o-1"]),
            "{sku}"
        );
        assert!(e.per_order(sku, "StockReleased").await.is_empty(), "{sku}");
    }
    assert_eq!(e.stock("sku-a").await, (3, 2));
    assert_eq!(e.stock("sku-b").await, (1, 1));
}

#[tokio::test]
async fn reactor_rejects_once_and_releases_what_was_reserved_whatever_the_order() {
    let e = samples();
    e.restock("sku-a", 5).await;
    e.restock("sku-b", 1).await;
    e.send("orders", "o-2", place(&[("sku-a", 3), ("sku-b", 2)]))
        .await;
    let mut shard = Shard::new();
    let placed = shard.batch(&e.stream("orders", "o-2").await);
    let r = e.react(&placed).await;
    assert!(kinesis_failures(&r).is_empty(), "{r:?}");
    assert_eq!(e.per_order("sku-a", "StockReserved").await, once(&["o-2"]));
    assert_eq!(
        e.per_order("sku-b", "ReservationRejected").await,
        once(&["o-2"])
    );

    // The refusal first, then the reservation it must release; twice.
    let mut answers = e.stream("inventory", "sku-b").await.split_off(1);
    answers.extend(e.stream("inventory", "sku-a").await.split_off(1));
    assert_eq!(answers.len(), 2, "{answers:?}");
    let answers = shard.batch(&answers);
    for delivery in 0..2 {
        let r = e.react(&answers).await;
        assert!(
            kinesis_failures(&r).is_empty(),
            "delivery {delivery}: {r:?}"
        );
        assert_eq!(
            e.event_types("orders", "o-2").await,
            ["OrderPlaced", "OrderRejected"],
            "delivery {delivery}"
        );
        assert_eq!(
            e.per_order("sku-a", "StockReleased").await,
            once(&["o-2"]),
            "delivery {delivery}"
        );
    }
    let order = e.state("orders", "o-2").await;
    assert_eq!(order["status"], "rejected", "{order}");
    assert!(
        order["reason"]
            .as_str()
            .is_some_and(|r| r.contains("sku-b") && r.contains("insufficient stock")),
        "{order}"
    );
    assert_eq!(e.stock("sku-a").await, (5, 0), "released");
    assert_eq!(e.stock("sku-b").await, (1, 0), "never reserved");
}

#[tokio::test]
async fn reactor_reports_a_bad_record_and_holds_back_only_its_partition() {
    let e = samples();
    e.restock("sku-a", 10).await;
    for id in ["o-1", "o-2", "o-3"] {
        e.send("orders", id, place(&[("sku-a", 1)])).await;
    }
    let mut shard = Shard::new();
    let o1 = e.stream("orders", "o-1").await.remove(0);
    let o2 = e.stream("orders", "o-2").await.remove(0);
    let o3 = e.stream("orders", "o-3").await.remove(0);
    // A record of o-1's partition that is no envelope: half of one.
    let o1_json = serde_json::to_vec(&o1).expect("JSON");
    let half = o1_json[..o1_json.len() / 2].to_vec();
    let records = vec![
        shard.published(&o2),
        shard.record("o-1", half),
        shard.published(&o1),
        shard.published(&o3),
    ];
    let bad = records[1].kinesis.sequence_number.clone();
    let r = e.react(&batch_of(records.clone())).await;
    assert_eq!(kinesis_failures(&r), vec![bad], "{r:?}");
    // o-1's placement came after the bad record in its partition: left for the retry; the
    // other partitions went on.
    assert_eq!(
        e.per_order("sku-a", "StockReserved").await,
        once(&["o-2", "o-3"])
    );

    // The retry from the failed record, once that record is gone (skipped, or fixed): o-1
    // goes through, the others were handled already.
    let r = e.react(&batch_of(records[2..].to_vec())).await;
    assert!(kinesis_failures(&r).is_empty(), "{r:?}");
    assert_eq!(
        e.per_order("sku-a", "StockReserved").await,
        once(&["o-1", "o-2", "o-3"])
    );
    assert_eq!(e.stock("sku-a").await, (7, 3));
}

#[tokio::test]
async fn reactor_skips_events_no_reaction_subscribes_to() {
    let e = samples();
    e.restock("sku-a", 3).await;
    e.send(
        "accounts",
        "acc-1",
        json!({"type": "Open", "owner": "erin"}),
    )
    .await;
    e.send("orders", "o-1", place(&[("sku-a", 1)])).await;
    let mut shard = Shard::new();
    let restocked = e.stream("inventory", "sku-a").await;
    let opened = e.stream("accounts", "acc-1").await;
    assert_eq!(
        (
            restocked[0].event_type.as_str(),
            opened[0].event_type.as_str()
        ),
        ("Restocked", "AccountOpened")
    );
    let ignored = shard.batch(&[restocked[0].clone(), opened[0].clone()]);
    let r = e.react(&ignored).await;
    assert!(kinesis_failures(&r).is_empty(), "{r:?}");
    assert_eq!(e.event_types("inventory", "sku-a").await, ["Restocked"]);
    assert_eq!(e.event_types("orders", "o-1").await, ["OrderPlaced"]);
    assert_eq!(e.event_types("accounts", "acc-1").await, ["AccountOpened"]);

    // Skipped records hold nothing back: the same partitions, then a placement, all handled.
    let mut mixed = shard.batch(&[restocked[0].clone()]).records;
    mixed.extend(shard.batch(&e.stream("orders", "o-1").await).records);
    mixed.extend(shard.batch(&opened).records);
    let r = e.react(&batch_of(mixed)).await;
    assert!(kinesis_failures(&r).is_empty(), "{r:?}");
    assert_eq!(e.per_order("sku-a", "StockReserved").await, once(&["o-1"]));
    assert_eq!(e.event_types("accounts", "acc-1").await, ["AccountOpened"]);
}

#[tokio::test]
async fn reactor_reserves_the_sample_orders_batch_once() {
    let e = samples();
    // What the apigw payloads restock (events/apigw/*-restock*.json).
    e.restock("sku-1", 10).await;
    e.restock("sku-2", 5).await;
    let batch: KinesisEvent = load("kinesis/orders-batch.json");
    assert_eq!(
        batch.records.len(),
        1,
        "the payload changed: update this test"
    );
    for _ in 0..2 {
        let r = e.react(&batch).await;
        assert!(kinesis_failures(&r).is_empty(), "{r:?}");
        assert_eq!(
            e.per_order("sku-1", "StockReserved").await,
            once(&["ord-2"])
        );
        assert_eq!(
            e.per_order("sku-2", "StockReserved").await,
            once(&["ord-2"])
        );
        // As scripts/lambda-smoke.sh checks it.
        assert_eq!(e.stock("sku-1").await, (7, 3));
        assert_eq!(e.stock("sku-2").await, (4, 1));
    }
}

/// The snapshotter as the function runs it, fed from Kinesis: the published events of the
/// stream batch's aggregate, the state at the last version that crosses the interval.
#[tokio::test]
async fn snapshotter_on_kinesis_snapshots_when_the_published_events_cross_the_interval() {
    let e = embedded();
    let batch = stream_batch();
    let stream = StreamId::new("accounts", ID);
    e.seed(&batch).await;
    let stored = e
        .store
        .read_stream(&stream, ReadRange::all())
        .await
        .expect("read");
    let published: Vec<EventEnvelope> = stored
        .into_iter()
        .map(|ev| e.chronicle.upcast(ev).expect("upcast"))
        .collect();
    let mut shard = Shard::new();
    let r = streams::snapshot_kinesis_with(&e.chronicle, 2, &shard.batch(&published)).await;
    assert!(kinesis_failures(&r).is_empty(), "{r:?}");
    let snap = e
        .store
        .latest(&stream, None)
        .await
        .expect("read")
        .expect("a snapshot");
    assert_eq!(snap.version, 3);
    assert_eq!(snap.state["balance"], json!(200), "{}", snap.state);

    // A record that is not an envelope: reported, and its partition not snapshotted past it.
    let fresh = embedded();
    fresh.seed(&batch).await;
    let mut shard = Shard::new();
    let mut records: Vec<KinesisEventRecord> =
        published.iter().map(|ev| shard.published(ev)).collect();
    let bad = shard.record(ID, b"{\"half\": ".to_vec());
    let bad_seq = bad.kinesis.sequence_number.clone();
    records.insert(1, bad);
    let r = streams::snapshot_kinesis_with(&fresh.chronicle, 2, &batch_of(records)).await;
    assert_eq!(kinesis_failures(&r), vec![bad_seq], "{r:?}");
    assert!(fresh
        .store
        .latest(&stream, None)
        .await
        .expect("read")
        .is_none());
}
