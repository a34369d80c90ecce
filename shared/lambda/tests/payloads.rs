//! The stream payloads under `events/` (what `cargo lambda invoke --data-file` and
//! `sam local invoke -e` send) handled by the stream-driven functions.

mod common;

use aws_lambda_events::dynamodb::Event;
use aws_lambda_events::kinesis::KinesisEvent;
use chronicle_kernel::{ModelRef, ReadModelStore, SnapshotStore, StreamId};
use common::*;
use std::collections::HashMap;
use std::path::PathBuf;

fn load<T: serde::de::DeserializeOwned>(path: &str) -> T {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../events")
        .join(path);
    serde_json::from_str(&std::fs::read_to_string(&p).expect("a payload file")).expect("a payload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_functions_handle_the_sample_payloads() {
    let Some((env, app)) = common::app("sample payloads", 2).await else {
        return;
    };
    let batch: Event = load("dynamodb/stream-batch.json");
    assert_eq!(batch.records.len(), 4);
    // The table holds what its stream reports.
    for r in &batch.records {
        let item: HashMap<String, aws_sdk_dynamodb::types::AttributeValue> =
            r.change.new_image.clone().into();
        app.clients
            .dynamodb
            .put_item()
            .table_name(&app.settings.events_table)
            .set_item(Some(item))
            .send()
            .await
            .expect("PutItem");
    }

    let r = chronicle_lambda::streams::project(&app, &batch).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    let doc = app
        .read_models
        .get(&ModelRef::active("accounts_state"), "acc-stream-1")
        .await
        .expect("read")
        .expect("projected");
    assert_eq!((doc.version, doc.body["balance"].as_u64()), (3, Some(200)));

    let r = chronicle_lambda::streams::publish(&app, &batch).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    let published = kinesis_records(&app).await;
    assert_eq!(
        published.len(),
        3,
        "the idempotency record is not published"
    );

    let r = chronicle_lambda::streams::snapshot(&app, &batch).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    let snap = app
        .snapshots
        .latest(&StreamId::new("accounts", "acc-stream-1"), None)
        .await
        .expect("read")
        .expect("a snapshot: the batch crosses the interval of 2");
    assert_eq!(
        (snap.version, snap.state["balance"].as_u64()),
        (3, Some(200))
    );

    let kinesis: KinesisEvent = load("kinesis/batch.json");
    let r = chronicle_lambda::activity::consume(&app, &kinesis).await;
    assert!(r.batch_item_failures.is_empty(), "{r:?}");
    let feed = app
        .read_models
        .find(
            &ModelRef::active(chronicle_lambda::activity::ACTIVITY_FEED),
            "aggregate",
            "accounts/acc-stream-1",
            10,
        )
        .await
        .expect("find");
    assert_eq!(feed.len(), 3);
    env.remove().await;
}
