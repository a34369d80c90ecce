//! Data subjects' keys on one machine: a SQLite file of their own, `DATA_DIR/keys.sqlite`,
//! apart from the events so a key can be destroyed while the events stay as they are.
//!
//! Destroyed means gone from every file: `secure_delete` zeroes the freed bytes of a changed
//! row in the database file, and the rollback journal (`journal_mode = DELETE`), which holds
//! the old page while a transaction runs, is deleted when it commits. WAL would keep old pages
//! in the `-wal` file until a checkpoint that can be blocked by any reader, in any process.
//!
//! Any number of processes may open the file for writing at once (the server, and the CLI's
//! `forget` beside it): each write is one `BEGIN IMMEDIATE` transaction, and a busy file is
//! waited for (busy timeout), then answered as [`StoreError::Unavailable`].

use crate::writer::backend;
use async_trait::async_trait;
use chronicle_kernel::{DataKey, Forgetting, KeyStore, StoreError, SubjectKey};
use chrono::{DateTime, SecondsFormat, Utc};
use r2d2_sqlite::rusqlite::{
    self, params, Connection, ErrorCode, OptionalExtension, TransactionBehavior,
};
use r2d2_sqlite::SqliteConnectionManager;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The key store's file in a data directory.
pub const KEYS_FILE: &str = "keys.sqlite";

/// How long a write waits for another connection (or process) holding the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A row per subject: a live key, or a tombstone (no key, the time it was forgotten); never
/// both, never neither.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS subject_keys (
    subject TEXT PRIMARY KEY NOT NULL,
    key BLOB,
    created_at TEXT NOT NULL,
    forgotten_at TEXT,
    CHECK ((key IS NULL) = (forgotten_at IS NOT NULL)),
    CHECK (key IS NULL OR length(key) = 32)
) WITHOUT ROWID;";

/// Data subjects' keys in a SQLite file ([`KEYS_FILE`] in the data directory).
pub struct SqliteKeyStore {
    path: PathBuf,
    /// None: opened read-only where no key was ever stored (no file, or no table yet).
    pool: Option<r2d2::Pool<SqliteConnectionManager>>,
    read_only: bool,
}

impl std::fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteKeyStore")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// A SQLite error as a store error: a file still busy after the timeout is transient.
fn sql(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(format!("key store busy: {e}"))
        }
        _ => StoreError::Backend(format!("key store: {e}")),
    }
}

fn stamp(at: DateTime<Utc>) -> String {
    // Nanoseconds kept: a time given to `forget` reads back equal.
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn parse_time(subject: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            StoreError::Corrupt(format!(
                "key store: forgotten_at `{text}` of {subject:?}: {e}"
            ))
        })
}

/// Every connection: wait for a busy file, zero what is deleted, keep temporary data (sorts)
/// in memory rather than in temporary files, and sync commits: a key must be on disk before
/// anything encrypted with it is stored.
fn init_connection(c: &mut Connection) -> rusqlite::Result<()> {
    c.busy_timeout(BUSY_TIMEOUT)?;
    let secure: i64 = c.query_row("PRAGMA secure_delete = ON", [], |r| r.get(0))?;
    if secure != 1 {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some("SQLite refused secure_delete: forgotten keys would stay in the file".into()),
        ));
    }
    c.execute_batch("PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY;")
}

fn pool(path: &Path, query_only: bool) -> Result<r2d2::Pool<SqliteConnectionManager>, StoreError> {
    let manager = SqliteConnectionManager::file(path).with_init(move |c| {
        init_connection(c)?;
        if query_only {
            c.execute_batch("PRAGMA query_only = ON")?;
        }
        Ok(())
    });
    r2d2::Pool::builder()
        .max_size(4)
        .test_on_check_out(false)
        .build(manager)
        .map_err(|e| backend(format!("opening {}: {e}", path.display())))
}

/// Creates the file (and its directory) readable by its owner only, before SQLite opens it:
/// SQLite gives its journal the database file's permissions. An existing file is tightened.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let io = |what: &str, e: std::io::Error| backend(format!("{what} {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| backend(format!("creating {}: {e}", dir.display())))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        options.open(path).map_err(|e| io("creating", e))?;
        let mode = std::fs::metadata(path)
            .map_err(|e| io("reading", e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io("protecting", e))?;
        }
    }
    #[cfg(not(unix))]
    options.open(path).map_err(|e| io("creating", e))?;
    Ok(())
}

