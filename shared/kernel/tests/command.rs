//! `CommandHandler` against in-memory event and snapshot stores written here to the letter
//! of the port docs, with a tiny counter aggregate (the kernel can't see the accounts domain).

use async_trait::async_trait;
use chronicle_kernel::envelope;
use chronicle_kernel::recorded_order;
use chronicle_kernel::{
    Aggregate, AppendError, AppendRequest, CommandHandler, CommandOptions, CommandOutcome,
    CommandResult, DomainError, DomainEvent, Error, EventEnvelope, EventSchema, EventStore,
    HandlerConfig, IdempotencyRecord, Metadata, ReadRange, RecordedFeed, RecordedPage, Refusal,
    Snapshot, SnapshotStore, StoreError, StreamId, StreamListing, StreamPage, UpcastError,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

// =============================================================================================
// A counter aggregate
// =============================================================================================

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counter {
    created: bool,
    value: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type")]
enum CounterCommand {
    Create,
    Add {
        by: i64,
    },
    /// `n` events `Added { by: 1 }` from one command.
    Burst {
        n: u32,
    },
    /// Accepted, changes nothing: no events.
    Touch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum CounterEvent {
    Created,
    Added { by: i64 },
}

const CREATED: &str = "CounterCreated";
/// Schema v1 was `{"amount": n}`, v2 (current) is `{"by": n}`.
const ADDED: &str = "CounterAdded";

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> &'static str {
        match self {
            CounterEvent::Created => CREATED,
            CounterEvent::Added { .. } => ADDED,
        }
    }
    fn to_data(&self) -> Value {
        match self {
            CounterEvent::Created => json!({}),
            CounterEvent::Added { by } => json!({ "by": by }),
        }
    }
    fn from_data(event_type: &str, data: &Value) -> Result<Self, String> {
        match event_type {
            CREATED => Ok(CounterEvent::Created),
            ADDED => data["by"]
                .as_i64()
                .map(|by| CounterEvent::Added { by })
                .ok_or_else(|| format!("no integer `by` in {data}")),
            other => Err(format!("unknown counter event `{other}`")),
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum CounterError {
    #[error("no such counter")]
    NotCreated,
    #[error("the counter exists already")]
    AlreadyCreated,
}

impl DomainError for CounterError {
    fn code(&self) -> &'static str {
        match self {
            CounterError::NotCreated => "counter_not_found",
            CounterError::AlreadyCreated => "counter_exists",
        }
    }
    fn refusal(&self) -> Refusal {
        match self {
            CounterError::NotCreated => Refusal::NotFound,
            CounterError::AlreadyCreated => Refusal::Rule,
        }
    }
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counters";
    const STATE_VERSION: u32 = 1;
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;
    type View = Value;

    fn schema() -> EventSchema {
        EventSchema::new()
            .event(CREATED, 1)
            .event(ADDED, 2)
            .upcaster(ADDED, 1, |data| {
                let by = data["amount"].as_i64().ok_or("v1 has no `amount`")?;
                Ok(json!({ "by": by }))
            })
    }

    fn validate(command: &CounterCommand) -> Result<(), String> {
        match command {
            CounterCommand::Add { by: 0 } => Err("adding 0 changes nothing".into()),
            CounterCommand::Burst { n: 0 } => Err("a burst has at least one event".into()),
            _ => Ok(()),
        }
    }

    fn decide(&self, command: &CounterCommand) -> Result<Vec<CounterEvent>, CounterError> {
        match command {
            CounterCommand::Create if self.created => Err(CounterError::AlreadyCreated),
            CounterCommand::Create => Ok(vec![CounterEvent::Created]),
            _ if !self.created => Err(CounterError::NotCreated),
            CounterCommand::Add { by } => Ok(vec![CounterEvent::Added { by: *by }]),
            CounterCommand::Burst { n } => {
                Ok((0..*n).map(|_| CounterEvent::Added { by: 1 }).collect())
            }
            CounterCommand::Touch => Ok(vec![]),
        }
    }

    fn evolve(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::Created => self.created = true,
            CounterEvent::Added { by } => self.value += by,
        }
    }

    fn exists(&self) -> bool {
        self.created
    }

    fn view(&self, id: &str, version: u64) -> Value {
        json!({"id": id, "value": self.value, "version": version})
    }
}

fn counter(value: i64) -> Counter {
    Counter {
        created: true,
        value,
    }
}

// =============================================================================================
// An in-memory event store
// =============================================================================================

/// What an append does after its hook ran.
enum Then {
    /// The normal checks and commit.
    Proceed,
    /// Fails with a backend error, committing nothing.
    Fail,
    /// Commits, then reports a backend error (the acknowledgement was lost).
    CommitThenFail,
}

type Hook = Box<dyn FnOnce(&mut Inner) -> Then + Send>;

#[derive(Default)]
struct Inner {
    streams: HashMap<StreamId, Vec<EventEnvelope>>,
    idempotency: HashMap<String, IdempotencyRecord>,
    /// Every append request: (expected version, event versions, idempotency key).
    appends: Vec<(u64, Vec<u64>, Option<String>)>,
    /// Appends that committed.
    committed: usize,
    /// Every read: (stream, range).
    reads: Vec<(StreamId, ReadRange)>,
    /// Run one each by the next appends, before their checks: other writers, failures.
    hooks: VecDeque<Hook>,
    /// The next read of this key finds its record expired (it expired just before the read).
    expire_before_read: Option<String>,
}

impl Inner {
    fn version(&self, stream: &StreamId) -> u64 {
        self.streams
            .get(stream)
            .and_then(|s| s.last())
            .map_or(0, |e| e.version)
    }

    /// Another writer commits an `Added { by }` at the stream's next version.
    fn foreign_add(&mut self, id: &str, by: i64) {
        let stream = StreamId::new(Counter::TYPE, id);
        let version = self.version(&stream) + 1;
        let env = stored(id, version, ADDED, 2, json!({ "by": by }));
        self.streams.entry(stream).or_default().push(env);
    }
}

#[derive(Default)]
struct MemEvents {
    inner: Mutex<Inner>,
}

impl MemEvents {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }
    fn stream(&self, id: &str) -> Vec<EventEnvelope> {
        self.lock()
            .streams
            .get(&StreamId::new(Counter::TYPE, id))
            .cloned()
            .unwrap_or_default()
    }
    fn versions(&self, id: &str) -> Vec<u64> {
        self.stream(id).iter().map(|e| e.version).collect()
    }
    fn append_calls(&self) -> usize {
        self.lock().appends.len()
    }
    fn committed(&self) -> usize {
        self.lock().committed
    }
    /// Stores an envelope as is, behind every handler's back (no checks at all).
    fn inject(&self, env: EventEnvelope) {
        self.lock()
            .streams
            .entry(env.stream())
            .or_default()
            .push(env);
    }
    fn foreign_add(&self, id: &str, by: i64) {
        self.lock().foreign_add(id, by);
    }
    fn hook(&self, hook: impl FnOnce(&mut Inner) -> Then + Send + 'static) {
        self.lock().hooks.push_back(Box::new(hook));
    }
    fn take_reads(&self) -> Vec<(u64, Option<u64>)> {
        std::mem::take(&mut self.lock().reads)
            .into_iter()
            .map(|(_, r)| (r.from_version, r.to_version))
            .collect()
    }
}

#[async_trait]
impl EventStore for MemEvents {
    async fn append(&self, request: &AppendRequest) -> Result<(), AppendError> {
        let request = request.clone();
        let mut inner = self.lock();
        inner.appends.push((
            request.expected_version,
            request.events.iter().map(|e| e.version).collect(),
            request.idempotency.as_ref().map(|r| r.key.clone()),
        ));
        let then = match inner.hooks.pop_front() {
            Some(hook) => hook(&mut inner),
            None => Then::Proceed,
        };
        if matches!(then, Then::Fail) {
            return Err(StoreError::Backend("injected failure".into()).into());
        }
        // "taken while a stored record under it is live at this record's `recorded_at`"
        if let Some(record) = &request.idempotency {
            let taken = inner.idempotency.get(&record.key);
            if taken.is_some_and(|t| t.is_live(record.recorded_at)) {
                return Err(AppendError::DuplicateIdempotencyKey(record.key.clone()));
            }
        }
        // "appended atomically iff the stream is at `expected_version`"
        let actual = inner.version(&request.stream);
        if actual != request.expected_version {
            return Err(AppendError::Conflict {
                stream: request.stream.to_string(),
                expected: request.expected_version,
                actual,
            });
        }
        // "Versions `expected_version + 1 ..`, in order."
        for (i, e) in request.events.iter().enumerate() {
            if e.stream() != request.stream || e.version != request.expected_version + 1 + i as u64
            {
                return Err(StoreError::Invalid(format!(
                    "event {i} is {} v{}, not {} v{}",
                    e.stream(),
                    e.version,
                    request.stream,
                    request.expected_version + 1 + i as u64
                ))
                .into());
            }
            if !e.data.is_object() {
                return Err(StoreError::Invalid("event data must be an object".into()).into());
            }
        }
        if let Some(record) = &request.idempotency {
            if record.stream != request.stream {
                return Err(
                    StoreError::Invalid("idempotency record of another stream".into()).into(),
                );
            }
        }
        inner
            .streams
            .entry(request.stream.clone())
            .or_default()
            .extend(request.events);
        if let Some(record) = request.idempotency {
            inner.idempotency.insert(record.key.clone(), record);
        }
        inner.committed += 1;
        match then {
            Then::CommitThenFail => Err(StoreError::Backend("acknowledgement lost".into()).into()),
            _ => Ok(()),
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: ReadRange,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let mut inner = self.lock();
        inner.reads.push((stream.clone(), range));
        let events = inner.streams.get(stream).cloned().unwrap_or_default();
        Ok(events
            .into_iter()
            .filter(|e| e.version >= range.from_version)
            .filter(|e| range.to_version.is_none_or(|to| e.version <= to))
            .take(range.limit.unwrap_or(usize::MAX))
            .collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        Ok(self.lock().version(stream))
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        // "never returns" an expired record.
        let now = Utc::now();
        let mut inner = self.lock();
        if inner.expire_before_read.as_deref() == Some(key) {
            inner.expire_before_read = None;
            if let Some(r) = inner.idempotency.get_mut(key) {
                r.expires_at = now - chrono::Duration::seconds(1);
            }
        }
        Ok(inner
            .idempotency
            .get(key)
            .filter(|r| r.is_live(now))
            .cloned())
    }
}

#[async_trait]
impl StreamListing for MemEvents {
    async fn list_streams(
        &self,
        _cursor: Option<String>,
        _limit: usize,
    ) -> Result<StreamPage, StoreError> {
        Ok(StreamPage {
            streams: self.lock().streams.keys().cloned().collect(),
            next: None,
        })
    }
}

#[async_trait]
impl RecordedFeed for MemEvents {
    async fn read_recorded(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<String>,
        limit: usize,
    ) -> Result<RecordedPage, StoreError> {
        // "A malformed `after` or a `limit` of 0 is `StoreError::Invalid`."
        if limit == 0 {
            return Err(StoreError::Invalid("limit 0".into()));
        }
        type Key = (DateTime<Utc>, String, String, u64);
        let key = |e: &EventEnvelope| -> Key {
            (
                e.recorded_at,
                e.aggregate_type.clone(),
                e.aggregate_id.clone(),
                e.version,
            )
        };
        let after: Option<Key> = after
            .map(|c| serde_json::from_str(&c))
            .transpose()
            .map_err(|e| StoreError::Invalid(format!("cursor: {e}")))?;
        let mut events: Vec<EventEnvelope> = self
            .lock()
            .streams
            .values()
            .flatten()
            .filter(|e| e.recorded_at >= from && e.recorded_at <= to)
            .filter(|e| after.as_ref().is_none_or(|a| key(e) > *a))
            .cloned()
            .collect();
        events.sort_by(recorded_order);
        let next = if events.len() > limit {
            events.truncate(limit);
            events
                .last()
                .map(|e| serde_json::to_string(&key(e)).expect("a key serialises"))
        } else {
            None
        };
        Ok(RecordedPage { events, next })
    }
}

/// A stored envelope of `counters/{id}`, as another writer would store it.
fn stored(
    id: &str,
    version: u64,
    event_type: &str,
    schema_version: u32,
    data: Value,
) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::now_v7(),
        aggregate_type: Counter::TYPE.into(),
        aggregate_id: id.into(),
        version,
        event_type: event_type.into(),
        schema_version,
        data,
        metadata: Metadata::default(),
        recorded_at: envelope::now(),
        hash: String::new(),
    }
}

// =============================================================================================
// An in-memory snapshot store
// =============================================================================================

#[derive(Default)]
struct MemSnapshots {
    saved: Mutex<Vec<Snapshot>>,
}

impl MemSnapshots {
    fn all(&self) -> Vec<Snapshot> {
        self.saved.lock().unwrap().clone()
    }
    fn versions(&self) -> Vec<u64> {
        self.all().iter().map(|s| s.version).collect()
    }
}

#[async_trait]
impl SnapshotStore for MemSnapshots {
    async fn latest(
        &self,
        stream: &StreamId,
        max_version: Option<u64>,
    ) -> Result<Option<Snapshot>, StoreError> {
        Ok(self
            .saved
            .lock()
            .unwrap()
            .iter()
            .filter(|s| &s.stream == stream)
            .filter(|s| max_version.is_none_or(|max| s.version <= max))
            .max_by_key(|s| s.version)
            .cloned())
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut saved = self.saved.lock().unwrap();
        // One snapshot per (stream, version): a newer save replaces it.
        saved.retain(|s| !(s.stream == snapshot.stream && s.version == snapshot.version));
        saved.push(snapshot);
        Ok(())
    }
}

// =============================================================================================
// Fixture
// =============================================================================================

type Handler = CommandHandler<Counter, MemEvents, MemSnapshots>;

struct Fixture {
    events: Arc<MemEvents>,
    snapshots: Arc<MemSnapshots>,
    handler: Handler,
}

fn config() -> HandlerConfig {
    HandlerConfig {
        snapshot_every: 0,
        ..HandlerConfig::default()
    }
}

impl Fixture {
    fn new(config: HandlerConfig) -> Self {
        let events = Arc::new(MemEvents::default());
        let snapshots = Arc::new(MemSnapshots::default());
        let handler = Handler::new(events.clone(), snapshots.clone(), config);
        Self {
            events,
            snapshots,
            handler,
        }
    }

    /// Another handler (another process) on the same stores, with its own cache.
    fn other_process(&self, config: HandlerConfig) -> Handler {
        Handler::new(self.events.clone(), self.snapshots.clone(), config)
    }

    async fn run(&self, id: &str, command: CounterCommand) -> Result<CommandOutcome, Error> {
        self.handler
            .handle(id, command, CommandOptions::default())
            .await
    }

    async fn run_with(
        &self,
        id: &str,
        command: CounterCommand,
        opts: CommandOptions,
    ) -> Result<CommandOutcome, Error> {
        self.handler.handle(id, command, opts).await
    }

    async fn ok(&self, id: &str, command: CounterCommand) -> CommandResult {
        let outcome = self.run(id, command).await.expect("command accepted");
        assert!(!outcome.replayed);
        outcome.result
    }
}

fn add(by: i64) -> CounterCommand {
    CounterCommand::Add { by }
}

fn expecting(version: u64) -> CommandOptions {
    CommandOptions {
        expected_version: Some(version),
        ..CommandOptions::default()
    }
}

fn keyed(key: &str) -> CommandOptions {
    CommandOptions {
        idempotency_key: Some(key.into()),
        ..CommandOptions::default()
    }
}

fn conflict(err: Error) -> (String, u64, u64) {
    match err {
        Error::Conflict {
            stream,
            expected,
            actual,
        } => (stream, expected, actual),
        other => panic!("expected a version conflict, got {other:?}"),
    }
}

// =============================================================================================
// Appending
// =============================================================================================

#[tokio::test]
async fn a_command_appends_its_events_with_versions_and_metadata() {
    let f = Fixture::new(config());
    let created = f.ok("c1", CounterCommand::Create).await;
    assert_eq!(created.aggregate_id, "c1");
    assert_eq!(created.version, 1);
    assert_eq!(created.events.len(), 1);
    let e = &created.events[0];
    assert_eq!(
        (
            e.aggregate_type.as_str(),
            e.aggregate_id.as_str(),
            e.version
        ),
        ("counters", "c1", 1)
    );
    assert_eq!((e.event_type.as_str(), e.schema_version), (CREATED, 1));
    assert_eq!(e.data, json!({}));
    let command_id = e.metadata.command_id.expect("a command id");
    // Without a correlation id given, there is none, or the command is its own correlation.
    let own = command_id.to_string();
    assert!(
        e.metadata
            .correlation_id
            .as_deref()
            .is_none_or(|c| c == own),
        "{:?}",
        e.metadata.correlation_id
    );
    assert_eq!(e.metadata.causation_id, None);
    assert_eq!(e.metadata.idempotency_key, None);

    let opts = CommandOptions {
        correlation_id: Some("corr-7".into()),
        causation_id: Some("cause-3".into()),
        idempotency_key: Some("burst-1".into()),
        ..CommandOptions::default()
    };
    let burst = f
        .run_with("c1", CounterCommand::Burst { n: 3 }, opts)
        .await
        .unwrap();
    assert!(!burst.replayed);
    let burst = burst.result;
    assert_eq!(burst.version, 4);
    assert_eq!(
        burst.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    let first = &burst.events[0];
    let burst_command = first.metadata.command_id.expect("a command id");
    assert_ne!(burst_command, command_id, "each command has its own id");
    for e in &burst.events {
        assert_eq!((e.event_type.as_str(), e.schema_version), (ADDED, 2));
        assert_eq!(e.data, json!({"by": 1}));
        assert_eq!(
            e.metadata,
            Metadata {
                command_id: Some(burst_command),
                correlation_id: Some("corr-7".into()),
                causation_id: Some("cause-3".into()),
                idempotency_key: Some("burst-1".into()),
            }
        );
        assert_eq!(e.recorded_at, first.recorded_at, "one command, one time");
    }
    let mut ids: Vec<Uuid> = burst.events.iter().map(|e| e.event_id).collect();
    ids.push(created.events[0].event_id);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "event ids are unique");

    // Exactly these events are stored, in one append per command.
    let mut all = created.events.clone();
    all.extend(burst.events.clone());
    assert_eq!(f.events.stream("c1"), all);
    assert_eq!(
        f.events.lock().appends,
        [
            (0, vec![1], None),
            (1, vec![2, 3, 4], Some("burst-1".to_string()))
        ]
    );
    assert_eq!(f.handler.load("c1", None).await.unwrap(), (counter(3), 4));
}

#[tokio::test]
async fn streams_are_per_aggregate_id() {
    let f = Fixture::new(config());
    f.ok("a", CounterCommand::Create).await;
    f.ok("b", CounterCommand::Create).await;
    assert_eq!(f.ok("a", add(5)).await.version, 2);
    assert_eq!(f.ok("b", add(7)).await.version, 2);
    assert_eq!(f.handler.load("a", None).await.unwrap(), (counter(5), 2));
    assert_eq!(f.handler.load("b", None).await.unwrap(), (counter(7), 2));
    assert_eq!(
        f.handler.load("c", None).await.unwrap(),
        (Counter::default(), 0)
    );
}

#[tokio::test]
async fn invalid_commands_are_refused_before_anything_is_read_or_written() {
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    f.events.take_reads();
    let err = f.run_with("c1", add(0), keyed("k0")).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { code: "invalid_command", message } if message.contains("0")),
        "{err:?}"
    );
    assert_eq!(f.events.append_calls(), 1);
    assert!(f.events.take_reads().is_empty());
}

