//! The [`SnapshotStore`] contract: save, latest, `max_version`, replacing a version.

use crate::fixtures::{new_stream, ok};
use chronicle_kernel::envelope::now;
use chronicle_kernel::{Snapshot, SnapshotStore, StreamId};
use serde_json::json;
use std::sync::Arc;

/// A snapshot of `stream` at `version`, stamped now, with a state naming `tag`.
pub fn snapshot(stream: &StreamId, version: u64, state_version: u32, tag: &str) -> Snapshot {
    Snapshot {
        stream: stream.clone(),
        version,
        state_version,
        state: json!({
            "tag": tag,
            "version": version,
            "balance": version as i64 * 100 - 7,
            "ratio": 0.25,
            "owner": "Zoë ✓",
            "history": [version, { "nested": null }],
        }),
        taken_at: now(),
        chain_head: Some(format!("head-{version}-{tag}")),
    }
}

async fn latest_of<S: SnapshotStore + ?Sized>(
    store: &S,
    stream: &StreamId,
    max_version: Option<u64>,
) -> Option<Snapshot> {
    ok(
        store.latest(stream, max_version).await,
        &format!("SnapshotStore: latest({stream}, {max_version:?})"),
    )
}

/// The [`SnapshotStore`] contract: save, latest, `max_version`, replacing a version.
pub async fn snapshot_store_contract<S: SnapshotStore>(store: Arc<S>) {
    const CTX: &str = "SnapshotStore";
    let store = &*store;
    let stream = new_stream();
    assert_eq!(
        latest_of(store, &stream, None).await,
        None,
        "{CTX}: latest of a stream without snapshots must be None"
    );
    assert_eq!(latest_of(store, &stream, Some(100)).await, None);

    let s5 = snapshot(&stream, 5, 1, "five");
    ok(store.save(s5.clone()).await, CTX);
    assert_eq!(
        latest_of(store, &stream, None).await,
        Some(s5.clone()),
        "{CTX}: latest must return the saved snapshot unchanged"
    );
    assert_eq!(latest_of(store, &stream, Some(5)).await, Some(s5.clone()));
    assert_eq!(latest_of(store, &stream, Some(100)).await, Some(s5.clone()));
    assert_eq!(
        latest_of(store, &stream, Some(4)).await,
        None,
        "{CTX}: latest(max_version 4) with only a snapshot at 5 must be None"
    );

    // Saved out of order: latest is the highest version, not the last saved.
    let s20 = snapshot(&stream, 20, 2, "twenty");
    let s10 = snapshot(&stream, 10, 1, "ten");
    let s15 = snapshot(&stream, 15, 2, "fifteen");
    for s in [&s20, &s10, &s15] {
        ok(store.save(s.clone()).await, CTX);
    }
    assert_eq!(
        latest_of(store, &stream, None).await,
        Some(s20.clone()),
        "{CTX}: latest must pick the highest version (20), not the last saved (15)"
    );
    for (max, want) in [
        (0, None),
        (4, None),
        (5, Some(&s5)),
        (9, Some(&s5)),
        (10, Some(&s10)),
        (14, Some(&s10)),
        (15, Some(&s15)),
        (19, Some(&s15)),
        (20, Some(&s20)),
        (1000, Some(&s20)),
    ] {
        assert_eq!(
            latest_of(store, &stream, Some(max)).await,
            want.cloned(),
            "{CTX}: latest(max_version {max}) must be the newest snapshot at or before {max}"
        );
    }

    // Saving a version again replaces it.
    let s10b = snapshot(&stream, 10, 3, "ten again");
    ok(store.save(s10b.clone()).await, CTX);
    assert_eq!(
        latest_of(store, &stream, Some(14)).await,
        Some(s10b.clone()),
        "{CTX}: saving version 10 again must replace the stored snapshot"
    );
    assert_eq!(latest_of(store, &stream, Some(10)).await, Some(s10b));
    assert_eq!(latest_of(store, &stream, None).await, Some(s20.clone()));
    let s20b = snapshot(&stream, 20, 4, "twenty again");
    ok(store.save(s20b.clone()).await, CTX);
    assert_eq!(latest_of(store, &stream, None).await, Some(s20b));

    // Streams are keyed by type and id; other streams are untouched.
    let same_id = StreamId::new("ContractLedger", &stream.aggregate_id);
    assert_eq!(
        latest_of(store, &same_id, None).await,
        None,
        "{CTX}: {same_id} must not see the snapshots of {stream}"
    );
    let other = new_stream();
    assert_eq!(latest_of(store, &other, None).await, None);
    let o1 = snapshot(&other, 1, 1, "other");
    ok(store.save(o1.clone()).await, CTX);
    assert_eq!(latest_of(store, &other, None).await, Some(o1));
    assert_eq!(latest_of(store, &stream, Some(9)).await, Some(s5));
}
