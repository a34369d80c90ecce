//! The event store on DynamoDB: one item per event keyed by (stream, version); a command's
//! events and its idempotency record go in one `TransactWriteItems`, each guarded by
//! `attribute_not_exists`, so a command is stored whole or not at all.

use crate::backend;
use crate::item::{self, EventItem, IdempotencyItem, PK, SK};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use chronicle_kernel::{
    AppendError, AppendRequest, EventEnvelope, EventStore, IdempotencyRecord, ReadRange,
    StoreError, StreamId, StreamPage,
};
use std::collections::HashMap;

/// DynamoDB's limit on the actions of one transaction.
pub const MAX_TRANSACTION_ACTIONS: usize = 100;

#[derive(Clone, Debug)]
pub struct DynamoEventStore {
    client: Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

fn key(stream: &str, version: u64) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(stream.to_owned())),
        (SK.to_owned(), AttributeValue::N(version.to_string())),
    ])
}

impl DynamoEventStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The most events one append can carry: the transaction also holds the idempotency
    /// record and, past version 0, the check that the expected version exists.
    pub const MAX_EVENTS_PER_APPEND: usize = MAX_TRANSACTION_ACTIONS - 2;

    fn put(&self, item: Item) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .build()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    fn check_request(request: &AppendRequest) -> Result<(), StoreError> {
        if request.events.is_empty() {
            return Err(StoreError::Invalid(
                "an append needs at least one event".into(),
            ));
        }
        for (i, e) in request.events.iter().enumerate() {
            let want = request.expected_version + 1 + i as u64;
            if e.aggregate_type != request.stream.aggregate_type
                || e.aggregate_id != request.stream.aggregate_id
            {
                return Err(StoreError::Invalid(format!(
                    "event {} belongs to {}, not {}",
                    e.event_id,
                    e.stream(),
                    request.stream
                )));
            }
            if e.version != want {
                return Err(StoreError::Invalid(format!(
                    "event {i} of the append has version {}, expected {want}",
                    e.version
                )));
            }
        }
        let actions = request.events.len()
            + usize::from(request.idempotency.is_some())
            + usize::from(request.expected_version > 0);
        if actions > MAX_TRANSACTION_ACTIONS {
            return Err(StoreError::Invalid(format!(
                "a command may append at most {} events in one DynamoDB transaction; this one has {}",
                MAX_TRANSACTION_ACTIONS
                    - usize::from(request.idempotency.is_some())
                    - usize::from(request.expected_version > 0),
                request.events.len()
            )));
        }
        Ok(())
    }

    fn to_item<T: serde::Serialize>(value: &T) -> Result<Item, StoreError> {
        serde_dynamo::to_item(value).map_err(|e| StoreError::Invalid(e.to_string()))
    }
}

