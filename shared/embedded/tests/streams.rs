//! Streams without a per-event index (`heads.rs`): long streams read through their marks,
//! heads rebuilt after they were lost, a second store on the same directory, and a data
//! directory from before the stream tables.

use chronicle_embedded::{EmbeddedStore, DB_FILE};
use chronicle_kernel::{AppendError, EventEnvelope, EventStore, ReadRange, StreamId};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_the_same_directory_sees_and_respects_the_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = EmbeddedStore::open(dir.path()).expect("open a");
    let b = EmbeddedStore::open(dir.path()).expect("open b");
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
