//! One writer per data directory: a second writing process is refused and changes nothing;
//! readers work beside the server; a rebuild runs through it; and where the lock is bypassed
//! (the lock file deleted, as on a filesystem that ignores locks) no acknowledged write is
//! lost and no version is stored twice.

mod common;

use common::chronicle;

use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The directory's entries with their sizes, and the lock file's content: what a refused
/// writer must leave alone. (The database's own files move under the running server.)
fn entries(dir: &Path) -> (Vec<String>, String) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("listing the data directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let lock = std::fs::read_to_string(dir.join("chronicle.lock")).expect("the lock file");
    (names, lock)
}

#[tokio::test]
async fn a_second_server_on_one_directory_refuses_to_start_and_readers_keep_working() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start_in(dir.path()).await;
    server
        .command("w-1", json!({"type": "Open", "owner": "wanda"}), &[])
        .await
        .expect_status(200);
    server
        .command("w-1", json!({"type": "Deposit", "amount": 40}), &[])
        .await
        .expect_status(200);
    let before = entries(dir.path());

    // A second server: it exits at once, non-zero, naming the directory and the holder.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut second = Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning a second server");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = second.try_wait().expect("waiting for the second server") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second server on the same directory is still running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut stderr)
        .expect("reading stderr");
    assert!(!status.success(), "the second server must fail: {stderr}");
    assert!(
        stderr.contains(&dir.path().display().to_string())
            && stderr.contains(&format!("pid {}", server.child.id())),
        "the refusal names the directory and the holder's pid: {stderr}"
    );
    assert_eq!(
        entries(dir.path()),
        before,
        "the refused server touched nothing"
    );

    // Readers beside the running server.
    let id = ["accounts", "w-1"];
    let (ok, out, err) = chronicle(dir.path(), &["history", id[0], id[1]]);
    assert!(ok && out.contains("Deposited"), "history: {out}{err}");
    let (ok, out, err) = chronicle(dir.path(), &["state", id[0], id[1], "--json"]);
    assert!(ok && out.contains("\"balance\": 40"), "state: {out}{err}");
    let (ok, out, err) = chronicle(
        dir.path(),
        &[
            "audit",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert!(ok && out.contains("w-1"), "audit: {out}{err}");
    let (ok, out, err) = chronicle(dir.path(), &["verify", "--all"]);
    assert!(ok, "verify --all: {out}{err}");
    let (ok, out, err) = chronicle(dir.path(), &["verify", id[0], id[1]]);
    assert!(ok, "verify one: {out}{err}");

    // Writing commands: archive is refused clearly; a rebuild runs in the server.
    let (ok, _, err) = chronicle(dir.path(), &["archive", "--older-than", "0s"]);
    assert!(
        !ok && err.contains("in use") && err.contains(&format!("pid {}", server.child.id())),
        "archive beside the server must be refused: {err}"
    );
    let (ok, out, err) = chronicle(dir.path(), &["rebuild", "accounts_by_owner"]);
    assert!(ok, "rebuild through the server: {err}");
    assert!(out.contains("generation 2"), "{out}");
    let r = server.get("/accounts?owner=wanda").await;
    assert_eq!(r.body["accounts"][0]["balance"], 40, "{}", r.body);
    assert_eq!(
        entries(dir.path()).1,
        before.1,
        "the lock still names the server"
    );

    // The server still takes commands, and after it stops the directory is free.
    server
        .command("w-1", json!({"type": "Deposit", "amount": 2}), &[])
        .await
        .expect_status(200);
    drop(server);
    let (ok, _, err) = chronicle(dir.path(), &["archive", "--older-than", "0s"]);
    assert!(
        ok,
        "archive once the server is gone (killed: its lock died with it): {err}"
    );
}

/// The scenario: two servers on one directory (here only once the lock file is
/// deleted behind the first's back), eight clients sending deposits to one account through
/// both. Every acknowledged deposit is stored exactly once and the chains verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_behind_the_locks_back_store_every_acknowledged_deposit_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = common::Server::start_in(dir.path()).await;
    std::fs::remove_file(dir.path().join("chronicle.lock")).expect("deleting the lock file");
    let b = common::Server::start_in(dir.path()).await;
    a.command("race-1", json!({"type": "Open", "owner": "rita"}), &[])
        .await
        .expect_status(200);

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..8 {
        let api = if c % 2 == 0 {
            a.api.clone()
        } else {
            b.api.clone()
        };
        let (acknowledged, refused) = (acknowledged.clone(), refused.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..150 {
                let r = api
                    .command("race-1", json!({"type": "Deposit", "amount": 1}), &[])
                    .await;
                match r.status {
                    200 => acknowledged.fetch_add(1, Ordering::SeqCst),
                    // Retries ran out against the other process: refused, nothing stored.
                    409 => refused.fetch_add(1, Ordering::SeqCst),
                    s => panic!("unexpected reply {s}: {}", r.body),
                };
            }
        }));
    }
    for c in clients {
        c.await.expect("a client");
    }
    let acked = acknowledged.load(Ordering::SeqCst);
    eprintln!(
        "{acked} deposits acknowledged, {} refused as conflicts",
        refused.load(Ordering::SeqCst)
    );
    assert_eq!(acked + refused.load(Ordering::SeqCst), 1200);
    assert!(acked > 0);

    for server in [&a, &b] {
        let r = server.consistent("race-1").await;
        assert_eq!(r.body["balance"], acked, "{}", r.body);
        assert_eq!(r.body["version"], acked + 1, "{}", r.body);
    }
    let history = a.history("race-1").await;
    assert_eq!(
        common::versions(&history),
        (1..=acked as u64 + 1).collect::<Vec<_>>()
    );
    drop(a);
    drop(b);

    let conn = r2d2_sqlite::rusqlite::Connection::open(dir.path().join("chronicle.db"))
        .expect("opening the database");
    let (rows, distinct): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT version) FROM events WHERE aggregate_id = 'race-1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("counting");
    assert_eq!((rows, distinct), (acked as i64 + 1, acked as i64 + 1));
    drop(conn);
    let (ok, out, err) = chronicle(dir.path(), &["verify", "--all"]);
    assert!(ok, "verify --all after the race: {out}{err}");
}
