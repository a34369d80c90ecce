//! Local event-source mappings: what Lambda does between a stream and a function, for
//! `chronicle serve --backend aws` (and the fault tests of `chronicle-lambda`, which compile
//! this file too: it uses nothing of the CLI crate). Each mapping reads its shards with its own
//! iterators, hands batches to a handler as `aws_lambda_events` records, and honours the
//! partial-batch response: it resumes at the reported record, retries it a bounded number of
//! times, then skips it with an error log (where Lambda would send it to the on-failure queue).
//!
//! Shards are read from TRIM_HORIZON: handlers are idempotent, so a restart re-reads the
//! 24 hours a stream keeps instead of missing anything.

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::kinesis::{KinesisEvent, KinesisEventRecord};
use aws_lambda_events::streams::{DynamoDbEventResponse, KinesisEventResponse};
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use chronicle_lambda::records::{kinesis_record, lambda_record, table_stream_arn};
use chronicle_lambda::App;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// How a mapping behaves (the template's event source mapping settings, in miniature).
#[derive(Clone, Copy, Debug)]
pub struct MappingConfig {
    pub batch_size: i32,
    /// Retries of a failed record before it is skipped.
    pub max_retries: u32,
    /// Pause when a shard has nothing new.
    pub idle: Duration,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            max_retries: 3,
            idle: Duration::from_millis(200),
        }
    }
}

struct ShardState {
    iterator: Option<String>,
    /// Last record handed over successfully: where to resume if the iterator expires.
    last: Option<String>,
    retries: u32,
    closed: bool,
}

fn first_failed_dynamodb(resp: &DynamoDbEventResponse) -> Option<String> {
    resp.batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .min_by(|a, b| (a.len(), a).cmp(&(b.len(), b)))
}

