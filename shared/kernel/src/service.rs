//! The type-erased layer the HTTP router and the CLI talk to: registering an aggregate type
//! gives it commands, folded state, time travel, history and its read models, with no new
//! handler code.

use crate::aggregate::Aggregate;
use crate::command::{CommandHandler, CommandOptions, CommandOutcome, HandlerConfig, Origin};
use crate::domain::Domain;
use crate::envelope::{EventEnvelope, StreamId};
use crate::error::Error;
use crate::ports::{
    AnchorLog, BulkVerify, CopyAudit, EventFeed, EventLog, EventStore, KeyStore, ModelRef,
    Outbound, OutboundError, ReadModelStore, ReadRange, SnapshotStore, StoredHashes, StreamHeads,
};
use crate::projection::{state_projection_name, Projection, ProjectionRunner};
use crate::reaction::runner::ReactionStatus;
use crate::reaction::{CommandBus, ReactionKind, ReactionRunner};
use crate::schema::EventSchema;
use async_trait::async_trait;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::Instrument;

/// A state as a client sees it, with the version it reflects.
#[derive(Clone, Debug, PartialEq)]
pub struct StateView {
    pub version: u64,
    pub body: Value,
}

#[async_trait]
pub trait AggregateService: Send + Sync {
    fn aggregate_type(&self) -> &'static str;
    fn schema(&self) -> &Arc<EventSchema>;
    /// Parses, validates and runs a command given as JSON text.
    async fn execute(
        &self,
        id: &str,
        command: &[u8],
        opts: CommandOptions,
    ) -> Result<CommandOutcome, Error>;
    /// State folded from the store (snapshot + events), as of `version` when given.
    async fn state(&self, id: &str, version: Option<u64>) -> Result<StateView, Error>;
    /// The state read model (eventually consistent).
    async fn read_model(&self, id: &str) -> Result<StateView, Error>;
    /// Folds the aggregate up to `version` (its latest when `None`) and saves a snapshot of
    /// it; returns the version the snapshot is at, `None` if the aggregate has no events.
    async fn snapshot(&self, id: &str, version: Option<u64>) -> Result<Option<u64>, Error>;
    /// The JSON Schemas and codes the API's documentation gives for this aggregate type; the
    /// types they reference land in `generator`'s definitions.
    fn describe(&self, generator: &mut schemars::SchemaGenerator) -> AggregateApi;
    /// Events in version order; upcast to the current schema unless `raw`.
    async fn history(
        &self,
        id: &str,
        range: ReadRange,
        raw: bool,
    ) -> Result<Vec<EventEnvelope>, Error>;
}

/// What the API's documentation says of an aggregate type ([`AggregateService::describe`]).
#[derive(Clone, Debug)]
pub struct AggregateApi {
    /// The commands clients may send (internal ones left out), inline.
    pub command: schemars::Schema,
    /// What `GET /{type}/{id}` answers.
    pub view: schemars::Schema,
    /// The domain's refusal codes ([`crate::DomainError::CODES`]).
    pub refusals: &'static [&'static str],
    /// Commands only reactions send ([`Aggregate::INTERNAL_COMMANDS`]).
    pub internal: &'static [&'static str],
}

/// An aggregate type's service on the stores of a registry.
pub(crate) struct Service<A: Aggregate> {
    handler: CommandHandler<A, dyn EventStore, dyn SnapshotStore>,
    read_models: Arc<dyn ReadModelStore>,
    state_model: String,
}

impl<A: Aggregate> Service<A> {
    pub(crate) fn new(
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        read_models: Arc<dyn ReadModelStore>,
        keys: Option<Arc<dyn KeyStore>>,
        config: HandlerConfig,
    ) -> Self {
        Self {
            handler: CommandHandler::new(events, snapshots, config).with_keys(keys),
            read_models,
            state_model: state_projection_name(A::TYPE),
        }
    }
}

