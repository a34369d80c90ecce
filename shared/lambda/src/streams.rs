//! The stream handlers: the projector and the publisher on the events table's DynamoDB stream
//! (its two readers), the snapshotter on Kinesis (or on the table stream, [`snapshot`]). Each
//! takes a batch as Lambda delivers it and answers with `ReportBatchItemFailures`: the sequence
//! number of the first record it could not handle.
//! Lambda then retries from that record, so everything here is idempotent; records of an
//! aggregate after its failed one are not handled in this invocation, so each aggregate's
//! events are handled in order. Other aggregates' records are handled regardless.

use crate::App;
use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::kinesis::KinesisEvent;
use aws_lambda_events::streams::{
    DynamoDbBatchItemFailure, DynamoDbEventResponse, KinesisBatchItemFailure, KinesisEventResponse,
};
use chronicle_aws::item::{self, StoredItem};
use chronicle_kernel::projection::StreamStep;
use chronicle_kernel::publishing::publish_batch;
use chronicle_kernel::{
    Chronicle, EventEnvelope, EventStore, ModelRef, Projection, ProjectionError, Publisher,
    ReadModelStore, StreamId,
};
use futures::stream::{self, StreamExt};
use serde_dynamo::AttributeValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::Instrument;

/// Aggregates handled at once within a batch.
const CONCURRENCY: usize = 16;

/// One record of a batch, decoded.
#[derive(Debug)]
pub struct Decoded {
    /// Position in the batch (records arrive in sequence order).
    pub index: usize,
    pub event: Result<EventEnvelope, String>,
}

/// A batch's event records grouped by stream, in order, plus the index of the first record
/// whose stream could not even be told (everything from there on is left for the retry).
pub struct Batch {
    pub streams: BTreeMap<String, Vec<Decoded>>,
    pub unreadable_from: Option<usize>,
}

/// Decodes a batch: INSERTs of event items only (idempotency records and TTL removals are
/// not events to consume).
pub fn decode(records: &[EventRecord]) -> Batch {
    let mut streams: BTreeMap<String, Vec<Decoded>> = BTreeMap::new();
    for (index, r) in records.iter().enumerate() {
        if r.event_name != "INSERT" {
            continue;
        }
        let stream = match r.change.keys.get(item::PK) {
            Some(AttributeValue::S(s)) => s.clone(),
            _ => {
                tracing::error!(index, "stream record without a `stream` key");
                return Batch {
                    streams,
                    unreadable_from: Some(index),
                };
            }
        };
        let event = match item::decode_item(r.change.new_image.clone()) {
            Ok(StoredItem::Event(e)) => Ok(*e),
            Ok(StoredItem::Other) => continue,
            Err(e) => Err(e.to_string()),
        };
        streams
            .entry(stream)
            .or_default()
            .push(Decoded { index, event });
    }
    Batch {
        streams,
        unreadable_from: None,
    }
}

/// The response naming the record at `first_failed` (if any).
pub fn response(records: &[EventRecord], first_failed: Option<usize>) -> DynamoDbEventResponse {
    let mut out = DynamoDbEventResponse::default();
    if let Some(i) = first_failed {
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = records
            .get(i)
            .and_then(|r| r.change.sequence_number.clone());
        out.batch_item_failures.push(failure);
    }
    out
}

fn min_failure(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// Awaits the per-stream handlers, a few at a time; the first failed record overall.
async fn gather<Fut>(start: Option<usize>, futures: impl Iterator<Item = Fut>) -> Option<usize>
where
    Fut: std::future::Future<Output = Option<usize>>,
{
    stream::iter(futures)
        .buffer_unordered(CONCURRENCY)
        .fold(start, |acc, f| async move { min_failure(acc, f) })
        .await
}

// ----------------------------------------------------------------------------------------
// Projector
// ----------------------------------------------------------------------------------------

/// Applies the batch to every read model of each event's aggregate type ([`project_into`]
/// the app's hot store and read-model table).
pub async fn project(app: &App, event: &Event) -> DynamoDbEventResponse {
    project_into(&app.chronicle, &*app.events, &*app.read_models, event).await
}

/// The projector over any ports: the registry names the projections of each aggregate type,
/// `events` fills version gaps, `read_models` holds the documents.
pub async fn project_into(
    chronicle: &Chronicle,
    events: &dyn EventStore,
    read_models: &dyn ReadModelStore,
    event: &Event,
) -> DynamoDbEventResponse {
    let ports = ProjectPorts {
        chronicle,
        events,
        read_models,
    };
    let batch = decode(&event.records);
    // Collected first: a closure held across the await would make the future not `Send`.
    let work: Vec<_> = batch
        .streams
        .values()
        .map(|r| project_stream(ports, r))
        .collect();
    let failed = gather(batch.unreadable_from, work.into_iter()).await;
    response(&event.records, failed)
}

/// What the projector works on.
#[derive(Clone, Copy)]
struct ProjectPorts<'a> {
    chronicle: &'a Chronicle,
    events: &'a dyn EventStore,
    read_models: &'a dyn ReadModelStore,
}

