//! Command handling: load (snapshot + later events), decide, append with the expected version.

use crate::aggregate::{Aggregate, DomainError, DomainEvent, Refusal};
use crate::cache::Generations;
use crate::chain;
use crate::envelope::{self, EventEnvelope, Metadata, StreamId};
use crate::error::Error;
use crate::ports::{
    AppendError, AppendRequest, EventStore, IdempotencyRecord, KeyStore, ReadRange, Snapshot,
    SnapshotStore, StoreError,
};
use crate::schema::EventSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct HandlerConfig {
    /// Take a snapshot each time a stream crosses a multiple of this many events (0: never).
    pub snapshot_every: u64,
    /// Reload-and-retry rounds after a conflict when the client gave no expected version.
    pub max_retries: u32,
    /// Aggregate states kept in memory between commands (0 disables the cache).
    pub cache_capacity: usize,
    /// A command producing more events than this is refused, never split.
    pub max_events_per_command: usize,
    /// Whether the handler writes snapshots itself (off when a separate snapshotter does).
    pub inline_snapshots: bool,
    /// How long a command's idempotency record answers repeats of it; after that its key is
    /// free and a repeat runs as a new command.
    pub idempotency_retention: Duration,
}

/// [`HandlerConfig::idempotency_retention`] unless configured: 7 days.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for HandlerConfig {
    fn default() -> Self {
        Self {
            snapshot_every: 100,
            max_retries: 8,
            cache_capacity: 100_000,
            max_events_per_command: 99,
            inline_snapshots: true,
            idempotency_retention: DEFAULT_IDEMPOTENCY_RETENTION,
        }
    }
}

/// Per-command options that come from the transport (HTTP headers) or the reaction issuing it.
#[derive(Clone, Debug, Default)]
pub struct CommandOptions {
    pub expected_version: Option<u64>,
    pub idempotency_key: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub origin: Origin,
}

/// Who sends a command. Only the domain's reactions may send an aggregate's internal commands
/// ([`crate::Aggregate::INTERNAL_COMMANDS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// A client of the API (or the command line).
    #[default]
    Client,
    /// One of the domain's reactions.
    Reaction,
}

/// What a command produced; exactly what a repeat with the same idempotency key returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CommandResult {
    pub aggregate_id: String,
    pub version: u64,
    pub events: Vec<EventEnvelope>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CommandOutcome {
    pub result: CommandResult,
    /// True when this is the stored result of an earlier identical command.
    pub replayed: bool,
}

/// Runs commands for one aggregate type against an event store and a snapshot store.
pub struct CommandHandler<A: Aggregate, E: ?Sized, S: ?Sized> {
    events: Arc<E>,
    snapshots: Arc<S>,
    schema: Arc<EventSchema>,
    config: HandlerConfig,
    cache: Mutex<Generations<Loaded<A>>>,
    /// Commands for one aggregate in this process take turns instead of conflicting;
    /// striped so memory stays bounded. Other processes are still handled by the version check.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// The data subjects' keys, for event types with personal fields.
    keys: Option<Arc<dyn KeyStore>>,
}

const STRIPES: usize = 1024;

/// An aggregate's state at `version`, with the hash of the event at `version` (the chain head
/// the next event links to).
#[derive(Clone, Debug)]
pub struct Loaded<A> {
    pub state: A,
    pub version: u64,
    pub head: String,
}

impl<A: Default> Loaded<A> {
    fn empty() -> Self {
        Self {
            state: A::default(),
            version: 0,
            head: chain::GENESIS.to_owned(),
        }
    }
}

impl<A: Aggregate, E: EventStore + ?Sized, S: SnapshotStore + ?Sized> CommandHandler<A, E, S> {
    pub fn new(events: Arc<E>, snapshots: Arc<S>, config: HandlerConfig) -> Self {
        Self {
            events,
            snapshots,
            schema: Arc::new(A::schema()),
            cache: Mutex::new(Generations::new(config.cache_capacity)),
            config,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            keys: None,
        }
    }

    /// The key store personal fields are sealed with (see [`crate::personal`]); without one,
    /// a command that would store personal data fails.
    pub fn with_keys(mut self, keys: Option<Arc<dyn KeyStore>>) -> Self {
        self.keys = keys;
        self
    }

    pub fn schema(&self) -> &Arc<EventSchema> {
        &self.schema
    }

