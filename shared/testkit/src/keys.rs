//! The [`KeyStore`] contract: the first stored key wins (also against concurrent writers),
//! batched reads, forgetting for good with a tombstone, and subjects as opaque strings.

use crate::fixtures::{ok, unique};
use chronicle_kernel::envelope::now;
use chronicle_kernel::{DataKey, Forgetting, KeyStore, SubjectKey};
use chrono::{DateTime, TimeDelta, Utc};
use std::collections::HashMap;
use std::sync::Arc;

/// More subjects than one DynamoDB `BatchGetItem` takes (100), so reads must be chunked.
pub const KEY_BATCH: usize = 250;

/// The live key `got` holds, or a panic naming `ctx`.
fn live(got: &SubjectKey, ctx: &str) -> [u8; 32] {
    match got {
        SubjectKey::Live(k) => *k.bytes(),
        SubjectKey::Forgotten { at } => panic!("{ctx}: expected a live key, got Forgotten at {at}"),
    }
}

/// The time `got` was forgotten at, or a panic naming `ctx`.
fn forgotten(got: &SubjectKey, ctx: &str) -> DateTime<Utc> {
    match got {
        SubjectKey::Forgotten { at } => *at,
        SubjectKey::Live(_) => panic!("{ctx}: expected Forgotten, got a live key"),
    }
}

async fn write<K: KeyStore + ?Sized>(store: &K, subject: &str, fresh: DataKey) -> SubjectKey {
    ok(
        store.key_for_writing(subject, fresh).await,
        &format!("KeyStore: key_for_writing({subject:?})"),
    )
}

async fn read<K: KeyStore + ?Sized>(store: &K, subjects: &[&str]) -> HashMap<String, SubjectKey> {
    ok(
        store.keys(subjects).await,
        &format!("KeyStore: keys({} subjects)", subjects.len()),
    )
}

async fn forget<K: KeyStore + ?Sized>(store: &K, subject: &str, at: DateTime<Utc>) -> Forgetting {
    ok(
        store.forget(subject, at).await,
        &format!("KeyStore: forget({subject:?})"),
    )
}

/// A new subject gets the fresh key it was offered; a later writer with another fresh key
/// gets that first key back, and `keys` reads the same.
pub async fn ks_first_key_wins<K: KeyStore + ?Sized>(store: &K) {
    const CTX: &str = "KeyStore (first key wins)";
    let subject = unique("subject");
    let first = DataKey::generate();
    let want = *first.bytes();
    let got = live(&write(store, &subject, first).await, CTX);
    assert_eq!(
        got, want,
        "{CTX}: a new subject must get the fresh key offered"
    );
    let second = DataKey::generate();
    assert_ne!(*second.bytes(), want);
    let again = live(&write(store, &subject, second).await, CTX);
    assert_eq!(
        again, want,
        "{CTX}: a second key_for_writing must return the first stored key, not its fresh one"
    );
    let read = read(store, &[&subject]).await;
    assert_eq!(read.len(), 1, "{CTX}: keys of one known subject: {read:?}");
    assert_eq!(
        live(&read[&subject], CTX),
        want,
        "{CTX}: keys must read the stored key"
    );
}