/// Drives `handler` from a DynamoDB stream until `shutdown` turns true.
pub async fn run_dynamodb_mapping<H, Fut>(
    name: &'static str,
    streams: aws_sdk_dynamodbstreams::Client,
    stream_arn: String,
    config: MappingConfig,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Event) -> Fut,
    Fut: Future<Output = DynamoDbEventResponse>,
{
    let mut shards: BTreeMap<String, ShardState> = BTreeMap::new();
    let mut since_refresh = u32::MAX;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Pick up new shards now and then (they appear as tables grow or shards roll over).
        if since_refresh > 25 {
            since_refresh = 0;
            match streams
                .describe_stream()
                .stream_arn(&stream_arn)
                .send()
                .await
            {
                Ok(out) => {
                    for s in out
                        .stream_description()
                        .map(|d| d.shards())
                        .unwrap_or_default()
                    {
                        if let Some(id) = s.shard_id() {
                            shards.entry(id.to_owned()).or_insert(ShardState {
                                iterator: None,
                                last: None,
                                retries: 0,
                                closed: false,
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(mapping = name, error = %aws_sdk_dynamodbstreams::error::DisplayErrorContext(e), "DescribeStream failed")
                }
            }
        }
        since_refresh += 1;
        let mut busy = false;
        for (shard_id, st) in shards.iter_mut().filter(|(_, s)| !s.closed) {
            if st.iterator.is_none() {
                let req = streams
                    .get_shard_iterator()
                    .stream_arn(&stream_arn)
                    .shard_id(shard_id);
                let req = match &st.last {
                    Some(seq) => req
                        .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                        .sequence_number(seq),
                    None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
                };
                match req.send().await {
                    Ok(out) => st.iterator = out.shard_iterator,
                    Err(e) => {
                        tracing::warn!(mapping = name, shard = %shard_id, error = %aws_sdk_dynamodbstreams::error::DisplayErrorContext(e), "GetShardIterator failed");
                        continue;
                    }
                }
            }
            let Some(iterator) = st.iterator.clone() else {
                continue;
            };
            let got = streams
                .get_records()
                .shard_iterator(iterator)
                .limit(config.batch_size)
                .send()
                .await;
            let out = match got {
                Ok(out) => out,
                Err(e) => {
                    tracing::warn!(mapping = name, shard = %shard_id, error = %aws_sdk_dynamodbstreams::error::DisplayErrorContext(e), "GetRecords failed; re-opening the shard");
                    st.iterator = None;
                    continue;
                }
            };
            let next = out.next_shard_iterator.clone();
            let records: Vec<EventRecord> = out
                .records
                .unwrap_or_default()
                .into_iter()
                .map(|r| lambda_record(r, &stream_arn))
                .collect();
            if records.is_empty() {
                st.iterator = next;
                if st.iterator.is_none() {
                    st.closed = true;
                }
                continue;
            }
            busy = true;
            let last_seq = records
                .last()
                .and_then(|r| r.change.sequence_number.clone());
            let mut event = Event::default();
            event.records = records;
            let resp = handler(event).await;
            match first_failed_dynamodb(&resp) {
                None => {
                    st.retries = 0;
                    st.last = last_seq;
                    st.iterator = next;
                    if st.iterator.is_none() {
                        st.closed = true;
                    }
                }
                Some(seq) => {
                    st.retries += 1;
                    let (kind, what) = if st.retries > config.max_retries {
                        tracing::error!(mapping = name, shard = %shard_id, sequence_number = %seq, retries = config.max_retries, "record still failing; skipped (an on-failure destination gets it on AWS)");
                        st.retries = 0;
                        (ShardIteratorType::AfterSequenceNumber, "after")
                    } else {
                        tracing::warn!(mapping = name, shard = %shard_id, sequence_number = %seq, attempt = st.retries, "batch item failed; retrying from it");
                        tokio::time::sleep(Duration::from_millis(100 << st.retries.min(5))).await;
                        (ShardIteratorType::AtSequenceNumber, "at")
                    };
                    match streams
                        .get_shard_iterator()
                        .stream_arn(&stream_arn)
                        .shard_id(shard_id)
                        .shard_iterator_type(kind)
                        .sequence_number(&seq)
                        .send()
                        .await
                    {
                        Ok(o) => st.iterator = o.shard_iterator,
                        Err(e) => {
                            tracing::warn!(mapping = name, %what, error = %aws_sdk_dynamodbstreams::error::DisplayErrorContext(e), "GetShardIterator failed");
                            st.iterator = None;
                        }
                    }
                }
            }
        }
        if !busy {
            tokio::select! {
                _ = tokio::time::sleep(config.idle) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// Drives `handler` from a Kinesis stream until `shutdown` turns true.
pub async fn run_kinesis_mapping<H, Fut>(
    name: &'static str,
    kinesis: aws_sdk_kinesis::Client,
    stream_name: String,
    config: MappingConfig,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(KinesisEvent) -> Fut,
    Fut: Future<Output = KinesisEventResponse>,
{
    use aws_sdk_kinesis::types::ShardIteratorType as Kind;
    let mut iterators: HashMap<String, (Option<String>, Option<String>, u32)> = HashMap::new();
    let mut arn = String::new();
    let mut since_refresh = u32::MAX;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if since_refresh > 25 {
            since_refresh = 0;
            match kinesis
                .describe_stream_summary()
                .stream_name(&stream_name)
                .send()
                .await
            {
                Ok(o) => {
                    if let Some(s) = o.stream_description_summary() {
                        arn = s.stream_arn().to_owned();
                    }
                }
                Err(e) => {
                    tracing::warn!(mapping = name, error = %aws_sdk_kinesis::error::DisplayErrorContext(e), "DescribeStreamSummary failed")
                }
            }
            match kinesis.list_shards().stream_name(&stream_name).send().await {
                Ok(o) => {
                    for s in o.shards() {
                        iterators
                            .entry(s.shard_id().to_owned())
                            .or_insert((None, None, 0));
                    }
                }
                Err(e) => {
                    tracing::warn!(mapping = name, error = %aws_sdk_kinesis::error::DisplayErrorContext(e), "ListShards failed")
                }
            }
        }
        since_refresh += 1;
        let mut busy = false;
        for (shard_id, (iterator, last, retries)) in iterators.iter_mut() {
            if iterator.is_none() {
                let req = kinesis
                    .get_shard_iterator()
                    .stream_name(&stream_name)
                    .shard_id(shard_id);
                let req = match last {
                    Some(seq) => req
                        .shard_iterator_type(Kind::AfterSequenceNumber)
                        .starting_sequence_number(seq.as_str()),
                    None => req.shard_iterator_type(Kind::TrimHorizon),
                };
                match req.send().await {
                    Ok(o) => *iterator = o.shard_iterator,
                    Err(e) => {
                        tracing::warn!(mapping = name, error = %aws_sdk_kinesis::error::DisplayErrorContext(e), "GetShardIterator failed");
                        continue;
                    }
                }
            }
            let Some(it) = iterator.clone() else { continue };
            let out = match kinesis
                .get_records()
                .shard_iterator(it)
                .limit(config.batch_size)
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(mapping = name, error = %aws_sdk_kinesis::error::DisplayErrorContext(e), "GetRecords failed; re-opening the shard");
                    *iterator = None;
                    continue;
                }
            };
            let next = out.next_shard_iterator().map(str::to_owned);
            let records: Vec<KinesisEventRecord> = out
                .records
                .into_iter()
                .map(|r| kinesis_record(r, &arn))
                .collect();
            if records.is_empty() {
                *iterator = next;
                continue;
            }
            busy = true;
            let last_seq = records.last().map(|r| r.kinesis.sequence_number.clone());
            let mut event = KinesisEvent::default();
            event.records = records;
            let resp = handler(event).await;
            let failed = resp
                .batch_item_failures
                .iter()
                .filter_map(|f| f.item_identifier.clone())
                .min_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
            match failed {
                None => {
                    *retries = 0;
                    *last = last_seq;
                    *iterator = next;
                }
                Some(seq) => {
                    *retries += 1;
                    let kind = if *retries > config.max_retries {
                        tracing::error!(mapping = name, sequence_number = %seq, "record still failing; skipped (an on-failure destination gets it on AWS)");
                        *retries = 0;
                        Kind::AfterSequenceNumber
                    } else {
                        tokio::time::sleep(Duration::from_millis(100 << (*retries).min(5))).await;
                        Kind::AtSequenceNumber
                    };
                    *iterator = kinesis
                        .get_shard_iterator()
                        .stream_name(&stream_name)
                        .shard_id(shard_id)
                        .shard_iterator_type(kind)
                        .starting_sequence_number(seq)
                        .send()
                        .await
                        .ok()
                        .and_then(|o| o.shard_iterator);
                }
            }
        }
        if !busy {
            tokio::select! {
                _ = tokio::time::sleep(config.idle) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// Starts every stream-driven function of `app` as a local mapping: projector and publisher on
/// the events table's stream (its two readers), the snapshotter, the activity consumer and
/// (when the domain has reactions) the reactor on Kinesis.
pub async fn spawn_all(
    app: &App,
    config: MappingConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let arn = table_stream_arn(&app.clients.dynamodb, &app.settings.events_table).await?;
    let streams = chronicle_lambda::records::streams_client(&app.clients.sdk);
    let mut handles = Vec::new();
    type DynHandler = fn(App, Event) -> futures::future::BoxFuture<'static, DynamoDbEventResponse>;
    // Two readers of the table's stream, as on AWS; the rest read Kinesis.
    let mappings: [(&'static str, DynHandler); 2] = [
        ("projector", |app, e| {
            Box::pin(async move { chronicle_lambda::streams::project(&app, &e).await })
        }),
        ("publisher", |app, e| {
            Box::pin(async move { chronicle_lambda::streams::publish(&app, &e).await })
        }),
    ];
    for (name, handler) in mappings {
        let app = app.clone();
        handles.push(tokio::spawn(run_dynamodb_mapping(
            name,
            streams.clone(),
            arn.clone(),
            config,
            move |e| handler(app.clone(), e),
            shutdown.clone(),
        )));
    }
    let app1 = app.clone();
    handles.push(tokio::spawn(run_kinesis_mapping(
        "snapshotter",
        app.clients.kinesis.clone(),
        app.settings.event_stream.clone(),
        config,
        move |e| {
            let app = app1.clone();
            async move { chronicle_lambda::streams::snapshot_kinesis(&app, &e).await }
        },
        shutdown.clone(),
    )));
    let app2 = app.clone();
    handles.push(tokio::spawn(run_kinesis_mapping(
        "activity",
        app.clients.kinesis.clone(),
        app.settings.event_stream.clone(),
        config,
        move |e| {
            let app = app2.clone();
            async move { chronicle_lambda::activity::consume(&app, &e).await }
        },
        shutdown.clone(),
    )));
    if !app.chronicle.reactions().is_empty() {
        let app3 = app.clone();
        handles.push(tokio::spawn(run_kinesis_mapping(
            "reactor",
            app.clients.kinesis.clone(),
            app.settings.event_stream.clone(),
            config,
            move |e| {
                let app = app3.clone();
                async move { chronicle_lambda::reactions::react(&app, &e).await }
            },
            shutdown,
        )));
    }
    Ok(handles)
}
