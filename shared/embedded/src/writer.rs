//! One writer thread owns the only writing connection. Jobs queued while a commit is in
//! flight share the next transaction (group commit): each job runs in its own savepoint, so a
//! failed job rolls back alone, and every job is answered only after the commit is durable.
//!
//! Durability is pipelined: the writer commits without waiting for the disk (WAL with
//! `synchronous=NORMAL`) and hands the group to a syncer thread, which `fdatasync`s the WAL
//! file and only then answers the group's callers. One fsync covers every group committed
//! before it, and the writer runs the next group meanwhile. This is exactly the guarantee of
//! `synchronous=FULL` (the WAL is on disk before a commit is acknowledged), without the writer
//! idling through each fsync.

use chronicle_kernel::StoreError;
use r2d2_sqlite::rusqlite::Connection;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};

/// Most jobs in one transaction: bounds the latency a large group adds to its first job.
const MAX_GROUP: usize = 512;

trait Job: Send {
    /// Runs the job in the open group transaction. False if the job may have left partial
    /// writes behind (its savepoint could not be rolled back): the group must not commit.
    fn run(&mut self, conn: &Connection) -> bool;
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

struct TypedJob<T, E, F> {
    f: Option<F>,
    /// False for jobs that check before they write, so they fail before changing anything
    /// but for a database error, which then spoils the whole group (see `run_group`).
    savepoint: bool,
    result: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> Job for TypedJob<T, E, F>
where
    T: Send,
    E: From<StoreError> + Send,
    F: FnOnce(&Connection) -> Result<T, E> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return true;
        };
        if !self.savepoint {
            // Without a savepoint a job that fails after changing anything can't be undone
            // alone: the group must not commit.
            let before = conn.total_changes();
            let r = f(conn);
            let sound = r.is_ok() || conn.total_changes() == before;
            self.result = Some(r);
            return sound;
        }
        if let Err(e) = conn
            .prepare_cached("SAVEPOINT job")
            .and_then(|mut s| s.execute([]))
        {
            self.result = Some(Err(backend(e).into()));
            return true;
        }
        let r = f(conn);
        if r.is_ok() {
            let released = run_cached(conn, "RELEASE job");
            let sound = released.is_ok();
            self.result = Some(released.map_err(|e| backend(e).into()).and(r));
            return sound;
        }
        let undone =
            run_cached(conn, "ROLLBACK TO job").and_then(|()| run_cached(conn, "RELEASE job"));
        self.result = Some(r);
        undone.is_ok()
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let out = match (commit, self.result) {
            (Ok(()), Some(r)) => r,
            // A job that failed on its own says why, even if the group's commit failed too.
            (Err(_), Some(Err(e))) => Err(e),
            (Err(e), _) => Err(e.into()),
            (Ok(()), None) => Err(StoreError::Backend("job was not run".into()).into()),
        };
        // The caller may have gone away (timeout, dropped request): nothing to tell then.
        let _ = self.reply.send(out);
    }
}

/// Jobs waiting for the writer; past this, callers wait (backpressure, bounded memory).
const QUEUE: usize = 4096;

type Queue = tokio::sync::mpsc::Sender<Box<dyn Job>>;

pub(crate) struct Writer {
    tx: Mutex<Option<Queue>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Why writes are refused once `tx` is gone.
    refusal: &'static str,
}

fn run_cached(conn: &Connection, sql: &str) -> r2d2_sqlite::rusqlite::Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
}

pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Writer {
    /// Starts the writer thread. `wal` is the database's write-ahead log, which the syncer
    /// flushes; after every durable commit `head` gets the feed's newest position.
    pub(crate) fn spawn(conn: Connection, wal: PathBuf, head: watch::Sender<u64>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel::<Box<dyn Job>>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("chronicle-writer".into())
            .spawn(move || run(conn, rx, wal, head))
            .expect("spawning the writer thread");
        Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            refusal: "the store is closed",
        }
    }

    /// A writer that refuses every job: the store was opened read-only.
    pub(crate) fn none() -> Self {
        Self {
            tx: Mutex::new(None),
            thread: Mutex::new(None),
            refusal: "the store was opened read-only",
        }
    }

    /// Runs `f` inside the next group transaction, in a savepoint of its own so an `Err`
    /// undoes exactly its writes; resolves after the commit.
    pub(crate) async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        self.submit(f, true).await
    }

    /// Like `write` for a job that makes all its checks before its first change, so it
    /// needs no savepoint: if it fails after changing something (a database error), the
    /// whole group is rolled back and every job in it is told so.
    pub(crate) async fn write_checked<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        self.submit(f, false).await
    }

    async fn submit<T, E, F>(&self, f: F, savepoint: bool) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(TypedJob {
            f: Some(f),
            savepoint,
            result: None,
            reply,
        });
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let sent = match tx {
            Some(tx) => tx.send(job).await.is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::Backend(self.refusal.into()).into());
        }
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Backend("the writer stopped".into()).into()))
    }

    /// Stops accepting jobs, lets queued ones finish, and waits for the thread.
    pub(crate) fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs every job of a group in the open transaction and commits it. If SQLite rolled the