#[async_trait]
impl<A: Aggregate> AggregateService for Service<A> {
    fn aggregate_type(&self) -> &'static str {
        A::TYPE
    }

    fn schema(&self) -> &Arc<EventSchema> {
        self.handler.schema()
    }

    async fn execute(
        &self,
        id: &str,
        command: &[u8],
        opts: CommandOptions,
    ) -> Result<CommandOutcome, Error> {
        if !A::INTERNAL_COMMANDS.is_empty() && opts.origin == Origin::Client {
            refuse_internal::<A>(command)?;
        }
        let command = parse_command::<A>(command)?;
        // Debug level: at the default filter an enabled span per command (registry slot,
        // formatted fields) took about 7% of the async threads' time in `chronicle bench`.
        let span = tracing::debug_span!("command", aggregate_type = A::TYPE, aggregate_id = id);
        self.handler
            .handle(id, command, opts)
            .instrument(span)
            .await
    }

    async fn state(&self, id: &str, version: Option<u64>) -> Result<StateView, Error> {
        if version == Some(0) {
            return Err(Error::invalid(
                "invalid_version",
                "version must be 1 or more",
            ));
        }
        let (state, at) = self.handler.load(id, version).await?;
        if !state.exists() {
            return Err(not_found(A::TYPE, id));
        }
        if let Some(v) = version {
            if at < v {
                return Err(Error::not_found(
                    "version_not_found",
                    format!("{}/{id} has no version {v}: its latest is {at}", A::TYPE),
                ));
            }
        }
        Ok(StateView {
            version: at,
            body: view_json(&state, id, at)?,
        })
    }

    async fn read_model(&self, id: &str) -> Result<StateView, Error> {
        let doc = self
            .read_models
            .get(&ModelRef::active(&self.state_model), id)
            .await?
            .ok_or_else(|| not_found(A::TYPE, id))?;
        let state: A = match serde_json::from_value(doc.body) {
            Ok(state) => state,
            Err(e) => {
                // A document of an older state shape (the type changed, the read model was not
                // rebuilt yet): the answer is folded from the store instead of failing.
                tracing::warn!(
                    read_model = %self.state_model,
                    key = id,
                    error = %e,
                    "read-model document does not decode; folding from the store (rebuild the read model)"
                );
                return self.state(id, None).await;
            }
        };
        // Events that don't create it (a rejected first command recorded as an event) leave
        // a document of an aggregate that doesn't exist yet.
        if !state.exists() {
            return Err(not_found(A::TYPE, id));
        }
        Ok(StateView {
            version: doc.version,
            body: view_json(&state, id, doc.version)?,
        })
    }

    async fn snapshot(&self, id: &str, version: Option<u64>) -> Result<Option<u64>, Error> {
        self.handler.snapshot(id, version).await
    }

    fn describe(&self, generator: &mut schemars::SchemaGenerator) -> AggregateApi {
        let mut command = <A::Command as schemars::JsonSchema>::json_schema(generator);
        if !A::INTERNAL_COMMANDS.is_empty() {
            drop_variants(&mut command, A::INTERNAL_COMMANDS);
        }
        AggregateApi {
            command,
            view: generator.subschema_for::<A::View>(),
            refusals: <A::Error as crate::DomainError>::CODES,
            internal: A::INTERNAL_COMMANDS,
        }
    }

    async fn history(
        &self,
        id: &str,
        range: ReadRange,
        raw: bool,
    ) -> Result<Vec<EventEnvelope>, Error> {
        let stream = StreamId::new(A::TYPE, id);
        let events = self.handler.events().read_stream(&stream, range).await?;
        if raw {
            return Ok(events);
        }
        events
            .into_iter()
            .map(|e| self.handler.schema().upcast(e).map_err(Error::from))
            .collect()
    }
}

/// The `type` tag of one variant of a tagged enum's schema (an object whose `type` property is
/// a constant).
fn tag_of(variant: &Value) -> Option<&str> {
    let t = variant.pointer("/properties/type")?;
    t.get("const")
        .or_else(|| t.pointer("/enum/0"))
        .and_then(Value::as_str)
}

/// The tags of a tagged enum's schema (`oneOf`/`anyOf` of tagged objects); empty for any other.
pub(crate) fn command_tags(schema: &Value) -> Vec<String> {
    ["oneOf", "anyOf"]
        .iter()
        .filter_map(|k| schema.get(*k)?.as_array())
        .flatten()
        .filter_map(tag_of)
        .map(str::to_owned)
        .collect()
}

/// Leaves out of a tagged enum's schema the variants whose tag is in `tags`.
fn drop_variants(schema: &mut schemars::Schema, tags: &[&str]) {
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(variants)) = schema.get_mut(key) {
            variants.retain(|v| tag_of(v).is_none_or(|t| !tags.contains(&t)));
        }
    }
}

