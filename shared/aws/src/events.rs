//! The event store on DynamoDB: one item per event keyed by (stream, version), each guarded by
//! `attribute_not_exists`, so a version is stored once. A single event after a version the
//! caller knows is one conditional `PutItem` (the fewest write units: 1 per KB, and the time
//! index's); several events are one `TransactWriteItems`, stored whole or not at all. A
//! command's idempotency record is a claim written first (its own conditional `PutItem`, which
//! may also replace an expired record), naming the command's events: a reader of the key
//! finishes storing them or, when another command took their version, discards the claim, so a
//! key answers exactly the command that was stored under it.

use crate::backend;
use crate::item::{self, EventItem, IdempotencyItem, PK, SK};
use crate::outcome;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use chronicle_kernel::envelope::{format_timestamp, parse_timestamp};
use chronicle_kernel::{
    AppendError, AppendRequest, EventEnvelope, EventStore, Expiry, IdempotencyRecord, ReadRange,
    RecordedFeed, RecordedPage, StoreError, StoredHashes, StreamId, StreamListing, StreamPage,
};
use chrono::{DateTime, TimeDelta, Utc};
use futures::stream::{self as fstream, StreamExt, TryStreamExt};
use std::collections::HashMap;

/// DynamoDB's limit on the actions of one transaction.
pub const MAX_TRANSACTION_ACTIONS: usize = 100;

/// Hour buckets one `read_recorded` call scans at most (each a Query per shard). Past it the
/// page ends early with a cursor at the next hour: a long, quiet range costs many short calls
/// instead of one that runs past a Lambda's or a client's timeout.
pub const MAX_HOURS_PER_PAGE: usize = 24;

/// `UpdateItem`s one `expire` call keeps in flight: enough to hide latency, few enough not to
/// take a partition's whole write capacity from the command path.
const EXPIRE_CONCURRENCY: usize = 8;

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

/// Where a page of the audit feed continues: the items with a [`item::TIME_KEY`] above `key`.
/// `key` is the last returned item's, or the start of the next hour to scan (no `#`: below
/// every key of that hour).
struct TimeCursor {
    key: String,
    recorded_at: DateTime<Utc>,
}

impl TimeCursor {
    fn parse(cursor: &str) -> Result<Self, StoreError> {
        let invalid = |why: &str| StoreError::Invalid(format!("audit cursor `{cursor}`: {why}"));
        let key: String = serde_json::from_str(cursor).map_err(|e| invalid(&e.to_string()))?;
        // The recorded time as the store writes it: 27 characters, then nothing or `#...`.
        let recorded_at = key
            .get(..27)
            .and_then(|t| parse_timestamp(t).ok().filter(|p| format_timestamp(p) == t))
            .ok_or_else(|| invalid("no recorded time at its start"))?;
        if !(key.len() == 27 || key[27..].starts_with('#')) {
            return Err(invalid("not a key of the time index"));
        }
        Ok(Self { key, recorded_at })
    }

    fn encode(key: &str) -> Result<String, StoreError> {
        serde_json::to_string(key).map_err(|e| backend("audit cursor", e))
    }
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

