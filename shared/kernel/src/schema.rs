//! Schema evolution: current versions per event type, and upcasters chained on read.

use crate::envelope::EventEnvelope;
use crate::personal::{PersonalFields, SubjectOf};
use serde_json::Value;
// Fx: these maps are probed once per event on replay, with short trusted keys.
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

/// Turns the data of one schema version into the next one (`from` -> `from + 1`).
pub type Upcaster = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

pub use crate::error::UpcastError;

/// The event types an aggregate knows, their current schema versions and the upcasters
/// that bring older stored versions up to date.
#[derive(Clone, Default)]
pub struct EventSchema {
    current: HashMap<String, u32>,
    upcasters: HashMap<(String, u32), Upcaster>,
    personal: HashMap<String, PersonalFields>,
}

impl EventSchema {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares an event type and the schema version new events are written with.
    pub fn event(mut self, event_type: &str, current_version: u32) -> Self {
        self.current.insert(event_type.to_owned(), current_version);
        self
    }

    /// Registers the step from `from_version` to `from_version + 1`.
    pub fn upcaster(
        mut self,
        event_type: &str,
        from_version: u32,
        f: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.upcasters
            .insert((event_type.to_owned(), from_version), Arc::new(f));
        self
    }

    /// Declares `fields` (top-level fields of the event's data) of `event_type` personal data
    /// of the subject `subject` names: they are encrypted with that subject's key before the
    /// event is stored, and read back as `null` (listed under `"erased"`) once the subject is
    /// forgotten (see [`crate::personal`]). In the domain's own event and state types they
    /// hold strings (the token), whatever their type in commands.
    pub fn personal(mut self, event_type: &str, subject: SubjectOf, fields: &[&str]) -> Self {
        self.personal.insert(
            event_type.to_owned(),
            PersonalFields {
                subject,
                fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            },
        );
        self
    }

    /// The personal fields of `event_type`, if it has any.
    pub fn personal_fields(&self, event_type: &str) -> Option<&PersonalFields> {
        self.personal.get(event_type)
    }

    /// Every event type with personal fields, and the fields.
    pub fn personal_data(&self) -> impl Iterator<Item = (&str, &PersonalFields)> + '_ {
        self.personal.iter().map(|(t, p)| (t.as_str(), p))
    }

    /// The declared event types.
    pub fn event_types(&self) -> impl Iterator<Item = &str> + '_ {
        self.current.keys().map(String::as_str)
    }

    pub fn current_version(&self, event_type: &str) -> Option<u32> {
        self.current.get(event_type).copied()
    }

    /// Brings a stored envelope to the current shape of its event type, or says why it can't.
    pub fn upcast(&self, mut env: EventEnvelope) -> Result<EventEnvelope, UpcastError> {
        let stream = || format!("{}/{}", env.aggregate_type, env.aggregate_id);
        let data = std::mem::take(&mut env.data);
        let (data, version) = self.upcast_data(
            &env.event_type,
            env.schema_version,
            data,
            stream,
            env.version,
        )?;
        env.data = data;
        env.schema_version = version;
        Ok(env)
    }

    /// The same for an event given by parts; `stream` and `version` only name it in errors.
    /// Returns the data and its (current) schema version.
    pub fn upcast_data(
        &self,
        event_type: &str,
        schema_version: u32,
        mut data: Value,
        stream: impl Fn() -> String,
        version: u64,
    ) -> Result<(Value, u32), UpcastError> {
        let Some(current) = self.current_version(event_type) else {
            return Err(UpcastError::UnknownEventType {
                event_type: event_type.to_owned(),
                stream: stream(),
                version,
            });
        };
        if schema_version > current {
            return Err(UpcastError::NewerSchemaVersion {
                event_type: event_type.to_owned(),
                found: schema_version,
                current,
                stream: stream(),
                version,
            });
        }
        let mut at = schema_version;
        while at < current {
            let step = self
                .upcasters
                .get(&(event_type.to_owned(), at))
                .ok_or_else(|| UpcastError::MissingUpcaster {
                    event_type: event_type.to_owned(),
                    from: at,
                })?;
            data = step(data).map_err(|reason| UpcastError::Failed {
                event_type: event_type.to_owned(),
                from: at,
                reason,
            })?;
            at += 1;
        }
        Ok((data, at))
    }
}

impl std::fmt::Debug for EventSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSchema")
            .field("current", &self.current)
            .field("upcasters", &self.upcasters.keys().collect::<Vec<_>>())
            .field("personal", &self.personal)
            .finish()
    }
}
