//! End-to-end: the real `chronicle serve` binary over HTTP.

mod common;

use common::{versions, Server};
use serde_json::{json, Value};

#[tokio::test]
async fn health_answers() {
    let server = common::Server::start().await;
    let r = server.get("/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "ok");
}

fn account(id: &str, owner: &str, balance: u64, status: &str, version: u64) -> Value {
    json!({
        "id": id,
        "owner": owner,
        "balance": balance,
        "currency": "EUR",
        "status": status,
        "version": version,
    })
}

/// Sends a command that must succeed and returns its reply.
async fn ok(server: &Server, id: &str, command: Value) -> common::Reply {
    let r = server.command(id, command.clone(), &[]).await;
    assert_eq!(r.status, 200, "{command} on {id}: {}", r.body);
    r
}

#[tokio::test]
async fn open_deposit_withdraw_and_read_back() {
    let server = Server::start().await;
    let id = "acc-1";

    let r = ok(&server, id, json!({"type": "Open", "owner": "alice"})).await;
    assert_eq!(r.body["aggregate_id"], id);
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.header("etag"), Some("\"1\""));
    let events = r.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_type"], "AccountOpened");
    assert_eq!(events[0]["aggregate_type"], "accounts");
    assert_eq!(events[0]["aggregate_id"], id);
    assert_eq!(events[0]["version"], 1);
    assert_eq!(
        events[0]["data"],
        json!({"owner": "alice", "currency": "EUR"})
    );

    let r = ok(&server, id, json!({"type": "Deposit", "amount": 100})).await;
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.body["events"][0]["event_type"], "Deposited");
    assert_eq!(
        r.body["events"][0]["data"],
        json!({"amount": 100, "currency": "EUR"})
    );
    let r = ok(&server, id, json!({"type": "Deposit", "amount": 250})).await;
    assert_eq!(r.body["version"], 3);
    let r = ok(&server, id, json!({"type": "Withdraw", "amount": 30})).await;
    assert_eq!(r.body["version"], 4);
    assert_eq!(r.body["events"][0]["event_type"], "Withdrawn");
    assert_eq!(r.body["events"][0]["data"], json!({"amount": 30}));

    let expected = account(id, "alice", 320, "open", 4);
    // The read model is eventually consistent: wait for it.
    let r = server
        .eventually(&format!("/accounts/{id}"), |r| {
            r.status == 200 && r.body["version"] == 4
        })
        .await;
    assert_eq!(r.body, expected);
    assert_eq!(r.header("etag"), Some("\"4\""));
    // Folded from the store: equal at once.
    let r = server.consistent(id).await;
    r.expect_status(200);
    assert_eq!(r.body, expected);
    assert_eq!(r.header("etag"), Some("\"4\""));

    // The history, in order, with every event's data.
    let history = server.history(id).await;
    assert_eq!(versions(&history), vec![1, 2, 3, 4]);
    let types: Vec<&str> = history
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["AccountOpened", "Deposited", "Deposited", "Withdrawn"]
    );
    assert_eq!(history[2]["data"]["amount"], 250);

    // Withdrawing more than the balance is refused and stores nothing.
    let r = server
        .command(id, json!({"type": "Withdraw", "amount": 321}), &[])
        .await;
    r.expect_error(422, "insufficient_funds");
    assert_eq!(server.consistent(id).await.body, expected);
    // So is opening twice.
    let r = server
        .command(id, json!({"type": "Open", "owner": "mallory"}), &[])
        .await;
    r.expect_error(422, "account_already_open");
    assert_eq!(server.consistent(id).await.body, expected);
    assert_eq!(server.history(id).await.len(), 4);

    // An account nobody opened is not found, as state and as history.
    server
        .get("/accounts/nobody")
        .await
        .expect_error(404, "not_found");
    server
        .get("/accounts/nobody?consistent=true")
        .await
        .expect_error(404, "not_found");
    server
        .get("/accounts/nobody/events")
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn history_pages_follow_next_from_version() {
    let server = Server::start().await;
    let id = "paged";
    ok(&server, id, json!({"type": "Open", "owner": "pat"})).await;
    for amount in 1..=9u64 {
        ok(
            &server,
            id,
            json!({"type": "Deposit", "amount": amount * 10}),
        )
        .await;
    }
    // 10 events: version 1 is the opening, version v > 1 deposited (v - 1) * 10.
    let all = server.get(&format!("/accounts/{id}/events")).await;
    all.expect_status(200);
    assert_eq!(all.body["aggregate_id"], id);
    assert_eq!(all.body["next_from_version"], Value::Null);
    let all = all.body["events"].as_array().unwrap().clone();
    assert_eq!(versions(&all), (1..=10).collect::<Vec<_>>());
    for e in &all[1..] {
        let v = e["version"].as_u64().unwrap();
        assert_eq!(e["data"]["amount"], (v - 1) * 10, "event {e}");
    }

    // limit=3: pages 1-3, 4-6, 7-9, 10, each pointing at the next.
    let mut from = 1;
    let mut pages = Vec::new();
    let mut collected = Vec::new();
    loop {
        let r = server
            .get(&format!(
                "/accounts/{id}/events?from_version={from}&limit=3"
            ))
            .await;
        r.expect_status(200);
        let page = r.body["events"].as_array().unwrap().clone();
        pages.push(versions(&page));
        collected.extend(page);
        match r.body["next_from_version"].as_u64() {
            Some(next) => {
                assert_eq!(next, collected.len() as u64 + 1);
                from = next;
            }
            None => break,
        }
        assert!(pages.len() < 10, "pagination does not end: {pages:?}");
    }
    assert_eq!(
        pages,
        vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9], vec![10]]
    );
    assert_eq!(
        collected, all,
        "the pages put together are the whole history"
    );

    // limit=5 divides 10: the second page is the last and says so.
    let r = server.get(&format!("/accounts/{id}/events?limit=5")).await;
    assert_eq!(
        versions(r.body["events"].as_array().unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(r.body["next_from_version"], 6);
    let r = server
        .get(&format!("/accounts/{id}/events?from_version=6&limit=5"))
        .await;
    assert_eq!(
        versions(r.body["events"].as_array().unwrap()),
        vec![6, 7, 8, 9, 10]
    );
    assert_eq!(r.body["next_from_version"], Value::Null);
    // Past the end of an existing account: an empty page, not a 404.
    let r = server
        .get(&format!("/accounts/{id}/events?from_version=11&limit=5"))
        .await;
    r.expect_status(200);
    assert_eq!(r.body["events"], json!([]));
    assert_eq!(r.body["next_from_version"], Value::Null);
    // Of an account that does not exist: 404 from any version.
    server
        .get("/accounts/never-opened/events?from_version=5")
        .await
        .expect_error(404, "not_found");

    // A page from the middle.
    let r = server
        .get(&format!("/accounts/{id}/events?from_version=8"))
        .await;
    assert_eq!(
        versions(r.body["events"].as_array().unwrap()),
        vec![8, 9, 10]
    );
    assert_eq!(r.body["next_from_version"], Value::Null);
}

#[tokio::test]
async fn time_travel_shows_each_version() {
    let server = Server::start().await;
    let id = "traveller";
    ok(&server, id, json!({"type": "Open", "owner": "tess"})).await;
    ok(&server, id, json!({"type": "Deposit", "amount": 100})).await;
    ok(&server, id, json!({"type": "Deposit", "amount": 50})).await;
    ok(&server, id, json!({"type": "Withdraw", "amount": 70})).await;
    ok(&server, id, json!({"type": "Close"})).await;

    let expected = [
        (1, 0, "open"),
        (2, 100, "open"),
        (3, 150, "open"),
        (4, 80, "open"),
        (5, 80, "closed"),
    ];
    for (version, balance, status) in expected {
        let r = server
            .get(&format!("/accounts/{id}?version={version}"))
            .await;
        r.expect_status(200);
        assert_eq!(
            r.body,
            account(id, "tess", balance, status, version),
            "as of version {version}"
        );
        assert_eq!(r.header("etag"), Some(format!("\"{version}\"").as_str()));
    }
    // The latest version is the current state.
    assert_eq!(
        server.consistent(id).await.body,
        account(id, "tess", 80, "closed", 5)
    );
    // Beyond the latest version: 404.
    for v in [6, 100] {
        server
            .get(&format!("/accounts/{id}?version={v}"))
            .await
            .expect_error(404, "version_not_found");
    }
}

async fn listed(server: &Server, owner: &str) -> Vec<Value> {
    let r = server.get(&format!("/accounts?owner={owner}")).await;
    r.expect_status(200);
    let mut accounts = r.body["accounts"].as_array().expect("accounts").clone();
    accounts.sort_by_key(|a| a["id"].as_str().unwrap_or_default().to_owned());
    accounts
}

#[tokio::test]
async fn accounts_are_listed_by_owner() {
    let server = Server::start().await;
    ok(&server, "a-1", json!({"type": "Open", "owner": "alice"})).await;
    ok(&server, "a-2", json!({"type": "Open", "owner": "alice"})).await;
    ok(&server, "b-1", json!({"type": "Open", "owner": "bob"})).await;
    ok(&server, "a-2", json!({"type": "Deposit", "amount": 7})).await;
    ok(&server, "b-1", json!({"type": "Deposit", "amount": 9})).await;

    let alice = vec![
        account("a-1", "alice", 0, "open", 1),
        account("a-2", "alice", 7, "open", 2),
    ];
    let bob = vec![account("b-1", "bob", 9, "open", 2)];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (a, b) = (listed(&server, "alice").await, listed(&server, "bob").await);
        if a == alice && b == bob {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lists never matched: alice {a:?}, bob {b:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // An owner with no account: an empty list, not an error.
    assert_eq!(listed(&server, "carol").await, Vec::<Value>::new());
    // Owners are matched exactly.
    assert_eq!(listed(&server, "ali").await, Vec::<Value>::new());
    // `limit` caps the list.
    let r = server.get("/accounts?owner=alice&limit=1").await;
    r.expect_status(200);
    assert_eq!(r.body["accounts"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn idempotent_repeats_store_nothing_new() {
    let server = Server::start().await;
    let id = "idem";
    ok(&server, id, json!({"type": "Open", "owner": "ida"})).await;
    let key = [("Idempotency-Key", "deposit-40")];
    let first = server
        .command(id, json!({"type": "Deposit", "amount": 40}), &key)
        .await;
    first.expect_status(200);
    assert_eq!(first.body["version"], 2);
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(
        first.body["events"][0]["metadata"]["idempotency_key"],
        "deposit-40"
    );
    let history = server.history(id).await;
    assert_eq!(versions(&history), vec![1, 2]);

    // The same key and body: the same answer, flagged as replayed, nothing new stored.
    for _ in 0..2 {
        let again = server
            .command(id, json!({"type": "Deposit", "amount": 40}), &key)
            .await;
        again.expect_status(200);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.body, first.body);
        assert_eq!(server.history(id).await, history);
    }
    // The same key with another body: refused, nothing stored.
    server
        .command(id, json!({"type": "Deposit", "amount": 41}), &key)
        .await
        .expect_error(422, "idempotency_key_reused");
    server
        .command(id, json!({"type": "Withdraw", "amount": 40}), &key)
        .await
        .expect_error(422, "idempotency_key_reused");
    // The same key and body for another account is another command too.
    ok(&server, "idem-2", json!({"type": "Open", "owner": "ida"})).await;
    server
        .command("idem-2", json!({"type": "Deposit", "amount": 40}), &key)
        .await
        .expect_error(422, "idempotency_key_reused");
    assert_eq!(server.history(id).await, history);
    assert_eq!(versions(&server.history("idem-2").await), vec![1]);
    assert_eq!(server.consistent(id).await.body["balance"], 40);
    assert_eq!(server.consistent("idem-2").await.body["balance"], 0);

    // Without a key the same command is simply applied again.
    ok(&server, id, json!({"type": "Deposit", "amount": 40})).await;
    assert_eq!(server.consistent(id).await.body["balance"], 80);
}

/// `--idempotency-retention 2s`: a repeat inside the window is answered from the record, one
/// after it runs again (a second deposit) and is recorded anew.
#[tokio::test]
async fn a_repeat_after_the_idempotency_retention_runs_again() {
    let server = Server::start_with(&["--idempotency-retention", "2s"]).await;
    let id = "idem-retention";
    ok(&server, id, json!({"type": "Open", "owner": "rita"})).await;
    let key = [("Idempotency-Key", "deposit-once")];
    let deposit = json!({"type": "Deposit", "amount": 40});
    let sent = std::time::Instant::now();
    let first = server.command(id, deposit.clone(), &key).await;
    let replied = std::time::Instant::now();
    first.expect_status(200);
    assert_eq!(first.body["version"], 2);
    let again = server.command(id, deposit.clone(), &key).await;
    again.expect_status(200);
    // Recorded after `sent`: under 2 s since then, the record is surely live.
    if sent.elapsed() < std::time::Duration::from_secs(2) {
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.body, first.body);
        server
            .command(id, json!({"type": "Deposit", "amount": 41}), &key)
            .await
            .expect_error(422, "idempotency_key_reused");
    }

    // The record expires 2 s after it was recorded (before the first reply), rounded up to
    // the second: past 3 s after the reply it has expired whatever the rounding.
    let wait = std::time::Duration::from_millis(3200).saturating_sub(replied.elapsed());
    tokio::time::sleep(wait).await;
    let late = server.command(id, deposit.clone(), &key).await;
    late.expect_status(200);
    assert_eq!(late.header("idempotent-replayed"), None, "{}", late.body);
    assert_eq!(late.body["version"], 3, "the deposit ran a second time");
    assert_eq!(server.consistent(id).await.body["balance"], 80);
    assert_eq!(versions(&server.history(id).await), vec![1, 2, 3]);
    // Its new record answers the next repeat (if that comes inside its window).
    let replay = server.command(id, deposit, &key).await;
    replay.expect_status(200);
    if replay.header("idempotent-replayed") == Some("true") {
        assert_eq!(replay.body, late.body);
    }
}

#[tokio::test]
async fn a_zero_or_malformed_idempotency_retention_is_refused_at_startup() {
    for (args, env) in [
        (vec!["--idempotency-retention", "0s"], None),
        (vec!["--idempotency-retention", "a week"], None),
        (vec![], Some("0d")),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chronicle"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(&args)
            .args(["--addr", "127.0.0.1:0"]);
        if let Some(v) = env {
            cmd.env("CHRONICLE_IDEMPOTENCY_RETENTION", v);
        }
        let out = cmd.output().expect("running chronicle serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} was accepted");
        assert!(
            err.contains("idempotency-retention"),
            "{args:?} {env:?}: {err}"
        );
    }
}

#[tokio::test]
async fn if_match_guards_against_stale_writes() {
    let server = Server::start().await;
    let id = "guarded";
    ok(&server, id, json!({"type": "Open", "owner": "gus"})).await;
    ok(&server, id, json!({"type": "Deposit", "amount": 10})).await;

    // The right version: applied.
    let r = server
        .command(
            id,
            json!({"type": "Deposit", "amount": 5}),
            &[("If-Match", "2")],
        )
        .await;
    r.expect_status(200);
    assert_eq!(r.body["version"], 3);
    // The ETag form is accepted too.
    let r = server
        .command(
            id,
            json!({"type": "Deposit", "amount": 6}),
            &[("If-Match", "\"3\"")],
        )
        .await;
    r.expect_status(200);
    assert_eq!(r.body["version"], 4);

    let before = server.history(id).await;
    // A stale version: 409 naming both versions, nothing stored.
    for stale in ["2", "3", "0", "5"] {
        let r = server
            .command(
                id,
                json!({"type": "Deposit", "amount": 1000}),
                &[("If-Match", stale)],
            )
            .await;
        r.expect_error(409, "version_conflict");
        assert_eq!(
            r.body["error"]["expected_version"],
            stale.parse::<u64>().unwrap(),
            "{}",
            r.body
        );
        assert_eq!(r.body["error"]["actual_version"], 4, "{}", r.body);
    }
    assert_eq!(server.history(id).await, before);
    assert_eq!(server.consistent(id).await.body["balance"], 21);

    // If-Match: 0 on an account nobody opened is right (no events yet): opening succeeds.
    let r = server
        .command(
            "fresh",
            json!({"type": "Open", "owner": "gus"}),
            &[("If-Match", "0")],
        )
        .await;
    r.expect_status(200);
    assert_eq!(r.body["version"], 1);
}

#[tokio::test]
async fn a_closed_account_takes_no_more_money() {
    let server = Server::start().await;
    let id = "closing";
    ok(&server, id, json!({"type": "Open", "owner": "cleo"})).await;
    ok(&server, id, json!({"type": "Deposit", "amount": 12})).await;
    let r = ok(&server, id, json!({"type": "Close"})).await;
    assert_eq!(r.body["version"], 3);
    assert_eq!(r.body["events"][0]["event_type"], "AccountClosed");

    let closed = account(id, "cleo", 12, "closed", 3);
    assert_eq!(server.consistent(id).await.body, closed);
    for command in [
        json!({"type": "Deposit", "amount": 1}),
        json!({"type": "Withdraw", "amount": 1}),
        json!({"type": "Close"}),
    ] {
        server
            .command(id, command, &[])
            .await
            .expect_error(422, "account_closed");
    }
    // Reopening a closed account is refused as closed, not as already open.
    server
        .command(id, json!({"type": "Open", "owner": "cleo"}), &[])
        .await
        .expect_error(422, "account_closed");
    assert_eq!(versions(&server.history(id).await), vec![1, 2, 3]);
    assert_eq!(server.consistent(id).await.body, closed);
    let r = server
        .eventually(&format!("/accounts/{id}"), |r| r.body["version"] == 3)
        .await;
    assert_eq!(r.body, closed);
}

#[tokio::test]
async fn commands_to_an_unopened_account_are_not_found() {
    let server = Server::start().await;
    for command in [
        json!({"type": "Deposit", "amount": 1}),
        json!({"type": "Withdraw", "amount": 1}),
        json!({"type": "Close"}),
    ] {
        server
            .command("ghost", command, &[])
            .await
            .expect_error(404, "account_not_found");
    }
    server
        .get("/accounts/ghost/events")
        .await
        .expect_error(404, "not_found");
    // Another currency is kept, and a deposit in another currency is refused.
    let r = ok(
        &server,
        "usd",
        json!({"type": "Open", "owner": "uma", "currency": "USD"}),
    )
    .await;
    assert_eq!(r.body["events"][0]["data"]["currency"], "USD");
    ok(
        &server,
        "usd",
        json!({"type": "Deposit", "amount": 3, "currency": "USD"}),
    )
    .await;
    server
        .command(
            "usd",
            json!({"type": "Deposit", "amount": 3, "currency": "EUR"}),
            &[],
        )
        .await
        .expect_error(422, "currency_mismatch");
    let r = server.consistent("usd").await;
    assert_eq!(r.body["currency"], "USD");
    assert_eq!(r.body["balance"], 3);
    assert_eq!(r.body["version"], 2);
}

#[tokio::test]
async fn a_path_that_is_not_utf8_is_a_json_400() {
    let server = common::Server::start().await;
    for path in ["/accounts/a%FF1", "/accounts/a%FF1/events", "/accounts/%C3"] {
        server.get(path).await.expect_error(400, "invalid_path");
    }
}

/// `serve --publish-log`: every event, upcast, lands in the JSON-lines log in order.
#[tokio::test]
async fn serve_publishes_events_to_the_log() {
    let logdir = tempfile::tempdir().expect("temp dir");
    let log = logdir.path().join("published.jsonl");
    let log_arg = log.display().to_string();
    let server = Server::start_with(&["--publish-log", &log_arg]).await;
    server
        .command("pub-1", json!({"type": "Open", "owner": "pia"}), &[])
        .await
        .expect_status(200);
    server
        .command("pub-1", json!({"type": "Deposit", "amount": 3}), &[])
        .await
        .expect_status(200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let lines: Vec<Value> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if lines.len() >= 2 {
            assert_eq!(lines.len(), 2, "{lines:?}");
            assert_eq!(versions(&lines), vec![1, 2]);
            assert_eq!(lines[1]["event_type"], "Deposited");
            assert_eq!(lines[1]["data"]["currency"], "EUR");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log never got both events"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// History filters (versions, recorded time, event type) with pagination, and state as of a time.
#[tokio::test]
async fn history_filters_and_state_at_a_time() {
    let server = Server::start().await;
    let id = "filtered";
    server
        .command(id, json!({"type": "Open", "owner": "fay"}), &[])
        .await
        .expect_status(200);
    for amount in [10, 20, 30] {
        server
            .command(id, json!({"type": "Deposit", "amount": amount}), &[])
            .await
            .expect_status(200);
        server
            .command(id, json!({"type": "Withdraw", "amount": 1}), &[])
            .await
            .expect_status(200);
    }
    let all = server.history(id).await;
    assert_eq!(versions(&all), (1..=7).collect::<Vec<u64>>());
    let page = |q: &str| {
        let server = &server;
        let q = q.to_owned();
        async move {
            let r = server.get(&format!("/accounts/{id}/events?{q}")).await;
            r.expect_status(200);
            (
                versions(r.body["events"].as_array().expect("events")),
                r.body["next_from_version"].as_u64(),
            )
        }
    };
    assert_eq!(
        page("from_version=2&to_version=4").await,
        (vec![2, 3, 4], None)
    );
    assert_eq!(page("event_type=Deposited").await, (vec![2, 4, 6], None));
    // Filtered pages: each holds `limit` matches, next_from_version is the next match.
    assert_eq!(
        page("event_type=Deposited&limit=2").await,
        (vec![2, 4], Some(6))
    );
    assert_eq!(
        page("event_type=Deposited&limit=2&from_version=6").await,
        (vec![6], None)
    );
    assert_eq!(
        page("event_type=Withdrawn&to_version=5").await,
        (vec![3, 5], None)
    );
    assert_eq!(page("event_type=Nothing").await, (vec![], None));
    // Recorded time, inclusive at both ends.
    let t = |v: usize| {
        all[v - 1]["recorded_at"]
            .as_str()
            .expect("a time")
            .to_owned()
    };
    let q = format!("from={}&to={}", t(3), t(5));
    assert_eq!(page(&q).await, (vec![3, 4, 5], None));
    assert_eq!(
        page(&format!("from={}&event_type=Deposited", t(5))).await,
        (vec![6], None)
    );

    // State as of a time: the newest version recorded at or before it.
    let r = server.get(&format!("/accounts/{id}?at={}", t(4))).await;
    r.expect_status(200);
    assert_eq!(
        (r.body["version"].as_u64(), r.body["balance"].as_u64()),
        (Some(4), Some(29))
    );
    server
        .get(&format!("/accounts/{id}?at=2000-01-01T00:00:00Z"))
        .await
        .expect_error(404, "version_not_found");
    server
        .get("/accounts/nobody-here?at=2100-01-01T00:00:00Z")
        .await
        .expect_error(404, "not_found");

    // Bad filters are refused.
    for q in [
        "from=yesterday",
        "to=2026-13-01T00:00:00Z",
        "from_version=5&to_version=4",
        "from=2026-11-26T12:00:00Z&to=2026-11-26T11:00:00Z",
        "event_type=",
    ] {
        server
            .get(&format!("/accounts/{id}/events?{q}"))
            .await
            .expect_error(400, "invalid_query");
    }
    server
        .get(&format!("/accounts/{id}?at=soon"))
        .await
        .expect_error(400, "invalid_query");
    server
        .get(&format!("/accounts/{id}?at={}&version=2", t(4)))
        .await
        .expect_error(400, "invalid_query");
}

/// Every page of `GET /audit/events?{query}&limit={limit}`, following `next`; with the size of
/// each page.
async fn audit_pages(server: &Server, query: &str, limit: usize) -> (Vec<usize>, Vec<Value>) {
    let mut sizes = Vec::new();
    let mut events = Vec::new();
    let mut after = String::new();
    loop {
        let r = server
            .get(&format!("/audit/events?{query}&limit={limit}{after}"))
            .await;
        r.expect_status(200);
        let page = r.body["events"].as_array().expect("an events array");
        assert!(page.len() <= limit, "{}", r.body);
        sizes.push(page.len());
        events.extend(page.iter().cloned());
        match r.body["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => {
                assert_eq!(r.body["next"], Value::Null);
                return (sizes, events);
            }
        }
        assert!(sizes.len() < 1000, "the feed never ends");
    }
}

/// The order the audit feed promises: recorded time (fixed-width RFC 3339 text sorts as time),
/// aggregate type, aggregate id, version.
fn recorded_order(events: &mut [Value]) {
    events.sort_by(|a, b| {
        let key = |e: &Value| {
            (
                e["recorded_at"].as_str().unwrap_or_default().to_owned(),
                e["aggregate_type"].as_str().unwrap_or_default().to_owned(),
                e["aggregate_id"].as_str().unwrap_or_default().to_owned(),
                e["version"].as_u64().unwrap_or_default(),
            )
        };
        key(a).cmp(&key(b))
    });
}

/// `GET /audit/events`: every account's events in one recorded order, across pages; stored v1
/// events upcast unless `raw=true`; inclusive bounds.
#[tokio::test]
async fn the_audit_feed_lists_every_event_in_recorded_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = common::store_v1_fixture(dir.path()).await;
    let server = Server::start_in(dir.path()).await;
    // Commands to three accounts, interleaved.
    let plan = [
        ("feed-b", json!({"type": "Open", "owner": "bea"})),
        ("feed-a", json!({"type": "Open", "owner": "abe"})),
        ("feed-b", json!({"type": "Deposit", "amount": 40})),
        ("feed-c", json!({"type": "Open", "owner": "cy"})),
        ("feed-a", json!({"type": "Deposit", "amount": 15})),
        ("feed-b", json!({"type": "Withdraw", "amount": 5})),
        ("feed-c", json!({"type": "Deposit", "amount": 9})),
        ("feed-a", json!({"type": "Close"})),
    ];
    for (id, command) in plan {
        ok(&server, id, command).await;
    }
    let mut want = Vec::new();
    for id in ["legacy-1", "feed-a", "feed-b", "feed-c"] {
        want.extend(server.history(id).await);
    }
    recorded_order(&mut want);
    assert_eq!(want.len(), 12);
    assert_eq!(want[0]["aggregate_id"], "legacy-1", "2024 comes first");

    let all = "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z";
    for limit in [1, 5, 12, 1000] {
        let (sizes, got) = audit_pages(&server, all, limit).await;
        assert_eq!(
            got, want,
            "limit {limit}: every event once, in recorded order"
        );
        let full = sizes.len() - 1;
        assert!(
            sizes[..full].iter().all(|&n| n == limit) && sizes[full] <= limit,
            "limit {limit}: pages {sizes:?}"
        );
        assert_eq!(sizes.len(), 12usize.div_ceil(limit), "no empty last page");
    }
    // One page, and where it says to go on.
    let r = server.get(&format!("/audit/events?{all}&limit=5")).await;
    r.expect_status(200);
    assert_eq!(r.body["events"].as_array().map(Vec::len), Some(5));
    assert!(r.body["next"].is_string(), "{}", r.body);

    // Upcast by default: the v1 deposits come out at schema version 2 with a currency;
    // raw=true shows them exactly as stored.
    let legacy = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["aggregate_id"] == "legacy-1")
            .cloned()
            .collect()
    };
    let (_, upcast) = audit_pages(&server, all, 3).await;
    for d in legacy(&upcast)
        .iter()
        .filter(|e| e["event_type"] == "Deposited")
    {
        assert_eq!(d["schema_version"], 2, "{d}");
        assert_eq!(d["data"]["currency"], "EUR", "{d}");
    }
    let (_, raw) = audit_pages(&server, &format!("{all}&raw=true"), 3).await;
    assert_eq!(legacy(&raw), fixture, "raw=true: as stored");
    assert_eq!(raw.len(), 12);

    // Bounds are inclusive: from == to == one event's time gives that event.
    let t = want[6]["recorded_at"].as_str().expect("a time");
    let (_, got) = audit_pages(&server, &format!("from={t}&to={t}"), 10).await;
    assert_eq!(got, vec![want[6].clone()]);
    let (t3, t8) = (
        want[3]["recorded_at"].as_str().expect("a time"),
        want[8]["recorded_at"].as_str().expect("a time"),
    );
    let (_, got) = audit_pages(&server, &format!("from={t3}&to={t8}"), 2).await;
    assert_eq!(got, want[3..=8].to_vec());
    // A range with nothing in it: one empty page.
    let (sizes, got) = audit_pages(
        &server,
        "from=2025-01-01T00:00:00Z&to=2025-12-31T23:59:59Z",
        10,
    )
    .await;
    assert_eq!((sizes, got), (vec![0], vec![]));

    // /audit/events is its own route: the aggregate routes beside it are unaffected.
    server
        .get("/audit/other")
        .await
        .expect_error(404, "unknown_aggregate_type");
    let r = server.get("/accounts/feed-a/events").await;
    r.expect_status(200);
    assert_eq!(
        versions(r.body["events"].as_array().expect("events")),
        vec![1, 2, 3]
    );
}