#[tokio::test]
async fn domain_refusals_keep_their_code_and_kind() {
    let f = Fixture::new(config());
    let err = f.run("nobody", add(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                code: "counter_not_found",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "counter_not_found");
    f.ok("c1", CounterCommand::Create).await;
    let err = f.run("c1", CounterCommand::Create).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rejected {
                code: "counter_exists",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "the counter exists already");
    assert_eq!(f.events.versions("c1"), [1]);
    assert_eq!(f.events.append_calls(), 1);
}

#[tokio::test]
async fn a_command_without_events_appends_nothing() {
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    let outcome = f
        .run_with("c1", CounterCommand::Touch, keyed("touch-1"))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        CommandOutcome {
            result: CommandResult {
                aggregate_id: "c1".into(),
                version: 1,
                events: vec![],
            },
            replayed: false,
        }
    );
    assert_eq!(f.events.append_calls(), 1);
    assert!(f.events.lock().idempotency.is_empty());
}

#[tokio::test]
async fn too_many_events_for_one_command_are_refused() {
    let f = Fixture::new(HandlerConfig {
        max_events_per_command: 3,
        ..config()
    });
    f.ok("c1", CounterCommand::Create).await;
    let err = f
        .run("c1", CounterCommand::Burst { n: 4 })
        .await
        .unwrap_err();
    match &err {
        Error::Rejected { code, message } => {
            assert_eq!(*code, "too_many_events");
            assert!(message.contains('4') && message.contains('3'), "{message}");
        }
        other => panic!("expected too_many_events, got {other:?}"),
    }
    assert_eq!(f.events.versions("c1"), [1], "never split, never partial");
    assert_eq!(f.events.append_calls(), 1);
    // Exactly the maximum fits.
    assert_eq!(f.ok("c1", CounterCommand::Burst { n: 3 }).await.version, 4);
    assert_eq!(f.events.versions("c1"), [1, 2, 3, 4]);
}

