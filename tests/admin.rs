//! Operators' routes and rebuilds: `GET /admin/projections` (state, checkpoint, lag, the event
//! a projection failed on), `POST /admin/projections/{name}/rebuild` while the old generation
//! keeps serving, and a rebuild interrupted half-way resuming from its checkpoint.

mod common;

use chronicle_embedded::EmbeddedStore;
use chronicle_kernel::admin::{self, ProjectionState, RebuildState};
use chronicle_kernel::{Chronicle, CommandOptions, HandlerConfig};
use common::Server;
use serde_json::{json, Value};
use std::sync::Arc;

fn status<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["projections"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no status for {name}: {body}"))
}

#[tokio::test]
async fn status_and_rebuild_through_the_admin_routes() {
    let server = Server::start().await;
    for (id, owner) in [("adm-1", "ada"), ("adm-2", "ada"), ("adm-3", "bob")] {
        server
            .command(id, json!({"type": "Open", "owner": owner}), &[])
            .await
            .expect_status(200);
    }
    server
        .command("adm-1", json!({"type": "Deposit", "amount": 40}), &[])
        .await
        .expect_status(200);

    // Caught up: live, checkpoint at the feed's head, no lag.
    let r = server
        .eventually("/admin/projections", |r| {
            r.status == 200
                && r.body["projections"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().all(|p| p["checkpoint"] == 4))
        })
        .await;
    for name in ["accounts_state", "accounts_by_owner"] {
        let s = status(&r.body, name);
        assert_eq!(s["state"], "live", "{s}");
        assert_eq!(s["active_generation"], 1, "{s}");
        assert_eq!(s["lag"]["events"], 0, "{s}");
        assert_eq!(s["lag"]["seconds"], 0.0, "{s}");
        assert_eq!(s["aggregate_type"], "accounts", "{s}");
    }

    let r = server
        .request(
            reqwest::Method::POST,
            "/admin/projections/accounts_by_owner/rebuild",
            None,
            &[],
        )
        .await;
    r.expect_status(202);
    assert_eq!(r.body["projection"], "accounts_by_owner");
    let r = server
        .eventually("/admin/projections", |r| {
            status(&r.body, "accounts_by_owner")["rebuild"]["state"] == "done"
        })
        .await;
    let s = status(&r.body, "accounts_by_owner");
    assert_eq!(s["active_generation"], 2, "{s}");
    assert_eq!(s["rebuild"]["generation"], 2, "{s}");
    assert_eq!(s["rebuild"]["processed"], 4, "{s}");
    assert_eq!(s["state"], "live", "{s}");
    // The new generation answers as the old one did, and keeps following the feed.
    let owners = server.get("/accounts?owner=ada").await;
    assert_eq!(owners.body["accounts"].as_array().map(Vec::len), Some(2));
    server
        .command("adm-4", json!({"type": "Open", "owner": "ada"}), &[])
        .await
        .expect_status(200);
    server
        .eventually("/accounts?owner=ada", |r| {
            r.body["accounts"].as_array().map(Vec::len) == Some(3)
        })
        .await;

    // Bad input: an unknown projection, a query parameter, the wrong method.
    let r = server
        .request(
            reqwest::Method::POST,
            "/admin/projections/nope/rebuild",
            None,
            &[],
        )
        .await;
    r.expect_error(404, "unknown_projection");
    assert!(r.body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("accounts_by_owner")));
    server
        .get("/admin/projections?verbose=1")
        .await
        .expect_error(400, "invalid_query");
    server
        .get("/admin/projections/accounts_state/rebuild")
        .await
        .expect_error(405, "method_not_allowed");
}

#[tokio::test]
async fn a_projection_stuck_on_an_event_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_in_with(dir.path(), &[]).await;
    server
        .command("stuck-1", json!({"type": "Open", "owner": "sam"}), &[])
        .await
        .expect_status(200);
    // v1 applied first: otherwise v1 and v2 may land in one batch, which fails whole and
    // leaves the checkpoint at 0.
    server
        .eventually("/admin/projections", |r| {
            status(&r.body, "accounts_state")["checkpoint"] == 1
        })
        .await;
    // An event of a schema version no upcaster knows, written behind the store's back (as
    // a newer writer would): projections must stop on it, not skip it.
    let conn = r2d2_sqlite::rusqlite::Connection::open(dir.path().join("chronicle.db"))
        .expect("open the database");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    conn.execute(
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
         schema_version, data, metadata, recorded_at, hash) VALUES \
         ('01a218b7-0000-7000-8000-000000000001', 'accounts', 'stuck-1', 2, 'Deposited', 9, \
          '{\"amount\":5}', '{}', '2026-11-26T00:00:00.000000Z', '')",
        [],
    )
    .expect("insert");
    let r = server
        .eventually("/admin/projections", |r| {
            status(&r.body, "accounts_state")["state"] == "failed"
        })
        .await;
    let s = status(&r.body, "accounts_state");
    assert_eq!(s["failure"]["event"]["stream"], "accounts/stuck-1", "{s}");
    assert_eq!(s["failure"]["event"]["version"], 2, "{s}");
    assert_eq!(s["failure"]["event"]["position"], 2, "{s}");
    assert!(
        s["failure"]["event"]["reason"]
            .as_str()
            .is_some_and(|m| m.contains("schema version 9")),
        "{s}"
    );
    assert_eq!(s["checkpoint"], 1, "{s}");
    assert_eq!(s["lag"]["events"], 1, "{s}");
    assert!(s["lag"]["seconds"].as_f64().is_some_and(|l| l > 0.0), "{s}");
}

