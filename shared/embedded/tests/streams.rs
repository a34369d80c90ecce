//! Streams without a per-event index (`heads.rs`): long streams read through their marks,
//! heads rebuilt after they were lost, a second store on the same directory, and a data
//! directory from before the stream tables.

use chronicle_embedded::{EmbeddedStore, DB_FILE, LOCK_FILE};
use chronicle_kernel::{
    AppendError, EventEnvelope, EventStore, ReadRange, StoredHashes, StreamId, StreamListing,
};
use chronicle_testkit as kit;
use r2d2_sqlite::rusqlite::Connection;
use std::sync::Arc;

/// Appends `n` events to `stream` in commands of `per` events, interleaved with a second
/// stream's, so neighbouring positions belong to other streams.
async fn grow(
    store: &EmbeddedStore,
    stream: &StreamId,
    n: usize,
    per: usize,
) -> Vec<EventEnvelope> {
    let other = StreamId::new(
        stream.aggregate_type.clone(),
        format!("{}-other", stream.aggregate_id),
    );
    let mut all = Vec::new();
    while all.len() < n {
        let batch = kit::events(stream, all.len() as u64, per.min(n - all.len()));
        store
            .append(&kit::request(stream, all.len() as u64, batch.clone()))
            .await
            .expect("append");
        all.extend(batch);
        let v = store.stream_version(&other).await.expect("version");
        store
            .append(&kit::request(&other, v, kit::events(&other, v, 1)))
            .await
            .expect("append other");
    }
    all
}

/// No event has version 0.
const NONE: std::ops::RangeInclusive<u64> = 0..=0;

fn versions(events: &[EventEnvelope]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

async fn check_ranges(store: &EmbeddedStore, stream: &StreamId, all: &[EventEnvelope], ctx: &str) {
    let n = all.len() as u64;
    let cases = [
        (ReadRange::all(), 1..=n),
        (ReadRange::from(0), 1..=n),
        (ReadRange::from(63), 63..=n),
        (ReadRange::from(64).to(64), 64..=64),
        (ReadRange::from(65).to(127), 65..=127),
        (ReadRange::from(1).limit(100), 1..=100),
        (ReadRange::from(120).limit(20), 120..=139),
        (ReadRange::from(n - 3), n - 3..=n),
        (ReadRange::from(n).to(n + 50), n..=n),
        (ReadRange::from(n + 1), NONE),
        (ReadRange::from(10).to(9), NONE),
        (ReadRange::all().limit(0), NONE),
    ];
    for (range, want) in cases {
        let got = store.read_stream(stream, range).await.expect("read");
        let want: Vec<EventEnvelope> = all
            .iter()
            .filter(|e| want.contains(&e.version))
            .cloned()
            .collect();
        assert_eq!(
            got,
            want,
            "{ctx}: read_stream({range:?}) gave versions {:?}",
            versions(&got)
        );
    }
    assert_eq!(
        store.stream_version(stream).await.expect("version"),
        n,
        "{ctx}"
    );
    let at: Vec<(StreamId, u64)> = [1, 64, 100, n, n + 1]
        .iter()
        .map(|v| (stream.clone(), *v))
        .collect();
    let hashes = store.hashes_at(&at).await.expect("hashes");
    let want: Vec<Option<String>> = [1, 64, 100, n, n + 1]
        .iter()
        .map(|v| all.get(*v as usize - 1).map(|e| e.hash.clone()))
        .collect();
    assert_eq!(hashes, want, "{ctx}: hashes_at");
    assert_eq!(
        store.chain_scans(),
        0,
        "{ctx}: every read must follow the chain, not scan"
    );
}

/// Appending one event at `expected` must be refused as a conflict with the stream at `actual`.
async fn must_conflict(
    store: &EmbeddedStore,
    stream: &StreamId,
    expected: u64,
    actual: u64,
    why: &str,
) {
    let err = store
        .append(&kit::request(
            stream,
            expected,
            kit::events(stream, expected, 1),
        ))
        .await
        .expect_err(why);
    assert!(
        matches!(err, AppendError::Conflict { expected: e, actual: a, .. } if e == expected && a == actual),
        "{why}: {err:?}"
    );
}

fn sql(dir: &std::path::Path, sql: &str) {
    let conn = Connection::open(dir.join(DB_FILE)).expect("open");
    conn.execute_batch(sql).expect("sql");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_streams_read_by_any_range_before_and_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let stream = kit::new_stream();
    let all = grow(&store, &stream, 300, 7).await;
    check_ranges(&store, &stream, &all, "live").await;
    store.close();
    drop(store);

    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    check_ranges(&store, &stream, &all, "reopened").await;
    store.close();
    drop(store);

    // Heads lost (as after a crash before they were persisted): rebuilt from the events.
    sql(
        dir.path(),
        "DELETE FROM stream_heads; DELETE FROM store_meta;",
    );
    let store = EmbeddedStore::open(dir.path()).expect("reopen without heads");
    check_ranges(&store, &stream, &all, "heads rebuilt").await;
    must_conflict(
        &store,
        &stream,
        299,
        300,
        "a stale expected version must conflict",
    )
    .await;
    store
        .append(&kit::request(&stream, 300, kit::events(&stream, 300, 1)))
        .await
        .expect("append at the rebuilt head");
    assert_eq!(store.stream_version(&stream).await.unwrap(), 301);
    store.close();
}

/// What a refused open must leave as it was: the directory's entries and the lock file's
/// content (the holder's pid). The database files themselves move under the running writer.
fn dir_snapshot(dir: &std::path::Path) -> (Vec<String>, Vec<u8>) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("listing the directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    (
        names,
        std::fs::read(dir.join(LOCK_FILE)).expect("the lock file"),
    )
}

