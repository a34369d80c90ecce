//! Whether an append whose answer went missing stored anyway. A `TransactWriteItems` can
//! commit and still come back as a failure: the answer is lost (a timeout, a 500), and the
//! SDK's retry of the same transaction then meets its own writes, which DynamoDB answers as a
//! success (same `ClientRequestToken`) but an emulator may answer as a cancelled conflict.
//! Either way the event stored at the append's first version tells: if it is this append's
//! own first event (its id is new with every attempt the kernel makes), the append committed.

use crate::backend;
use crate::item::{self, PK, SK};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chronicle_kernel::{EventEnvelope, StoreError};
use std::collections::HashMap;
use std::time::Duration;

/// Reads of the outcome, each with the SDK's own retries: the answer decides between a
/// success and a 503, so it is worth a little more patience than an ordinary read.
const ATTEMPTS: u32 = 4;

/// Whether `first` (an append's first event) is the event stored at its stream and version.
pub(crate) async fn committed(
    client: &Client,
    table: &str,
    first: &EventEnvelope,
) -> Result<bool, StoreError> {
    let key = HashMap::from([
        (
            PK.to_owned(),
            AttributeValue::S(item::stream_key(&first.stream())),
        ),
        (SK.to_owned(), AttributeValue::N(first.version.to_string())),
    ]);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let got = client
            .get_item()
            .table_name(table)
            .consistent_read(true)
            .set_key(Some(key.clone()))
            .projection_expression("event_id")
            .send()
            .await;
        match got {
            Ok(out) => {
                let stored = out
                    .item
                    .as_ref()
                    .and_then(|it| it.get("event_id"))
                    .and_then(|v| v.as_s().ok());
                return Ok(stored.is_some_and(|id| *id == first.event_id.to_string()));
            }
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(stream = %first.stream(), version = first.version, attempt, error = %aws_sdk_dynamodb::error::DisplayErrorContext(&e), "reading an append's outcome failed; again");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(e) => return Err(backend("GetItem (the outcome of an append)", e)),
        }
    }
}

/// `Ok` if the append whose first event is `first` committed after all, else `failure`; when
/// even that can't be read, `failure` says the outcome is unknown (a retry with the same
/// `Idempotency-Key` is then the safe way on).
pub(crate) async fn unless_committed(
    client: &Client,
    table: &str,
    first: &EventEnvelope,
    failure: StoreError,
) -> Result<(), StoreError> {
    match committed(client, table, first).await {
        Ok(true) => {
            tracing::info!(stream = %first.stream(), version = first.version, error = %failure, "the append failed but had committed: its answer was lost");
            Ok(())
        }
        Ok(false) => Err(failure),
        Err(check) => {
            let note =
                |m: String| format!("{m}; whether the append was stored is unknown ({check})");
            Err(match failure {
                StoreError::Backend(m) => StoreError::Backend(note(m)),
                StoreError::Unavailable(m) => StoreError::Unavailable(note(m)),
                other => other,
            })
        }
    }
}
