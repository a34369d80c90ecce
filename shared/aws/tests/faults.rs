//! The AWS adapters under injected faults (`chronicle_aws::testing::faults`): throttling past
//! the SDK's retries, transactions whose answer is lost after they committed, and Kinesis
//! `PutRecords` calls that store only some of their records. Each case prints what it
//! injected and fails if a fault it meant to inject never happened.

use aws_sdk_kinesis::types::Record;
use chronicle_aws::testing::faults::{Fault, Faults, Matcher, Rule, Schedule};
use chronicle_aws::testing::{kinesis_records, AwsTestEnv};
use chronicle_aws::{DynamoEventStore, KinesisPublisher};
use chronicle_kernel::{
    AppendError, AppendRequest, EventEnvelope, EventStore, Publisher, ReadRange, StoreError,
};
use chronicle_testkit as kit;
use std::collections::HashMap;
use std::sync::Arc;

fn report(test: &str, case: &str, faults: &Faults) {
    eprintln!("{test} / {case}: faults injected\n{}", faults.report());
    faults.assert_each_injected();
}

fn on_transactions(label: &'static str, fault: Fault, schedule: Schedule) -> Rule {
    Rule::new(
        label,
        Matcher::dynamodb(&["TransactWriteItems"]),
        fault,
        schedule,
    )
}

