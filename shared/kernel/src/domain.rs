//! A domain: what a team registers with Chronicle. Its aggregate types, its projections and its
//! reactions, gathered by one function of the team's crate and handed to the entry points (the
//! `chronicle` command line, the Lambda functions), which build the registry
//! ([`crate::Chronicle`]) on whichever stores they run on.
//!
//! ```ignore
//! pub fn domain() -> Domain {
//!     Domain::new()
//!         .aggregate::<Shipment>()
//!         .list(ShipmentsByCarrier)
//!         .reaction(Dispatching)
//! }
//! ```

use crate::aggregate::Aggregate;
use crate::command::HandlerConfig;
use crate::ports::{EventStore, KeyStore, Outbound, ReadModelStore, SnapshotStore};
use crate::projection::{state_projection_name, Projection, StateProjection};
use crate::reaction::{check_name, Reaction, ReactionKind, Typed};
use crate::schema::EventSchema;
use crate::service::{AggregateService, Service};
use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Arc;

/// Aggregate types whose routes would be shadowed by the API's fixed ones (`/audit/events`,
/// `/admin/...`, `/health`, `/openapi.json`): registering one is refused.
pub const RESERVED_AGGREGATE_TYPES: [&str; 4] = ["admin", "audit", "health", "openapi.json"];

/// One registered aggregate type, with its concrete type erased: it builds the type's command
/// service on the stores a registry runs on.
pub(crate) trait AggregateKind: Send + Sync + 'static {
    fn aggregate_type(&self) -> &'static str;
    fn service(
        &self,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        read_models: Arc<dyn ReadModelStore>,
        keys: Option<Arc<dyn KeyStore>>,
        config: HandlerConfig,
    ) -> Arc<dyn AggregateService>;
    /// The state read model every aggregate type gets.
    fn state_projection(&self) -> Arc<dyn Projection>;
    fn schema(&self) -> EventSchema;
    /// `INTERNAL_COMMANDS` that name no variant of the command type (when its schema is a
    /// tagged enum; otherwise nothing can be checked).
    fn unknown_internal_commands(&self) -> Vec<&'static str>;
}

pub(crate) struct Kind<A>(pub(crate) PhantomData<fn() -> A>);

impl<A: Aggregate> AggregateKind for Kind<A> {
    fn aggregate_type(&self) -> &'static str {
        A::TYPE
    }

    fn service(
        &self,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        read_models: Arc<dyn ReadModelStore>,
        keys: Option<Arc<dyn KeyStore>>,
        config: HandlerConfig,
    ) -> Arc<dyn AggregateService> {
        Arc::new(Service::<A>::new(
            events,
            snapshots,
            read_models,
            keys,
            config,
        ))
    }

    fn state_projection(&self) -> Arc<dyn Projection> {
        Arc::new(StateProjection::<A>::default())
    }

    fn schema(&self) -> EventSchema {
        A::schema()
    }

    fn unknown_internal_commands(&self) -> Vec<&'static str> {
        if A::INTERNAL_COMMANDS.is_empty() {
            return Vec::new();
        }
        let schema = schemars::SchemaGenerator::default().into_root_schema_for::<A::Command>();
        let tags = crate::service::command_tags(schema.as_value());
        if tags.is_empty() {
            return Vec::new();
        }
        A::INTERNAL_COMMANDS
            .iter()
            .filter(|t| !tags.iter().any(|k| k == *t))
            .copied()
            .collect()
    }
}

/// A projection as registered, and whether it serves `GET /{aggregate_type}?field=value`.
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) projection: Arc<dyn Projection>,
    pub(crate) list: bool,
}

