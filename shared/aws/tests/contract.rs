//! The port contract suites, run against the AWS adapters on the configured endpoint.

use aws_sdk_dynamodb::types::AttributeValue;
use chronicle_aws::item::{self, PK, SK};
use chronicle_aws::keys;
use chronicle_aws::testing::AwsTestEnv;
use chronicle_aws::{
    DynamoEventStore, DynamoKeyStore, DynamoReadModelStore, S3Archive, S3SnapshotStore,
};
use chronicle_kernel::archive::Archive;
use chronicle_kernel::{DataKey, KeyStore, StoreError, SubjectKey};
use std::collections::HashMap;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_key_store_passes_the_key_store_contract() {
    let Some(env) = AwsTestEnv::create("key store contract").await else {
        return;
    };
    let store = DynamoKeyStore::from_settings(&env.clients, &env.settings);
    chronicle_testkit::key_store_contract(Arc::new(store)).await;
    env.remove().await;
}

/// A KMS key for a test, named by a fresh alias; scheduled for deletion by [`drop_kms_key`].
async fn kms_key(kms: &aws_sdk_kms::Client) -> (String, String) {
    let key = kms
        .create_key()
        .description("chronicle test: wraps data subjects' keys")
        .send()
        .await
        .expect("KMS CreateKey");
    let arn = key
        .key_metadata()
        .map(|m| m.arn().unwrap_or(m.key_id()).to_owned())
        .expect("the new key's metadata");
    let alias = format!("alias/ct-{}", uuid::Uuid::new_v4().simple());
    kms.create_alias()
        .alias_name(&alias)
        .target_key_id(&arn)
        .send()
        .await
        .expect("KMS CreateAlias");
    (arn, alias)
}

async fn drop_kms_key(kms: &aws_sdk_kms::Client, arn: &str, alias: &str) {
    let _ = kms.delete_alias().alias_name(alias).send().await;
    let _ = kms
        .schedule_key_deletion()
        .key_id(arn)
        .pending_window_in_days(7)
        .send()
        .await;
}

/// Wrapped with KMS through an alias (`CHRONICLE_KEY_KMS_KEY=alias/...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_key_store_with_kms_passes_the_key_store_contract() {
    let Some(mut env) = AwsTestEnv::create("key store contract (KMS)").await else {
        return;
    };
    let (arn, alias) = kms_key(&env.clients.kms).await;
    env.settings.key_kms_key = Some(alias.clone());
    let store = DynamoKeyStore::from_settings(&env.clients, &env.settings);
    chronicle_testkit::key_store_contract(Arc::new(store)).await;
    drop_kms_key(&env.clients.kms, &arn, &alias).await;
    env.remove().await;
}