/// The typed command from its JSON. Straight into the type (not through a `Value`), so a
/// repeated key is an error rather than last-one-wins; a refused value is named by its path.
fn parse_command<A: Aggregate>(body: &[u8]) -> Result<A::Command, Error> {
    let refused = |e: serde_json::Error, path: Option<String>| match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            Error::invalid("malformed_json", format!("the body is not valid JSON: {e}"))
        }
        _ => Error::invalid(
            "invalid_command",
            match path.filter(|p| p != ".") {
                Some(p) => format!("`{p}`: {e}"),
                None => e.to_string(),
            },
        ),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let command: A::Command = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let mut path = Some(e.path().to_string()).filter(|p| p != ".");
        if path.is_none() {
            // Inside a tagged enum's variant serde keeps no path: find the refused value
            // by holding the body to the command's JSON Schema.
            path = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                let schema =
                    schemars::SchemaGenerator::default().into_root_schema_for::<A::Command>();
                misfit(schema.as_value(), schema.as_value(), &v, String::new())
            });
        }
        refused(e.into_inner(), path)
    })?;
    de.end().map_err(|e| refused(e, None))?;
    Ok(command)
}

/// The path of the first place `value` does not fit `schema` by JSON type, a required or an
/// unknown field (what serde refuses before any domain rule): `lines[2].quantity`. `root`
/// holds the `$defs` references point into.
fn misfit(root: &Value, schema: &Value, value: &Value, path: String) -> Option<String> {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => root.pointer(r.strip_prefix('#')?)?,
        None => schema,
    };
    for key in ["oneOf", "anyOf"] {
        if let Some(variants) = schema.get(key).and_then(Value::as_array) {
            let tag = value.get("type").and_then(Value::as_str);
            let variant = variants
                .iter()
                .find(|v| tag.is_some() && tag_of(v) == tag)?;
            return misfit(root, variant, value, path);
        }
    }
    let named = |field: &str| {
        if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(types) = schema.get("type") {
        let fits = |t: &str| match t {
            "string" => value.is_string(),
            "integer" => value.is_u64() || value.is_i64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            "null" => value.is_null(),
            _ => true,
        };
        let ok = match types {
            Value::String(t) => fits(t),
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(fits),
            _ => true,
        };
        let unsigned = schema
            .get("format")
            .and_then(Value::as_str)
            .is_some_and(|f| f.starts_with("uint"));
        if !ok || (unsigned && value.is_i64() && !value.is_u64()) {
            return Some(if path.is_empty() { ".".into() } else { path });
        }
    }
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !fields.contains_key(required) {
                    return Some(named(required));
                }
            }
            for (field, v) in fields {
                match properties.and_then(|p| p.get(field)) {
                    Some(s) => {
                        if let Some(p) = misfit(root, s, v, named(field)) {
                            return Some(p);
                        }
                    }
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return Some(named(field));
                    }
                    None => {}
                }
            }
            None
        }
        Value::Array(items) => {
            let item = schema.get("items")?;
            items
                .iter()
                .enumerate()
                .find_map(|(i, v)| misfit(root, item, v, format!("{path}[{i}]")))
        }
        _ => None,
    }
}

fn view_json<A: Aggregate>(state: &A, id: &str, version: u64) -> Result<Value, Error> {
    serde_json::to_value(state.view(id, version))
        .map_err(|e| Error::Decode(format!("view of {}/{id}: {e}", A::TYPE)))
}

/// 400 for a client's command whose `type` is one of the aggregate's internal commands.
fn refuse_internal<A: Aggregate>(body: &[u8]) -> Result<(), Error> {
    #[derive(serde::Deserialize)]
    struct Tagged<'a> {
        #[serde(rename = "type", borrow)]
        tag: Option<std::borrow::Cow<'a, str>>,
    }
    // Anything that doesn't parse here fails the typed parse after, with its own message.
    let Ok(Tagged { tag: Some(tag) }) = serde_json::from_slice::<Tagged>(body) else {
        return Ok(());
    };
    if A::INTERNAL_COMMANDS.contains(&tag.as_ref()) {
        return Err(Error::invalid(
            "invalid_command",
            format!(
                "`{tag}` is issued by the {} domain's own reactions, not by clients",
                A::TYPE
            ),
        ));
    }
    Ok(())
}

fn not_found(aggregate_type: &str, id: &str) -> Error {
    Error::not_found("not_found", format!("{aggregate_type}/{id} does not exist"))
}

/// What [`Chronicle::forget`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Forgotten {
    pub subject: String,
    /// When the subject was forgotten (the first time).
    pub forgotten_at: String,
    /// This call destroyed a live key (false: it was gone already, or the subject never had
    /// personal data stored).
    pub key_destroyed: bool,
    /// This call recorded the erasure (false: it was recorded already).
    pub recorded: bool,
    /// The erasure record's version (`_subjects/{subject}`).
    pub version: u64,
}