/// Everything a team registers: aggregate types, projections, reactions. Cheap to clone.
///
/// Registration mistakes (a reserved or repeated aggregate type, two read models of one name,
/// a projection of a type nobody registered, two list read models for one type) are programming
/// errors: [`Domain::check`] names them, and building a registry from such a domain panics with
/// that message, so any test or the first start finds them.
#[derive(Clone, Default)]
pub struct Domain {
    pub(crate) aggregates: Vec<Arc<dyn AggregateKind>>,
    pub(crate) projections: Vec<Registered>,
    pub(crate) reactions: Vec<Arc<dyn ReactionKind>>,
    pub(crate) outbound: Vec<(String, Arc<dyn Outbound>)>,
}

impl Domain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an aggregate type: its commands (`POST /{type}/{id}/commands`), its folded
    /// state, time travel and history, and its state read model (`{type}_state`).
    pub fn aggregate<A: Aggregate>(mut self) -> Self {
        self.aggregates.push(Arc::new(Kind::<A>(PhantomData)));
        self
    }

    /// Adds a read model kept by `projection` (one document per aggregate).
    pub fn projection(mut self, projection: impl Projection) -> Self {
        self.projections.push(Registered {
            projection: Arc::new(projection),
            list: false,
        });
        self
    }

    /// Adds a read model that also serves `GET /{aggregate_type}?field=value`, for each of the
    /// projection's indexed fields (at most one such list per aggregate type).
    pub fn list(mut self, projection: impl Projection) -> Self {
        self.projections.push(Registered {
            projection: Arc::new(projection),
            list: true,
        });
        self
    }

    /// Adds a reaction: it gets the events it subscribes to, at least once, and issues commands
    /// (see [`Reaction`]).
    pub fn reaction(mut self, reaction: impl Reaction) -> Self {
        self.reactions.push(Arc::new(Typed::new(reaction)));
        self
    }

    /// Registers `port` as the outside service reactions call as `name`
    /// ([`crate::Dispatch::call`]).
    pub fn outbound(mut self, name: &str, port: impl Outbound) -> Self {
        self.outbound.push((name.to_owned(), Arc::new(port)));
        self
    }

    /// Everything `other` registers, after what this one does: how a binary serves several
    /// domains (`billing::domain().with(shipping::domain())`).
    pub fn with(mut self, other: Domain) -> Self {
        self.aggregates.extend(other.aggregates);
        self.projections.extend(other.projections);
        self.reactions.extend(other.reactions);
        self.outbound.extend(other.outbound);
        self
    }

    /// Whether any registered event type has personal fields.
    pub fn declares_personal_data(&self) -> bool {
        self.aggregates
            .iter()
            .any(|a| a.schema().personal_data().next().is_some())
    }

    /// The registered reactions' names.
    pub fn reaction_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.reactions.iter().map(|r| r.name())
    }

    /// The registered aggregate types, in registration order.
    pub fn aggregate_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.aggregates.iter().map(|a| a.aggregate_type())
    }

    /// Every read model name: the state read models, then the registered projections.
    pub fn read_model_names(&self) -> Vec<String> {
        self.aggregates
            .iter()
            .map(|a| state_projection_name(a.aggregate_type()))
            .chain(
                self.projections
                    .iter()
                    .map(|p| p.projection.name().to_owned()),
            )
            .collect()
    }

    /// The first registration mistake, if any (see the type's docs).
    pub fn check(&self) -> Result<(), String> {
        let mut types = BTreeSet::new();
        for a in &self.aggregates {
            let t = a.aggregate_type();
            if RESERVED_AGGREGATE_TYPES.contains(&t) {
                return Err(format!(
                    "aggregate type `{t}` is reserved: the HTTP API serves /{t} itself"
                ));
            }
            if t.starts_with('_') {
                return Err(format!(
                    "aggregate type `{t}`: names starting with `_` are Chronicle's own"
                ));
            }
            let schema = a.schema();
            for (event_type, personal) in schema.personal_data() {
                if schema.current_version(event_type).is_none() {
                    return Err(format!(
                        "aggregate type `{t}` declares personal fields of event `{event_type}`, which its schema does not declare"
                    ));
                }
                if personal.fields.is_empty() {
                    return Err(format!(
                        "aggregate type `{t}`: event `{event_type}` declares no personal fields"
                    ));
                }
                if let crate::personal::SubjectOf::Field(f) = &personal.subject {
                    if personal.fields.contains(f) {
                        return Err(format!(
                            "aggregate type `{t}`: event `{event_type}` names its subject by `{f}`, which is also one of its personal fields (the subject id is stored in clear)"
                        ));
                    }
                }
            }
            if let Err(e) = crate::validate_id(t) {
                return Err(format!(
                    "aggregate type `{t}` is not a valid path segment: {e}"
                ));
            }
            if !types.insert(t) {
                return Err(format!("aggregate type `{t}` is registered twice"));
            }
            if let Some(tag) = a.unknown_internal_commands().first() {
                return Err(format!(
                    "aggregate type `{t}`: internal command `{tag}` is no command type of it (INTERNAL_COMMANDS names the `type` tags)"
                ));
            }
        }
        let mut names = BTreeSet::new();
        for name in self.read_model_names() {
            if name.starts_with('_') {
                return Err(format!(
                    "read model `{name}`: names starting with `_` are Chronicle's own"
                ));
            }
            if !names.insert(name.clone()) {
                return Err(format!("read model `{name}` is registered twice"));
            }
        }
        for r in &self.reactions {
            let name = r.name();
            check_name(name)?;
            if !names.insert(name.to_owned()) {
                return Err(format!(
                    "reaction `{name}`: the name is taken by another reaction or a read model"
                ));
            }
            if r.subscriptions().is_empty() {
                return Err(format!("reaction `{name}` subscribes to no events"));
            }
            for (t, e) in r.subscriptions() {
                let Some(kind) = self.aggregates.iter().find(|a| a.aggregate_type() == t) else {
                    return Err(format!(
                        "reaction `{name}` subscribes to `{t}` events, but no aggregate type `{t}` is registered"
                    ));
                };
                if kind.schema().current_version(e).is_none() {
                    return Err(format!(
                        "reaction `{name}` subscribes to `{t}` event `{e}`, which `{t}`'s schema does not declare"
                    ));
                }
            }
        }
        let mut ports = BTreeSet::new();
        for (name, _) in &self.outbound {
            check_name(name).map_err(|e| format!("outbound port: {e}"))?;
            if !ports.insert(name.as_str()) {
                return Err(format!("outbound port `{name}` is registered twice"));
            }
        }
        let mut lists = BTreeSet::new();
        for p in &self.projections {
            let t = p.projection.aggregate_type();
            if !types.contains(t) {
                return Err(format!(
                    "projection `{}` reads `{t}` events, but no aggregate type `{t}` is registered",
                    p.projection.name()
                ));
            }
            if p.list && !lists.insert(t.to_owned()) {
                return Err(format!(
                    "aggregate type `{t}` has two list read models; register one with `list` and the other with `projection`"
                ));
            }
            if p.list && p.projection.indexes().is_empty() {
                return Err(format!(
                    "list read model `{}` has no indexed fields to list by",
                    p.projection.name()
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("aggregates", &self.aggregate_types().collect::<Vec<_>>())
            .field("read_models", &self.read_model_names())
            .field("reactions", &self.reaction_names().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{DomainError, DomainEvent};
    use crate::envelope::EventEnvelope;
    use crate::schema::EventSchema;
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    #[derive(Clone)]
    struct Happened;
    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl DomainError for Never {
        fn code(&self) -> &'static str {
            "never"
        }
    }
    impl DomainEvent for Happened {
        fn event_type(&self) -> &'static str {
            "Happened"
        }
        fn to_data(&self) -> Value {
            Value::Null
        }
        fn from_data(_: &str, _: &Value) -> Result<Self, String> {
            Ok(Happened)
        }
    }

    macro_rules! thing {
        ($name:ident, $type:expr) => {
            #[derive(Clone, Default, Serialize, Deserialize)]
            struct $name;
            impl Aggregate for $name {
                const TYPE: &'static str = $type;
                const STATE_VERSION: u32 = 1;
                type Command = Value;
                type Event = Happened;
                type Error = Never;
                type View = Value;
                fn schema() -> EventSchema {
                    EventSchema::new().event("Happened", 1)
                }
                fn decide(&self, _: &Value) -> Result<Vec<Happened>, Never> {
                    Ok(vec![Happened])
                }
                fn evolve(&mut self, _: &Happened) {}
                fn exists(&self) -> bool {
                    true
                }
                fn view(&self, _: &str, _: u64) -> Value {
                    Value::Null
                }
            }
        };
    }
    // Only their types are used: the check reads the command type's schema.
    #[allow(dead_code)]
    #[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(tag = "type")]
    enum Tagged {
        Go {},
        Stop {},
    }

    macro_rules! tagged {
        ($name:ident, $type:expr, $internal:expr) => {
            #[allow(dead_code)]
            #[derive(Clone, Default, Serialize, Deserialize)]
            struct $name;
            impl Aggregate for $name {
                const TYPE: &'static str = $type;
                const STATE_VERSION: u32 = 1;
                const INTERNAL_COMMANDS: &'static [&'static str] = $internal;
                type Command = Tagged;
                type Event = Happened;
                type Error = Never;
                type View = Value;
                fn schema() -> EventSchema {
                    EventSchema::new().event("Happened", 1)
                }
                fn decide(&self, _: &Tagged) -> Result<Vec<Happened>, Never> {
                    Ok(vec![Happened])
                }
                fn evolve(&mut self, _: &Happened) {}
                fn exists(&self) -> bool {
                    true
                }
                fn view(&self, _: &str, _: u64) -> Value {
                    Value::Null
                }
            }
        };
    }
    tagged!(Stops, "stops", &["Stop"]);
    tagged!(Typo, "typos", &["Stpo"]);
    thing!(Things, "things");
    thing!(Audit, "audit");
    thing!(OpenApi, "openapi.json");
    thing!(Spaced, "a b");

    struct ByName(&'static str, &'static str, bool);
    impl Projection for ByName {
        fn name(&self) -> &str {
            self.0
        }
        fn aggregate_type(&self) -> &str {
            self.1
        }
        fn indexes(&self) -> &[&'static str] {
            if self.2 {
                &["name"]
            } else {
                &[]
            }
        }
        fn apply(&self, _: Option<&Value>, _: &EventEnvelope) -> Result<Value, String> {
            Ok(Value::Null)
        }
    }

    fn refused(domain: Domain, why: &str) {
        let err = domain.check().expect_err(why);
        assert!(err.contains(why), "{err:?} should say {why:?}");
    }

    #[test]
    fn registration_mistakes_are_named() {
        let things = || Domain::new().aggregate::<Things>();
        assert_eq!(
            things().list(ByName("by_name", "things", true)).check(),
            Ok(())
        );
        refused(Domain::new().aggregate::<Audit>(), "reserved");
        refused(Domain::new().aggregate::<OpenApi>(), "reserved");
        refused(
            Domain::new().aggregate::<Spaced>(),
            "not a valid path segment",
        );
        refused(things().with(things()), "registered twice");
        refused(
            things().projection(ByName("things_state", "things", false)),
            "`things_state` is registered twice",
        );
        refused(
            things().projection(ByName("_x", "things", false)),
            "Chronicle's own",
        );
        refused(
            things().projection(ByName("gadgets_x", "gadgets", false)),
            "no aggregate type `gadgets`",
        );
        refused(
            things()
                .list(ByName("a", "things", true))
                .list(ByName("b", "things", true)),
            "two list read models",
        );
        refused(
            things().list(ByName("a", "things", false)),
            "no indexed fields",
        );
    }
}
