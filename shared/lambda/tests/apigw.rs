//! The command and query functions invoked with the API Gateway HTTP API (payload v2) requests
//! under `events/apigw/`, through `lambda_http` exactly as Lambda runs them: every route, and
//! every bad-input case with its status and JSON error, each storing nothing.

mod common;

use chronicle_http::Routes;
use chronicle_kernel::envelope::format_timestamp;
use chronicle_kernel::{EventEnvelope, EventStore, ReadRange, StreamId};
use chronicle_lambda::App;
use lambda_http::request::LambdaRequest;
use lambda_http::tower::ServiceExt;
use lambda_http::{Adapter, Context, LambdaEvent};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Case {
    file: String,
    function: String,
    status: u16,
    code: Option<String>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../events/apigw")
}

/// Invokes a function's router with one payload; returns (status, JSON body).
async fn invoke(app: &App, routes: Routes, payload: &str) -> (u16, Value) {
    let request: LambdaRequest = serde_json::from_str(payload).expect("an API Gateway v2 request");
    let adapter = Adapter::from(chronicle_lambda::http::router(app, routes));
    let response = adapter
        .oneshot(LambdaEvent::new(request, Context::default()))
        .await
        .expect("the function answers");
    // What API Gateway receives: {"statusCode", "headers", "body", "isBase64Encoded", ...}.
    let wire = serde_json::to_value(&response).expect("a serialisable response");
    let status = wire["statusCode"].as_u64().expect("a statusCode") as u16;
    let body = wire["body"].as_str().unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `GET /audit/events?{query}` through the query function: the audit-feed payload with its
/// query replaced.
async fn audit(app: &App, query: &str) -> Value {
    let file = std::fs::read_dir(dir())
        .expect("events/apigw")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-audit-feed.json"))
        .expect("the audit-feed payload");
    let mut payload: Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("the audit payload"))
            .expect("JSON");
    payload["rawQueryString"] = Value::String(query.to_owned());
    payload["queryStringParameters"] = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let (status, body) = invoke(app, Routes::Reads, &payload.to_string()).await;
    assert_eq!(status, 200, "{query}: {body}");
    body
}

async fn observe(app: &App) -> Vec<Vec<EventEnvelope>> {
    let mut all = Vec::new();
    for (t, id) in [
        ("accounts", "acc-1"),
        ("accounts", "acc-closed"),
        ("accounts", "ghost"),
        ("orders", "ord-1"),
        ("orders", "ord-bad"),
        ("inventory", "sku-1"),
    ] {
        all.push(
            app.events
                .read_stream(&StreamId::new(t, id), ReadRange::all())
                .await
                .expect("read"),
        );
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_functions_answer_api_gateway_v2_payloads() {
    let Some((env, app)) = common::app("api gateway payloads", 100).await else {
        return;
    };
    let manifest: Vec<Case> = serde_json::from_str(
        &std::fs::read_to_string(dir().join("manifest.json")).expect("events/apigw/manifest.json"),
    )
    .expect("a manifest");
    assert!(manifest.len() > 40);
    let mut bodies: HashMap<String, Value> = HashMap::new();
    let mut failures = Vec::new();
    for case in &manifest {
        let payload = std::fs::read_to_string(dir().join(&case.file)).expect("a payload file");
        let routes = match case.function.as_str() {
            "command" => Routes::Commands,
            "query" => Routes::Reads,
            other => panic!("{}: unknown function {other}", case.file),
        };
        let before = observe(&app).await;
        let (status, body) = invoke(&app, routes, &payload).await;
        let code = body["error"]["code"].as_str().map(str::to_owned);
        if status != case.status || code != case.code {
            failures.push(format!(
                "{}: got {status} {code:?}, want {} {:?}: {body}",
                case.file, case.status, case.code
            ));
        }
        if case.status >= 400 {
            if !body["error"]["message"].is_string() {
                failures.push(format!("{}: error without a message: {body}", case.file));
            }
            if observe(&app).await != before {
                failures.push(format!(
                    "{}: a refused request changed stored events",
                    case.file
                ));
            }
        }
        bodies.insert(case.file.clone(), body);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let body = |suffix: &str| {
        bodies
            .iter()
            .find(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| v.clone())
            .expect("a case")
    };
    assert_eq!(
        body("-deposit-repeat.json"),
        body("-deposit.json"),
        "an idempotent repeat returns the original result"
    );
    assert_eq!(body("-state-consistent.json")["balance"], 70);
    assert_eq!(body("-state-at-version.json")["balance"], 100);
    assert_eq!(
        body("-history.json")["events"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(
        body("-deposit.json")["events"][0]["metadata"]["correlation_id"],
        "corr-1"
    );
    let versions = |b: Value| -> Vec<u64> {
        b["events"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["version"].as_u64()).collect())
            .unwrap_or_default()
    };
    assert_eq!(versions(body("-history-to-version.json")), vec![2, 3]);
    assert_eq!(versions(body("-history-event-type.json")), vec![2]);
    assert_eq!(versions(body("-history-time-range.json")), vec![1, 2, 3]);
    assert_eq!(body("-state-at-now.json")["version"], 3);

    // The audit feed, asked for the time its events were recorded in (the payloads name a
    // fixed day): every stored event (acc-1's three, acc-closed's two) in recorded order, the
    // same through pages of two, following `next` as a client would.
    // (The orders payloads come after these in the manifest: recorded later, out of the range.)
    let mut stored: Vec<EventEnvelope> = observe(&app)
        .await
        .into_iter()
        .flatten()
        .filter(|e| e.aggregate_type == "accounts")
        .collect();
    stored.sort_by(chronicle_kernel::recorded_order);
    assert_eq!(stored.len(), 5);
    let range = format!(
        "from={}&to={}",
        format_timestamp(&stored[0].recorded_at),
        format_timestamp(&stored[4].recorded_at)
    );
    let want: Vec<_> = stored
        .iter()
        .map(|e| (Some(e.aggregate_id.clone()), Some(e.version)))
        .collect();
    let key = |e: &Value| {
        (
            e["aggregate_id"].as_str().map(str::to_owned),
            e["version"].as_u64(),
        )
    };
    let feed = audit(&app, &format!("{range}&limit=100")).await;
    let events = feed["events"].as_array().expect("events").clone();
    assert_eq!(events.iter().map(key).collect::<Vec<_>>(), want);
    assert_eq!(feed["next"], Value::Null);
    let raw = audit(&app, &format!("{range}&raw=true")).await;
    assert_eq!(raw["events"].as_array().map(Vec::len), Some(5));
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let page = audit(&app, &format!("{range}&limit=2{after}")).await;
        let got = page["events"].as_array().expect("events");
        assert!(got.len() <= 2, "{page}");
        paged.extend(got.iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
        assert!(paged.len() <= 10, "pages never end: {page}");
    }
    assert_eq!(paged, events, "pages of two put together are the feed");
    env.remove().await;
}