/// The subject's item as stored.
async fn key_item(env: &AwsTestEnv, subject: &str) -> HashMap<String, AttributeValue> {
    env.clients
        .dynamodb
        .get_item()
        .table_name(&env.settings.key_table)
        .key(keys::SUBJECT, AttributeValue::S(subject.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item
        .expect("the subject's item")
}

fn live(key: &SubjectKey) -> [u8; 32] {
    match key {
        SubjectKey::Live(k) => *k.bytes(),
        SubjectKey::Forgotten { at } => panic!("forgotten at {at}, expected a live key"),
    }
}

/// After forget the item keeps no key: no `key` attribute (nor `wrapped_by`), only the
/// tombstone. Wrapped, the stored bytes are KMS's ciphertext, never the data key, bound to
/// their subject; keys stored before wrapping was turned on stay readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forget_removes_the_key_attribute_and_kms_wraps_it() {
    let Some(env) = AwsTestEnv::create("key table items").await else {
        return;
    };
    let plain = DynamoKeyStore::from_settings(&env.clients, &env.settings);
    let (arn, alias) = kms_key(&env.clients.kms).await;
    let wrapped = DynamoKeyStore::new(env.clients.dynamodb.clone(), &env.settings.key_table)
        .with_kms(env.clients.kms.clone(), &alias);

    // Unwrapped: the item holds the data key itself, until forget removes it.
    let subject = chronicle_testkit::unique("plain");
    let fresh = DataKey::generate();
    let want = *fresh.bytes();
    assert_eq!(
        live(&plain.key_for_writing(&subject, fresh).await.unwrap()),
        want
    );
    let item = key_item(&env, &subject).await;
    assert_eq!(item[keys::KEY].as_b().unwrap().as_ref(), &want[..]);
    assert!(!item.contains_key(keys::WRAPPED_BY));
    // A key stored unwrapped is read by a wrapping store as it is.
    let read = wrapped.keys(&[&subject]).await.unwrap();
    assert_eq!(live(&read[&subject]), want);
    let at = chronicle_kernel::envelope::now();
    assert!(plain.forget(&subject, at).await.unwrap().destroyed);
    let item = key_item(&env, &subject).await;
    assert!(
        !item.contains_key(keys::KEY) && !item.contains_key(keys::WRAPPED_BY),
        "the key outlived forget: {:?}",
        item.keys().collect::<Vec<_>>()
    );
    assert!(item.contains_key(keys::FORGOTTEN_AT));

    // Wrapped: the item holds KMS's ciphertext, not the key, and names the key's ARN.
    let subject = chronicle_testkit::unique("wrapped");
    let fresh = DataKey::generate();
    let want = *fresh.bytes();
    assert_eq!(
        live(&wrapped.key_for_writing(&subject, fresh).await.unwrap()),
        want
    );
    let item = key_item(&env, &subject).await;
    let stored = item[keys::KEY].as_b().unwrap().as_ref().to_vec();
    assert_ne!(stored.len(), 0);
    assert!(
        !stored.windows(32).any(|w| w == want),
        "the wrapped key's item holds the data key"
    );
    assert_eq!(item[keys::WRAPPED_BY].as_s().unwrap(), &arn);
    let again = wrapped.key_for_writing(&subject, DataKey::generate()).await;
    assert_eq!(live(&again.unwrap()), want, "unwrapped on reading");
    // Without KMS the wrapped key can't be read, and says why.
    let e = plain.keys(&[&subject]).await.unwrap_err();
    assert!(e.to_string().contains("CHRONICLE_KEY_KMS_KEY"), "{e}");

    // The ciphertext is bound to its subject: copied to another subject's item, it does not
    // decrypt there.
    let thief = chronicle_testkit::unique("thief");
    let mut copied = item.clone();
    copied.insert(keys::SUBJECT.to_owned(), AttributeValue::S(thief.clone()));
    env.clients
        .dynamodb
        .put_item()
        .table_name(&env.settings.key_table)
        .set_item(Some(copied))
        .send()
        .await
        .expect("PutItem");
    match wrapped.keys(&[&thief]).await {
        Err(StoreError::Corrupt(m)) => assert!(m.contains("does not decrypt"), "{m}"),
        other => panic!("a ciphertext moved to another subject must not decrypt: {other:?}"),
    }

    assert!(wrapped.forget(&subject, at).await.unwrap().destroyed);
    let item = key_item(&env, &subject).await;
    assert!(
        !item.contains_key(keys::KEY) && !item.contains_key(keys::WRAPPED_BY),
        "the wrapped key outlived forget: {:?}",
        item.keys().collect::<Vec<_>>()
    );
    drop_kms_key(&env.clients.kms, &arn, &alias).await;
    env.remove().await;
}

/// The key table as `aws-setup` makes it: keyed by subject, no stream (nothing may keep a copy
/// of a key's changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_key_table_has_no_stream() {
    let Some(env) = AwsTestEnv::create("key table").await else {
        return;
    };
    let table = env
        .clients
        .dynamodb
        .describe_table()
        .table_name(&env.settings.key_table)
        .send()
        .await
        .expect("DescribeTable")
        .table
        .expect("the table");
    let schema: Vec<_> = table
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_owned(),
                k.key_type().as_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(schema, vec![(keys::SUBJECT.to_owned(), "HASH".to_owned())]);
    assert!(
        !table
            .stream_specification()
            .is_some_and(|s| s.stream_enabled()),
        "the key table has a stream"
    );
    env.remove().await;
}
