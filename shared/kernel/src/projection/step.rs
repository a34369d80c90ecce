//! The one projection step for one stream, which every runner takes: the local feed runner, the
//! DynamoDB stream handler and the stream-by-stream rebuild. It reads the stream's document
//! (unless the caller holds it), skips versions already applied, fills a version gap from the
//! event store, folds the rest and leaves one write.

use super::model::{doc_write, fold_event, Projection};
use crate::envelope::{EventEnvelope, StreamId};
use crate::error::ProjectionError;
use crate::ports::{Doc, DocWrite, EventStore, ModelRef, ReadModelStore, ReadRange};
use crate::schema::EventSchema;

/// What a step works with: the event store (for gaps), the read model it folds into, one
/// projection and its aggregate type's schema.
#[derive(Clone, Copy)]
pub struct StreamStep<'a> {
    pub events: &'a dyn EventStore,
    pub read_models: &'a dyn ReadModelStore,
    /// The read model (generation) the documents are read from and written to.
    pub model: &'a ModelRef,
    pub projection: &'a dyn Projection,
    pub schema: &'a EventSchema,
}

/// What the caller knows an event by, so a failure names it.
pub trait Origin: Copy + Send + Sync {
    /// The feed position a failure reports; 0 for an event not read from a feed.
    fn position(self) -> u64;
}

/// A feed position (the local runner).
impl Origin for u64 {
    fn position(self) -> u64 {
        self
    }
}

/// A record's index in a batch delivered from outside (a DynamoDB stream): no feed position.
impl Origin for usize {
    fn position(self) -> u64 {
        0
    }
}

/// Nothing: events read from the store (a rebuild), with no feed position.
impl Origin for () {
    fn position(self) -> u64 {
        0
    }
}

/// The stream's document as a step starts.
#[derive(Clone, Debug)]
pub enum Start {
    /// Read it from the read model.
    Read,
    /// The caller holds it (`None`: there is none yet).
    Known(Option<Doc>),
}

/// One stream's step so far.
#[derive(Debug)]
pub struct Folded {
    pub stream: StreamId,
    /// The document as folded so far; `None` if there is none.
    pub doc: Option<Doc>,
    /// Whether the step moved the document on: then it has one write to make.
    pub changed: bool,
    /// Events folded, those filling a gap included.
    pub folded: u64,
}

impl Folded {
    fn new(stream: StreamId, doc: Option<Doc>) -> Self {
        Self {
            stream,
            doc,
            changed: false,
            folded: 0,
        }
    }

    /// The one write that stores the document, if the step moved it on.
    pub fn into_write(self, projection: &dyn Projection) -> Option<DocWrite> {
        let doc = self.doc.filter(|_| self.changed)?;
        Some(doc_write(projection, doc.key, doc.version, doc.body))
    }
}

impl StreamStep<'_> {
    /// Folds one stream's events, in the order given, into its document: [`Self::begin`], then
    /// [`Self::push`] each event up to the first that fails. The failure, if any, names that
    /// event; what came before it is folded.
    pub async fn fold<T: Origin>(
        &self,
        stream: StreamId,
        start: Start,
        events: Vec<(T, EventEnvelope)>,
    ) -> (Folded, Option<(T, ProjectionError)>) {
        let Some(&(first, _)) = events.first() else {
            let doc = match start {
                Start::Known(doc) => doc,
                Start::Read => None,
            };
            return (Folded::new(stream, doc), None);
        };
        let mut out = match self.begin(stream.clone(), start).await {
            Ok(out) => out,
            Err(e) => return (Folded::new(stream, None), Some((first, e))),
        };
        for (at, event) in events {
            if let Err(e) = self.push(&mut out, at, event).await {
                return (out, Some((at, e)));
            }
        }
        (out, None)
    }

    /// Begins a stream's step at its document: the caller's, or read from the read model.
    pub async fn begin(&self, stream: StreamId, start: Start) -> Result<Folded, ProjectionError> {
        let doc = match start {
            Start::Known(doc) => doc,
            Start::Read => {
                self.read_models
                    .get(self.model, &stream.aggregate_id)
                    .await?
            }
        };
        Ok(Folded::new(stream, doc))
    }

    /// Takes the stream's next event. A version the document has applied is skipped (a replay
    /// or a duplicate); a version gap before it (events lost to a bisected or skipped batch,
    /// or a feed that skipped them) is filled from the event store first, and if the store
    /// doesn't hold the missing events yet the step fails at this event. Nothing is to be
    /// pushed after a failure.
    pub async fn push<T: Origin>(
        &self,
        out: &mut Folded,
        at: T,
        event: EventEnvelope,
    ) -> Result<(), ProjectionError> {
        let applied = out.doc.as_ref().map_or(0, |d| d.version);
        if event.version <= applied {
            return Ok(()); // seen already: a replay or a duplicate
        }
        if event.version > applied + 1 {
            self.fill_gap(out, applied, event.version, at).await?;
        }
        self.fold_one(out, event, at)
    }

    /// Folds the events between `applied` and `next` (both exclusive) from the event store.
    async fn fill_gap<T: Origin>(
        &self,
        out: &mut Folded,
        applied: u64,
        next: u64,
        at: T,
    ) -> Result<(), ProjectionError> {
        let (from, to) = (applied + 1, next - 1);
        let missing = self
            .events
            .read_stream(&out.stream, ReadRange::from(from).to(to))
            .await?;
        if missing.len() as u64 != to - applied {
            let reason = format!(
                "v{from}..v{to} are missing here and the event store does not hold them yet"
            );
            return Err(self.event_error(&out.stream, at, next, reason));
        }
        tracing::info!(stream = %out.stream, from, to, "filled a version gap from the event store");
        for m in missing {
            self.fold_one(out, m, at)?;
        }
        Ok(())
    }

    fn fold_one<T: Origin>(
        &self,
        out: &mut Folded,
        event: EventEnvelope,
        at: T,
    ) -> Result<(), ProjectionError> {
        let version = event.version;
        let body = fold_event(
            self.projection,
            self.schema,
            out.doc.as_ref().map(|d| &d.body),
            event,
        )
        .map_err(|reason| self.event_error(&out.stream, at, version, reason))?;
        match &mut out.doc {
            Some(doc) => (doc.version, doc.body) = (version, body),
            None => {
                out.doc = Some(Doc {
                    key: out.stream.aggregate_id.clone(),
                    version,
                    body,
                })
            }
        }
        out.changed = true;
        out.folded += 1;
        Ok(())
    }

    fn event_error<T: Origin>(
        &self,
        stream: &StreamId,
        at: T,
        version: u64,
        reason: String,
    ) -> ProjectionError {
        ProjectionError::Event {
            projection: self.projection.name().to_owned(),
            position: at.position(),
            stream: stream.to_string(),
            version,
            reason,
        }
    }

    /// The whole step for a stream whose document the caller doesn't hold (the DynamoDB stream
    /// handler): read it, fold, and write it once, what was folded before a failure too. A
    /// failed write fails the stream at its first event.
    pub async fn project<T: Origin>(
        &self,
        stream: StreamId,
        events: Vec<(T, EventEnvelope)>,
    ) -> Result<(), (T, ProjectionError)> {
        let Some(&(first, _)) = events.first() else {
            return Ok(());
        };
        let (folded, failed) = self.fold(stream, Start::Read, events).await;
        if let Some(write) = folded.into_write(self.projection) {
            if let Err(e) = self.read_models.apply(self.model, vec![write], None).await {
                return Err((first, e.into()));
            }
        }
        failed.map_or(Ok(()), Err)
    }
}
