//! The kernel's command handler on a real event store: what `Idempotency-Key` means to a
//! client, inside the retention and after it. A tiny tally aggregate stands in for a domain.

use crate::fixtures::{expired_idempotency_record, request, unique};
use chronicle_kernel::{
    Aggregate, CommandHandler, CommandOptions, DomainError, DomainEvent, Error, EventSchema,
    EventStore, HandlerConfig, IdempotencyRecord, ReadRange, SnapshotStore, StreamId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running total: the suites' aggregate for commands.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tally {
    total: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Add {
    pub by: i64,
}

#[derive(Clone, Debug)]
pub struct Added(i64);

const ADDED: &str = "TallyAdded";

impl DomainEvent for Added {
    fn event_type(&self) -> &'static str {
        ADDED
    }
    fn to_data(&self) -> Value {
        json!({ "by": self.0 })
    }
    fn from_data(event_type: &str, data: &Value) -> Result<Self, String> {
        match (event_type, data["by"].as_i64()) {
            (ADDED, Some(by)) => Ok(Added(by)),
            _ => Err(format!("not a tally event: {event_type} {data}")),
        }
    }
}

#[derive(Debug)]
pub struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

impl std::error::Error for Never {}

impl DomainError for Never {
    fn code(&self) -> &'static str {
        "never"
    }
}

impl Aggregate for Tally {
    const TYPE: &'static str = "ContractTally";
    const STATE_VERSION: u32 = 1;
    type Command = Add;
    type Event = Added;
    type Error = Never;
    type View = Value;

    fn schema() -> EventSchema {
        EventSchema::new().event(ADDED, 1)
    }
    fn decide(&self, command: &Add) -> Result<Vec<Added>, Never> {
        Ok(vec![Added(command.by)])
    }
    fn evolve(&mut self, event: &Added) {
        self.total += event.0;
    }
    fn exists(&self) -> bool {
        true
    }
    fn view(&self, id: &str, version: u64) -> Value {
        json!({ "id": id, "version": version, "total": self.total })
    }
}

fn keyed(key: &str) -> CommandOptions {
    CommandOptions {
        idempotency_key: Some(key.to_owned()),
        ..CommandOptions::default()
    }
}

