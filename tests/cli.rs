//! The `chronicle` subcommands that read a data directory: history, state and rebuild.

mod common;

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

fn chronicle(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running chronicle");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn seed(server: &common::Server) {
    for (id, owner) in [("cli-1", "dora"), ("cli-2", "dora"), ("cli-3", "eve")] {
        server
            .command(id, json!({"type": "Open", "owner": owner}), &[])
            .await
            .expect_status(200);
    }
    for amount in [100, 250] {
        server
            .command("cli-1", json!({"type": "Deposit", "amount": amount}), &[])
            .await
            .expect_status(200);
    }
    server
        .command("cli-1", json!({"type": "Withdraw", "amount": 50}), &[])
        .await
        .expect_status(200);
}

#[tokio::test]
async fn history_and_state_read_the_data_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = common::Server::start_in(dir.path()).await;
    seed(&server).await;
    server.kill();

    let (ok, out, err) = chronicle(dir.path(), &["history", "accounts", "cli-1"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "a header and four events:\n{out}");
    assert!(
        lines[1].contains("AccountOpened") && lines[4].contains("Withdrawn"),
        "{out}"
    );

    let (ok, out, err) = chronicle(dir.path(), &["history", "accounts", "cli-1", "--json"]);
    assert!(ok, "{err}");
    let events: Vec<Value> = serde_json::from_str(&out).expect("JSON history");
    let versions: Vec<u64> = events
        .iter()
        .filter_map(|e| e["version"].as_u64())
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert_eq!(events[2]["data"]["amount"], 250);

    let (ok, out, err) = chronicle(dir.path(), &["state", "accounts", "cli-1"]);
    assert!(ok, "{err}");
    let state: Value = serde_json::from_str(&out).expect("JSON state");
    assert_eq!(state["balance"], 300);
    assert_eq!(state["version"], 4);

    let (ok, out, err) = chronicle(
        dir.path(),
        &["state", "accounts", "cli-1", "--version", "2"],
    );
    assert!(ok, "{err}");
    let state: Value = serde_json::from_str(&out).expect("JSON state");
    assert_eq!(state["balance"], 100);

    // Filters, as on the HTTP API.
    let versions_of = |out: &str| -> Vec<u64> {
        serde_json::from_str::<Vec<Value>>(out)
            .expect("JSON history")
            .iter()
            .filter_map(|e| e["version"].as_u64())
            .collect()
    };
    let (ok, out, err) = chronicle(
        dir.path(),
        &[
            "history",
            "accounts",
            "cli-1",
            "--event-type",
            "Deposited",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(versions_of(&out), vec![2, 3]);
    let third = events[2]["recorded_at"].as_str().expect("a time");
    let (ok, out, err) = chronicle(
        dir.path(),
        &[
            "history",
            "accounts",
            "cli-1",
            "--from",
            third,
            "--to-version",
            "4",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(versions_of(&out), vec![3, 4]);
    let (ok, out, err) = chronicle(dir.path(), &["state", "accounts", "cli-1", "--at", third]);
    assert!(ok, "{err}");
    let state: Value = serde_json::from_str(&out).expect("JSON state");
    assert_eq!(
        (state["version"].as_u64(), state["balance"].as_u64()),
        (Some(3), Some(350))
    );
    let (ok, _, err) = chronicle(dir.path(), &["state", "accounts", "cli-1", "--at", "soon"]);
    assert!(!ok);
    assert!(err.contains("RFC 3339"), "{err}");

    let (ok, _, err) = chronicle(dir.path(), &["state", "accounts", "nobody"]);
    assert!(!ok);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!err.contains("backtrace"), "errors are one line: {err}");
    let (ok, _, err) = chronicle(dir.path(), &["history", "accounts", "bad id"]);
    assert!(!ok);
    assert!(err.contains("may contain only"), "{err}");
}

#[tokio::test]
async fn rebuild_switches_a_live_server_to_a_fresh_read_model() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start_in(dir.path()).await;
    seed(&server).await;
    server
        .eventually("/accounts?owner=dora", |r| {
            r.body["accounts"].as_array().map(Vec::len) == Some(2)
        })
        .await;

    // Rebuild while the server keeps serving; then it must answer from the new generation.
    for projection in ["accounts_by_owner", "accounts_state"] {
        let (ok, out, err) = chronicle(dir.path(), &["rebuild", projection]);
        assert!(ok, "{err}");
        assert!(out.contains("generation 2"), "{out}");
    }
    let r = server.get("/accounts?owner=dora").await;
    let balances: Vec<u64> = r.body["accounts"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|a| a["balance"].as_u64())
        .collect();
    assert_eq!(balances, vec![300, 0]);
    assert_eq!(server.get("/accounts/cli-1").await.body["balance"], 300);

    // The live projector follows the new generation.
    server
        .command("cli-3", json!({"type": "Deposit", "amount": 7}), &[])
        .await
        .expect_status(200);
    server
        .eventually("/accounts?owner=eve", |r| {
            r.body["accounts"][0]["balance"] == 7
        })
        .await;
    server
        .eventually("/accounts/cli-3", |r| r.body["balance"] == 7)
        .await;

    // A second rebuild moves on to generation 3 and still serves the same answers.
    let (ok, out, err) = chronicle(dir.path(), &["rebuild", "accounts_by_owner"]);
    assert!(ok, "{err}");
    assert!(out.contains("generation 3"), "{out}");
    let r = server.get("/accounts?owner=eve").await;
    assert_eq!(r.body["accounts"][0]["balance"], 7);
    assert_eq!(r.body["accounts"].as_array().map(Vec::len), Some(1));

    let (ok, _, err) = chronicle(dir.path(), &["rebuild", "no_such_projection"]);
    assert!(!ok);
    assert!(
        err.contains("accounts_by_owner"),
        "names the known projections: {err}"
    );
}
