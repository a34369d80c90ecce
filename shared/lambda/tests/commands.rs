//! Commands on the AWS adapters: conditional-write conflicts under concurrency, idempotent
//! repeats after a timeout, and the transaction-size limit.

mod common;

use chronicle_aws::DynamoEventStore;
use chronicle_kernel::{
    AppendError, CommandOptions, Error, EventStore, ReadRange, StoreError, StreamId,
};
use chronicle_lambda::App;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_aggregate_store_each_acknowledged_one_exactly_once() {
    const N: u32 = 32;
    let Some((env, app)) = common::app("concurrent commands", 100).await else {
        return;
    };
    open_with(&app, "hot", "hal", &[]).await;
    // One App per command: 32 Lambda instances, no shared cache or lock, only DynamoDB's
    // conditional writes between them.
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let app = App::new(
                env.clients.clone(),
                env.settings.clone(),
                chronicle_accounts::domain(),
            );
            tokio::spawn(async move {
                let amount = 1u64 << i;
                (
                    amount,
                    run(&app, "hot", json!({"type": "Deposit", "amount": amount})).await,
                )
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for t in tasks {
        let (amount, r) = t.await.expect("task");
        match r {
            Ok(_) => acknowledged.push(amount),
            // Retries ran out under contention: the client is told, nothing is stored.
            Err(Error::Conflict { .. }) => {}
            Err(e) => panic!("deposit {amount}: unexpected error {e}"),
        }
    }
    assert!(!acknowledged.is_empty());
    let events = app
        .events
        .read_stream(&StreamId::new("accounts", "hot"), ReadRange::all())
        .await
        .expect("read");
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "gapless"
    );
    let mut stored: Vec<u64> = events
        .iter()
        .filter(|e| e.event_type == "Deposited")
        .map(|e| e.data["amount"].as_u64().expect("an amount"))
        .collect();
    stored.sort_unstable();
    acknowledged.sort_unstable();
    assert_eq!(
        stored, acknowledged,
        "every acknowledged deposit stored exactly once, no other"
    );
    let state = app
        .chronicle
        .aggregate("accounts")
        .expect("accounts")
        .state("hot", None)
        .await
        .expect("state");
    assert_eq!(state.body["balance"], acknowledged.iter().sum::<u64>());
    env.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_after_a_timeout_appends_nothing() {
    let Some((env, first)) = common::app("idempotent retry", 100).await else {
        return;
    };
    open_with(&first, "idem", "ida", &[50]).await;
    let opts = || CommandOptions {
        idempotency_key: Some("withdraw-7".into()),
        ..Default::default()
    };
    let command = json!({"type": "Withdraw", "amount": 7});
    // The first attempt commits, but the client never hears back (a timeout) ...
    let original = run_with(&first, "idem", command.clone(), opts())
        .await
        .expect("first attempt");
    assert!(!original.replayed);
    // ... and retries, landing on another instance with a cold cache.
    let other = App::new(
        env.clients.clone(),
        env.settings.clone(),
        chronicle_accounts::domain(),
    );
    let retry = run_with(&other, "idem", command.clone(), opts())
        .await
        .expect("retry");
    assert!(
        retry.replayed,
        "the retry is answered from the idempotency record"
    );
    assert_eq!(retry.result, original.result);
    let stream = StreamId::new("accounts", "idem");
    assert_eq!(
        other.events.stream_version(&stream).await.expect("version"),
        3
    );

    // The same transaction sent again at the store level (an SDK retry after a lost answer):
    // its own events are there already, so it is the success it was, and adds nothing.
    let record = other
        .events
        .idempotency_record("withdraw-7")
        .await
        .expect("read")
        .expect("the record");
    let mut again = chronicle_kernel::AppendRequest {
        stream: stream.clone(),
        expected_version: 2,
        events: original.result.events.clone(),
        idempotency: Some(record),
        stored: Vec::new(),
        expected_known: false,
    };
    assert_eq!(other.events.append(&again).await, Ok(()));
    assert_eq!(
        other.events.stream_version(&stream).await.expect("version"),
        3
    );
    // Another transaction under the same key: refused as a duplicate, nothing added.
    for e in &mut again.events {
        e.event_id = uuid::Uuid::now_v7();
    }
    match other.events.append(&again).await {
        Err(AppendError::DuplicateIdempotencyKey(k)) => assert_eq!(k, "withdraw-7"),
        r => panic!("expected DuplicateIdempotencyKey, got {r:?}"),
    }
    assert_eq!(
        other.events.stream_version(&stream).await.expect("version"),
        3
    );

    // The same key with another command is refused.
    let reused = run_with(
        &other,
        "idem",
        json!({"type": "Withdraw", "amount": 8}),
        opts(),
    )
    .await;
    assert!(
        matches!(reused, Err(Error::IdempotencyKeyReused { .. })),
        "{reused:?}"
    );
    env.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_too_big_for_one_transaction_is_refused_whole() {
    let Some((env, app)) = common::app("transaction limit", 100).await else {
        return;
    };
    let stream = chronicle_testkit::new_stream();
    let store: &DynamoEventStore = &app.events;
    let first = chronicle_testkit::events(&stream, 0, 1);
    store
        .append(&chronicle_testkit::request(&stream, 0, first))
        .await
        .expect("first event");
    // 99 events + the expected-version check + the idempotency record: 101 actions.
    let mut too_big =
        chronicle_testkit::request(&stream, 1, chronicle_testkit::events(&stream, 1, 99));
    too_big.idempotency = Some(chronicle_testkit::idempotency_record("big", &stream));
    match store.append(&too_big).await {
        Err(AppendError::Store(StoreError::Invalid(msg))) => {
            assert!(msg.contains("at most 98"), "{msg}")
        }
        r => panic!("expected a refusal, got {r:?}"),
    }
    assert_eq!(store.stream_version(&stream).await.expect("version"), 1);
    // The largest that fits is stored whole.
    let mut fits =
        chronicle_testkit::request(&stream, 1, chronicle_testkit::events(&stream, 1, 98));
    fits.idempotency = Some(chronicle_testkit::idempotency_record("fits", &stream));
    store.append(&fits).await.expect("98 events fit");
    assert_eq!(store.stream_version(&stream).await.expect("version"), 99);
    env.remove().await;
}

/// The functions take the retention from `CHRONICLE_IDEMPOTENCY_RETENTION` (here 1 s): a retry
/// after it runs again, overwriting the expired record (a MODIFY on the table's stream); TTL's
/// deletion of the record (a REMOVE) follows. The stream handlers skip both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_retention_runs_again_and_the_stream_handlers_skip_the_record() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use chronicle_aws::item;
    use chronicle_kernel::ReadModelStore;
    let Some(mut env) = chronicle_aws::testing::AwsTestEnv::create("idempotency retention").await
    else {
        return;
    };
    // As a function reads its environment.
    let vars = env.env_vars();
    env.settings = chronicle_aws::Settings::from_lookup(|k| match k {
        "CHRONICLE_IDEMPOTENCY_RETENTION" => Some("1s".into()),
        _ => vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()),
    })
    .expect("settings");
    assert_eq!(
        env.settings.idempotency_retention,
        std::time::Duration::from_secs(1)
    );
    let app = App::new(
        env.clients.clone(),
        env.settings.clone(),
        chronicle_accounts::domain(),
    );
    open_with(&app, "late", "lou", &[]).await;
    let opts = || CommandOptions {
        idempotency_key: Some("deposit-late".into()),
        ..Default::default()
    };
    let deposit = json!({"type": "Deposit", "amount": 10});
    let first = run_with(&app, "late", deposit.clone(), opts())
        .await
        .expect("deposit");
    assert_eq!(first.result.version, 2);
    // Waits for the record to expire (1 s, rounded up to the second); the deadline only
    // bounds a hang.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app
        .events
        .idempotency_record("deposit-late")
        .await
        .expect("read")
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the record never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let second = run_with(&app, "late", deposit, opts())
        .await
        .expect("the retry");
    assert!(!second.replayed, "after the retention the retry runs again");
    assert_eq!(second.result.version, 3);
    // What TTL does some time after the expiry.
    app.clients
        .dynamodb
        .delete_item()
        .table_name(&app.settings.events_table)
        .key(
            item::PK,
            AttributeValue::S(item::idempotency_key("deposit-late")),
        )
        .key(item::SK, AttributeValue::N("0".into()))
        .send()
        .await
        .expect("DeleteItem");

    let all = stream_records(&app).await;
    let record_changes: Vec<&str> = all
        .iter()
        .filter(|r| key_of(r).0 == item::idempotency_key("deposit-late"))
        .map(|r| r.event_name.as_str())
        .collect();
    assert_eq!(record_changes, ["INSERT", "MODIFY", "REMOVE"]);
    let mut batch = aws_lambda_events::dynamodb::Event::default();
    batch.records = all;
    for (name, r) in [
        (
            "project",
            chronicle_lambda::streams::project(&app, &batch).await,
        ),
        (
            "publish",
            chronicle_lambda::streams::publish(&app, &batch).await,
        ),
        (
            "snapshot",
            chronicle_lambda::streams::snapshot(&app, &batch).await,
        ),
    ] {
        assert!(failures(&r).is_empty(), "{name}: {r:?}");
    }
    let doc = app
        .read_models
        .get(
            &chronicle_kernel::ModelRef::active("accounts_state"),
            "late",
        )
        .await
        .expect("read model")
        .expect("projected");
    assert_eq!((doc.version, doc.body["balance"].as_u64()), (3, Some(20)));
    assert_eq!(
        kinesis_records(&app).await.len(),
        3,
        "the three events only"
    );
    env.remove().await;
}
