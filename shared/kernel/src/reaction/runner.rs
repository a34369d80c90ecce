//! The local runner: one reaction fed from the store's ordered feed, each event through
//! [`ReactionStep`], with the reaction's own checkpoint (the feed position it has handled up to)
//! and its status (failing event, refused commands) for operators. Within a batch, events of one
//! process instance (or, without state, of one stream) are handled in feed order, different
//! instances at once.

use super::step::{ReactionError, ReactionStep, Refused};
use super::{CommandBus, ReactionKind};
use crate::admin::{feed_lag, FailedEvent, Failure, Lag};
use crate::envelope::{now, EventEnvelope};
use crate::error::{Error, StoreError};
use crate::ports::{DocWrite, EventFeed, ModelRef, ReadModelStore};
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Process instances (or streams) handled at once within a batch.
const CONCURRENCY: usize = 32;

/// The reserved read model holding reactions' status documents.
pub const STATUS_MODEL: &str = "_reactions";

/// Brings a stored event to its type's current schema (the registry's upcasters).
pub type Upcast = Arc<dyn Fn(EventEnvelope) -> Result<EventEnvelope, Error> + Send + Sync>;

/// What one step of the runner did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Feed events read (of every type).
    pub read: usize,
    /// Events the reaction handled (those it subscribes to).
    pub handled: usize,
    /// The checkpoint after the step.
    pub position: u64,
}

/// Feeds one reaction from the event feed.
pub struct ReactionRunner {
    feed: Arc<dyn EventFeed>,
    read_models: Arc<dyn ReadModelStore>,
    commands: Arc<dyn CommandBus>,
    reaction: Arc<dyn ReactionKind>,
    upcast: Upcast,
    pub batch_size: usize,
}

impl ReactionRunner {
    pub fn new(
        feed: Arc<dyn EventFeed>,
        read_models: Arc<dyn ReadModelStore>,
        commands: Arc<dyn CommandBus>,
        reaction: Arc<dyn ReactionKind>,
        upcast: Upcast,
    ) -> Self {
        Self {
            feed,
            read_models,
            commands,
            reaction,
            upcast,
            batch_size: 500,
        }
    }

    pub fn name(&self) -> &str {
        self.reaction.name()
    }

    fn model(&self) -> ModelRef {
        ModelRef::active(self.reaction.name())
    }

    /// Handles the events after the checkpoint, a batch at most, moving the checkpoint past
    /// each one handled. On an error the checkpoint stays before the failing event.
    pub async fn step(&self) -> Result<Step, ReactionError> {
        self.step_at().await.map_err(|(_, e)| e)
    }

