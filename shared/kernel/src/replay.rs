//! Bulk replay: every aggregate of one type folded from the whole feed, no snapshots.

use crate::aggregate::{Aggregate, DomainEvent};
use crate::error::Error;
use crate::ports::EventFeed;
use crate::schema::EventSchema;
use std::collections::HashMap;
use std::sync::Arc;

/// Folds every `A` from the feed. The next batch is read while the current one is folded.
/// Returns each aggregate's state and version, and the number of events read.
pub async fn replay_all<A: Aggregate>(
    feed: Arc<dyn EventFeed>,
    schema: &EventSchema,
    batch: usize,
) -> Result<(HashMap<String, (u64, A)>, u64), Error> {
    let mut states: HashMap<String, (u64, A)> = HashMap::new();
    let mut read = 0u64;
    let fetch = |after: u64| {
        let feed = feed.clone();
        tokio::spawn(async move { feed.read_feed(after, batch).await })
    };
    let mut pending = fetch(0);
    loop {
        let events = pending
            .await
            .map_err(|e| Error::Decode(format!("replay reader: {e}")))??;
        let Some(last) = events.last().map(|f| f.position) else {
            break;
        };
        pending = fetch(last);
        read += events.len() as u64;
        for fe in events {
            let env = fe.event;
            if env.aggregate_type != A::TYPE {
                continue;
            }
            let env = schema.upcast(env)?;
            let event = A::Event::from_data(&env.event_type, &env.data).map_err(|e| {
                Error::Decode(format!(
                    "{}/{} v{}: {e}",
                    env.aggregate_type, env.aggregate_id, env.version
                ))
            })?;
            let slot = states
                .entry(env.aggregate_id)
                .or_insert_with(|| (0, A::default()));
            slot.1.evolve(&event);
            slot.0 = env.version;
        }
    }
    Ok((states, read))
}
