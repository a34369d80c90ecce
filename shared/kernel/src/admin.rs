//! What operators see of projections: their rebuilds and failures, kept as documents of a
//! reserved read model so every backend stores them the same way, and the status report
//! (`GET /admin/projections`) built from those, the checkpoints and the feed.

use crate::envelope::now;
use crate::error::ProjectionError;
use crate::ports::{DocWrite, EventFeed, ModelRef, ReadModelStore, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The reserved read model holding projection status documents.
pub const STATUS_MODEL: &str = "_projections";

/// A rebuild whose status hasn't moved for this long is reported as interrupted: the process
/// running it stopped, and the next rebuild resumes it.
pub const REBUILD_STALE_AFTER: Duration = Duration::from_secs(30);

/// How often a running rebuild refreshes its status document.
pub const REBUILD_HEARTBEAT: Duration = Duration::from_secs(2);

/// The event a projection failed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedEvent {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub reason: String,
}

/// What went wrong: the failing event when there is one, else the store's error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<FailedEvent>,
    #[serde(with = "crate::envelope::rfc3339")]
    pub at: DateTime<Utc>,
}

impl Failure {
    pub fn from_error(e: &ProjectionError) -> Self {
        let event = match e {
            ProjectionError::Event {
                position,
                stream,
                version,
                reason,
                ..
            } => Some(FailedEvent {
                position: *position,
                stream: stream.clone(),
                version: *version,
                reason: reason.clone(),
            }),
            ProjectionError::Store(_) => None,
        };
        Self {
            message: e.to_string(),
            event,
            at: now(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RebuildState {
    Rebuilding,
    Failed,
    Done,
}

/// The last rebuild of a projection, as its status document records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildRecord {
    pub generation: u64,
    pub state: RebuildState,
    /// Feed position the new generation had reached, and the feed's head, at `updated_at`.
    pub processed: u64,
    pub total: u64,
    #[serde(with = "crate::envelope::rfc3339")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "crate::envelope::rfc3339")]
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Where a feed-less rebuild (stream by stream) resumes: the stream listing's cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl RebuildRecord {
    /// A rebuild of `generation` starting now.
    pub fn start(generation: u64) -> Self {
        let t = now();
        Self {
            generation,
            state: RebuildState::Rebuilding,
            processed: 0,
            total: 0,
            started_at: t,
            updated_at: t,
            failure: None,
            cursor: None,
        }
    }
}

fn rebuild_key(projection: &str) -> String {
    format!("{projection}/rebuild")
}

fn live_key(projection: &str) -> String {
    format!("{projection}/live")
}

async fn read_doc<T: for<'de> Deserialize<'de>>(
    store: &dyn ReadModelStore,
    key: &str,
) -> Result<Option<(u64, T)>, StoreError> {
    let Some(doc) = store.get(&ModelRef::active(STATUS_MODEL), key).await? else {
        return Ok(None);
    };
    // A status document this version can't read is reported as absent, not as an outage.
    Ok(serde_json::from_value(doc.body)
        .ok()
        .map(|body| (doc.version, body)))
}

/// Writes `body` over the document at `key` (each write one version on); false if another
/// writer moved it first.
async fn write_doc<T: Serialize>(
    store: &dyn ReadModelStore,
    key: &str,
    previous: u64,
    body: &T,
) -> Result<bool, StoreError> {
    let body = serde_json::to_value(body).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let applied = store
        .apply(
            &ModelRef::active(STATUS_MODEL),
            vec![DocWrite {
                key: key.to_owned(),
                version: previous + 1,
                body,
                index: Vec::new(),
            }],
            None,
        )
        .await?;
    Ok(applied == 1)
}

/// The rebuild record of `projection` and its document version (0 if none).
pub async fn rebuild_record(
    store: &dyn ReadModelStore,
    projection: &str,
) -> Result<(u64, Option<RebuildRecord>), StoreError> {
    Ok(match read_doc(store, &rebuild_key(projection)).await? {
        Some((v, r)) => (v, Some(r)),
        None => (0, None),
    })
}

/// Saves a rebuild record over document version `previous`; false if another writer (a
/// concurrent rebuild) moved it first.
pub async fn save_rebuild(
    store: &dyn ReadModelStore,
    projection: &str,
    previous: u64,
    record: &RebuildRecord,
) -> Result<bool, StoreError> {
    write_doc(store, &rebuild_key(projection), previous, record).await
}

/// The live runner's current failure, if it is failing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LiveRecord {
    failure: Option<Failure>,
}

/// Records (or, with `None`, clears) the live runner's failure. Best effort: losing a race
/// with another runner of the same projection leaves that runner's word.
pub async fn set_live_failure(
    store: &dyn ReadModelStore,
    projection: &str,
    failure: Option<Failure>,
) -> Result<(), StoreError> {
    let key = live_key(projection);
    let previous = read_doc::<LiveRecord>(store, &key).await?;
    let version = previous.as_ref().map_or(0, |(v, _)| *v);
    if previous.as_ref().map(|(_, r)| &r.failure) == Some(&failure)
        || (previous.is_none() && failure.is_none())
    {
        return Ok(());
    }
    write_doc(store, &key, version, &LiveRecord { failure }).await?;
    Ok(())
}

async fn live_failure(
    store: &dyn ReadModelStore,
    projection: &str,
) -> Result<Option<Failure>, StoreError> {
    Ok(read_doc::<LiveRecord>(store, &live_key(projection))
        .await?
        .and_then(|(_, r)| r.failure))
}

/// How far a projection's active generation trails the feed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lag {
    /// Feed positions not yet applied (of every aggregate type: the runner steps over all).
    pub events: u64,
    /// Age of the oldest event not yet applied; 0 when caught up.
    pub seconds: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionState {
    Live,
    /// Live, with a rebuild running beside it.
    Rebuilding,
    /// Live, beside a rebuild that stopped without finishing (its process went away); the
    /// next rebuild resumes it from its checkpoint.
    Interrupted,
    /// Live, but the last rebuild failed (on `failure`); the next rebuild resumes it.
    RebuildFailed,
    /// The live runner is stuck on `failure`: the read model is not moving.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub aggregate_type: String,
    pub state: ProjectionState,
    pub active_generation: u64,
    /// Feed position applied by the active generation; `None` without a feed (AWS, where a
    /// DynamoDB stream drives projections and IteratorAge is the lag).
    pub checkpoint: Option<u64>,
    pub lag: Option<Lag>,
    pub rebuild: Option<RebuildRecord>,
    /// Why the projection is failing, with the event it failed on when there is one.
    pub failure: Option<Failure>,
}

/// How far a follower of `feed` checkpointed at `at` trails it, and the feed's head.
pub async fn feed_lag(feed: &dyn EventFeed, at: u64) -> Result<(u64, Lag), StoreError> {
    let head = feed.feed_head().await?;
    let seconds = match feed.read_feed(at, 1).await?.first() {
        Some(next) => (now() - next.event.recorded_at)
            .to_std()
            .map_or(0.0, |d| d.as_secs_f64()),
        None => 0.0,
    };
    Ok((
        head,
        Lag {
            events: head.saturating_sub(at),
            seconds,
        },
    ))
}

/// The status of one projection.
pub async fn projection_status(
    store: &dyn ReadModelStore,
    feed: Option<&dyn EventFeed>,
    name: &str,
    aggregate_type: &str,
) -> Result<ProjectionStatus, StoreError> {
    let active = store.active_generation(name).await?;
    let (_, mut rebuild) = rebuild_record(store, name).await?;
    let mut checkpoint = None;
    let mut lag = None;
    if let Some(feed) = feed {
        let at = store
            .checkpoint(&ModelRef::generation(name, active))
            .await?;
        let (head, behind) = feed_lag(feed, at).await?;
        checkpoint = Some(at);
        lag = Some(behind);
        if let Some(r) = rebuild.as_mut() {
            if r.state == RebuildState::Rebuilding {
                // Fresher than the heartbeat: read the new generation's checkpoint now.
                r.processed = store
                    .checkpoint(&ModelRef::generation(name, r.generation))
                    .await?;
                r.total = head.max(r.processed);
            }
        }
    }
    let live = live_failure(store, name).await?;
    let (state, failure) = match (live, rebuild.as_ref().map(|r| r.state)) {
        (Some(f), _) => (ProjectionState::Failed, Some(f)),
        (None, Some(RebuildState::Rebuilding)) => {
            let stale = rebuild.as_ref().is_some_and(|r| {
                (now() - r.updated_at)
                    .to_std()
                    .is_ok_and(|d| d > REBUILD_STALE_AFTER)
            });
            if stale {
                (ProjectionState::Interrupted, None)
            } else {
                (ProjectionState::Rebuilding, None)
            }
        }
        (None, Some(RebuildState::Failed)) => (
            ProjectionState::RebuildFailed,
            rebuild.as_ref().and_then(|r| r.failure.clone()),
        ),
        (None, _) => (ProjectionState::Live, None),
    };
    Ok(ProjectionStatus {
        name: name.to_owned(),
        aggregate_type: aggregate_type.to_owned(),
        state,
        active_generation: active,
        checkpoint,
        lag,
        rebuild,
        failure,
    })
}
