//! Stream records as the SDKs return them (DynamoDB Streams `GetRecords`, Kinesis
//! `GetRecords`) converted into the records Lambda delivers to a function, so anything that
//! reads a stream itself (`chronicle serve --backend aws`'s pollers, the tests) can hand the
//! handlers what an event source mapping would; and where a table's stream is.

use aws_lambda_events::dynamodb::EventRecord;
use aws_lambda_events::encodings::SecondTimestamp;
use aws_lambda_events::kinesis::KinesisEventRecord;

/// A DynamoDB Streams client with `sdk`'s settings (its endpoint is
/// `AWS_ENDPOINT_URL_DYNAMODB_STREAMS` when set, else `AWS_ENDPOINT_URL`) for reading a table's
/// stream: `GetRecords` answers go through [`chronicle_aws::stream_records`], so records
/// holding an empty map decode on every engine (DynamoDB Local drops that map's type tag).
pub fn streams_client(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodbstreams::Client {
    let config = aws_sdk_dynamodbstreams::config::Builder::from(sdk)
        .http_client(chronicle_aws::stream_records::http_client(sdk))
        .build();
    aws_sdk_dynamodbstreams::Client::from_conf(config)
}

/// Converts a DynamoDB Streams record as the SDK returns it into the record Lambda delivers.
pub fn lambda_record(r: aws_sdk_dynamodbstreams::types::Record, stream_arn: &str) -> EventRecord {
    let mut out = EventRecord::default();
    out.event_id = r.event_id.unwrap_or_default();
    out.event_name = r
        .event_name
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default();
    out.event_version = r.event_version;
    out.event_source = r.event_source.or_else(|| Some("aws:dynamodb".into()));
    out.aws_region = r.aws_region.unwrap_or_default();
    out.event_source_arn = Some(stream_arn.to_owned());
    if let Some(d) = r.dynamodb {
        out.change.keys = serde_dynamo::Item::from(d.keys.unwrap_or_default());
        out.change.new_image = serde_dynamo::Item::from(d.new_image.unwrap_or_default());
        out.change.old_image = serde_dynamo::Item::from(d.old_image.unwrap_or_default());
        out.change.sequence_number = d.sequence_number;
        out.change.size_bytes = d.size_bytes.unwrap_or(0);
        if let Some(t) = d.approximate_creation_date_time {
            if let Some(t) = chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()) {
                out.change.approximate_creation_date_time = t;
            }
        }
    }
    out
}

/// The stream ARN of a table (which `aws-setup` creates with a stream).
pub async fn table_stream_arn(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<String, String> {
    let out = dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| {
            format!(
                "DescribeTable {table}: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            )
        })?;
    out.table()
        .and_then(|t| t.latest_stream_arn())
        .map(str::to_owned)
        .ok_or_else(|| format!("table {table} has no stream (run `chronicle aws-setup`)"))
}

/// Converts a Kinesis record as the SDK returns it into the record Lambda delivers.
pub fn kinesis_record(r: aws_sdk_kinesis::types::Record, stream_arn: &str) -> KinesisEventRecord {
    let mut out = KinesisEventRecord::default();
    out.event_source = Some("aws:kinesis".into());
    out.event_name = Some("aws:kinesis:record".into());
    out.event_source_arn = Some(stream_arn.to_owned());
    out.event_id = Some(format!("shard:{}", r.sequence_number()));
    out.kinesis.partition_key = r.partition_key().unwrap_or_default().to_owned();
    out.kinesis.sequence_number = r.sequence_number().to_owned();
    if let Some(t) = r
        .approximate_arrival_timestamp()
        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
    {
        out.kinesis.approximate_arrival_timestamp = SecondTimestamp(t);
    }
    *out.kinesis.data = r.data().as_ref().to_vec();
    out
}
