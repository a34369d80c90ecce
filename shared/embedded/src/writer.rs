//! One writer thread owns the only writing connection. Jobs queued while a commit is in
//! flight share the next transaction (group commit): each job runs in its own savepoint, so a
//! failed job rolls back alone, and every job is answered only after the commit is durable.

use chronicle_kernel::StoreError;
use r2d2_sqlite::rusqlite::Connection;
use std::sync::mpsc;
use std::sync::Mutex;
use tokio::sync::{oneshot, watch};

/// Most jobs in one transaction: bounds the latency a large group adds to its first job.
const MAX_GROUP: usize = 512;

trait Job: Send {
    fn run(&mut self, conn: &Connection);
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

struct TypedJob<T, E, F> {
    f: Option<F>,
    /// False for jobs of one statement, which SQLite already applies whole or not at all.
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
    fn run(&mut self, conn: &Connection) {
        let Some(f) = self.f.take() else { return };
        if !self.savepoint {
            self.result = Some(f(conn));
            return;
        }
        if let Err(e) = conn
            .prepare_cached("SAVEPOINT job")
            .and_then(|mut s| s.execute([]))
        {
            self.result = Some(Err(backend(e).into()));
            return;
        }
        let r = f(conn);
        let end = if r.is_ok() {
            run_cached(conn, "RELEASE job")
        } else {
            run_cached(conn, "ROLLBACK TO job").and_then(|()| run_cached(conn, "RELEASE job"))
        };
        self.result = Some(match end {
            Ok(()) => r,
            Err(e) => Err(backend(e).into()),
        });
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

pub(crate) struct Writer {
    tx: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn run_cached(conn: &Connection, sql: &str) -> r2d2_sqlite::rusqlite::Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
}

pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Writer {
    /// Starts the writer thread. After every commit `head` gets the feed's newest position.
    pub(crate) fn spawn(conn: Connection, head: watch::Sender<u64>) -> Self {
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let thread = std::thread::Builder::new()
            .name("chronicle-writer".into())
            .spawn(move || run(conn, rx, head))
            .expect("spawning the writer thread");
        Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
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

    /// Like `write` for a job that changes the database with at most one statement (which
    /// SQLite applies atomically), so it needs no savepoint.
    pub(crate) async fn write_one<T, E, F>(&self, f: F) -> Result<T, E>
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
        let sent = {
            let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(tx) => tx.send(job).is_ok(),
                None => false,
            }
        };
        if !sent {
            return Err(StoreError::Backend("the store is closed".into()).into());
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

fn run(conn: Connection, rx: mpsc::Receiver<Box<dyn Job>>, head: watch::Sender<u64>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let commit = match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {
                for job in jobs.iter_mut() {
                    job.run(&conn);
                }
                match conn.execute_batch("COMMIT") {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let _ = conn.execute_batch("ROLLBACK");
                        Err(backend(e))
                    }
                }
            }
            Err(e) => Err(backend(e)),
        };
        if let Err(e) = &commit {
            tracing::error!(error = %e, jobs = jobs.len(), "group commit failed");
        }
        let ok = commit.is_ok();
        for job in jobs {
            job.finish(commit.clone());
        }
        if ok {
            if let Ok(pos) =
                conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| {
                    r.get::<_, i64>(0)
                })
            {
                head.send_if_modified(|h| {
                    let changed = *h != pos as u64;
                    *h = pos as u64;
                    changed
                });
            }
        }
    }
    // Closing: fold the WAL into the database so the next open starts from a short log.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "final checkpoint failed; the WAL is replayed on next open");
    }
}
