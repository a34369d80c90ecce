//! Erasure by crypto-shredding on the embedded server: personal fields (accounts' holder_name
//! and email, personal data of the subject `owner` names) never reach a file of the data
//! directory in the clear, from the first write: not the SQLite store or its WAL, the snapshots,
//! the read models, the archive segments, the publish log. Reads open them; once the subject is
//! forgotten every read shows them erased (null, listed under `erased`), after a restart, a
//! rebuild and from the archive too, the key is gone from the key file, and every chain still
//! verifies.

mod common;

use common::{chronicle, erased, open_with_personal_data, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const NAME: &str = "Dana Katherine Scully";
const EMAIL: &str = "dana.scully@bureau.example";
const FOX_NAME: &str = "Fox William Mulder";

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The files under `dir` whose bytes contain `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|bytes| {
                    common::readable(&p.display().to_string(), &bytes)
                        .windows(needle.len())
                        .any(|w| w == needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

#[track_caller]
fn nowhere_in(dir: &Path, plain: &[&str]) {
    for p in plain {
        let found = holding(dir, p.as_bytes());
        assert!(
            found.is_empty(),
            "{p:?} is stored in the clear in {found:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_subject_reads_as_erased_everywhere_and_every_chain_still_verifies() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let publish_log = dir.join("published.jsonl");
    let log_arg = publish_log.display().to_string();
    let serve_args = ["--publish-log", log_arg.as_str(), "--snapshot-every", "2"];
    let server = Server::start_in_with(&dir, &serve_args).await;

    // Dana's account, with her personal data, and Fox's.
    let opened = server
        .command(
            "acc-dana",
            open_with_personal_data("dana", NAME, EMAIL),
            &[],
        )
        .await;
    opened.expect_status(200);
    // The command's answer is a read edge too: the plaintext, to the client that sent it.
    assert_eq!(opened.body["events"][0]["data"]["holder_name"], NAME);
    for amount in [100, 20, 3] {
        server
            .command(
                "acc-dana",
                json!({"type": "Deposit", "amount": amount}),
                &[],
            )
            .await
            .expect_status(200);
    }
    server
        .command(
            "acc-fox",
            open_with_personal_data("fox", FOX_NAME, "fox@bureau.example"),
            &[],
        )
        .await
        .expect_status(200);

    // Reads with the keys show the plaintext: state (from a snapshot: every 2 events),
    // history, the read models.
    let state = server.consistent("acc-dana").await;
    assert_eq!(
        (&state.body["holder_name"], &state.body["email"]),
        (&json!(NAME), &json!(EMAIL))
    );
    let history = server.history("acc-dana").await;
    assert_eq!(history[0]["data"]["email"], EMAIL);
    server
        .eventually("/accounts/acc-dana", |r| {
            r.status == 200 && r.body["version"] == 4 && r.body["holder_name"] == NAME
        })
        .await;
    server
        .eventually("/accounts?owner=dana", |r| {
            r.body["accounts"][0]["email"] == EMAIL && r.body["accounts"][0]["version"] == 4
        })
        .await;
    // As stored (`raw`): a token, not the value.
    let raw = server.get("/accounts/acc-dana/events?raw=true").await;
    let token = raw.body["events"][0]["data"]["holder_name"]
        .as_str()
        .expect("a token")
        .to_owned();
    assert!(token.starts_with("pii:v1:"), "{token}");
    // The publish log has the events (the Kinesis stand-in).
    for _ in 0..200 {
        let text = std::fs::read_to_string(&publish_log).unwrap_or_default();
        if text.contains("acc-fox") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(std::fs::read_to_string(&publish_log)
        .unwrap_or_default()
        .contains(&token));

    // Archive everything (the server stopped: the archiver writes to the directory).
    drop(server);
    let (ok, out, err) = chronicle(&dir, &["archive", "--older-than", "0s"]);
    assert!(ok, "archive: {out} {err}");
    let segments: Vec<_> = files(&dir.join("archive"));
    assert!(!segments.is_empty(), "archive segments written: {out}");
    let mut server = Server::start_in_with(&dir, &serve_args).await;

    // Nowhere in the clear, from the first write: the store and its WAL, snapshots, read
    // models, archive segments, the publish log, the key file.
    nowhere_in(&dir, &[NAME, EMAIL, FOX_NAME]);
    // The search sees inside the archive's compressed segments: the token is found there.
    assert!(
        !holding(&dir.join("archive"), token.as_bytes()).is_empty(),
        "the archive segments hold the sealed field"
    );
    assert!(
        dir.join("keys.sqlite").is_file(),
        "the key store is its own file"
    );
    let (ok, out, err) = chronicle(&dir, &["verify", "--all"]);
    assert!(ok, "verify before forgetting: {out} {err}");

    // Forget Dana: the key destroyed, the erasure recorded; a repeat changes nothing.
    let forgot = server
        .post_raw("/admin/subjects/dana/forget", "", &[])
        .await;
    forgot.expect_status(200);
    assert_eq!(forgot.body["key_destroyed"], true, "{}", forgot.body);
    assert_eq!(forgot.body["recorded"], true);
    let again = server
        .post_raw("/admin/subjects/dana/forget", "", &[])
        .await;
    again.expect_status(200);
    assert_eq!(
        (&again.body["key_destroyed"], &again.body["recorded"]),
        (&json!(false), &json!(false))
    );
    assert_eq!(again.body["forgotten_at"], forgot.body["forgotten_at"]);
    let record = server.get("/_subjects/dana/events").await;
    record.expect_status(200);
    assert_eq!(record.body["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(record.body["events"][0]["event_type"], "SubjectForgotten");
    assert_eq!(server.get("/_subjects/dana").await.body["forgotten"], true);

    // Every read: erased. State (from its snapshot), time travel, history, the audit feed,
    // the state read model and the list, right away.
    erased(&server.consistent("acc-dana").await.body);
    erased(&server.get("/accounts/acc-dana?version=1").await.body);
    erased(&server.history("acc-dana").await[0]["data"]);
    erased(&server.get("/accounts/acc-dana").await.body);
    erased(&server.get("/accounts?owner=dana").await.body["accounts"][0]);
    let audit = server
        .get("/audit/events?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&limit=1000")
        .await;
    let dana_opened = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["aggregate_id"] == "acc-dana" && e["version"] == 1)
        .expect("dana's opening in the audit feed")
        .clone();
    erased(&dana_opened["data"]);
    // Fox is untouched.
    assert_eq!(
        server.consistent("acc-fox").await.body["holder_name"],
        FOX_NAME
    );

    // Personal data for her is refused, and stores nothing; the rest goes on.
    server
        .command(
            "acc-dana-2",
            open_with_personal_data("dana", NAME, EMAIL),
            &[],
        )
        .await
        .expect_error(422, "subject_forgotten");
    assert_eq!(
        server
            .get("/accounts/acc-dana-2?consistent=true")
            .await
            .status,
        404
    );
    server
        .command("acc-dana", json!({"type": "Deposit", "amount": 1}), &[])
        .await
        .expect_status(200);
    server
        .command("acc-dana-3", json!({"type": "Open", "owner": "dana"}), &[])
        .await
        .expect_status(200);

    // Nothing stored changed: every chain verifies.
    let (ok, out, err) = chronicle(&dir, &["verify", "--all"]);
    assert!(ok, "verify after forgetting: {out} {err}");

    // After kill -9 and a restart, a rebuild of the list, and from the archive (the CLI reads
    // history through it): still erased.
    server.kill();
    let server = Server::start_in_with(&dir, &serve_args).await;
    erased(&server.consistent("acc-dana").await.body);
    let rebuild = server
        .post_raw("/admin/projections/accounts_by_owner/rebuild", "", &[])
        .await;
    rebuild.expect_status(202);
    server
        .eventually("/admin/projections", |r| {
            r.body["projections"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "accounts_by_owner" && p["rebuild"]["state"] == "done")
        })
        .await;
    let listed = server
        .eventually("/accounts?owner=dana", |r| {
            r.body["accounts"].as_array().is_some_and(|a| a.len() == 2)
        })
        .await;
    let dana = listed.body["accounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["id"] == "acc-dana")
        .expect("acc-dana listed")
        .clone();
    erased(&dana);
    let (ok, out, err) = chronicle(&dir, &["history", "accounts", "acc-dana", "--json"]);
    assert!(ok, "history: {err}");
    let events: Value = serde_json::from_str(&out).expect("JSON history");
    erased(&events[0]["data"]);

    // `chronicle forget` beside the running server forgets through it.
    let (ok, out, err) = chronicle(&dir, &["forget", "fox"]);
    assert!(ok, "forget fox: {out} {err}");
    assert!(out.contains("forgot fox"), "{out}");
    erased(&server.consistent("acc-fox").await.body);
    let (ok, out, _) = chronicle(&dir, &["forget", "fox"]);
    assert!(ok && out.contains("forgotten already"), "{out}");

    // Still nothing in the clear, and the chains whole.
    nowhere_in(&dir, &[NAME, EMAIL, FOX_NAME]);
    let (ok, out, err) = chronicle(&dir, &["verify", "--all"]);
    assert!(ok, "verify at the end: {out} {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_personal_data_and_bad_subjects_are_refused_naming_the_problem() {
    let server = Server::start().await;
    // An owner that is no subject id, with personal data: 400, nothing stored.
    server
        .command(
            "acc-1",
            open_with_personal_data("Dana Scully", NAME, EMAIL),
            &[],
        )
        .await
        .expect_error(400, "invalid_command");
    assert_eq!(
        server.get("/accounts/acc-1?consistent=true").await.status,
        404
    );
    // Without personal data any owner goes, as before.
    server
        .command(
            "acc-1",
            json!({"type": "Open", "owner": "Dana Scully"}),
            &[],
        )
        .await
        .expect_status(200);
    server
        .command(
            "acc-2",
            json!({"type": "Open", "owner": "dana", "email": "not an address"}),
            &[],
        )
        .await
        .expect_error(400, "invalid_command");
    server
        .command(
            "acc-2",
            json!({"type": "Open", "owner": "dana", "holder_name": 7}),
            &[],
        )
        .await
        .expect_error(400, "invalid_command");
    // Forgetting: a subject that is no id is 400; one never seen is forgotten all the same
    // (nothing can be stored for it afterwards).
    server
        .post_raw("/admin/subjects/a%20b/forget", "", &[])
        .await
        .expect_error(400, "invalid_subject");
    let never = server
        .post_raw("/admin/subjects/nobody/forget", "", &[])
        .await;
    never.expect_status(200);
    assert_eq!(never.body["key_destroyed"], false);
    server
        .command("acc-3", open_with_personal_data("nobody", NAME, EMAIL), &[])
        .await
        .expect_error(422, "subject_forgotten");
    // Erasure records are Chronicle's: a client can't write one.
    server
        .post_raw(
            "/_subjects/dana/commands",
            json!({"type": "Forget", "forgotten_at": "2026-01-01T00:00:00Z"}).to_string(),
            &[],
        )
        .await
        .expect_error(400, "invalid_command");
}

/// Forgetting destroys the key, then records the erasure: a process killed between the two
/// (the key store written, `_subjects/{subject}` not) leaves a subject whose fields already
/// read as erased, and a repeat of the forget records it then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forget_cut_off_after_the_key_is_completed_by_its_repeat() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let server = Server::start_in_with(&dir, &[]).await;
    server
        .command(
            "acc-dana",
            open_with_personal_data("dana", NAME, EMAIL),
            &[],
        )
        .await
        .expect_status(200);
    drop(server);

    // What the first step of a forget leaves when the process dies right after it.
    let keys = chronicle_embedded::SqliteKeyStore::open(dir.join(chronicle_embedded::KEYS_FILE))
        .expect("the key store");
    let cut = chronicle_kernel::KeyStore::forget(&keys, "dana", chronicle_kernel::envelope::now())
        .await
        .expect("the key destroyed");
    assert!(cut.destroyed);
    drop(keys);

    let server = Server::start_in_with(&dir, &[]).await;
    erased(&server.consistent("acc-dana").await.body);
    assert_eq!(server.get("/_subjects/dana/events").await.status, 404);
    let repeat = server
        .post_raw("/admin/subjects/dana/forget", "", &[])
        .await;
    repeat.expect_status(200);
    assert_eq!(
        (&repeat.body["key_destroyed"], &repeat.body["recorded"]),
        (&json!(false), &json!(true)),
        "{}",
        repeat.body
    );
    let record = server.get("/_subjects/dana/events").await;
    assert_eq!(record.body["events"][0]["event_type"], "SubjectForgotten");
    let (ok, out, err) = chronicle(&dir, &["verify", "--all"]);
    assert!(ok, "verify: {out} {err}");
}
