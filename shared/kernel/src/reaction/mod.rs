//! Reactions: the side effects of events. A reaction subscribes to event types and answers each
//! event with commands to other aggregates or calls out through the domain's ports
//! ([`crate::ports::Outbound`]), issued at least once, each with an idempotency key derived from
//! the triggering event, so a redelivered event never doubles an effect. A reaction
//! that runs a workflow keeps a state per process instance (a process manager): a shipment's
//! dispatch, say, across the shipment's and the warehouses' events.
//!
//! [`step`] handles one event (load the instance, decide, record the decision, issue its
//! commands); [`runner`] feeds a reaction from the embedded store's ordered feed with its own
//! checkpoint; on AWS a function fed by Kinesis takes each record through the same step.
//!
//! What a reaction decides is recorded before any of its commands is sent: the instance's new
//! state, the event marked as applied, and the commands as pending. A crash anywhere leaves
//! either nothing recorded (the event is handled again from scratch) or the pending commands,
//! which the next delivery sends again under the same keys.

pub mod runner;
pub mod step;

use crate::aggregate::{Aggregate, DomainEvent};
use crate::command::{CommandOptions, CommandOutcome};
use crate::envelope::EventEnvelope;
use crate::error::Error;
use crate::ports::OutboundError;
use async_trait::async_trait;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use runner::ReactionRunner;
pub use step::{Handled, ReactionError, ReactionStep, Refused};

/// What a reaction decides to do about an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Dispatch {
    /// A command to an aggregate, as its JSON.
    Command {
        aggregate_type: String,
        aggregate_id: String,
        command: Value,
    },
    /// A call out through the port the domain registered under `port` ([`Outbound`]).
    Call { port: String, payload: Value },
}

impl Dispatch {
    /// `command` to the aggregate `A` with id `id`.
    ///
    /// # Panics
    /// If the command does not serialize to JSON (a derived `Serialize` always does).
    pub fn to<A: Aggregate>(id: impl Into<String>, command: &A::Command) -> Self {
        Self::Command {
            aggregate_type: A::TYPE.to_owned(),
            aggregate_id: id.into(),
            command: serde_json::to_value(command).expect("commands serialize to JSON"),
        }
    }

    /// A call of the port registered as `port`, with `payload`.
    ///
    /// # Panics
    /// If the payload does not serialize to JSON (a derived `Serialize` always does).
    pub fn call(port: impl Into<String>, payload: &impl Serialize) -> Self {
        Self::Call {
            port: port.into(),
            payload: serde_json::to_value(payload).expect("payloads serialize to JSON"),
        }
    }

    /// What it acts on: `type/id` of a command's aggregate, `port/name` of a call. Dispatches
    /// to one target go out in the order given.
    pub fn target(&self) -> String {
        match self {
            Dispatch::Command {
                aggregate_type,
                aggregate_id,
                ..
            } => format!("{aggregate_type}/{aggregate_id}"),
            Dispatch::Call { port, .. } => format!("port/{port}"),
        }
    }
}

/// A reaction, written by the domain: pure decisions, no I/O. Chronicle stores its state,
/// issues its commands and keeps its place in the events.
pub trait Reaction: Send + Sync + 'static {
    /// Kept per process instance; `()` for a reaction that needs none.
    type State: Default + Serialize + DeserializeOwned + Send + Sync;

    /// Unique among the domain's reactions and read models; it names the reaction's checkpoint,
    /// its state documents and its commands' idempotency keys.
    const NAME: &'static str;

    /// The events it reacts to, as (aggregate type, event type).
    fn subscriptions(&self) -> Vec<(&'static str, &'static str)>;

    /// The process instance `event` belongs to, whose state [`Reaction::react`] gets; `None`
    /// (the default) keeps no state: the event alone decides.
    fn instance(&self, _event: &EventEnvelope) -> Option<String> {
        None
    }

    /// What to do about `event` (upcast to its current schema): change the instance's state
    /// and return the commands to issue. The same state and event must give the same answer.
    /// An error stops the reaction at this event (reported, retried) like a projection's.
    fn react(
        &self,
        state: &mut Self::State,
        event: &EventEnvelope,
    ) -> Result<Vec<Dispatch>, String>;
}

/// The domain event in `event`, decoded as aggregate `A`'s: a helper for [`Reaction::react`].
pub fn decode<A: Aggregate>(event: &EventEnvelope) -> Result<A::Event, String> {
    A::Event::from_data(&event.event_type, &event.data).map_err(|e| {
        format!(
            "{}/{} v{} `{}`: {e}",
            event.aggregate_type, event.aggregate_id, event.version, event.event_type
        )
    })
}