/// Everything registered: aggregate services, projections and the ports they run on.
#[derive(Clone)]
pub struct Chronicle {
    aggregates: BTreeMap<&'static str, Arc<dyn AggregateService>>,
    projections: Vec<Arc<dyn Projection>>,
    lists: BTreeMap<String, Arc<dyn Projection>>,
    reactions: Vec<Arc<dyn ReactionKind>>,
    /// The domain's outbound ports, by name.
    outbound: BTreeMap<String, Arc<dyn Outbound>>,
    read_models: Arc<dyn ReadModelStore>,
    /// The ordered feed projections follow. `None` where something else drives them
    /// (DynamoDB Streams on AWS): then there are no in-process runners.
    feed: Option<Arc<dyn EventFeed>>,
    /// The stores themselves, for audits across aggregate types (`verify`).
    events: Arc<dyn EventLog>,
    /// The store's one-pass check of every chain, where it has one ([`ChronicleBuilder::bulk_verify`]).
    bulk_verify: Option<Arc<dyn BulkVerify>>,
    /// Copies of events kept beside the store (an archive), checked with it.
    copies: Option<Arc<dyn CopyAudit>>,
    /// Where the store's heads are anchored, and how to read them ([`ChronicleBuilder::anchors`]).
    anchors: Option<Anchoring>,
    snapshots: Arc<dyn SnapshotStore>,
    /// The data subjects' keys ([`ChronicleBuilder::keys`]).
    keys: Option<Arc<dyn KeyStore>>,
    /// Projections this process is rebuilding in the background (admin route).
    rebuilding: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Why a background rebuild did not start.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StartRebuildError {
    #[error("no projection `{0}`")]
    Unknown(String),
    #[error("`{0}` is being rebuilt already")]
    Running(String),
    #[error("rebuilds replay the store's ordered feed, which this backend does not have (on AWS, projections follow the DynamoDB stream)")]
    NoFeed,
}

/// Where a registry's store is anchored: its heads, its stored hashes, the anchor log.
#[derive(Clone)]
struct Anchoring {
    heads: Arc<dyn StreamHeads>,
    hashes: Arc<dyn StoredHashes>,
    log: Arc<dyn AnchorLog>,
}

/// Adds `more` breaks to `breaks`, keeping for each stream the lower version.
fn merge_breaks(breaks: &mut Vec<crate::chain::ChainBreak>, more: Vec<crate::chain::ChainBreak>) {
    for b in more {
        match breaks
            .iter_mut()
            .find(|a| (&a.aggregate_type, &a.aggregate_id) == (&b.aggregate_type, &b.aggregate_id))
        {
            Some(a) if b.version < a.version => *a = b,
            Some(_) => {}
            None => breaks.push(b),
        }
    }
}

/// Takes a projection off the rebuilding set however its task ends.
struct RebuildGuard {
    set: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    name: String,
}

impl Drop for RebuildGuard {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.name);
    }
}

impl Chronicle {
    pub fn builder<E, S, R, F>(
        events: Arc<E>,
        snapshots: Arc<S>,
        read_models: Arc<R>,
        feed: Arc<F>,
        config: HandlerConfig,
    ) -> ChronicleBuilder
    where
        E: EventLog,
        S: SnapshotStore,
        R: ReadModelStore,
        F: EventFeed,
    {
        let mut builder = Self::builder_without_feed(events, snapshots, read_models, config);
        builder.inner.feed = Some(feed);
        builder
    }

    /// A registry whose projections are fed from outside (stream-driven functions).
    pub fn builder_without_feed<E, S, R>(
        events: Arc<E>,
        snapshots: Arc<S>,
        read_models: Arc<R>,
        config: HandlerConfig,
    ) -> ChronicleBuilder
    where
        E: EventLog,
        S: SnapshotStore,
        R: ReadModelStore,
    {
        ChronicleBuilder {
            inner: Chronicle {
                aggregates: BTreeMap::new(),
                projections: Vec::new(),
                lists: BTreeMap::new(),
                reactions: Vec::new(),
                outbound: BTreeMap::new(),
                read_models,
                feed: None,
                events: events.clone(),
                bulk_verify: None,
                copies: None,
                anchors: None,
                snapshots: snapshots.clone(),
                keys: None,
                rebuilding: Default::default(),
            },
            events,
            snapshots,
            config,
            domain: Domain::new(),
        }
    }

    pub fn aggregate(&self, aggregate_type: &str) -> Option<&Arc<dyn AggregateService>> {
        self.aggregates.get(aggregate_type)
    }