// =============================================================================================
// Idempotency
// =============================================================================================

#[tokio::test]
async fn an_idempotent_repeat_returns_the_same_result_and_appends_nothing() {
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    let first = f.run_with("c1", add(5), keyed("pay-1")).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.result.version, 2);

    // The record holds the result under the key, for this command on this stream.
    let record = f.events.lock().idempotency.get("pay-1").cloned().unwrap();
    assert_eq!(record.key, "pay-1");
    assert_eq!(record.stream, StreamId::new("counters", "c1"));
    assert_eq!(
        record.fingerprint,
        Handler::fingerprint("c1", &add(5)).unwrap()
    );
    assert_eq!(
        record.response,
        serde_json::to_value(&first.result).unwrap()
    );

    let appends = f.events.append_calls();
    let again = f.run_with("c1", add(5), keyed("pay-1")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.result, first.result);
    assert_eq!(f.events.append_calls(), appends, "a repeat appends nothing");
    assert_eq!(f.events.versions("c1"), [1, 2]);
    assert_eq!(f.handler.load("c1", None).await.unwrap(), (counter(5), 2));

    // Still the same answer after the stream moved on, and from another process.
    f.ok("c1", add(1)).await;
    let other = f.other_process(config());
    let later = other.handle("c1", add(5), keyed("pay-1")).await.unwrap();
    assert!(later.replayed);
    assert_eq!(later.result, first.result);
    assert_eq!(f.events.versions("c1"), [1, 2, 3]);
    assert_eq!(f.handler.load("c1", None).await.unwrap(), (counter(6), 3));
}

