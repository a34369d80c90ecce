//! The port contract suites, run against the AWS adapters on the configured endpoint.

use aws_sdk_dynamodb::types::AttributeValue;
use chronicle_aws::item::{self, PK, SK};
use chronicle_aws::testing::AwsTestEnv;
use chronicle_aws::{DynamoEventStore, DynamoReadModelStore, S3Archive, S3SnapshotStore};
use chronicle_kernel::archive::Archive;
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

/// The kernel's handler on DynamoDB (and S3 snapshots): repeats inside the retention, a free
/// key after it, whether TTL has deleted the expired record yet or not. "DynamoDB typically
/// deletes expired items within two days of expiration [...] Items that have expired and not
/// been deleted will still show up in reads" (API reference, `UpdateTimeToLive`); moto never
/// deletes them, DynamoDB Local within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_with_idempotency_keys_on_dynamodb_pass_the_retention_contract() {
    let Some(env) = AwsTestEnv::create("command idempotency contract").await else {
        return;
    };
    let store = DynamoEventStore::new(env.clients.dynamodb.clone(), &env.settings.events_table);
    let snapshots = S3SnapshotStore::new(env.clients.s3.clone(), &env.settings.snapshot_bucket);
    chronicle_testkit::command_idempotency_contract(Arc::new(store), Arc::new(snapshots)).await;
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
async fn s3_archive_passes_the_archive_contract() {
    let Some(env) = AwsTestEnv::create("archive contract").await else {
        return;
    };
    let (s3, bucket) = (env.clients.s3.clone(), env.settings.archive_bucket.clone());
    // Under a key prefix (names come back without it), and at the bucket's root.
    let prefixed = S3Archive::with_prefix(s3.clone(), &bucket, "chronicle/archive");
    chronicle_testkit::archive_contract(Arc::new(prefixed)).await;
    chronicle_testkit::archive_contract(Arc::new(S3Archive::new(s3.clone(), &bucket))).await;
    // Objects that are not segments are not listed.
    env.clients
        .s3
        .put_object()
        .bucket(&bucket)
        .key("chronicle/archive/notes.txt")
        .body(b"not a segment".to_vec().into())
        .send()
        .await
        .expect("PutObject");
    let listed = S3Archive::with_prefix(s3, &bucket, "chronicle/archive/")
        .list_segments("")
        .await
        .expect("list");
    assert!(
        !listed.is_empty()
            && listed
                .iter()
                .all(|n| n.ends_with(".seg") && !n.starts_with("chronicle/")),
        "{listed:?}"
    );
    env.remove().await;
}

/// On a fresh table: the archiver walks every stream of it. Expiry is what DynamoDB's TTL
/// process does once `expires_at` passes: a plain DeleteItem.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_event_store_passes_the_archived_reads_contract() {
    let Some(env) = AwsTestEnv::create("archived reads contract").await else {
        return;
    };
    let store = Arc::new(DynamoEventStore::new(
        env.clients.dynamodb.clone(),
        &env.settings.events_table,
    ));
    let snapshots = Arc::new(S3SnapshotStore::new(
        env.clients.s3.clone(),
        &env.settings.snapshot_bucket,
    ));
    let archive: Arc<dyn Archive> = Arc::new(S3Archive::new(
        env.clients.s3.clone(),
        &env.settings.archive_bucket,
    ));
    let (ddb, table) = (
        env.clients.dynamodb.clone(),
        env.settings.events_table.clone(),
    );
    chronicle_testkit::archived_reads_contract(store, snapshots, archive, |s, through| {
        let (ddb, table) = (ddb.clone(), table.clone());
        async move {
            for v in 1..=through {
                ddb.delete_item()
                    .table_name(&table)
                    .key(PK, AttributeValue::S(item::stream_key(&s)))
                    .key(SK, AttributeValue::N(v.to_string()))
                    .send()
                    .await
                    .expect("DeleteItem");
            }
        }
    })
    .await;
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