/// What commands with an `Idempotency-Key` do on `events`, through the kernel's handler:
///
/// - inside the retention a repeat is answered from the record (`replayed`, the same result,
///   nothing appended) and the key with another command is `IdempotencyKeyReused`;
/// - the record's expiry is the kernel's (`recorded_at` + retention, whole seconds);
/// - after it (a record whose expiry has passed, and a record made with a one-second retention
///   once the store reads it as expired) the key is free: the repeat runs again, and its new
///   record answers the next repeat.
pub async fn command_idempotency_contract<E: EventStore, S: SnapshotStore>(
    events: Arc<E>,
    snapshots: Arc<S>,
) {
    const CTX: &str = "commands with an idempotency key";
    let handler = |retention: Duration| {
        CommandHandler::<Tally, E, S>::new(
            events.clone(),
            snapshots.clone(),
            HandlerConfig {
                snapshot_every: 0,
                cache_capacity: 0,
                idempotency_retention: retention,
                ..HandlerConfig::default()
            },
        )
    };
    let hour = handler(Duration::from_secs(3600));
    let id = unique("tally");
    let stream = StreamId::new(Tally::TYPE, &id);
    let version = || async {
        events
            .stream_version(&stream)
            .await
            .unwrap_or_else(|e| panic!("{CTX}: stream_version: {e}"))
    };

    // Inside the retention.
    let key = unique("pay");
    let first = hour
        .handle(&id, Add { by: 5 }, keyed(&key))
        .await
        .unwrap_or_else(|e| panic!("{CTX}: first command: {e}"));
    assert!(
        !first.replayed && first.result.version == 1,
        "{CTX}: {first:?}"
    );
    let record = events
        .idempotency_record(&key)
        .await
        .unwrap_or_else(|e| panic!("{CTX}: idempotency_record: {e}"))
        .unwrap_or_else(|| panic!("{CTX}: the command's record must be stored"));
    assert_eq!(
        record.expires_at,
        IdempotencyRecord::expiry(record.recorded_at, Duration::from_secs(3600)),
        "{CTX}: the stored expiry must be the kernel's (recorded_at + retention, whole seconds)"
    );
    let repeat = hour
        .handle(&id, Add { by: 5 }, keyed(&key))
        .await
        .unwrap_or_else(|e| panic!("{CTX}: repeat: {e}"));
    assert!(
        repeat.replayed,
        "{CTX}: a repeat inside the retention must replay"
    );
    assert_eq!(
        repeat.result, first.result,
        "{CTX}: a replay answers as the first did"
    );
    match hour.handle(&id, Add { by: 6 }, keyed(&key)).await {
        Err(Error::IdempotencyKeyReused { key: k }) => assert_eq!(k, key),
        other => panic!("{CTX}: the key with another command must be refused, got {other:?}"),
    }
    assert_eq!(version().await, 1, "{CTX}: neither appended anything");

    // After the retention: a record that expired an hour ago, still stored, frees its key.
    let key = unique("pay");
    let elsewhere = crate::new_stream();
    let mut old = expired_idempotency_record(&key, &elsewhere);
    old.fingerprint = CommandHandler::<Tally, E, S>::fingerprint(&id, &Add { by: 7 })
        .unwrap_or_else(|e| panic!("{CTX}: fingerprint: {e}"));
    let mut req = request(&elsewhere, 0, crate::events(&elsewhere, 0, 1));
    req.idempotency = Some(old);
    events
        .append(&req)
        .await
        .unwrap_or_else(|e| panic!("{CTX}: storing an expired record: {e:?}"));
    let again = hour
        .handle(&id, Add { by: 7 }, keyed(&key))
        .await
        .unwrap_or_else(|e| panic!("{CTX}: a command under an expired key: {e}"));
    assert!(
        !again.replayed && again.result.version == 2,
        "{CTX}: under an expired key the command must run again: {again:?}"
    );
    let replay = hour
        .handle(&id, Add { by: 7 }, keyed(&key))
        .await
        .unwrap_or_else(|e| panic!("{CTX}: repeat: {e}"));
    assert!(
        replay.replayed && replay.result == again.result,
        "{CTX}: the new record answers the next repeat: {replay:?}"
    );

    // A one-second retention, for real: once the store reads the record as expired, the same
    // command with the same key runs again, and another one under it is refused by the new one.
    let second = handler(Duration::from_secs(1));
    let key = unique("pay");
    let before = second
        .handle(&id, Add { by: 1 }, keyed(&key))
        .await
        .unwrap_or_else(|e| panic!("{CTX}: command with a 1 s retention: {e}"));
    assert_eq!(before.result.version, 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = events
            .idempotency_record(&key)
            .await
            .unwrap_or_else(|e| panic!("{CTX}: idempotency_record: {e}"));
        match r {
            None => break,
            Some(r) if Instant::now() > deadline => {
                panic!("{CTX}: a record with a 1 s retention still reads as live: {r:?}")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    // Run by the hour handler: the renewed record must outlive the check below on a slow
    // machine (a 1 s record written here could expire again before it).
    let after = hour
        .handle(&id, Add { by: 1 }, keyed(&key))
        .await
        .unwrap_or_else(|e| panic!("{CTX}: repeat after the retention: {e}"));
    assert!(
        !after.replayed && after.result.version == 4,
        "{CTX}: a repeat after the retention must run again: {after:?}"
    );
    match hour.handle(&id, Add { by: 2 }, keyed(&key)).await {
        Err(Error::IdempotencyKeyReused { .. }) => {}
        other => panic!("{CTX}: the renewed key with another command, got {other:?}"),
    }
    let all = events
        .read_stream(&stream, ReadRange::all())
        .await
        .unwrap_or_else(|e| panic!("{CTX}: read_stream: {e}"));
    assert_eq!(
        all.iter()
            .map(|e| e.data["by"].as_i64())
            .collect::<Vec<_>>(),
        [Some(5), Some(7), Some(1), Some(1)],
        "{CTX}: one event per command that ran"
    );
}
