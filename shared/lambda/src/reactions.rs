//! The reactor: the domain's reactions fed from Kinesis (the published events, upcast), each
//! record through the kernel's reaction step, commands run in-process on the app's stores.
//! The event source mapping keeps the reactor's own position in the stream.
//!
//! A record that fails (a store that is busy, a reaction that refuses the event) is reported
//! by sequence number; that record's partition (its aggregate) is not handled further in this
//! batch, so each aggregate's events reach every reaction in order. Everything is idempotent:
//! instance documents remember the events applied, and commands carry keys derived from the
//! triggering event.

use crate::App;
use aws_lambda_events::kinesis::KinesisEvent;
use aws_lambda_events::streams::{KinesisBatchItemFailure, KinesisEventResponse};
use chronicle_kernel::reaction::runner::record_refusal;
use chronicle_kernel::reaction::{CommandBus, ReactionStep};
use chronicle_kernel::{Chronicle, EventEnvelope, ReadModelStore};
use std::collections::HashSet;

/// The reactor on the app's registry and read-model table ([`react_with`]).
pub async fn react(app: &App, event: &KinesisEvent) -> KinesisEventResponse {
    react_with(&app.chronicle, &*app.read_models, &app.chronicle, event).await
}

/// The reactor over any ports: `chronicle` names the reactions and upcasts, `read_models`
/// holds their instances and status, `commands` runs what they issue.
pub async fn react_with(
    chronicle: &Chronicle,
    read_models: &dyn ReadModelStore,
    commands: &dyn CommandBus,
    event: &KinesisEvent,
) -> KinesisEventResponse {
    let mut stopped: HashSet<&str> = HashSet::new();
    let mut first_failed: Option<usize> = None;
    for (i, r) in event.records.iter().enumerate() {
        let partition = r.kinesis.partition_key.as_str();
        if stopped.contains(partition) {
            continue; // this aggregate resumes from its failed record on the retry
        }
        if let Err(reason) = handle(chronicle, read_models, commands, &r.kinesis.data.0).await {
            tracing::error!(sequence_number = %r.kinesis.sequence_number, %reason, "reaction record failed; stopping this aggregate here");
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

/// One record through every reaction that wants it.
async fn handle(
    chronicle: &Chronicle,
    read_models: &dyn ReadModelStore,
    commands: &dyn CommandBus,
    data: &[u8],
) -> Result<(), String> {
    let event: EventEnvelope =
        serde_json::from_slice(data).map_err(|e| format!("not an event envelope: {e}"))?;
    let wanted: Vec<_> = chronicle
        .reactions()
        .iter()
        .filter(|r| r.wants(&event))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    // Published events are upcast already; this covers records from an older publisher.
    let event = chronicle.upcast(event).map_err(|e| e.to_string())?;
    for reaction in wanted {
        let step = ReactionStep {
            reaction: reaction.as_ref(),
            read_models,
            commands,
        };
        let handled = step.handle(&event).await.map_err(|e| e.to_string())?;
        for refused in handled.refused {
            record_refusal(read_models, reaction.name(), refused).await;
        }
    }
    Ok(())
}
