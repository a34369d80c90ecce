//! Publishing events to other services.

use crate::envelope::EventEnvelope;
use crate::error::PublishError;
use async_trait::async_trait;

/// Distributes events (upcast to the current schema) to other services: Kinesis on AWS, a
/// JSON-lines log on the embedded default. At least once; consumers deduplicate on
/// (aggregate_type, aggregate_id, version).
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `events`, each aggregate's in the order given.
    async fn publish(&self, events: &[EventEnvelope]) -> Result<(), PublishError>;
}
