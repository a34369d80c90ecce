//! Publishing to Kinesis: partition key the aggregate id, so each aggregate's events land on
//! one shard in order; records a `PutRecords` call fails are retried with backoff.

use async_trait::async_trait;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, PutRecordsResultEntry};
use aws_sdk_kinesis::Client;
use chronicle_kernel::{EventEnvelope, PublishError, Publisher};
use std::collections::HashSet;
use std::time::Duration;

/// Kinesis takes at most 500 records per `PutRecords`.
const MAX_RECORDS_PER_CALL: usize = 500;
const MAX_ATTEMPTS: u32 = 6;

#[derive(Clone, Debug)]
pub struct KinesisPublisher {
    client: Client,
    stream: String,
}

impl KinesisPublisher {
    pub fn new(client: Client, stream: impl Into<String>) -> Self {
        Self {
            client,
            stream: stream.into(),
        }
    }

    /// Sends `pending` (indexes into `events`) once; returns the indexes still to send: for
    /// each aggregate, everything from its first failed record on, so a retry keeps its order.
    async fn round(&self, events: &[EventEnvelope], pending: &[usize]) -> (Vec<usize>, String) {
        let mut blocked: HashSet<(&str, &str)> = HashSet::new();
        let mut left = Vec::new();
        let mut reason = String::new();
        for chunk in pending.chunks(MAX_RECORDS_PER_CALL) {
            // An aggregate that failed in an earlier chunk sends nothing more this round.
            let (send, held): (Vec<usize>, Vec<usize>) = chunk.iter().partition(|&&i| {
                !blocked.contains(&(
                    events[i].aggregate_type.as_str(),
                    events[i].aggregate_id.as_str(),
                ))
            });
            left.extend(held);
            let mut entries = Vec::with_capacity(send.len());
            for &i in &send {
                let e = &events[i];
                let payload = match serde_json::to_vec(e) {
                    Ok(p) => p,
                    Err(err) => {
                        reason = format!("event {} does not serialize: {err}", e.event_id);
                        blocked.insert((&e.aggregate_type, &e.aggregate_id));
                        left.push(i);
                        continue;
                    }
                };
                match PutRecordsRequestEntry::builder()
                    .partition_key(&e.aggregate_id)
                    .data(Blob::new(payload))
                    .build()
                {
                    Ok(entry) => entries.push((i, entry)),
                    Err(err) => {
                        reason = err.to_string();
                        blocked.insert((&e.aggregate_type, &e.aggregate_id));
                        left.push(i);
                    }
                }
            }
            if entries.is_empty() {
                continue;
            }
            let (idx, records): (Vec<usize>, Vec<_>) = entries.into_iter().unzip();
            let sent = self
                .client
                .put_records()
                .stream_name(&self.stream)
                .set_records(Some(records))
                .send()
                .await;
            match sent {
                Err(e) => {
                    reason = format!(
                        "PutRecords: {}",
                        aws_smithy_types::error::display::DisplayErrorContext(e)
                    );
                    for &i in &idx {
                        blocked.insert((&events[i].aggregate_type, &events[i].aggregate_id));
                        left.push(i);
                    }
                }
                Ok(out) => {
                    let results = out.records();
                    if let Some(r) = results.iter().find(|r| r.error_code().is_some()) {
                        reason = format!(
                            "{}: {}",
                            r.error_code().unwrap_or(""),
                            r.error_message().unwrap_or("")
                        );
                    }
                    let failed = failed_entries(results, idx.len());
                    let count = failed.iter().filter(|f| **f).count();
                    if out.failed_record_count().is_some_and(|n| n > 0) && count == 0 {
                        reason = "FailedRecordCount > 0 but no record says which".into();
                    }
                    settle(events, &idx, &failed, &mut blocked, &mut left);
                }
            }
        }
        left.sort_unstable();
        (left, reason)
    }
}

