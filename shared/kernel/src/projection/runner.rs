//! The local runner: one projection fed from the store's ordered feed, a batch a step, each
//! event through the one stream step ([`StreamStep::push`]), with the checkpoint moved
//! atomically with the documents; and the rebuild of a new generation from the whole feed.

use super::model::{doc_write, Projection, Rebuilt};
use super::step::{Folded, Start, StreamStep};
use crate::admin::{self, Failure, RebuildRecord, RebuildState};
use crate::error::ProjectionError;
use crate::ports::{Doc, DocWrite, EventFeed, EventStore, ModelRef, ReadModelStore, StoreError};
use crate::schema::EventSchema;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What one step of a runner did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Feed events read (of every aggregate type).
    pub read: usize,
    /// Documents written.
    pub written: usize,
    /// The checkpoint after the step.
    pub position: u64,
}

/// Feeds one projection from the event feed into the read-model store.
pub struct ProjectionRunner {
    feed: Arc<dyn EventFeed>,
    /// Where a version gap the feed leaves is filled from.
    events: Arc<dyn EventStore>,
    store: Arc<dyn ReadModelStore>,
    projection: Arc<dyn Projection>,
    schema: Arc<EventSchema>,
    pub batch_size: usize,
    /// Feed events per step while rebuilding.
    pub rebuild_batch: usize,
    /// Documents as this runner last wrote them, so a step reads the store only for
    /// aggregates it hasn't seen.
    cache: std::sync::Mutex<DocCache>,
}

#[derive(Default)]
struct DocCache {
    generation: u64,
    docs: HashMap<String, Doc>,
}

/// Most documents the runner keeps in memory; past it the cache starts over.
const DOC_CACHE_CAPACITY: usize = 200_000;
/// Feed events per step while rebuilding: larger batches fold many events of an aggregate
/// into one document write.
const REBUILD_BATCH: usize = 20_000;

impl ProjectionRunner {
    pub fn new(
        feed: Arc<dyn EventFeed>,
        events: Arc<dyn EventStore>,
        store: Arc<dyn ReadModelStore>,
        projection: Arc<dyn Projection>,
        schema: Arc<EventSchema>,
    ) -> Self {
        Self {
            feed,
            events,
            store,
            projection,
            schema,
            batch_size: 1000,
            rebuild_batch: REBUILD_BATCH,
            cache: std::sync::Mutex::new(DocCache::default()),
        }
    }

    pub fn name(&self) -> &str {
        self.projection.name()
    }

    /// Reads the next batch after the model's checkpoint and applies it, atomically with the
    /// new checkpoint.
    pub async fn step(&self, generation: u64) -> Result<Step, ProjectionError> {
        self.step_with(generation, self.batch_size).await
    }

    async fn step_with(&self, generation: u64, batch_size: usize) -> Result<Step, ProjectionError> {
        let model = ModelRef::generation(self.projection.name(), generation);
        let after = self.store.checkpoint(&model).await?;
        let batch = self.feed.read_feed(after, batch_size).await?;
        let Some(last) = batch.last().map(|f| f.position) else {
            return Ok(Step {
                read: 0,
                written: 0,
                position: after,
            });
        };
        let read = batch.len();
        let step = StreamStep {
            events: self.events.as_ref(),
            read_models: self.store.as_ref(),
            model: &model,
            projection: self.projection.as_ref(),
            schema: &self.schema,
        };
        // Per aggregate: its step so far, each event pushed in feed order.
        let mut steps: HashMap<String, Folded> = HashMap::new();
        for fe in batch {
            let ev = fe.event;
            if ev.aggregate_type != self.projection.aggregate_type() {
                continue;
            }
            if !steps.contains_key(&ev.aggregate_id) {
                // A cached document is trusted only if this event continues it (or repeats
                // it): if another runner moved the model on, read what it wrote.
                let cached = self
                    .cached(generation, &ev.aggregate_id)
                    .filter(|d| ev.version <= d.version + 1);
                let start = match cached {
                    Some(d) => Start::Known(Some(d)),
                    None => Start::Read,
                };
                let begun = step.begin(ev.stream(), start).await?;
                steps.insert(ev.aggregate_id.clone(), begun);
            }
            let folded = steps.get_mut(&ev.aggregate_id).expect("inserted above");
            step.push(folded, fe.position, ev).await?;
        }
        let changed: Vec<Doc> = steps
            .into_values()
            .filter_map(|f| f.doc.filter(|_| f.changed))
            .collect();
        let writes: Vec<DocWrite> = changed
            .iter()
            .map(|d| {
                doc_write(
                    self.projection.as_ref(),
                    d.key.clone(),
                    d.version,
                    d.body.clone(),
                )
            })
            .collect();
        let written = self.store.apply(&model, writes, Some(last)).await?;
        self.remember(generation, changed);
        Ok(Step {
            read,
            written,
            position: last,
        })
    }

