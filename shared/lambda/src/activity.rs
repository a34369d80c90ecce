//! Another service reading the distributed events: a Kinesis consumer that keeps an activity
//! feed (one entry per event, findable by aggregate) in the read-model table. Idempotent: an
//! entry is keyed by (aggregate, version) and written only if absent, so redeliveries and
//! replays change nothing.

use crate::App;
use aws_lambda_events::kinesis::KinesisEvent;
use aws_lambda_events::streams::{KinesisBatchItemFailure, KinesisEventResponse};
use chronicle_kernel::{DocWrite, EventEnvelope, ModelRef, ReadModelStore};
use serde_json::json;
use std::collections::HashSet;

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
    let mut stopped: HashSet<&str> = HashSet::new();
    let mut first_failed: Option<usize> = None;
    for (i, r) in event.records.iter().enumerate() {
        let partition = r.kinesis.partition_key.as_str();
        if stopped.contains(partition) {
            continue; // this aggregate resumes from its failed record on the retry
        }
        let parsed: Result<EventEnvelope, String> =
            serde_json::from_slice(&r.kinesis.data.0).map_err(|e| e.to_string());
        let result = match parsed {
            Ok(e) => {
                let span = tracing::info_span!("record", aggregate_type = %e.aggregate_type, aggregate_id = %e.aggregate_id, version = e.version);
                let _g = span.enter();
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
                drop(_g);
                store
                    .apply(&model, vec![write], None)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Err(reason) => Err(format!("not an event envelope: {reason}")),
        };
        if let Err(reason) = result {
            tracing::error!(sequence_number = %r.kinesis.sequence_number, %reason, "activity record failed; stopping this aggregate here");
            stopped.insert(partition);
            first_failed.get_or_insert(i);
        }
    }
    let mut out = KinesisEventResponse::default();
    if let Some(i) = first_failed {
        let mut f = KinesisBatchItemFailure::default();
        f.item_identifier = Some(event.records[i].kinesis.sequence_number.clone());
        out.batch_item_failures.push(f);
    }
    out
}
