//! The embedded store's bulk chain verification (straight from the stored text, two key
//! ranges at once) must find exactly what the kernel's stream-by-stream path finds.

use chronicle_embedded::{EmbeddedStore, DB_FILE};
use chronicle_kernel::chain::{self, ChainBreak};
use chronicle_kernel::{AppendRequest, BulkVerify, EventStore, Snapshot, SnapshotStore, StreamId};
use chronicle_testkit as kit;
use r2d2_sqlite::rusqlite::Connection;

async fn append_chain(store: &EmbeddedStore, stream: &StreamId, n: usize) -> Vec<String> {
    let mut events = kit::events(stream, 0, n);
    chain::seal(chain::GENESIS, &mut events);
    store
        .append(&AppendRequest {
            stream: stream.clone(),
            expected_version: 0,
            events: events.clone(),
            idempotency: None,
            stored: Vec::new(),
            expected_known: false,
        })
        .await
        .expect("append");
    events.into_iter().map(|e| e.hash).collect()
}

fn tamper(dir: &std::path::Path, sql: &str) {
    let conn = Connection::open(dir.join(DB_FILE)).expect("open");
    conn.execute_batch(&format!(
        "DROP TRIGGER IF EXISTS events_no_update; DROP TRIGGER IF EXISTS events_no_delete; {sql}"
    ))
    .expect("tamper");
}

fn named(breaks: &[ChainBreak]) -> Vec<(String, u64)> {
    breaks
        .iter()
        .map(|b| (b.aggregate_id.clone(), b.version))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_and_stream_by_stream_verification_agree() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    // Enough streams that both halves of the bulk path hold some, broken ones among them.
    for i in 0..40 {
        let s = StreamId::new("ContractAccount", format!("s{i:02}"));
        let hashes = append_chain(&store, &s, 6).await;
        if i % 10 == 3 {
            store
                .save(Snapshot {
                    chain_head: Some(hashes[4].clone()),
                    ..kit::snapshot(&s, 5, 1, "pinned")
                })
                .await
                .expect("snapshot");
        }
    }
    let report = |store: std::sync::Arc<EmbeddedStore>| async move {
        let bulk = store.verify_all_chains(&|_| {}).await.expect("bulk verify");
        let generic = chain::verify_all(&*store, Some(&*store), 4, |_| {})
            .await
            .expect("stream-by-stream verify");
        assert_eq!(bulk, generic, "both paths must report the same");
        bulk
    };
    let clean = report(store.clone()).await;
    assert_eq!((clean.streams, clean.events), (40, 240));
    assert_eq!(
        store.chain_scans(),
        0,
        "intact chains are read by walking them"
    );
    assert!(clean.breaks.is_empty(), "{:?}", clean.breaks);

    store.close();
    drop(store);
    tamper(
        dir.path(),
        "UPDATE events SET data = replace(data, 'event', 'EVENT') \
             WHERE aggregate_id = 's05' AND version = 4;
         UPDATE events SET metadata = '{}' WHERE aggregate_id = 's11' AND version = 1;
         DELETE FROM events WHERE aggregate_id = 's17' AND version = 1;
         DELETE FROM events WHERE aggregate_id = 's23' AND version >= 5;
         UPDATE events SET version = 99 WHERE aggregate_id = 's31' AND version = 5;
         UPDATE events SET hash = '' WHERE aggregate_id = 's38' AND version = 6;",
    );
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let broken = report(store.clone()).await;
    assert!(
        store.chain_scans() > 0,
        "tampered streams' chains are broken: their reads must fall back to a scan"
    );
    assert_eq!(broken.streams, 40);
    assert_eq!(
        named(&broken.breaks),
        vec![
            ("s05".to_owned(), 4),
            ("s11".to_owned(), 1),
            ("s17".to_owned(), 1),
            // Cut below its snapshot at v5: the intact v1..v4 doesn't reach the recorded head.
            ("s23".to_owned(), 5),
            ("s31".to_owned(), 5),
            ("s38".to_owned(), 6),
        ],
        "{:#?}",
        broken.breaks
    );
    assert!(broken.breaks[3].problem.contains("snapshot at v5"));
    store.close();
}