/// Many writers racing on one new subject, each with its own fresh key, all get the same key:
/// one of theirs, the one stored.
pub async fn ks_concurrent_writers_get_one_key<K: KeyStore>(store: Arc<K>) {
    const CTX: &str = "KeyStore (concurrent writers)";
    const WRITERS: usize = 16;
    let subject = unique("racing");
    let mut offered = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let fresh = DataKey::generate();
        offered.push(*fresh.bytes());
        let (store, subject) = (store.clone(), subject.clone());
        tasks.push(tokio::spawn(async move {
            write(&*store, &subject, fresh).await
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(live(&t.await.expect("a writer task panicked"), CTX));
    }
    assert!(
        got.iter().all(|k| *k == got[0]),
        "{CTX}: {WRITERS} writers racing on one subject got {} different keys",
        got.iter().collect::<std::collections::HashSet<_>>().len()
    );
    assert!(
        offered.contains(&got[0]),
        "{CTX}: the key stored must be one of the fresh keys offered"
    );
    let read = read(&*store, &[&subject]).await;
    assert_eq!(
        live(&read[&subject], CTX),
        got[0],
        "{CTX}: keys must read the winner"
    );
}

/// `keys` of more subjects than one request takes: live keys for the known, forgotten ones as
/// such, unknown ones absent; a subject named twice is answered once.
pub async fn ks_keys_in_batches<K: KeyStore>(store: Arc<K>) {
    const CTX: &str = "KeyStore (keys in batches)";
    let known: Vec<String> = (0..KEY_BATCH * 3 / 5)
        .map(|i| unique(&format!("known{i}")))
        .collect();
    let unknown: Vec<String> = (0..KEY_BATCH - known.len())
        .map(|i| unique(&format!("unknown{i}")))
        .collect();
    // Written 10 at a time: quick on a remote store, and still no flood.
    let mut want = HashMap::new();
    for chunk in known.chunks(10) {
        let mut tasks = Vec::new();
        for subject in chunk {
            let fresh = DataKey::generate();
            want.insert(subject.clone(), *fresh.bytes());
            let (store, subject) = (store.clone(), subject.clone());
            tasks.push(tokio::spawn(async move {
                write(&*store, &subject, fresh).await
            }));
        }
        for t in tasks {
            live(&t.await.expect("a writer task panicked"), CTX);
        }
    }
    let gone = &known[7];
    let at = now();
    assert!(forget(&*store, gone, at).await.destroyed);

    // Known and unknown interleaved, and one subject twice.
    let mut asked: Vec<&str> = Vec::new();
    for i in 0..known.len().max(unknown.len()) {
        asked.extend(known.get(i).map(String::as_str));
        asked.extend(unknown.get(i).map(String::as_str));
    }
    asked.push(&known[3]);
    let got = read(&*store, &asked).await;
    assert_eq!(
        got.len(),
        known.len(),
        "{CTX}: keys of {} subjects ({} known) answered {}",
        asked.len(),
        known.len(),
        got.len()
    );
    for subject in &unknown {
        assert!(
            !got.contains_key(subject),
            "{CTX}: a subject that never had a key must be absent"
        );
    }
    for subject in &known {
        let Some(key) = got.get(subject) else {
            panic!("{CTX}: known subject {subject} missing from keys");
        };
        if subject == gone {
            assert_eq!(forgotten(key, CTX), at, "{CTX}: the forgotten one");
        } else {
            assert_eq!(
                live(key, CTX),
                want[subject],
                "{CTX}: {subject}: the key read differs from the one stored"
            );
        }
    }
    // Distinct subjects, distinct keys: nothing is shared by accident.
    let distinct: std::collections::HashSet<_> = want.values().collect();
    assert_eq!(distinct.len(), want.len());
    assert!(read(&*store, &[]).await.is_empty(), "{CTX}: keys of none");
}

/// Forgetting destroys the key once; repeating it keeps the first time; afterwards the subject
/// reads as forgotten and never gets a key again.
pub async fn ks_forget_destroys_for_good<K: KeyStore + ?Sized>(store: &K) {
    const CTX: &str = "KeyStore (forget)";
    let subject = unique("forgotten");
    live(&write(store, &subject, DataKey::generate()).await, CTX);
    let first = now() - TimeDelta::seconds(5);
    assert_eq!(
        forget(store, &subject, first).await,
        Forgetting {
            destroyed: true,
            at: first
        },
        "{CTX}: forgetting a live key destroys it, at the time given"
    );
    let later = now();
    assert_eq!(
        forget(store, &subject, later).await,
        Forgetting {
            destroyed: false,
            at: first
        },
        "{CTX}: forgetting again destroys nothing and answers the first time"
    );
    let read = read(store, &[&subject]).await;
    assert_eq!(forgotten(&read[&subject], CTX), first);
    let fresh = DataKey::generate();
    assert_eq!(
        forgotten(&write(store, &subject, fresh).await, CTX),
        first,
        "{CTX}: key_for_writing after forget must answer Forgotten, never a new key"
    );
    assert_eq!(
        forgotten(&self::read(store, &[&subject]).await[&subject], CTX),
        first
    );
}

/// Forgetting a subject that never had a key keeps a tombstone: it reads as forgotten and
/// never gets a key.
pub async fn ks_forget_unknown_keeps_a_tombstone<K: KeyStore + ?Sized>(store: &K) {
    const CTX: &str = "KeyStore (forget before any key)";
    let subject = unique("never");
    let at = now();
    assert_eq!(
        forget(store, &subject, at).await,
        Forgetting {
            destroyed: false,
            at
        },
        "{CTX}: nothing to destroy, a tombstone at the time given"
    );
    assert_eq!(
        forgotten(&read(store, &[&subject]).await[&subject], CTX),
        at
    );
    assert_eq!(
        forgotten(&write(store, &subject, DataKey::generate()).await, CTX),
        at,
        "{CTX}: a tombstone must refuse a key"
    );
    assert_eq!(forget(store, &subject, now()).await.at, at);
}

/// A writer racing a forget: whichever goes first, the subject ends forgotten.
pub async fn ks_forget_races_writers<K: KeyStore>(store: Arc<K>) {
    const CTX: &str = "KeyStore (forget racing writers)";
    let subject = unique("race-forget");
    let at = now();
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (store, subject) = (store.clone(), subject.clone());
            tokio::spawn(async move { write(&*store, &subject, DataKey::generate()).await })
        })
        .collect();
    let forgetting = forget(&*store, &subject, at).await;
    for w in writers {
        w.await.expect("a writer task panicked");
    }
    assert_eq!(forgetting.at, at);
    assert_eq!(
        forgotten(&read(&*store, &[&subject]).await[&subject], CTX),
        at,
        "{CTX}: after a forget, whatever raced it, the subject is forgotten"
    );
    assert_eq!(
        forgotten(&write(&*store, &subject, DataKey::generate()).await, CTX),
        at
    );
}