/// The request's events are stored exactly once, at their versions.
async fn stored_once(clean: &DynamoEventStore, request: &AppendRequest, ctx: &str) {
    let got = clean
        .read_stream(&request.stream, ReadRange::all())
        .await
        .expect("read");
    let want: Vec<_> = request.events.iter().map(|e| e.event_id).collect();
    assert_eq!(
        got.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        want,
        "{ctx}: every event once, nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_under_throttling_and_lost_answers_store_once_or_not_at_all() {
    const TEST: &str = "appends under faults";
    let Some(env) = AwsTestEnv::create(TEST).await else {
        return;
    };
    let table = env.settings.events_table.clone();
    let clean = DynamoEventStore::new(env.clients.dynamodb.clone(), &table);
    let store_with = |faults: &Arc<Faults>| {
        DynamoEventStore::new(faults.clients(&env.clients.sdk).dynamodb, &table)
    };
    let fresh = |n: usize, key: Option<&str>| {
        let stream = kit::new_stream();
        let mut r = kit::request(&stream, 0, kit::events(&stream, 0, n));
        r.idempotency = key.map(|k| kit::idempotency_record(&kit::unique(k), &stream));
        r
    };

    // The answer is lost after the transaction committed, in every way, with and without an
    // idempotency record: the SDK sends the same transaction again, which meets its own
    // writes; the append is a success and stored once.
    for (case, fault, schedule, key) in [
        (
            "a 500 after commit",
            Fault::LoseAnswer500,
            Schedule::First(1),
            None,
        ),
        (
            "a 500 after commit, with a key",
            Fault::LoseAnswer500,
            Schedule::First(1),
            Some("lost-500"),
        ),
        (
            "a timeout after commit",
            Fault::LoseAnswerTimeout,
            Schedule::First(1),
            None,
        ),
        // Every attempt's answer lost: the SDK gives up with a 500, and the store looks.
        (
            "every answer lost",
            Fault::LoseAnswer500,
            Schedule::First(3),
            Some("lost-all"),
        ),
        // No answer at all: only the DynamoDB client's attempt timeout ends the wait.
        (
            "no answer after commit",
            Fault::LoseAnswerHang,
            Schedule::First(1),
            None,
        ),
    ] {
        let faults = Faults::new(vec![on_transactions(case, fault, schedule)]);
        let store = store_with(&faults);
        let request = fresh(3, key);
        let sent = tokio::time::timeout(std::time::Duration::from_secs(60), store.append(&request))
            .await
            .unwrap_or_else(|_| panic!("{case}: the append hung"));
        assert_eq!(sent, Ok(()), "{case}");
        stored_once(&clean, &request, case).await;
        if let Some(r) = &request.idempotency {
            assert_eq!(
                clean.idempotency_record(&r.key).await.expect("read"),
                Some(r.clone()),
                "{case}"
            );
        }
        report(TEST, case, &faults);
    }

    // Someone else's events at those versions are still a conflict, not taken for ours.
    let faults = Faults::new(vec![on_transactions(
        "a 500 after another's commit",
        Fault::LoseAnswer500,
        Schedule::First(1),
    )]);
    let theirs = fresh(2, None);
    clean.append(&theirs).await.expect("their append");
    let mut ours = kit::request(&theirs.stream, 0, kit::events(&theirs.stream, 0, 2));
    ours.idempotency = None;
    match store_with(&faults).append(&ours).await {
        Err(AppendError::Conflict { actual: 2, .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    stored_once(&clean, &theirs, "another's commit").await;
    report(TEST, "another's commit", &faults);

    // Throttling: the SDK's standard retry makes 3 attempts. Two throttled ones are hidden;
    // three are not: the append fails as Unavailable (a 503 with Retry-After) and stores
    // nothing, and the same append later succeeds.
    for (case, fault) in [
        (
            "ProvisionedThroughputExceededException",
            Fault::PROVISIONED_THROUGHPUT,
        ),
        ("ThrottlingException", Fault::THROTTLING),
    ] {
        let hidden = Faults::new(vec![on_transactions(case, fault, Schedule::First(2))]);
        let request = fresh(2, Some("hidden"));
        assert_eq!(store_with(&hidden).append(&request).await, Ok(()), "{case}");
        stored_once(&clean, &request, case).await;
        report(TEST, &format!("{case} x2 (hidden by the SDK)"), &hidden);

        let past = Faults::new(vec![on_transactions(case, fault, Schedule::First(3))]);
        let store = store_with(&past);
        let request = fresh(2, Some("past"));
        match store.append(&request).await {
            Err(AppendError::Store(StoreError::Unavailable(m))) => {
                assert!(m.contains(case), "{case}: {m}")
            }
            other => panic!("{case} x3: expected Unavailable, got {other:?}"),
        }
        assert_eq!(
            clean
                .stream_version(&request.stream)
                .await
                .expect("version"),
            0,
            "{case}: nothing stored"
        );
        let key = request.idempotency.as_ref().map(|r| r.key.clone());
        assert_eq!(
            clean
                .idempotency_record(&key.expect("a key"))
                .await
                .expect("read"),
            None
        );
        assert_eq!(store.append(&request).await, Ok(()), "{case}: the retry");
        stored_once(&clean, &request, case).await;
        report(TEST, &format!("{case} x3 (past the SDK)"), &past);
    }

    // Reads throttled past the SDK's retries are Unavailable too.
    let request = fresh(2, Some("reads"));
    clean.append(&request).await.expect("append");
    let faults = Faults::new(vec![
        Rule::new(
            "Query ThrottlingException",
            Matcher::dynamodb(&["Query"]),
            Fault::THROTTLING,
            Schedule::First(3),
        ),
        Rule::new(
            "GetItem ProvisionedThroughputExceededException",
            Matcher::dynamodb(&["GetItem"]),
            Fault::PROVISIONED_THROUGHPUT,
            Schedule::First(3),
        ),
    ]);
    let store = store_with(&faults);
    let read = store.read_stream(&request.stream, ReadRange::all()).await;
    assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
    let key = &request.idempotency.as_ref().expect("a key").key;
    let got = store.idempotency_record(key).await;
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    // And answer once the throttling ends.
    assert_eq!(
        store
            .read_stream(&request.stream, ReadRange::all())
            .await
            .expect("read")
            .len(),
        2
    );
    report(TEST, "reads", &faults);
    env.remove().await;
}

/// A single event after a known version is one conditional `PutItem`, and a command's key a
/// claim written before it: lost answers, throttling and a writer that dies between the claim
/// and the event, with the same outcome as the transactions above (stored once or not at
/// all; the key answering exactly the stored command).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_events_and_their_claims_under_faults() {
    const TEST: &str = "single events under faults";
    let Some(env) = AwsTestEnv::create(TEST).await else {
        return;
    };
    let table = env.settings.events_table.clone();
    let clean = DynamoEventStore::new(env.clients.dynamodb.clone(), &table);
    let store_with = |faults: &Arc<Faults>| {
        DynamoEventStore::new(faults.clients(&env.clients.sdk).dynamodb, &table)
    };
    // A stream at version 1, then one event after it, as the kernel appends (known version).
    let fresh = |key: Option<&str>| {
        let stream = kit::new_stream();
        let first = kit::request(&stream, 0, kit::events(&stream, 0, 1));
        let mut r = kit::request(&stream, 1, kit::events(&stream, 1, 1));
        r.expected_known = true;
        // The response as the kernel records it: the command's result, holding its events.
        let result = chronicle_kernel::CommandResult {
            aggregate_id: stream.aggregate_id.clone(),
            version: 2,
            events: r.events.clone(),
        };
        r.idempotency = key.map(|k| chronicle_kernel::IdempotencyRecord {
            response: serde_json::to_value(&result).expect("JSON"),
            ..kit::idempotency_record(&kit::unique(k), &stream)
        });
        (first, r)
    };
    let events = || Matcher::dynamodb_containing(&["PutItem"], "\"event_id\":{");
    let claims = || Matcher::dynamodb_containing(&["PutItem"], "\"claim_id\":{");

    // Answers lost after the write: on the event, on the claim, on both; the SDK's retry meets
    // its own write, which the store recognises.
    for (case, rules) in [
        (
            "the event's answer lost (500)",
            vec![Rule::new(
                "event 500",
                events(),
                Fault::LoseAnswer500,
                Schedule::First(1),
            )],
        ),
        (
            "the event's answer lost (timeout)",
            vec![Rule::new(
                "event timeout",
                events(),
                Fault::LoseAnswerTimeout,
                Schedule::First(1),
            )],
        ),
        (
            "the claim's answer lost",
            vec![Rule::new(
                "claim 500",
                claims(),
                Fault::LoseAnswer500,
                Schedule::First(1),
            )],
        ),
        (
            "every answer lost",
            vec![
                Rule::new(
                    "claim 500 x3",
                    claims(),
                    Fault::LoseAnswer500,
                    Schedule::First(3),
                ),
                Rule::new(
                    "event 500 x3",
                    events(),
                    Fault::LoseAnswer500,
                    Schedule::First(3),
                ),
            ],
        ),
    ] {
        for key in [None, Some("lost")] {
            // Without a key there is no claim to lose an answer of.
            let rules: Vec<Rule> = rules
                .iter()
                .filter(|r| key.is_some() || !r.label.starts_with("claim"))
                .cloned()
                .collect();
            if rules.is_empty() {
                continue;
            }
            let faults = Faults::new(rules);
            let (first, request) = fresh(key);
            clean.append(&first).await.expect("the first event");
            assert_eq!(store_with(&faults).append(&request).await, Ok(()), "{case}");
            let want: Vec<_> = [first.clone(), request.clone()]
                .iter()
                .flat_map(|r| r.events.iter().map(|e| e.event_id))
                .collect();
            let got = clean
                .read_stream(&request.stream, ReadRange::all())
                .await
                .expect("read");
            assert_eq!(
                got.iter().map(|e| e.event_id).collect::<Vec<_>>(),
                want,
                "{case}"
            );
            if let Some(r) = &request.idempotency {
                assert_eq!(
                    clean.idempotency_record(&r.key).await.expect("read"),
                    Some(r.clone()),
                    "{case}"
                );
            }
            report(TEST, case, &faults);
        }
    }

    // Throttled past the SDK's retries: nothing stored, the key free, and the retry stores it.
    for (case, matcher) in [
        ("the event throttled", events()),
        ("the claim throttled", claims()),
    ] {
        let faults = Faults::new(vec![Rule::new(
            "throttled x3",
            matcher,
            Fault::THROTTLING,
            Schedule::First(3),
        )]);
        let (first, request) = fresh(Some("throttled"));
        clean.append(&first).await.expect("the first event");
        match store_with(&faults).append(&request).await {
            Err(AppendError::Store(StoreError::Unavailable(_))) => {}
            other => panic!("{case}: expected Unavailable, got {other:?}"),
        }
        assert_eq!(
            clean
                .stream_version(&request.stream)
                .await
                .expect("version"),
            1,
            "{case}: nothing stored"
        );
        let key = &request.idempotency.as_ref().expect("a key").key;
        assert_eq!(
            clean.idempotency_record(key).await.expect("read"),
            None,
            "{case}"
        );
        assert_eq!(clean.append(&request).await, Ok(()), "{case}: the retry");
        report(TEST, case, &faults);
    }

    // The writer dies between its claim and its event (the event's put never lands, and no
    // answer says so): the next reader of the key stores the claimed event, once.
    let faults = Faults::new(vec![Rule::new(
        "event refused with 500 x3",
        events(),
        Fault::Refuse {
            status: 500,
            code: "InternalServerError",
        },
        Schedule::First(3),
    )]);
    let (first, request) = fresh(Some("died"));
    clean.append(&first).await.expect("the first event");
    assert!(
        store_with(&faults).append(&request).await.is_err(),
        "the writer saw no answer"
    );
    let key = &request.idempotency.as_ref().expect("a key").key;
    assert_eq!(
        clean.idempotency_record(key).await.expect("read"),
        request.idempotency.clone(),
        "the key answers the claimed command"
    );
    stored_once(
        &clean,
        &AppendRequest {
            events: [first.events.clone(), request.events.clone()].concat(),
            ..request.clone()
        },
        "completed by the reader",
    )
    .await;
    report(TEST, "died between claim and event", &faults);

    // Died the same way, but another command took the version meanwhile: the claim can never
    // be stored, so its reader discards it and the key is free.
    let faults = Faults::new(vec![Rule::new(
        "event refused with 500 x3 (then taken)",
        events(),
        Fault::Refuse {
            status: 500,
            code: "InternalServerError",
        },
        Schedule::First(3),
    )]);
    let (first, request) = fresh(Some("taken"));
    clean.append(&first).await.expect("the first event");
    assert!(store_with(&faults).append(&request).await.is_err());
    let mut theirs = kit::request(&request.stream, 1, kit::events(&request.stream, 1, 1));
    theirs.expected_known = true;
    clean.append(&theirs).await.expect("another command");
    let key = &request.idempotency.as_ref().expect("a key").key;
    assert_eq!(clean.idempotency_record(key).await.expect("read"), None);
    stored_once(
        &clean,
        &AppendRequest {
            events: [first.events.clone(), theirs.events.clone()].concat(),
            ..request.clone()
        },
        "the claim discarded",
    )
    .await;
    report(TEST, "died, then the version taken", &faults);
    env.remove().await;
}

/// The events as consumed from the stream, in arrival order.
fn consumed(records: &[Record]) -> Vec<EventEnvelope> {
    records
        .iter()
        .map(|r| serde_json::from_slice(r.data().as_ref()).expect("an envelope"))
        .collect()
}

/// Each aggregate's events by their last arrival: in version order (what the README
/// promises consumers) and each at least once.
fn assert_last_deliveries_in_order(sent: &[EventEnvelope], got: &[EventEnvelope], ctx: &str) {
    let mut last: HashMap<uuid::Uuid, usize> = HashMap::new();
    for (i, e) in got.iter().enumerate() {
        last.insert(e.event_id, i);
    }
    for e in sent {
        assert!(
            last.contains_key(&e.event_id),
            "{ctx}: {} v{} never arrived",
            e.aggregate_id,
            e.version
        );
    }
    let mut by_last: Vec<&EventEnvelope> = sent.iter().collect();
    by_last.sort_by_key(|e| last[&e.event_id]);
    for a in by_last.iter().map(|e| &e.aggregate_id) {
        let versions: Vec<u64> = by_last
            .iter()
            .filter(|e| &e.aggregate_id == a)
            .map(|e| e.version)
            .collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        assert_eq!(versions, sorted, "{ctx}: last deliveries of {a} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_failed_put_records_resends_only_what_failed() {
    const TEST: &str = "partial PutRecords";
    let Some(env) = AwsTestEnv::create(TEST).await else {
        return;
    };
    let (a, b) = (kit::new_stream(), kit::new_stream());
    let (ea, eb) = (kit::events(&a, 0, 3), kit::events(&b, 0, 3));
    // a1 b1 a2 b2 a3 b3, as a batch of two aggregates arrives.
    let batch: Vec<EventEnvelope> = ea
        .iter()
        .zip(&eb)
        .flat_map(|(x, y)| [x.clone(), y.clone()])
        .collect();
    let faults = Faults::new(vec![Rule::new(
        "PutRecords partly ProvisionedThroughputExceededException",
        Matcher::kinesis(&["PutRecords"]),
        Fault::PartialPutRecords,
        Schedule::First(2),
    )]);
    let publisher = KinesisPublisher::new(
        faults.clients(&env.clients.sdk).kinesis,
        &env.settings.event_stream,
    );
    publisher.publish(&batch).await.expect("published");
    let got = consumed(&kinesis_records(&env.clients.kinesis, &env.settings.event_stream).await);
    assert_last_deliveries_in_order(&batch, &got, TEST);
    // Call 1 keeps back every other record: b1 b2 b3. Call 2 resends those and keeps back b2;
    // b3 went through but follows b2, so call 3 sends b2 and b3. Nothing else is sent twice.
    let mut times: HashMap<(String, u64), usize> = HashMap::new();
    for e in &got {
        *times
            .entry((e.aggregate_id.clone(), e.version))
            .or_default() += 1;
    }
    let twice: Vec<_> = batch
        .iter()
        .filter(|e| times[&(e.aggregate_id.clone(), e.version)] > 1)
        .map(|e| (e.aggregate_id.clone(), e.version))
        .collect();
    assert_eq!(twice, vec![(b.aggregate_id.clone(), 3)], "{times:?}");
    assert_eq!(got.len(), batch.len() + 1);
    report(TEST, "two partial calls", &faults);

    // Throttled on every call: the publisher gives up, and every event it does not name as
    // failed has arrived.
    let stream_before = got.len();
    let c = kit::new_stream();
    let more = kit::events(&c, 0, 4);
    let faults = Faults::new(vec![Rule::new(
        "PutRecords partly throttled on every call",
        Matcher::kinesis(&["PutRecords"]),
        Fault::PartialPutRecords,
        Schedule::First(u64::MAX),
    )]);
    let publisher = KinesisPublisher::new(
        faults.clients(&env.clients.sdk).kinesis,
        &env.settings.event_stream,
    );
    let err = publisher
        .publish(&more)
        .await
        .expect_err("never all accepted");
    assert!(!err.failed.is_empty(), "{err}");
    assert!(
        err.reason
            .contains("ProvisionedThroughputExceededException"),
        "{err}"
    );
    let got = consumed(&kinesis_records(&env.clients.kinesis, &env.settings.event_stream).await);
    for (i, e) in more.iter().enumerate() {
        if !err.failed.contains(&i) {
            assert!(
                got[stream_before..]
                    .iter()
                    .any(|g| g.event_id == e.event_id),
                "v{} reported sent but missing",
                e.version
            );
        }
    }
    report(TEST, "every call partial", &faults);
    env.remove().await;
}

/// A read-model write whose answer is lost after it stored: the SDK sends it again, the
/// condition refuses the retry (the document is already at that version), and the write
/// still counts as applied, because what refused it is the document it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_write_that_lost_its_answer_counts_as_applied() {
    use chronicle_aws::DynamoReadModelStore;
    use chronicle_kernel::{ModelRef, ReadModelStore};
    const TEST: &str = "read-model writes under lost answers";
    let Some(env) = AwsTestEnv::create(TEST).await else {
        return;
    };
    let table = env.settings.read_table.clone();
    let model = ModelRef::generation(&kit::unique("lost"), 1);
    for (case, fault) in [
        ("a 500 after the put", Fault::LoseAnswer500),
        ("a timeout after the put", Fault::LoseAnswerTimeout),
    ] {
        let faults = Faults::new(vec![Rule::new(
            case,
            Matcher::dynamodb_on(&table, &["PutItem"]),
            fault,
            Schedule::First(1),
        )]);
        let store = DynamoReadModelStore::new(faults.clients(&env.clients.sdk).dynamodb, &table);
        let key = kit::unique("doc");
        let write = kit::doc_write(&key, 3, serde_json::json!({ "case": case }), &[]);
        let applied = store
            .apply(&model, vec![write], None)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(applied, 1, "{case}: the write stored once and counts once");
        let clean = DynamoReadModelStore::new(env.clients.dynamodb.clone(), &table);
        let doc = clean.get(&model, &key).await.expect("get").expect("stored");
        assert_eq!(doc.version, 3, "{case}");
        // A genuinely older write is still refused and not counted.
        let stale = kit::doc_write(&key, 2, serde_json::json!({ "stale": true }), &[]);
        assert_eq!(
            clean.apply(&model, vec![stale], None).await,
            Ok(0),
            "{case}"
        );
        faults.assert_each_injected();
        report(TEST, case, &faults);
    }
    env.remove().await;
}
