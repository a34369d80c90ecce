//! Follows the event feed and hands every event, upcast to the current schema, to a
//! [`Publisher`], with a durable checkpoint: the embedded counterpart of the AWS publisher
//! function on DynamoDB Streams. At least once: after a crash the last batch may go out again.

use crate::ports::{EventFeed, ModelRef, Publisher};
use crate::service::Chronicle;
use std::sync::Arc;
use std::time::Duration;

/// The checkpoint's name in the read-model store.
pub const PUBLISHER_CHECKPOINT: &str = "_publisher";

pub struct PublishRunner {
    pub(crate) feed: Arc<dyn EventFeed>,
    /// The registry: its schemas upcast, its read-model store keeps the checkpoint.
    pub(crate) chronicle: Chronicle,
    pub(crate) publisher: Arc<dyn Publisher>,
    pub batch_size: usize,
}

pub use crate::error::PublishRunError;

impl PublishRunner {
    fn model() -> ModelRef {
        ModelRef::generation(PUBLISHER_CHECKPOINT, 1)
    }

    /// Publishes the next batch after the checkpoint; returns how many events it read.
    pub async fn step(&self) -> Result<usize, PublishRunError> {
        let after = self
            .chronicle
            .read_models()
            .checkpoint(&Self::model())
            .await?;
        let batch = self.feed.read_feed(after, self.batch_size).await?;
        let Some(last) = batch.last().map(|f| f.position) else {
            return Ok(0);
        };
        let read = batch.len();
        let events = batch
            .into_iter()
            .map(|fe| self.chronicle.upcast(fe.event))
            .collect::<Result<Vec<_>, _>>()?;
        self.publisher.publish(&events).await?;
        self.chronicle
            .read_models()
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
                    .chronicle
                    .read_models()
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
