//! What a projection is: the trait, the state read model every aggregate type gets, and the fold
//! of one stored event into a document with the write that stores it.

use crate::aggregate::{Aggregate, DomainEvent};
use crate::envelope::EventEnvelope;
use crate::ports::DocWrite;
use crate::schema::{EventSchema, UpcastError};
use serde_json::Value;
use std::marker::PhantomData;

/// A read model with one document per aggregate. `apply` folds one event (already upcast to
/// the current schema) into the aggregate's document.
pub trait Projection: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// The aggregate type whose events this projection reads.
    fn aggregate_type(&self) -> &str;
    /// Top-level string fields of the document it can be looked up by.
    fn indexes(&self) -> &[&'static str] {
        &[]
    }
    fn apply(&self, doc: Option<&Value>, event: &EventEnvelope) -> Result<Value, String>;
    /// The JSON Schema of a document, for the API's documentation of `GET /{type}?field=...`
    /// (e.g. `generator.subschema_for::<MyView>()`); `None`: any JSON object.
    fn document_schema(
        &self,
        _generator: &mut schemars::SchemaGenerator,
    ) -> Option<schemars::Schema> {
        None
    }
}

/// The generic read model every aggregate type gets: its state, folded by `evolve`.
pub struct StateProjection<A> {
    name: String,
    _a: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Default for StateProjection<A> {
    fn default() -> Self {
        Self {
            name: state_projection_name(A::TYPE),
            _a: PhantomData,
        }
    }
}

pub fn state_projection_name(aggregate_type: &str) -> String {
    format!("{aggregate_type}_state")
}

impl<A: Aggregate> Projection for StateProjection<A> {
    fn name(&self) -> &str {
        &self.name
    }
    fn aggregate_type(&self) -> &str {
        A::TYPE
    }
    fn apply(&self, doc: Option<&Value>, event: &EventEnvelope) -> Result<Value, String> {
        let mut state: A = match doc {
            Some(v) => A::deserialize(v).map_err(|e| format!("stored state: {e}"))?,
            None => A::default(),
        };
        let e = A::Event::from_data(&event.event_type, &event.data)?;
        state.evolve(&e);
        serde_json::to_value(&state).map_err(|e| e.to_string())
    }
}

/// Folds one stored event into a projection's document: upcast to the current schema, then
/// `apply`. The one fold every runner uses, in-process or stream-driven.
pub fn fold_event(
    projection: &dyn Projection,
    schema: &EventSchema,
    doc: Option<&Value>,
    event: EventEnvelope,
) -> Result<Value, String> {
    let event = schema
        .upcast(event)
        .map_err(|e: UpcastError| e.to_string())?;
    projection.apply(doc, &event)
}

/// The write that stores `body` as the projection's document `key` at `version`, findable by
/// the projection's index fields.
pub fn doc_write(projection: &dyn Projection, key: String, version: u64, body: Value) -> DocWrite {
    DocWrite {
        index: index_values(projection.indexes(), &body),
        key,
        version,
        body,
    }
}

/// What a rebuild did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rebuilt {
    /// The generation reads now go to.
    pub generation: u64,
    /// The feed position an unfinished earlier rebuild had reached, when this one resumed it.
    pub resumed_from: Option<u64>,
}

pub fn index_values(fields: &[&'static str], body: &Value) -> Vec<(String, String)> {
    fields
        .iter()
        .filter_map(|f| match body.get(*f) {
            Some(Value::String(s)) => Some(((*f).to_owned(), s.clone())),
            _ => None,
        })
        .collect()
}
