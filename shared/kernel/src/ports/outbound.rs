//! Calls out of the store: the port a reaction reaches an outside service through (an email or
//! SMS provider, a payment service, a partner's webhook). The domain registers an adapter per
//! port name; Chronicle calls it at least once per decision, with the same key every time.

use async_trait::async_trait;
use serde_json::Value;

/// Why a call did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The service answered no (a 4xx, a rule of its own): an answer, not retried. It is
    /// logged and counted in the reaction's status.
    #[error("refused: {0}")]
    Refused(String),
    /// It failed or did not answer: the call is made again (same key) until it goes through.
    #[error("failed: {0}")]
    Failed(String),
}

/// An outside service a reaction calls through.
#[async_trait]
pub trait Outbound: Send + Sync + 'static {
    /// Makes the call. `key` is the same on every redelivery of the decision that made it and
    /// different for any other: hand it to the service as its idempotency key (a header, a
    /// deduplication id) so a repeat does nothing.
    async fn call(&self, key: &str, payload: &Value) -> Result<(), OutboundError>;
}
