//! The [`ReadModelStore`] contract: documents, versions that only move forward, the index,
//! checkpoints and generations.

use crate::fixtures::{ok, unique};
use chronicle_kernel::{Doc, DocWrite, ModelRef, ReadModelStore};
use serde_json::{json, Value};
use std::sync::Arc;

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
