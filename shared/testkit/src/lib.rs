//! Port contract suites: every adapter of a port must pass the same tests.
//!
//! Each suite is one public async function taking the adapter behind an [`Arc`]; it panics with
//! a message naming the violated rule. The suites only ever touch streams, idempotency keys and
//! projections they create under fresh uuid-suffixed names, so they may run against a shared,
//! non-empty store (a real DynamoDB table), concurrently with each other and with other writers.
//! Where another writer could make an exact check impossible (the feed's head, the wait timeout),
//! the check is written to hold on a busy store and to be exact on a quiet one.
//!
//! - [`event_store_contract`] checks [`EventStore`];
//! - [`event_feed_contract`] checks [`EventFeed`] (appending through [`EventStore`]);
//! - [`snapshot_store_contract`] checks [`SnapshotStore`];
//! - [`read_model_store_contract`] checks [`ReadModelStore`];
//! - [`command_idempotency_contract`] checks the kernel's command handler on an event store:
//!   idempotent repeats inside the retention, a free key after it.
//!
//! The checks each suite runs are public too, so an adapter's tests can run one alone.

mod commands;
mod events;
mod feed;
mod fixtures;

pub use commands::{command_idempotency_contract, Tally};
pub use events::{
    es_append_and_read_back, es_chains_verify_after_a_round_trip,
    es_concurrent_appends_distinct_streams, es_concurrent_appends_same_stream,
    es_conflict_stores_nothing, es_idempotency, es_idempotency_expiry,
    es_large_append_is_atomic_and_gapless, es_list_streams, es_malformed_append_stores_nothing,
    es_read_ranges, es_read_recorded, es_streams_are_keyed_by_type_and_id, event_store_contract,
    read_recorded_all, unique_window_start,
};
pub use feed::{
    event_feed_contract, feed_head_is_last_position, feed_order_paging_and_coverage,
    feed_replay_raw, feed_wait_times_out, feed_wait_wakes_on_append,
};
pub use fixtures::{
    event, events, expired_idempotency_record, idempotency_record, new_stream, request, rich_event,
    unique,
};

use fixtures::{assert_events_eq, ok};

use chronicle_kernel::chain;
use chronicle_kernel::envelope::now;
use chronicle_kernel::{
    AppendError, AppendRequest, Doc, DocWrite, EventEnvelope, EventStore, ModelRef, Publisher,
    ReadModelStore, ReadRange, Snapshot, SnapshotStore, StreamId,
};
use serde_json::{json, Value};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// SnapshotStore
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// ReadModelStore
// ---------------------------------------------------------------------------------------------

