//! The DynamoDB Streams handlers fed records read from the endpoint's real stream, plus
//! duplicated, reordered and gapped batches and poison records.

mod common;

use aws_lambda_events::dynamodb::Event;
use chronicle_aws::item::EventItem;
use chronicle_kernel::{
    EventEnvelope, EventStore, ModelRef, ReadModelStore, ReadRange, SnapshotStore, StreamId,
};
use chronicle_lambda::streams;
use common::*;
use serde_json::json;

fn batch(records: Vec<aws_lambda_events::dynamodb::EventRecord>) -> Event {
    let mut e = Event::default();
    e.records = records;
    e
}

async fn state_doc(app: &chronicle_lambda::App, id: &str) -> Option<(u64, serde_json::Value)> {
    app.read_models
        .get(&ModelRef::active("accounts_state"), id)
        .await
        .expect("reading the read model")
        .map(|d| (d.version, d.body))
}

async fn balance_of(app: &chronicle_lambda::App, id: &str) -> (u64, u64) {
    let (v, body) = state_doc(app, id).await.expect("a projected document");
    (v, body["balance"].as_u64().expect("a balance"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_handles_real_duplicated_reordered_and_gapped_batches() {
    let Some((env, app)) = common::app("projector batches", 100).await else {
        return;
    };
    open_with(&app, "in-order", "olga", &[10, 20, 30]).await;
    open_with(&app, "reordered", "rita", &[1, 2, 4]).await;
    open_with(&app, "gapped", "gus", &[100, 200, 300, 400]).await;
    // An idempotency record lands in the stream too; handlers must skip it.
    run_with(
        &app,
        "in-order",
        json!({"type": "Withdraw", "amount": 5}),
        chronicle_kernel::CommandOptions {
            idempotency_key: Some("k-1".into()),
            ..Default::default()
        },
    )
    .await
    .expect("withdraw");
    let all = stream_records(&app).await;

    // In order, as Lambda delivers them.
    let r = streams::project(&app, &batch(records_of(&all, "in-order"))).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    assert_eq!(balance_of(&app, "in-order").await, (5, 55));
    // The by-owner read model too.
    let found = app
        .read_models
        .find(&ModelRef::active("accounts_by_owner"), "owner", "olga", 10)
        .await
        .expect("find");
    assert_eq!(found.len(), 1);

    // The same batch again, each record twice: nothing is applied twice.
    let twice: Vec<_> = records_of(&all, "in-order")
        .into_iter()
        .flat_map(|r| [r.clone(), r])
        .collect();
    let r = streams::project(&app, &batch(twice)).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    assert_eq!(balance_of(&app, "in-order").await, (5, 55));

    // Reversed: the newest record first; the older ones then count as seen.
    let mut rev = records_of(&all, "reordered");
    rev.reverse();
    let r = streams::project(&app, &batch(rev)).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    assert_eq!(balance_of(&app, "reordered").await, (4, 7));

    // A gap (versions 2 and 3 missing): read from the event store, not skipped.
    let gapped: Vec<_> = records_of(&all, "gapped")
        .into_iter()
        .filter(|r| ![2, 3].contains(&key_of(r).1))
        .collect();
    assert_eq!(gapped.len(), 3);
    let r = streams::project(&app, &batch(gapped)).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    assert_eq!(balance_of(&app, "gapped").await, (5, 1000));

    // Everything at once, in stream order: all already applied, nothing changes.
    let r = streams::project(&app, &batch(all.clone())).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    assert_eq!(balance_of(&app, "in-order").await, (5, 55));
    assert_eq!(balance_of(&app, "reordered").await, (4, 7));
    assert_eq!(balance_of(&app, "gapped").await, (5, 1000));
    env.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_reported_and_stops_only_its_aggregate() {
    let Some((env, app)) = common::app("projector poison", 100).await else {
        return;
    };
    open_with(&app, "victim", "vic", &[10, 20]).await;
    open_with(&app, "bystander", "bea", &[1, 2]).await;
    let all = stream_records(&app).await;
    let victim = records_of(&all, "victim");
    let bystander = records_of(&all, "bystander");
    // Interleaved: victim v1, bystander v1, victim v2 (poison), bystander v2, victim v3, bystander v3.
    let poison = poisoned(&victim[1]);
    let mixed = vec![
        victim[0].clone(),
        bystander[0].clone(),
        poison.clone(),
        bystander[1].clone(),
        victim[2].clone(),
        bystander[2].clone(),
    ];
    let r = streams::project(&app, &batch(mixed)).await;
    assert_eq!(
        failures(&r),
        vec![seq(&poison)],
        "the response names the poison record"
    );
    assert_eq!(
        balance_of(&app, "victim").await,
        (1, 0),
        "stopped before the poison"
    );
    assert_eq!(
        balance_of(&app, "bystander").await,
        (3, 3),
        "other aggregates applied"
    );

    // Lambda retries from the reported record; once it is good again (here: the real record),
    // the rest is applied and nothing is applied twice.
    let retry = vec![
        victim[1].clone(),
        bystander[1].clone(),
        victim[2].clone(),
        bystander[2].clone(),
    ];
    let r = streams::project(&app, &batch(retry)).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    assert_eq!(balance_of(&app, "victim").await, (3, 30));
    assert_eq!(balance_of(&app, "bystander").await, (3, 3));

    // A record with an undecodable image is poison too, and named.
    let mut garbage = victim[2].clone();
    garbage.change.new_image.insert(
        "data".into(),
        serde_dynamo::AttributeValue::S("{not json".into()),
    );
    let r = streams::project(&app, &batch(vec![bystander[2].clone(), garbage.clone()])).await;
    assert_eq!(failures(&r), vec![seq(&garbage)]);
    env.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_sends_upcast_events_to_kinesis_keyed_by_aggregate() {
    let Some((env, app)) = common::app("publisher", 100).await else {
        return;
    };
    open_with(&app, "pub-a", "ann", &[5]).await;
    open_with(&app, "pub-b", "ben", &[6, 7]).await;
    // A Deposited v1 (no currency) stored as an old writer would have: published as v2.
    let old = EventEnvelope {
        event_id: uuid_v4(),
        aggregate_type: "accounts".into(),
        aggregate_id: "pub-a".into(),
        version: 3,
        event_type: "Deposited".into(),
        schema_version: 1,
        data: json!({"amount": 9}),
        metadata: Default::default(),
        recorded_at: chronicle_kernel::envelope::now(),
        hash: String::new(),
    };
    app.clients
        .dynamodb
        .put_item()
        .table_name(&app.settings.events_table)
        .set_item(Some(
            serde_dynamo::to_item(EventItem::from_envelope(&old)).expect("an item"),
        ))
        .send()
        .await
        .expect("PutItem");

    let all = stream_records(&app).await;
    let r = streams::publish(&app, &batch(all.clone())).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    let published = kinesis_records(&app).await;
    assert_eq!(published.len(), 6, "one Kinesis record per event");
    let mut seen: Vec<(String, u64)> = Vec::new();
    for rec in &published {
        let e: EventEnvelope = serde_json::from_slice(&rec.kinesis.data).expect("an envelope");
        assert_eq!(
            rec.kinesis.partition_key, e.aggregate_id,
            "partition key is the aggregate id"
        );
        if e.event_type == "Deposited" {
            assert_eq!(e.schema_version, 2, "published upcast: {e:?}");
            assert!(e.data["currency"].is_string(), "{e:?}");
        }
        seen.push((e.aggregate_id.clone(), e.version));
    }
    for id in ["pub-a", "pub-b"] {
        let versions: Vec<u64> = seen
            .iter()
            .filter(|(a, _)| a == id)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(versions, vec![1, 2, 3], "{id}'s events in order");
    }

    // A poison record is named; the records before it are published, none twice.
    let b = records_of(&all, "pub-b");
    let poison = poisoned(&b[1]);
    let r = streams::publish(
        &app,
        &batch(vec![b[0].clone(), poison.clone(), b[2].clone()]),
    )
    .await;
    assert_eq!(failures(&r), vec![seq(&poison)]);
    assert_eq!(
        kinesis_records(&app).await.len(),
        7,
        "only the record before the poison"
    );
    env.remove().await;
}

fn uuid_v4() -> uuid::Uuid {
    uuid::Uuid::new_v4()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshotter_snapshots_aggregates_that_cross_the_interval() {
    let Some((env, app)) = common::app("snapshotter", 3).await else {
        return;
    };
    open_with(&app, "snap-long", "sam", &[1, 2, 3]).await; // versions 1..=4: crosses 3
    open_with(&app, "snap-short", "sue", &[1]).await; // versions 1..=2: doesn't
    let all = stream_records(&app).await;
    let r = streams::snapshot(&app, &batch(all.clone())).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    let s = app
        .snapshots
        .latest(&StreamId::new("accounts", "snap-long"), None)
        .await
        .expect("reading snapshots")
        .expect("a snapshot of snap-long");
    assert_eq!(s.version, 4);
    assert_eq!(s.state["balance"], 6);
    assert!(app
        .snapshots
        .latest(&StreamId::new("accounts", "snap-short"), None)
        .await
        .expect("reading snapshots")
        .is_none());
    // The state folded from that snapshot matches the events.
    let events = app
        .events
        .read_stream(&StreamId::new("accounts", "snap-long"), ReadRange::all())
        .await
        .expect("read");
    assert_eq!(events.len(), 4);

    // The snapshotter reads only versions; an undecodable record is its poison.
    let short = records_of(&all, "snap-short");
    let mut poison = short[0].clone();
    poison.change.new_image.insert(
        "recorded_at".into(),
        serde_dynamo::AttributeValue::S("yesterday".into()),
    );
    let r = streams::snapshot(&app, &batch(vec![poison.clone(), short[1].clone()])).await;
    assert_eq!(failures(&r), vec![seq(&poison)]);
    env.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_consumer_is_idempotent_and_reports_poison() {
    let Some((env, app)) = common::app("activity", 100).await else {
        return;
    };
    open_with(&app, "act-a", "al", &[1, 2]).await;
    open_with(&app, "act-b", "bo", &[3]).await;
    let all = stream_records(&app).await;
    let r = streams::publish(&app, &batch(all)).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    let kin = kinesis_records(&app).await;
    assert_eq!(kin.len(), 5);

    let feed = |id: &'static str| {
        let app = app.clone();
        async move {
            app.read_models
                .find(
                    &ModelRef::active(chronicle_lambda::activity::ACTIVITY_FEED),
                    "aggregate",
                    &format!("accounts/{id}"),
                    100,
                )
                .await
                .expect("find")
                .iter()
                .map(|d| d.body["version"].as_u64().expect("a version"))
                .collect::<Vec<u64>>()
        }
    };

    // A garbage record of act-a between the others: named; act-a stops there, act-b goes on.
    let a: Vec<_> = kin
        .iter()
        .filter(|r| r.kinesis.partition_key == "act-a")
        .cloned()
        .collect();
    let b: Vec<_> = kin
        .iter()
        .filter(|r| r.kinesis.partition_key == "act-b")
        .cloned()
        .collect();
    assert_eq!((a.len(), b.len()), (3, 2));
    let mut garbage = a[1].clone();
    *garbage.kinesis.data = b"not an envelope".to_vec();
    garbage.kinesis.sequence_number = format!("{}0", a[0].kinesis.sequence_number);
    let mut event = aws_lambda_events::kinesis::KinesisEvent::default();
    event.records = vec![
        a[0].clone(),
        garbage.clone(),
        a[1].clone(),
        a[2].clone(),
        b[0].clone(),
        b[1].clone(),
    ];
    let r = chronicle_lambda::activity::consume(&app, &event).await;
    let named: Vec<_> = r
        .batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(named, vec![garbage.kinesis.sequence_number.clone()]);
    assert_eq!(feed("act-a").await, vec![1]);
    assert_eq!(feed("act-b").await, vec![1, 2]);

    // Redelivery of everything, twice: each event has exactly one entry.
    let mut event = aws_lambda_events::kinesis::KinesisEvent::default();
    event.records = kin.iter().chain(kin.iter()).cloned().collect();
    let r = chronicle_lambda::activity::consume(&app, &event).await;
    assert!(r.batch_item_failures.is_empty(), "{r:?}");
    assert_eq!(feed("act-a").await, vec![1, 2, 3]);
    assert_eq!(feed("act-b").await, vec![1, 2]);
    env.remove().await;
}
