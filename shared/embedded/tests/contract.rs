//! The port contract suites (`chronicle-testkit`) run against the embedded SQLite adapter, plus
//! what only the embedded adapter promises: durability across reopening and an append-only
//! events table.

use chronicle_embedded::{EmbeddedStore, DB_FILE, KEYS_FILE};
use chronicle_kernel::{
    AppendError, AppendRequest, DocWrite, EventFeed, EventStore, ModelRef, ReadModelStore,
    ReadRange, SnapshotStore, StoreError,
};
use chronicle_testkit as kit;
use r2d2_sqlite::rusqlite::Connection;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn open(dir: &tempfile::TempDir) -> Arc<EmbeddedStore> {
    EmbeddedStore::open(dir.path()).expect("opening the embedded store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    kit::event_store_contract(open(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_feed_contract() {
    let dir = tempfile::tempdir().unwrap();
    kit::event_feed_contract(open(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    kit::snapshot_store_contract(open(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_idempotency_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    kit::command_idempotency_contract(store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    kit::read_model_store_contract(open(&dir)).await;
}

/// The suites must hold on a shared, busy store: all of them at once on one store, twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_suites_concurrently_on_one_shared_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for _ in 0..2 {
        tokio::join!(
            kit::event_store_contract(store.clone()),
            kit::event_feed_contract(store.clone()),
            kit::snapshot_store_contract(store.clone()),
            kit::read_model_store_contract(store.clone()),
            kit::command_idempotency_contract(store.clone(), store.clone()),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_has_an_empty_feed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(store.feed_head().await.unwrap(), 0);
    assert!(store.read_feed(0, 100).await.unwrap().is_empty());
    let t = Instant::now();
    store.wait_for_events(0, Duration::from_millis(200)).await;
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "wait_for_events on an empty store returned after {:?}, before its timeout",
        t.elapsed()
    );
    assert_eq!(store.feed_head().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let stream = kit::new_stream();
    let mut evs = vec![kit::rich_event(&stream, 1)];
    evs.extend(kit::events(&stream, 1, 4));
    let key = kit::unique("idem");
    let record = kit::idempotency_record(&key, &stream);
    let snap = kit::snapshot(&stream, 3, 2, "before close");
    let projection = kit::unique("proj");
    let write = DocWrite {
        key: "doc-1".into(),
        version: 4,
        body: json!({ "balance": 40, "owner": "Zoë" }),
        index: vec![("status".into(), "open".into())],
    };

    let head = {
        let store = open(&dir);
        store
            .append(&AppendRequest {
                stream: stream.clone(),
                expected_version: 0,
                events: evs.clone(),
                idempotency: Some(record.clone()),
                stored: Vec::new(),
                expected_known: false,
            })
            .await
            .unwrap();
        store.save(snap.clone()).await.unwrap();
        let g2 = ModelRef::generation(&projection, 2);
        assert_eq!(
            store
                .apply(&g2, vec![write.clone()], Some(5))
                .await
                .unwrap(),
            1
        );
        store.activate(&projection, 2).await.unwrap();
        let head = store.feed_head().await.unwrap();
        assert_eq!(head, 5);
        store.close();
        // Closed: later writes fail rather than vanish.
        let r = store
            .append(&kit::request(&stream, 5, kit::events(&stream, 5, 1)))
            .await;
        assert!(
            matches!(r, Err(AppendError::Store(StoreError::Backend(_)))),
            "an append to a closed store must fail, got {r:?}"
        );
        head
    }; // dropped

    let store = open(&dir);
    assert_eq!(
        store.read_stream(&stream, ReadRange::all()).await.unwrap(),
        evs
    );
    assert_eq!(store.stream_version(&stream).await.unwrap(), 5);
    assert_eq!(store.idempotency_record(&key).await.unwrap(), Some(record));
    assert_eq!(store.latest(&stream, None).await.unwrap(), Some(snap));
    assert_eq!(store.feed_head().await.unwrap(), head);
    let feed = store.read_feed(0, 100).await.unwrap();
    assert_eq!(
        feed.iter().map(|f| &f.event).cloned().collect::<Vec<_>>(),
        evs
    );
    assert_eq!(store.active_generation(&projection).await.unwrap(), 2);
    let active = ModelRef::active(&projection);
    let doc = store.get(&active, "doc-1").await.unwrap().expect("doc-1");
    assert_eq!((doc.version, &doc.body), (4, &write.body));
    let found = store.find(&active, "status", "open", 10).await.unwrap();
    assert_eq!(found, vec![doc]);
    assert_eq!(store.checkpoint(&active).await.unwrap(), 5);

    // The reopened store knows its head: waiting below it returns at once...
    let t = Instant::now();
    store
        .wait_for_events(head - 1, Duration::from_secs(5))
        .await;
    assert!(t.elapsed() < Duration::from_secs(1));
    // ...and appending continues the stream and the feed.
    let more = kit::events(&stream, 5, 2);
    store
        .append(&kit::request(&stream, 5, more.clone()))
        .await
        .unwrap();
    let after = store.read_feed(head, 100).await.unwrap();
    assert_eq!(
        after.iter().map(|f| f.position).collect::<Vec<_>>(),
        vec![head + 1, head + 2]
    );
    assert_eq!(after.into_iter().map(|f| f.event).collect::<Vec<_>>(), more);
    assert_eq!(store.feed_head().await.unwrap(), head + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_table_is_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let stream = kit::new_stream();
    let evs = kit::events(&stream, 0, 3);
    store
        .append(&kit::request(&stream, 0, evs.clone()))
        .await
        .unwrap();

    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let count = |conn: &Connection| -> i64 {
        conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&conn), 3, "the raw connection must see the 3 events");

    for sql in [
        "UPDATE events SET event_type = 'Tampered'",
        "UPDATE events SET data = '{}' WHERE version = 2",
        "DELETE FROM events",
        "DELETE FROM events WHERE version = 3",
    ] {
        match conn.execute(sql, []) {
            Ok(n) => panic!("`{sql}` succeeded ({n} rows): the events table must be append-only"),
            Err(e) => assert!(
                e.to_string().contains("append-only"),
                "`{sql}` must be refused by the append-only trigger, failed with: {e}"
            ),
        }
    }
    assert_eq!(count(&conn), 3);
    drop(conn);
    assert_eq!(
        store.read_stream(&stream, ReadRange::all()).await.unwrap(),
        evs,
        "the events must be unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_publisher_passes_the_publisher_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("published.jsonl");
    let publisher = chronicle_embedded::JsonlPublisher::open(&path).expect("open the log");
    kit::publisher_contract(Arc::new(publisher), || {
        let path = path.clone();
        async move { chronicle_embedded::JsonlPublisher::read_all(&path).expect("read the log") }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_contract() {
    let dir = tempfile::tempdir().unwrap();
    kit::archive_contract(Arc::new(
        chronicle_embedded::DirArchive::open(dir.path()).unwrap(),
    ))
    .await;
}

/// Expiry is simulated by deleting rows behind the store's back (the embedded store itself
/// never removes an event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_reads_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let archive =
        Arc::new(chronicle_embedded::DirArchive::open(dir.path().join("archive")).unwrap());
    let db = dir.path().join(DB_FILE);
    kit::archived_reads_contract(store.clone(), store, archive, |s, through| {
        let db = db.clone();
        async move {
            let conn = Connection::open(db).unwrap();
            conn.execute_batch("DROP TRIGGER events_no_delete").unwrap();
            conn.execute(
                "DELETE FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND version <= ?3",
                r2d2_sqlite::rusqlite::params![s.aggregate_type, s.aggregate_id, through as i64],
            )
            .unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_key_store_passes_the_key_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = chronicle_embedded::SqliteKeyStore::open(dir.path().join(KEYS_FILE))
        .expect("opening the key store");
    kit::key_store_contract(Arc::new(store)).await;
}
