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
use aws_lambda_events::streams::KinesisEventResponse;
use chronicle_kernel::reaction::runner::record_refusal;
use chronicle_kernel::reaction::{CommandBus, ReactionStep};
use chronicle_kernel::{Chronicle, EventEnvelope, ReadModelStore};

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
    crate::kinesis::by_partition(event, "reaction", |i| {
        handle(
            chronicle,
            read_models,
            commands,
            &event.records[i].kinesis.data.0,
        )
    })
    .await
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
