//! What only the embedded key store promises beyond the contract: a forgotten key leaves no
//! copy in any file of the data directory, the file is its owner's alone, several stores (as
//! several processes would) share one file, and a read-only open creates nothing.

use chronicle_embedded::{EmbeddedStore, SqliteKeyStore, KEYS_FILE};
use chronicle_kernel::envelope::now;
use chronicle_kernel::{DataKey, KeyStore, StoreError, SubjectKey};
use chronicle_testkit as kit;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn live(key: &SubjectKey) -> [u8; 32] {
    match key {
        SubjectKey::Live(k) => *k.bytes(),
        SubjectKey::Forgotten { at } => panic!("forgotten at {at}, expected a live key"),
    }
}

/// Every file under `dir`, recursively, with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            let bytes = std::fs::read(&path).expect("reading a file of the directory");
            out.push((path, bytes));
        }
    }
    out
}

/// The files under `dir` holding `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle))
        .map(|(path, _)| path)
        .collect()
}

async fn subjects_with_keys(store: &SqliteKeyStore, n: usize) -> Vec<(String, [u8; 32])> {
    let mut out = Vec::new();
    for i in 0..n {
        let subject = kit::unique(&format!("person{i}"));
        let key = live(
            &store
                .key_for_writing(&subject, DataKey::generate())
                .await
                .expect("key_for_writing"),
        );
        out.push((subject, key));
    }
    out
}

/// Forgetting leaves the key's 32 bytes in no file of the data directory: not in the key
/// store, not in a journal, not beside the events. The live keys are found, so the search
/// would see a copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_key_is_in_no_file_of_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let events = EmbeddedStore::open(dir.path()).expect("the event store beside it");
    let store = SqliteKeyStore::open(dir.path().join(KEYS_FILE)).expect("open");
    // Another store on the file, as a second process would be, holding its connections.
    let other = SqliteKeyStore::open(dir.path().join(KEYS_FILE)).expect("open again");
    // Enough subjects for several pages.
    let subjects = subjects_with_keys(&store, 300).await;
    let (gone, gone_key) = subjects[150].clone();
    let (first, first_key) = subjects[0].clone();
    assert_eq!(
        holding(dir.path(), &gone_key),
        vec![dir.path().join(KEYS_FILE)],
        "before forget the key is in the key store only"
    );
    let read = other.keys(&[&gone]).await.expect("keys");
    assert_eq!(live(&read[&gone]), gone_key);

    let forgetting = store.forget(&gone, now()).await.expect("forget");
    assert!(forgetting.destroyed);
    assert_eq!(
        holding(dir.path(), &gone_key),
        Vec::<PathBuf>::new(),
        "a forgotten key is still in a file, with both stores open"
    );
    // Forgetting the first subject, through the other store, after more writes.
    subjects_with_keys(&other, 20).await;
    assert!(other.forget(&first, now()).await.expect("forget").destroyed);
    drop(store);
    drop(other);
    events.close();
    drop(events);
    for key in [gone_key, first_key] {
        assert_eq!(
            holding(dir.path(), &key),
            Vec::<PathBuf>::new(),
            "a forgotten key is still in a file after closing"
        );
    }
    for (_, key) in &subjects[1..150] {
        assert_eq!(holding(dir.path(), key), vec![dir.path().join(KEYS_FILE)]);
    }
    let names: Vec<String> = files(dir.path())
        .iter()
        .filter_map(|(p, _)| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(KEYS_FILE))
        .collect();
    assert_eq!(
        names,
        vec![KEYS_FILE.to_owned()],
        "no journal left beside it"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_file_is_its_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join(KEYS_FILE);
    let store = SqliteKeyStore::open(&path).expect("open, creating the directory");
    store
        .key_for_writing("someone", DataKey::generate())
        .await
        .expect("key_for_writing");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    drop(store);
    // A file made readable by others is tightened when opened.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = SqliteKeyStore::open(&path).expect("reopen");
    assert_eq!(mode(&path), 0o600);
    assert!(matches!(
        store.keys(&["someone"]).await.expect("keys")["someone"],
        SubjectKey::Live(_)
    ));
}

/// Two stores on one file (two processes: the server and the CLI's `forget`) racing: one key
/// per subject, and each sees the other's forget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(KEYS_FILE);
    let a = Arc::new(SqliteKeyStore::open(&path).expect("open a"));
    let b = Arc::new(SqliteKeyStore::open(&path).expect("open b"));
    for round in 0..5 {
        let subject = kit::unique(&format!("shared{round}"));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let subject = subject.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .key_for_writing(&subject, DataKey::generate())
                    .await
                    .map(|k| live(&k))
            }));
        }
        let mut keys = Vec::new();
        for t in tasks {
            keys.push(t.await.unwrap().expect("key_for_writing"));
        }
        assert!(
            keys.iter().all(|k| *k == keys[0]),
            "round {round}: keys differ"
        );
        let at = now();
        assert!(b.forget(&subject, at).await.expect("forget").destroyed);
        let again = a.forget(&subject, now()).await.expect("forget again");
        assert_eq!((again.destroyed, again.at), (false, at));
        let got = a
            .key_for_writing(&subject, DataKey::generate())
            .await
            .expect("key_for_writing");
        assert!(matches!(got, SubjectKey::Forgotten { at: t } if t == at));
    }
}

/// A read-only open creates nothing where there is no key store, reads keys beside a writer,
/// and refuses writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_reads_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(KEYS_FILE);
    let ro = SqliteKeyStore::open_read_only(&path).expect("read-only, no file");
    assert!(ro.keys(&["anyone"]).await.expect("keys").is_empty());
    assert!(!path.exists(), "a read-only open created the file");
    assert!(matches!(
        ro.key_for_writing("anyone", DataKey::generate()).await,
        Err(StoreError::Invalid(_))
    ));

    let rw = SqliteKeyStore::open(&path).expect("open");
    let key = live(
        &rw.key_for_writing("anyone", DataKey::generate())
            .await
            .unwrap(),
    );
    let ro = SqliteKeyStore::open_read_only(&path).expect("read-only");
    assert_eq!(live(&ro.keys(&["anyone"]).await.unwrap()["anyone"]), key);
    assert!(matches!(
        ro.forget("anyone", now()).await,
        Err(StoreError::Invalid(_))
    ));
    let at = now();
    rw.forget("anyone", at).await.unwrap();
    assert!(matches!(
        ro.keys(&["anyone"]).await.unwrap()["anyone"],
        SubjectKey::Forgotten { at: t } if t == at
    ));
}
