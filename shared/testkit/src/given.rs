//! Given/when/then tests of a domain's own code, without any store: an aggregate's
//! `validate`/`decide`/`evolve` and a reaction's `react`.
//!
//! ```ignore
//! given::<Account>(&[opened("alice")])
//!     .when(AccountCommand::Withdraw { amount: 5 })
//!     .then_error("insufficient_funds");
//!
//! given_reaction(&Fulfilment)
//!     .after(&[envelope_of::<Order>("o-1", 1, &placed)])
//!     .when(&envelope_of::<Inventory>("sku-1", 2, &reserved))
//!     .then(&[Dispatch::to::<Order>("o-1", &OrderCommand::Confirm {})]);
//! ```
//!
//! Every `then...` panics with the command or event, the state and what happened instead.

use crate::fixtures::event;
use chronicle_kernel::aggregate::fold;
use chronicle_kernel::reaction::Reaction;
use chronicle_kernel::{Aggregate, Dispatch, DomainError, DomainEvent, EventEnvelope, StreamId};
use serde_json::Value;
use std::fmt::Debug;

/// A history of events of aggregate `A`, folded into the state a command is decided against.
pub struct Given<A: Aggregate> {
    state: A,
}

/// `A` after `history`: the start of a given/when/then test.
pub fn given<A: Aggregate>(history: &[A::Event]) -> Given<A> {
    Given::new(history)
}

/// Why a command produced no events.
#[derive(Debug)]
pub enum NotAccepted<E> {
    /// `validate` refused its shape (HTTP 400), with this message.
    Invalid(String),
    /// `decide` refused it (HTTP 404 or 422).
    Refused(E),
}

/// A command run on a state, waiting to be checked.
pub struct Then<A: Aggregate> {
    state: A,
    command: A::Command,
    outcome: Result<Vec<A::Event>, NotAccepted<A::Error>>,
}

impl<A: Aggregate> Given<A> {
    /// `A` after `history` (what [`given`] does).
    pub fn new(history: &[A::Event]) -> Self {
        Self::from_state(fold(A::default(), history))
    }

    /// Starts from a state built some other way.
    pub fn from_state(state: A) -> Self {
        Self { state }
    }

    /// Runs `command` as the kernel does: `validate` first, then `decide` on the state.
    pub fn when(self, command: A::Command) -> Then<A> {
        let outcome = match A::validate(&command) {
            Err(m) => Err(NotAccepted::Invalid(m)),
            Ok(()) => self.state.decide(&command).map_err(NotAccepted::Refused),
        };
        Then {
            state: self.state,
            command,
            outcome,
        }
    }
}

impl<A: Aggregate> Then<A> {
    /// What the command did, for checks the other methods don't make.
    pub fn outcome(&self) -> &Result<Vec<A::Event>, NotAccepted<A::Error>> {
        &self.outcome
    }
}

impl<A> Then<A>
where
    A: Aggregate + Debug,
    A::Command: Debug,
    A::Event: PartialEq + Debug,
{
    /// The command is accepted with exactly `expected`; returns the state after them.
    pub fn then(self, expected: &[A::Event]) -> A {
        match self.outcome {
            Ok(events) => {
                assert_eq!(
                    events, expected,
                    "events of {:?} on {:?} (left: decided, right: expected)",
                    self.command, self.state
                );
                fold(self.state, &events)
            }
            Err(r) => panic!(
                "{:?} on {:?} was not accepted ({r:?}), expected {expected:?}",
                self.command, self.state
            ),
        }
    }

    /// The command is accepted and changes nothing (a repeat, say); returns the state.
    pub fn then_nothing(self) -> A {
        self.then(&[])
    }

    /// `decide` refuses the command with `code`; returns the error for closer looks.
    pub fn then_error(self, code: &str) -> A::Error {
        match self.outcome {
            Err(NotAccepted::Refused(e)) if e.code() == code => e,
            other => panic!(
                "{:?} on {:?}: expected the refusal `{code}`, got {}",
                self.command,
                self.state,
                describe(&other)
            ),
        }
    }

    /// `validate` refuses the command with a message containing `fragment`; returns it.
    pub fn then_invalid(self, fragment: &str) -> String {
        match self.outcome {
            Err(NotAccepted::Invalid(m)) if m.contains(fragment) => m,
            other => panic!(
                "{:?}: expected validate to refuse it saying {fragment:?}, got {}",
                self.command,
                describe(&other)
            ),
        }
    }
}

fn describe<V: Debug, E: DomainError>(outcome: &Result<V, NotAccepted<E>>) -> String {
    match outcome {
        Ok(events) => format!("the events {events:?}"),
        Err(NotAccepted::Invalid(m)) => format!("validate's refusal {m:?}"),
        Err(NotAccepted::Refused(e)) => format!("the refusal `{}` ({e})", e.code()),
    }
}

