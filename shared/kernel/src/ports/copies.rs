//! What a store offers beyond streams where it keeps copies elsewhere (an archive) or can
//! check every chain in one pass. Only the stores that can do a thing implement its trait.

use super::events::{EventStore, ReadRange};
use crate::chain::check::{ChainBreak, VerifyReport};
use crate::envelope::StreamId;
use crate::error::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Stored hashes by (stream, version): how copies kept elsewhere (an archive) are held to
/// the store's chain.
#[async_trait]
pub trait StoredHashes: Send + Sync + 'static {
    /// The stored hash of each (stream, version), `None` where the store doesn't hold that
    /// event.
    async fn hashes_at(&self, at: &[(StreamId, u64)]) -> Result<Vec<Option<String>>, StoreError>;
}

/// [`StoredHashes::hashes_at`] for a store without a bulk lookup: one ranged read per event,
/// 16 at a time.
pub async fn hashes_by_reads<E: EventStore + ?Sized>(
    store: &E,
    at: &[(StreamId, u64)],
) -> Result<Vec<Option<String>>, StoreError> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(at.to_vec())
        .map(|(s, v)| async move {
            let e = store.read_stream(&s, ReadRange::from(v).to(v)).await?;
            Ok::<_, StoreError>(e.into_iter().next().map(|e| e.hash))
        })
        .buffered(16)
        .try_collect()
        .await
}

/// Hot copies of archived events that expire (a DynamoDB TTL). The embedded store is
/// append-only and keeps every event, so it does not implement this.
#[async_trait]
pub trait Expiry: Send + Sync + 'static {
    /// Marks hot copies of archived events to expire at `at`, each only if its stored hash is
    /// the one given, which is the archived copy's. Returns how many were marked. Nothing is
    /// deleted by this call, ever.
    async fn expire(
        &self,
        stream: &StreamId,
        events: &[(u64, String)],
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
    /// The stream's hot events up to `through` not yet marked to expire, as (version, hash):
    /// what an interrupted archiver run left unmarked.
    async fn unexpired(
        &self,
        stream: &StreamId,
        through: u64,
    ) -> Result<Vec<(u64, String)>, StoreError>;
}

/// A bulk path for verifying every stream's hash chain, each held to its latest snapshot's
/// recorded head where the store keeps snapshots too. Without one the kernel verifies stream
/// by stream through [`crate::ports::StreamListing`] and [`EventStore::read_stream`], which
/// must find the same breaks.
#[async_trait]
pub trait BulkVerify: Send + Sync + 'static {
    /// `progress` gets streams done so far.
    async fn verify_all_chains(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<VerifyReport, StoreError>;
}

/// Copies of events kept beside the store's own (an archive): their chains, and that they
/// agree with the store.
#[async_trait]
pub trait CopyAudit: Send + Sync + 'static {
    /// Breaks found across every copy; `progress` gets events checked so far.
    async fn verify_copies(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Vec<ChainBreak>, StoreError>;
    /// [`CopyAudit::verify_copies`] for one stream.
    async fn verify_stream_copies(
        &self,
        stream: &StreamId,
    ) -> Result<Option<ChainBreak>, StoreError>;
}
