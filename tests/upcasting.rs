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
            stored: Vec::new(),
            expected_known: false,
        })
        .await
        .expect("the fixture appends as stored");
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

/// The audit feed upcasts stored v1 events unless raw, and an event of an aggregate type this
/// build doesn't register fails the page by name instead of being left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_feed_upcasts_and_names_what_it_cannot() {
    use chronicle_kernel::audit::{audit_page, AuditQuery};
    use chronicle_kernel::envelope::parse_timestamp;
    let (_dir, store, chronicle) = store_with_fixture().await;
    let at = |t: &str| parse_timestamp(t).expect("a time");
    let query = AuditQuery::new(at("2024-01-01T00:00:00Z"), at("2024-12-31T00:00:00Z"));

    let page = audit_page(&chronicle, &query).await.expect("a page");
    assert_eq!(page.next, None);
    assert_eq!(page.events.len(), 4);
    for d in page.events.iter().filter(|e| e.event_type == "Deposited") {
        assert_eq!((d.schema_version, &d.data["currency"]), (2, &"EUR".into()));
    }
    let raw = AuditQuery {
        raw: true,
        ..query.clone()
    };
    assert_eq!(
        audit_page(&chronicle, &raw)
            .await
            .expect("a raw page")
            .events,
        fixture()
    );

    // A `ledgers` event (no such aggregate type here) recorded between the fixture's events.
    let mut ledger = fixture()[0].clone();
    ledger.aggregate_type = "ledgers".into();
    ledger.aggregate_id = "l-1".into();
    ledger.recorded_at = at("2024-03-01T09:01:00Z");
    store
        .append(&AppendRequest {
            stream: StreamId::new("ledgers", "l-1"),
            expected_version: 0,
            events: vec![ledger.clone()],
            idempotency: None,
            stored: Vec::new(),
            expected_known: false,
        })
        .await
        .expect("append");
    let err = audit_page(&chronicle, &query)
        .await
        .expect_err("an event that can't be upcast fails the page");
    assert_eq!(err.code(), "decode_error");
    assert!(err.to_string().contains("ledgers/l-1 v1"), "{err}");
    // As stored it can be shown, in its place; a page that ends before it is unaffected.
    let events = audit_page(&chronicle, &raw).await.expect("raw").events;
    assert_eq!(events[1], ledger);
    let first = AuditQuery {
        limit: 1,
        ..query.clone()
    };
    let page = audit_page(&chronicle, &first)
        .await
        .expect("the first page");
    assert_eq!(page.events.len(), 1);
    let rest = AuditQuery {
        after: page.next,
        ..query
    };
    assert!(audit_page(&chronicle, &rest).await.is_err());
}