    pub fn aggregate_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.aggregates.keys().copied()
    }

    pub fn projections(&self) -> &[Arc<dyn Projection>] {
        &self.projections
    }

    pub fn reactions(&self) -> &[Arc<dyn ReactionKind>] {
        &self.reactions
    }

    /// A runner for the named reaction, following the feed with its own checkpoint and
    /// issuing its commands through this registry; `None` for an unknown reaction or a
    /// registry without a feed.
    pub fn reaction_runner(&self, reaction: &str) -> Option<ReactionRunner> {
        let r = self.reactions.iter().find(|r| r.name() == reaction)?;
        let registry = self.clone();
        Some(ReactionRunner::new(
            self.feed.clone()?,
            self.read_models.clone(),
            Arc::new(self.clone()),
            r.clone(),
            Arc::new(move |e| registry.upcast(e)),
        ))
    }

    /// Every reaction's state, checkpoint, lag and refused commands.
    pub async fn reaction_statuses(&self) -> Result<Vec<ReactionStatus>, Error> {
        let mut out = Vec::with_capacity(self.reactions.len());
        for r in &self.reactions {
            out.push(
                crate::reaction::runner::reaction_status(
                    self.read_models.as_ref(),
                    self.feed.as_deref(),
                    r.as_ref(),
                )
                .await?,
            );
        }
        Ok(out)
    }

    pub fn read_models(&self) -> &Arc<dyn ReadModelStore> {
        &self.read_models
    }

    pub fn feed(&self) -> Option<&Arc<dyn EventFeed>> {
        self.feed.as_ref()
    }

    /// The event store every registered aggregate type writes to.
    pub fn events(&self) -> &Arc<dyn EventLog> {
        &self.events
    }

    /// The list read model of `aggregate_type` (`GET /{type}?field=...`), if it has one.
    pub fn list_projection(&self, aggregate_type: &str) -> Option<&Arc<dyn Projection>> {
        self.lists.get(aggregate_type)
    }

    /// The projections that read `aggregate_type`'s events.
    pub fn projections_of<'a>(
        &'a self,
        aggregate_type: &'a str,
    ) -> impl Iterator<Item = &'a Arc<dyn Projection>> + 'a {
        self.projections
            .iter()
            .filter(move |p| p.aggregate_type() == aggregate_type)
    }

    /// A runner for the named projection, with the schema of its aggregate type; `None` for
    /// an unknown projection or a registry without a feed.
    pub fn runner(&self, projection: &str) -> Option<ProjectionRunner> {
        let p = self.projections.iter().find(|p| p.name() == projection)?;
        let schema = self.aggregates.get(p.aggregate_type())?.schema().clone();
        Some(ProjectionRunner::new(
            self.feed.clone()?,
            self.events.clone(),
            self.read_models.clone(),
            p.clone(),
            schema,
        ))
    }

    /// An event in its type's current schema: what publishers hand to other services. An event
    /// of an aggregate type this registry doesn't know is an error, never passed on as stored.
    pub fn upcast(&self, event: EventEnvelope) -> Result<EventEnvelope, Error> {
        match self.aggregates.get(event.aggregate_type.as_str()) {
            Some(svc) => Ok(svc.schema().upcast(event)?),
            None => Err(Error::Decode(format!(
                "{}/{} v{}: no aggregate type `{}` is registered",
                event.aggregate_type, event.aggregate_id, event.version, event.aggregate_type
            ))),
        }
    }

    /// Every projection's state, checkpoint, lag and last rebuild.
    pub async fn projection_statuses(&self) -> Result<Vec<crate::admin::ProjectionStatus>, Error> {
        let mut out = Vec::with_capacity(self.projections.len());
        for p in &self.projections {
            out.push(
                crate::admin::projection_status(
                    self.read_models.as_ref(),
                    self.feed.as_deref(),
                    p.name(),
                    p.aggregate_type(),
                )
                .await?,
            );
        }
        Ok(out)
    }

    /// Rebuilds a projection stream by stream from the event store, for registries without a
    /// feed (AWS); resumes an unfinished rebuild. `progress` gets (events, streams) done.
    pub async fn rebuild_by_streams(
        &self,
        projection: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<crate::projection::Rebuilt, Error> {
        let p = self
            .projections
            .iter()
            .find(|p| p.name() == projection)
            .ok_or_else(|| {
                Error::not_found(
                    "unknown_projection",
                    format!("no projection `{projection}`"),
                )
            })?;
        let svc = self.aggregates.get(p.aggregate_type()).ok_or_else(|| {
            Error::Decode(format!(
                "no aggregate type `{}` is registered",
                p.aggregate_type()
            ))
        })?;
        let job = crate::rebuild::StreamRebuild {
            events: self.events.as_ref(),
            store: self.read_models.as_ref(),
            projection: p.as_ref(),
            schema: svc.schema(),
            page: crate::rebuild::PAGE,
        };
        job.run(|d| progress(d.events, d.streams))
            .await
            .map_err(|e| match e {
                crate::projection::ProjectionError::Store(s) => Error::Store(s),
                other => Error::Decode(other.to_string()),
            })
    }

    /// Rebuilds a projection in a background task (resuming an unfinished rebuild); its
    /// progress shows in [`Self::projection_statuses`].
    pub fn start_rebuild(
        &self,
        projection: &str,
    ) -> Result<tokio::task::JoinHandle<()>, StartRebuildError> {
        if !self.projections.iter().any(|p| p.name() == projection) {
            return Err(StartRebuildError::Unknown(projection.to_owned()));
        }
        let runner = self.runner(projection).ok_or(StartRebuildError::NoFeed)?;
        {
            let mut set = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
            if !set.insert(projection.to_owned()) {
                return Err(StartRebuildError::Running(projection.to_owned()));
            }
        }
        let guard = RebuildGuard {
            set: self.rebuilding.clone(),
            name: projection.to_owned(),
        };
        Ok(tokio::spawn(async move {
            let _guard = guard;
            match runner.rebuild(|_, _| {}).await {
                Ok(r) => tracing::info!(
                    projection = runner.name(),
                    generation = r.generation,
                    resumed_from = r.resumed_from,
                    "rebuild finished; reads use the new generation"
                ),
                // The status document records it, with the event that failed.
                Err(e) => tracing::error!(projection = runner.name(), error = %e, "rebuild failed"),
            }
        }))
    }

    /// Recomputes one stream's hash chain, held to its latest snapshot's chain head; `Ok`
    /// holds the number of events verified, `Err` the first place it breaks.
    pub async fn verify(
        &self,
        stream: &StreamId,
    ) -> Result<Result<u64, crate::chain::ChainBreak>, Error> {
        let snap = self.snapshots.latest(stream, None).await?;
        // Copies (an archive) are checked too, and the lower break wins.
        let copy = match &self.copies {
            Some(c) => c.verify_stream_copies(stream).await?,
            None => None,
        };
        let chain =
            match crate::chain::verify_stream_against(&*self.events, stream, snap.as_ref()).await {
                Ok(r) => r,
                // History that can't be read whole (a damaged archive segment) is a break.
                Err(crate::ports::StoreError::Corrupt(why)) => Err(crate::chain::ChainBreak {
                    aggregate_type: stream.aggregate_type.clone(),
                    aggregate_id: stream.aggregate_id.clone(),
                    version: copy.as_ref().map_or(1, |b| b.version),
                    problem: why,
                }),
                Err(e) => return Err(e.into()),
            };
        Ok(match (chain, copy) {
            (Ok(_), Some(b)) => Err(b),
            (Err(a), Some(b)) if b.version < a.version => Err(b),
            (r, _) => r,
        })
    }

    /// Recomputes every stream's chain in the store: through the store's bulk path if it has
    /// one, else `concurrency` streams at a time.
    pub async fn verify_all(
        &self,
        concurrency: usize,
        progress: impl Fn(u64) + Send + Sync,
    ) -> Result<crate::chain::VerifyReport, Error> {
        // The store's own chains and its copies (an archive) at once: both are CPU-bound on
        // threads of their own.
        let progress = &progress;
        let own = async {
            if let Some(bulk) = &self.bulk_verify {
                return bulk.verify_all_chains(progress).await;
            }
            crate::chain::verify_all(&*self.events, Some(&*self.snapshots), concurrency, progress)
                .await
        };
        let copies = async {
            match &self.copies {
                Some(c) => c.verify_copies(&|_| {}).await,
                None => Ok(Vec::new()),
            }
        };
        let (own, copies) = futures::join!(own, copies);
        let mut report = own?;
        for b in copies? {
            match report.breaks.iter_mut().find(|a| {
                (&a.aggregate_type, &a.aggregate_id) == (&b.aggregate_type, &b.aggregate_id)
            }) {
                Some(a) if b.version < a.version => *a = b,
                Some(_) => {}
                None => report.breaks.push(b),
            }
        }
        if let Some(a) = &self.anchors {
            let anchored =
                crate::anchor::check(a.log.as_ref(), a.heads.as_ref(), a.hashes.as_ref()).await?;
            report.anchor = anchored.anchor.as_ref().map(|x| x.sequence);
            report.anchor_log = anchored.log_problems;
            merge_breaks(&mut report.breaks, anchored.breaks);
        }
        report.breaks.sort_by(|a, b| {
            (&a.aggregate_type, &a.aggregate_id).cmp(&(&b.aggregate_type, &b.aggregate_id))
        });
        Ok(report)
    }

    /// Anchors every stream's head now ([`crate::anchor::take`]); `None` where no anchor log
    /// is configured.
    pub async fn anchor(&self) -> Result<Option<crate::anchor::Anchor>, Error> {
        let Some(a) = &self.anchors else {
            return Ok(None);
        };
        Ok(Some(
            crate::anchor::take(a.heads.as_ref(), a.log.as_ref()).await?,
        ))
    }

    /// One stream's inclusion proof under the latest anchor ([`crate::anchor::proof`]).
    pub async fn anchor_proof(
        &self,
        stream: &StreamId,
    ) -> Result<Option<crate::anchor::Proof>, Error> {
        let Some(a) = &self.anchors else {
            return Ok(None);
        };
        Ok(crate::anchor::proof(a.log.as_ref(), stream).await?)
    }

    /// Whether an anchor log is configured.
    pub fn anchors_configured(&self) -> bool {
        self.anchors.is_some()
    }

    /// Opens the personal-field tokens in `value` (an answer about to leave: a state, events,
    /// a read model): the plaintext while the subject's key lives, `null` listed under
    /// `"erased"` once the subject is forgotten. Returns how many fields were erased.
    pub async fn reveal(&self, value: &mut Value) -> Result<usize, Error> {
        crate::personal::reveal(self.keys.as_deref(), value).await
    }

    /// Whether this registry holds personal data: a key store, and a domain declaring some.
    pub fn personal_data(&self) -> bool {
        self.keys.is_some() && self.aggregates.contains_key(crate::personal::SUBJECTS_TYPE)
    }

    /// Forgets a data subject: destroys its key (every copy of its personal fields, in events,
    /// snapshots, read models, archives and streams, can no longer be opened; nothing stored is
    /// changed, so every chain still verifies) and records the erasure as `SubjectForgotten` on
    /// `_subjects/{subject}`. Repeating it changes nothing and answers the same.
    pub async fn forget(&self, subject: &str) -> Result<Forgotten, Error> {
        crate::personal::validate_subject(subject)?;
        let (Some(keys), Some(record)) = (
            self.keys.as_ref(),
            self.aggregates.get(crate::personal::SUBJECTS_TYPE),
        ) else {
            return Err(Error::not_found(
                "no_personal_data",
                "this registry has no personal data to forget (no key store, or a domain that declares no personal fields)",
            ));
        };
        // The key first: the erasure that matters. A failure after it leaves the record to
        // a repeat, which finds the key gone and records it then.
        let forgetting = keys.forget(subject, crate::envelope::now()).await?;
        let command = serde_json::to_vec(&serde_json::json!({
            "type": "Forget",
            "forgotten_at": crate::envelope::format_timestamp(&forgetting.at),
        }))
        .map_err(|e| Error::Decode(e.to_string()))?;
        let outcome = record
            .execute(
                subject,
                &command,
                CommandOptions {
                    origin: Origin::Reaction,
                    ..CommandOptions::default()
                },
            )
            .await?;
        Ok(Forgotten {
            subject: subject.to_owned(),
            forgotten_at: crate::envelope::format_timestamp(&forgetting.at),
            key_destroyed: forgetting.destroyed,
            recorded: !outcome.result.events.is_empty(),
            version: outcome.result.version,
        })
    }

    /// A runner that publishes every event from the feed to `publisher`; `None` without a feed.
    pub fn publish_runner(
        &self,
        publisher: Arc<dyn crate::ports::Publisher>,
    ) -> Option<crate::publishing::PublishRunner> {
        let registry = self.clone();
        Some(crate::publishing::PublishRunner::new(
            self.feed.clone()?,
            self.read_models.clone(),
            publisher,
            Arc::new(move |e| registry.upcast(e)),
        ))
    }

    /// `GET /{aggregate_type}?{field}={value}`: documents of the type's list read model.
    pub async fn list(
        &self,
        aggregate_type: &str,
        field: &str,
        value: &str,
        limit: usize,
    ) -> Result<Vec<Value>, Error> {
        let p = self.lists.get(aggregate_type).ok_or_else(|| {
            Error::not_found(
                "no_list_model",
                format!("{aggregate_type} has no list read model"),
            )
        })?;
        if !p.indexes().contains(&field) {
            return Err(Error::invalid(
                "invalid_query",
                format!(
                    "{aggregate_type} can be listed by {} only",
                    p.indexes().join(", ")
                ),
            ));
        }
        let docs = self
            .read_models
            .find(&ModelRef::active(p.name()), field, value, limit)
            .await?;
        Ok(docs.into_iter().map(|d| d.body).collect())
    }
}