/// Which of a `PutRecords` call's `n` records did not land: those with an error code, those
/// without a sequence number (Kinesis gives one to every stored record), and those past the
/// end of a short answer. A record counts as delivered only on Kinesis's word.
fn failed_entries(results: &[PutRecordsResultEntry], n: usize) -> Vec<bool> {
    (0..n)
        .map(|k| {
            results
                .get(k)
                .is_none_or(|r| r.error_code().is_some() || r.sequence_number().is_none())
        })
        .collect()
}

/// After one `PutRecords` of `sent` (indexes into `events`, in order): adds to `left` every
/// record that failed and every later record of an aggregate that had a failure, so the retry
/// delivers each aggregate's events in order from its first failure on.
fn settle<'a>(
    events: &'a [EventEnvelope],
    sent: &[usize],
    failed: &[bool],
    blocked: &mut HashSet<(&'a str, &'a str)>,
    left: &mut Vec<usize>,
) {
    for (k, &i) in sent.iter().enumerate() {
        let key = (
            events[i].aggregate_type.as_str(),
            events[i].aggregate_id.as_str(),
        );
        if failed.get(k).copied().unwrap_or(true) || blocked.contains(&key) {
            blocked.insert(key);
            left.push(i);
        }
    }
}

#[async_trait]
impl Publisher for KinesisPublisher {
    async fn publish(&self, events: &[EventEnvelope]) -> Result<(), PublishError> {
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let mut reason = String::new();
        for attempt in 0..MAX_ATTEMPTS {
            if pending.is_empty() {
                return Ok(());
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            let (left, why) = self.round(events, &pending).await;
            if !why.is_empty() {
                tracing::warn!(stream = %self.stream, failed = left.len(), reason = %why, "Kinesis records failed; retrying");
                reason = why;
            }
            pending = left;
        }
        if pending.is_empty() {
            return Ok(());
        }
        Err(PublishError {
            total: events.len(),
            failed: pending,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(id: &str, version: u64) -> EventEnvelope {
        EventEnvelope {
            event_id: uuid::Uuid::new_v4(),
            aggregate_type: "widgets".into(),
            aggregate_id: id.into(),
            version,
            event_type: "Deposited".into(),
            schema_version: 2,
            data: json!({}),
            metadata: Default::default(),
            recorded_at: chronicle_kernel::envelope::now(),
            hash: String::new(),
        }
    }

    fn pending(events: &[EventEnvelope], failed: &[bool]) -> Vec<(String, u64)> {
        let sent: Vec<usize> = (0..events.len()).collect();
        let mut left = Vec::new();
        settle(events, &sent, failed, &mut HashSet::new(), &mut left);
        left.iter()
            .map(|&i| (events[i].aggregate_id.clone(), events[i].version))
            .collect()
    }

    #[test]
    fn only_records_kinesis_numbered_count_as_delivered() {
        let ok = PutRecordsResultEntry::builder()
            .sequence_number("1")
            .shard_id("s")
            .build();
        let throttled = PutRecordsResultEntry::builder()
            .error_code("ProvisionedThroughputExceededException")
            .error_message("Rate exceeded")
            .build();
        let blank = PutRecordsResultEntry::builder().build();
        assert_eq!(
            failed_entries(&[ok.clone(), throttled, blank, ok], 5),
            vec![false, true, true, false, true]
        );
    }

    #[test]
    fn a_failed_record_holds_back_the_rest_of_its_aggregate_only() {
        let events = [ev("a", 1), ev("a", 2), ev("b", 1), ev("a", 3), ev("b", 2)];
        assert_eq!(pending(&events, &[false; 5]), vec![]);
        // a v2 failed: a v3 (accepted) goes again after it; b is done.
        assert_eq!(
            pending(&events, &[false, true, false, false, false]),
            vec![("a".into(), 2), ("a".into(), 3)]
        );
        assert_eq!(
            pending(&events, &[true, false, false, false, true]),
            vec![
                ("a".into(), 1),
                ("a".into(), 2),
                ("a".into(), 3),
                ("b".into(), 2)
            ]
        );
        // A short response: the unanswered records count as failed.
        assert_eq!(
            pending(&events, &[false, false, false]),
            vec![("a".into(), 3), ("b".into(), 2)]
        );
    }
}
