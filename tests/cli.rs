//! The `chronicle` subcommands that read a data directory: history, state and rebuild.

mod common;

use common::chronicle;

use serde_json::{json, Value};
use std::path::Path;

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

    // A table for people: a title line, then one aligned field per line.
    let (ok, out, err) = chronicle(dir.path(), &["state", "accounts", "cli-1"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "accounts/cli-1 at version 4", "{out}");
    assert!(lines.contains(&"  balance   300"), "{out}");
    assert!(lines.contains(&"  owner     dora"), "{out}");

    let (ok, out, err) = chronicle(dir.path(), &["state", "accounts", "cli-1", "--json"]);
    assert!(ok, "{err}");
    let state: Value = serde_json::from_str(&out).expect("JSON state");
    assert_eq!(state["balance"], 300);
    assert_eq!(state["version"], 4);

    let (ok, out, err) = chronicle(
        dir.path(),
        &["state", "accounts", "cli-1", "--version", "2", "--json"],
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
    let (ok, out, err) = chronicle(
        dir.path(),
        &["state", "accounts", "cli-1", "--at", third, "--json"],
    );
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

/// Runs SQL on the store's database behind its back: the append-only triggers are dropped
/// first, as someone with write access to the file could.
fn tamper(dir: &Path, sql: &str) {
    let conn = r2d2_sqlite::rusqlite::Connection::open(dir.join("chronicle.db"))
        .expect("opening the database file");
    conn.execute_batch(&format!(
        "DROP TRIGGER IF EXISTS events_no_update; DROP TRIGGER IF EXISTS events_no_delete; {sql}"
    ))
    .expect("tampering");
}

#[tokio::test]
async fn verify_names_the_first_changed_removed_or_reordered_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Snapshots every 2 events: each account's chain head is also recorded in a snapshot.
    let mut server = common::Server::start_in_with(dir.path(), &["--snapshot-every", "2"]).await;
    for id in ["v-changed", "v-removed", "v-swapped", "v-cut", "v-intact"] {
        server
            .command(id, json!({"type": "Open", "owner": "vera"}), &[])
            .await
            .expect_status(200);
        for amount in [10, 20, 30] {
            server
                .command(id, json!({"type": "Deposit", "amount": amount}), &[])
                .await
                .expect_status(200);
        }
    }
    server.kill();

    let (ok, out, err) = chronicle(dir.path(), &["verify", "--all"]);
    assert!(ok, "an untouched store verifies: {out}{err}");
    assert!(out.contains("5 of 5 streams verified (20 events)"), "{out}");

    tamper(
        dir.path(),
        "UPDATE events SET data = replace(data, '20', '2000') \
             WHERE aggregate_id = 'v-changed' AND version = 3;
         DELETE FROM events WHERE aggregate_id = 'v-removed' AND version = 2;
         UPDATE events SET version = 100 WHERE aggregate_id = 'v-swapped' AND version = 2;
         UPDATE events SET version = 2 WHERE aggregate_id = 'v-swapped' AND version = 3;
         UPDATE events SET version = 3 WHERE aggregate_id = 'v-swapped' AND version = 100;
         DELETE FROM events WHERE aggregate_id = 'v-cut' AND version >= 3;",
    );

    let expect = [
        ("v-changed", "v3: changed"),
        ("v-removed", "v2: missing"),
        ("v-swapped", "v2: changed"),
        // The chain of v1..v2 is intact, but the snapshot at v4 recorded a longer one.
        ("v-cut", "v3: missing: a snapshot at v4"),
    ];
    for (id, want) in expect {
        let (ok, out, err) = chronicle(dir.path(), &["verify", "accounts", id]);
        assert!(!ok, "{id} must fail verification: {out}");
        assert!(
            out.contains(&format!("accounts/{id} {want}")),
            "{id}: {out}"
        );
        assert!(err.contains(&format!("accounts/{id} {want}")), "{err}");
    }
    let (ok, out, _) = chronicle(dir.path(), &["verify", "accounts", "v-intact"]);
    assert!(ok, "{out}");

    let (ok, out, _) = chronicle(dir.path(), &["verify", "--all", "--json"]);
    assert!(!ok);
    let report: Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(report["streams"], 5);
    let broken: Vec<(&str, u64)> = report["breaks"]
        .as_array()
        .expect("breaks")
        .iter()
        .map(|b| {
            (
                b["aggregate_id"].as_str().unwrap_or_default(),
                b["version"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        broken,
        vec![
            ("v-changed", 3),
            ("v-cut", 3),
            ("v-removed", 2),
            ("v-swapped", 2)
        ]
    );

    // Bad input: no stream named, an unknown option, a bad id.
    let (ok, _, err) = chronicle(dir.path(), &["verify"]);
    assert!(!ok && err.contains("<ID>"), "{err}");
    let (ok, _, err) = chronicle(dir.path(), &["verify", "accounts", "no/such"]);
    assert!(!ok && err.contains("may contain only"), "{err}");
    let (ok, _, err) = chronicle(dir.path(), &["verify", "accounts", "never-opened"]);
    assert!(!ok && err.contains("no events"), "{err}");
}

#[tokio::test]
async fn audit_prints_every_event_of_a_time_range() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = common::store_v1_fixture(dir.path()).await;
    let mut server = common::Server::start_in(dir.path()).await;
    seed(&server).await;
    let mut want = Vec::new();
    for id in ["legacy-1", "cli-1", "cli-2", "cli-3"] {
        want.extend(server.history(id).await);
    }
    server.kill();
    want.sort_by_key(|e| {
        (
            e["recorded_at"].as_str().unwrap_or_default().to_owned(),
            e["aggregate_id"].as_str().unwrap_or_default().to_owned(),
            e["version"].as_u64(),
        )
    });
    assert_eq!(want.len(), 10);
    let range = [
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        "2100-01-01T00:00:00Z",
    ];
    let audit = |extra: &[&str]| {
        let mut args = vec!["audit"];
        args.extend_from_slice(&range);
        args.extend_from_slice(extra);
        chronicle(dir.path(), &args)
    };

    let (ok, out, err) = audit(&["--json"]);
    assert!(ok, "{err}");
    let events: Vec<Value> = serde_json::from_str(&out).expect("JSON events");
    assert_eq!(events, want, "every event once, in recorded order, upcast");
    let (ok, out, err) = audit(&["--json", "--limit", "3"]);
    assert!(ok, "{err}");
    let events: Vec<Value> = serde_json::from_str(&out).expect("JSON events");
    assert_eq!(events, want[..3].to_vec());

    // --raw: the stored v1 deposits of legacy-1 as stored.
    let (ok, out, err) = audit(&["--json", "--raw"]);
    assert!(ok, "{err}");
    let events: Vec<Value> = serde_json::from_str(&out).expect("JSON events");
    assert_eq!(events[..4].to_vec(), fixture);

    // A table for people: a header, then one line per event in order.
    let (ok, out, err) = audit(&[]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 11, "a header and ten events:\n{out}");
    assert!(
        lines[0].starts_with("RECORDED AT") && lines[0].contains("AGGREGATE"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("2024-03-01T09:00:00.000000Z  accounts/legacy-1")
            && lines[1].contains("AccountOpened"),
        "{out}"
    );
    assert!(
        lines[2].contains("Deposited") && lines[2].contains("v2"),
        "{out}"
    );
    for (line, e) in lines[1..].iter().zip(&want) {
        let stream = format!(
            "accounts/{}",
            e["aggregate_id"].as_str().unwrap_or_default()
        );
        assert!(line.contains(&stream), "{line} is not {stream}");
    }
    let (ok, out, _) = audit(&["--raw"]);
    assert!(ok);
    assert!(
        out.lines().nth(2).is_some_and(|l| l.contains("v1")),
        "{out}"
    );

    // A quiet range, and refusals.
    let (ok, out, err) = chronicle(
        dir.path(),
        &[
            "audit",
            "--from",
            "2025-01-01T00:00:00Z",
            "--to",
            "2025-02-01T00:00:00Z",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.starts_with("no events recorded from 2025-01-01"),
        "{out}"
    );
    let (ok, _, err) = chronicle(
        dir.path(),
        &[
            "audit",
            "--from",
            "2025-02-01T00:00:00Z",
            "--to",
            "2025-01-01T00:00:00Z",
        ],
    );
    assert!(
        !ok && err.contains("`to` must not be before `from`"),
        "{err}"
    );
    let (ok, _, err) = chronicle(dir.path(), &["audit", "--from", "soon", "--to", "later"]);
    assert!(!ok && err.contains("RFC 3339"), "{err}");
    let (ok, _, err) = chronicle(dir.path(), &["audit", "--to", "2025-01-01T00:00:00Z"]);
    assert!(!ok && err.contains("--from"), "{err}");
    let (ok, _, err) = audit(&["--limit", "0"]);
    assert!(!ok && err.contains("--limit"), "{err}");
}

/// `chronicle archive` copies older events into segments; history, state and verify read
/// archive and store as one history, also once the store has lost archived events (as a TTL
/// would on AWS); a changed segment is named by verify.
#[tokio::test]
async fn archive_keeps_history_whole_and_verify_checks_the_segments() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = common::Server::start_in(dir.path()).await;
    seed(&server).await;
    server.kill();

    // Bad input first: no policy, both policies, expiry on the append-only embedded store.
    let (ok, _, err) = chronicle(dir.path(), &["archive"]);
    assert!(!ok && err.contains("--older-than"), "{err}");
    let (ok, out, err) = chronicle(
        dir.path(),
        &[
            "archive",
            "--older-than",
            "0s",
            "--below-snapshot",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(report["events_archived"], 0, "no snapshots yet: {report}");
    let (ok, _, err) = chronicle(dir.path(), &["archive", "--older-than", "soon"]);
    assert!(!ok && err.contains("--older-than"), "{err}");
    let (ok, _, err) = chronicle(
        dir.path(),
        &["archive", "--older-than", "0s", "--expire-after", "1d"],
    );
    assert!(!ok && err.contains("append-only"), "{err}");
    assert!(
        !dir.path().join("archive/accounts").exists(),
        "nothing archived"
    );

    // Nothing is a day old yet.
    let (ok, out, err) = chronicle(dir.path(), &["archive", "--older-than", "1d", "--json"]);
    assert!(ok, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(report["events_archived"], 0, "{report}");

    // Everything but each stream's head: cli-1 has v1..v4, so v1..v3; cli-2 and cli-3 v1 only.
    let (ok, out, err) = chronicle(dir.path(), &["archive", "--older-than", "0s", "--json"]);
    assert!(ok, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(report["events_archived"], 3, "{report}");
    assert_eq!(report["streams_archived"], 1, "{report}");
    let segment = report["segments"][0]
        .as_str()
        .expect("a segment")
        .to_owned();
    let (ok, out, _) = chronicle(dir.path(), &["archive", "--older-than", "0s", "--json"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("JSON")["events_archived"],
        0,
        "a second run archives nothing twice"
    );
    let (ok, out, err) = chronicle(dir.path(), &["verify", "--all"]);
    assert!(ok, "{out}{err}");

    // The store loses v1..v3 of cli-1: history and time travel come from the segment.
    tamper(
        dir.path(),
        "DELETE FROM events WHERE aggregate_id = 'cli-1' AND version <= 3",
    );
    let (ok, out, err) = chronicle(dir.path(), &["history", "accounts", "cli-1", "--json"]);
    assert!(ok, "{err}");
    let events: Value = serde_json::from_str(&out).expect("JSON history");
    let versions: Vec<u64> = events
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|e| e["version"].as_u64())
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4], "{out}");
    let (ok, out, err) = chronicle(
        dir.path(),
        &["state", "accounts", "cli-1", "--version", "2", "--json"],
    );
    assert!(ok, "{err}");
    let state: Value = serde_json::from_str(&out).expect("JSON state");
    assert_eq!(state["balance"], 100, "{state}");
    let (ok, out, err) = chronicle(dir.path(), &["verify", "accounts", "cli-1"]);
    assert!(
        ok,
        "the chain runs from the segment into the store: {out}{err}"
    );

    // A byte of the segment changed: verify names the stream and the segment.
    let path = dir.path().join("archive").join(&segment);
    let mut perms = std::fs::metadata(&path).expect("segment").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).expect("chmod");
    let mut bytes = std::fs::read(&path).expect("read segment");
    bytes[12] ^= 0x20;
    std::fs::write(&path, bytes).expect("write segment");
    for args in [
        &["verify", "--all"][..],
        &["verify", "accounts", "cli-1"][..],
    ] {
        let (ok, out, err) = chronicle(dir.path(), args);
        assert!(!ok, "{args:?}: {out}");
        assert!(
            out.contains("accounts/cli-1 v1") && out.contains("archive segment"),
            "{args:?}: {out}{err}"
        );
    }
}