/// A document write of `key` at `version` with `body`, findable by `index`.
pub fn doc_write(key: &str, version: u64, body: Value, index: &[(&str, &str)]) -> DocWrite {
    DocWrite {
        key: key.to_owned(),
        version,
        body,
        index: index
            .iter()
            .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn doc(key: &str, version: u64, body: Value) -> Doc {
    Doc {
        key: key.to_owned(),
        version,
        body,
    }
}

async fn get_doc<S: ReadModelStore + ?Sized>(
    store: &S,
    model: &ModelRef,
    key: &str,
) -> Option<Doc> {
    ok(
        store.get(model, key).await,
        &format!("ReadModelStore: get({model:?}, {key})"),
    )
}

async fn find_docs<S: ReadModelStore + ?Sized>(
    store: &S,
    model: &ModelRef,
    field: &str,
    value: &str,
    limit: usize,
) -> Vec<Doc> {
    ok(
        store.find(model, field, value, limit).await,
        &format!("ReadModelStore: find({model:?}, {field}={value}, {limit})"),
    )
}

async fn apply_docs<S: ReadModelStore + ?Sized>(
    store: &S,
    model: &ModelRef,
    writes: Vec<DocWrite>,
    checkpoint: Option<u64>,
) -> usize {
    ok(
        store.apply(model, writes, checkpoint).await,
        &format!("ReadModelStore: apply({model:?}, checkpoint {checkpoint:?})"),
    )
}

async fn checkpoint_of<S: ReadModelStore + ?Sized>(store: &S, model: &ModelRef) -> u64 {
    ok(
        store.checkpoint(model).await,
        &format!("ReadModelStore: checkpoint({model:?})"),
    )
}

fn keys(docs: &[Doc]) -> Vec<&str> {
    docs.iter().map(|d| d.key.as_str()).collect()
}

/// The [`ReadModelStore`] contract: documents, versions, index, checkpoints, generations.
pub async fn read_model_store_contract<S: ReadModelStore>(store: Arc<S>) {
    rm_missing(&*store).await;
    rm_apply_and_get(&*store).await;
    rm_versions_only_move_forward(&*store).await;
    rm_find_by_index(&*store).await;
    rm_checkpoints(&*store).await;
    rm_generations(&*store).await;
}

/// A projection nothing was written to: no documents, checkpoint 0, generation 1.
pub async fn rm_missing<S: ReadModelStore + ?Sized>(store: &S) {
    const CTX: &str = "ReadModelStore missing";
    let p = unique("contract-proj");
    assert_eq!(
        ok(store.active_generation(&p).await, CTX),
        1,
        "{CTX}: active_generation must be 1 before any activation"
    );
    for model in [
        ModelRef::active(&p),
        ModelRef::generation(&p, 1),
        ModelRef::generation(&p, 2),
    ] {
        assert_eq!(
            get_doc(store, &model, "nope").await,
            None,
            "{CTX}: get of a missing key must be None"
        );
        assert!(find_docs(store, &model, "status", "open", 10)
            .await
            .is_empty());
        assert_eq!(
            checkpoint_of(store, &model).await,
            0,
            "{CTX}: a model's checkpoint must start at 0"
        );
    }
}

/// `apply` writes documents, returns how many it applied; `get` reads them back equal.
pub async fn rm_apply_and_get<S: ReadModelStore + ?Sized>(store: &S) {
    const CTX: &str = "ReadModelStore apply/get";
    let p = unique("contract-proj");
    let model = ModelRef::active(&p);
    let bodies = [
        json!({ "name": "Zoë ✓", "balance": 100, "ratio": 0.1, "tags": ["a"], "none": null }),
        json!({ "name": "b", "nested": { "deep": [1, 2, { "x": true }] } }),
        json!({}),
    ];
    let writes: Vec<DocWrite> = ["acct-1", "acct-2", "acct:3.x_y-z"]
        .iter()
        .zip(&bodies)
        .enumerate()
        .map(|(i, (k, b))| doc_write(k, i as u64 + 1, b.clone(), &[("status", "open")]))
        .collect();
    assert_eq!(
        apply_docs(store, &model, writes.clone(), None).await,
        3,
        "{CTX}: applying 3 new documents must report 3 applied"
    );
    for w in &writes {
        let want = Some(doc(&w.key, w.version, w.body.clone()));
        assert_eq!(
            get_doc(store, &model, &w.key).await,
            want,
            "{CTX}: get({}) through the active model must return the applied document",
            w.key
        );
        assert_eq!(
            get_doc(store, &ModelRef::generation(&p, 1), &w.key).await,
            want,
            "{CTX}: the active model is generation 1 before any activation"
        );
        assert_eq!(
            get_doc(store, &ModelRef::generation(&p, 2), &w.key).await,
            None,
            "{CTX}: writes to generation 1 must not appear in generation 2"
        );
    }
    let other = unique("contract-proj");
    assert_eq!(
        get_doc(store, &ModelRef::active(&other), "acct-1").await,
        None,
        "{CTX}: another projection must not see these documents"
    );
    assert_eq!(
        apply_docs(store, &model, Vec::new(), None).await,
        0,
        "{CTX}: applying nothing applies nothing"
    );
}

/// A write whose version is not above the stored one is ignored, unindexed and not counted.
pub async fn rm_versions_only_move_forward<S: ReadModelStore + ?Sized>(store: &S) {
    const CTX: &str = "ReadModelStore versions";
    let p = unique("contract-proj");
    let model = ModelRef::active(&p);
    let v3 = json!({ "state": "v3" });
    assert_eq!(
        apply_docs(
            store,
            &model,
            vec![doc_write("k1", 3, v3.clone(), &[("status", "open")])],
            None
        )
        .await,
        1
    );

    // The same version again (a duplicate), then an older one (a replay).
    for (version, status) in [(3, "dup"), (2, "old"), (1, "older")] {
        let n = apply_docs(
            store,
            &model,
            vec![doc_write(
                "k1",
                version,
                json!({ "state": status }),
                &[("status", status)],
            )],
            None,
        )
        .await;
        assert_eq!(
            n, 0,
            "{CTX}: a write at version {version} over stored version 3 must be ignored and not counted"
        );
        assert_eq!(
            get_doc(store, &model, "k1").await,
            Some(doc("k1", 3, v3.clone())),
            "{CTX}: a write at version {version} over stored version 3 must change nothing"
        );
        assert!(
            find_docs(store, &model, "status", status, 10)
                .await
                .is_empty(),
            "{CTX}: an ignored write's index entries must not be stored"
        );
        assert_eq!(
            keys(&find_docs(store, &model, "status", "open", 10).await),
            vec!["k1"],
            "{CTX}: an ignored write must not remove the document's index entries"
        );
    }

    // A batch mixing ignored and applied writes counts only the applied ones.
    let n = apply_docs(
        store,
        &model,
        vec![
            doc_write("k1", 2, json!({ "state": "stale" }), &[]),
            doc_write("k2", 1, json!({ "state": "new" }), &[]),
            doc_write("k3", 9, json!({ "state": "new" }), &[]),
        ],
        None,
    )
    .await;
    assert_eq!(
        n, 2,
        "{CTX}: one stale and two new writes must report 2 applied"
    );
    let n = apply_docs(
        store,
        &model,
        vec![
            doc_write("k1", 4, json!({ "state": "v4" }), &[]),
            doc_write("k2", 1, json!({ "state": "dup" }), &[]),
            doc_write("k3", 10, json!({ "state": "v10" }), &[]),
        ],
        None,
    )
    .await;
    assert_eq!(
        n, 2,
        "{CTX}: two newer writes and a duplicate must report 2 applied"
    );
    assert_eq!(
        get_doc(store, &model, "k1").await,
        Some(doc("k1", 4, json!({ "state": "v4" })))
    );
    assert_eq!(
        get_doc(store, &model, "k2").await,
        Some(doc("k2", 1, json!({ "state": "new" })))
    );
    assert_eq!(
        get_doc(store, &model, "k3").await,
        Some(doc("k3", 10, json!({ "state": "v10" })))
    );
    // Versions may jump: only "greater than stored" matters.
    assert_eq!(
        apply_docs(
            store,
            &model,
            vec![doc_write("k2", 1000, json!({ "state": "far" }), &[])],
            None
        )
        .await,
        1
    );
    assert_eq!(
        get_doc(store, &model, "k2").await,
        Some(doc("k2", 1000, json!({ "state": "far" })))
    );
}

/// `find` by an index field: matching documents in key order, up to `limit`, following index
/// changes.
pub async fn rm_find_by_index<S: ReadModelStore + ?Sized>(store: &S) {
    const CTX: &str = "ReadModelStore find";
    let p = unique("contract-proj");
    let model = ModelRef::active(&p);
    // Written out of key order, with two index fields.
    let spec = [
        ("k-c", "red", "small"),
        ("k-a", "red", "large"),
        ("k-e", "blue", "small"),
        ("k-b", "blue", "large"),
        ("k-d", "red", "small"),
    ];
    let writes: Vec<DocWrite> = spec
        .iter()
        .map(|(k, color, size)| {
            doc_write(
                k,
                1,
                json!({ "key": k, "color": color, "size": size }),
                &[("color", color), ("size", size)],
            )
        })
        .collect();
    assert_eq!(apply_docs(store, &model, writes, None).await, 5);

    let red = find_docs(store, &model, "color", "red", 10).await;
    assert_eq!(
        keys(&red),
        vec!["k-a", "k-c", "k-d"],
        "{CTX}: find(color=red) must return the red documents ordered by key"
    );
    assert_eq!(
        red[0],
        doc(
            "k-a",
            1,
            json!({ "key": "k-a", "color": "red", "size": "large" })
        ),
        "{CTX}: find must return whole documents"
    );
    assert_eq!(
        keys(&find_docs(store, &model, "color", "red", 2).await),
        vec!["k-a", "k-c"],
        "{CTX}: find(color=red, limit 2) must return the first 2 by key"
    );
    assert_eq!(
        keys(&find_docs(store, &model, "color", "red", 1).await),
        vec!["k-a"]
    );
    assert_eq!(
        keys(&find_docs(store, &model, "color", "blue", 10).await),
        vec!["k-b", "k-e"]
    );
    assert_eq!(
        keys(&find_docs(store, &model, "size", "small", 10).await),
        vec!["k-c", "k-d", "k-e"]
    );
    assert!(
        find_docs(store, &model, "color", "green", 10)
            .await
            .is_empty(),
        "{CTX}: find with no match must be empty"
    );
    assert!(
        find_docs(store, &model, "size", "red", 10).await.is_empty(),
        "{CTX}: find must match the field, not only the value"
    );
    assert!(
        find_docs(store, &model, "colour", "red", 10)
            .await
            .is_empty(),
        "{CTX}: find by an unknown field must be empty"
    );

    // k-c turns blue: no longer found as red; k-d loses its index entirely.
    let n = apply_docs(
        store,
        &model,
        vec![
            doc_write(
                "k-c",
                2,
                json!({ "key": "k-c", "color": "blue", "size": "small" }),
                &[("color", "blue"), ("size", "small")],
            ),
            doc_write("k-d", 2, json!({ "key": "k-d", "gone": true }), &[]),
        ],
        None,
    )
    .await;
    assert_eq!(n, 2);
    assert_eq!(
        keys(&find_docs(store, &model, "color", "red", 10).await),
        vec!["k-a"],
        "{CTX}: documents whose indexed field changed must not be found under the old value"
    );
    let blue = find_docs(store, &model, "color", "blue", 10).await;
    assert_eq!(
        keys(&blue),
        vec!["k-b", "k-c", "k-e"],
        "{CTX}: a document must be found under its new indexed value"
    );
    assert_eq!(
        blue[1],
        doc(
            "k-c",
            2,
            json!({ "key": "k-c", "color": "blue", "size": "small" })
        ),
        "{CTX}: find must return the current document"
    );
    assert_eq!(
        keys(&find_docs(store, &model, "size", "small", 10).await),
        vec!["k-c", "k-e"],
        "{CTX}: a document written without index entries must not be found"
    );
    assert_eq!(
        get_doc(store, &model, "k-d").await,
        Some(doc("k-d", 2, json!({ "key": "k-d", "gone": true }))),
        "{CTX}: an unindexed document is still readable by key"
    );
    // Another projection with the same index values sees nothing of these.
    assert!(find_docs(
        store,
        &ModelRef::active(&unique("contract-proj")),
        "color",
        "blue",
        10
    )
    .await
    .is_empty());
}

/// The checkpoint starts at 0, moves with `apply(…, Some(p))` and never moves backwards.
pub async fn rm_checkpoints<S: ReadModelStore + ?Sized>(store: &S) {
    const CTX: &str = "ReadModelStore checkpoints";
    let p = unique("contract-proj");
    let model = ModelRef::active(&p);
    assert_eq!(checkpoint_of(store, &model).await, 0);

    assert_eq!(apply_docs(store, &model, Vec::new(), Some(10)).await, 0);
    assert_eq!(
        checkpoint_of(store, &model).await,
        10,
        "{CTX}: apply(no writes, Some(10)) must move the checkpoint to 10"
    );
    let n = apply_docs(
        store,
        &model,
        vec![doc_write("k1", 1, json!({ "n": 1 }), &[])],
        Some(15),
    )
    .await;
    assert_eq!(n, 1);
    assert_eq!(checkpoint_of(store, &model).await, 15);
    assert_eq!(
        checkpoint_of(store, &ModelRef::generation(&p, 1)).await,
        15,
        "{CTX}: the active model's checkpoint is generation 1's"
    );

    // Backwards and equal positions leave it; the writes still apply.
    let n = apply_docs(
        store,
        &model,
        vec![doc_write("k2", 1, json!({ "n": 2 }), &[])],
        Some(5),
    )
    .await;
    assert_eq!(
        n, 1,
        "{CTX}: writes apply even when the checkpoint given is behind"
    );
    assert_eq!(
        checkpoint_of(store, &model).await,
        15,
        "{CTX}: apply(…, Some(5)) after 15 must not move the checkpoint backwards"
    );
    assert_eq!(
        get_doc(store, &model, "k2").await,
        Some(doc("k2", 1, json!({ "n": 2 })))
    );
    apply_docs(store, &model, Vec::new(), Some(15)).await;
    assert_eq!(checkpoint_of(store, &model).await, 15);
    apply_docs(store, &model, Vec::new(), Some(0)).await;
    assert_eq!(checkpoint_of(store, &model).await, 15);
    apply_docs(
        store,
        &model,
        vec![doc_write("k3", 1, json!({}), &[])],
        None,
    )
    .await;
    assert_eq!(
        checkpoint_of(store, &model).await,
        15,
        "{CTX}: apply(…, None) must leave the checkpoint"
    );
    apply_docs(store, &model, Vec::new(), Some(1_000_000)).await;
    assert_eq!(checkpoint_of(store, &model).await, 1_000_000);

    // Checkpoints are per projection and generation.
    assert_eq!(
        checkpoint_of(store, &ModelRef::generation(&p, 2)).await,
        0,
        "{CTX}: generation 2 has its own checkpoint"
    );
    assert_eq!(
        checkpoint_of(store, &ModelRef::active(&unique("contract-proj"))).await,
        0
    );
}

/// Generations: writes to generation 2 are invisible through the active model until
/// `activate(2)`; the active generation cannot be dropped; dropping another removes its
/// documents and checkpoint.
pub async fn rm_generations<S: ReadModelStore + ?Sized>(store: &S) {
    const CTX: &str = "ReadModelStore generations";
    let p = unique("contract-proj");
    let active = ModelRef::active(&p);
    let g1 = ModelRef::generation(&p, 1);
    let g2 = ModelRef::generation(&p, 2);
    assert_eq!(ok(store.active_generation(&p).await, CTX), 1);
    assert!(
        store.drop_generation(&p, 1).await.is_err(),
        "{CTX}: dropping generation 1 while it is (implicitly) active must be refused"
    );

    let n = apply_docs(
        store,
        &active,
        vec![
            doc_write("k1", 5, json!({ "gen": 1 }), &[("status", "open")]),
            doc_write("only-g1", 1, json!({ "gen": 1 }), &[("status", "open")]),
        ],
        Some(70),
    )
    .await;
    assert_eq!(n, 2);

    // The rebuild writes generation 2 from scratch: versions restart, independent of gen 1.
    let n = apply_docs(
        store,
        &g2,
        vec![
            doc_write("k1", 1, json!({ "gen": 2 }), &[("status", "open")]),
            doc_write("only-g2", 1, json!({ "gen": 2 }), &[("status", "open")]),
        ],
        Some(30),
    )
    .await;
    assert_eq!(
        n, 2,
        "{CTX}: generation 2's documents are independent of generation 1's versions"
    );
    assert_eq!(
        ok(store.active_generation(&p).await, CTX),
        1,
        "{CTX}: writing generation 2 must not activate it"
    );
    assert_eq!(
        get_doc(store, &active, "k1").await,
        Some(doc("k1", 5, json!({ "gen": 1 }))),
        "{CTX}: before activate, the active model must still read generation 1"
    );
    assert_eq!(
        get_doc(store, &active, "only-g2").await,
        None,
        "{CTX}: generation 2's documents must be invisible through the active model before activate"
    );
    assert_eq!(
        keys(&find_docs(store, &active, "status", "open", 10).await),
        vec!["k1", "only-g1"]
    );
    assert_eq!(checkpoint_of(store, &active).await, 70);
    assert_eq!(
        get_doc(store, &g2, "k1").await,
        Some(doc("k1", 1, json!({ "gen": 2 })))
    );
    assert_eq!(checkpoint_of(store, &g2).await, 30);

    ok(store.activate(&p, 2).await, CTX);
    assert_eq!(
        ok(store.active_generation(&p).await, CTX),
        2,
        "{CTX}: after activate(2) the active generation must be 2"
    );
    assert_eq!(
        get_doc(store, &active, "k1").await,
        Some(doc("k1", 1, json!({ "gen": 2 }))),
        "{CTX}: after activate(2) the active model must read generation 2"
    );
    assert_eq!(
        get_doc(store, &active, "only-g2").await,
        Some(doc("only-g2", 1, json!({ "gen": 2 })))
    );
    assert_eq!(get_doc(store, &active, "only-g1").await, None);
    assert_eq!(
        keys(&find_docs(store, &active, "status", "open", 10).await),
        vec!["k1", "only-g2"],
        "{CTX}: after activate(2), find through the active model must search generation 2"
    );
    assert_eq!(
        checkpoint_of(store, &active).await,
        30,
        "{CTX}: after activate(2), the active model's checkpoint is generation 2's"
    );
    // Writes through the active model now go to generation 2.
    assert_eq!(
        apply_docs(
            store,
            &active,
            vec![doc_write("new", 1, json!({ "gen": 2 }), &[])],
            Some(80)
        )
        .await,
        1
    );
    assert_eq!(
        get_doc(store, &g2, "new").await,
        Some(doc("new", 1, json!({ "gen": 2 }))),
        "{CTX}: after activate(2), writes through the active model must go to generation 2"
    );
    assert_eq!(get_doc(store, &g1, "new").await, None);
    assert_eq!(checkpoint_of(store, &g2).await, 80);
    assert_eq!(checkpoint_of(store, &g1).await, 70);
    // Generation 1 is still there until dropped.
    assert_eq!(
        get_doc(store, &g1, "only-g1").await,
        Some(doc("only-g1", 1, json!({ "gen": 1 })))
    );

    assert!(
        store.drop_generation(&p, 2).await.is_err(),
        "{CTX}: dropping the active generation 2 must be refused"
    );
    assert_eq!(
        get_doc(store, &active, "k1").await,
        Some(doc("k1", 1, json!({ "gen": 2 }))),
        "{CTX}: a refused drop must leave the active generation's documents"
    );
    assert_eq!(checkpoint_of(store, &g2).await, 80);

    ok(store.drop_generation(&p, 1).await, CTX);
    assert_eq!(
        get_doc(store, &g1, "k1").await,
        None,
        "{CTX}: drop_generation(1) must remove generation 1's documents"
    );
    assert_eq!(get_doc(store, &g1, "only-g1").await, None);
    assert!(
        find_docs(store, &g1, "status", "open", 10).await.is_empty(),
        "{CTX}: drop_generation(1) must remove generation 1's index entries"
    );
    assert_eq!(
        checkpoint_of(store, &g1).await,
        0,
        "{CTX}: drop_generation(1) must remove generation 1's checkpoint"
    );
    assert_eq!(ok(store.active_generation(&p).await, CTX), 2);
    assert_eq!(
        keys(&find_docs(store, &active, "status", "open", 10).await),
        vec!["k1", "only-g2"],
        "{CTX}: dropping generation 1 must leave the active generation 2"
    );
    assert_eq!(checkpoint_of(store, &active).await, 80);

    // A dropped generation can be rebuilt from scratch, and switched back to.
    assert_eq!(
        apply_docs(
            store,
            &g1,
            vec![doc_write("k1", 1, json!({ "gen": "1b" }), &[])],
            None
        )
        .await,
        1,
        "{CTX}: after a drop, the generation's old versions must not block new writes"
    );
    ok(store.activate(&p, 1).await, CTX);
    assert_eq!(ok(store.active_generation(&p).await, CTX), 1);
    assert_eq!(
        get_doc(store, &active, "k1").await,
        Some(doc("k1", 1, json!({ "gen": "1b" })))
    );
    ok(store.drop_generation(&p, 2).await, CTX);
    assert_eq!(get_doc(store, &g2, "k1").await, None);
    assert_eq!(checkpoint_of(store, &g2).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------------------------

/// The [`Publisher`] contract. `read_back` returns everything published so far as the consumer
/// side sees it (the log file, the Kinesis stream). Every event arrives, each aggregate's in
/// the order published; consumers may see duplicates but never a gap.
pub async fn publisher_contract<P, F, Fut>(publisher: Arc<P>, read_back: F)
where
    P: Publisher,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<EventEnvelope>>,
{
    const CTX: &str = "Publisher";
    publisher
        .publish(&[])
        .await
        .unwrap_or_else(|e| panic!("{CTX}: publishing nothing must succeed: {e}"));
    let a = new_stream();
    let b = new_stream();
    let (ea, eb) = (events(&a, 0, 5), events(&b, 0, 3));
    // Interleaved, as a stream batch of two aggregates would be.
    let mut batch = Vec::new();
    for (i, e) in ea.iter().enumerate() {
        batch.push(e.clone());
        if let Some(e) = eb.get(i) {
            batch.push(e.clone());
        }
    }
    publisher
        .publish(&batch)
        .await
        .unwrap_or_else(|e| panic!("{CTX}: publish failed: {e}"));
    let more = events(&a, 5, 2);
    publisher
        .publish(&more)
        .await
        .unwrap_or_else(|e| panic!("{CTX}: second publish failed: {e}"));
    let got = read_back().await;
    for (stream, want) in [
        (&a, ea.iter().chain(&more).cloned().collect::<Vec<_>>()),
        (&b, eb.clone()),
    ] {
        let mut seen: Vec<EventEnvelope> = got
            .iter()
            .filter(|e| e.aggregate_id == stream.aggregate_id)
            .cloned()
            .collect();
        // Duplicates are allowed (at least once); their first arrivals must be in order.
        let mut firsts = Vec::new();
        for e in seen.drain(..) {
            if !firsts
                .iter()
                .any(|f: &EventEnvelope| f.event_id == e.event_id)
            {
                firsts.push(e);
            }
        }
        assert_events_eq(
            &firsts,
            &want,
            &format!("{CTX}: events of {stream} as consumed"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Archive
// ---------------------------------------------------------------------------------------------

use chronicle_kernel::archive::{segment_name, Archive, ByteRange, SegmentBuilder};
use chronicle_kernel::archived::{
    run_archiver, ArchivePolicy, ArchivedEventStore, ArchiverOptions,
};

/// The [`Archive`] contract: segments stored whole, listed in name order under a prefix, read in
/// ranges, and never overwritten. Names are unique to the run, so a shared bucket will do.
pub async fn archive_contract<A: Archive>(archive: Arc<A>) {
    const CTX: &str = "Archive";
    let root = unique("contract");
    let a = format!("{root}/a/0001.seg");
    let b = format!("{root}/a/0002.seg");
    let c = format!("{root}/b/0001.seg");
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    for name in [&b, &a, &c] {
        assert!(
            ok(archive.put_segment(name, bytes.clone()).await, CTX),
            "{CTX}: a new segment name is stored"
        );
    }
    assert_eq!(
        ok(archive.list_segments(&format!("{root}/a/")).await, CTX),
        vec![a.clone(), b.clone()],
        "{CTX}: list_segments gives the names under a prefix, in name order"
    );
    let all = ok(archive.list_segments(&format!("{root}/")).await, CTX);
    assert_eq!(
        all,
        vec![a.clone(), b.clone(), c.clone()],
        "{CTX}: every prefix is listed"
    );
    assert_eq!(
        ok(archive.read_segment(&a, ByteRange::All).await, CTX),
        bytes
    );
    assert_eq!(
        ok(
            archive
                .read_segment(
                    &a,
                    ByteRange::Span {
                        offset: 100,
                        len: 50
                    }
                )
                .await,
            CTX
        ),
        bytes[100..150].to_vec(),
        "{CTX}: a span reads those bytes"
    );
    assert_eq!(
        ok(archive.read_segment(&a, ByteRange::Suffix(20)).await, CTX),
        bytes[bytes.len() - 20..].to_vec(),
        "{CTX}: a suffix reads the last bytes"
    );
    assert!(
        archive
            .read_segment(
                &a,
                ByteRange::Span {
                    offset: 4990,
                    len: 50
                }
            )
            .await
            .is_err(),
        "{CTX}: reading past a segment's end is an error, not a short read"
    );
    assert!(
        archive
            .read_segment(&format!("{root}/missing.seg"), ByteRange::All)
            .await
            .is_err(),
        "{CTX}: reading a missing segment is an error"
    );
    // Never overwritten: a second put under a taken name leaves the first.
    assert!(
        !ok(archive.put_segment(&a, vec![1, 2, 3]).await, CTX),
        "{CTX}: a taken name is reported as taken"
    );
    assert_eq!(
        ok(archive.read_segment(&a, ByteRange::All).await, CTX),
        bytes,
        "{CTX}: a segment is never overwritten"
    );
    // Concurrent puts of one name: exactly one wins.
    let d = format!("{root}/a/0003.seg");
    let (x, y) = tokio::join!(
        archive.put_segment(&d, vec![1; 64]),
        archive.put_segment(&d, vec![2; 64])
    );
    let (x, y) = (ok(x, CTX), ok(y, CTX));
    assert!(
        x ^ y,
        "{CTX}: of two racing puts of one name exactly one stores"
    );
    let stored = ok(archive.read_segment(&d, ByteRange::All).await, CTX);
    assert!(
        stored == vec![1; 64] || stored == vec![2; 64],
        "{CTX}: the winner is whole"
    );
}

/// Events of a fresh stream with a real hash chain (the archiver copies only verified chains).
pub fn sealed_events(stream: &StreamId, n: usize) -> Vec<EventEnvelope> {
    let mut evs = events(stream, 0, n);
    chain::seal(chain::GENESIS, &mut evs);
    evs
}

/// Reads through an [`ArchivedEventStore`] stay one history while the hot store loses archived
/// events. `hot` must hold nothing but what this check appends (the archiver walks every
/// stream); `expire_hot(stream, through)` removes the hot copies of versions `1..=through`
/// behind the store's back, as a TTL would.
pub async fn archived_reads_contract<S, N, F, Fut>(
    hot: Arc<S>,
    snapshots: Arc<N>,
    archive: Arc<dyn Archive>,
    expire_hot: F,
) where
    S: EventStore,
    N: SnapshotStore,
    F: Fn(StreamId, u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    const CTX: &str = "ArchivedEventStore";
    let store = ArchivedEventStore::new(hot.clone(), archive.clone());
    let s = new_stream();
    let all = sealed_events(&s, 12);
    let req = AppendRequest {
        stream: s.clone(),
        expected_version: 0,
        events: all[..10].to_vec(),
        idempotency: None,
        stored: Vec::new(),
    };
    ok(store.append(&req).await.map_err(|e| format!("{e}")), CTX);
    let mut snap = snapshot(&s, 8, 1, "archive");
    snap.chain_head = Some(all[7].hash.clone());
    ok(snapshots.save(snap).await, CTX);

    // Below the snapshot: v1..=8 are copied; the head (v10) never is.
    let opts = ArchiverOptions::new(ArchivePolicy::below_snapshot());
    let report = ok(
        run_archiver(&*hot, &*snapshots, &*archive, &opts, |_| {}).await,
        CTX,
    );
    assert_eq!(
        report.events_archived, 8,
        "{CTX}: the archiver copies v1..=snapshot"
    );
    assert_eq!(report.segments.len(), 1);
    let again = ok(
        run_archiver(&*hot, &*snapshots, &*archive, &opts, |_| {}).await,
        CTX,
    );
    assert_eq!(
        again.events_archived, 0,
        "{CTX}: a second run copies nothing twice"
    );

    // By age: everything but the head is old enough with a zero horizon.
    let req = AppendRequest {
        stream: s.clone(),
        expected_version: 10,
        events: all[10..].to_vec(),
        idempotency: None,
        stored: Vec::new(),
    };
    ok(store.append(&req).await.map_err(|e| format!("{e}")), CTX);
    let aged = ArchiverOptions::new(ArchivePolicy::older_than(chrono::Duration::zero()));
    let report = ok(
        run_archiver(&*hot, &*snapshots, &*archive, &aged, |_| {}).await,
        CTX,
    );
    assert_eq!(
        report.events_archived, 3,
        "{CTX}: v9..=11 join in a new segment"
    );
    let young = ArchiverOptions::new(ArchivePolicy::older_than(chrono::Duration::days(1)));
    let report = ok(
        run_archiver(&*hot, &*snapshots, &*archive, &young, |_| {}).await,
        CTX,
    );
    assert_eq!(
        report.events_archived, 0,
        "{CTX}: nothing is older than a day"
    );

    // The hot store loses v1..=9: reads fill them from two segments.
    expire_hot(s.clone(), 9).await;
    let hot_left = ok(hot.read_stream(&s, ReadRange::all()).await, CTX);
    assert_eq!(
        hot_left.first().map(|e| e.version),
        Some(10),
        "{CTX}: expire_hot took v1..=9"
    );
    let read = |r: ReadRange| {
        let store = &store;
        let s = s.clone();
        async move { ok(store.read_stream(&s, r).await, CTX) }
    };
    assert_eq!(
        read(ReadRange::all()).await,
        all,
        "{CTX}: one ordered history"
    );
    assert_eq!(read(ReadRange::from(3).to(11)).await, all[2..11].to_vec());
    assert_eq!(read(ReadRange::from(2).limit(4)).await, all[1..5].to_vec());
    assert_eq!(
        read(ReadRange::from(4).to(6)).await,
        all[3..6].to_vec(),
        "{CTX}: archive only"
    );
    assert_eq!(
        read(ReadRange::from(13)).await,
        vec![],
        "{CTX}: past the end"
    );
    assert_eq!(read(ReadRange::from(13).to(20)).await, vec![]);
    assert_eq!(ok(store.stream_version(&s).await, CTX), 12);
    assert_eq!(
        ok(chain::verify_stream(&store, &s).await, CTX),
        Ok(12),
        "{CTX}: the chain verifies across archive and hot store"
    );
    assert_eq!(ok(store.verify_stream_copies(&s).await, CTX), None);
    let breaks = ok(store.verify_copies(&|_| {}).await, CTX);
    assert!(breaks.is_empty(), "{CTX}: the archive verifies: {breaks:?}");

    // A conflicting append is still refused by the hot store.
    let stale = AppendRequest {
        stream: s.clone(),
        expected_version: 3,
        events: events(&s, 3, 1),
        idempotency: None,
        stored: Vec::new(),
    };
    assert!(
        matches!(
            store.append(&stale).await,
            Err(AppendError::Conflict { actual: 12, .. })
        ),
        "{CTX}: appends keep optimistic concurrency"
    );

    // An archived copy that verifies on its own but is not the hot history (a segment from
    // elsewhere): both checks name the first version where the two part.
    let other = new_stream();
    let hot_copy = sealed_events(&other, 4);
    let req = AppendRequest {
        stream: other.clone(),
        expected_version: 0,
        events: hot_copy.clone(),
        idempotency: None,
        stored: Vec::new(),
    };
    ok(store.append(&req).await.map_err(|e| format!("{e}")), CTX);
    let foreign = sealed_events(&other, 3);
    let mut builder = SegmentBuilder::new(&other.aggregate_type);
    ok(
        builder
            .add_frame(&foreign, chain::GENESIS)
            .map_err(|e| format!("{e}")),
        CTX,
    );
    let (bytes, _) = builder.finish(now());
    let name = segment_name(&other.aggregate_type, now(), &unique("run"), 1);
    assert!(ok(archive.put_segment(&name, bytes).await, CTX));
    let differ = |b: &chain::ChainBreak| {
        b.aggregate_id == other.aggregate_id && b.version == 1 && b.problem.contains("differ")
    };
    let breaks = ok(store.verify_copies(&|_| {}).await, CTX);
    assert!(
        breaks.iter().any(differ),
        "{CTX}: a foreign archived copy is named at v1: {breaks:?}"
    );
    let one = ok(store.verify_stream_copies(&other).await, CTX);
    assert!(
        one.as_ref().is_some_and(differ),
        "{CTX}: and by the one-stream check: {one:?}"
    );
}