pub use crate::domain::RESERVED_AGGREGATE_TYPES;

#[async_trait]
impl CommandBus for Chronicle {
    async fn dispatch(
        &self,
        aggregate_type: &str,
        id: &str,
        command: &[u8],
        opts: CommandOptions,
    ) -> Result<CommandOutcome, Error> {
        let svc = self.aggregates.get(aggregate_type).ok_or_else(|| {
            Error::not_found(
                "unknown_aggregate_type",
                format!("no aggregate type `{aggregate_type}`"),
            )
        })?;
        crate::validate_id(id)?;
        svc.execute(id, command, opts).await
    }

    async fn call(
        &self,
        port: &str,
        key: &str,
        payload: &Value,
    ) -> Option<Result<(), OutboundError>> {
        let adapter = self.outbound.get(port)?;
        Some(adapter.call(key, payload).await)
    }
}

/// Builds a [`Chronicle`]: the stores first ([`Chronicle::builder`]), then the domain.
pub struct ChronicleBuilder {
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    config: HandlerConfig,
    domain: Domain,
    inner: Chronicle,
}

impl ChronicleBuilder {
    /// Registers everything `domain` declares (see [`Domain`]); may be called more than once.
    pub fn domain(mut self, domain: Domain) -> Self {
        self.domain = std::mem::take(&mut self.domain).with(domain);
        self
    }

