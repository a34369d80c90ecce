//! One event through one reaction: the step the local runner and the Kinesis function share.
//!
//! For a process instance the step reads the instance's document (state, the events it has
//! applied, the commands still to send), decides unless the event is applied already, writes
//! the document one version on (a conditional write: a concurrent step on the same instance
//! makes this one read again), sends the pending commands of this event, and finally takes them
//! off the document. Without an instance there is nothing to record: the commands follow from
//! the event alone and go out at once.

use super::{idempotency_key, CommandBus, Dispatch, ReactionKind};
use crate::command::{CommandOptions, Origin};
use crate::envelope::EventEnvelope;
use crate::error::{Error, StoreError};
use crate::ports::{DocWrite, ModelRef, OutboundError, ReadModelStore};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use tracing::Instrument;

/// Why a reaction could not handle an event; the event is handed to it again later.
#[derive(Debug, thiserror::Error)]
pub enum ReactionError {
    /// The reaction refused the event (its `react` returned an error), or its stored state
    /// does not decode: retrying won't help until the code or the data changes.
    #[error("reaction `{reaction}` failed on {stream} v{version}: {reason}")]
    Event {
        reaction: String,
        stream: String,
        version: u64,
        reason: String,
    },
    /// A store or a command failed in a way worth retrying (busy, unavailable, conflicting).
    #[error("reaction `{reaction}` on {stream} v{version}: {source}")]
    Retry {
        reaction: String,
        stream: String,
        version: u64,
        #[source]
        source: Error,
    },
}

/// A command the target aggregate refused (a domain rule, an invalid command): an answer, not
/// a failure, so it is not retried. It is logged and counted in the reaction's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// `type/id` of the target.
    pub target: String,
    pub command: String,
    pub code: String,
    pub message: String,
    /// `type/id@version` of the event that caused it.
    pub event: String,
}

/// What handling one event did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// Commands run (or answered from their idempotency record).
    pub dispatched: usize,
    pub refused: Vec<Refused>,
    /// The event had been applied to its instance before (a redelivery).
    pub repeat: bool,
}

/// A command decided but not yet known to be sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pending {
    /// `type/id@version` of the event that decided it.
    event: String,
    key: String,
    dispatch: Dispatch,
}

/// A process instance's document.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Instance {
    state: Value,
    /// The versions of each stream (`type/id`) applied to this instance: a redelivery, even
    /// out of order, is recognised.
    #[serde(default)]
    applied: BTreeMap<String, Vec<u64>>,
    #[serde(default)]
    pending: Vec<Pending>,
}

impl Instance {
    fn has_applied(&self, stream: &str, version: u64) -> bool {
        self.applied
            .get(stream)
            .is_some_and(|v| v.binary_search(&version).is_ok())
    }

    fn mark_applied(&mut self, stream: &str, version: u64) {
        let versions = self.applied.entry(stream.to_owned()).or_default();
        if let Err(at) = versions.binary_search(&version) {
            versions.insert(at, version);
        }
    }
}

/// Attempts at the conditional write of an instance before the step gives up (and is retried).
const MAX_RACES: usize = 16;

/// One reaction's step, over the ports it needs.
pub struct ReactionStep<'a> {
    pub reaction: &'a dyn ReactionKind,
    /// Where instance documents live: the read model named after the reaction.
    pub read_models: &'a dyn ReadModelStore,
    pub commands: &'a dyn CommandBus,
}

