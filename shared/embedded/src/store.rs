//! The store itself: opening a data directory (its lock, the schema, the writer thread, the
//! checkpointer and the readers' pool), closing it, and the reads every adapter runs on the
//! pool. The ports' adapters are in their own files, named as in shared/aws.

use crate::heads;
use crate::idempotency;
use crate::lock::{DirLock, LOCK_FILE};
use crate::schema::{backfill_streams, migrate, table_exists, SCHEMA};
use crate::writer::{backend, last_position, Writer};
use chronicle_kernel::StoreError;
use r2d2_sqlite::rusqlite::{self, Connection};
use r2d2_sqlite::SqliteConnectionManager;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const DB_FILE: &str = "chronicle.db";

/// Every Chronicle port on one SQLite database.
pub struct EmbeddedStore {
    pub(crate) dir: PathBuf,
    pub(crate) writer: Writer,
    /// None when opened read-only.
    checkpointer: Option<Checkpointer>,
    pub(crate) readers: r2d2::Pool<SqliteConnectionManager>,
    pub(crate) head: watch::Sender<u64>,
    /// Held until `close`: one writing process per data directory.
    lock: std::sync::Mutex<Option<DirLock>>,
    /// Reads that found a stream's chain broken and scanned instead (`chain_scans`).
    pub(crate) scans: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) pruner: idempotency::Pruner,
}