#[async_trait]
impl EventStore for DynamoEventStore {
    async fn append(&self, request: &AppendRequest) -> Result<(), AppendError> {
        Self::check_request(request)?;
        let stream = item::stream_key(&request.stream);
        let mut actions = Vec::with_capacity(request.events.len() + 2);
        // Without this check an append at a stale-high expected version would leave a gap.
        let checks_expected = request.expected_version > 0;
        if checks_expected {
            let check = ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(key(&stream, request.expected_version)))
                .condition_expression("attribute_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .build()
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            actions.push(TransactWriteItem::builder().condition_check(check).build());
        }
        for e in &request.events {
            actions.push(self.put(Self::to_item(&EventItem::from_envelope(e))?)?);
        }
        let idempotency_at = request.idempotency.as_ref().map(|_| actions.len());
        if let Some(r) = &request.idempotency {
            actions.push(self.put(Self::to_item(&IdempotencyItem::from_record(r))?)?);
        }
        // The first event id names this attempt: an SDK retry of a transaction that did
        // commit (a timeout) is then answered as a success instead of a conflict.
        let token = request.events[0].event_id.to_string();
        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .client_request_token(token)
            .send()
            .await;
        let err = match sent {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let service = err.as_service_error();
        match service {
            Some(TransactWriteItemsError::TransactionCanceledException(ex)) => {
                let codes: Vec<&str> = ex
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None"))
                    .collect();
                let failed = |i: usize| codes.get(i) == Some(&"ConditionalCheckFailed");
                if let (Some(i), Some(r)) = (idempotency_at, &request.idempotency) {
                    if failed(i) {
                        return Err(AppendError::DuplicateIdempotencyKey(r.key.clone()));
                    }
                }
                // A failed guard, or another transaction on the same items right now: both
                // mean someone else is writing this stream.
                if codes
                    .iter()
                    .any(|c| *c == "ConditionalCheckFailed" || *c == "TransactionConflict")
                {
                    let actual = self.stream_version(&request.stream).await?;
                    return Err(AppendError::Conflict {
                        stream: request.stream.to_string(),
                        expected: request.expected_version,
                        actual,
                    });
                }
                Err(StoreError::Backend(format!(
                    "transaction cancelled on {}: reasons {codes:?}",
                    request.stream
                ))
                .into())
            }
            _ => Err(backend("TransactWriteItems", err).into()),
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: ReadRange,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let to = range.to_version.unwrap_or(u64::MAX);
        if range.to_version.is_some_and(|t| t < range.from_version) || range.limit == Some(0) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("#pk = :pk AND #v BETWEEN :from AND :to")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#v", SK)
                .expression_attribute_values(":pk", AttributeValue::S(item::stream_key(stream)))
                .expression_attribute_values(
                    ":from",
                    AttributeValue::N(range.from_version.to_string()),
                )
                .expression_attribute_values(":to", AttributeValue::N(to.to_string()))
                .set_exclusive_start_key(start.take());
            if let Some(limit) = range.limit {
                q = q.limit(i32::try_from(limit - out.len()).unwrap_or(i32::MAX));
            }
            let page = q.send().await.map_err(|e| backend("Query", e))?;
            for it in page.items.unwrap_or_default() {
                if let item::StoredItem::Event(e) = item::decode_item(it)? {
                    out.push(*e);
                }
            }
            // Pages stop at 1 MB: follow LastEvaluatedKey until the range or limit is done.
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() && range.limit.is_none_or(|l| out.len() < l) => {
                    start = Some(k)
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#v", SK)
            .expression_attribute_values(":pk", AttributeValue::S(item::stream_key(stream)))
            .scan_index_forward(false)
            .limit(1)
            .projection_expression("#v")
            .send()
            .await
            .map_err(|e| backend("Query", e))?;
        match page
            .items
            .unwrap_or_default()
            .first()
            .and_then(|i| i.get(SK))
        {
            None => Ok(0),
            Some(AttributeValue::N(n)) => n.parse().map_err(|_| {
                StoreError::Corrupt(format!("{stream}: version `{n}` is not a number"))
            }),
            Some(other) => Err(StoreError::Corrupt(format!(
                "{stream}: version is {other:?}, not a number"
            ))),
        }
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .set_key(Some(self::key(&item::idempotency_key(key), 0)))
            .send()
            .await
            .map_err(|e| backend("GetItem", e))?;
        let Some(it) = got.item else { return Ok(None) };
        let rec: IdempotencyItem = serde_dynamo::from_item(it)
            .map_err(|e| StoreError::Corrupt(format!("idempotency record {key}: {e}")))?;
        rec.into_record().map(Some)
    }

    async fn list_streams(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<StreamPage, StoreError> {
        // A Scan projecting the keys: a stream's items are stored together, so a stream shows
        // up once per page it spans; the cursor carries the last one to skip its repeats.
        let (start, mut last) = match cursor {
            Some(c) => {
                let (stream, version, last): (String, u64, String) = serde_json::from_str(&c)
                    .map_err(|e| StoreError::Invalid(format!("stream cursor `{c}`: {e}")))?;
                (Some(key(&stream, version)), last)
            }
            None => (None, String::new()),
        };
        let page = self
            .client
            .scan()
            .table_name(&self.table)
            .projection_expression("#pk, #v, aggregate_type, aggregate_id")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#v", SK)
            .limit(i32::try_from(limit.max(1)).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| backend("Scan", e))?;
        let mut streams = Vec::new();
        for it in page.items.unwrap_or_default() {
            let text = |name: &str| match it.get(name) {
                Some(AttributeValue::S(s)) => Some(s.clone()),
                _ => None,
            };
            let Some(pk) = text(PK) else { continue };
            if pk.starts_with(item::IDEMPOTENCY_PREFIX) || pk == last {
                continue;
            }
            let (Some(t), Some(id)) = (text("aggregate_type"), text("aggregate_id")) else {
                return Err(StoreError::Corrupt(format!(
                    "event item {pk} has no aggregate_type or aggregate_id"
                )));
            };
            streams.push(StreamId::new(t, id));
            last = pk;
        }
        let next = match page.last_evaluated_key {
            Some(k) if !k.is_empty() => {
                let (Some(AttributeValue::S(pk)), Some(AttributeValue::N(v))) =
                    (k.get(PK), k.get(SK))
                else {
                    return Err(StoreError::Corrupt(format!("unexpected scan key {k:?}")));
                };
                let v: u64 = v
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("scan key version `{v}`")))?;
                Some(serde_json::to_string(&(pk, v, &last)).map_err(|e| backend("Scan", e))?)
            }
            _ => None,
        };
        Ok(StreamPage { streams, next })
    }
}