#[tokio::test]
async fn a_reused_key_with_another_command_is_refused() {
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    f.ok("c2", CounterCommand::Create).await;
    f.run_with("c1", add(5), keyed("pay-1")).await.unwrap();
    let appends = f.events.append_calls();

    for (id, command) in [
        ("c1", add(6)),
        ("c1", CounterCommand::Burst { n: 1 }),
        ("c2", add(5)),
    ] {
        let err = f
            .run_with(id, command.clone(), keyed("pay-1"))
            .await
            .unwrap_err();
        match &err {
            Error::IdempotencyKeyReused { key } => assert_eq!(key, "pay-1"),
            other => panic!("{id} {command:?}: expected IdempotencyKeyReused, got {other:?}"),
        }
        assert_eq!(err.code(), "idempotency_key_reused");
    }
    assert_eq!(f.events.append_calls(), appends);
    assert_eq!(f.events.versions("c1"), [1, 2]);
    assert_eq!(f.events.versions("c2"), [1]);
}

#[tokio::test]
async fn a_concurrent_twin_that_committed_first_is_answered_with_its_result() {
    // The key is free when the handler checks it, but a twin (same key, same command) commits
    // between that check and the append.
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    let twin_events = vec![stored("c1", 2, ADDED, 2, json!({"by": 5}))];
    let twin = CommandResult {
        aggregate_id: "c1".into(),
        version: 2,
        events: twin_events.clone(),
    };
    let record = IdempotencyRecord {
        key: "pay-1".into(),
        fingerprint: Handler::fingerprint("c1", &add(5)).unwrap(),
        stream: StreamId::new("counters", "c1"),
        response: serde_json::to_value(&twin).unwrap(),
        recorded_at: envelope::now(),
        expires_at: envelope::now() + chrono::Duration::hours(1),
    };
    f.events.hook(move |inner| {
        inner
            .streams
            .get_mut(&StreamId::new("counters", "c1"))
            .unwrap()
            .extend(twin_events);
        inner.idempotency.insert(record.key.clone(), record);
        Then::Proceed
    });
    let outcome = f.run_with("c1", add(5), keyed("pay-1")).await.unwrap();
    assert!(outcome.replayed);
    assert_eq!(outcome.result, twin);
    assert_eq!(f.events.versions("c1"), [1, 2], "the twin's event only");
}