    /// Registers one aggregate type: `domain(Domain::new().aggregate::<A>())`.
    pub fn aggregate<A: Aggregate>(self) -> Self {
        self.domain(Domain::new().aggregate::<A>())
    }

    /// The store's one-pass check of every chain, used by [`Chronicle::verify_all`] instead of
    /// the stream-by-stream walk (which finds the same breaks, slower).
    pub fn bulk_verify(mut self, bulk: Arc<dyn BulkVerify>) -> Self {
        self.inner.bulk_verify = Some(bulk);
        self
    }

    /// Copies of the store's events kept elsewhere (an archive), which `verify` checks too.
    pub fn copies(mut self, copies: Arc<dyn CopyAudit>) -> Self {
        self.inner.copies = Some(copies);
        self
    }

    /// The anchor log the store's heads are anchored to: `verify` holds the store to it,
    /// [`Chronicle::anchor`] adds to it.
    pub fn anchors(
        mut self,
        heads: Arc<dyn StreamHeads>,
        hashes: Arc<dyn StoredHashes>,
        log: Arc<dyn AnchorLog>,
    ) -> Self {
        self.inner.anchors = Some(Anchoring { heads, hashes, log });
        self
    }

    /// The key store personal fields are sealed with ([`crate::personal`]). A domain that
    /// declares personal data needs one: its commands carrying personal data fail without.
    pub fn keys(mut self, keys: Arc<dyn KeyStore>) -> Self {
        self.inner.keys = Some(keys);
        self
    }