    pub fn events(&self) -> &Arc<E> {
        &self.events
    }

    fn stream(id: &str) -> StreamId {
        StreamId::new(A::TYPE, id)
    }

    /// Upcasts a stored envelope and decodes it into the domain's event type.
    pub fn decode(&self, env: EventEnvelope) -> Result<(EventEnvelope, A::Event), Error> {
        let env = self.schema.upcast(env)?;
        let event = A::Event::from_data(&env.event_type, &env.data).map_err(|e| {
            Error::Decode(format!(
                "{}/{} v{} `{}`: {e}",
                env.aggregate_type, env.aggregate_id, env.version, env.event_type
            ))
        })?;
        Ok((env, event))
    }

    /// State and version of an aggregate, as of `max_version` when given; served from the
    /// cache, then the newest usable snapshot, then the events after it.
    pub async fn load(&self, id: &str, max_version: Option<u64>) -> Result<(A, u64), Error> {
        let loaded = self.load_with_head(id, max_version).await?;
        Ok((loaded.state, loaded.version))
    }

    /// [`Self::load`], with the chain head at the loaded version.
    pub async fn load_with_head(
        &self,
        id: &str,
        max_version: Option<u64>,
    ) -> Result<Loaded<A>, Error> {
        let stream = Self::stream(id);
        let cached = match max_version {
            None => self.cache_get(id),
            Some(_) => None,
        };
        let mut loaded = match cached {
            Some(hit) => hit,
            None => self.snapshot_state(&stream, max_version).await?,
        };
        let mut range = ReadRange::from(loaded.version + 1);
        if let Some(max) = max_version {
            if max <= loaded.version {
                return Ok(loaded);
            }
            range = range.to(max);
        }
        for env in self.events.read_stream(&stream, range).await? {
            if env.version != loaded.version + 1 {
                return Err(StoreError::Corrupt(format!(
                    "{stream}: expected version {} but read {}",
                    loaded.version + 1,
                    env.version
                ))
                .into());
            }
            loaded.version = env.version;
            loaded.head.clone_from(&env.hash);
            let (_, event) = self.decode(env)?;
            loaded.state.evolve(&event);
        }
        // Streams without events aren't cached: reads of made-up ids must not evict real ones.
        if max_version.is_none() && loaded.version > 0 {
            self.cache_put(id, loaded.clone());
        }
        Ok(loaded)
    }

