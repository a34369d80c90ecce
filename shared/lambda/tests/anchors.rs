//! Anchors on AWS: the app anchors every stream's head in the anchor bucket (under Object Lock)
//! and on Kinesis; `verify` holds the table to the anchor; items deleted or rewritten behind
//! the store's back (a cut tail, a tail with a consistent new chain) are named.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use chronicle_aws::item::{EventItem, PK, SK};
use chronicle_aws::testing::kinesis_records;
use chronicle_kernel::{EventStore, ReadRange, StreamId};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_is_held_to_its_anchor_in_the_locked_bucket() {
    let Some((env, app)) = common::app("anchors on aws", 100).await else {
        return;
    };
    for id in ["a1", "a2", "a3"] {
        common::run(&app, id, json!({"type": "Open", "owner": "o"}))
            .await
            .expect("open");
        for _ in 0..4 {
            common::run(&app, id, json!({"type": "Deposit", "amount": 5}))
                .await
                .expect("deposit");
        }
    }
    let anchor = app
        .chronicle
        .anchor()
        .await
        .expect("anchored")
        .expect("an anchor log on AWS");
    assert_eq!((anchor.sequence, anchor.streams, anchor.events), (1, 3, 15));
    let report = app.chronicle.verify_all(4, |_| {}).await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.anchor, Some(1));

    // A proof, checkable with the proof alone.
    let proof = app
        .chronicle
        .anchor_proof(&StreamId::new("accounts", "a2"))
        .await
        .expect("read")
        .expect("a proof");
    assert_eq!(proof.head.version, 5);
    proof.check().expect("the proof holds");

    // The anchor object is under Object Lock: its version can't be deleted, nor its key written
    // again.
    let s3 = &env.clients.s3;
    let bucket = &env.settings.anchor_bucket;
    let key = "anchors/00000000000000000001.json";
    let head = s3
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("the anchor object");
    assert!(
        head.object_lock_retain_until_date().is_some(),
        "the object carries a retention"
    );
    let deleted = s3
        .delete_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(head.version_id().map(str::to_owned))
        .send()
        .await;
    assert!(deleted.is_err(), "a locked anchor version was deleted");
    let again = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .if_none_match("*")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"{}"))
        .send()
        .await;
    assert!(again.is_err(), "an anchor was written over");
    // And it went out on Kinesis, under the anchors' partition key.
    let records = kinesis_records(&env.clients.kinesis, &env.settings.event_stream).await;
    assert!(records
        .iter()
        .any(|r| r.partition_key() == Some(chronicle_aws::ANCHOR_PARTITION)));

    // Behind the store's back: a1 loses v4 and v5; a2's tail is rewritten with a whole chain.
    let ddb = &env.clients.dynamodb;
    let table = &env.settings.events_table;
    for v in [4u64, 5] {
        ddb.delete_item()
            .table_name(table)
            .key(PK, AttributeValue::S("accounts#a1".into()))
            .key(SK, AttributeValue::N(v.to_string()))
            .send()
            .await
            .expect("deleted");
    }
    let stream = StreamId::new("accounts", "a2");
    let mut events = app
        .events
        .read_stream(&stream, ReadRange::all())
        .await
        .expect("read");
    let prev = events[2].hash.clone();
    for e in &mut events[3..] {
        e.data = json!({"amount": 1_000_000, "currency": "EUR"});
    }
    chronicle_kernel::chain::seal(&prev, &mut events[3..]);
    for e in &events[3..] {
        let item = serde_dynamo::to_item(EventItem::from_envelope(e)).expect("an item");
        ddb.put_item()
            .table_name(table)
            .set_item(Some(item))
            .send()
            .await
            .expect("rewritten");
    }
    let report = app.chronicle.verify_all(4, |_| {}).await.expect("verify");
    let named: Vec<String> = report.breaks.iter().map(ToString::to_string).collect();
    assert_eq!(named.len(), 2, "{named:?}");
    assert!(
        named[0].starts_with("accounts/a1 v5: anchored v5")
            && named[0].contains("store ends at v3"),
        "{named:?}"
    );
    assert!(
        named[1].starts_with("accounts/a2 v5: anchored v5") && named[1].contains("store has"),
        "{named:?}"
    );
    env.remove().await;
}