/// Copies committed WAL frames into the database file from a thread of its own, with
/// PASSIVE checkpoints that never block the writer: the writer thread, which every command
/// waits on, no longer stalls on checkpoints.
struct Checkpointer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Checkpointer {
    fn spawn(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path).map_err(backend)?;
        init_connection(&mut conn).map_err(backend)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("chronicle-ckpt".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(error = %e, "checkpoint failed; the writer's backstop remains");
                    }
                }
            })
            .map_err(backend)?;
        Ok(Self {
            stop,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    fn close(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.close();
    }
}

/// The readers' connections; `query_only` for a store opened read-only, so not even a bug can
/// write through them.
fn reader_pool(
    path: &Path,
    query_only: bool,
) -> Result<r2d2::Pool<SqliteConnectionManager>, StoreError> {
    let manager = SqliteConnectionManager::file(path).with_init(move |c| {
        init_connection(c)?;
        if query_only {
            c.execute_batch("PRAGMA query_only = ON")?;
        }
        Ok(())
    });
    r2d2::Pool::builder()
        .max_size(8)
        // Not a `SELECT 1` per checkout (r2d2_sqlite's check): a parse, a read transaction
        // and its file locks each time, for a local file that does not go away.
        .test_on_check_out(false)
        .build(manager)
        .map_err(backend)
}

fn init_connection(c: &mut Connection) -> rusqlite::Result<()> {
    c.busy_timeout(Duration::from_secs(10))?;
    // Room for every statement the store prepares (rusqlite keeps 16 by default, fewer than
    // the readers use, so some were parsed again and again).
    c.set_prepared_statement_cache_capacity(64);
    // Readers keep a small page cache: every commit by the writer invalidates it anyway.
    c.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA cache_size = -8192; PRAGMA temp_store = MEMORY;",
    )
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` for reading and writing. Takes the
    /// directory's lock first (lock.rs): while another process has it open for writing, this
    /// fails naming that process and changes nothing.
    pub fn open(dir: impl AsRef<Path>) -> Result<Arc<Self>, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|e| backend(format!("creating {}: {e}", dir.display())))?;
        let lock = DirLock::acquire(&dir)?;
        let path = dir.join(DB_FILE);
        let mut conn = Connection::open(&path)
            .map_err(|e| backend(format!("opening {}: {e}", path.display())))?;
        init_connection(&mut conn).map_err(backend)?;
        // Checkpoints run on their own thread (see `Checkpointer`); the writer checkpoints
        // only as a backstop if the WAL passes 256 MiB. NORMAL: the writer does not fsync at
        // commit; its syncer thread does, before any caller hears of the commit (writer.rs).
        //
        // A small page cache: every commit that splits a b-tree page leaves a page keyed past
        // the end of the file in the cache (SQLite rekeys pages through the lock-byte page,
        // 262145 at 4 KiB), so the commit then truncates the cache by scanning its whole hash
        // table. With a 64 MiB cache that scan was 12% of all CPU time during appends, which
        // ran 15-20% slower than with 4 MiB; pages that fall out are re-read from the OS cache.
        conn.execute_batch(
            "PRAGMA wal_autocheckpoint = 65536; PRAGMA cache_size = -4096; \
             PRAGMA synchronous = NORMAL;",
        )
        .map_err(backend)?;
        // WAL: readers never block the writer; FULL: a commit is on disk before it is answered.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(backend(format!(
                "{} refused WAL mode ({mode})",
                path.display()
            )));
        }
        let before_streams = table_exists(&conn, "events").map_err(backend)?
            && !table_exists(&conn, "stream_links").map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        migrate(&conn).map_err(backend)?;
        idempotency::migrate(&conn)?;
        if before_streams {
            backfill_streams(&conn).map_err(backend)?;
        }
        conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
        let caught_up = heads::catch_up_persisted(&conn)
            .and_then(|()| conn.execute_batch("COMMIT").map_err(backend));
        if caught_up.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        caught_up?;
        let (head, _) = watch::channel(last_position(&conn)?);
        let readers = reader_pool(&path, false)?;
        let store = Arc::new(Self {
            dir,
            writer: Writer::spawn(conn, wal_path(&path), head.clone()),
            scans: Arc::default(),
            checkpointer: Some(Checkpointer::spawn(&path)?),
            readers,
            head,
            lock: std::sync::Mutex::new(Some(lock)),
            pruner: Default::default(),
        });
        idempotency::Pruner::start(&store)?;
        Ok(store)
    }

    /// Opens an existing store for reading only, beside a process that writes to it (or
    /// none): takes no lock, starts no writer, and every write is refused. For `history`,
    /// `state`, `audit` and `verify`.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Arc<Self>, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Err(backend(format!(
                "no Chronicle store in {} (no {DB_FILE}); `chronicle serve --data-dir {}` creates one",
                dir.display(),
                dir.display()
            )));
        }
        let readers = reader_pool(&path, true)?;
        let conn = readers.get().map_err(backend)?;
        // A directory whose schema a writer has not brought up to date yet can't be read
        // correctly without writing to it.
        let current = table_exists(&conn, "stream_links").map_err(backend)?
            && conn
                .query_row(
                    "SELECT COUNT(*) > 0 FROM store_meta WHERE key = 'heads_exact'",
                    [],
                    |r| r.get::<_, bool>(0),
                )
                .map_err(backend)?;
        if !current {
            return Err(backend(format!(
                "the store in {} was written by an older Chronicle: open it once with a \
                 writing command (e.g. `chronicle serve`) to upgrade it",
                dir.display()
            )));
        }
        let (head, _) = watch::channel(last_position(&conn)?);
        drop(conn);
        Ok(Arc::new(Self {
            dir,
            writer: Writer::none(),
            scans: Arc::default(),
            checkpointer: None,
            readers,
            head,
            lock: std::sync::Mutex::new(None),
            pruner: Default::default(),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records in the directory's lock file that this process serves HTTP at `url`, for
    /// commands that find the directory in use (`locked_by`).
    pub fn advertise(&self, url: &str) -> Result<(), StoreError> {
        match self.lock.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(lock) => lock.advertise(url).map_err(|e| {
                backend(format!(
                    "writing {}: {e}",
                    self.dir.join(LOCK_FILE).display()
                ))
            }),
            None => Err(backend("the store holds no lock (read-only or closed)")),
        }
    }

    /// How many stream reads found the stream's chain broken (rows removed or changed behind
    /// the store's back) and scanned the table instead. Zero on an intact store.
    pub fn chain_scans(&self) -> u64 {
        self.scans.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Finishes queued writes and stops the writer; later writes fail.
    /// Releases the directory's lock once the writer has stopped: another process may then
    /// open the directory for writing.
    pub fn close(&self) {
        self.pruner.close();
        self.writer.close();
        if let Some(c) = &self.checkpointer {
            c.close();
        }
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Runs a read of a few indexed rows on the calling thread, when a pooled connection is
    /// free (else like `read`). Handing each such read to the blocking pool and back cost more
    /// than the read: two thread wake-ups, with futexes, per read (perf, at 200,000 streams,
    /// where every command's load reads the store).
    pub(crate) async fn read_short<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        match self.readers.try_get() {
            Some(conn) => f(&conn),
            None => self.read(f).await,
        }
    }

    /// Runs a read on a pooled connection off the async threads.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get().map_err(backend)?;
            f(&conn)
        })
        .await
        .map_err(backend)?
    }
}

/// SQLite's write-ahead log beside the database file.
fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

// Conversions every adapter uses.
