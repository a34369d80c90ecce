//! The orders and inventory sample through `chronicle serve`: the fulfilment reaction reserves
//! every line, confirms or rejects the order and releases what a rejected order held; bad input
//! is refused and stores nothing; many orders racing for little stock confirm exactly what the
//! stock allows; a server killed mid-workflow completes it after a restart.

mod common;

use common::{Api, Reply, Server};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn restock(api: &Api, sku: &str, quantity: u64) -> Reply {
    api.post_raw(
        &format!("/inventory/{sku}/commands"),
        json!({"type": "Restock", "quantity": quantity}).to_string(),
        &[],
    )
    .await
}

fn place_body(customer: &str, lines: &[(&str, u64)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, q)| json!({"sku": sku, "quantity": q}))
        .collect();
    json!({"type": "Place", "customer": customer, "lines": lines})
}

async fn place(api: &Api, id: &str, customer: &str, lines: &[(&str, u64)]) -> Reply {
    api.post_raw(
        &format!("/orders/{id}/commands"),
        place_body(customer, lines).to_string(),
        &[],
    )
    .await
}

/// Waits until the fulfilment reaction has handled every event in the store (nothing it
/// issued is still on its way), then returns the orders' and inventories' states folded from
/// the store.
async fn at_rest(api: &Api) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = api.get("/admin/reactions").await;
        r.expect_status(200);
        let reactions = r.body["reactions"].as_array().expect("reactions");
        let fulfilment = reactions
            .iter()
            .find(|x| x["name"] == "order_fulfilment")
            .expect("the fulfilment reaction is registered");
        assert!(
            fulfilment["failure"].is_null(),
            "the reaction failed: {fulfilment}"
        );
        if fulfilment["lag"]["events"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the reaction never caught up: {fulfilment}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn consistent(api: &Api, path: &str) -> Reply {
    api.get(&format!("{path}?consistent=true")).await
}

/// The order as folded from the store once every workflow is at rest.
async fn settled(api: &Api, id: &str) -> Value {
    at_rest(api).await;
    let r = consistent(api, &format!("/orders/{id}")).await;
    r.expect_status(200);
    r.body
}

async fn inventory(api: &Api, sku: &str) -> (u64, u64) {
    let r = consistent(api, &format!("/inventory/{sku}")).await;
    r.expect_status(200);
    (
        r.body["available"].as_u64().expect("available"),
        r.body["reserved"].as_u64().expect("reserved"),
    )
}

/// Every event of a stream, as stored.
async fn events(api: &Api, path: &str) -> Vec<Value> {
    let r = api.get(&format!("{path}/events?limit=1000")).await;
    if r.status == 404 {
        return Vec::new();
    }
    r.expect_status(200);
    r.body["events"].as_array().expect("events").clone()
}

/// The invariants at rest: for every sku, `reserved` is the sum of the confirmed orders'
/// quantities of it and `available + reserved` what was restocked; every order settled; no
/// order reserved or released a sku twice.
async fn check_invariants(api: &Api, orders: &[String], stock: &BTreeMap<String, u64>) {
    at_rest(api).await;
    let mut confirmed: BTreeMap<String, u64> = BTreeMap::new();
    for id in orders {
        let o = consistent(api, &format!("/orders/{id}")).await;
        o.expect_status(200);
        let status = o.body["status"].as_str().expect("a status").to_owned();
        assert!(
            status == "confirmed" || status == "rejected",
            "order {id} did not settle: {}",
            o.body
        );
        if status == "confirmed" {
            for l in o.body["lines"].as_array().expect("lines") {
                *confirmed
                    .entry(l["sku"].as_str().expect("a sku").to_owned())
                    .or_default() += l["quantity"].as_u64().expect("a quantity");
            }
        } else {
            assert!(
                o.body["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "a rejected order says why: {}",
                o.body
            );
        }
    }
    for (sku, restocked) in stock {
        let (available, reserved) = inventory(api, sku).await;
        let want = confirmed.get(sku).copied().unwrap_or(0);
        assert_eq!(
            reserved, want,
            "{sku}: reserved {reserved}, confirmed orders hold {want}"
        );
        assert_eq!(available + reserved, *restocked, "{sku}: stock leaked");
        let mut reserved_by: BTreeMap<String, usize> = BTreeMap::new();
        let mut released_by: BTreeMap<String, usize> = BTreeMap::new();
        for e in events(api, &format!("/inventory/{sku}")).await {
            let order = e["data"]["order"].as_str().unwrap_or_default().to_owned();
            match e["event_type"].as_str() {
                Some("StockReserved") => *reserved_by.entry(order).or_default() += 1,
                Some("StockReleased") => *released_by.entry(order).or_default() += 1,
                _ => {}
            }
        }
        for (order, n) in reserved_by.iter().chain(&released_by) {
            assert_eq!(*n, 1, "{sku}: order {order} reserved or released {n} times");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_confirmed_once_every_line_is_reserved() {
    let s = Server::start().await;
    restock(&s, "sku-a", 5).await.expect_status(200);
    restock(&s, "sku-b", 2).await.expect_status(200);
    let r = place(&s, "o-1", "c-1", &[("sku-a", 2), ("sku-b", 1)]).await;
    r.expect_status(200);
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["events"][0]["event_type"], "OrderPlaced");

    let order = settled(&s, "o-1").await;
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["customer"], "c-1");
    assert_eq!(
        order["lines"],
        json!([{"sku": "sku-a", "quantity": 2}, {"sku": "sku-b", "quantity": 1}])
    );
    assert_eq!(inventory(&s, "sku-a").await, (3, 2));
    assert_eq!(inventory(&s, "sku-b").await, (1, 1));
    // The read models follow.
    let a = s
        .eventually("/inventory/sku-a", |r| r.body["reserved"] == 2)
        .await;
    assert_eq!(a.body["available"], 3, "{}", a.body);
    assert!(a.body["version"].as_u64().is_some(), "{}", a.body);
    s.eventually("/orders/o-1", |r| r.body["status"] == "confirmed")
        .await;
    // The commands the reaction issued carry the triggering event as their cause.
    let placed = &events(&s, "/orders/o-1").await[0];
    let reserved = &events(&s, "/inventory/sku-a").await[1];
    assert_eq!(reserved["event_type"], "StockReserved");
    assert_eq!(reserved["metadata"]["causation_id"], placed["event_id"]);
    assert!(reserved["metadata"]["idempotency_key"]
        .as_str()
        .is_some_and(|k| k.starts_with("order_fulfilment:")));
    check_invariants(
        &s,
        &["o-1".into()],
        &BTreeMap::from([("sku-a".into(), 5), ("sku-b".into(), 2)]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_that_cannot_be_filled_is_rejected_and_releases_what_it_reserved() {
    let s = Server::start().await;
    restock(&s, "sku-a", 5).await.expect_status(200);
    restock(&s, "sku-b", 1).await.expect_status(200);
    place(&s, "o-2", "c-1", &[("sku-a", 3), ("sku-b", 2)])
        .await
        .expect_status(200);
    let order = settled(&s, "o-2").await;
    assert_eq!(order["status"], "rejected", "{order}");
    let reason = order["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("sku-b") && reason.contains("insufficient stock"),
        "{reason}"
    );
    assert_eq!(inventory(&s, "sku-a").await, (5, 0), "released");
    assert_eq!(inventory(&s, "sku-b").await, (1, 0), "never reserved");

    // A sku nobody ever restocked rejects the order too; its inventory still does not exist.
    place(&s, "o-3", "c-2", &[("sku-a", 1), ("sku-never", 1)])
        .await
        .expect_status(200);
    let order = settled(&s, "o-3").await;
    assert_eq!(order["status"], "rejected", "{order}");
    assert!(
        order["reason"]
            .as_str()
            .is_some_and(|r| r.contains("sku-never") && r.contains("never restocked")),
        "{order}"
    );
    s.get("/inventory/sku-never")
        .await
        .expect_error(404, "not_found");
    check_invariants(
        &s,
        &["o-2".into(), "o-3".into()],
        &BTreeMap::from([("sku-a".into(), 5), ("sku-b".into(), 1)]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_listed_by_customer() {
    let s = Server::start().await;
    restock(&s, "sku-a", 10).await.expect_status(200);
    for (id, customer) in [("l-1", "c-1"), ("l-2", "c-2"), ("l-3", "c-1")] {
        place(&s, id, customer, &[("sku-a", 1)])
            .await
            .expect_status(200);
    }
    let r = s
        .eventually("/orders?customer=c-1", |r| {
            r.body["orders"]
                .as_array()
                .is_some_and(|o| o.len() == 2 && o.iter().all(|o| o["status"] == "confirmed"))
        })
        .await;
    let mut ids: Vec<&str> = r.body["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["id"].as_str().expect("an id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["l-1", "l-3"]);
    s.get("/orders?owner=c-1")
        .await
        .expect_error(400, "invalid_query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_orders_and_internal_commands_are_refused_and_store_nothing() {
    let s = Server::start().await;
    restock(&s, "sku-a", 3).await.expect_status(200);
    let too_many: Vec<(String, u64)> = (0..51).map(|i| (format!("s-{i}"), 1)).collect();
    let too_many: Vec<(&str, u64)> = too_many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("no lines", place_body("c-1", &[]), "lines"),
        ("51 lines", place_body("c-1", &too_many), "lines"),
        (
            "zero quantity",
            place_body("c-1", &[("sku-a", 0)]),
            "quantity",
        ),
        (
            "the same sku twice",
            place_body("c-1", &[("sku-a", 1), ("sku-a", 2)]),
            "sku",
        ),
        (
            "a sku that is no id",
            place_body("c-1", &[("a b", 1)]),
            "sku",
        ),
        (
            "a blank customer",
            place_body(" ", &[("sku-a", 1)]),
            "customer",
        ),
        (
            "an unknown field",
            json!({"type": "Place", "customer": "c", "lines": [{"sku": "sku-a", "quantity": 1}], "x": 1}),
            "x",
        ),
        (
            "a negative quantity",
            json!({"type": "Place", "customer": "c", "lines": [{"sku": "sku-a", "quantity": -1}]}),
            "lines[0].quantity",
        ),
        (
            "a quantity that is no number",
            json!({"type": "Place", "customer": "c", "lines": [{"sku": "sku-a", "quantity": "x"}]}),
            "lines[0].quantity",
        ),
        (
            "a customer that is no string",
            json!({"type": "Place", "customer": 5, "lines": [{"sku": "sku-a", "quantity": 1}]}),
            "customer",
        ),
        (
            "a line without its quantity",
            json!({"type": "Place", "customer": "c", "lines": [{"sku": "sku-a"}]}),
            "quantity",
        ),
        ("a client's Confirm", json!({"type": "Confirm"}), "Confirm"),
        (
            "a client's Reject",
            json!({"type": "Reject", "reason": "no"}),
            "Reject",
        ),
    ];
    for (what, body, names) in cases {
        let r = s
            .post_raw("/orders/o-bad/commands", body.to_string(), &[])
            .await;
        r.expect_error(400, "invalid_command");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(names)),
            "{what}: the message names {names:?}: {}",
            r.body
        );
    }
    s.get("/orders/o-bad").await.expect_error(404, "not_found");
    assert!(events(&s, "/orders/o-bad").await.is_empty());
    for body in [
        json!({"type": "Reserve", "order": "o-x", "quantity": 1}),
        json!({"type": "Release", "order": "o-x"}),
        json!({"type": "Restock", "quantity": 0}),
    ] {
        s.post_raw("/inventory/sku-a/commands", body.to_string(), &[])
            .await
            .expect_error(400, "invalid_command");
    }
    assert_eq!(inventory(&s, "sku-a").await, (3, 0));
    assert_eq!(events(&s, "/inventory/sku-a").await.len(), 1);

    // A domain refusal is 422 and stores nothing.
    place(&s, "o-twice", "c-1", &[("sku-a", 1)])
        .await
        .expect_status(200);
    place(&s, "o-twice", "c-1", &[("sku-a", 1)])
        .await
        .expect_error(422, "order_already_placed");
    assert_eq!(
        events(&s, "/orders/o-twice")
            .await
            .iter()
            .filter(|e| e["event_type"] == "OrderPlaced")
            .count(),
        1
    );
    // If-Match and Idempotency-Key work as for accounts.
    s.post_raw(
        "/orders/o-im/commands",
        place_body("c-1", &[("sku-a", 1)]).to_string(),
        &[("If-Match", "3")],
    )
    .await
    .expect_error(409, "version_conflict");
    for _ in 0..2 {
        s.post_raw(
            "/orders/o-key/commands",
            place_body("c-1", &[("sku-a", 1)]).to_string(),
            &[("Idempotency-Key", "place-o-key")],
        )
        .await
        .expect_status(200);
    }
    check_invariants(
        &s,
        &["o-twice".into(), "o-key".into()],
        &BTreeMap::from([("sku-a".into(), 3)]),
    )
    .await;
}

/// `n` orders of one unit of `sku` each, placed at once.
async fn race(api: &Api, prefix: &str, n: usize, lines: &[(&str, u64)]) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let mut tasks = Vec::new();
    for id in &ids {
        let (api, id) = (api.clone(), id.clone());
        let body = place_body("racer", lines).to_string();
        tasks.push(tokio::spawn(async move {
            api.post_raw(&format!("/orders/{id}/commands"), body, &[])
                .await
        }));
    }
    for t in tasks {
        t.await.expect("a task").expect_status(200);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_orders_racing_for_little_stock_confirm_exactly_what_it_allows() {
    let s = Server::start().await;
    restock(&s, "scarce", 7).await.expect_status(200);
    restock(&s, "plenty", 1000).await.expect_status(200);
    let ids = race(&s, "race", 40, &[("plenty", 2), ("scarce", 1)]).await;
    check_invariants(
        &s,
        &ids,
        &BTreeMap::from([("scarce".into(), 7), ("plenty".into(), 1000)]),
    )
    .await;
    let mut confirmed = 0;
    for id in &ids {
        if consistent(&s, &format!("/orders/{id}")).await.body["status"] == "confirmed" {
            confirmed += 1;
        }
    }
    assert_eq!(
        confirmed, 7,
        "exactly as many confirmed as the stock allows"
    );
    assert_eq!(inventory(&s, "scarce").await, (0, 7));
    assert_eq!(inventory(&s, "plenty").await, (1000 - 14, 14));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_workflow_completes_it_after_a_restart() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let stock = BTreeMap::from([
        ("k-a".to_string(), 30),
        ("k-b".to_string(), 12),
        ("k-c".to_string(), 50),
    ]);
    let mut placed = Vec::new();
    for round in 0..3 {
        let mut s = Server::start_in(tmp.path()).await;
        if round == 0 {
            for (sku, q) in &stock {
                restock(&s, sku, *q).await.expect_status(200);
            }
        }
        // Orders go in while the reaction works through the ones before; the kill lands
        // wherever it lands (between a reservation and a confirmation, most likely).
        let mut tasks = Vec::new();
        for i in 0..30 {
            let api = s.api.clone();
            let id = format!("k-{round}-{i}");
            tasks.push(tokio::spawn(async move {
                let r = api
                    .try_request(
                        reqwest::Method::POST,
                        &format!("/orders/{id}/commands"),
                        Some(
                            place_body("killer", &[("k-a", 1), ("k-b", 1), ("k-c", 2)])
                                .to_string()
                                .into_bytes(),
                        ),
                        &[],
                    )
                    .await;
                (id, r)
            }));
        }
        tokio::time::sleep(Duration::from_millis(150 + 100 * round)).await;
        s.kill();
        for t in tasks {
            let (id, r) = t.await.expect("a task");
            if let Ok(r) = r {
                if r.status == 200 {
                    placed.push(id);
                }
            }
        }
    }
    assert!(!placed.is_empty(), "no order was placed before the kills");
    let s = Server::start_in(tmp.path()).await;
    // Orders whose answer was lost may be stored too: check every stored one.
    let mut all = placed.clone();
    for round in 0..3 {
        for i in 0..30 {
            let id = format!("k-{round}-{i}");
            if !all.contains(&id)
                && s.get(&format!("/orders/{id}?consistent=true")).await.status == 200
            {
                all.push(id);
            }
        }
    }
    check_invariants(&s, &all, &stock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaction_reports_its_checkpoint_and_lag() {
    let s = Server::start().await;
    restock(&s, "sku-a", 1).await.expect_status(200);
    place(&s, "o-1", "c-1", &[("sku-a", 1)])
        .await
        .expect_status(200);
    at_rest(&s).await;
    let r = s.get("/admin/reactions").await;
    let f = &r.body["reactions"][0];
    assert_eq!(f["name"], "order_fulfilment", "{}", r.body);
    assert_eq!(f["state"], "live");
    assert_eq!(f["lag"]["events"], 0);
    assert!(f["checkpoint"].as_u64().is_some_and(|c| c >= 4), "{f}");
    assert_eq!(f["refused"], 0);
    assert!(f["subscriptions"]
        .as_array()
        .is_some_and(|s| s.contains(&json!(["orders", "OrderPlaced"]))));
}
