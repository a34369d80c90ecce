//! Stored v1 events (events/fixtures/accounts-v1.json) come out in the current schema.

use chronicle_embedded::EmbeddedStore;
use chronicle_kernel::{
    AppendRequest, Chronicle, EventEnvelope, EventStore, HandlerConfig, ReadRange, StreamId,
};
use std::sync::Arc;

fn fixture() -> Vec<EventEnvelope> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/fixtures/accounts-v1.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture file");
    serde_json::from_str(&text).expect("fixture envelopes")
}

async fn store_with_fixture() -> (tempfile::TempDir, Arc<EmbeddedStore>, Chronicle) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("store");
    let events = fixture();
    store
        .append(&AppendRequest {
            stream: StreamId::new("accounts", "legacy-1"),
            expected_version: 0,
            events,
            idempotency: None,
        })
        .await
        .expect("the fixture appends as stored");
    let chronicle = chronicle_accounts::register(Chronicle::builder(
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        HandlerConfig::default(),
    ))
    .build();
    (dir, store, chronicle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_deposits_are_upcast_on_read() {
    let (_dir, _store, chronicle) = store_with_fixture().await;
    let accounts = chronicle.aggregate("accounts").expect("registered");

    let state = accounts.state("legacy-1", None).await.expect("state");
    assert_eq!(state.version, 4);
    assert_eq!(state.body["balance"], 5000 - 1250 + 300);
    assert_eq!(state.body["currency"], "EUR");
    assert_eq!(state.body["owner"], "carol");

    let history = accounts
        .history("legacy-1", ReadRange::all(), false)
        .await
        .expect("history");
    let deposits: Vec<_> = history
        .iter()
        .filter(|e| e.event_type == "Deposited")
        .collect();
    assert_eq!(deposits.len(), 2);
    for d in &deposits {
        assert_eq!(d.schema_version, 2, "upcast to the current version");
        assert_eq!(d.data["currency"], "EUR");
    }

    let raw = accounts
        .history("legacy-1", ReadRange::all(), true)
        .await
        .expect("raw history");
    assert_eq!(
        raw,
        fixture(),
        "raw=true shows the events exactly as stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_events_feed_projections_and_new_commands() {
    let (_dir, _store, chronicle) = store_with_fixture().await;
    for p in chronicle.projections() {
        let runner = chronicle.runner(p.name()).expect("runner");
        let step = runner.step(1).await.expect("projection applies v1 events");
        assert_eq!(step.read, 4);
    }
    let accounts = chronicle.aggregate("accounts").expect("registered");
    let view = accounts.read_model("legacy-1").await.expect("read model");
    assert_eq!(view.body["balance"], 4050);
    assert_eq!(view.version, 4);

    // A new command on top of an old history writes the current schema version.
    let out = accounts
        .execute(
            "legacy-1",
            br#"{"type": "Deposit", "amount": 50}"#,
            Default::default(),
        )
        .await
        .expect("deposit");
    assert_eq!(out.result.version, 5);
    assert_eq!(out.result.events[0].schema_version, 2);
    assert_eq!(out.result.events[0].data["currency"], "EUR");
}