/// whole transaction back under a job (disk full, I/O error), or a job's savepoint could not
/// be undone, nothing of the group is kept and every job is told so: jobs after that point
/// must not run in autocommit mode and be stored while reported failed.
fn run_group(conn: &Connection, jobs: &mut [Box<dyn Job>]) -> Result<u64, StoreError> {
    let rollback = |e: StoreError| {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        e
    };
    for job in jobs.iter_mut() {
        let sound = job.run(conn);
        if !sound || conn.is_autocommit() {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            return Err(backend(
                "the group transaction was rolled back (disk full or I/O error)",
            ));
        }
    }
    // Read inside the transaction: after COMMIT another process may already have appended.
    let position = last_position(conn).map_err(rollback)?;
    run_cached(conn, "COMMIT").map_err(|e| rollback(backend(e)))?;
    Ok(position)
}

/// The newest event's position (the feed's head) as `conn` sees it; 0 if there is none.
pub(crate) fn last_position(conn: &Connection) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT COALESCE(MAX(position), 0) FROM events")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        .map(|p| p as u64)
        .map_err(backend)
}

/// A committed (or failed) group on its way to its callers, with the feed head after it.
type Done = (Vec<Box<dyn Job>>, Result<(), StoreError>, Option<u64>);

/// Makes committed groups durable and answers their callers.
fn sync(
    done: mpsc::Receiver<Done>,
    wal: PathBuf,
    head: watch::Sender<u64>,
    poisoned: Arc<AtomicBool>,
) {
    let mut file: Option<std::fs::File> = None;
    // After a failed fsync the kernel may have dropped the pages it could not write, so a
    // later fsync proves nothing: every later commit is refused until a restart recovers.
    let mut failure: Option<StoreError> = None;
    while let Ok(first) = done.recv() {
        let mut groups = vec![first];
        while let Ok(more) = done.try_recv() {
            groups.push(more);
        }
        let flushed = match &failure {
            Some(e) => Err(e.clone()),
            None if groups.iter().any(|(_, commit, _)| commit.is_ok()) => flush(&mut file, &wal),
            None => Ok(()),
        };
        if let (Err(e), None) = (&flushed, &failure) {
            tracing::error!(error = %e, "the write-ahead log could not be flushed; refusing writes until restart");
            poisoned.store(true, Ordering::SeqCst);
            failure = Some(e.clone());
        }
        for (jobs, commit, position) in groups {
            let outcome = commit.and_then(|()| flushed.clone());
            for job in jobs {
                job.finish(outcome.clone());
            }
            if let (Ok(()), Some(pos)) = (&outcome, position) {
                head.send_if_modified(|h| {
                    let changed = *h < pos;
                    *h = (*h).max(pos);
                    changed
                });
            }
        }
    }
}

fn flush(file: &mut Option<std::fs::File>, wal: &PathBuf) -> Result<(), StoreError> {
    if file.is_none() {
        // Opened on first use: SQLite creates the log with the first write transaction.
        let f = std::fs::File::open(wal)
            .map_err(|e| backend(format!("opening {}: {e}", wal.display())))?;
        *file = Some(f);
    }
    match file.as_ref() {
        Some(f) => f
            .sync_data()
            .map_err(|e| backend(format!("flushing {}: {e}", wal.display()))),
        None => Err(backend("no write-ahead log")),
    }
}

fn run(
    conn: Connection,
    mut rx: tokio::sync::mpsc::Receiver<Box<dyn Job>>,
    wal: PathBuf,
    head: watch::Sender<u64>,
) {
    let (done, done_rx) = mpsc::channel::<Done>();
    let poisoned = Arc::new(AtomicBool::new(false));
    let poison = poisoned.clone();
    let syncer = match std::thread::Builder::new()
        .name("chronicle-sync".into())
        .spawn(move || sync(done_rx, wal, head, poison))
    {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the syncer thread; the store is closed");
            return;
        }
    };
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if poisoned.load(Ordering::SeqCst) {
            for job in jobs {
                job.finish(Err(backend("an earlier fsync failed; restart the store")));
            }
            continue;
        }
        // Cached statements: parsing these three per group showed in profiles.
        let group = match run_cached(&conn, "BEGIN IMMEDIATE") {
            Ok(()) => run_group(&conn, &mut jobs),
            Err(e) => Err(backend(e)),
        };
        if let Err(e) = &group {
            tracing::error!(error = %e, jobs = jobs.len(), "group commit failed");
        }
        let position = group.as_ref().ok().copied();
        let commit = group.map(|_| ());
        if let Err(mpsc::SendError((jobs, _, _))) = done.send((jobs, commit, position)) {
            // The syncer is gone (it panicked): durability can't be confirmed, so say so.
            for job in jobs {
                job.finish(Err(backend("the syncer stopped")));
            }
        }
    }
    drop(done);
    let _ = syncer.join();
    // Closing: fold the WAL into the database so the next open starts from a short log.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "final checkpoint failed; the WAL is replayed on next open");
    }
}
