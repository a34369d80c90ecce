//! Another service reading the distributed events: a Kinesis consumer that keeps an activity
//! feed (one entry per event, findable by aggregate) in the read-model table. Idempotent: an
//! entry is keyed by (aggregate, version) and written only if absent, so redeliveries and
//! replays change nothing.

use crate::App;
use aws_lambda_events::kinesis::KinesisEvent;
use aws_lambda_events::streams::KinesisEventResponse;
use chronicle_kernel::{DocWrite, EventEnvelope, ModelRef, ReadModelStore};
use serde_json::json;
use tracing::Instrument;

/// The read model's name.
pub const ACTIVITY_FEED: &str = "activity_feed";

pub fn entry_key(e: &EventEnvelope) -> String {
    format!("{}/{}/{:020}", e.aggregate_type, e.aggregate_id, e.version)
}

/// The index value entries are found by: `{aggregate_type}/{aggregate_id}`.
pub fn aggregate_key(aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{aggregate_type}/{aggregate_id}")
}

/// The activity consumer on the app's read-model table ([`consume_into`]).
pub async fn consume(app: &App, event: &KinesisEvent) -> KinesisEventResponse {
    consume_into(&*app.read_models, event).await
}

/// The handler over any read-model store.
pub async fn consume_into<R: ReadModelStore + ?Sized>(
    store: &R,
    event: &KinesisEvent,
) -> KinesisEventResponse {
    let model = ModelRef::active(ACTIVITY_FEED);
    crate::kinesis::by_partition(event, "activity", |i| {
        let (model, data) = (&model, &event.records[i].kinesis.data.0);
        async move {
            let e: EventEnvelope = serde_json::from_slice(data)
                .map_err(|e| format!("not an event envelope: {e}"))?;
            let write = DocWrite {
                key: entry_key(&e),
                // Every entry is written once: version 1 against absent.
                version: 1,
                index: vec![(
                    "aggregate".into(),
                    aggregate_key(&e.aggregate_type, &e.aggregate_id),
                )],
                body: json!({
                    "aggregate_type": e.aggregate_type,
                    "aggregate_id": e.aggregate_id,
                    "version": e.version,
                    "event_type": e.event_type,
                    "schema_version": e.schema_version,
                    "recorded_at": chronicle_kernel::envelope::format_timestamp(&e.recorded_at),
                    "data": e.data,
                }),
            };
            let span = tracing::info_span!("record", aggregate_type = %e.aggregate_type, aggregate_id = %e.aggregate_id, version = e.version);
            store
                .apply(model, vec![write], None)
                .instrument(span)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await
}
