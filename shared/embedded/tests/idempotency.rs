//! Idempotency records in the embedded store: data directories from before records expired
//! keep working.

use chronicle_embedded::{EmbeddedStore, DB_FILE};
use chronicle_kernel::{EventStore, IdempotencyRecord, StreamId};
use chronicle_testkit as kit;
use r2d2_sqlite::rusqlite::Connection;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

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
        "expired rows stay, counting as absent"
    );
    store.close();
}