async fn project_stream(ports: ProjectPorts<'_>, records: &[Decoded]) -> Option<usize> {
    let first = records.first()?;
    let Ok(sample) = &first.event else {
        tracing::error!(index = first.index, error = ?first.event, "undecodable event record");
        return Some(first.index);
    };
    let stream = sample.stream();
    let Some(service) = ports.chronicle.aggregate(&stream.aggregate_type) else {
        tracing::error!(%stream, "events of an unregistered aggregate type");
        return Some(first.index);
    };
    let schema = service.schema().clone();
    let mut failed = None;
    for projection in ports.chronicle.projections_of(&stream.aggregate_type) {
        let f = project_one(ports, projection.clone(), &schema, &stream, records)
            .instrument(tracing::info_span!("projection", name = projection.name(), %stream))
            .await;
        failed = min_failure(failed, f);
    }
    failed
}

/// Folds the records into one projection's document of this stream and writes it once,
/// through the kernel's one stream step (which fills version gaps from the event store).
async fn project_one(
    ports: ProjectPorts<'_>,
    projection: Arc<dyn Projection>,
    schema: &chronicle_kernel::EventSchema,
    stream: &StreamId,
    records: &[Decoded],
) -> Option<usize> {
    // The records up to the first undecodable one, which fails: none after it is handled.
    let events: Vec<(usize, EventEnvelope)> = records
        .iter()
        .map_while(|r| r.event.as_ref().ok().map(|e| (r.index, e.clone())))
        .collect();
    let undecodable = records.get(events.len()).and_then(|r| {
        let reason = r.event.as_ref().err()?;
        tracing::error!(index = r.index, %reason, "undecodable event record");
        Some(r.index)
    });
    let model = ModelRef::active(projection.name());
    let step = StreamStep {
        events: ports.events,
        read_models: ports.read_models,
        model: &model,
        projection: projection.as_ref(),
        schema,
    };
    let failed = match step.project(stream.clone(), events).await {
        Ok(()) => None,
        Err((
            index,
            ProjectionError::Event {
                version, reason, ..
            },
        )) => {
            tracing::error!(%stream, index, version, %reason, "projection failed; stopping this aggregate here");
            Some(index)
        }
        Err((index, ProjectionError::Store(e))) => {
            tracing::error!(%stream, index, error = %e, "the store failed; stopping this aggregate here");
            Some(index)
        }
    };
    min_failure(failed, undecodable)
}

// ----------------------------------------------------------------------------------------
// Publisher
// ----------------------------------------------------------------------------------------

/// Publishes the batch's events, upcast to the current schema, to Kinesis ([`publish_to`]
/// the app's publisher).
pub async fn publish(app: &App, event: &Event) -> DynamoDbEventResponse {
    publish_to(&app.chronicle, &*app.publisher, event).await
}

/// The publisher over any port: the registry upcasts, `publisher` distributes.
pub async fn publish_to(
    chronicle: &Chronicle,
    publisher: &dyn Publisher,
    event: &Event,
) -> DynamoDbEventResponse {
    let batch = decode(&event.records);
    // Back in batch order: the step stops at the first record it can't publish.
    let mut records: Vec<(usize, Result<EventEnvelope, String>)> = batch
        .streams
        .into_values()
        .flatten()
        .map(|r| (r.index, r.event))
        .collect();
    records.sort_by_key(|(i, _)| *i);
    let upcast = |e: EventEnvelope| chronicle.upcast(e);
    let failed = match publish_batch(publisher, &upcast, records).await {
        Ok(()) => batch.unreadable_from,
        Err(stop) => {
            tracing::error!(index = stop.index, error = %stop.error, "publishing stopped at this record; the retry starts here");
            min_failure(batch.unreadable_from, Some(stop.index))
        }
    };
    response(&event.records, failed)
}

// ----------------------------------------------------------------------------------------
// Snapshotter
// ----------------------------------------------------------------------------------------

