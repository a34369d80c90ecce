//! Anchored heads: `chronicle anchor` commits every stream's head to a root kept in an
//! append-only log, `verify --all` holds the store to it, and `proof` gives a stream's path to
//! that root, checkable without the store. Then the store is changed behind its back, the ways a
//! hash chain alone can't tell: one stream's newest events deleted (triggers dropped), another's
//! tail rewritten with a consistent new chain; and the anchor log itself edited.

mod common;

use chronicle_kernel::chain::{hash_fields, CanonicalFields};
use common::{chronicle, Server};
use serde_json::{json, Value};
use std::path::Path;

fn db(dir: &Path) -> r2d2_sqlite::rusqlite::Connection {
    let conn = r2d2_sqlite::rusqlite::Connection::open(dir.join("chronicle.db")).expect("the db");
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS events_no_update; DROP TRIGGER IF EXISTS events_no_delete;",
    )
    .expect("triggers dropped");
    conn
}

/// An event row: position, event id, version, type, schema version, data, metadata, recorded
/// at, hash.
type Row = (
    i64,
    String,
    u64,
    String,
    u32,
    String,
    String,
    String,
    String,
);

/// Rewrites versions `from..` of a stream: new amounts, and hashes recomputed so its chain is
/// whole again (what a tamperer with the code at hand would do).
fn rewrite_tail(dir: &Path, id: &str, from: u64) {
    let conn = db(dir);
    let mut rows: Vec<Row> = conn
        .prepare(
            "SELECT position, event_id, version, event_type, schema_version, data, metadata, \
             recorded_at, hash FROM events WHERE aggregate_type = 'accounts' AND aggregate_id = ?1 \
             ORDER BY version",
        )
        .expect("a query")
        .query_map([id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get(3)?,
                r.get::<_, i64>(4)? as u32,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut prev = String::new();
    for row in &mut rows {
        let (position, event_id, version, event_type, schema_version, data, metadata, at, hash) =
            row;
        if *version >= from {
            *data = json!({"amount": 1_000_000, "currency": "EUR"}).to_string();
            *hash = hash_fields(
                &prev,
                &CanonicalFields {
                    event_id,
                    aggregate_type: "accounts",
                    aggregate_id: id,
                    version: *version,
                    event_type,
                    schema_version: *schema_version,
                    data,
                    metadata,
                    recorded_at: at,
                },
            );
            conn.execute(
                "UPDATE events SET data = ?1, hash = ?2 WHERE position = ?3",
                r2d2_sqlite::rusqlite::params![*data, *hash, *position],
            )
            .expect("rewritten");
        }
        prev = hash.clone();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_holds_the_store_to_its_anchor_and_names_a_cut_or_rewritten_tail() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path();
    {
        let mut s = Server::start_in(dir).await;
        for id in ["a1", "a2", "a3"] {
            s.command(id, json!({"type": "Open", "owner": "o"}), &[])
                .await
                .expect_status(200);
            for _ in 0..4 {
                s.command(id, json!({"type": "Deposit", "amount": 5}), &[])
                    .await
                    .expect_status(200);
            }
        }
        // An anchor beside a running server (it only reads the store).
        let (ok, out, err) = chronicle(dir, &["anchor", "--json"]);
        assert!(ok, "{out}{err}");
        let anchor: Value = serde_json::from_str(out.trim()).expect("the anchor as JSON");
        assert_eq!(anchor["sequence"], 1);
        assert_eq!(anchor["streams"], 3);
        assert_eq!(anchor["events"], 15);
        s.kill();
    }
    let (ok, out, err) = chronicle(dir, &["verify", "--all"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("held to anchor #1"), "{out}");

    // A proof, checked with nothing but itself; changed, it fails.
    let (ok, proof, err) = chronicle(dir, &["proof", "accounts", "a2"]);
    assert!(ok, "{err}");
    let file = dir.join("a2.proof.json");
    std::fs::write(&file, &proof).expect("written");
    let elsewhere = tempfile::tempdir().expect("another dir");
    let (ok, out, err) = chronicle(
        elsewhere.path(),
        &["proof", "--check", file.to_str().expect("a path")],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("accounts/a2 v5") && out.contains("anchor #1"),
        "{out}"
    );
    let mut forged: Value = serde_json::from_str(&proof).expect("JSON");
    forged["head"]["version"] = json!(4);
    std::fs::write(&file, forged.to_string()).expect("written");
    let (ok, _, err) = chronicle(
        elsewhere.path(),
        &["proof", "--check", file.to_str().expect("a path")],
    );
    assert!(!ok && err.contains("the proof fails"), "{err}");

    // Behind the store's back: a1 loses v4 and v5; a2's v4 and v5 are rewritten with a whole chain.
    db(dir)
        .execute(
            "DELETE FROM events WHERE aggregate_type = 'accounts' AND aggregate_id = 'a1' AND version > 3",
            [],
        )
        .expect("deleted");
    rewrite_tail(dir, "a2", 4);
    let (ok, out, err) = chronicle(dir, &["verify", "--all"]);
    assert!(!ok, "a cut and a rewritten tail pass verify: {out}");
    assert!(
        out.contains("BROKEN  accounts/a1 v5: anchored v5") && out.contains("store ends at v3"),
        "{out}"
    );
    assert!(
        out.contains("BROKEN  accounts/a2 v5: anchored v5") && out.contains("store has"),
        "{out}"
    );
    assert!(!out.contains("accounts/a3"), "{out}");
    assert!(err.contains("2 stream(s) fail verification"), "{err}");
    let (_, json, _) = chronicle(dir, &["verify", "--all", "--json"]);
    let report: Value = serde_json::from_str(&json).expect("a JSON report");
    assert_eq!(report["anchor"], 1);
    assert_eq!(
        report["breaks"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );

    // The anchor log edited: its own chain names the anchor.
    let log = dir.join("anchors/log.jsonl");
    let text = std::fs::read_to_string(&log).expect("the log");
    let mut first: Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("JSON");
    first["events"] = json!(13);
    std::fs::write(&log, format!("{first}\n")).expect("written");
    let (ok, out, _) = chronicle(dir, &["verify", "--all"]);
    assert!(!ok);
    assert!(
        out.contains("ANCHORS anchor #1: its hash") && out.contains("is not what its fields make"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchors_chain_and_each_verifies_the_store_as_it_was() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path();
    let copy = dir.join("elsewhere.jsonl");
    {
        let mut s = Server::start_in(dir).await;
        s.command("b1", json!({"type": "Open", "owner": "o"}), &[])
            .await
            .expect_status(200);
        let (ok, _, err) = chronicle(
            dir,
            &["anchor", "--copy-to", copy.to_str().expect("a path")],
        );
        assert!(ok, "{err}");
        s.command("b1", json!({"type": "Deposit", "amount": 1}), &[])
            .await
            .expect_status(200);
        s.command("b2", json!({"type": "Open", "owner": "o"}), &[])
            .await
            .expect_status(200);
        let (ok, out, err) = chronicle(
            dir,
            &[
                "anchor",
                "--copy-to",
                copy.to_str().expect("a path"),
                "--exec",
                "cat > /dev/null",
            ],
        );
        assert!(ok, "{err}");
        assert!(out.contains("anchor #2: 2 streams (3 events)"), "{out}");
        s.kill();
    }
    let log = std::fs::read_to_string(dir.join("anchors/log.jsonl")).expect("the log");
    let anchors: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(anchors.len(), 2);
    assert_eq!(anchors[1]["previous"], anchors[0]["hash"]);
    assert_eq!(std::fs::read_to_string(&copy).expect("the copy"), log);
    let (ok, out, err) = chronicle(dir, &["verify", "--all"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("held to anchor #2"), "{out}");
    // A stream that moved on past its anchor verifies at its anchored version.
    let (ok, proof, _) = chronicle(dir, &["proof", "accounts", "b1"]);
    assert!(ok);
    let proof: Value = serde_json::from_str(&proof).expect("JSON");
    assert_eq!(proof["head"]["version"], 2);
    assert_eq!(proof["anchor"]["sequence"], 2);
}