    fn cached(&self, generation: u64, key: &str) -> Option<Doc> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation != generation {
            return None;
        }
        cache.docs.get(key).cloned()
    }

    /// Caches documents once they are stored (never before: a failed apply must not leave
    /// the cache ahead of the store).
    fn remember(&self, generation: u64, docs: Vec<Doc>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation != generation || cache.docs.len() + docs.len() > DOC_CACHE_CAPACITY {
            cache.docs.clear();
            cache.generation = generation;
        }
        for d in docs {
            cache.docs.insert(d.key.clone(), d);
        }
    }

    /// Follows the feed until `shutdown` resolves, writing to whichever generation is active.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut failing = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let outcome = match self.store.active_generation(self.name()).await {
                Ok(generation) => self.step(generation).await,
                Err(e) => Err(e.into()),
            };
            let (idle, position) = match outcome {
                Ok(step) => {
                    if failing {
                        tracing::info!(projection = self.name(), "projection moving again");
                        if let Err(e) =
                            admin::set_live_failure(self.store.as_ref(), self.name(), None).await
                        {
                            tracing::warn!(projection = self.name(), error = %e, "recovery not recorded");
                        }
                    }
                    failing = false;
                    (step.read == 0, step.position)
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(projection = self.name(), error = %e, "projection stalled");
                        let failure = Some(Failure::from_error(&e));
                        if let Err(e) =
                            admin::set_live_failure(self.store.as_ref(), self.name(), failure).await
                        {
                            tracing::warn!(projection = self.name(), error = %e, "failure not recorded");
                        }
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

    /// Builds a new generation from the whole feed while the active one keeps serving, then
    /// switches reads to it. A rebuild that was interrupted or failed is resumed from its
    /// checkpoint. `progress(processed, total)` is called after every batch.
    pub async fn rebuild(
        &self,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Rebuilt, ProjectionError> {
        let name = self.projection.name();
        let store = self.store.as_ref();
        let active = self.store.active_generation(name).await?;
        let (mut doc_version, last) = admin::rebuild_record(store, name).await?;
        let unfinished = last.filter(|r| {
            r.generation == active + 1
                && matches!(r.state, RebuildState::Rebuilding | RebuildState::Failed)
        });
        let generation = active + 1;
        let (mut record, resumed_from) = match unfinished {
            Some(r) => {
                let at = self
                    .store
                    .checkpoint(&ModelRef::generation(name, generation))
                    .await?;
                (r, Some(at))
            }
            None => (RebuildRecord::start(generation), None),
        };
        record.state = RebuildState::Rebuilding;
        record.failure = None;
        // Claimed before anything is dropped: a second rebuild started at the same moment
        // loses this write and stops without touching the generation.
        self.save_record(&mut doc_version, &mut record).await?;
        if resumed_from.is_none() {
            self.store.drop_generation(name, generation).await?;
            if active > 1 {
                // A runner mid-step during the last switch may have written to the
                // generation that switch dropped; clear it again.
                self.store.drop_generation(name, active - 1).await?;
            }
        }
        let mut beat = std::time::Instant::now();
        let outcome: Result<(), ProjectionError> = async {
            loop {
                let head = self.feed.feed_head().await?;
                let step = self.step_with(generation, self.rebuild_batch).await?;
                let total = head.max(step.position);
                progress(step.position, total);
                if beat.elapsed() >= admin::REBUILD_HEARTBEAT {
                    beat = std::time::Instant::now();
                    (record.processed, record.total) = (step.position, total);
                    self.save_record(&mut doc_version, &mut record).await?;
                }
                if step.read == 0 {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = outcome {
            record.state = RebuildState::Failed;
            record.failure = Some(Failure::from_error(&e));
            if let Err(save) = self.save_record(&mut doc_version, &mut record).await {
                tracing::warn!(projection = name, error = %save, "rebuild failure not recorded");
            }
            return Err(e);
        }
        self.store.activate(name, generation).await?;
        self.store.drop_generation(name, active).await?;
        record.state = RebuildState::Done;
        record.processed = self
            .store
            .checkpoint(&ModelRef::generation(name, generation))
            .await?;
        record.total = record.processed;
        self.save_record(&mut doc_version, &mut record).await?;
        Ok(Rebuilt {
            generation,
            resumed_from,
        })
    }

    /// Saves the rebuild record one version on; another rebuild of the same projection that
    /// moved it first makes this one stop rather than race it.
    async fn save_record(
        &self,
        doc_version: &mut u64,
        record: &mut RebuildRecord,
    ) -> Result<(), ProjectionError> {
        record.updated_at = crate::envelope::now();
        if !admin::save_rebuild(self.store.as_ref(), self.name(), *doc_version, record).await? {
            return Err(StoreError::Invalid(format!(
                "another rebuild of `{}` is running",
                self.name()
            ))
            .into());
        }
        *doc_version += 1;
        Ok(())
    }
}