/// Opens a second writing store on `dir` behind the lock's back, as a network filesystem
/// that ignores locks would let it: the lock file deleted, so the second open makes a new one.
fn open_bypassing_the_lock(dir: &std::path::Path) -> Arc<EmbeddedStore> {
    std::fs::remove_file(dir.join(LOCK_FILE)).expect("deleting the lock file");
    EmbeddedStore::open(dir).expect("a second store once the lock file is gone")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_on_the_same_directory_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = EmbeddedStore::open(dir.path()).expect("open a");
    let stream = kit::new_stream();
    a.append(&kit::request(&stream, 0, kit::events(&stream, 0, 2)))
        .await
        .expect("a appends");
    let before = dir_snapshot(dir.path());
    let err = EmbeddedStore::open(dir.path())
        .map(|_| ())
        .expect_err("a second writer must be refused");
    let message = err.to_string();
    assert!(
        message.contains(&dir.path().display().to_string())
            && message.contains(&format!("pid {}", std::process::id())),
        "the refusal names the directory and the holder: {message}"
    );
    assert_eq!(
        dir_snapshot(dir.path()),
        before,
        "the refused open wrote nothing"
    );

    // Readers are welcome beside the writer, and see its commits.
    let reader = EmbeddedStore::open_read_only(dir.path()).expect("a reader beside the writer");
    assert_eq!(reader.stream_version(&stream).await.unwrap(), 2);
    a.append(&kit::request(&stream, 2, kit::events(&stream, 2, 1)))
        .await
        .expect("a appends again");
    assert_eq!(reader.stream_version(&stream).await.unwrap(), 3);
    let refused = reader
        .append(&kit::request(&stream, 3, kit::events(&stream, 3, 1)))
        .await
        .expect_err("a read-only store refuses writes");
    assert!(refused.to_string().contains("read-only"), "{refused}");

    // Closing the writer frees the directory for the next one.
    a.close();
    let b = EmbeddedStore::open(dir.path()).expect("the next writer after close");
    assert_eq!(b.stream_version(&stream).await.unwrap(), 3);
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_open_of_a_missing_store_creates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nothing-here");
    let err = EmbeddedStore::open_read_only(&missing)
        .map(|_| ())
        .expect_err("no store to read");
    assert!(err.to_string().contains("no Chronicle store"), "{err}");
    assert!(!missing.exists(), "a reader must not create the directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_the_same_directory_sees_and_respects_the_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = EmbeddedStore::open(dir.path()).expect("open a");
    let b = open_bypassing_the_lock(dir.path());
    let stream = kit::new_stream();
    let first = kit::events(&stream, 0, 3);
    a.append(&kit::request(&stream, 0, first.clone()))
        .await
        .expect("a appends");

    assert_eq!(
        b.stream_version(&stream).await.unwrap(),
        3,
        "b sees a's events"
    );
    assert_eq!(
        b.read_stream(&stream, ReadRange::all()).await.unwrap(),
        first
    );
    must_conflict(&b, &stream, 0, 3, "b must not write over a's events").await;
    let fourth = kit::events(&stream, 3, 1);
    b.append(&kit::request(&stream, 3, fourth.clone()))
        .await
        .expect("b appends at the head");

    must_conflict(&a, &stream, 3, 4, "a must see b's append").await;
    let mut want = first;
    want.extend(fourth);
    assert_eq!(
        a.read_stream(&stream, ReadRange::all()).await.unwrap(),
        want
    );
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_from_before_the_stream_tables_is_backfilled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let stream = kit::new_stream();
    let all = grow(&store, &stream, 150, 5).await;
    store.close();
    drop(store);
    // What a data directory written before the stream tables holds: the events only.
    sql(
        dir.path(),
        "DROP TABLE stream_links; DROP TABLE stream_marks; DROP TABLE stream_heads; \
         DROP TABLE store_meta;",
    );

    let store = EmbeddedStore::open(dir.path()).expect("open the old directory");
    check_ranges(&store, &stream, &all, "backfilled").await;
    let next = kit::events(&stream, 150, 2);
    store
        .append(&kit::request(&stream, 150, next))
        .await
        .expect("append after the backfill");
    assert_eq!(
        versions(
            &store
                .read_stream(&stream, ReadRange::from(149))
                .await
                .unwrap()
        ),
        vec![149, 150, 151, 152]
    );
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_list_in_order_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<EmbeddedStore> = EmbeddedStore::open(dir.path()).expect("open");
    let mut want = Vec::new();
    for i in 0..25 {
        let s = StreamId::new("ListedAccount", format!("l{i:03}"));
        store
            .append(&kit::request(&s, 0, kit::events(&s, 0, 1)))
            .await
            .unwrap();
        want.push(s);
    }
    store.close();
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let mut got = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_streams(cursor.take(), 10).await.unwrap();
        got.extend(
            page.streams
                .into_iter()
                .filter(|s| s.aggregate_type == "ListedAccount"),
        );
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(got, want);
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_racing_on_one_stream_never_store_a_version_twice() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempfile::tempdir().expect("temp dir");
    let a = EmbeddedStore::open(dir.path()).expect("open a");
    let b = open_bypassing_the_lock(dir.path());
    let stream = kit::new_stream();
    let acknowledged = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        let (stream, acknowledged, conflicts) =
            (stream.clone(), acknowledged.clone(), conflicts.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                loop {
                    let v = store.stream_version(&stream).await.expect("version");
                    match store
                        .append(&kit::request(&stream, v, kit::events(&stream, v, 1)))
                        .await
                    {
                        Ok(()) => {
                            acknowledged.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Err(AppendError::Conflict { .. }) => {
                            conflicts.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("append failed: {e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a writer task");
    }
    let acked = acknowledged.load(Ordering::SeqCst);
    assert_eq!(acked, 320);
    eprintln!(
        "{acked} appends acknowledged, {} conflicts between the two stores",
        conflicts.load(Ordering::SeqCst)
    );
    for (name, store) in [("a", &a), ("b", &b)] {
        assert_eq!(
            store.stream_version(&stream).await.unwrap(),
            acked,
            "{name}"
        );
        let read = store.read_stream(&stream, ReadRange::all()).await.unwrap();
        assert_eq!(versions(&read), (1..=acked).collect::<Vec<_>>(), "{name}");
    }
    a.close();
    b.close();
    let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
    let (rows, distinct): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT version) FROM events WHERE aggregate_id = ?1",
            [&stream.aggregate_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("counts");
    assert_eq!(
        (rows as u64, distinct as u64),
        (acked, acked),
        "every acknowledged append stored once"
    );
}