/// Moves the stored record under `key` to have expired `ago` before now.
fn expire(f: &Fixture, key: &str, ago: chrono::Duration) {
    let mut inner = f.events.lock();
    let r = inner.idempotency.get_mut(key).expect("a stored record");
    r.expires_at = Utc::now() - ago;
}

#[tokio::test]
async fn a_record_expires_after_the_configured_retention_in_whole_seconds() {
    let retention = std::time::Duration::from_millis(90_500);
    let f = Fixture::new(HandlerConfig {
        idempotency_retention: retention,
        ..config()
    });
    f.ok("c1", CounterCommand::Create).await;
    f.run_with("c1", add(5), keyed("pay-1")).await.unwrap();
    let record = f.events.lock().idempotency.get("pay-1").cloned().unwrap();
    let exact = record.recorded_at + chrono::Duration::from_std(retention).unwrap();
    assert_eq!(record.expires_at.timestamp_subsec_nanos(), 0, "{record:?}");
    assert!(
        record.expires_at >= exact && record.expires_at - exact < chrono::Duration::seconds(1),
        "expires {} for recorded {} + {retention:?}",
        record.expires_at,
        record.recorded_at
    );
    assert_eq!(
        record.expires_at,
        IdempotencyRecord::expiry(record.recorded_at, retention)
    );
    // The default is a week.
    assert_eq!(
        HandlerConfig::default().idempotency_retention,
        std::time::Duration::from_secs(7 * 86_400)
    );
}

#[test]
fn expiry_rounds_up_to_the_second_and_saturates() {
    let at = |s: &str| envelope::parse_timestamp(s).unwrap();
    let sec = std::time::Duration::from_secs(1);
    assert_eq!(
        IdempotencyRecord::expiry(at("2026-11-27T12:00:00Z"), sec),
        at("2026-11-27T12:00:01Z")
    );
    assert_eq!(
        IdempotencyRecord::expiry(at("2026-11-27T12:00:00.000001Z"), sec),
        at("2026-11-27T12:00:02Z")
    );
    let far = IdempotencyRecord::expiry(at("2026-11-27T12:00:00Z"), std::time::Duration::MAX);
    assert!(far > at("9999-12-31T23:59:59Z"));
    assert_eq!(far.timestamp_subsec_nanos(), 0);
    // Live strictly before the expiry.
    let r = IdempotencyRecord {
        key: "k".into(),
        fingerprint: "f".into(),
        stream: StreamId::new("counters", "c1"),
        response: json!({}),
        recorded_at: at("2026-11-27T12:00:00Z"),
        expires_at: at("2026-11-27T12:00:01Z"),
    };
    assert!(r.is_live(at("2026-11-27T12:00:00.999999Z")));
    assert!(!r.is_live(at("2026-11-27T12:00:01Z")));
}

#[tokio::test]
async fn after_the_retention_a_repeat_runs_again_and_is_recorded_anew() {
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    let first = f.run_with("c1", add(5), keyed("pay-1")).await.unwrap();
    assert_eq!(first.result.version, 2);
    // Inside the window: answered from the record; another command under the key: refused.
    assert!(
        f.run_with("c1", add(5), keyed("pay-1"))
            .await
            .unwrap()
            .replayed
    );
    assert!(matches!(
        f.run_with("c1", add(6), keyed("pay-1")).await,
        Err(Error::IdempotencyKeyReused { .. })
    ));

    expire(&f, "pay-1", chrono::Duration::seconds(1));
    let second = f.run_with("c1", add(5), keyed("pay-1")).await.unwrap();
    assert!(!second.replayed, "an expired record answers nothing");
    assert_eq!(second.result.version, 3, "the command ran a second time");
    assert_eq!(f.events.versions("c1"), [1, 2, 3]);
    let record = f.events.lock().idempotency.get("pay-1").cloned().unwrap();
    assert_eq!(
        record.response,
        serde_json::to_value(&second.result).unwrap()
    );
    assert!(
        record.is_live(Utc::now()),
        "recorded anew with a new expiry"
    );
    // Which is what a repeat gets now.
    let again = f.run_with("c1", add(5), keyed("pay-1")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.result, second.result);

    // An expired key is free for another command too.
    expire(&f, "pay-1", chrono::Duration::seconds(1));
    let other = f.run_with("c1", add(7), keyed("pay-1")).await.unwrap();
    assert!(!other.replayed);
    assert_eq!(f.handler.load("c1", None).await.unwrap(), (counter(17), 4));
}

