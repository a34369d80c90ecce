//! The [`Publisher`] contract: every event reaches the consumer side, each aggregate's in the
//! order published, duplicates allowed, gaps never.

use crate::fixtures::{assert_events_eq, events, new_stream};
use chronicle_kernel::{EventEnvelope, Publisher};
use std::sync::Arc;

/// The [`Publisher`] contract. `read_back` returns everything published so far as the consumer
/// side sees it (the log file, the Kinesis stream). Every event arrives, each aggregate's in
/// the order published; consumers may see duplicates but never a gap.
pub async fn publisher_contract<P, F, Fut>(publisher: Arc<P>, read_back: F)
where
    P: Publisher,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<EventEnvelope>>,
{
    const CTX: &str = "Publisher";
    publisher
        .publish(&[])
        .await
        .unwrap_or_else(|e| panic!("{CTX}: publishing nothing must succeed: {e}"));
    let a = new_stream();
    let b = new_stream();
    let (ea, eb) = (events(&a, 0, 5), events(&b, 0, 3));
    // Interleaved, as a stream batch of two aggregates would be.
    let mut batch = Vec::new();
    for (i, e) in ea.iter().enumerate() {
        batch.push(e.clone());
        if let Some(e) = eb.get(i) {
            batch.push(e.clone());
        }
    }
    publisher
        .publish(&batch)
        .await
        .unwrap_or_else(|e| panic!("{CTX}: publish failed: {e}"));
    let more = events(&a, 5, 2);
    publisher
        .publish(&more)
        .await
        .unwrap_or_else(|e| panic!("{CTX}: second publish failed: {e}"));
    let got = read_back().await;
    for (stream, want) in [
        (&a, ea.iter().chain(&more).cloned().collect::<Vec<_>>()),
        (&b, eb.clone()),
    ] {
        let mut seen: Vec<EventEnvelope> = got
            .iter()
            .filter(|e| e.aggregate_id == stream.aggregate_id)
            .cloned()
            .collect();
        // Duplicates are allowed (at least once); their first arrivals must be in order.
        let mut firsts = Vec::new();
        for e in seen.drain(..) {
            if !firsts
                .iter()
                .any(|f: &EventEnvelope| f.event_id == e.event_id)
            {
                firsts.push(e);
            }
        }
        assert_events_eq(
            &firsts,
            &want,
            &format!("{CTX}: events of {stream} as consumed"),
        );
    }
}