/// Subjects are opaque strings: unicode, separators, quotes, 128 characters.
pub async fn ks_subjects_are_opaque<K: KeyStore + ?Sized>(store: &K) {
    const CTX: &str = "KeyStore (opaque subjects)";
    let id = unique("s");
    let long = format!("{id}-{}", "x".repeat(128 - id.len() - 1));
    assert_eq!(long.chars().count(), 128);
    let subjects = [
        format!("user:{id}:email"),
        format!("tenant:{id}::"),
        format!("Zoë Ünïcødé ✓ 🙂 {id}"),
        format!("{id} with \"quotes\", 'apostrophes' and a\ttab"),
        format!("{id}/slash\\back%25"),
        long,
    ];
    let mut want = HashMap::new();
    for s in &subjects {
        let fresh = DataKey::generate();
        want.insert(s.clone(), *fresh.bytes());
        assert_eq!(
            live(&write(store, s, fresh).await, CTX),
            want[s],
            "{CTX}: {s:?}"
        );
    }
    // A prefix or a variant of a subject is another subject.
    let prefix = &subjects[0][..subjects[0].len() - 1];
    let upper = subjects[2].to_uppercase();
    let asked: Vec<&str> = subjects
        .iter()
        .map(String::as_str)
        .chain([prefix, upper.as_str()])
        .collect();
    let got = read(store, &asked).await;
    assert_eq!(got.len(), subjects.len(), "{CTX}: {:?}", got.keys());
    for s in &subjects {
        assert_eq!(live(&got[s], CTX), want[s], "{CTX}: {s:?} read back");
    }
    let at = now();
    assert!(forget(store, &subjects[2], at).await.destroyed);
    let got = read(store, &asked).await;
    assert_eq!(forgotten(&got[&subjects[2]], CTX), at);
    assert_eq!(live(&got[&subjects[0]], CTX), want[&subjects[0]]);
}

/// The [`KeyStore`] contract: every check above, on fresh subjects (the store may be shared).
pub async fn key_store_contract<K: KeyStore>(store: Arc<K>) {
    ks_first_key_wins(&*store).await;
    ks_concurrent_writers_get_one_key(store.clone()).await;
    ks_keys_in_batches(store.clone()).await;
    ks_forget_destroys_for_good(&*store).await;
    ks_forget_unknown_keeps_a_tombstone(&*store).await;
    ks_forget_races_writers(store.clone()).await;
    ks_subjects_are_opaque(&*store).await;
}