    pub fn client(&self) -> &Client {
        &self.client
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

    /// One Query of one shard of one hour: up to `limit` events with time keys in `lo..=hi`,
    /// in key order, from `start`; and where to continue (`None`: the shard is read out).
    async fn query_time_shard(
        &self,
        bucket: &str,
        lo: &str,
        hi: &str,
        start: Option<Item>,
        limit: usize,
    ) -> Result<(Vec<(String, EventEnvelope)>, Option<Item>), StoreError> {
        // A GSI is read eventually consistent only: `consistent_read` would be refused.
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(item::TIME_INDEX)
            .key_condition_expression("#tb = :tb AND #ts BETWEEN :lo AND :hi")
            .expression_attribute_names("#tb", item::TIME_BUCKET)
            .expression_attribute_names("#ts", item::TIME_KEY)
            .expression_attribute_values(":tb", AttributeValue::S(bucket.to_owned()))
            .expression_attribute_values(":lo", AttributeValue::S(lo.to_owned()))
            .expression_attribute_values(":hi", AttributeValue::S(hi.to_owned()))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| backend("Query by_time", e))?;
        let mut out = Vec::new();
        for it in page.items.unwrap_or_default() {
            let Some(AttributeValue::S(key)) = it.get(item::TIME_KEY).cloned() else {
                return Err(StoreError::Corrupt(format!(
                    "an item of {} in {bucket} has no {}",
                    item::TIME_INDEX,
                    item::TIME_KEY
                )));
            };
            if let item::StoredItem::Event(e) = item::decode_item(it)? {
                out.push((key, *e));
            }
        }
        // Pages also stop at 1 MB: LastEvaluatedKey says where to go on either way.
        let next = page.last_evaluated_key.filter(|k| !k.is_empty());
        Ok((out, next))
    }

    /// The first `need` events of one hour with time keys in `lo..=hi` and above `after`,
    /// merged from every shard in key order, and whether the hour holds more. Each shard is
    /// read in chunks of about twice its share of `need` (streams spread evenly over shards),
    /// and a shard is read further only while its next key could still be among the first
    /// `need`: a page reads about twice what it returns, not `TIME_SHARDS` times.
    async fn read_time_hour(
        &self,
        hour: &str,
        lo: &str,
        hi: &str,
        after: Option<&str>,
        need: usize,
    ) -> Result<(Vec<(String, EventEnvelope)>, bool), StoreError> {
        struct Shard {
            bucket: String,
            buffered: std::collections::VecDeque<(String, EventEnvelope)>,
            next: Option<Item>,
            done: bool,
        }
        let chunk = (2 * need.div_ceil(item::TIME_SHARDS as usize))
            .max(8)
            .min(need + 1);
        let mut shards: Vec<Shard> = (0..item::TIME_SHARDS)
            .map(|s| Shard {
                bucket: item::time_bucket(hour, s),
                buffered: Default::default(),
                next: None,
                done: false,
            })
            .collect();
        let mut out = Vec::with_capacity(need);
        loop {
            // Every shard that may hold more but has nothing buffered is read on, at once.
            let reads = shards
                .iter_mut()
                .filter(|s| s.buffered.is_empty() && !s.done)
                .map(|s| {
                    let start = s.next.take();
                    async move {
                        let (items, next) = self
                            .query_time_shard(&s.bucket, lo, hi, start, chunk)
                            .await?;
                        // `lo` is inclusive: the cursor's own item comes back once.
                        s.buffered.extend(
                            items
                                .into_iter()
                                .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a)),
                        );
                        s.done = next.is_none();
                        s.next = next;
                        Ok::<_, StoreError>(())
                    }
                });
            futures::future::try_join_all(reads).await?;
            if shards.iter().any(|s| s.buffered.is_empty() && !s.done) {
                continue; // a chunk held only the cursor's item: read that shard on
            }
            // Every shard's next key is known: take the smallest until one runs dry.
            loop {
                if out.len() == need {
                    let more = shards.iter().any(|s| !s.buffered.is_empty() || !s.done);
                    return Ok((out, more));
                }
                let Some(min) = shards
                    .iter_mut()
                    .filter(|s| !s.buffered.is_empty())
                    .min_by(|a, b| a.buffered[0].0.cmp(&b.buffered[0].0))
                else {
                    return Ok((out, false));
                };
                let Some(taken) = min.buffered.pop_front() else {
                    return Ok((out, false));
                };
                out.push(taken);
                if min.buffered.is_empty() && !min.done {
                    break;
                }
            }
        }
    }
}

