//! Aggregates as pure decide/evolve functions. No I/O happens in here.

use crate::schema::EventSchema;
use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// How a domain refusal should be reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The aggregate does not exist (yet): HTTP 404.
    NotFound,
    /// A business rule refused the command: HTTP 422.
    Rule,
}

pub trait DomainError: std::error::Error + Send + Sync + 'static {
    /// Every code [`DomainError::code`] can return, for the API's documentation
    /// (`GET /openapi.json` lists them under the command route's 404 and 422).
    const CODES: &'static [&'static str] = &[];

    /// Stable machine-readable code, e.g. `insufficient_funds`.
    fn code(&self) -> &'static str;
    fn refusal(&self) -> Refusal {
        Refusal::Rule
    }
}

/// A domain event in its current schema version.
pub trait DomainEvent: Sized + Clone + Send + Sync + 'static {
    fn event_type(&self) -> &'static str;
    /// The event's data as a JSON object (without its type).
    fn to_data(&self) -> Value;
    /// Rebuilds the event from its type and (already upcast) data.
    fn from_data(event_type: &str, data: &Value) -> Result<Self, String>;
    /// The same from JSON text in the current schema version; domains override it to skip
    /// the intermediate `Value` on bulk replay.
    fn from_json(event_type: &str, json: &str) -> Result<Self, String> {
        let data: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Self::from_data(event_type, &data)
    }
}

/// An aggregate: its state is `Default` before the first event, `decide` turns a command into
/// events (or refuses), `evolve` folds one event into the state.
pub trait Aggregate:
    Default + Clone + Send + Sync + Serialize + DeserializeOwned + 'static
{
    /// The aggregate type, also the first segment of its HTTP routes (`/{TYPE}/...`).
    const TYPE: &'static str;
    /// Version of the serialized state; snapshots of another version are ignored.
    const STATE_VERSION: u32;

    /// What clients send, as JSON (`POST /{type}/{id}/commands`); its JSON Schema is the
    /// request body in `GET /openapi.json`.
    type Command: DeserializeOwned + Serialize + JsonSchema + Send + Sync + 'static;
    type Event: DomainEvent;
    type Error: DomainError;
    /// What clients read (`GET /{type}/{id}`); its JSON Schema is the answer's in the OpenAPI
    /// document.
    type View: Serialize + JsonSchema;

    /// The `type` tags of commands only the domain's reactions may issue: a client sending one
    /// gets 400 `invalid_command`, and the OpenAPI document leaves them out.
    const INTERNAL_COMMANDS: &'static [&'static str] = &[];

    /// Every event type with its current schema version and upcasters.
    fn schema() -> EventSchema;

    /// Checks the command's shape (400 on failure), independent of any state.
    fn validate(_command: &Self::Command) -> Result<(), String> {
        Ok(())
    }

    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    fn evolve(&mut self, event: &Self::Event);

    /// False until the aggregate's creating event has been applied.
    fn exists(&self) -> bool;

    /// What a client sees of this state.
    fn view(&self, id: &str, version: u64) -> Self::View;
}

/// Folds events into a state, starting from `state`.
pub fn fold<A: Aggregate>(mut state: A, events: &[A::Event]) -> A {
    for e in events {
        state.evolve(e);
    }
    state
}