impl ReactionStep<'_> {
    /// Handles `event` (already upcast). Events the reaction doesn't subscribe to are ignored.
    pub async fn handle(&self, event: &EventEnvelope) -> Result<Handled, ReactionError> {
        if !self.reaction.wants(event) {
            return Ok(Handled::default());
        }
        let span = tracing::info_span!(
            "reaction",
            name = self.reaction.name(),
            aggregate_type = %event.aggregate_type,
            aggregate_id = %event.aggregate_id,
            version = event.version
        );
        async {
            match self.reaction.instance(event) {
                Some(instance) => self.handle_instance(&instance, event).await,
                None => {
                    let (_, commands) = self
                        .reaction
                        .react_json(None, event)
                        .map_err(|r| self.event_error(event, r))?;
                    let pending = pending_of(self.reaction.name(), event, commands);
                    self.send(event, &pending).await
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn handle_instance(
        &self,
        instance: &str,
        event: &EventEnvelope,
    ) -> Result<Handled, ReactionError> {
        let model = ModelRef::active(self.reaction.name());
        let stream = event.stream().to_string();
        let mut races = 0;
        let (pending, repeat) = loop {
            let (mut doc, version) = self.read(&model, instance, event).await?;
            if doc.has_applied(&stream, event.version) {
                let mine: Vec<Pending> = doc
                    .pending
                    .iter()
                    .filter(|p| p.event == tag(event))
                    .cloned()
                    .collect();
                if mine.is_empty() {
                    return Ok(Handled {
                        repeat: true,
                        ..Handled::default()
                    });
                }
                break (mine, true);
            }
            let (state, commands) = self
                .reaction
                .react_json(Some(&doc.state).filter(|_| version > 0), event)
                .map_err(|r| self.event_error(event, r))?;
            let mine = pending_of(self.reaction.name(), event, commands);
            doc.state = state;
            doc.mark_applied(&stream, event.version);
            doc.pending.extend(mine.iter().cloned());
            if self
                .write(&model, instance, version + 1, &doc, event)
                .await?
            {
                break (mine, false);
            }
            races += 1;
            if races >= MAX_RACES {
                return Err(self.retry(event, contended(instance)));
            }
        };
        let mut handled = self.send(event, &pending).await?;
        handled.repeat = repeat;
        // Sent: off the document, so it stays small. Losing this write costs only a resend
        // under the same keys on a redelivery.
        let mut races = 0;
        loop {
            let (mut doc, version) = self.read(&model, instance, event).await?;
            let before = doc.pending.len();
            doc.pending.retain(|p| p.event != tag(event));
            if doc.pending.len() == before
                || self
                    .write(&model, instance, version + 1, &doc, event)
                    .await?
            {
                return Ok(handled);
            }
            races += 1;
            if races >= MAX_RACES {
                return Err(self.retry(event, contended(instance)));
            }
        }
    }

    /// The instance's document and version (0 when there is none yet).
    async fn read(
        &self,
        model: &ModelRef,
        instance: &str,
        event: &EventEnvelope,
    ) -> Result<(Instance, u64), ReactionError> {
        let Some(doc) = self
            .read_models
            .get(model, instance)
            .await
            .map_err(|e| self.retry(event, e.into()))?
        else {
            return Ok((Instance::default(), 0));
        };
        let parsed = Instance::deserialize(&doc.body).map_err(|e| {
            self.event_error(
                event,
                format!("the stored instance `{instance}` does not decode: {e}"),
            )
        })?;
        Ok((parsed, doc.version))
    }

    /// Writes the instance at `version` if nobody wrote it since it was read (at `version - 1`).
    async fn write(
        &self,
        model: &ModelRef,
        instance: &str,
        version: u64,
        doc: &Instance,
        event: &EventEnvelope,
    ) -> Result<bool, ReactionError> {
        let body = serde_json::to_value(doc).map_err(|e| self.event_error(event, e.to_string()))?;
        let write = DocWrite {
            key: instance.to_owned(),
            version,
            body,
            index: Vec::new(),
        };
        let applied = self
            .read_models
            .apply(model, vec![write], None)
            .await
            .map_err(|e| self.retry(event, e.into()))?;
        Ok(applied == 1)
    }

    /// Sends the commands: each target's in the order given, different targets at once (so
    /// they share the store's group commits). A refusal is an answer; anything else fails the
    /// step (the commands that went out are answered from their keys on the retry).
    async fn send(
        &self,
        event: &EventEnvelope,
        pending: &[Pending],
    ) -> Result<Handled, ReactionError> {
        let mut by_target: Vec<Vec<&Pending>> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for p in pending {
            let i = *index.entry(p.dispatch.target()).or_insert_with(|| {
                by_target.push(Vec::new());
                by_target.len() - 1
            });
            by_target[i].push(p);
        }
        let sent = futures::future::join_all(by_target.into_iter().map(|commands| async move {
            let mut handled = Handled::default();
            for p in commands {
                match self.send_one(event, p).await? {
                    None => handled.dispatched += 1,
                    Some(refused) => handled.refused.push(refused),
                }
            }
            Ok::<_, ReactionError>(handled)
        }))
        .await;
        let mut handled = Handled::default();
        for h in sent {
            let h = h?;
            handled.dispatched += h.dispatched;
            handled.refused.extend(h.refused);
        }
        Ok(handled)
    }

    /// One command or call; `Some` when its target refused it.
    async fn send_one(
        &self,
        event: &EventEnvelope,
        p: &Pending,
    ) -> Result<Option<Refused>, ReactionError> {
        let refusal = |what: String, code: &str, message: String| Refused {
            target: p.dispatch.target(),
            command: what,
            code: code.to_owned(),
            message,
            event: p.event.clone(),
        };
        let refused = match &p.dispatch {
            Dispatch::Command {
                aggregate_type,
                aggregate_id,
                command,
            } => {
                let body = serde_json::to_vec(command)
                    .map_err(|e| self.event_error(event, e.to_string()))?;
                let opts = CommandOptions {
                    idempotency_key: Some(p.key.clone()),
                    correlation_id: Some(correlation_of(event)),
                    causation_id: Some(event.event_id.to_string()),
                    origin: Origin::Reaction,
                    ..CommandOptions::default()
                };
                match self
                    .commands
                    .dispatch(aggregate_type, aggregate_id, &body, opts)
                    .await
                {
                    Ok(_) => return Ok(None),
                    Err(
                        e @ (Error::Rejected { .. }
                        | Error::NotFound { .. }
                        | Error::InvalidInput { .. }
                        | Error::IdempotencyKeyReused { .. }),
                    ) => {
                        let what = command.get("type").and_then(Value::as_str).map_or_else(
                            || command.to_string().chars().take(200).collect(),
                            str::to_owned,
                        );
                        refusal(what, e.code(), e.to_string())
                    }
                    Err(e) => return Err(self.retry(event, e)),
                }
            }
            Dispatch::Call { port, payload } => {
                match self.commands.call(port, &p.key, payload).await {
                    Some(Ok(())) => return Ok(None),
                    Some(Err(OutboundError::Refused(why))) => {
                        refusal(format!("call {port}"), "call_refused", why)
                    }
                    Some(Err(OutboundError::Failed(why))) => {
                        return Err(self.retry(
                            event,
                            Error::Store(StoreError::Unavailable(format!("port `{port}`: {why}"))),
                        ))
                    }
                    // A registration the deployment lacks: stuck here (and said so) until it
                    // is fixed, rather than calls lost.
                    None => {
                        return Err(self.event_error(
                            event,
                            format!("no outbound port `{port}` is registered"),
                        ))
                    }
                }
            }
        };
        tracing::warn!(
            reaction = self.reaction.name(),
            target = %refused.target,
            command = %refused.command,
            code = %refused.code,
            message = %refused.message,
            "a reaction's command was refused; not retried"
        );
        Ok(Some(refused))
    }

    fn event_error(&self, event: &EventEnvelope, reason: String) -> ReactionError {
        ReactionError::Event {
            reaction: self.reaction.name().to_owned(),
            stream: event.stream().to_string(),
            version: event.version,
            reason,
        }
    }

    fn retry(&self, event: &EventEnvelope, source: Error) -> ReactionError {
        ReactionError::Retry {
            reaction: self.reaction.name().to_owned(),
            stream: event.stream().to_string(),
            version: event.version,
            source,
        }
    }
}

fn contended(instance: &str) -> Error {
    Error::Store(StoreError::Unavailable(format!(
        "instance `{instance}` kept changing under {MAX_RACES} attempts to update it"
    )))
}

/// `type/id@version`: an event's name in pending commands and refusals.
fn tag(event: &EventEnvelope) -> String {
    format!(
        "{}/{}@{}",
        event.aggregate_type, event.aggregate_id, event.version
    )
}

fn pending_of(reaction: &str, event: &EventEnvelope, commands: Vec<Dispatch>) -> Vec<Pending> {
    let stream = event.stream().to_string();
    commands
        .into_iter()
        .enumerate()
        .map(|(i, dispatch)| Pending {
            event: tag(event),
            key: idempotency_key(reaction, &stream, event.version, i),
            dispatch,
        })
        .collect()
}

/// The workflow a command belongs to: the triggering event's correlation, else the command
/// that recorded it, else the event itself.
fn correlation_of(event: &EventEnvelope) -> String {
    event
        .metadata
        .correlation_id
        .clone()
        .or_else(|| event.metadata.command_id.map(|c| c.to_string()))
        .unwrap_or_else(|| event.event_id.to_string())
}
