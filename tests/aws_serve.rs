//! `chronicle aws-setup` and `chronicle serve --backend aws` end to end on the local AWS
//! endpoint: commands, history, the projected read models, the publisher -> Kinesis ->
//! activity-feed chain, and the orders sample's fulfilment through the reactor (table stream
//! -> publisher -> Kinesis -> reactor), all driven by the local event-source pollers.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use chronicle_aws::testing::AwsTestEnv;
use chronicle_aws::DynamoReadModelStore;
use chronicle_kernel::{ModelRef, ReadModelStore};
use common::{versions, Api, Reply, Server};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_setup_then_serve_backend_aws_end_to_end() {
    let Some(env) = AwsTestEnv::names_only("serve --backend aws").await else {
        return;
    };
    let vars = env.env_vars();

    // aws-setup creates everything, and a second run finds it all in place.
    for want in ["created", "exists"] {
        let out = Command::new(env!("CARGO_BIN_EXE_chronicle"))
            .arg("aws-setup")
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("running chronicle aws-setup");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "aws-setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.lines().count(), 7, "one line per resource: {stdout}");
        assert!(
            stdout.lines().all(|l| l.contains(want)),
            "every resource {want}: {stdout}"
        );
    }

    let server = Server::start_aws(&vars).await;
    let id = "acc-aws-1";
    server
        .command(id, json!({"type": "Open", "owner": "dana"}), &[])
        .await
        .expect_status(200);
    server
        .command(id, json!({"type": "Deposit", "amount": 120}), &[])
        .await
        .expect_status(200);
    server
        .command(
            id,
            json!({"type": "Withdraw", "amount": 20}),
            &[("If-Match", "2")],
        )
        .await
        .expect_status(200);
    server
        .command(id, json!({"type": "Withdraw", "amount": 1000}), &[])
        .await
        .expect_error(422, "insufficient_funds");
    server
        .command(
            id,
            json!({"type": "Deposit", "amount": 1}),
            &[("If-Match", "1")],
        )
        .await
        .expect_error(409, "version_conflict");
    // A client that sends its whole body before reading (urllib, requests) hears the 413;
    // the history below shows nothing was stored.
    let api = server.api.clone();
    let path = format!("/accounts/{id}/commands");
    let reply = tokio::task::spawn_blocking(move || {
        let mut body = json!({"type": "Deposit", "amount": 5})
            .to_string()
            .into_bytes();
        body.resize(5 * 1024 * 1024, b' ');
        let request = common::post_request(
            &path,
            &body,
            false,
            &[
                ("Content-Type", "application/json"),
                ("Connection", "close"),
            ],
        );
        common::write_then_read(&mut common::connect(&api), &request)
    })
    .await
    .expect("the raw HTTP exchange");
    reply
        .unwrap_or_else(|e| panic!("5 MiB sent whole first: {e}"))
        .expect_too_large();

    let history = server.history(id).await;
    assert_eq!(versions(&history), vec![1, 2, 3]);
    // The audit feed (the events table's by_time index), over the time of those events.
    let (first, last) = (
        history[0]["recorded_at"].as_str().expect("a time"),
        history[2]["recorded_at"].as_str().expect("a time"),
    );
    let feed = server
        .eventually(&format!("/audit/events?from={first}&to={last}"), |r| {
            r.status == 200 && r.body["events"].as_array().map(Vec::len) == Some(3)
        })
        .await;
    assert_eq!(feed.body["events"].as_array(), Some(&history));
    let state = server.consistent(id).await;
    state.expect_status(200);
    assert_eq!(state.body["balance"], 100);

    // The projector (a DynamoDB Streams poller) brings the read models up.
    let projected = server
        .eventually(&format!("/accounts/{id}"), |r| {
            r.status == 200 && r.body["version"] == 3
        })
        .await;
    assert_eq!(projected.body["balance"], 100);
    let listed = server
        .eventually("/accounts?owner=dana", |r| {
            r.status == 200 && r.body.to_string().contains(id)
        })
        .await;
    assert!(
        listed.body.to_string().contains("\"balance\":100"),
        "{}",
        listed.body
    );

    // Publisher -> Kinesis -> activity consumer: one feed entry per event.
    let store = DynamoReadModelStore::new(env.clients.dynamodb.clone(), &env.settings.read_table);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let feed = store
            .find(
                &ModelRef::active(chronicle_lambda::activity::ACTIVITY_FEED),
                "aggregate",
                &format!("accounts/{id}"),
                100,
            )
            .await
            .expect("reading the activity feed");
        let got: Vec<u64> = feed
            .iter()
            .filter_map(|d| d.body["version"].as_u64())
            .collect();
        if got == vec![1, 2, 3] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "activity feed never reached versions 1..=3; last {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The inspection commands read the same AWS store.
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_chronicle"))
            .args(args)
            .args(["--backend", "aws"])
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("running chronicle")
    };
    let out = cli(&["history", "accounts", id, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("history --json prints JSON");
    assert_eq!(versions(&events), vec![1, 2, 3]);
    let out = cli(&["state", "accounts", id, "--version", "2", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).expect("state prints JSON");
    assert_eq!(state["balance"], 120);
    let out = cli(&["audit", "--from", first, "--to", last, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("audit --json prints JSON");
    assert_eq!(events, history);
    // A rebuild on DynamoDB, stream by stream, while the served generation keeps answering;
    // then reads go to the new generation, which the stream-driven projector keeps following.
    for projection in ["accounts_state", "accounts_by_owner"] {
        let out = cli(&["rebuild", projection]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("as generation 2 from 3 events"), "{stdout}");
    }
    let status = server.get("/admin/projections").await;
    status.expect_status(200);
    let projections = status.body["projections"].as_array().expect("projections");
    let mut rebuilt = Vec::new();
    for p in projections {
        // The other domains' projections (orders, inventory) were not rebuilt.
        if ["accounts_state", "accounts_by_owner"].contains(&p["name"].as_str().unwrap_or("")) {
            assert_eq!(p["active_generation"], 2, "{p}");
            assert_eq!(p["rebuild"]["state"], "done", "{p}");
            rebuilt.push(p["name"].clone());
        } else {
            assert_eq!(p["active_generation"], 1, "{p}");
        }
        assert_eq!(p["state"], "live", "{p}");
        assert!(p["checkpoint"].is_null(), "no feed on AWS: {p}");
    }
    assert_eq!(rebuilt.len(), 2, "{projections:?}");
    let r = server.get(&format!("/accounts/{id}")).await;
    assert_eq!((r.status, r.body["balance"].clone()), (200, json!(100)));
    server
        .command(id, json!({"type": "Deposit", "amount": 5}), &[])
        .await
        .expect_status(200);
    server
        .eventually("/accounts?owner=dana", |r| {
            r.body["accounts"][0]["balance"] == 105
        })
        .await;
    server
        .eventually(&format!("/accounts/{id}"), |r| r.body["version"] == 4)
        .await;

    // Tamper evidence on DynamoDB: an intact chain verifies; an event changed behind the
    // store's back (a plain PutItem over it) is named.
    let out = cli(&["verify", "--all"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("1 of 1 streams verified (4 events)"),
        "{stdout}"
    );
    let key = |v: u64| {
        std::collections::HashMap::from([
            (
                "stream".to_owned(),
                AttributeValue::S(format!("accounts#{id}")),
            ),
            ("version".to_owned(), AttributeValue::N(v.to_string())),
        ])
    };
    let mut item = env
        .clients
        .dynamodb
        .get_item()
        .table_name(&env.settings.events_table)
        .set_key(Some(key(2)))
        .send()
        .await
        .expect("GetItem")
        .item
        .expect("event v2 is stored");
    let Some(AttributeValue::S(data)) = item.get("data").cloned() else {
        panic!("data is a string attribute: {item:?}");
    };
    item.insert(
        "data".to_owned(),
        AttributeValue::S(data.replace("120", "120000")),
    );
    env.clients
        .dynamodb
        .put_item()
        .table_name(&env.settings.events_table)
        .set_item(Some(item))
        .send()
        .await
        .expect("PutItem");
    for args in [&["verify", "accounts", id][..], &["verify", "--all"][..]] {
        let out = cli(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{args:?} must fail: {stdout}");
        assert!(
            stdout.contains(&format!("accounts/{id} v2: changed")),
            "{args:?}: {stdout}"
        );
    }

    drop(server);
    env.remove().await;
}

// The orders sample on AWS. A placed order settles only after its events went round the
// mappings (table stream -> publisher -> Kinesis -> reactor, and back for the inventories'
// answers), each a poller: everything below is polled for under a generous deadline, never
// timed.

/// How long an order may take to settle: only a guard against a hung test.
const SETTLE: Duration = Duration::from_secs(120);

async fn restock(api: &Api, sku: &str, quantity: u64) -> Reply {
    api.post_raw(
        &format!("/inventory/{sku}/commands"),
        json!({"type": "Restock", "quantity": quantity}).to_string(),
        &[],
    )
    .await
}

async fn place(api: &Api, id: &str, lines: &[(&str, u64)]) -> Reply {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
        .collect();
    api.post_raw(
        &format!("/orders/{id}/commands"),
        json!({"type": "Place", "customer": "c-aws", "lines": lines}).to_string(),
        &[],
    )
    .await
}

/// Polls `path` until `check` accepts the reply, or panics at `deadline` naming `what`.
async fn until(
    api: &Api,
    deadline: Instant,
    what: &str,
    path: &str,
    check: impl Fn(&Reply) -> bool,
) -> Reply {
    loop {
        let r = api.get(path).await;
        if check(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {path} never matched within {SETTLE:?}; last {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every order in `ids` is confirmed or rejected (folded from the events table);
/// returns their states by id.
async fn settled(api: &Api, ids: &[String]) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + SETTLE;
    let mut out = BTreeMap::new();
    for id in ids {
        let r = until(
            api,
            deadline,
            "an order settles",
            &format!("/orders/{id}?consistent=true"),
            |r| r.status == 200 && r.body["status"] != "placed",
        )
        .await;
        out.insert(id.clone(), r.body.clone());
    }
    out
}

/// Waits until a sku's stock, folded from the events table, is (available, reserved).
async fn stock_becomes(api: &Api, sku: &str, want: (u64, u64)) {
    let r = until(
        api,
        Instant::now() + SETTLE,
        "the stock settles",
        &format!("/inventory/{sku}?consistent=true"),
        |r| {
            r.status == 200
                && (r.body["available"].as_u64(), r.body["reserved"].as_u64())
                    == (Some(want.0), Some(want.1))
        },
    )
    .await;
    assert!(r.body["version"].as_u64().is_some(), "{}", r.body);
}

/// Every event of a stream (404: none).
async fn stream_events(api: &Api, path: &str) -> Vec<Value> {
    let r = api.get(&format!("{path}/events?limit=1000")).await;
    if r.status == 404 {
        return Vec::new();
    }
    r.expect_status(200);
    let events = r.body["events"].as_array().expect("events").clone();
    assert!(r.body["next_from_version"].is_null(), "more than a page");
    events
}

/// A sku's events of type `event_type`, counted per order.
async fn per_order(api: &Api, sku: &str, event_type: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in stream_events(api, &format!("/inventory/{sku}")).await {
        if e["event_type"] == event_type {
            let order = e["data"]["order"].as_str().expect("an order").to_owned();
            *out.entry(order).or_default() += 1;
        }
    }
    out
}

fn once<'a>(orders: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    orders.into_iter().map(|o| (o.to_owned(), 1)).collect()
}

fn event_types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().expect("an event type"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_confirmed_or_rejected_through_the_reactor_on_aws() {
    let Some(env) = AwsTestEnv::create("orders on serve --backend aws").await else {
        return;
    };
    let server = Server::start_aws(&env.env_vars()).await;
    restock(&server, "sku-a", 10).await.expect_status(200);
    restock(&server, "sku-b", 3).await.expect_status(200);
    // Enough of sku-a for all three; o-2 wants more sku-b than there is; nobody ever
    // restocked sku-never.
    let orders: [(&str, &[(&str, u64)]); 3] = [
        ("o-1", &[("sku-a", 2), ("sku-b", 1)]),
        ("o-2", &[("sku-a", 3), ("sku-b", 5)]),
        ("o-3", &[("sku-a", 1), ("sku-never", 1)]),
    ];
    for (id, lines) in orders {
        let r = place(&server, id, lines).await;
        r.expect_status(200);
        assert_eq!(
            r.body["events"][0]["event_type"], "OrderPlaced",
            "{}",
            r.body
        );
    }
    let ids: Vec<String> = orders.iter().map(|(id, _)| (*id).to_owned()).collect();
    let states = settled(&server, &ids).await;

    let o1 = &states["o-1"];
    assert_eq!(o1["status"], "confirmed", "{o1}");
    assert_eq!(
        o1["lines"],
        json!([{"sku": "sku-a", "quantity": 2}, {"sku": "sku-b", "quantity": 1}])
    );
    let o2 = &states["o-2"];
    assert_eq!(o2["status"], "rejected", "{o2}");
    assert!(
        o2["reason"]
            .as_str()
            .is_some_and(|r| r.contains("sku-b") && r.contains("insufficient stock")),
        "{o2}"
    );
    let o3 = &states["o-3"];
    assert_eq!(o3["status"], "rejected", "{o3}");
    assert!(
        o3["reason"]
            .as_str()
            .is_some_and(|r| r.contains("sku-never") && r.contains("never restocked")),
        "{o3}"
    );
    // The rejected orders' sku-a reservations are released (the release follows the
    // rejection: wait for it); only o-1 holds stock.
    stock_becomes(&server, "sku-a", (8, 2)).await;
    stock_becomes(&server, "sku-b", (2, 1)).await;
    server
        .get("/inventory/sku-never?consistent=true")
        .await
        .expect_error(404, "not_found");

    // Each reservation, refusal, release and decision happened once.
    assert_eq!(
        per_order(&server, "sku-a", "StockReserved").await,
        once(["o-1", "o-2", "o-3"])
    );
    assert_eq!(
        per_order(&server, "sku-a", "StockReleased").await,
        once(["o-2", "o-3"])
    );
    assert_eq!(
        per_order(&server, "sku-b", "StockReserved").await,
        once(["o-1"])
    );
    assert_eq!(
        per_order(&server, "sku-b", "ReservationRejected").await,
        once(["o-2"])
    );
    assert!(per_order(&server, "sku-b", "StockReleased")
        .await
        .is_empty());
    for (id, last) in [
        ("o-1", "OrderConfirmed"),
        ("o-2", "OrderRejected"),
        ("o-3", "OrderRejected"),
    ] {
        let events = stream_events(&server, &format!("/orders/{id}")).await;
        assert_eq!(event_types(&events), ["OrderPlaced", last], "{id}");
    }
    // The reaction's commands name their cause: o-1's placement.
    let placed = &stream_events(&server, "/orders/o-1").await[0];
    let reserved = stream_events(&server, "/inventory/sku-b").await;
    assert_eq!(reserved[1]["event_type"], "StockReserved");
    assert_eq!(reserved[1]["metadata"]["causation_id"], placed["event_id"]);

    // The projector brings the read models along.
    let deadline = Instant::now() + SETTLE;
    until(
        &server,
        deadline,
        "the order's read model",
        "/orders/o-1",
        |r| r.status == 200 && r.body["status"] == "confirmed",
    )
    .await;
    until(
        &server,
        deadline,
        "the inventory's read model",
        "/inventory/sku-a",
        |r| r.status == 200 && r.body["reserved"] == 2 && r.body["available"] == 8,
    )
    .await;
    // The reactor's status on AWS: no feed, so no checkpoint; nothing failed or refused.
    let r = server.get("/admin/reactions").await;
    r.expect_status(200);
    let f = r.body["reactions"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "order_fulfilment"))
        .expect("the fulfilment reaction is listed");
    assert!(f["checkpoint"].is_null(), "{f}");
    assert!(f["failure"].is_null(), "{f}");
    assert_eq!(f["refused"], 0, "{f}");

    drop(server);
    env.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_racing_for_little_stock_on_aws_confirm_exactly_what_it_allows() {
    let Some(env) = AwsTestEnv::create("orders racing on serve --backend aws").await else {
        return;
    };
    let server = Server::start_aws(&env.env_vars()).await;
    restock(&server, "scarce", 5).await.expect_status(200);
    let ids: Vec<String> = (0..20).map(|i| format!("race-{i}")).collect();
    let mut tasks = Vec::new();
    for id in &ids {
        let (api, id) = (server.api.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            place(&api, &id, &[("scarce", 1)]).await
        }));
    }
    for t in tasks {
        t.await.expect("a task").expect_status(200);
    }

    let states = settled(&server, &ids).await;
    let confirmed: BTreeSet<&str> = states
        .iter()
        .filter(|(_, s)| s["status"] == "confirmed")
        .map(|(id, _)| id.as_str())
        .collect();
    let rejected: BTreeSet<&str> = states
        .iter()
        .filter(|(_, s)| s["status"] == "rejected")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(
        confirmed.len(),
        5,
        "exactly as many confirmed as the stock allows: {states:?}"
    );
    assert_eq!(rejected.len(), 15, "every other order rejected: {states:?}");
    for id in &rejected {
        assert!(
            states[*id]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("scarce") && r.contains("insufficient stock")),
            "{id}: {}",
            states[*id]
        );
    }
    stock_becomes(&server, "scarce", (0, 5)).await;
    // Each confirmed order reserved once, each rejected one was refused once, nothing released.
    assert_eq!(
        per_order(&server, "scarce", "StockReserved").await,
        once(confirmed.iter().copied())
    );
    assert_eq!(
        per_order(&server, "scarce", "ReservationRejected").await,
        once(rejected.iter().copied())
    );
    assert!(per_order(&server, "scarce", "StockReleased")
        .await
        .is_empty());
    for id in &ids {
        let events = stream_events(&server, &format!("/orders/{id}")).await;
        assert_eq!(
            event_types(&events).len(),
            2,
            "{id}: one decision: {events:?}"
        );
    }

    drop(server);
    env.remove().await;
}