/// A reaction with its types erased, as the registry holds it.
pub trait ReactionKind: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn subscriptions(&self) -> &[(String, String)];
    /// Whether `event` is one this reaction subscribes to.
    fn wants(&self, event: &EventEnvelope) -> bool {
        self.subscriptions()
            .iter()
            .any(|(t, e)| *t == event.aggregate_type && *e == event.event_type)
    }
    fn instance(&self, event: &EventEnvelope) -> Option<String>;
    /// [`Reaction::react`] on a stored state (`None`: the default): the new state and the
    /// commands.
    fn react_json(
        &self,
        state: Option<&Value>,
        event: &EventEnvelope,
    ) -> Result<(Value, Vec<Dispatch>), String>;
}

pub(crate) struct Typed<R> {
    reaction: R,
    subscriptions: Vec<(String, String)>,
}

impl<R: Reaction> Typed<R> {
    pub(crate) fn new(reaction: R) -> Self {
        let subscriptions = reaction
            .subscriptions()
            .into_iter()
            .map(|(t, e)| (t.to_owned(), e.to_owned()))
            .collect();
        Self {
            reaction,
            subscriptions,
        }
    }
}

impl<R: Reaction> ReactionKind for Typed<R> {
    fn name(&self) -> &str {
        R::NAME
    }

    fn subscriptions(&self) -> &[(String, String)] {
        &self.subscriptions
    }

    fn instance(&self, event: &EventEnvelope) -> Option<String> {
        self.reaction.instance(event)
    }

    fn react_json(
        &self,
        state: Option<&Value>,
        event: &EventEnvelope,
    ) -> Result<(Value, Vec<Dispatch>), String> {
        let mut state: R::State = match state {
            Some(v) => R::State::deserialize(v)
                .map_err(|e| format!("the stored state of {} does not decode: {e}", R::NAME))?,
            None => R::State::default(),
        };
        let commands = self.reaction.react(&mut state, event)?;
        let state = serde_json::to_value(&state).map_err(|e| e.to_string())?;
        Ok((state, commands))
    }
}

/// Where a reaction's decisions go: the registry's aggregate services, in-process, and the
/// domain's outbound ports.
#[async_trait]
pub trait CommandBus: Send + Sync {
    /// Runs `command` (its JSON) on `aggregate_type`/`id`, as the HTTP API does.
    async fn dispatch(
        &self,
        aggregate_type: &str,
        id: &str,
        command: &[u8],
        opts: CommandOptions,
    ) -> Result<CommandOutcome, Error>;

    /// Calls the port registered as `port`; `None` when no port has that name.
    async fn call(
        &self,
        port: &str,
        key: &str,
        payload: &Value,
    ) -> Option<Result<(), OutboundError>>;
}

/// The idempotency key of the `index`th command `reaction` issued for the event at `version` of
/// `stream`: the same on every delivery of that event, distinct for every other.
pub fn idempotency_key(reaction: &str, stream: &str, version: u64, index: usize) -> String {
    let mut h = Sha256::new();
    for part in [reaction.as_bytes(), stream.as_bytes()] {
        h.update(part);
        h.update([0]);
    }
    h.update(version.to_be_bytes());
    h.update((index as u64).to_be_bytes());
    // The reaction's name first, so an operator can tell whose command a key was.
    format!("{reaction}:{}", hex::encode(h.finalize()))
}

/// Reaction and port names: 1 to 64 characters from `[A-Za-z0-9_-]`, not starting with `_`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {name:?}: 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-', not starting with '_'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_distinct_and_short() {
        let k = idempotency_key("fulfil", "widgets/w-1", 1, 0);
        assert_eq!(k, idempotency_key("fulfil", "widgets/w-1", 1, 0));
        assert!(
            k.starts_with("fulfil:") && k.len() == "fulfil:".len() + 64,
            "{k}"
        );
        for other in [
            idempotency_key("fulfil", "widgets/w-1", 1, 1),
            idempotency_key("fulfil", "widgets/w-1", 2, 0),
            idempotency_key("fulfil", "widgets/w-2", 1, 0),
            idempotency_key("other", "widgets/w-1", 1, 0),
            // The separator keeps (name, stream) pairs apart.
            idempotency_key("fulfilw", "idgets/w-1", 1, 0),
        ] {
            assert_ne!(k, other);
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("shipment_dispatch").is_ok());
        for bad in ["", "_x", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
