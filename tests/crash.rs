//! SIGKILL mid-load, restart on the same data directory: every acknowledged command survives,
//! no command is half-stored, and the read models catch up.

mod common;

use common::{versions, Api, Server};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 8;
const OWNER: &str = "crash-owner";

/// What one client saw: the commands the server acknowledged, and the one it lost in flight.
#[derive(Default)]
struct Log {
    /// (version, amount, idempotency key, the acknowledged reply body) per acknowledged deposit.
    acked: Vec<(u64, u64, String, Value)>,
    /// The deposit whose reply never came (amount, key): it may or may not be stored.
    in_flight: Option<(u64, String)>,
    /// Replies other than 200, which no command under this load should get.
    unexpected: Vec<String>,
}

fn amount(account: usize, n: usize) -> u64 {
    // Distinct per account and per deposit.
    (account as u64 + 1) * 1_000_000 + n as u64 + 1
}

/// Opens `crash-{account}` and deposits in a loop until the server goes away.
async fn client(api: Api, account: usize, acked_total: Arc<AtomicUsize>) -> Log {
    let id = format!("crash-{account}");
    let mut log = Log::default();
    match api
        .try_command(&id, json!({"type": "Open", "owner": OWNER}), &[])
        .await
    {
        Ok(r) if r.status == 200 => {}
        Ok(r) => {
            log.unexpected
                .push(format!("Open: {} {}", r.status, r.body));
            return log;
        }
        Err(_) => return log,
    }
    for n in 0.. {
        let (amount, key) = (amount(account, n), format!("crash-{account}-{n}"));
        let sent = api
            .try_command(
                &id,
                json!({"type": "Deposit", "amount": amount}),
                &[("Idempotency-Key", &key)],
            )
            .await;
        match sent {
            Ok(r) if r.status == 200 => {
                let version = r.body["version"].as_u64().expect("a version");
                log.acked.push((version, amount, key, r.body));
                acked_total.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => {
                log.unexpected
                    .push(format!("deposit {n}: {} {}", r.status, r.body));
                return log;
            }
            Err(_) => {
                log.in_flight = Some((amount, key));
                return log;
            }
        }
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_commands_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start_in(dir.path()).await;

    let acked_total = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..ACCOUNTS)
        .map(|a| tokio::spawn(client(server.api.clone(), a, acked_total.clone())))
        .collect();
    // Let the load run for a second, and until every client has had some deposits through,
    // then kill the server while requests are in flight.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    while started.elapsed() < Duration::from_secs(1)
        || acked_total.load(Ordering::SeqCst) < ACCOUNTS * 5
    {
        assert!(Instant::now() < deadline, "the load made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    let mut logs = Vec::new();
    for c in clients {
        logs.push(c.await.expect("a client task"));
    }
    drop(server);
    let unexpected: Vec<&String> = logs.iter().flat_map(|l| &l.unexpected).collect();
    assert!(
        unexpected.is_empty(),
        "replies other than 200 under load: {unexpected:?}"
    );
    let in_flight = logs.iter().filter(|l| l.in_flight.is_some()).count();
    assert!(
        in_flight > 0,
        "the kill should have caught at least one request in flight"
    );

    let server = Server::start_in(dir.path()).await;
    let mut owned = Vec::new();
    for (account, log) in logs.iter().enumerate() {
        let id = format!("crash-{account}");
        assert!(
            !log.acked.is_empty(),
            "{id}: no acknowledged deposit before the kill"
        );
        let history = server.history(&id).await;
        let n = history.len() as u64;
        // Versions are gapless, and the first event is the opening.
        assert_eq!(
            versions(&history),
            (1..=n).collect::<Vec<_>>(),
            "{id}: gapless"
        );
        assert_eq!(history[0]["event_type"], "AccountOpened", "{id}");
        // Every acknowledged deposit is there, at its version, with its amount.
        for (version, amount, key, reply) in &log.acked {
            let stored = history.get(*version as usize - 1).unwrap_or_else(|| {
                panic!("{id}: acknowledged version {version} lost (history has {n})")
            });
            assert_eq!(stored["event_type"], "Deposited", "{id} v{version}");
            assert_eq!(stored["data"]["amount"], *amount, "{id} v{version}");
            assert_eq!(stored["metadata"]["idempotency_key"], key.as_str());
            assert_eq!(
                stored, &reply["events"][0],
                "{id} v{version}: stored as acknowledged"
            );
        }
        // Acknowledged versions are 2, 3, ... in order, and at most the one in-flight deposit
        // was stored beyond them.
        let acked_versions: Vec<u64> = log.acked.iter().map(|a| a.0).collect();
        assert_eq!(
            acked_versions,
            (2..=log.acked.len() as u64 + 1).collect::<Vec<_>>()
        );
        let extra = n - 1 - log.acked.len() as u64;
        match (&log.in_flight, extra) {
            (_, 0) => {}
            (Some((amount, key)), 1) => {
                let last = &history[n as usize - 1];
                assert_eq!(
                    last["data"]["amount"], *amount,
                    "{id}: the in-flight deposit"
                );
                assert_eq!(last["metadata"]["idempotency_key"], key.as_str());
            }
            _ => panic!("{id}: {extra} events beyond the acknowledged ones: {history:?}"),
        }
        // No partial command: the folded state is exactly the stored deposits.
        let state = server.consistent(&id).await;
        state.expect_status(200);
        let stored_sum: u64 = history[1..]
            .iter()
            .map(|e| e["data"]["amount"].as_u64().unwrap())
            .sum();
        assert_eq!(state.body["balance"], stored_sum, "{id}");
        assert_eq!(state.body["version"], n, "{id}");
        assert_eq!(state.body["status"], "open");
        // The read model catches up with the store.
        let expected = state.body.clone();
        server
            .eventually(&format!("/accounts/{id}"), |r| r.body == expected)
            .await;
        owned.push(expected);
    }
    // The list read model too.
    owned.sort_by_key(|a| a["id"].as_str().unwrap().to_owned());
    server
        .eventually(&format!("/accounts?owner={OWNER}"), |r| {
            let mut listed = r.body["accounts"].as_array().cloned().unwrap_or_default();
            listed.sort_by_key(|a| a["id"].as_str().unwrap_or_default().to_owned());
            listed == owned
        })
        .await;

    // Clients retry after the crash with their idempotency keys: what was acknowledged is
    // replayed as it was, and the lost command is applied exactly once.
    for (account, log) in logs.iter().enumerate() {
        let id = format!("crash-{account}");
        let before = server.history(&id).await;
        let (_, amount, key, reply) = log.acked.last().unwrap();
        let r = server
            .command(
                &id,
                json!({"type": "Deposit", "amount": amount}),
                &[("Idempotency-Key", key)],
            )
            .await;
        r.expect_status(200);
        assert_eq!(r.header("idempotent-replayed"), Some("true"), "{id}");
        assert_eq!(&r.body, reply, "{id}: replayed as acknowledged");
        assert_eq!(
            server.history(&id).await,
            before,
            "{id}: a replay stores nothing"
        );

        if let Some((amount, key)) = &log.in_flight {
            let r = server
                .command(
                    &id,
                    json!({"type": "Deposit", "amount": amount}),
                    &[("Idempotency-Key", key)],
                )
                .await;
            r.expect_status(200);
            let history = server.history(&id).await;
            let copies = history
                .iter()
                .filter(|e| e["metadata"]["idempotency_key"] == key.as_str())
                .count();
            assert_eq!(
                copies, 1,
                "{id}: the retried in-flight deposit is stored once"
            );
            let stored_before = before.len() as u64;
            if r.header("idempotent-replayed") == Some("true") {
                assert_eq!(r.body["version"], stored_before, "{id}: it had been stored");
                assert_eq!(history.len() as u64, stored_before);
            } else {
                assert_eq!(r.body["version"], stored_before + 1, "{id}: it was lost");
                assert_eq!(history.len() as u64, stored_before + 1);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_crashes_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = "survivor";
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let mut next_amount = 1u64;
    for round in 0..3u64 {
        let mut server = Server::start_in(dir.path()).await;
        if round == 0 {
            server
                .command(id, json!({"type": "Open", "owner": "phoenix"}), &[])
                .await
                .expect_status(200);
        }
        // A few acknowledged deposits, then four at once with the kill racing them.
        for _ in 0..5 {
            let r = server
                .command(id, json!({"type": "Deposit", "amount": next_amount}), &[])
                .await;
            r.expect_status(200);
            acked.push((r.body["version"].as_u64().unwrap(), next_amount));
            next_amount += 1;
        }
        let racing: Vec<_> = (0..4)
            .map(|k| {
                let api = server.api.clone();
                let amount = 1_000_000 * (round + 1) + k;
                tokio::spawn(async move {
                    let r = api
                        .try_command(id, json!({"type": "Deposit", "amount": amount}), &[])
                        .await;
                    (amount, r)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        server.kill();
        for t in racing {
            let (amount, r) = t.await.expect("a racing task");
            if let Ok(r) = r {
                r.expect_status(200);
                acked.push((r.body["version"].as_u64().unwrap(), amount));
            }
        }
        drop(server);

        let server = Server::start_in(dir.path()).await;
        let history = server.history(id).await;
        let n = history.len() as u64;
        assert_eq!(
            versions(&history),
            (1..=n).collect::<Vec<_>>(),
            "round {round}"
        );
        for (version, amount) in &acked {
            let stored = history
                .get(*version as usize - 1)
                .unwrap_or_else(|| panic!("round {round}: acknowledged v{version} lost"));
            assert_eq!(
                stored["data"]["amount"], *amount,
                "round {round} v{version}"
            );
        }
        // Stored but unacknowledged (lost replies) only come from the racing deposits.
        for e in &history[1..] {
            let v = e["version"].as_u64().unwrap();
            if !acked.iter().any(|(av, _)| *av == v) {
                assert!(e["data"]["amount"].as_u64().unwrap() >= 1_000_000, "{e}");
                acked.push((v, e["data"]["amount"].as_u64().unwrap()));
            }
        }
        let state = server.consistent(id).await;
        assert_eq!(state.body["version"], n);
        assert_eq!(
            i128::from(state.body["balance"].as_u64().unwrap()),
            common::folded_balance(&history)
        );
        let expected = state.body.clone();
        server
            .eventually(&format!("/accounts/{id}"), |r| r.body == expected)
            .await;
    }
}