/// A reaction and the state of the process instance an event is handed to.
pub struct GivenReaction<'r, R: Reaction> {
    reaction: &'r R,
    state: R::State,
}

/// `reaction` with a fresh instance: the start of a given/when/then test of a reaction.
pub fn given_reaction<R: Reaction>(reaction: &R) -> GivenReaction<'_, R> {
    GivenReaction {
        reaction,
        state: R::State::default(),
    }
}

/// An event handed to a reaction, waiting to be checked.
pub struct ThenReaction<R: Reaction> {
    event: EventEnvelope,
    state: R::State,
    outcome: Result<Vec<Dispatch>, String>,
}

/// The kernel keeps an instance's state as JSON between events: so do the tests, which catches
/// a state that does not survive the trip.
fn stored<S: serde::Serialize + serde::de::DeserializeOwned>(state: &S) -> S {
    let json = serde_json::to_value(state)
        .unwrap_or_else(|e| panic!("the reaction's state does not serialize: {e}"));
    serde_json::from_value(json.clone())
        .unwrap_or_else(|e| panic!("the reaction's state does not decode from {json}: {e}"))
}

impl<'r, R: Reaction> GivenReaction<'r, R> {
    /// Starts the instance from `state` instead of the default.
    pub fn state(mut self, state: R::State) -> Self {
        self.state = state;
        self
    }

    /// Hands `events` to the reaction first, in order, keeping the state and dropping their
    /// commands. Panics if it refuses one.
    pub fn after(mut self, events: &[EventEnvelope]) -> Self {
        for e in events {
            if let Err(m) = self.reaction.react(&mut self.state, e) {
                panic!(
                    "{} refused the prior event {}/{} v{} `{}`: {m}",
                    R::NAME,
                    e.aggregate_type,
                    e.aggregate_id,
                    e.version,
                    e.event_type
                );
            }
            self.state = stored(&self.state);
        }
        self
    }

    /// Hands `event` to the reaction.
    pub fn when(mut self, event: &EventEnvelope) -> ThenReaction<R> {
        let outcome = self.reaction.react(&mut self.state, event);
        ThenReaction {
            event: event.clone(),
            state: stored(&self.state),
            outcome,
        }
    }
}

impl<R: Reaction> ThenReaction<R> {
    /// What the reaction answered, for checks the other methods don't make.
    pub fn outcome(&self) -> &Result<Vec<Dispatch>, String> {
        &self.outcome
    }

    /// The reaction issues exactly `expected`, in order; returns the instance's new state.
    pub fn then(self, expected: &[Dispatch]) -> R::State {
        let e = &self.event;
        match self.outcome {
            Ok(got) => {
                assert_eq!(
                    got,
                    expected,
                    "{} on {}/{} v{} `{}` (left: issued, right: expected)",
                    R::NAME,
                    e.aggregate_type,
                    e.aggregate_id,
                    e.version,
                    e.event_type
                );
                self.state
            }
            Err(m) => panic!(
                "{} refused {}/{} v{} `{}`: {m}; expected {expected:?}",
                R::NAME,
                e.aggregate_type,
                e.aggregate_id,
                e.version,
                e.event_type
            ),
        }
    }

    /// The reaction refuses the event with a message containing `fragment`; returns it.
    pub fn then_error(self, fragment: &str) -> String {
        match self.outcome {
            Err(m) if m.contains(fragment) => m,
            other => panic!(
                "{} on `{}`: expected a refusal saying {fragment:?}, got {other:?}",
                R::NAME,
                self.event.event_type
            ),
        }
    }
}

/// A stored event of `aggregate_type`/`aggregate_id` at `version`, schema version 1, stamped
/// now: what a reaction or a projection is handed.
pub fn envelope(
    aggregate_type: &str,
    aggregate_id: &str,
    version: u64,
    event_type: &str,
    data: Value,
) -> EventEnvelope {
    event(
        &StreamId::new(aggregate_type, aggregate_id),
        version,
        event_type,
        data,
    )
}

/// `domain_event` of aggregate `A`'s `id` at `version`, as the command handler stores it (in
/// its type's current schema version).
///
/// # Panics
/// If `A::schema()` does not declare the event's type.
pub fn envelope_of<A: Aggregate>(id: &str, version: u64, domain_event: &A::Event) -> EventEnvelope {
    let event_type = domain_event.event_type();
    let Some(schema_version) = A::schema().current_version(event_type) else {
        panic!("{}'s schema does not declare `{event_type}`", A::TYPE);
    };
    let mut e = envelope(A::TYPE, id, version, event_type, domain_event.to_data());
    e.schema_version = schema_version;
    e
}