#[tokio::test]
async fn a_twin_record_that_expires_before_it_is_read_lets_the_command_run() {
    // The append is refused for a twin's live record, which has expired by the time the
    // handler reads it: the key is free, so the command runs (not a "taken but not found").
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    let record = IdempotencyRecord {
        key: "pay-1".into(),
        fingerprint: Handler::fingerprint("c1", &add(5)).unwrap(),
        stream: StreamId::new("counters", "c1"),
        response: json!({}),
        recorded_at: envelope::now(),
        expires_at: envelope::now() + chrono::Duration::hours(1),
    };
    f.events.hook(move |inner| {
        inner.idempotency.insert(record.key.clone(), record);
        inner.expire_before_read = Some("pay-1".into());
        Then::Proceed
    });
    let outcome = f.run_with("c1", add(5), keyed("pay-1")).await.unwrap();
    assert!(!outcome.replayed);
    assert_eq!(outcome.result.version, 2);
    assert_eq!(f.events.versions("c1"), [1, 2]);
}

// =============================================================================================
// Optimistic concurrency
// =============================================================================================

#[tokio::test]
async fn a_wrong_expected_version_is_a_conflict() {
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    f.ok("c1", add(1)).await;
    for stale in [0, 1, 3, 9] {
        let err = f
            .run_with("c1", add(1), expecting(stale))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "version_conflict");
        assert_eq!(conflict(err), ("counters/c1".to_string(), stale, 2));
    }
    assert_eq!(
        f.events.append_calls(),
        2,
        "a refused command never appends"
    );
    let ok = f.run_with("c1", add(1), expecting(2)).await.unwrap();
    assert_eq!(ok.result.version, 3);
    // A new stream is at version 0.
    let err = f
        .run_with("new", CounterCommand::Create, expecting(1))
        .await
        .unwrap_err();
    assert_eq!(conflict(err), ("counters/new".to_string(), 1, 0));
    let ok = f
        .run_with("new", CounterCommand::Create, expecting(0))
        .await
        .unwrap();
    assert_eq!(ok.result.version, 1);
}

#[tokio::test]
async fn the_expected_version_is_checked_against_the_store_not_a_stale_cache() {
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    f.ok("c1", add(1)).await; // the handler's cache: v2
    f.events.foreign_add("c1", 10); // the store: v3

    // The client saw v3: accepted, though the cache says v2.
    let ok = f.run_with("c1", add(1), expecting(3)).await.unwrap();
    assert_eq!(ok.result.version, 4);
    assert_eq!(ok.result.events[0].version, 4);
    assert_eq!(f.handler.load("c1", None).await.unwrap(), (counter(12), 4));

    // The client saw v2 while the cache agrees but the store is at v5: a conflict.
    f.events.foreign_add("c1", 100);
    let err = f.run_with("c1", add(1), expecting(4)).await.unwrap_err();
    assert_eq!(conflict(err), ("counters/c1".to_string(), 4, 5));
    assert_eq!(f.events.versions("c1"), [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_conflict_with_an_expected_version_is_not_retried() {
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    f.ok("c1", add(1)).await;
    // Another writer commits between the handler's load and its append.
    f.events.hook(|inner| {
        inner.foreign_add("c1", 10);
        Then::Proceed
    });
    let calls = f.events.append_calls();
    let err = f.run_with("c1", add(1), expecting(2)).await.unwrap_err();
    assert_eq!(conflict(err), ("counters/c1".to_string(), 2, 3));
    assert_eq!(f.events.append_calls(), calls + 1);
    assert_eq!(f.events.versions("c1"), [1, 2, 3]);
    assert_eq!(f.handler.load("c1", None).await.unwrap(), (counter(11), 3));
}

#[tokio::test]
async fn a_stale_cache_conflict_without_expected_version_is_retried() {
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    f.ok("c1", add(2)).await; // cached at v2
    f.events.foreign_add("c1", 10); // behind the handler's back: v3
    let calls = f.events.append_calls();

    let ok = f.ok("c1", add(1)).await;
    assert_eq!(ok.version, 4);
    assert_eq!(ok.events.len(), 1);
    assert_eq!(ok.events[0].version, 4);
    // The first append (expected v2, from the cache) conflicted, the reloaded one succeeded.
    assert_eq!(
        f.events.lock().appends[calls..],
        [(2, vec![3], None), (3, vec![4], None)]
    );
    assert_eq!(f.events.versions("c1"), [1, 2, 3, 4]);
    assert_eq!(f.handler.load("c1", None).await.unwrap(), (counter(13), 4));
}

#[tokio::test]
async fn another_process_writing_is_caught_and_retried() {
    let f = Fixture::new(config());
    let other = f.other_process(config());
    f.ok("c1", CounterCommand::Create).await;
    f.ok("c1", add(1)).await;
    let by_other = other
        .handle("c1", add(10), CommandOptions::default())
        .await
        .unwrap();
    assert_eq!(by_other.result.version, 3);
    assert_eq!(f.ok("c1", add(100)).await.version, 4);
    assert_eq!(other.load("c1", None).await.unwrap(), (counter(111), 4));
    assert_eq!(f.handler.load("c1", None).await.unwrap(), (counter(111), 4));
}

#[tokio::test]
async fn a_race_at_append_time_is_retried_with_the_new_state() {
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    f.events.hook(|inner| {
        inner.foreign_add("c1", 10);
        Then::Proceed
    });
    f.events.hook(|inner| {
        inner.foreign_add("c1", 20);
        Then::Proceed
    });
    let calls = f.events.append_calls();
    let ok = f.ok("c1", add(1)).await;
    assert_eq!(ok.version, 4);
    assert_eq!(f.events.append_calls(), calls + 3);
    assert_eq!(f.handler.load("c1", None).await.unwrap(), (counter(31), 4));
}

#[tokio::test]
async fn retries_are_bounded() {
    let f = Fixture::new(HandlerConfig {
        max_retries: 2,
        ..config()
    });
    f.ok("c1", CounterCommand::Create).await;
    for _ in 0..3 {
        f.events.hook(|inner| {
            inner.foreign_add("c1", 1);
            Then::Proceed
        });
    }
    let calls = f.events.append_calls();
    let err = f.run("c1", add(1)).await.unwrap_err();
    // One try and two retries, each beaten by another writer.
    assert_eq!(f.events.append_calls(), calls + 3);
    assert_eq!(conflict(err), ("counters/c1".to_string(), 3, 4));
    assert_eq!(f.events.versions("c1"), [1, 2, 3, 4]);

    // With no retries at all, a stale cache is one conflict.
    let f = Fixture::new(HandlerConfig {
        max_retries: 0,
        ..config()
    });
    f.ok("c1", CounterCommand::Create).await;
    f.events.foreign_add("c1", 1);
    let err = f.run("c1", add(1)).await.unwrap_err();
    assert_eq!(conflict(err), ("counters/c1".to_string(), 1, 2));
    // ...after which the cache was dropped: the next command succeeds at once.
    let calls = f.events.append_calls();
    assert_eq!(f.ok("c1", add(1)).await.version, 3);
    assert_eq!(f.events.append_calls(), calls + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_for_one_aggregate_in_one_process_take_turns() {
    let f = Arc::new(Fixture::new(config()));
    f.ok("c1", CounterCommand::Create).await;
    let tasks: Vec<_> = (1..=20)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move { f.run("c1", add(i)).await })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap().unwrap().result.version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (2..=21).collect::<Vec<u64>>());
    assert_eq!(f.events.append_calls(), 21, "no conflicts, no retries");
    assert_eq!(
        f.handler.load("c1", None).await.unwrap(),
        (counter((1..=20).sum()), 21)
    );
}

#[tokio::test]
async fn a_store_failure_is_reported_and_the_cache_dropped() {
    let f = Fixture::new(config());
    f.ok("c1", CounterCommand::Create).await;
    f.events.hook(|_| Then::Fail);
    let err = f.run("c1", add(1)).await.unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Backend(_))),
        "{err:?}"
    );
    assert_eq!(err.code(), "store_unavailable");
    assert_eq!(f.events.versions("c1"), [1]);

    // The append committed but its acknowledgement was lost: the handler must not trust its
    // cache afterwards, so the next command loads v2 and appends once, without a conflict.
    f.events.hook(|_| Then::CommitThenFail);
    assert!(f.run("c1", add(1)).await.is_err());
    assert_eq!(f.events.versions("c1"), [1, 2]);
    let calls = f.events.append_calls();
    assert_eq!(f.ok("c1", add(1)).await.version, 3);
    assert_eq!(f.events.append_calls(), calls + 1);
    assert_eq!(f.events.committed(), 3);
}