    async fn snapshot_state(
        &self,
        stream: &StreamId,
        max_version: Option<u64>,
    ) -> Result<Loaded<A>, Error> {
        let Some(snap) = self.snapshots.latest(stream, max_version).await? else {
            return Ok(Loaded::empty());
        };
        if snap.state_version != A::STATE_VERSION {
            // An older state shape: rebuild from events rather than guess.
            tracing::debug!(%stream, found = snap.state_version, "ignoring snapshot of another state version");
            return Ok(Loaded::empty());
        }
        let state = match serde_json::from_value::<A>(snap.state) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(%stream, version = snap.version, error = %e, "ignoring undecodable snapshot");
                return Ok(Loaded::empty());
            }
        };
        let head = match snap.chain_head {
            Some(head) => head,
            // A snapshot from before chains: the head is the hash of the event it stopped at.
            None => self
                .events
                .read_stream(stream, ReadRange::from(snap.version).to(snap.version))
                .await?
                .pop()
                .map(|e| e.hash)
                .unwrap_or_default(),
        };
        Ok(Loaded {
            state,
            version: snap.version,
            head,
        })
    }

    fn cache_get(&self, id: &str) -> Option<Loaded<A>> {
        if self.config.cache_capacity == 0 {
            return None;
        }
        let (hit, retired) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(id);
        drop(retired); // freed outside the lock
        hit
    }

    fn cache_put(&self, id: &str, loaded: Loaded<A>) {
        if self.config.cache_capacity == 0 {
            return;
        }
        let retired = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(id, loaded);
        drop(retired); // freed outside the lock
    }

    fn cache_forget(&self, id: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Identifies a command for idempotency: same aggregate and same body.
    pub fn fingerprint(id: &str, command: &A::Command) -> Result<String, Error> {
        let body = serde_json::to_vec(command)
            .map_err(|e| Error::invalid("invalid_command", e.to_string()))?;
        let mut h = Sha256::new();
        h.update(A::TYPE.as_bytes());
        h.update([0]);
        h.update(id.as_bytes());
        h.update([0]);
        h.update(&body);
        Ok(hex::encode(h.finalize()))
    }

    async fn replay_idempotent(
        &self,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<CommandOutcome>, Error> {
        let Some(record) = self.events.idempotency_record(key).await? else {
            return Ok(None);
        };
        if record.fingerprint != fingerprint {
            return Err(Error::IdempotencyKeyReused {
                key: key.to_owned(),
            });
        }
        let result = serde_json::from_value(record.response)
            .map_err(|e| Error::Decode(format!("idempotency record `{key}`: {e}")))?;
        Ok(Some(CommandOutcome {
            result,
            replayed: true,
        }))
    }

    /// Validates, decides and appends one command.
    pub async fn handle(
        &self,
        id: &str,
        command: A::Command,
        opts: CommandOptions,
    ) -> Result<CommandOutcome, Error> {
        A::validate(&command).map_err(|m| Error::invalid("invalid_command", m))?;
        let fingerprint = match &opts.idempotency_key {
            Some(key) => {
                let fp = Self::fingerprint(id, &command)?;
                // Cold paths are boxed here and in `run`: a future holds every await's state
                // inline, so each command would otherwise allocate and move room for them all.
                if let Some(done) = Box::pin(self.replay_idempotent(key, &fp)).await? {
                    return Ok(done);
                }
                Some(fp)
            }
            None => None,
        };
        let stripe = &self.stripes[stripe_of(id)];
        let (_turn, waited) = match stripe.try_lock() {
            Ok(turn) => (turn, false),
            Err(_) => (stripe.lock().await, true),
        };
        let (Some(key), Some(fp)) = (&opts.idempotency_key, &fingerprint) else {
            return self.run(id, &command, &opts, None).await;
        };
        // A twin with the same key may have finished while this one waited for its turn: its
        // answer is the answer, not a decision on the state it left behind. (One that finished
        // without this one waiting is found by the append: the store refuses its key.)
        if waited {
            if let Some(done) = Box::pin(self.replay_idempotent(key, fp)).await? {
                return Ok(done);
            }
        }
        match self.run(id, &command, &opts, Some(fp)).await {
            // The same for a twin in another process, which the turn doesn't order.
            Err(e @ (Error::Conflict { .. } | Error::Rejected { .. } | Error::NotFound { .. })) => {
                match Box::pin(self.replay_idempotent(key, fp)).await? {
                    Some(done) => Ok(done),
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    /// Loads, decides and appends, retrying conflicts when the client gave no expected version.
    async fn run(
        &self,
        id: &str,
        command: &A::Command,
        opts: &CommandOptions,
        fingerprint: Option<&String>,
    ) -> Result<CommandOutcome, Error> {
        let stream = Self::stream(id);
        let command_id = Uuid::new_v4();
        let mut attempt = 0;
        let mut trust_cache = true;
        loop {
            // A cached state is used without reading the store: the append's version check
            // catches a stale cache (another process wrote), and the retry reloads.
            let cached = if trust_cache {
                self.cache_get(id)
            } else {
                None
            };
            let Loaded {
                state,
                version,
                head,
            } = match cached {
                Some(hit) => hit,
                None => Box::pin(self.load_with_head(id, None)).await?,
            };
            if let Some(expected) = opts.expected_version {
                if expected != version && trust_cache {
                    // Don't refuse the client on the word of a possibly stale cache.
                    trust_cache = false;
                    continue;
                }
                if expected != version {
                    return Err(Error::Conflict {
                        stream: stream.to_string(),
                        expected,
                        actual: version,
                    });
                }
            }
            let decided = state.decide(command).map_err(domain_error)?;
            if decided.len() > self.config.max_events_per_command {
                return Err(Error::Rejected {
                    code: "too_many_events",
                    message: format!(
                        "the command would append {} events; at most {} fit in one atomic append",
                        decided.len(),
                        self.config.max_events_per_command
                    ),
                });
            }
            let recorded_at = envelope::now();
            let metadata = Metadata {
                command_id: Some(command_id),
                correlation_id: opts.correlation_id.clone(),
                causation_id: opts.causation_id.clone(),
                idempotency_key: opts.idempotency_key.clone(),
            };
            let mut data: Vec<serde_json::Value> = decided.iter().map(|e| e.to_data()).collect();
            let sealed = self.seal_personal(id, &decided, &mut data).await?;
            let mut new_state = state;
            let mut envelopes = Vec::with_capacity(decided.len());
            for (i, (event, data)) in decided.iter().zip(data).enumerate() {
                // The state holds what is stored: the tokens, never the plaintext (it is
                // cached and snapshotted).
                match sealed.get(i).and_then(Option::as_ref) {
                    Some(stored) => new_state.evolve(stored),
                    None => new_state.evolve(event),
                }
                let event_type = event.event_type();
                envelopes.push(EventEnvelope {
                    // v7: time-ordered, so ids sort by creation and index cheaply in any store.
                    event_id: Uuid::now_v7(),
                    aggregate_type: A::TYPE.to_owned(),
                    aggregate_id: id.to_owned(),
                    version: version + 1 + i as u64,
                    event_type: event_type.to_owned(),
                    schema_version: self.schema.current_version(event_type).ok_or_else(|| {
                        Error::Decode(format!("event type `{event_type}` is not in the schema"))
                    })?,
                    data,
                    metadata: metadata.clone(),
                    recorded_at,
                    hash: String::new(),
                });
            }
            let (new_head, stored) = chain::seal_stored(&head, &mut envelopes);
            let new_version = version + envelopes.len() as u64;
            let mut result = CommandResult {
                aggregate_id: id.to_owned(),
                version: new_version,
                events: envelopes,
            };
            if result.events.is_empty() {
                // Nothing to record (the command changed nothing): no idempotency record either,
                // since a repeat is equally harmless.
                return Ok(CommandOutcome {
                    result,
                    replayed: false,
                });
            }
            let idempotency = match (&opts.idempotency_key, fingerprint) {
                (Some(key), Some(fp)) => Some(IdempotencyRecord {
                    key: key.clone(),
                    fingerprint: fp.clone(),
                    stream: stream.clone(),
                    response: serde_json::to_value(&result)
                        .map_err(|e| Error::Decode(e.to_string()))?,
                    recorded_at,
                    expires_at: IdempotencyRecord::expiry(
                        recorded_at,
                        self.config.idempotency_retention,
                    ),
                }),
                _ => None,
            };
            let request = AppendRequest {
                stream: stream.clone(),
                expected_version: version,
                // Lent to the store and taken back for the answer: no copy per command.
                events: std::mem::take(&mut result.events),
                idempotency,
                stored,
                // `version` came from the store: a load, or this handler's own last append.
                expected_known: true,
            };
            match self.events.append(&request).await {
                Ok(()) => {
                    result.events = request.events;
                    let loaded = Loaded {
                        state: new_state,
                        version: new_version,
                        head: new_head,
                    };
                    // Cached before the snapshot is awaited, so a caller that gives up
                    // meanwhile leaves no stale state behind.
                    let due = self
                        .snapshot_due(version, new_version)
                        .then(|| loaded.clone());
                    self.cache_put(id, loaded);
                    if let Some(loaded) = due {
                        Box::pin(self.save_snapshot(&stream, &loaded)).await;
                    }
                    return Ok(CommandOutcome {
                        result,
                        replayed: false,
                    });
                }
                Err(AppendError::Conflict { actual, .. }) => {
                    self.cache_forget(id);
                    trust_cache = false;
                    if opts.expected_version.is_some() || attempt >= self.config.max_retries {
                        return Err(Error::Conflict {
                            stream: stream.to_string(),
                            expected: version,
                            actual,
                        });
                    }
                    attempt += 1;
                    tracing::debug!(%stream, attempt, "version conflict, reloading");
                    Box::pin(tokio::time::sleep(backoff(attempt))).await;
                }
                Err(AppendError::DuplicateIdempotencyKey(key)) => {
                    // A concurrent twin committed first: answer as it did.
                    let fp = fingerprint.map(String::as_str).unwrap_or_default();
                    if let Some(done) = self.replay_idempotent(&key, fp).await? {
                        return Ok(done);
                    }
                    // The record expired between the append and this read: the key is free
                    // now, so the command runs again (nothing was appended).
                    if attempt >= self.config.max_retries {
                        return Err(StoreError::Corrupt(format!(
                            "idempotency key `{key}` reported as taken but not found"
                        ))
                        .into());
                    }
                    attempt += 1;
                }
                Err(AppendError::Store(e)) => {
                    // The append may or may not have committed: the cache can't be trusted.
                    self.cache_forget(id);
                    return Err(e.into());
                }
            }
        }
    }

    /// Seals the personal fields in `data` (the decided events' data, in order) and returns,
    /// for each event that had some, the event as stored (tokens in place of the values), for
    /// the state to fold. Nothing to do, and no allocation, for event types without personal
    /// fields.
    async fn seal_personal(
        &self,
        id: &str,
        decided: &[A::Event],
        data: &mut [serde_json::Value],
    ) -> Result<Vec<Option<A::Event>>, Error> {
        let declared: Vec<_> = decided
            .iter()
            .map(|e| self.schema.personal_fields(e.event_type()))
            .collect();
        if declared.iter().all(Option::is_none) {
            return Ok(Vec::new());
        }
        let before: Vec<serde_json::Value> = data.to_vec();
        let work = declared
            .iter()
            .zip(data.iter_mut())
            .filter_map(|(d, v)| d.map(|d| (d, id, v)))
            .collect();
        crate::personal::seal_events(self.keys.as_deref(), work).await?;
        decided
            .iter()
            .zip(data.iter())
            .zip(before)
            .map(|((event, now), before)| {
                if *now == before {
                    return Ok(None);
                }
                A::Event::from_data(event.event_type(), now).map(Some).map_err(|e| {
                    Error::Decode(format!(
                        "{} event `{}` with its personal fields sealed does not decode (personal fields hold strings in the domain's types): {e}",
                        A::TYPE,
                        event.event_type()
                    ))
                })
            })
            .collect()
    }

    /// Folds the aggregate up to `max_version` and saves a snapshot of that state: the
    /// off-the-command-path snapshotter's entry point.
    pub async fn snapshot(&self, id: &str, max_version: Option<u64>) -> Result<Option<u64>, Error> {
        let loaded = self.load_with_head(id, max_version).await?;
        let version = loaded.version;
        if version == 0 {
            return Ok(None);
        }
        let state = serde_json::to_value(&loaded.state)
            .map_err(|e| Error::Decode(format!("state of {}/{id}: {e}", A::TYPE)))?;
        self.snapshots
            .save(Snapshot {
                stream: Self::stream(id),
                version,
                state_version: A::STATE_VERSION,
                state,
                taken_at: envelope::now(),
                chain_head: Some(loaded.head),
            })
            .await?;
        Ok(Some(version))
    }

    /// Whether appending `old + 1 ..= new` crosses a multiple of `snapshot_every`.
    fn snapshot_due(&self, old: u64, new: u64) -> bool {
        let every = self.config.snapshot_every;
        self.config.inline_snapshots && every != 0 && old / every != new / every
    }

    async fn save_snapshot(&self, stream: &StreamId, loaded: &Loaded<A>) {
        let new = loaded.version;
        let snapshot = match serde_json::to_value(&loaded.state) {
            Ok(state) => Snapshot {
                stream: stream.clone(),
                version: new,
                state_version: A::STATE_VERSION,
                state,
                taken_at: envelope::now(),
                chain_head: Some(loaded.head.clone()),
            },
            Err(e) => {
                tracing::warn!(%stream, error = %e, "state does not serialize; no snapshot");
                return;
            }
        };
        // A lost snapshot only costs replay time: log, don't fail the command.
        if let Err(e) = self.snapshots.save(snapshot).await {
            tracing::warn!(%stream, version = new, error = %e, "snapshot not saved");
        }
    }
}

fn domain_error<E: DomainError>(e: E) -> Error {
    match e.refusal() {
        Refusal::NotFound => Error::NotFound {
            code: e.code(),
            message: e.to_string(),
        },
        Refusal::Rule => Error::Rejected {
            code: e.code(),
            message: e.to_string(),
        },
    }
}

fn stripe_of(id: &str) -> usize {
    // FNV-1a: stable and cheap; only spreads ids over stripes.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % STRIPES as u64) as usize
}

fn backoff(attempt: u32) -> Duration {
    // Exponential with jitter from the clock's low bits, capped at ~100 ms.
    let base = 2u64.saturating_pow(attempt.min(6)) * 2;
    let jitter = u64::from(chrono::Utc::now().timestamp_subsec_micros()) % (base * 500 + 1);
    Duration::from_micros(base * 500 + jitter)
}
