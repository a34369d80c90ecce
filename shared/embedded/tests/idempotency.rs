//! Idempotency records in the embedded store: expired rows are pruned (on demand and by the
//! store's own pruner thread), only expired ones, and data directories from before records
//! expired keep working.

use chronicle_embedded::{EmbeddedStore, DB_FILE};
use chronicle_kernel::{EventStore, IdempotencyRecord, StreamId};
use chronicle_testkit as kit;
use r2d2_sqlite::rusqlite::Connection;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// The keys in the idempotency table, expired or not.
fn stored_keys(dir: &Path) -> BTreeSet<String> {
    let conn = Connection::open(dir.join(DB_FILE)).expect("open");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    let mut stmt = conn
        .prepare("SELECT key FROM idempotency")
        .expect("prepare");
    let keys = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    keys
}

/// Appends one event to a new stream with `record` made for it.
async fn append_with(
    store: &EmbeddedStore,
    make: fn(&str, &StreamId) -> IdempotencyRecord,
    key: &str,
) -> IdempotencyRecord {
    let stream = kit::new_stream();
    let record = make(key, &stream);
    let mut req = kit::request(&stream, 0, kit::events(&stream, 0, 1));
    req.idempotency = Some(record.clone());
    store.append(&req).await.expect("append");
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_deletes_expired_rows_in_batches_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).expect("open");
    for i in 0..5 {
        append_with(&store, kit::expired_idempotency_record, &format!("old-{i}")).await;
    }
    let live = append_with(&store, kit::idempotency_record, "live").await;
    assert_eq!(
        stored_keys(dir.path()).len(),
        6,
        "expired rows stay until pruned"
    );

    // Batches of 2: three writer jobs (2 + 2 + 1), every expired row gone, the live one kept.
    assert_eq!(store.prune_idempotency(2).await.expect("prune"), 5);
    assert_eq!(
        stored_keys(dir.path()),
        BTreeSet::from(["live".to_string()])
    );
    assert_eq!(store.idempotency_record("live").await.unwrap(), Some(live));
    assert_eq!(store.prune_idempotency(2).await.expect("prune again"), 0);
    // A pruned key is free (it was already: expired rows don't count).
    let again = append_with(&store, kit::idempotency_record, "old-0").await;
    assert_eq!(
        store.idempotency_record("old-0").await.unwrap(),
        Some(again)
    );
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_prunes_expired_rows_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).expect("open");
    for i in 0..3 {
        append_with(&store, kit::expired_idempotency_record, &format!("old-{i}")).await;
    }
    append_with(&store, kit::idempotency_record, "live").await;
    store.set_prune_interval(Duration::from_millis(20));
    // Waits for the pruner thread (it runs every 20 ms now); the deadline only bounds a hang.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_keys(dir.path()).len() > 1 {
        assert!(
            Instant::now() < deadline,
            "the pruner left {:?}",
            stored_keys(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        stored_keys(dir.path()),
        BTreeSet::from(["live".to_string()])
    );
    // Closing stops the pruner; the store closes cleanly with it, and the live record stays.
    store.close();
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert!(store.idempotency_record("live").await.unwrap().is_some());
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_from_before_expiry_keeps_its_records_for_the_default_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let recent = append_with(&store, kit::idempotency_record, "recent").await;
    store.close();
    drop(store);

    // The table as it was: no expires_at column, no index on it. One record from a minute
    // ago, one from eight days ago (past the default week).
    let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
    let minute_ago = chronicle_kernel::envelope::now() - chrono::Duration::minutes(1);
    let week_ago = chronicle_kernel::envelope::now() - chrono::Duration::days(8);
    conn.execute_batch(
        "DROP INDEX idempotency_by_expiry;
         CREATE TABLE old_idempotency (
             key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, aggregate_type TEXT NOT NULL,
             aggregate_id TEXT NOT NULL, response TEXT NOT NULL, recorded_at TEXT NOT NULL
         ) WITHOUT ROWID;
         INSERT INTO old_idempotency
             SELECT key, fingerprint, aggregate_type, aggregate_id, response, recorded_at
             FROM idempotency;
         DROP TABLE idempotency;
         ALTER TABLE old_idempotency RENAME TO idempotency;",
    )
    .expect("the old table");
    conn.execute(
        "UPDATE idempotency SET recorded_at = ?1 WHERE key = 'recent'",
        [chronicle_kernel::envelope::format_timestamp(&minute_ago)],
    )
    .expect("recent");
    conn.execute(
        "INSERT INTO idempotency SELECT 'ancient', fingerprint, aggregate_type, aggregate_id, \
         response, ?1 FROM idempotency WHERE key = 'recent'",
        [chronicle_kernel::envelope::format_timestamp(&week_ago)],
    )
    .expect("ancient");
    drop(conn);

    let store = EmbeddedStore::open(dir.path()).expect("open the old directory");
    let week = chronicle_kernel::DEFAULT_IDEMPOTENCY_RETENTION;
    assert_eq!(
        store.idempotency_record("recent").await.unwrap(),
        Some(IdempotencyRecord {
            recorded_at: minute_ago,
            expires_at: IdempotencyRecord::expiry(minute_ago, week),
            ..recent
        }),
        "a record from before expiry lives for the default retention after it was recorded"
    );
    assert_eq!(
        store.idempotency_record("ancient").await.unwrap(),
        None,
        "one older than the default retention has expired"
    );
    assert_eq!(
        stored_keys(dir.path()),
        BTreeSet::from(["ancient".to_string(), "recent".to_string()]),
        "expired rows stay until pruned, counting as absent"
    );
    assert_eq!(store.prune_idempotency(100).await.unwrap(), 1);
    assert_eq!(
        stored_keys(dir.path()),
        BTreeSet::from(["recent".to_string()])
    );
    store.close();
}
