//! Idempotency records in the `idempotency` table, and their expiry. A record counts until its
//! `expires_at` (epoch seconds, set by the kernel): reads skip expired rows and an append may
//! replace one, so the boundary is exact whether or not the row is gone yet. A pruner thread
//! deletes expired rows in small batches through the writer, so the table stays bounded.

use crate::writer::backend;
use crate::EmbeddedStore;
use chronicle_kernel::envelope::{format_timestamp, parse_timestamp};
use chronicle_kernel::{AppendError, IdempotencyRecord, StoreError, StreamId};
use chrono::{DateTime, Utc};
use r2d2_sqlite::rusqlite::{params, Connection, OptionalExtension};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

/// Rows one prune job deletes at most: each job is one short turn of the writer, so appends
/// queued meanwhile wait for a few milliseconds at most.
pub const PRUNE_BATCH: usize = 500;

/// How often the pruner looks for expired rows unless told otherwise.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Run on every open, after the column migrations: the expiry index, and an expiry for rows
/// written before records expired (0): the default retention after they were recorded,
/// computed as the kernel does ([`IdempotencyRecord::expiry`]), in one transaction.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS idempotency_by_expiry ON idempotency (expires_at)",
    )
    .map_err(backend)?;
    let legacy = conn
        .prepare("SELECT 1 FROM idempotency WHERE expires_at = 0 LIMIT 1")
        .and_then(|mut s| s.exists([]))
        .map_err(backend)?;
    if !legacy {
        return Ok(());
    }
    let fill = || -> r2d2_sqlite::rusqlite::Result<usize> {
        let mut read =
            conn.prepare("SELECT key, recorded_at FROM idempotency WHERE expires_at = 0")?;
        let rows = read
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut write = conn.prepare("UPDATE idempotency SET expires_at = ?2 WHERE key = ?1")?;
        let retention = chronicle_kernel::DEFAULT_IDEMPOTENCY_RETENTION;
        for (key, at) in &rows {
            // Unreadable (never written so): expired, and not looked at again.
            let expires = parse_timestamp(at)
                .map(|t| IdempotencyRecord::expiry(t, retention).timestamp())
                .unwrap_or(1);
            write.execute(params![key, expires])?;
        }
        Ok(rows.len())
    };
    conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
    match fill() {
        Ok(n) => {
            conn.execute_batch("COMMIT").map_err(backend)?;
            tracing::info!(
                rows = n,
                "idempotency records from before expiry now expire after the default retention"
            );
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(backend(e))
        }
    }
}

/// A record's columns, encoded on the caller's thread.
pub(crate) struct IdempotencyRow {
    pub(crate) key: String,
    stream: StreamId,
    fingerprint: String,
    response: String,
    recorded_at: String,
    /// Epoch seconds, like the expiry it is compared with.
    recorded_secs: i64,
    expires_at: i64,
}

impl IdempotencyRow {
    pub(crate) fn of(r: &IdempotencyRecord) -> Self {
        Self {
            key: r.key.clone(),
            stream: r.stream.clone(),
            fingerprint: r.fingerprint.clone(),
            response: r.response.to_string(),
            recorded_at: format_timestamp(&r.recorded_at),
            recorded_secs: r.recorded_at.timestamp(),
            expires_at: r.expires_at_secs(),
        }
    }
}

/// Whether a record under the row's key is live at the row's recorded time: then the append
/// is refused. An expired row, pruned or not, leaves the key free.
pub(crate) fn check_free(conn: &Connection, row: &IdempotencyRow) -> Result<(), AppendError> {
    let taken = conn
        .prepare_cached("SELECT 1 FROM idempotency WHERE key = ?1 AND expires_at > ?2")
        .and_then(|mut s| s.exists(params![row.key, row.recorded_secs]))
        .map_err(backend)?;
    if taken {
        return Err(AppendError::DuplicateIdempotencyKey(row.key.clone()));
    }
    Ok(())
}

/// Stores the row, replacing an expired one under its key ([`check_free`] ran first).
pub(crate) fn insert(conn: &Connection, row: &IdempotencyRow) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO idempotency \
         (key, fingerprint, aggregate_type, aggregate_id, response, recorded_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            row.key,
            row.fingerprint,
            row.stream.aggregate_type,
            row.stream.aggregate_id,
            row.response,
            row.recorded_at,
            row.expires_at,
        ])
    })
    .map_err(backend)?;
    Ok(())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("idempotency record {what}: {e}"))
}