/// Snapshots each aggregate whose events in this batch cross a multiple of the interval
/// ([`snapshot_with`] the app's registry and `CHRONICLE_SNAPSHOT_EVERY`).
pub async fn snapshot(app: &App, event: &Event) -> DynamoDbEventResponse {
    snapshot_with(&app.chronicle, app.settings.snapshot_every, event).await
}

/// The snapshotter over any registry: each aggregate whose events in this batch cross a
/// multiple of `every` (0: never) is snapshotted through the registry's snapshot store.
pub async fn snapshot_with(
    chronicle: &Chronicle,
    every: u64,
    event: &Event,
) -> DynamoDbEventResponse {
    let batch = decode(&event.records);
    if every == 0 {
        return response(&event.records, batch.unreadable_from);
    }
    let work: Vec<_> = batch
        .streams
        .values()
        .map(|r| snapshot_stream(chronicle, every, r))
        .collect();
    let failed = gather(batch.unreadable_from, work.into_iter()).await;
    response(&event.records, failed)
}

/// The snapshotter on Kinesis, where the function is fed from ([`snapshot_kinesis_with`] the
/// app's registry): the events table's stream keeps its two readers for the projector and the
/// publisher.
pub async fn snapshot_kinesis(app: &App, event: &KinesisEvent) -> KinesisEventResponse {
    snapshot_kinesis_with(&app.chronicle, app.settings.snapshot_every, event).await
}

/// [`snapshot_with`] for a Kinesis batch (published envelopes): records grouped by partition
/// (the aggregate), the first record that fails reported by its sequence number.
pub async fn snapshot_kinesis_with(
    chronicle: &Chronicle,
    every: u64,
    event: &KinesisEvent,
) -> KinesisEventResponse {
    let mut by_partition: BTreeMap<&str, Vec<Decoded>> = BTreeMap::new();
    for (index, r) in event.records.iter().enumerate() {
        // Anchors share the stream; they are not events.
        if r.kinesis.partition_key == chronicle_aws::ANCHOR_PARTITION {
            continue;
        }
        let decoded = serde_json::from_slice::<EventEnvelope>(&r.kinesis.data.0)
            .map_err(|e| format!("not an event envelope: {e}"));
        by_partition
            .entry(r.kinesis.partition_key.as_str())
            .or_default()
            .push(Decoded {
                index,
                event: decoded,
            });
    }
    let failed = if every == 0 {
        None
    } else {
        let work: Vec<_> = by_partition
            .values()
            .map(|r| snapshot_stream(chronicle, every, r))
            .collect();
        gather(None, work.into_iter()).await
    };
    let mut out = KinesisEventResponse::default();
    if let Some(i) = failed {
        let mut f = KinesisBatchItemFailure::default();
        f.item_identifier = Some(event.records[i].kinesis.sequence_number.clone());
        out.batch_item_failures.push(f);
    }
    out
}

async fn snapshot_stream(chronicle: &Chronicle, every: u64, records: &[Decoded]) -> Option<usize> {
    let first = records.first()?.index;
    let mut failed = None;
    let mut versions = Vec::new();
    let mut stream = None;
    for r in records {
        match &r.event {
            Ok(e) => {
                versions.push(e.version);
                stream.get_or_insert_with(|| e.stream());
            }
            Err(reason) => {
                tracing::error!(index = r.index, %reason, "undecodable event record");
                failed = Some(r.index);
                break;
            }
        }
    }
    let Some(stream) = stream else {
        return failed;
    };
    let (Some(&lo), Some(&hi)) = (versions.iter().min(), versions.iter().max()) else {
        return failed;
    };
    if (lo - 1) / every == hi / every {
        return failed;
    }
    let Some(service) = chronicle.aggregate(&stream.aggregate_type) else {
        tracing::error!(%stream, "events of an unregistered aggregate type");
        return Some(first);
    };
    let span = tracing::info_span!("snapshot", aggregate_type = %stream.aggregate_type, aggregate_id = %stream.aggregate_id, version = hi);
    match service
        .snapshot(&stream.aggregate_id, Some(hi))
        .instrument(span)
        .await
    {
        Ok(Some(v)) => {
            tracing::info!(%stream, version = v, "snapshot saved");
            failed
        }
        Ok(None) => {
            tracing::warn!(%stream, "stream records of an aggregate the store has no events of");
            failed
        }
        Err(e) => {
            tracing::error!(%stream, error = %e, "snapshot failed");
            Some(first)
        }
    }
}
