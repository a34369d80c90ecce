//! What every Kinesis consumer here does with a batch: records in order, a failed record
//! holding back the rest of its partition (its aggregate, the publisher's partition key) and
//! reported by sequence number, so Lambda retries from it and each aggregate's records stay
//! in order; other partitions go on.

use aws_lambda_events::kinesis::KinesisEvent;
use aws_lambda_events::streams::{KinesisBatchItemFailure, KinesisEventResponse};
use std::collections::HashSet;
use std::future::Future;

/// Runs `handle` on each record of `event` (by its index), stopping a partition at its first
/// failure (logged with `what`); answers with the first failed record, if any.
pub async fn by_partition<F, Fut>(
    event: &KinesisEvent,
    what: &str,
    mut handle: F,
) -> KinesisEventResponse
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut stopped: HashSet<&str> = HashSet::new();
    let mut first_failed: Option<usize> = None;
    for (i, r) in event.records.iter().enumerate() {
        let partition = r.kinesis.partition_key.as_str();
        // Anchors share the stream; they are not events.
        if partition == chronicle_aws::ANCHOR_PARTITION {
            continue;
        }
        if stopped.contains(partition) {
            continue; // this aggregate resumes from its failed record on the retry
        }
        if let Err(reason) = handle(i).await {
            tracing::error!(sequence_number = %r.kinesis.sequence_number, %reason, "{what} record failed; stopping this aggregate here");
            stopped.insert(partition);
            first_failed.get_or_insert(i);
        }
    }
    let mut out = KinesisEventResponse::default();
    if let Some(i) = first_failed {
        let mut f = KinesisBatchItemFailure::default();
        f.item_identifier = Some(event.records[i].kinesis.sequence_number.clone());
        out.batch_item_failures.push(f);
    }
    out
}
