//! The port contract suites, run against the AWS adapters on the configured endpoint.

use chronicle_aws::testing::AwsTestEnv;
use chronicle_aws::{DynamoEventStore, DynamoReadModelStore, S3SnapshotStore};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_event_store_passes_the_event_store_contract() {
    let Some(env) = AwsTestEnv::create("event store contract").await else {
        return;
    };
    let store = DynamoEventStore::new(env.clients.dynamodb.clone(), &env.settings.events_table);
    chronicle_testkit::event_store_contract(Arc::new(store)).await;
    env.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_snapshot_store_passes_the_snapshot_store_contract() {
    let Some(env) = AwsTestEnv::create("snapshot store contract").await else {
        return;
    };
    let store = S3SnapshotStore::new(env.clients.s3.clone(), &env.settings.snapshot_bucket);
    chronicle_testkit::snapshot_store_contract(Arc::new(store)).await;
    env.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_read_model_store_passes_the_read_model_store_contract() {
    let Some(env) = AwsTestEnv::create("read model store contract").await else {
        return;
    };
    let store = DynamoReadModelStore::new(env.clients.dynamodb.clone(), &env.settings.read_table);
    chronicle_testkit::read_model_store_contract(Arc::new(store)).await;
    env.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kinesis_publisher_passes_the_publisher_contract() {
    let Some(env) = AwsTestEnv::create("publisher contract").await else {
        return;
    };
    let publisher = chronicle_aws::KinesisPublisher::new(
        env.clients.kinesis.clone(),
        &env.settings.event_stream,
    );
    let kinesis = env.clients.kinesis.clone();
    let stream = env.settings.event_stream.clone();
    chronicle_testkit::publisher_contract(Arc::new(publisher), || {
        let (kinesis, stream) = (kinesis.clone(), stream.clone());
        async move { read_kinesis(&kinesis, &stream).await }
    })
    .await;
    env.remove().await;
}

/// Every envelope on the stream, shard by shard from the start.
async fn read_kinesis(
    k: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Vec<chronicle_kernel::EventEnvelope> {
    chronicle_aws::testing::kinesis_records(k, stream)
        .await
        .iter()
        .map(|r| serde_json::from_slice(r.data().as_ref()).expect("an envelope"))
        .collect()
}
