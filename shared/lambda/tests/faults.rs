//! The whole AWS path under injected faults (`chronicle_aws::testing::faults`, an HTTP client
//! between the SDK and the endpoint): DynamoDB throttling (`ProvisionedThroughputExceeded`,
//! `ThrottlingException`), transactions whose answer is lost after they committed, S3
//! `SlowDown`, and Kinesis `PutRecords` calls that store only some of their records.
//!
//! - Commands through the HTTP API answer 2xx exactly once per stored command, or 503 with
//!   `Retry-After` and a JSON error, storing nothing; a client that retries is never told
//!   409 for what it stored itself.
//! - The projector, publisher and snapshotter, driven by the local event-source pollers, retry
//!   and end exact: read models equal the folded events, Kinesis holds every event (with the
//!   duplicates the README allows), snapshots hold the folded state at their version.
//! - The archiver's runs end with every event archived and marked exactly once.
//!
//! Each test prints how many faults of each kind it injected and fails if one never fired.

mod common;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request};
use chronicle_aws::testing::faults::{Fault, Faults, Matcher, Rule, Schedule};
use chronicle_aws::testing::AwsTestEnv;
use chronicle_http::Routes;
use chronicle_kernel::{
    fold_event, EventEnvelope, EventStore, Expiry, ModelRef, ReadModelStore, ReadRange,
    SnapshotStore, StreamId,
};
use chronicle_lambda::{activity, archiver, App};
use lambda_http::tower::ServiceExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

// The polling loops are `chronicle serve --backend aws`'s (a binary crate: nothing to import);
// the file uses only this crate's public API, so it is compiled here as it is there.
#[path = "../../cli/src/mappings.rs"]
mod local;

fn faulty_app(env: &AwsTestEnv, faults: &Arc<Faults>) -> App {
    App::new(
        faults.clients(&env.clients.sdk),
        env.settings.clone(),
        chronicle_accounts::domain(),
    )
}

fn report(test: &str, faults: &Faults) {
    eprintln!("{test}: faults injected\n{}", faults.report());
    faults.assert_each_injected();
}