/// The record under `key` if it is live at `now`.
pub(crate) fn read(
    conn: &Connection,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT fingerprint, aggregate_type, aggregate_id, response, recorded_at, expires_at \
             FROM idempotency WHERE key = ?1 AND expires_at > ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![key, now.timestamp()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .optional()
        })
        .map_err(backend)?;
    let Some((fingerprint, t, id, response, at, expires)) = row else {
        return Ok(None);
    };
    Ok(Some(IdempotencyRecord {
        key: key.to_owned(),
        fingerprint,
        stream: StreamId::new(t, id),
        response: serde_json::from_str(&response).map_err(|e| corrupt("response", e))?,
        recorded_at: parse_timestamp(&at).map_err(|e| corrupt("recorded_at", e))?,
        expires_at: DateTime::from_timestamp(expires, 0)
            .ok_or_else(|| corrupt("expires_at", expires))?,
    }))
}

/// Deletes up to `limit` rows expired at `now` (epoch seconds); how many it deleted.
fn delete_expired(conn: &Connection, now: i64, limit: usize) -> Result<usize, StoreError> {
    conn.prepare_cached(
        "DELETE FROM idempotency WHERE key IN \
         (SELECT key FROM idempotency WHERE expires_at <= ?1 LIMIT ?2)",
    )
    .and_then(|mut s| s.execute(params![now, i64::try_from(limit).unwrap_or(i64::MAX)]))
    .map_err(backend)
}

impl EmbeddedStore {
    /// Deletes the idempotency records expired by now, `batch` rows per writer job so appends
    /// are not held up behind one long delete; returns how many went. The pruner thread calls
    /// it every [`PRUNE_EVERY`]; expired rows count as absent either way.
    pub async fn prune_idempotency(&self, batch: usize) -> Result<u64, StoreError> {
        let now = Utc::now().timestamp();
        let batch = batch.max(1);
        // Looked for on a reader first: no writer turn at all while nothing has expired.
        let any = self
            .read(move |conn| {
                conn.prepare_cached("SELECT 1 FROM idempotency WHERE expires_at <= ?1 LIMIT 1")
                    .and_then(|mut s| s.exists([now]))
                    .map_err(backend)
            })
            .await?;
        if !any {
            return Ok(0);
        }
        let mut total = 0u64;
        loop {
            let n = self
                .writer
                .write(move |conn| delete_expired(conn, now, batch))
                .await?;
            total += n as u64;
            if n < batch {
                return Ok(total);
            }
        }
    }

    /// How often the pruner runs from now on (tests make it quick).
    pub fn set_prune_interval(&self, every: Duration) {
        self.pruner.set_interval(every);
    }
}

/// The thread that prunes expired idempotency records now and then. It holds the store weakly:
/// a dropped store ends it.
#[derive(Default)]
pub(crate) struct Pruner {
    state: Arc<PrunerState>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct PrunerState {
    control: Mutex<Control>,
    wake: Condvar,
}

#[derive(Default)]
struct Control {
    stopped: bool,
    /// Between runs; `None`: [`PRUNE_EVERY`].
    every: Option<Duration>,
    /// Bumped by every change of `every`, so a wait under the old interval starts over.
    changes: u64,
}

impl PrunerState {
    /// Sleeps one interval; false once stopped.
    fn wait(&self) -> bool {
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if control.stopped {
                return false;
            }
            let (seen, every) = (control.changes, control.every.unwrap_or(PRUNE_EVERY));
            let (next, timeout) = self
                .wake
                .wait_timeout_while(control, every, |c| !c.stopped && c.changes == seen)
                .unwrap_or_else(|p| p.into_inner());
            control = next;
            if timeout.timed_out() {
                return true;
            }
        }
    }
}

impl Pruner {
    pub(crate) fn start(store: &Arc<EmbeddedStore>) -> Result<(), StoreError> {
        let weak: Weak<EmbeddedStore> = Arc::downgrade(store);
        let state = store.pruner.state.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(backend)?;
        let thread = std::thread::Builder::new()
            .name("chronicle-prune".into())
            .spawn(move || {
                while state.wait() {
                    let Some(store) = weak.upgrade() else { break };
                    match rt.block_on(store.prune_idempotency(PRUNE_BATCH)) {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(rows = n, "pruned expired idempotency records"),
                        Err(e) => {
                            tracing::warn!(error = %e, "pruning idempotency records failed; retrying later")
                        }
                    }
                    // Outside the runtime: if this was the last handle, the store closes here.
                    drop(store);
                }
            })
            .map_err(backend)?;
        *store
            .pruner
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(())
    }

    fn set_interval(&self, every: Duration) {
        let mut control = self.state.control.lock().unwrap_or_else(|p| p.into_inner());
        control.every = Some(every.max(Duration::from_millis(1)));
        control.changes += 1;
        self.state.wake.notify_all();
    }

    /// Stops the thread and waits for its current run.
    pub(crate) fn close(&self) {
        self.state
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopped = true;
        self.state.wake.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            // The store may be dropped on the pruner's own thread; it can't wait for itself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Pruner {
    fn drop(&mut self) {
        self.close();
    }
}
