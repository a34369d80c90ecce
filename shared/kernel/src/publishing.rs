//! Publishing: the one step that hands a batch of events, upcast to the current schema, to a
//! [`Publisher`] (the AWS publisher function on DynamoDB Streams calls it per batch), and the
//! runner that follows the event feed with it, with a durable checkpoint: the embedded
//! counterpart of that function. At least once: after a crash the last batch may go out again.

use crate::envelope::EventEnvelope;
use crate::error::Error;
use crate::ports::{EventFeed, ModelRef, Publisher, ReadModelStore};
use std::sync::Arc;
use std::time::Duration;

pub use crate::error::PublishRunError;

/// The checkpoint's name in the read-model store.
pub const PUBLISHER_CHECKPOINT: &str = "_publisher";

/// Brings a stored event to its type's current schema (the registry's `upcast`); an event of a
/// type without a schema is an error, never passed on as stored.
pub type Upcast<'a> = dyn Fn(EventEnvelope) -> Result<EventEnvelope, Error> + Send + Sync + 'a;

/// Where a batch stopped: the caller's index of the first event not published, and why. Every
/// event before it went out; a retry starts at it (events after it may have gone out too: at
/// least once).
#[derive(Debug)]
pub struct Unpublished {
    pub index: usize,
    pub error: PublishRunError,
}

/// Publishes one batch, each event upcast, in the order given: `events` holds each event with
/// the caller's index for it (ascending), or why it could not be decoded. Nothing at or after
/// the first event that can't be decoded or upcast goes out; with the publisher's failed
/// indexes (every event of an aggregate after its first failure among them) the first event
/// not published is where a retry keeps each aggregate's order.
pub async fn publish_batch(
    publisher: &dyn Publisher,
    upcast: &Upcast<'_>,
    events: impl IntoIterator<Item = (usize, Result<EventEnvelope, String>)>,
) -> Result<(), Unpublished> {
    let mut stop = None;
    let mut indexes = Vec::new();
    let mut out = Vec::new();
    for (index, event) in events {
        match event.map_err(Error::Decode).and_then(upcast) {
            Ok(e) => {
                indexes.push(index);
                out.push(e);
            }
            Err(e) => {
                stop = Some(Unpublished {
                    index,
                    error: e.into(),
                });
                break;
            }
        }
    }
    if out.is_empty() {
        return stop.map_or(Ok(()), Err);
    }
    if let Err(e) = publisher.publish(&out).await {
        // A failure that names no event is taken as the whole batch's.
        let first = e.failed.first().and_then(|&i| indexes.get(i));
        if let Some(&index) = first.or(indexes.first()) {
            return Err(Unpublished {
                index,
                error: e.into(),
            });
        }
    }
    stop.map_or(Ok(()), Err)
}

/// Follows the feed, publishing each batch with [`publish_batch`].
pub struct PublishRunner {
    feed: Arc<dyn EventFeed>,
    /// Keeps the checkpoint.
    read_models: Arc<dyn ReadModelStore>,
    publisher: Arc<dyn Publisher>,
    upcast: Arc<Upcast<'static>>,
    pub batch_size: usize,
}

impl PublishRunner {
    pub fn new(
        feed: Arc<dyn EventFeed>,
        read_models: Arc<dyn ReadModelStore>,
        publisher: Arc<dyn Publisher>,
        upcast: Arc<Upcast<'static>>,
    ) -> Self {
        Self {
            feed,
            read_models,
            publisher,
            upcast,
            batch_size: 500,
        }
    }

    fn model() -> ModelRef {
        ModelRef::generation(PUBLISHER_CHECKPOINT, 1)
    }

    /// Publishes the next batch after the checkpoint; returns how many events it read.
    pub async fn step(&self) -> Result<usize, PublishRunError> {
        let after = self.read_models.checkpoint(&Self::model()).await?;
        let batch = self.feed.read_feed(after, self.batch_size).await?;
        let positions: Vec<u64> = batch.iter().map(|f| f.position).collect();
        let Some(&last) = positions.last() else {
            return Ok(0);
        };
        let events = batch.into_iter().map(|fe| Ok(fe.event)).enumerate();
        match publish_batch(self.publisher.as_ref(), self.upcast.as_ref(), events).await {
            Ok(()) => {
                self.read_models
                    .apply(&Self::model(), Vec::new(), Some(last))
                    .await?;
                Ok(positions.len())
            }
            Err(stop) => {
                // What went out before the first failure is not sent again.
                let done = stop.index.checked_sub(1).and_then(|i| positions.get(i));
                if let Some(&done) = done {
                    let moved = self
                        .read_models
                        .apply(&Self::model(), Vec::new(), Some(done))
                        .await;
                    if let Err(e) = moved {
                        tracing::warn!(error = %e, "publisher checkpoint not moved");
                    }
                }
                Err(stop.error)
            }
        }
    }

    /// Follows the feed until `shutdown` turns true.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut failing = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let idle = match self.step().await {
                Ok(n) => {
                    failing = false;
                    n < self.batch_size
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "publishing stalled");
                    }
                    failing = true;
                    true
                }
            };
            if idle {
                let position = self
                    .read_models
                    .checkpoint(&Self::model())
                    .await
                    .unwrap_or(u64::MAX);
                let wait = Duration::from_millis(if failing { 1000 } else { 250 });
                tokio::select! {
                    _ = self.feed.wait_for_events(position, wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}
