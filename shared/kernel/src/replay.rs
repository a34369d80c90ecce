//! Bulk replay: every aggregate of one type folded from the whole history, no snapshots.

use crate::aggregate::{Aggregate, DomainEvent};
use crate::error::Error;
use crate::ports::{BulkReplay, RawEvent};
use crate::schema::EventSchema;
use rustc_hash::FxHashMap;

/// Folds every `A` from the feed's raw events. Events already in their current schema version
/// decode straight from their JSON text; older ones go through the upcasters.
/// Returns each aggregate's version and state, and the number of events read.
pub async fn replay_all<A: Aggregate>(
    feed: &dyn BulkReplay,
    schema: &EventSchema,
    batch: usize,
) -> Result<(FxHashMap<String, (u64, A)>, u64), Error> {
    let mut states: FxHashMap<String, (u64, A)> = FxHashMap::default();
    let mut read = 0u64;
    let mut rx = feed.replay_raw(A::TYPE, batch);
    while let Some(events) = rx.recv().await {
        let events = events?;
        read += events.len() as u64;
        for raw in events.iter() {
            let event = decode_raw::<A>(schema, &raw)?;
            match states.get_mut(raw.aggregate_id) {
                Some(slot) => {
                    slot.1.evolve(&event);
                    slot.0 = raw.version;
                }
                None => {
                    let mut state = A::default();
                    state.evolve(&event);
                    states.insert(raw.aggregate_id.to_owned(), (raw.version, state));
                }
            }
        }
    }
    Ok((states, read))
}

/// Decodes one raw event into the domain's type, upcasting it when it is not current.
pub fn decode_raw<A: Aggregate>(
    schema: &EventSchema,
    raw: &RawEvent<'_>,
) -> Result<A::Event, Error> {
    let name = || format!("{}/{}", A::TYPE, raw.aggregate_id);
    let decode_err = |e: String| Error::Decode(format!("{} v{}: {e}", name(), raw.version));
    if schema.current_version(raw.event_type) == Some(raw.schema_version) {
        return A::Event::from_json(raw.event_type, raw.data).map_err(decode_err);
    }
    let data = serde_json::from_str(raw.data).map_err(|e| decode_err(e.to_string()))?;
    let (data, _) =
        schema.upcast_data(raw.event_type, raw.schema_version, data, name, raw.version)?;
    A::Event::from_data(raw.event_type, &data).map_err(decode_err)
}