/// An embedded store in `dir` with accounts `rb-0..n`, each opened and given one deposit.
async fn seeded(dir: &tempfile::TempDir, n: usize) -> (Arc<EmbeddedStore>, Chronicle) {
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let chronicle = Chronicle::builder(
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        HandlerConfig::default(),
    )
    .domain(chronicle_accounts::domain())
    .bulk_verify(store.clone())
    .build();
    seed(&chronicle, n).await;
    (store, chronicle)
}

/// Accounts `rb-0..n`, each opened and given one deposit, through the command path.
async fn seed(chronicle: &Chronicle, n: usize) {
    let accounts = chronicle.aggregate("accounts").expect("accounts");
    for i in 0..n {
        let id = format!("rb-{i:03}");
        for cmd in [
            json!({"type":"Open","owner":"rae"}),
            json!({"type":"Deposit","amount": i + 1}),
        ] {
            accounts
                .execute(&id, cmd.to_string().as_bytes(), CommandOptions::default())
                .await
                .expect("command");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, chronicle) = seeded(&dir, 100).await;
    let read_models: Arc<dyn chronicle_kernel::ReadModelStore> = store.clone();

    // Interrupted: the rebuild is dropped (as a killed process would stop) after its first
    // batch of 50 events.
    let mut runner = chronicle.runner("accounts_state").expect("runner");
    runner.rebuild_batch = 50;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    tokio::select! {
        r = runner.rebuild(|done, _| {
            if done >= 50 {
                if let Some(tx) = tx.take() { let _ = tx.send(()); }
            }
        }) => panic!("the rebuild should have been interrupted: {r:?}"),
        _ = rx => {}
    }
    let (_, record) = admin::rebuild_record(read_models.as_ref(), "accounts_state")
        .await
        .expect("status");
    let record = record.expect("a rebuild record");
    assert_eq!(record.state, RebuildState::Rebuilding);
    assert_eq!(record.generation, 2);
    let statuses = chronicle.projection_statuses().await.expect("statuses");
    let s = statuses
        .iter()
        .find(|s| s.name == "accounts_state")
        .expect("status");
    assert_eq!(s.state, ProjectionState::Rebuilding);
    assert_eq!(s.active_generation, 1, "reads stay on the old generation");
    let processed = s.rebuild.as_ref().map(|r| r.processed).unwrap_or_default();
    assert!(processed >= 50, "{s:?}");

    // Resumed: from where the first one got to, not from the start.
    let mut runner = chronicle.runner("accounts_state").expect("runner");
    runner.rebuild_batch = 50;
    let mut first_progress = None;
    let rebuilt = runner
        .rebuild(|done, _| {
            first_progress.get_or_insert(done);
        })
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.generation, 2);
    assert_eq!(rebuilt.resumed_from, Some(processed));
    assert_eq!(first_progress, Some(processed + 50));
    let accounts = chronicle.aggregate("accounts").expect("accounts");
    for i in [0usize, 42, 99] {
        let view = accounts
            .read_model(&format!("rb-{i:03}"))
            .await
            .expect("read model");
        assert_eq!(view.body["balance"], json!(i + 1));
        assert_eq!(view.version, 2);
    }
    let (_, record) = admin::rebuild_record(read_models.as_ref(), "accounts_state")
        .await
        .expect("status");
    assert_eq!(record.map(|r| r.state), Some(RebuildState::Done));

    // The next rebuild starts afresh at generation 3.
    let rebuilt = chronicle
        .runner("accounts_state")
        .expect("runner")
        .rebuild(|_, _| {})
        .await
        .expect("rebuild");
    assert_eq!((rebuilt.generation, rebuilt.resumed_from), (3, None));
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_without_a_feed_folds_stream_by_stream_and_resumes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, chronicle) = seeded(&dir, 100).await;
    let projection = chronicle
        .projections()
        .iter()
        .find(|p| p.name() == "accounts_by_owner")
        .expect("projection")
        .clone();
    let schema = chronicle
        .aggregate("accounts")
        .expect("accounts")
        .schema()
        .clone();
    let job = chronicle_kernel::rebuild::StreamRebuild {
        events: store.as_ref(),
        store: store.as_ref(),
        projection: projection.as_ref(),
        schema: &schema,
        page: 30,
    };

    // Interrupted after its first page of 30 streams.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    tokio::select! {
        r = job.run(|p| {
            if let Some(tx) = tx.take() { let _ = tx.send(()); }
            assert!(p.streams <= 30);
        }) => panic!("the rebuild should have been interrupted: {r:?}"),
        _ = rx => {}
    }
    // Resumed after those 60 events, through the registry's entry point.
    let mut last = (0, 0);
    let rebuilt = chronicle
        .rebuild_by_streams("accounts_by_owner", |events, streams| {
            last = (events, streams)
        })
        .await
        .expect("rebuild");
    assert_eq!((rebuilt.generation, rebuilt.resumed_from), (2, Some(60)));
    assert_eq!(
        last.0, 200,
        "every event folded once, counting the first run's"
    );
    let listed = chronicle
        .list("accounts", "owner", "rae", 1000)
        .await
        .expect("list");
    assert_eq!(listed.len(), 100);
    store.close();
}
