//! Helpers for the AWS handler tests: an `App` on fresh resources, commands, and the records
//! the endpoint's real DynamoDB stream and Kinesis stream hold.
#![allow(dead_code)]

use aws_lambda_events::dynamodb::EventRecord;
use aws_lambda_events::kinesis::KinesisEventRecord;
use chronicle_aws::testing::AwsTestEnv;
use chronicle_kernel::{CommandOptions, CommandOutcome, Error};
use chronicle_lambda::{records, App};
use serde_json::{json, Value};

/// An app serving the sample domains, as the function binaries do, on fresh resources.
pub async fn app(test: &str, snapshot_every: u64) -> Option<(AwsTestEnv, App)> {
    let mut env = AwsTestEnv::create(test).await?;
    env.settings.snapshot_every = snapshot_every;
    let app = App::new(
        env.clients.clone(),
        env.settings.clone(),
        chronicle_samples::domain(),
    );
    Some((env, app))
}

/// Runs a command on `accounts/{id}`.
pub async fn run(app: &App, id: &str, command: Value) -> Result<CommandOutcome, Error> {
    run_with(app, id, command, CommandOptions::default()).await
}

pub async fn run_with(
    app: &App,
    id: &str,
    command: Value,
    opts: CommandOptions,
) -> Result<CommandOutcome, Error> {
    app.chronicle
        .aggregate("accounts")
        .expect("accounts is registered")
        .execute(id, command.to_string().as_bytes(), opts)
        .await
}

pub async fn open_with(app: &App, id: &str, owner: &str, deposits: &[u64]) {
    run(app, id, json!({"type": "Open", "owner": owner}))
        .await
        .expect("open");
    for &d in deposits {
        run(app, id, json!({"type": "Deposit", "amount": d}))
            .await
            .expect("deposit");
    }
}

/// Every record of the events table's stream, as Lambda would deliver them.
pub async fn stream_records(app: &App) -> Vec<EventRecord> {
    let arn = records::table_stream_arn(&app.clients.dynamodb, &app.settings.events_table)
        .await
        .expect("the events table has a stream");
    let streams = records::streams_client(&app.clients.sdk);
    let desc = streams
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .expect("DescribeStream");
    let mut out = Vec::new();
    for shard in desc.stream_description().expect("a description").shards() {
        let mut it = streams
            .get_shard_iterator()
            .stream_arn(&arn)
            .shard_id(shard.shard_id().expect("a shard id"))
            .shard_iterator_type(aws_sdk_dynamodbstreams::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("GetShardIterator")
            .shard_iterator;
        while let Some(i) = it {
            let got = streams
                .get_records()
                .shard_iterator(i)
                .send()
                .await
                .expect("GetRecords");
            let records = got.records.unwrap_or_default();
            if records.is_empty() {
                break;
            }
            out.extend(records.into_iter().map(|r| records::lambda_record(r, &arn)));
            it = got.next_shard_iterator;
        }
    }
    out
}

/// The stream key and version of a record.
pub fn key_of(r: &EventRecord) -> (String, u64) {
    let s = match r.change.keys.get("stream") {
        Some(serde_dynamo::AttributeValue::S(s)) => s.clone(),
        other => panic!("record without a stream key: {other:?}"),
    };
    let v = match r.change.keys.get("version") {
        Some(serde_dynamo::AttributeValue::N(n)) => n.parse().expect("a numeric version"),
        other => panic!("record without a version: {other:?}"),
    };
    (s, v)
}

/// The records of one account, in stream order.
pub fn records_of(all: &[EventRecord], id: &str) -> Vec<EventRecord> {
    let key = format!("accounts#{id}");
    all.iter().filter(|r| key_of(r).0 == key).cloned().collect()
}

/// A record whose event can't be handled: its type is unknown to the schema.
pub fn poisoned(r: &EventRecord) -> EventRecord {
    let mut p = r.clone();
    p.change.new_image.insert(
        "event_type".into(),
        serde_dynamo::AttributeValue::S("NoSuchEvent".into()),
    );
    p
}

/// Every record of the Kinesis stream, from the start, as Lambda would deliver them.
pub async fn kinesis_records(app: &App) -> Vec<KinesisEventRecord> {
    chronicle_aws::testing::kinesis_records(&app.clients.kinesis, &app.settings.event_stream)
        .await
        .into_iter()
        .map(|r| records::kinesis_record(r, "arn:test"))
        .collect()
}

pub fn failures(r: &aws_lambda_events::streams::DynamoDbEventResponse) -> Vec<String> {
    r.batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .collect()
}

pub fn seq(r: &EventRecord) -> String {
    r.change.sequence_number.clone().expect("a sequence number")
}