    /// The registry.
    ///
    /// # Panics
    /// On a registration mistake in the domain ([`Domain::check`] says which).
    pub fn build(self) -> Chronicle {
        if let Err(why) = self.domain.check() {
            // A programming error in the domain's registration, found at start-up by any test.
            panic!("invalid domain registration: {why}");
        }
        let mut inner = self.inner;
        let mut kinds = self.domain.aggregates.clone();
        if self.domain.declares_personal_data() {
            // Where erasures are recorded.
            kinds.push(Arc::new(crate::domain::Kind::<
                crate::personal::subjects::Subject,
            >(std::marker::PhantomData)));
        }
        for kind in &kinds {
            let service = kind.service(
                self.events.clone(),
                self.snapshots.clone(),
                inner.read_models.clone(),
                inner.keys.clone(),
                self.config.clone(),
            );
            inner.aggregates.insert(kind.aggregate_type(), service);
            inner.projections.push(kind.state_projection());
        }
        for p in &self.domain.projections {
            if p.list {
                inner.lists.insert(
                    p.projection.aggregate_type().to_owned(),
                    p.projection.clone(),
                );
            }
            inner.projections.push(p.projection.clone());
        }
        inner.reactions = self.domain.reactions.clone();
        inner.outbound = self.domain.outbound.iter().cloned().collect();
        inner
    }
}