// =============================================================================================
// Snapshots and loading
// =============================================================================================

#[tokio::test]
async fn snapshots_are_taken_when_crossing_a_multiple() {
    let f = Fixture::new(HandlerConfig {
        snapshot_every: 3,
        ..config()
    });
    f.ok("c1", CounterCommand::Create).await; // v1
    f.ok("c1", add(1)).await; // v2
    assert!(f.snapshots.all().is_empty());
    f.ok("c1", add(1)).await; // v3: crosses 3
    assert_eq!(f.snapshots.versions(), [3]);
    f.ok("c1", CounterCommand::Burst { n: 4 }).await; // v4..v7: crosses 6
    f.ok("c1", add(1)).await; // v8
    assert_eq!(f.snapshots.versions(), [3, 7]);
    f.ok("c1", add(1)).await; // v9: crosses 9
    f.ok("c1", CounterCommand::Touch).await; // no events, no snapshot
    assert_eq!(f.snapshots.versions(), [3, 7, 9]);

    let snaps = f.snapshots.all();
    let s3 = &snaps[0];
    assert_eq!(s3.stream, StreamId::new("counters", "c1"));
    assert_eq!(s3.state_version, Counter::STATE_VERSION);
    assert_eq!(s3.state, serde_json::to_value(counter(2)).unwrap());
    assert_eq!(snaps[1].state, serde_json::to_value(counter(6)).unwrap());
    assert_eq!(snaps[2].state, serde_json::to_value(counter(8)).unwrap());
}

#[tokio::test]
async fn no_snapshots_when_disabled_or_not_inline() {
    for config in [
        HandlerConfig {
            snapshot_every: 0,
            ..config()
        },
        HandlerConfig {
            snapshot_every: 2,
            inline_snapshots: false,
            ..config()
        },
    ] {
        let f = Fixture::new(config);
        f.ok("c1", CounterCommand::Create).await;
        f.ok("c1", CounterCommand::Burst { n: 9 }).await;
        f.ok("c1", add(1)).await;
        assert_eq!(f.events.versions("c1").len(), 11);
        assert!(f.snapshots.all().is_empty());
    }
}

/// Writes v1..=v`n` of `counters/c1` through a handler that snapshots every 3 events:
/// Create, then `Add(1)`, `Add(2)`, ... so the value at version v is 1 + 2 + ... + (v - 1).
async fn history(n: u64) -> Fixture {
    let f = Fixture::new(HandlerConfig {
        snapshot_every: 3,
        ..config()
    });
    f.ok("c1", CounterCommand::Create).await;
    for by in 1..n {
        f.ok("c1", add(by as i64)).await;
    }
    f
}

fn value_at(version: u64) -> i64 {
    (1..version as i64).sum()
}

#[tokio::test]
async fn load_starts_from_the_latest_snapshot() {
    let f = history(5).await;
    assert_eq!(f.snapshots.versions(), [3]);
    let fresh = f.other_process(config());
    f.events.take_reads();
    assert_eq!(
        fresh.load("c1", None).await.unwrap(),
        (counter(value_at(5)), 5)
    );
    assert_eq!(
        f.events.take_reads(),
        [(4, None)],
        "only the events after v3"
    );

    // The snapshot's state is really what's used: doctor it and see it come through.
    f.snapshots.saved.lock().unwrap()[0].state = serde_json::to_value(counter(1000)).unwrap();
    let fresh = f.other_process(config());
    assert_eq!(
        fresh.load("c1", None).await.unwrap(),
        (counter(1000 + 3 + 4), 5)
    );
}

#[tokio::test]
async fn a_snapshot_of_another_state_version_is_ignored() {
    let f = history(5).await;
    {
        let mut saved = f.snapshots.saved.lock().unwrap();
        saved[0].state_version = Counter::STATE_VERSION + 1;
        saved[0].state = serde_json::to_value(counter(1000)).unwrap();
    }
    let fresh = f.other_process(config());
    f.events.take_reads();
    assert_eq!(
        fresh.load("c1", None).await.unwrap(),
        (counter(value_at(5)), 5)
    );
    assert_eq!(
        f.events.take_reads(),
        [(1, None)],
        "rebuilt from the first event"
    );
}