impl SqliteKeyStore {
    /// Opens (creating if needed, mode 0600) the key store at `path`, usually
    /// `DATA_DIR/keys.sqlite` ([`KEYS_FILE`]), for reading and writing. Other processes may
    /// have it open for writing too.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        create_private(&path)?;
        let pool = pool(&path, false)?;
        let conn = pool.get().map_err(backend)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .map_err(sql)?;
        if !mode.eq_ignore_ascii_case("delete") {
            return Err(backend(format!(
                "{} refused journal_mode DELETE ({mode}): old pages could outlive a forget",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA).map_err(sql)?;
        drop(conn);
        Ok(Self {
            path,
            pool: Some(pool),
            read_only: false,
        })
    }

    /// Opens the key store at `path` for reading only, beside processes that write to it:
    /// creates nothing, and refuses `key_for_writing` and `forget`. Where no key store exists
    /// yet, no subject has a key.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut store = Self {
            path: path.clone(),
            pool: None,
            read_only: true,
        };
        if !path.is_file() {
            return Ok(store);
        }
        let pool = pool(&path, true)?;
        let exists = pool
            .get()
            .map_err(backend)?
            .query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'subject_keys'",
                [],
                |r| r.get::<_, bool>(0),
            )
            .map_err(sql)?;
        if exists {
            store.pool = Some(pool);
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a pooled connection off the async threads; writes are refused on a store
    /// opened read-only.
    async fn run<T, F>(&self, write: bool, f: F) -> Result<Option<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if write && self.read_only {
            return Err(StoreError::Invalid(format!(
                "the key store {} was opened read-only",
                self.path.display()
            )));
        }
        let Some(pool) = self.pool.clone() else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(backend)?;
            f(&mut conn).map(Some)
        })
        .await
        .map_err(backend)?
    }
}

/// The subject's row as it stands, if it has one.
fn read_one(conn: &Connection, subject: &str) -> Result<Option<SubjectKey>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT key, forgotten_at FROM subject_keys WHERE subject = ?1")
        .map_err(sql)?;
    let row = stmt
        .query_row([subject], |r| {
            // Copied straight from SQLite's buffer into the key, which zeroes itself: no
            // intermediate vector keeps the bytes.
            let key = r.get_ref(0)?.as_blob_or_null()?.map(DataKey::from_bytes);
            Ok((key, r.get::<_, Option<String>>(1)?))
        })
        .optional()
        .map_err(sql)?;
    match row {
        None => Ok(None),
        Some((_, Some(at))) => Ok(Some(SubjectKey::Forgotten {
            at: parse_time(subject, &at)?,
        })),
        Some((Some(Some(key)), None)) => Ok(Some(SubjectKey::Live(key))),
        Some((Some(None), None)) => Err(StoreError::Corrupt(format!(
            "key store: the key of {subject:?} is not 32 bytes"
        ))),
        Some((None, None)) => Err(StoreError::Corrupt(format!(
            "key store: {subject:?} has neither a key nor a time it was forgotten"
        ))),
    }
}

#[async_trait]
impl KeyStore for SqliteKeyStore {
    async fn key_for_writing(
        &self,
        subject: &str,
        fresh: DataKey,
    ) -> Result<SubjectKey, StoreError> {
        let subject = subject.to_owned();
        let got = self
            .run(true, move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(sql)?;
                // A tombstone is a row too: a forgotten subject gets no key.
                tx.prepare_cached(
                    "INSERT INTO subject_keys (subject, key, created_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (subject) DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![subject, &fresh.bytes()[..], stamp(Utc::now())])
                })
                .map_err(sql)?;
                let got = read_one(&tx, &subject)?;
                tx.commit().map_err(sql)?;
                got.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "key store: {subject:?} not found after its insert"
                    ))
                })
            })
            .await?;
        got.ok_or_else(|| StoreError::Invalid("the key store was opened read-only".into()))
    }

    async fn keys(&self, subjects: &[&str]) -> Result<HashMap<String, SubjectKey>, StoreError> {
        if subjects.is_empty() {
            return Ok(HashMap::new());
        }
        let subjects: Vec<String> = subjects.iter().map(|s| (*s).to_owned()).collect();
        let got = self
            .run(false, move |conn| {
                // One read transaction: every key as of one moment.
                let tx = conn.transaction().map_err(sql)?;
                let mut out = HashMap::with_capacity(subjects.len());
                for subject in subjects {
                    if out.contains_key(&subject) {
                        continue;
                    }
                    if let Some(key) = read_one(&tx, &subject)? {
                        out.insert(subject, key);
                    }
                }
                tx.commit().map_err(sql)?;
                Ok(out)
            })
            .await?;
        Ok(got.unwrap_or_default())
    }

    async fn forget(&self, subject: &str, at: DateTime<Utc>) -> Result<Forgetting, StoreError> {
        let subject = subject.to_owned();
        let got = self
            .run(true, move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(sql)?;
                let forgetting = match read_one(&tx, &subject)? {
                    Some(SubjectKey::Forgotten { at: first }) => Forgetting {
                        destroyed: false,
                        at: first,
                    },
                    Some(SubjectKey::Live(_)) => {
                        // secure_delete zeroes the old row's bytes in the page.
                        tx.execute(
                            "UPDATE subject_keys SET key = NULL, forgotten_at = ?2 \
                             WHERE subject = ?1",
                            params![subject, stamp(at)],
                        )
                        .map_err(sql)?;
                        Forgetting {
                            destroyed: true,
                            at,
                        }
                    }
                    None => {
                        tx.execute(
                            "INSERT INTO subject_keys (subject, key, created_at, forgotten_at) \
                             VALUES (?1, NULL, ?2, ?3)",
                            params![subject, stamp(Utc::now()), stamp(at)],
                        )
                        .map_err(sql)?;
                        Forgetting {
                            destroyed: false,
                            at,
                        }
                    }
                };
                tx.commit().map_err(sql)?;
                Ok(forgetting)
            })
            .await?;
        got.ok_or_else(|| StoreError::Invalid("the key store was opened read-only".into()))
    }
}
