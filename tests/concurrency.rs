//! Many clients at once on one account, over HTTP: nothing lost, nothing doubled, no version
//! given out twice.

mod common;

use common::{versions, Api, Reply, Server};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::Barrier;

const TASKS: usize = 32;

/// Runs `TASKS` commands at once (released together by a barrier); replies in task order.
async fn all_at_once(
    server: &Server,
    id: &str,
    make: impl Fn(usize) -> (Value, Vec<(String, String)>),
) -> Vec<Reply> {
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (command, headers) = make(i);
        let (api, barrier, id): (Api, _, String) = (server.api.clone(), barrier.clone(), id.into());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            api.command(&id, command, &headers).await
        }));
    }
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("a command task"))
        .collect()
}

async fn open(server: &Server, id: &str) {
    server
        .command(id, json!({"type": "Open", "owner": "crowd"}), &[])
        .await
        .expect_status(200);
}

/// The history is 1..=n with no gap, and the folded and read-model states agree with it.
async fn check_stream(server: &Server, id: &str) -> Vec<Value> {
    let history = server.history(id).await;
    let n = history.len() as u64;
    assert_eq!(
        versions(&history),
        (1..=n).collect::<Vec<_>>(),
        "gapless versions"
    );
    let state = server.consistent(id).await;
    state.expect_status(200);
    assert_eq!(state.body["version"], n);
    assert_eq!(
        i128::from(state.body["balance"].as_u64().unwrap()),
        common::folded_balance(&history),
        "the folded balance is the sum of the stored events"
    );
    let expected = state.body.clone();
    server
        .eventually(&format!("/accounts/{id}"), |r| r.body == expected)
        .await;
    history
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deposits_each_land_exactly_once() {
    let server = Server::start().await;
    let id = "hot";
    open(&server, id).await;
    // Powers of two: the balance alone says which deposits landed.
    let amount = |i: usize| 1u64 << i;
    let replies = all_at_once(&server, id, |i| {
        (json!({"type": "Deposit", "amount": amount(i)}), Vec::new())
    })
    .await;

    // Acknowledged deposits: amount -> (version, event id).
    let mut acked = BTreeMap::new();
    for (i, r) in replies.iter().enumerate() {
        if r.status != 200 {
            continue;
        }
        assert_eq!(
            r.body["events"].as_array().map(Vec::len),
            Some(1),
            "{}",
            r.body
        );
        let event = &r.body["events"][0];
        assert_eq!(event["data"]["amount"], amount(i));
        assert_eq!(event["version"], r.body["version"]);
        acked.insert(
            amount(i),
            (
                r.body["version"].as_u64().unwrap(),
                event["event_id"].clone(),
            ),
        );
    }
    let acked_versions: BTreeSet<u64> = acked.values().map(|(v, _)| *v).collect();
    assert_eq!(
        acked_versions.len(),
        acked.len(),
        "a version was given to two commands"
    );

    let history = check_stream(&server, id).await;
    // Every acknowledged deposit is stored once, at the version it was acknowledged with.
    for (amount, (version, event_id)) in &acked {
        let stored = &history[*version as usize - 1];
        assert_eq!(stored["event_type"], "Deposited");
        assert_eq!(stored["data"]["amount"], *amount, "version {version}");
        assert_eq!(&stored["event_id"], event_id);
    }
    let stored: Vec<u64> = history[1..]
        .iter()
        .map(|e| e["data"]["amount"].as_u64().unwrap())
        .collect();
    let mut unique = stored.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        stored.len(),
        "a deposit was stored twice: {stored:?}"
    );
    let balance = server.consistent(id).await.body["balance"]
        .as_u64()
        .unwrap();
    assert_eq!(
        balance,
        acked.keys().sum::<u64>(),
        "the balance is the acknowledged deposits"
    );

    // One process serializes commands per account: none should have been refused.
    let refused: Vec<String> = replies
        .iter()
        .filter(|r| r.status != 200)
        .map(|r| format!("{} {}", r.status, r.body))
        .collect();
    assert!(refused.is_empty(), "refused deposits: {refused:?}");
    assert_eq!(balance, (1u64 << TASKS) - 1);
    assert_eq!(acked_versions, (2..=TASKS as u64 + 1).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_withdrawals_never_overdraw() {
    let server = Server::start().await;
    let id = "thin";
    open(&server, id).await;
    server
        .command(id, json!({"type": "Deposit", "amount": 100}), &[])
        .await
        .expect_status(200);
    let replies = all_at_once(&server, id, |_| {
        (json!({"type": "Withdraw", "amount": 10}), Vec::new())
    })
    .await;
    let ok: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    for r in replies.iter().filter(|r| r.status != 200) {
        r.expect_error(422, "insufficient_funds");
    }
    assert_eq!(
        ok.len(),
        10,
        "exactly the balance's worth of withdrawals succeed"
    );
    let acked: BTreeSet<u64> = ok
        .iter()
        .map(|r| r.body["version"].as_u64().unwrap())
        .collect();
    assert_eq!(acked, (3..=12).collect());
    let history = check_stream(&server, id).await;
    assert_eq!(history.len(), 12);
    assert_eq!(server.consistent(id).await.body["balance"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_if_match_admits_exactly_one() {
    let server = Server::start().await;
    let id = "guarded";
    open(&server, id).await;
    server
        .command(id, json!({"type": "Deposit", "amount": 1}), &[])
        .await
        .expect_status(200);
    let replies = all_at_once(&server, id, |i| {
        (
            json!({"type": "Deposit", "amount": 100 + i}),
            vec![("If-Match".into(), "2".into())],
        )
    })
    .await;
    let winners: Vec<usize> = (0..TASKS).filter(|i| replies[*i].status == 200).collect();
    assert_eq!(winners.len(), 1, "one writer wins: {replies:?}");
    let winner = winners[0];
    assert_eq!(replies[winner].body["version"], 3);
    for (i, r) in replies.iter().enumerate() {
        if i != winner {
            r.expect_error(409, "version_conflict");
            assert_eq!(r.body["error"]["expected_version"], 2);
            assert_eq!(r.body["error"]["actual_version"], 3);
        }
    }
    let history = check_stream(&server, id).await;
    assert_eq!(history.len(), 3);
    assert_eq!(history[2]["data"]["amount"], 100 + winner);
    assert_eq!(server.consistent(id).await.body["balance"], 101 + winner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_opens_open_once() {
    let server = Server::start().await;
    let id = "land-rush";
    let replies = all_at_once(&server, id, |i| {
        (
            json!({"type": "Open", "owner": format!("owner-{i}")}),
            Vec::new(),
        )
    })
    .await;
    let winners: Vec<usize> = (0..TASKS).filter(|i| replies[*i].status == 200).collect();
    assert_eq!(winners.len(), 1, "one Open wins: {replies:?}");
    for (i, r) in replies.iter().enumerate() {
        if i != winners[0] {
            r.expect_error(422, "account_already_open");
        }
    }
    let history = check_stream(&server, id).await;
    assert_eq!(history.len(), 1);
    assert_eq!(
        server.consistent(id).await.body["owner"],
        format!("owner-{}", winners[0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_idempotent_repeats_store_one_event() {
    let server = Server::start().await;
    let id = "once";
    open(&server, id).await;
    let replies = all_at_once(&server, id, |_| {
        (
            json!({"type": "Deposit", "amount": 77}),
            vec![("Idempotency-Key".into(), "pay-77".into())],
        )
    })
    .await;
    for r in &replies {
        r.expect_status(200);
        assert_eq!(r.body, replies[0].body, "every repeat gets the same answer");
    }
    assert_eq!(replies[0].body["version"], 2);
    let replayed = replies
        .iter()
        .filter(|r| r.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replayed, TASKS - 1, "all but the first are replays");

    let history = check_stream(&server, id).await;
    assert_eq!(history.len(), 2, "exactly one event stored");
    assert_eq!(history[1], replies[0].body["events"][0]);
    assert_eq!(server.consistent(id).await.body["balance"], 77);
}

/// Repeats of a command that only succeeds once (it empties the account) must all get the
/// first answer, not a refusal decided on the state the first one left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_repeats_of_a_one_time_command_all_get_its_answer() {
    let server = Server::start().await;
    for (id, command) in [
        ("drain", json!({"type": "Withdraw", "amount": 100})),
        ("shut", json!({"type": "Close"})),
    ] {
        open(&server, id).await;
        server
            .command(id, json!({"type": "Deposit", "amount": 100}), &[])
            .await
            .expect_status(200);
        let key = format!("once-{id}");
        let replies = all_at_once(&server, id, |_| {
            (
                command.clone(),
                vec![("Idempotency-Key".into(), key.clone())],
            )
        })
        .await;
        for r in &replies {
            r.expect_status(200);
            assert_eq!(
                r.body, replies[0].body,
                "{id}: every repeat gets the same answer"
            );
        }
        let history = check_stream(&server, id).await;
        assert_eq!(history.len(), 3, "{id}: exactly one event stored");
    }
    // The same for a first command: one Open, and every repeat sees it.
    let replies = all_at_once(&server, "born", |_| {
        (
            json!({"type": "Open", "owner": "twin"}),
            vec![("Idempotency-Key".into(), "open-born".into())],
        )
    })
    .await;
    for r in &replies {
        r.expect_status(200);
        assert_eq!(r.body, replies[0].body);
    }
    assert_eq!(check_stream(&server, "born").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reuse_of_a_key_with_two_bodies_stores_one() {
    let server = Server::start().await;
    let id = "contested";
    open(&server, id).await;
    // Half send 5, half send 6, all under one key: one body wins, the other is refused.
    let amount = |i: usize| 5 + (i % 2) as u64;
    let replies = all_at_once(&server, id, |i| {
        (
            json!({"type": "Deposit", "amount": amount(i)}),
            vec![("Idempotency-Key".into(), "shared".into())],
        )
    })
    .await;
    let history = check_stream(&server, id).await;
    assert_eq!(history.len(), 2, "exactly one event stored");
    let won = history[1]["data"]["amount"].as_u64().unwrap();
    for (i, r) in replies.iter().enumerate() {
        if amount(i) == won {
            r.expect_status(200);
            assert_eq!(r.body["version"], 2);
            assert_eq!(r.body["events"][0], history[1]);
        } else {
            r.expect_error(422, "idempotency_key_reused");
        }
    }
    assert_eq!(server.consistent(id).await.body["balance"], won);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_many_accounts_stay_apart() {
    let server = Server::start().await;
    let ids: Vec<String> = (0..4).map(|i| format!("apart-{i}")).collect();
    for id in &ids {
        open(&server, id).await;
    }
    // 32 tasks over 4 accounts, 8 deposits each, all at once.
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (api, barrier) = (server.api.clone(), barrier.clone());
        let id = ids[i % ids.len()].clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = api
                .command(&id, json!({"type": "Deposit", "amount": 1u64 << i}), &[])
                .await;
            (id, r)
        }));
    }
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for t in futures::future::join_all(tasks).await {
        let (id, r) = t.expect("a command task");
        r.expect_status(200);
        *expected.entry(id).or_default() += r.body["events"][0]["data"]["amount"].as_u64().unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let history = check_stream(&server, id).await;
        assert_eq!(history.len(), 1 + TASKS / ids.len());
        let balance = server.consistent(id).await.body["balance"]
            .as_u64()
            .unwrap();
        // Account i got exactly the amounts 1 << j with j % 4 == i.
        let want: u64 = (0..TASKS)
            .filter(|j| j % ids.len() == i)
            .map(|j| 1u64 << j)
            .sum();
        assert_eq!(balance, want, "{id}");
        assert_eq!(expected[id], want);
    }
}