#[tokio::test]
async fn an_undecodable_snapshot_is_ignored() {
    let f = history(5).await;
    f.snapshots.saved.lock().unwrap()[0].state = json!({"value": "lots"});
    let fresh = f.other_process(config());
    f.events.take_reads();
    assert_eq!(
        fresh.load("c1", None).await.unwrap(),
        (counter(value_at(5)), 5)
    );
    assert_eq!(f.events.take_reads(), [(1, None)]);
}

#[tokio::test]
async fn load_as_of_a_version() {
    let f = history(8).await;
    assert_eq!(f.snapshots.versions(), [3, 6]);
    for v in 1..=8 {
        assert_eq!(
            f.handler.load("c1", Some(v)).await.unwrap(),
            (counter(value_at(v)), v),
            "as of v{v}"
        );
    }
    // Past the end: the latest state and its real version.
    assert_eq!(
        f.handler.load("c1", Some(99)).await.unwrap(),
        (counter(value_at(8)), 8)
    );
    // Before the first event: nothing.
    assert_eq!(
        f.handler.load("c1", Some(0)).await.unwrap(),
        (Counter::default(), 0)
    );

    // Snapshots at or before the version are used, never later ones.
    f.events.take_reads();
    f.handler.load("c1", Some(2)).await.unwrap();
    assert_eq!(f.events.take_reads(), [(1, Some(2))]);
    f.handler.load("c1", Some(5)).await.unwrap();
    assert_eq!(f.events.take_reads(), [(4, Some(5))]);
    f.handler.load("c1", Some(6)).await.unwrap();
    assert!(
        f.events.take_reads().is_empty(),
        "the v6 snapshot is the answer"
    );

    // Time travel leaves the cache alone: the next command still appends at v9.
    assert_eq!(f.ok("c1", add(1)).await.version, 9);
}

#[tokio::test]
async fn load_serves_from_the_cache_and_catches_up_with_the_store() {
    let f = history(3).await;
    f.events.take_reads();
    assert_eq!(f.handler.load("c1", None).await.unwrap(), (counter(3), 3));
    assert_eq!(
        f.events.take_reads(),
        [(4, None)],
        "cached v3, checks for more"
    );
    f.events.foreign_add("c1", 10);
    assert_eq!(f.handler.load("c1", None).await.unwrap(), (counter(13), 4));

    // A handler without a cache goes to the snapshot every time.
    let nocache = f.other_process(HandlerConfig {
        cache_capacity: 0,
        ..config()
    });
    f.events.take_reads();
    assert_eq!(nocache.load("c1", None).await.unwrap(), (counter(13), 4));
    assert_eq!(nocache.load("c1", None).await.unwrap(), (counter(13), 4));
    assert_eq!(f.events.take_reads(), [(4, None), (4, None)]);
}

#[tokio::test]
async fn stored_events_of_an_older_schema_are_upcast_on_load() {
    let f = Fixture::new(config());
    f.events.inject(stored("c1", 1, CREATED, 1, json!({})));
    f.events
        .inject(stored("c1", 2, ADDED, 1, json!({"amount": 5})));
    f.events.inject(stored("c1", 3, ADDED, 2, json!({"by": 2})));
    assert_eq!(f.handler.load("c1", None).await.unwrap(), (counter(7), 3));
    let (env, event) = f
        .handler
        .decode(stored("c1", 2, ADDED, 1, json!({"amount": 5})))
        .unwrap();
    assert_eq!((env.schema_version, env.data), (2, json!({"by": 5})));
    assert_eq!(event, CounterEvent::Added { by: 5 });
    // Commands continue after them.
    assert_eq!(f.ok("c1", add(1)).await.version, 4);
}

#[tokio::test]
async fn unreadable_streams_fail_loudly() {
    // An event type this build doesn't know.
    let f = Fixture::new(config());
    f.events.inject(stored("c1", 1, CREATED, 1, json!({})));
    f.events
        .inject(stored("c1", 2, "CounterReset", 1, json!({})));
    let err = f.handler.load("c1", None).await.unwrap_err();
    assert!(
        matches!(&err, Error::Schema(UpcastError::UnknownEventType { event_type, version: 2, .. }) if event_type == "CounterReset"),
        "{err:?}"
    );
    assert!(f.run("c1", add(1)).await.is_err());

    // Data that doesn't decode.
    let f = Fixture::new(config());
    f.events.inject(stored("c1", 1, CREATED, 1, json!({})));
    f.events
        .inject(stored("c1", 2, ADDED, 2, json!({"by": "two"})));
    let err = f.handler.load("c1", None).await.unwrap_err();
    assert!(
        matches!(&err, Error::Decode(m) if m.contains("counters/c1 v2")),
        "{err:?}"
    );
    assert_eq!(err.code(), "decode_error");

    // A gap in the versions.
    let f = Fixture::new(config());
    f.events.inject(stored("c1", 1, CREATED, 1, json!({})));
    f.events.inject(stored("c1", 3, ADDED, 2, json!({"by": 1})));
    let err = f.handler.load("c1", None).await.unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Corrupt(_))),
        "{err:?}"
    );
}

#[test]
fn fingerprints_identify_aggregate_and_command() {
    let a = Handler::fingerprint("c1", &add(5)).unwrap();
    assert_eq!(a, Handler::fingerprint("c1", &add(5)).unwrap());
    assert_eq!(a.len(), 64, "hex SHA-256");
    assert_ne!(a, Handler::fingerprint("c2", &add(5)).unwrap());
    assert_ne!(a, Handler::fingerprint("c1", &add(6)).unwrap());
    assert_ne!(
        a,
        Handler::fingerprint("c1", &CounterCommand::Burst { n: 5 }).unwrap()
    );
}

#[test]
fn the_default_config() {
    let c = HandlerConfig::default();
    assert_eq!(c.snapshot_every, 100);
    assert_eq!(c.max_retries, 8);
    assert_eq!(c.cache_capacity, 100_000);
    assert_eq!(c.max_events_per_command, 99);
    assert!(c.inline_snapshots);
}
