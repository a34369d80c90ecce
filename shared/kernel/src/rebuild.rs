//! Rebuilding a read model without an ordered feed (AWS, where a DynamoDB stream drives the
//! projections): every stream of the projection's aggregate type is folded whole into a new
//! generation, page by page of `StreamListing::list_streams`, with the page cursor as the
//! checkpoint an interrupted rebuild resumes from. Documents are per aggregate, so the order of
//! aggregates doesn't matter.
//!
//! Events appended while it runs go to the active generation (the stream-driven projector
//! writes there), so after switching reads to the new one a second pass brings every document
//! up to its stream's version; the projector's own gap filling covers what arrives after.

use crate::admin::{self, Failure, RebuildRecord, RebuildState};
use crate::envelope::StreamId;
use crate::ports::{Doc, DocWrite, EventLog, ModelRef, ReadModelStore, ReadRange, StoreError};
use crate::projection::{Projection, ProjectionError, Rebuilt, Start, StreamStep};
use crate::schema::EventSchema;

/// Streams per page of the store's stream listing, by default.
pub const PAGE: usize = 500;

pub struct StreamRebuild<'a> {
    pub events: &'a dyn EventLog,
    pub store: &'a dyn ReadModelStore,
    pub projection: &'a dyn Projection,
    pub schema: &'a EventSchema,
    /// Streams per page: each page is one write of documents and one checkpoint.
    pub page: usize,
}

/// Progress: events folded and streams done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamProgress {
    pub events: u64,
    pub streams: u64,
}

impl StreamRebuild<'_> {
    /// Folds `stream` past its document's version to its end through the one stream step;
    /// the write, `None` if there is nothing new, and the events folded.
    async fn fold(
        &self,
        model: &ModelRef,
        stream: &StreamId,
        doc: Option<Doc>,
    ) -> Result<(Option<DocWrite>, u64), ProjectionError> {
        let after = doc.as_ref().map_or(0, |d| d.version);
        let events = self
            .events
            .read_stream(stream, ReadRange::from(after + 1))
            .await?;
        let step = StreamStep {
            events: self.events,
            read_models: self.store,
            model,
            projection: self.projection,
            schema: self.schema,
        };
        // Not from a feed: failures name no position.
        let events = events.into_iter().map(|e| ((), e)).collect();
        let (folded, failed) = step.fold(stream.clone(), Start::Known(doc), events).await;
        if let Some(((), e)) = failed {
            return Err(e);
        }
        let n = folded.folded;
        Ok((folded.into_write(self.projection), n))
    }

    /// One pass over every stream of the projection's type, from `cursor`, writing into
    /// `generation`; `catch_up` folds only what each document is missing.
    async fn pass(
        &self,
        generation: u64,
        catch_up: bool,
        record: &mut RebuildRecord,
        doc_version: &mut u64,
        progress: &mut dyn FnMut(StreamProgress),
        done: &mut StreamProgress,
    ) -> Result<(), ProjectionError> {
        let name = self.projection.name();
        let model = ModelRef::generation(name, generation);
        loop {
            let page = self
                .events
                .list_streams(record.cursor.clone(), self.page.max(1))
                .await?;
            let mut writes = Vec::new();
            for stream in page
                .streams
                .iter()
                .filter(|s| s.aggregate_type == self.projection.aggregate_type())
            {
                let doc = if catch_up {
                    self.store.get(&model, &stream.aggregate_id).await?
                } else {
                    None
                };
                let (write, n) = self.fold(&model, stream, doc).await?;
                writes.extend(write);
                done.events += n;
                done.streams += 1;
            }
            self.store.apply(&model, writes, None).await?;
            record.cursor = page.next;
            record.processed = done.events;
            record.total = done.events;
            save(self.store, name, doc_version, record).await?;
            progress(*done);
            if record.cursor.is_none() {
                return Ok(());
            }
        }
    }

    /// Builds a new generation from every stream, switches reads to it, then catches it up.
    /// An unfinished earlier rebuild (interrupted or failed) is resumed from its cursor.
    pub async fn run(
        &self,
        mut progress: impl FnMut(StreamProgress),
    ) -> Result<Rebuilt, ProjectionError> {
        let name = self.projection.name();
        let active = self.store.active_generation(name).await?;
        let generation = active + 1;
        let (mut doc_version, last) = admin::rebuild_record(self.store, name).await?;
        let unfinished = last.filter(|r| {
            r.generation == generation
                && matches!(r.state, RebuildState::Rebuilding | RebuildState::Failed)
        });
        let resumed_from = unfinished.as_ref().map(|r| r.processed);
        let mut record = match unfinished {
            Some(r) => r,
            None => RebuildRecord::start(generation),
        };
        record.state = RebuildState::Rebuilding;
        record.failure = None;
        // Claimed before anything is dropped (see `ProjectionRunner::rebuild`).
        save(self.store, name, &mut doc_version, &mut record).await?;
        if resumed_from.is_none() {
            self.store.drop_generation(name, generation).await?;
        }
        let mut done = StreamProgress {
            events: record.processed,
            streams: 0,
        };
        let built = self
            .pass(
                generation,
                false,
                &mut record,
                &mut doc_version,
                &mut progress,
                &mut done,
            )
            .await;
        if let Err(e) = built {
            record.state = RebuildState::Failed;
            record.failure = Some(Failure::from_error(&e));
            if let Err(save_err) = save(self.store, name, &mut doc_version, &mut record).await {
                tracing::warn!(projection = name, error = %save_err, "rebuild failure not recorded");
            }
            return Err(e);
        }
        self.store.activate(name, generation).await?;
        self.store.drop_generation(name, active).await?;
        // The catch-up pass: events the live projector wrote to the old generation meanwhile.
        done.streams = 0;
        record.cursor = None;
        self.pass(
            generation,
            true,
            &mut record,
            &mut doc_version,
            &mut progress,
            &mut done,
        )
        .await?;
        record.state = RebuildState::Done;
        save(self.store, name, &mut doc_version, &mut record).await?;
        Ok(Rebuilt {
            generation,
            resumed_from,
        })
    }
}

async fn save(
    store: &dyn ReadModelStore,
    name: &str,
    doc_version: &mut u64,
    record: &mut RebuildRecord,
) -> Result<(), ProjectionError> {
    record.updated_at = crate::envelope::now();
    if !admin::save_rebuild(store, name, *doc_version, record).await? {
        return Err(StoreError::Invalid(format!("another rebuild of `{name}` is running")).into());
    }
    *doc_version += 1;
    Ok(())
}