impl DynamoEventStore {
    /// The events of `request`, each guarded by `attribute_not_exists` on its (stream, version):
    /// one `PutItem` for a single event whose predecessor the caller knows exists (1 write unit,
    /// and the time index's one), else one `TransactWriteItems` (twice the units per item) with
    /// the check that the expected version exists unless the caller knows it.
    async fn put_events(&self, request: &AppendRequest) -> Result<(), PutFailed> {
        let first = &request.events[0];
        let checks_expected = request.expected_version > 0 && !request.expected_known;
        if request.events.len() == 1 && !checks_expected {
            let item =
                Self::to_item(&EventItem::from_envelope(first)).map_err(PutFailed::refused)?;
            let sent = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .send()
                .await;
            let err = match sent {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if err
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception())
            {
                // Taken: by this very put, if an SDK retry met its own first attempt.
                if outcome::committed(&self.client, &self.table, first)
                    .await
                    .map_err(PutFailed::unknown)?
                {
                    return Ok(());
                }
                return Err(PutFailed::refused(self.conflict(request).await));
            }
            let refused = refused_by_service(&err);
            // The answer may be lost, not the write: look before failing.
            return outcome::unless_committed(
                &self.client,
                &self.table,
                first,
                backend("PutItem", err),
            )
            .await
            .map_err(|e| PutFailed {
                error: e.into(),
                nothing_stored: refused,
            });
        }
        let mut actions = Vec::with_capacity(request.events.len() + 1);
        // Without this check an append at a stale-high expected version would leave a gap.
        if checks_expected {
            let check = ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(key(
                    &item::stream_key(&request.stream),
                    request.expected_version,
                )))
                .condition_expression("attribute_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .build()
                .map_err(|e| PutFailed::refused(StoreError::Invalid(e.to_string())))?;
            actions.push(TransactWriteItem::builder().condition_check(check).build());
        }
        for e in &request.events {
            let item = Self::to_item(&EventItem::from_envelope(e)).map_err(PutFailed::refused)?;
            actions.push(self.put(item).map_err(PutFailed::refused)?);
        }
        // The first event id names this attempt: an SDK retry of a transaction that did
        // commit (a timeout) is then answered as a success instead of a conflict.
        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .client_request_token(first.event_id.to_string())
            .send()
            .await;
        let err = match sent {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        match err.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(ex)) => {
                let codes: Vec<&str> = ex
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None"))
                    .collect();
                // Our own first event already there: an earlier attempt whose answer was lost
                // may have stored it (see `outcome`).
                let first_failed =
                    codes.get(usize::from(checks_expected)) == Some(&"ConditionalCheckFailed");
                if first_failed
                    && outcome::committed(&self.client, &self.table, first)
                        .await
                        .map_err(PutFailed::unknown)?
                {
                    return Ok(());
                }
                // A failed guard, or another transaction on the same items right now: both
                // mean someone else is writing this stream.
                if codes
                    .iter()
                    .any(|c| *c == "ConditionalCheckFailed" || *c == "TransactionConflict")
                {
                    return Err(PutFailed::refused(self.conflict(request).await));
                }
                let why = format!(
                    "transaction cancelled on {}: reasons {codes:?}",
                    request.stream
                );
                // A cancelled transaction wrote nothing.
                if codes.iter().any(|c| crate::THROTTLING_CODES.contains(c)) {
                    return Err(PutFailed::refused(StoreError::Unavailable(why)));
                }
                Err(PutFailed::refused(StoreError::Backend(why)))
            }
            _ => {
                let refused = refused_by_service(&err);
                outcome::unless_committed(
                    &self.client,
                    &self.table,
                    first,
                    backend("TransactWriteItems", err),
                )
                .await
                .map_err(|e| PutFailed {
                    error: e.into(),
                    nothing_stored: refused,
                })
            }
        }
    }

    /// The conflict `request` ran into, with the stream's version now.
    async fn conflict(&self, request: &AppendRequest) -> AppendError {
        match self.stream_version(&request.stream).await {
            Ok(actual) => AppendError::Conflict {
                stream: request.stream.to_string(),
                expected: request.expected_version,
                actual,
            },
            Err(e) => e.into(),
        }
    }

    /// Takes the record's key for the command whose first event is `first`: a conditional
    /// `PutItem` onto a free or expired key. A key already holding this command's claim (an
    /// SDK retry met its own first attempt) is ours; any other is a duplicate.
    async fn claim(
        &self,
        record: &IdempotencyRecord,
        first: &EventEnvelope,
    ) -> Result<(), AppendError> {
        let sent = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Self::to_item(&IdempotencyItem::claiming(
                record, first,
            ))?))
            .condition_expression(IDEMPOTENCY_CONDITION)
            .set_expression_attribute_names(Some(idempotency_names()))
            .set_expression_attribute_values(Some(idempotency_values(record)))
            .send()
            .await;
        let err = match sent {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let taken = err
            .as_service_error()
            .is_some_and(|e| e.is_conditional_check_failed_exception());
        // Taken, or the answer lost: the record says whose it is.
        match self.read_record(&record.key).await {
            Ok(Some((_, Some(claim)))) if claim.id == first.event_id.to_string() => Ok(()),
            Ok(_) if taken => Err(AppendError::DuplicateIdempotencyKey(record.key.clone())),
            Ok(_) | Err(_) => Err(backend("PutItem (idempotency record)", err).into()),
        }
    }

    /// Gives up the claim of `record` for the command whose first event is `first` (its events
    /// can't be stored): the key is free again for a new attempt. Best effort: a claim left
    /// behind is discarded by the next reader of the key ([`Self::resolve`]).
    async fn release(&self, record: &IdempotencyRecord, first: &EventEnvelope) {
        if let Err(e) = self.delete_claim(&record.key, first).await {
            tracing::warn!(key = %record.key, error = %e, "an idempotency claim was left behind; its next reader discards it");
        }
    }

    /// Deletes the record under `key` if it still claims the command whose first event is
    /// `first`.
    async fn delete_claim(&self, key: &str, first: &EventEnvelope) -> Result<(), StoreError> {
        self.delete_claim_of(key, &first.event_id.to_string()).await
    }

    /// Deletes the record under `key` if it still claims the command whose first event has
    /// the id `claim_id`.
    async fn delete_claim_of(&self, key: &str, claim_id: &str) -> Result<(), StoreError> {
        let sent = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(self::key(&item::idempotency_key(key), 0)))
            .condition_expression("#claim = :id")
            .expression_attribute_names("#claim", item::CLAIM_ID)
            .expression_attribute_values(":id", AttributeValue::S(claim_id.to_owned()))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            // Already gone, or someone else's claim now: nothing of ours to delete.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(backend("DeleteItem (idempotency claim)", e)),
        }
    }

    /// The record under `key` as stored, live or not, and the claim it makes.
    async fn read_record(
        &self,
        key: &str,
    ) -> Result<Option<(IdempotencyRecord, Option<Claim>)>, StoreError> {
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
        let claim = match (&rec.claim_id, rec.claim_version) {
            (Some(id), Some(version)) => Some(Claim {
                id: id.clone(),
                version,
            }),
            _ => None,
        };
        Ok(Some((rec.into_record()?, claim)))
    }

    /// A live record that claims its key for events that may not be stored (its writer crashed,
    /// or its answer is on its way): finishes storing them, or discards the record when another
    /// command took their version (they can never be stored then). `None`: the key is free.
    async fn resolve(
        &self,
        record: IdempotencyRecord,
        claim: Option<Claim>,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        // Written with its events in one transaction: stored whenever the record is.
        let Some(claim) = claim else {
            return Ok(Some(record));
        };
        let at = EventAt {
            stream: record.stream.clone(),
            version: claim.version,
        };
        for _ in 0..3 {
            match self.stored_id(&at).await? {
                Some(id) if id == claim.id => return Ok(Some(record)),
                Some(_) => {
                    self.delete_claim_of(&record.key, &claim.id).await?;
                    return Ok(None);
                }
                None => {}
            }
            // Not there yet: store them as the claim's response has them (their chain links to
            // the event before, which is still the same: their version is free).
            let events: Vec<EventEnvelope> = record
                .response
                .get("events")
                .cloned()
                .and_then(|v| serde_json::from_value(v).ok())
                .filter(|e: &Vec<EventEnvelope>| {
                    e.first().is_some_and(|f| {
                        f.event_id.to_string() == claim.id && f.version == claim.version
                    })
                })
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "idempotency record {}: its response does not hold the events it claims",
                        record.key
                    ))
                })?;
            let request = AppendRequest {
                stream: record.stream.clone(),
                expected_version: claim.version - 1,
                events,
                idempotency: None,
                stored: Vec::new(),
                expected_known: true,
            };
            match self.put_events(&request).await.map_err(|f| f.error) {
                Ok(()) => return Ok(Some(record)),
                // Someone stored something there meanwhile: look again whose it is.
                Err(AppendError::Conflict { .. }) => continue,
                Err(AppendError::Store(e)) => return Err(e),
                Err(AppendError::DuplicateIdempotencyKey(k)) => {
                    return Err(StoreError::Corrupt(format!(
                        "storing the events claimed under key {k}"
                    )))
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "idempotency record {}: its events' version keeps changing hands",
            record.key
        )))
    }

    /// The id of the event stored at a stream's version, if any.
    async fn stored_id(&self, at: &EventAt) -> Result<Option<String>, StoreError> {
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .set_key(Some(key(&item::stream_key(&at.stream), at.version)))
            .projection_expression("event_id")
            .send()
            .await
            .map_err(|e| backend("GetItem", e))?;
        Ok(got
            .item
            .as_ref()
            .and_then(|it| it.get("event_id"))
            .and_then(|v| v.as_s().ok())
            .cloned())
    }
}

