//! Follows the event feed and hands every event, upcast to the current schema, to a
//! [`Publisher`], with a durable checkpoint: the embedded counterpart of the AWS publisher
//! function on DynamoDB Streams. At least once: after a crash the last batch may go out again.

use crate::ports::{EventFeed, ModelRef, Publisher, ReadModelStore, StoreError};
use crate::schema::EventSchema;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The checkpoint's name in the read-model store.
pub const PUBLISHER_CHECKPOINT: &str = "_publisher";

pub struct PublishRunner {
    pub(crate) feed: Arc<dyn EventFeed>,
    pub(crate) store: Arc<dyn ReadModelStore>,
    pub(crate) publisher: Arc<dyn Publisher>,
    pub(crate) schemas: HashMap<String, Arc<EventSchema>>,
    pub batch_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishRunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] crate::ports::PublishError),
}

impl PublishRunner {
    fn model() -> ModelRef {
        ModelRef::generation(PUBLISHER_CHECKPOINT, 1)
    }

    /// Publishes the next batch after the checkpoint; returns how many events it read.
    pub async fn step(&self) -> Result<usize, PublishRunError> {
        let after = self.store.checkpoint(&Self::model()).await?;
        let batch = self.feed.read_feed(after, self.batch_size).await?;
        let Some(last) = batch.last().map(|f| f.position) else {
            return Ok(0);
        };
        let read = batch.len();
        let mut events = Vec::with_capacity(read);
        for fe in batch {
            match self.schemas.get(&fe.event.aggregate_type) {
                Some(schema) => match schema.upcast(fe.event) {
                    Ok(e) => events.push(e),
                    // Never skipped silently: the runner stalls here and says why.
                    Err(e) => return Err(StoreError::Corrupt(e.to_string()).into()),
                },
                None => events.push(fe.event), // a type this process doesn't know: as stored
            }
        }
        self.publisher.publish(&events).await?;
        self.store
            .apply(&Self::model(), Vec::new(), Some(last))
            .await?;
        Ok(read)
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
                    .store
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