async fn post(
    router: &axum::Router,
    id: &str,
    body: &Value,
    headers: &[(&str, String)],
) -> (u16, HeaderMap, Value) {
    let mut req = Request::builder()
        .method("POST")
        .uri(format!("/accounts/{id}/commands"))
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req.body(Body::from(body.to_string())).expect("a request");
    let resp = router
        .clone()
        .oneshot(req)
        .await
        .expect("the router answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("a body");
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// How a client sends a command and what it does after a 503: the same request again, after
/// `Retry-After`.
#[derive(Clone, Copy, Debug)]
enum Style {
    Plain,
    Keyed,
    IfMatch,
}

struct Sent {
    id: String,
    amount: u64,
    /// The 2xx answer's body.
    answer: Value,
    unavailable: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_answer_2xx_once_per_stored_command_or_503_with_retry_after() {
    const TEST: &str = "commands under faults";
    let Some((env, clean)) = common::app(TEST, 100).await else {
        return;
    };
    let events_table = env.settings.events_table.clone();
    // A command's single event is one conditional PutItem (its key's claim another).
    let tx = || Matcher::dynamodb_containing(&["PutItem"], "\"event_id\":{");
    let claim = || Matcher::dynamodb_containing(&["PutItem"], "\"claim_id\":{");
    let snapshots_get = Matcher::s3("GET", &[&format!("/{}/", env.settings.snapshot_bucket)]);
    let faults = Faults::new(vec![
        // Past the SDK's 3 attempts: the first append, the first idempotency lookup and the
        // first snapshot read fail as 503s.
        Rule::new(
            "event PutItem ProvisionedThroughputExceededException x3 (past the SDK)",
            tx(),
            Fault::PROVISIONED_THROUGHPUT,
            Schedule::First(3),
        ),
        Rule::new(
            "GetItem ProvisionedThroughputExceededException x3 (past the SDK)",
            Matcher::dynamodb_on(&events_table, &["GetItem"]),
            Fault::PROVISIONED_THROUGHPUT,
            Schedule::First(3),
        ),
        Rule::new(
            "GetObject snapshot SlowDown x3 (past the SDK)",
            snapshots_get.clone(),
            Fault::SLOW_DOWN,
            Schedule::First(3),
        ),
        // Now and then: the SDK's retry hides these ...
        Rule::new(
            "event PutItem ThrottlingException",
            tx(),
            Fault::THROTTLING,
            Schedule::Every { k: 5, times: 3 },
        ),
        Rule::new(
            "Query ThrottlingException",
            Matcher::dynamodb_on(&events_table, &["Query"]),
            Fault::THROTTLING,
            Schedule::Every { k: 2, times: 3 },
        ),
        Rule::new(
            "GetItem ThrottlingException",
            Matcher::dynamodb_on(&events_table, &["GetItem"]),
            Fault::THROTTLING,
            Schedule::Every { k: 4, times: 3 },
        ),
        Rule::new(
            "GetObject snapshot SlowDown",
            snapshots_get,
            Fault::SLOW_DOWN,
            Schedule::Every { k: 2, times: 2 },
        ),
        // ... and these commit, then lose their answer.
        Rule::new(
            "event PutItem stored, answer lost (500)",
            tx(),
            Fault::LoseAnswer500,
            Schedule::Every { k: 4, times: 3 },
        ),
        Rule::new(
            "event PutItem stored, answer lost (timeout)",
            tx(),
            Fault::LoseAnswerTimeout,
            Schedule::Every { k: 5, times: 2 },
        ),
        Rule::new(
            "event PutItem stored, no answer (attempt timeout)",
            tx(),
            Fault::LoseAnswerHang,
            Schedule::Every { k: 6, times: 1 },
        ),
        Rule::new(
            "claim PutItem stored, answer lost (500)",
            claim(),
            Fault::LoseAnswer500,
            Schedule::Every { k: 2, times: 2 },
        ),
    ]);
    let app = faulty_app(&env, &faults);
    let router = chronicle_lambda::http::router(&app, Routes::Commands);

    let mut sent: Vec<Sent> = Vec::new();
    let mut unavailable = 0;
    let mut replayed = 0;
    for a in 0..3u64 {
        let id = format!("faulty-{a}");
        let mut version = 0u64;
        for i in 0..8u64 {
            let (body, style, amount) = if i == 0 {
                (json!({"type": "Open", "owner": id}), Style::Plain, 0)
            } else {
                let amount = a * 100 + i;
                let style = [Style::Plain, Style::Keyed, Style::IfMatch][(i % 3) as usize];
                (json!({"type": "Deposit", "amount": amount}), style, amount)
            };
            let headers: Vec<(&str, String)> = match style {
                Style::Plain => vec![],
                Style::Keyed => vec![("idempotency-key", format!("{id}-deposit-{i}"))],
                Style::IfMatch => vec![("if-match", version.to_string())],
            };
            let mut failures = 0;
            let answer = loop {
                let (status, headers, body) = post(&router, &id, &body, &headers).await;
                if status != 503 {
                    assert_eq!(
                        status, 200,
                        "{id} command {i} ({style:?}) after {failures} 503s: {body}"
                    );
                    if headers.contains_key("idempotent-replayed") {
                        replayed += 1;
                    }
                    break body;
                }
                failures += 1;
                let code = body["error"]["code"].as_str().unwrap_or("");
                assert!(
                    ["store_busy", "store_unavailable"].contains(&code),
                    "a 503 says why in JSON: {body}"
                );
                let wait: u64 = headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("a 503 without Retry-After: {headers:?}"));
                assert!(
                    failures < 10,
                    "{id} command {i}: still 503 after {failures} tries: {body}"
                );
                tokio::time::sleep(Duration::from_secs(wait)).await;
            };
            unavailable += failures;
            version = answer["version"].as_u64().expect("a version");
            sent.push(Sent {
                id: id.clone(),
                amount,
                answer,
                unavailable: failures,
            });
        }
    }

    // What is stored: each command once, in the order sent, exactly as answered.
    for a in 0..3u64 {
        let id = format!("faulty-{a}");
        let stream = StreamId::new("accounts", &id);
        let stored = clean
            .events
            .read_stream(&stream, ReadRange::all())
            .await
            .expect("read");
        let mine: Vec<&Sent> = sent.iter().filter(|s| s.id == id).collect();
        assert_eq!(
            stored.iter().map(|e| e.version).collect::<Vec<_>>(),
            (1..=mine.len() as u64).collect::<Vec<_>>(),
            "{id}: one event per command, gapless"
        );
        for (s, e) in mine.iter().zip(&stored) {
            let answered = &s.answer["events"][0];
            assert_eq!(
                answered["event_id"].as_str(),
                Some(e.event_id.to_string().as_str()),
                "{id} v{}: the answer is the stored event",
                e.version
            );
            if s.amount > 0 {
                assert_eq!(e.event_type, "Deposited");
                assert_eq!(e.data["amount"], s.amount, "{id} v{}", e.version);
            }
        }
        let state = clean
            .chronicle
            .aggregate("accounts")
            .expect("accounts")
            .state(&id, None)
            .await
            .expect("state");
        assert_eq!(
            state.body["balance"],
            mine.iter().map(|s| s.amount).sum::<u64>()
        );
    }
    eprintln!(
        "{TEST}: {} commands, {unavailable} answers 503 (then retried), {replayed} answered from the idempotency record; commands that met a 503: {}",
        sent.len(),
        sent.iter().filter(|s| s.unavailable > 0).count()
    );
    assert!(unavailable > 0, "no fault went past the SDK's retries");
    report(TEST, &faults);
    env.remove().await;
}

/// A projection's document of `id`, folded from the events as stored.
fn folded(app: &App, projection: &str, events: &[EventEnvelope]) -> Option<Value> {
    let p = app
        .chronicle
        .projections()
        .iter()
        .find(|p| p.name() == projection)
        .expect("a projection");
    let schema = app
        .chronicle
        .aggregate("accounts")
        .expect("accounts")
        .schema()
        .clone();
    let mut body: Option<Value> = None;
    for e in events {
        body = Some(fold_event(p.as_ref(), &schema, body.as_ref(), e.clone()).expect("folds"));
    }
    body
}

/// Everything the stream handlers should have made of `ids`' events, read with clean
/// clients; `Err` says what is still missing.
async fn check_outputs(
    app: &App,
    env: &AwsTestEnv,
    ids: &[String],
    every: u64,
) -> Result<String, String> {
    let kinesis: Vec<EventEnvelope> =
        chronicle_aws::testing::kinesis_records(&env.clients.kinesis, &env.settings.event_stream)
            .await
            .iter()
            .map(|r| serde_json::from_slice(r.data().as_ref()).expect("an envelope on Kinesis"))
            .collect();
    let mut last_arrival: HashMap<uuid::Uuid, usize> = HashMap::new();
    for (i, e) in kinesis.iter().enumerate() {
        last_arrival.insert(e.event_id, i);
    }
    let mut all = 0;
    for id in ids {
        let stream = StreamId::new("accounts", id);
        let events = app
            .events
            .read_stream(&stream, ReadRange::all())
            .await
            .expect("read");
        let v = events.len() as u64;
        all += events.len();
        for projection in ["accounts_state", "accounts_by_owner"] {
            let doc = app
                .read_models
                .get(&ModelRef::active(projection), id)
                .await
                .expect("read model");
            let got = doc.map(|d| (d.version, d.body));
            let want = Some((v, folded(app, projection, &events).expect("a document")));
            if got != want {
                return Err(format!("{projection} of {id}: {got:?}, want {want:?}"));
            }
        }
        // Kinesis: each event, as upcast, at least once; the last arrivals in version order.
        let mut order = Vec::new();
        for e in &events {
            let want = app.chronicle.upcast(e.clone()).expect("upcast");
            match last_arrival.get(&e.event_id) {
                Some(&i) if kinesis[i] == want => order.push((i, e.version)),
                Some(&i) => {
                    return Err(format!(
                        "{id} v{}: on Kinesis as {:?}",
                        e.version, kinesis[i]
                    ))
                }
                None => return Err(format!("{id} v{}: not on Kinesis yet", e.version)),
            }
        }
        order.sort_unstable();
        let versions: Vec<u64> = order.iter().map(|(_, v)| *v).collect();
        if versions != (1..=v).collect::<Vec<_>>() {
            return Err(format!("{id}: last deliveries out of order: {versions:?}"));
        }
        // The activity feed (the Kinesis consumer): one entry per event.
        let entries = app
            .read_models
            .find(
                &ModelRef::active(activity::ACTIVITY_FEED),
                "aggregate",
                &activity::aggregate_key("accounts", id),
                1000,
            )
            .await
            .expect("activity feed");
        let mut seen: Vec<u64> = entries
            .iter()
            .map(|d| d.body["version"].as_u64().expect("a version"))
            .collect();
        seen.sort_unstable();
        if seen != (1..=v).collect::<Vec<_>>() {
            return Err(format!("activity feed of {id}: {seen:?}"));
        }
        // Snapshots: at or past the last multiple crossed, holding the folded state there.
        let snap = app
            .snapshots
            .latest(&stream, None)
            .await
            .expect("snapshots");
        let floor = v / every * every;
        match snap {
            Some(s) if s.version >= floor && s.version <= v => {
                let at = &events[..s.version as usize];
                let want = folded(app, "accounts_state", at).expect("a state");
                if s.state != want {
                    return Err(format!(
                        "snapshot of {id} v{}: {} != {want}",
                        s.version, s.state
                    ));
                }
                if s.chain_head.as_deref() != Some(at[at.len() - 1].hash.as_str()) {
                    return Err(format!(
                        "snapshot of {id} v{}: chain head {:?}",
                        s.version, s.chain_head
                    ));
                }
            }
            other if floor > 0 => {
                return Err(format!(
                    "snapshot of {id}: {:?}, want one at v{floor}..=v{v}",
                    other.map(|s| s.version)
                ))
            }
            _ => {}
        }
    }
    let known: std::collections::HashSet<uuid::Uuid> = last_arrival.keys().copied().collect();
    if known.len() != all {
        return Err(format!(
            "Kinesis holds {} distinct events, the store {all}",
            known.len()
        ));
    }
    Ok(format!(
        "{all} events, {} Kinesis records ({} duplicates)",
        kinesis.len(),
        kinesis.len() - all
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_handlers_retry_and_end_exact_under_faults() {
    const TEST: &str = "stream handlers under faults";
    const EVERY: u64 = 3;
    let Some((env, clean)) = common::app(TEST, EVERY).await else {
        return;
    };
    let ids: Vec<String> = (0..4).map(|a| format!("streamed-{a}")).collect();
    for (a, id) in ids.iter().enumerate() {
        let deposits: Vec<u64> = (1..=6).map(|i| (a as u64 + 1) * 10 + i).collect();
        common::open_with(&clean, id, &format!("owner-{a}"), &deposits).await;
    }
    let read_table = env.settings.read_table.clone();
    let put = || Matcher::dynamodb_on(&read_table, &["PutItem"]);
    let snapshots = |method| Matcher::s3(method, &[&format!("/{}/", env.settings.snapshot_bucket)]);
    let faults = Faults::new(vec![
        Rule::new(
            "PutItem ProvisionedThroughputExceededException x4 (read models, past the SDK)",
            put(),
            Fault::PROVISIONED_THROUGHPUT,
            Schedule::First(4),
        ),
        Rule::new(
            "PutItem ThrottlingException (read models)",
            put(),
            Fault::THROTTLING,
            Schedule::Every { k: 4, times: 4 },
        ),
        Rule::new(
            "PutItem committed, answer lost (500, read models)",
            put(),
            Fault::LoseAnswer500,
            Schedule::Every { k: 5, times: 3 },
        ),
        Rule::new(
            "GetItem ThrottlingException x3 (read models, past the SDK)",
            Matcher::dynamodb_on(&read_table, &["GetItem"]),
            Fault::THROTTLING,
            Schedule::First(3),
        ),
        Rule::new(
            "Query ProvisionedThroughputExceededException (events)",
            Matcher::dynamodb_on(&env.settings.events_table, &["Query"]),
            Fault::PROVISIONED_THROUGHPUT,
            Schedule::Every { k: 2, times: 3 },
        ),
        Rule::new(
            "PutRecords ProvisionedThroughputExceededException x3 (whole call, past the SDK)",
            Matcher::kinesis(&["PutRecords"]),
            Fault::PROVISIONED_THROUGHPUT,
            Schedule::First(3),
        ),
        Rule::new(
            "PutRecords partly failed (ProvisionedThroughputExceededException per record)",
            Matcher::kinesis(&["PutRecords"]),
            Fault::PartialPutRecords,
            Schedule::Every { k: 2, times: 5 },
        ),
        Rule::new(
            "PutObject snapshot SlowDown x3 (past the SDK)",
            snapshots("PUT"),
            Fault::SLOW_DOWN,
            Schedule::First(3),
        ),
        Rule::new(
            "GetObject snapshot SlowDown",
            snapshots("GET"),
            Fault::SLOW_DOWN,
            Schedule::Every { k: 2, times: 3 },
        ),
    ]);
    let app = faulty_app(&env, &faults);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    // Small batches, so faults land in many handler calls; retries enough to outlast them
    // (on AWS: the mapping's MaximumRetryAttempts).
    let config = local::MappingConfig {
        batch_size: 5,
        max_retries: 20,
        idle: Duration::from_millis(100),
    };
    let handles = local::spawn_all(&app, config, shutdown)
        .await
        .expect("the mappings start");
    // Wait for the outputs to settle (a bound, not a speed assertion), then check them.
    let deadline = Instant::now() + Duration::from_secs(300);
    let outcome = loop {
        let got = check_outputs(&clean, &env, &ids, EVERY).await;
        if got.is_ok() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.send(true).expect("stop the mappings");
    for h in handles {
        h.await.expect("a mapping task");
    }
    match outcome {
        Ok(summary) => eprintln!("{TEST}: {summary}"),
        Err(missing) => panic!("{TEST}: outputs not exact: {missing}\n{}", faults.report()),
    }
    report(TEST, &faults);
    env.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiver_runs_under_slow_down_and_throttling_end_with_everything_archived_once() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use chronicle_aws::item;
    const TEST: &str = "archiver under faults";
    let Some((env, clean)) = common::app(TEST, 100).await else {
        return;
    };
    let ids: Vec<String> = (0..3).map(|a| format!("archived-{a}")).collect();
    for id in &ids {
        common::open_with(&clean, id, "arne", &[1, 2, 3, 4]).await; // v1..=5
    }
    let seg_put = || Matcher::s3("PUT", &[".seg"]);
    let faults = Faults::new(vec![
        Rule::new(
            "PutObject segment SlowDown x3 (past the SDK)",
            seg_put(),
            Fault::SLOW_DOWN,
            Schedule::First(3),
        ),
        Rule::new(
            "PutObject segment stored, answer lost (500)",
            seg_put(),
            Fault::LoseAnswer500,
            Schedule::First(1),
        ),
        Rule::new(
            "ListObjectsV2 archive SlowDown",
            Matcher::s3("GET", &[&env.settings.archive_bucket, "list-type=2"]),
            Fault::SLOW_DOWN,
            Schedule::Every { k: 2, times: 2 },
        ),
        Rule::new(
            "UpdateItem (expiry) ThrottlingException x3 (past the SDK)",
            Matcher::dynamodb_on(&env.settings.events_table, &["UpdateItem"]),
            Fault::THROTTLING,
            Schedule::First(3),
        ),
    ]);
    let app = faulty_app(&env, &faults);
    let settings = archiver::ArchiverSettings::from_lookup(|k| match k {
        "CHRONICLE_ARCHIVE_AFTER" => Some("0s".into()),
        "CHRONICLE_ARCHIVE_BELOW_SNAPSHOT" => Some("false".into()),
        "CHRONICLE_EXPIRE_AFTER" => Some("7d".into()),
        _ => None,
    })
    .expect("settings");
    // Scheduled runs until one finds nothing left to do; a failed run is the next one's work.
    let mut failed_runs = 0;
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs <= 8, "{TEST}: still not done after {runs} runs");
        match archiver::handle(&app, &settings).await {
            Err(e) => {
                eprintln!("{TEST}: run {runs} failed: {e}");
                // A segment this run stored whose answer was lost is this run's, not a
                // stranger's: the run goes on.
                assert!(!e.to_string().contains("already exists"), "{e}");
                failed_runs += 1;
            }
            Ok(s) if s["events_archived"] == 0 && s["events_expiring"] == 0 => break,
            Ok(s) => eprintln!("{TEST}: run {runs}: {s}"),
        }
    }
    assert!(
        failed_runs > 0,
        "no run failed: the faults stayed inside the SDK"
    );
    let ddb = &env.clients.dynamodb;
    for id in &ids {
        let stream = StreamId::new("accounts", id);
        let events = clean
            .events
            .read_stream(&stream, ReadRange::all())
            .await
            .expect("read");
        assert_eq!(events.len(), 5);
        // Every event but the head archived and expiring; the head kept.
        let unexpired: Vec<u64> = clean
            .events
            .unexpired(&stream, 5)
            .await
            .expect("unexpired")
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        assert_eq!(unexpired, vec![5], "{id}: only the head is not expiring");
        // What TTL will do: the archived hot copies go. The history reads whole from the
        // archive, and its chain verifies.
        for v in 1..=4u64 {
            ddb.delete_item()
                .table_name(&env.settings.events_table)
                .key(item::PK, AttributeValue::S(item::stream_key(&stream)))
                .key(item::SK, AttributeValue::N(v.to_string()))
                .send()
                .await
                .expect("DeleteItem");
        }
        let fresh = App::new(
            env.clients.clone(),
            env.settings.clone(),
            chronicle_accounts::domain(),
        );
        let history = fresh
            .chronicle
            .events()
            .read_stream(&stream, ReadRange::all())
            .await
            .expect("read through the archive");
        assert_eq!(history, events, "{id}: every event once, as stored");
        assert_eq!(
            chronicle_kernel::chain::verify_stream(&**fresh.chronicle.events(), &stream)
                .await
                .expect("verify"),
            Ok(5)
        );
    }
    eprintln!("{TEST}: {runs} runs, {failed_runs} failed");
    report(TEST, &faults);
    env.remove().await;
}