/// An append of events that failed, and whether it is known that nothing of it was stored
/// (the service refused it, or another command holds the version) or not (no answer).
struct PutFailed {
    error: AppendError,
    nothing_stored: bool,
}

impl PutFailed {
    fn refused(error: impl Into<AppendError>) -> Self {
        Self {
            error: error.into(),
            nothing_stored: true,
        }
    }

    fn unknown(error: impl Into<AppendError>) -> Self {
        Self {
            error: error.into(),
            nothing_stored: false,
        }
    }
}

/// Whether the service answered a request and refused it (a 4xx: throttled, invalid), so it
/// applied none of it; a 5xx or no answer leaves that unknown.
fn refused_by_service<E>(
    err: &aws_sdk_dynamodb::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> bool {
    matches!(err, aws_sdk_dynamodb::error::SdkError::ServiceError(ctx) if ctx.raw().status().is_client_error())
}

/// What a claim names: the first event of the command it holds the key for.
struct Claim {
    id: String,
    version: u64,
}

struct EventAt {
    stream: StreamId,
    version: u64,
}

/// An idempotency record's put goes onto a free key, or over a record that has expired by the
/// new one's recorded time (TTL deletes lazily, up to days later), by its expiry or, stored
/// before records expired, by the default retention after its recorded time.
const IDEMPOTENCY_CONDITION: &str =
    "attribute_not_exists(#pk) OR #exp <= :now OR (attribute_not_exists(#exp) AND #rec <= :legacy)";

fn idempotency_names() -> HashMap<String, String> {
    HashMap::from([
        ("#pk".to_owned(), PK.to_owned()),
        ("#exp".to_owned(), item::EXPIRES_AT.to_owned()),
        ("#rec".to_owned(), item::RECORDED_AT.to_owned()),
    ])
}

fn idempotency_values(r: &IdempotencyRecord) -> HashMap<String, AttributeValue> {
    // Whole seconds: an expiry E has passed at time t iff E <= floor(t).
    let now = r.recorded_at.timestamp();
    let legacy_cutoff = DateTime::from_timestamp(
        now.saturating_sub(
            i64::try_from(chronicle_kernel::DEFAULT_IDEMPOTENCY_RETENTION.as_secs())
                .unwrap_or(i64::MAX),
        ),
        0,
    )
    .unwrap_or(DateTime::<Utc>::MIN_UTC);
    HashMap::from([
        (":now".to_owned(), AttributeValue::N(now.to_string())),
        (
            ":legacy".to_owned(),
            AttributeValue::S(format_timestamp(&legacy_cutoff)),
        ),
    ])
}

#[async_trait]
impl EventStore for DynamoEventStore {
    async fn append(&self, request: &AppendRequest) -> Result<(), AppendError> {
        Self::check_request(request)?;
        // The key first, alone: a claim that names the command's events. Written before them,
        // so a crash between the two leaves a record the next reader completes or discards
        // (`idempotency_record`), never events whose key anyone could use again.
        if let Some(record) = &request.idempotency {
            self.claim(record, &request.events[0]).await?;
        }
        match self.put_events(request).await {
            Ok(()) => Ok(()),
            // Another command took the version (a conflict), or the service refused the write:
            // this claim's events are not stored, and can't be by this attempt.
            Err(PutFailed {
                error,
                nothing_stored: true,
            }) => {
                if let Some(record) = &request.idempotency {
                    self.release(record, &request.events[0]).await;
                }
                Err(error)
            }
            // Not known whether stored (no answer): the claim stays for the retry to resolve,
            // as it would after a crash.
            Err(PutFailed { error, .. }) => Err(error),
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
        // TTL deletes some time after the expiry: until then the item is there but counts not.
        match self.read_record(key).await? {
            Some((rec, claim)) if rec.is_live(Utc::now()) => self.resolve(rec, claim).await,
            _ => Ok(None),
        }
    }
}

#[async_trait]
impl StreamListing for DynamoEventStore {
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

/// No bulk lookup here: one strongly consistent ranged read per event.
#[async_trait]
impl StoredHashes for DynamoEventStore {
    async fn hashes_at(&self, at: &[(StreamId, u64)]) -> Result<Vec<Option<String>>, StoreError> {
        chronicle_kernel::hashes_by_reads(self, at).await
    }
}

#[async_trait]
impl Expiry for DynamoEventStore {
    /// Sets the TTL attribute on each listed event item whose stored hash is the given one
    /// (the archived copy's), so DynamoDB's TTL process deletes it later; an item that is gone
    /// or holds another hash is left alone and not counted. One `UpdateItem` per event.
    async fn expire(
        &self,
        stream: &StreamId,
        events: &[(u64, String)],
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let pk = item::stream_key(stream);
        let at = AttributeValue::N(at.timestamp().max(0).to_string());
        // Owned items: a closure over borrowed ones trips async_trait's `Send` check.
        let updates: Vec<_> = events
            .iter()
            .map(|(version, hash)| {
                let version = *version;
                let update = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(key(&pk, version)))
                    .update_expression("SET #exp = :at")
                    // Without attribute_exists an UpdateItem would create a bare item.
                    .condition_expression("attribute_exists(#pk) AND #h = :hash")
                    .expression_attribute_names("#exp", item::EXPIRES_AT)
                    .expression_attribute_names("#pk", PK)
                    .expression_attribute_names("#h", item::HASH)
                    .expression_attribute_values(":at", at.clone())
                    .expression_attribute_values(":hash", AttributeValue::S(hash.clone()));
                let stream = &*stream;
                async move {
                    match update.send().await {
                        Ok(_) => Ok(1u64),
                        Err(e)
                            if matches!(
                                e.as_service_error(),
                                Some(UpdateItemError::ConditionalCheckFailedException(_))
                            ) =>
                        {
                            tracing::warn!(%stream, version, "not expired: the stored event is gone or is not the archived one");
                            Ok(0)
                        }
                        Err(e) => Err(backend("UpdateItem expires_at", e)),
                    }
                }
            })
            .collect();
        fstream::iter(updates)
            .buffer_unordered(EXPIRE_CONCURRENCY)
            .try_fold(0u64, |n, m| async move { Ok(n + m) })
            .await
    }

    async fn unexpired(
        &self,
        stream: &StreamId,
        through: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            // The filter is applied after the read: items already marked still cost read units
            // (eventually consistent, half price), not the failed writes re-marking would.
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND #v <= :through")
                .filter_expression("attribute_not_exists(#exp)")
                .projection_expression("#v, #h")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#v", SK)
                .expression_attribute_names("#h", item::HASH)
                .expression_attribute_names("#exp", item::EXPIRES_AT)
                .expression_attribute_values(":pk", AttributeValue::S(item::stream_key(stream)))
                .expression_attribute_values(":through", AttributeValue::N(through.to_string()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| backend("Query unexpired", e))?;
            for it in page.items.unwrap_or_default() {
                let version = it
                    .get(SK)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse::<u64>().ok());
                let hash = it.get(item::HASH).and_then(|h| h.as_s().ok());
                // An item without a hash predates chains and is never archived.
                if let (Some(v), Some(h)) = (version, hash) {
                    out.push((v, h.clone()));
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl RecordedFeed for DynamoEventStore {
    /// Walks the hours of `from..=to` on the `by_time` index: each hour's shards are queried
    /// at once and merged by time key. Eventually consistent (a GSI has no strongly
    /// consistent reads): an event appears in the feed a moment after its append returns.
    async fn read_recorded(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<String>,
        limit: usize,
    ) -> Result<RecordedPage, StoreError> {
        if limit == 0 {
            return Err(StoreError::Invalid(
                "a page holds at least one event".into(),
            ));
        }
        let after = after.as_deref().map(TimeCursor::parse).transpose()?;
        let from_key = format_timestamp(&from);
        // `$` follows `#`: above every key recorded at `to`, below every later one.
        let hi = format!("{}$", format_timestamp(&to));
        let (start, after) = match after {
            Some(c) if c.key >= from_key => (c.recorded_at, Some(c.key)),
            _ => (from, None),
        };
        let lo = after.clone().unwrap_or(from_key);
        let mut events = Vec::new();
        if lo > hi {
            return Ok(RecordedPage { events, next: None });
        }
        let last = item::hour_of(&to);
        let mut hour = item::hour_of(&start);
        for _ in 0..MAX_HOURS_PER_PAGE {
            if hour > last {
                return Ok(RecordedPage { events, next: None });
            }
            let need = limit - events.len();
            let (found, more_here) = self
                .read_time_hour(&item::hour_label(&hour), &lo, &hi, after.as_deref(), need)
                .await?;
            let last_key = found.last().map(|(k, _)| k.clone());
            events.extend(found.into_iter().map(|(_, e)| e));
            if events.len() == limit {
                let more = more_here || hour < last;
                let next = match last_key {
                    Some(k) if more => Some(TimeCursor::encode(&k)?),
                    _ => None,
                };
                return Ok(RecordedPage { events, next });
            }
            match hour.checked_add_signed(TimeDelta::hours(1)) {
                Some(h) => hour = h,
                None => return Ok(RecordedPage { events, next: None }),
            }
        }
        // The budget ran out before `to`: carry on from the next hour's start.
        if hour > last {
            return Ok(RecordedPage { events, next: None });
        }
        Ok(RecordedPage {
            events,
            next: Some(TimeCursor::encode(&format_timestamp(&hour))?),
        })
    }
}
