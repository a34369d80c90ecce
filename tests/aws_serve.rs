//! `chronicle aws-setup` and `chronicle serve --backend aws` end to end on the local AWS
//! endpoint: commands, history, the projected read models, and the publisher -> Kinesis ->
//! activity-feed chain, all driven by the local event-source pollers.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use chronicle_aws::testing::AwsTestEnv;
use chronicle_aws::DynamoReadModelStore;
use chronicle_kernel::{ModelRef, ReadModelStore};
use common::{versions, Server};
use serde_json::json;
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
        assert_eq!(stdout.lines().count(), 5, "one line per resource: {stdout}");
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
    for p in status.body["projections"].as_array().expect("projections") {
        assert_eq!(p["active_generation"], 2, "{p}");
        assert_eq!(p["rebuild"]["state"], "done", "{p}");
        assert_eq!(p["state"], "live", "{p}");
        assert!(p["checkpoint"].is_null(), "no feed on AWS: {p}");
    }
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