    /// [`Self::step`], whose error has the feed position of the failing event when it is one.
    async fn step_at(&self) -> Result<Step, (Option<u64>, ReactionError)> {
        let model = self.model();
        let after = self
            .read_models
            .checkpoint(&model)
            .await
            .map_err(|e| (None, self.store_error(e)))?;
        let batch = self
            .feed
            .read_feed(after, self.batch_size)
            .await
            .map_err(|e| (None, self.store_error(e)))?;
        let step = ReactionStep {
            reaction: self.reaction.as_ref(),
            read_models: self.read_models.as_ref(),
            commands: self.commands.as_ref(),
        };
        let read = batch.len();
        let Some(last) = batch.last().map(|fe| fe.position) else {
            return Ok(Step {
                read,
                handled: 0,
                position: after,
            });
        };
        // Each event's predecessor in the batch: where the checkpoint stays if it fails.
        let mut before: HashMap<u64, u64> = HashMap::with_capacity(batch.len());
        let mut prev = after;
        // The subscribed events by instance (or stream, for a reaction without state), each
        // group in feed order: groups are handled at once, so their commands share the store's
        // group commits; events of one instance wait for each other.
        let mut groups: Vec<Vec<(u64, Result<EventEnvelope, ReactionError>)>> = Vec::new();
        let mut group_of: HashMap<String, usize> = HashMap::new();
        for fe in batch {
            before.insert(fe.position, prev);
            prev = fe.position;
            // Upcasting keeps the event's type: only subscribed events pay for it.
            if !self.reaction.wants(&fe.event) {
                continue;
            }
            let (stream, version) = (fe.event.stream().to_string(), fe.event.version);
            let event = (self.upcast)(fe.event).map_err(|e| ReactionError::Event {
                reaction: self.name().to_owned(),
                stream: stream.clone(),
                version,
                reason: e.to_string(),
            });
            let key = match &event {
                Ok(e) => self
                    .reaction
                    .instance(e)
                    .map_or_else(|| format!("stream {stream}"), |i| format!("instance {i}")),
                Err(_) => format!("stream {stream}"),
            };
            let g = *group_of.entry(key).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push((fe.position, event));
        }
        let step = &step;
        let outcomes: Vec<(usize, Option<(u64, ReactionError)>)> = stream::iter(groups)
            .map(|group| async move {
                let mut handled = 0;
                for (position, event) in group {
                    let outcome = match event {
                        Ok(event) => step.handle(&event).await,
                        Err(e) => Err(e),
                    };
                    match outcome {
                        Ok(h) => {
                            handled += 1;
                            for r in h.refused {
                                self.record_refusal(r).await;
                            }
                        }
                        Err(e) => return (handled, Some((position, e))),
                    }
                }
                (handled, None)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let handled = outcomes.iter().map(|(n, _)| n).sum();
        // The earliest failure holds the checkpoint before it; what other groups handled
        // past it is handled again later, which changes nothing.
        let failed = outcomes
            .into_iter()
            .filter_map(|(_, f)| f)
            .min_by_key(|(position, _)| *position);
        let position = match &failed {
            Some((at, _)) => before.get(at).copied().unwrap_or(after),
            None => last,
        };
        self.save_checkpoint(after, position)
            .await
            .map_err(|e| (None, e))?;
        match failed {
            Some((at, e)) => Err((Some(at), e)),
            None => Ok(Step {
                read,
                handled,
                position,
            }),
        }
    }

    async fn save_checkpoint(&self, before: u64, position: u64) -> Result<(), ReactionError> {
        if position == before {
            return Ok(());
        }
        self.read_models
            .apply(&self.model(), Vec::new(), Some(position))
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }

    fn store_error(&self, e: StoreError) -> ReactionError {
        ReactionError::Retry {
            reaction: self.name().to_owned(),
            stream: String::new(),
            version: 0,
            source: e.into(),
        }
    }

    async fn record_refusal(&self, refused: Refused) {
        record_refusal(self.read_models.as_ref(), self.name(), refused).await;
    }

    /// Follows the feed until `shutdown` turns true. A failing event is retried every second
    /// (a store that was busy recovers; a reaction that refuses the event stays stuck on it,
    /// as its status says).
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut failing = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let (idle, position) = match self.step_at().await {
                Ok(step) => {
                    if failing {
                        tracing::info!(reaction = self.name(), "reaction moving again");
                        self.set_failure(None).await;
                    }
                    failing = false;
                    (step.read == 0, step.position)
                }
                Err((at, e)) => {
                    if !failing {
                        tracing::error!(reaction = self.name(), error = %e, "reaction stalled");
                        self.set_failure(Some(failure_of(&e, at))).await;
                    }
                    failing = true;
                    (true, u64::MAX)
                }
            };
            if idle {
                let wait = if failing {
                    Duration::from_secs(1)
                } else {
                    Duration::from_millis(250)
                };
                tokio::select! {
                    _ = self.feed.wait_for_events(position, wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    async fn set_failure(&self, failure: Option<Failure>) {
        let name = self.name().to_owned();
        if let Err(e) = update_status(self.read_models.as_ref(), &name, |s| {
            s.failure = failure.clone()
        })
        .await
        {
            tracing::warn!(reaction = %name, error = %e, "failure not recorded in the status");
        }
    }
}

fn failure_of(e: &ReactionError, position: Option<u64>) -> Failure {
    let event = match e {
        ReactionError::Event {
            stream,
            version,
            reason,
            ..
        } => Some(FailedEvent {
            position: position.unwrap_or_default(),
            stream: stream.clone(),
            version: *version,
            reason: reason.clone(),
        }),
        ReactionError::Retry { .. } => None,
    };
    Failure {
        message: e.to_string(),
        event,
        at: now(),
    }
}

/// What operators see of a reaction (`GET /admin/reactions`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReactionStatus {
    pub name: String,
    /// (aggregate type, event type) pairs.
    pub subscriptions: Vec<(String, String)>,
    /// `live`, or `failed` while stuck on `failure`.
    pub state: &'static str,
    /// Feed position handled up to; `None` where no feed drives it (AWS: Kinesis does, and
    /// the function's IteratorAge is the lag).
    pub checkpoint: Option<u64>,
    pub lag: Option<Lag>,
    pub failure: Option<Failure>,
    /// Commands the targets refused (answers, not retried), and the latest of them.
    pub refused: u64,
    pub last_refused: Option<Refused>,
}

/// A reaction's status document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct StatusDoc {
    #[serde(default)]
    failure: Option<Failure>,
    #[serde(default)]
    refused: u64,
    #[serde(default)]
    last_refused: Option<Refused>,
}

async fn read_status(
    store: &dyn ReadModelStore,
    name: &str,
) -> Result<(u64, StatusDoc), StoreError> {
    Ok(
        match store.get(&ModelRef::active(STATUS_MODEL), name).await? {
            // A document this version can't read counts as none, not as an outage.
            Some(d) => (
                d.version,
                serde_json::from_value(d.body).unwrap_or_default(),
            ),
            None => (0, StatusDoc::default()),
        },
    )
}

/// Changes a reaction's status document (each write one version on, retried if another writer
/// moved it first).
async fn update_status(
    store: &dyn ReadModelStore,
    name: &str,
    change: impl Fn(&mut StatusDoc),
) -> Result<(), StoreError> {
    for _ in 0..8 {
        let (version, mut doc) = read_status(store, name).await?;
        let before = doc.clone();
        change(&mut doc);
        if doc == before {
            return Ok(());
        }
        let body = serde_json::to_value(&doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let write = DocWrite {
            key: name.to_owned(),
            version: version + 1,
            body,
            index: Vec::new(),
        };
        if store
            .apply(&ModelRef::active(STATUS_MODEL), vec![write], None)
            .await?
            == 1
        {
            return Ok(());
        }
    }
    Err(StoreError::Unavailable(format!(
        "the status of reaction `{name}` kept changing"
    )))
}

/// Counts a refused command in the reaction's status (best effort: logged if it fails).
pub async fn record_refusal(store: &dyn ReadModelStore, reaction: &str, refused: Refused) {
    let result = update_status(store, reaction, |s| {
        s.refused += 1;
        s.last_refused = Some(refused.clone());
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(reaction, error = %e, "refusal not recorded in the status");
    }
}

/// The status of one reaction; `feed` gives checkpoint and lag where a feed drives it.
pub async fn reaction_status(
    store: &dyn ReadModelStore,
    feed: Option<&dyn EventFeed>,
    reaction: &dyn ReactionKind,
) -> Result<ReactionStatus, StoreError> {
    let name = reaction.name();
    let (_, doc) = read_status(store, name).await?;
    let (mut checkpoint, mut lag) = (None, None);
    if let Some(feed) = feed {
        let at = store.checkpoint(&ModelRef::active(name)).await?;
        checkpoint = Some(at);
        lag = Some(feed_lag(feed, at).await?.1);
    }
    Ok(ReactionStatus {
        name: name.to_owned(),
        subscriptions: reaction.subscriptions().to_vec(),
        state: if doc.failure.is_some() {
            "failed"
        } else {
            "live"
        },
        checkpoint,
        lag,
        failure: doc.failure,
        refused: doc.refused,
        last_refused: doc.last_refused,
    })
}
