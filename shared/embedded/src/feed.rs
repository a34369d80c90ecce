//! The event feed (`EventFeed`): every event in position order, which projections and the
//! publisher follow; what a replay from the archive still has to read of one aggregate type
//! (`read_tails`); and whole replays, read on two threads. The DynamoDB store keeps its feed in
//! events.rs; here it is big enough for a file of its own.

use crate::events::event_from_row;
use crate::heads::{self, read_chain};
use crate::schema::EVENT_COLUMNS;
use crate::writer::{backend, last_position};
use crate::writer::{corrupt, to_i64};
use crate::EmbeddedStore;
use async_trait::async_trait;
use chronicle_kernel::{
    BulkReplay, EventFeed, FeedEvent, RawBatch, RawEvent, StoreError, StreamId,
};
use r2d2_sqlite::rusqlite::{params, Connection, Row};
use r2d2_sqlite::SqliteConnectionManager;
use std::sync::Arc;
use std::time::Duration;

fn push_raw_event(batch: &mut RawBatch, row: &Row<'_>) -> Result<(), StoreError> {
    let text = |i: usize| -> Result<&str, StoreError> {
        row.get_ref(i)
            .and_then(|v| v.as_str().map_err(Into::into))
            .map_err(backend)
    };
    let version: i64 = row.get(1).map_err(backend)?;
    let schema_version: i64 = row.get(3).map_err(backend)?;
    batch.push(RawEvent {
        aggregate_id: text(0)?,
        version: version as u64,
        event_type: text(2)?,
        schema_version: u32::try_from(schema_version).map_err(|e| corrupt("schema_version", e))?,
        data: text(4)?,
    });
    Ok(())
}

/// Reads the feed up to its current head in two halves at once: this thread streams the first
/// half to the consumer while a second thread reads the second half ahead (buffered), so
/// reading, which costs more than folding, uses both cores.
fn replay_halves(
    pool: &r2d2::Pool<SqliteConnectionManager>,
    aggregate_type: &str,
    batch: usize,
    tx: &tokio::sync::mpsc::Sender<Result<RawBatch, StoreError>>,
) -> Result<(), StoreError> {
    let conn = pool.get().map_err(backend)?;
    let head = to_i64(last_position(&conn)?);
    let mid = head / 2;
    let (ahead_tx, ahead_rx) = std::sync::mpsc::channel::<Result<RawBatch, StoreError>>();
    let ahead = {
        let pool = pool.clone();
        let aggregate_type = aggregate_type.to_owned();
        std::thread::Builder::new()
            .name("chronicle-replay".into())
            .spawn(move || {
                let r = pool.get().map_err(backend).and_then(|conn| {
                    read_raw_range(&conn, &aggregate_type, mid, head, batch, |b| {
                        ahead_tx.send(Ok(b)).is_ok()
                    })
                });
                if let Err(e) = r {
                    let _ = ahead_tx.send(Err(e));
                }
            })
            .map_err(backend)?
    };
    let mut open = true;
    read_raw_range(&conn, aggregate_type, 0, mid, batch, |b| {
        open = tx.blocking_send(Ok(b)).is_ok();
        open
    })?;
    drop(conn);
    if open {
        for b in ahead_rx.iter() {
            if tx.blocking_send(b).is_err() {
                break;
            }
        }
    }
    drop(ahead_rx); // stops the second reader if the consumer went away
    let _ = ahead.join();
    Ok(())
}

/// Raw events of one type with positions in `(after, to]`, in order, in batches; stops early
/// when `send` returns false.
fn read_raw_range(
    conn: &Connection,
    aggregate_type: &str,
    after: i64,
    to: i64,
    batch: usize,
    mut send: impl FnMut(RawBatch) -> bool,
) -> Result<(), StoreError> {
    // `+` keeps the planner on position order (data directories from before the stream
    // tables have a stream index, which would need a sort).
    let mut stmt = conn
        .prepare(
            "SELECT aggregate_id, version, event_type, schema_version, data FROM events \
             WHERE position > ?1 AND position <= ?2 AND +aggregate_type = ?3 ORDER BY position",
        )
        .map_err(backend)?;
    let mut rows = stmt
        .query(params![after, to, aggregate_type])
        .map_err(backend)?;
    let mut out = RawBatch::with_capacity(batch);
    while let Some(row) = rows.next().map_err(backend)? {
        push_raw_event(&mut out, row)?;
        if out.len() == batch && !send(std::mem::replace(&mut out, RawBatch::with_capacity(batch)))
        {
            return Ok(());
        }
    }
    if !out.is_empty() {
        send(out);
    }
    Ok(())
}

#[async_trait]
impl EventFeed for EmbeddedStore {
    async fn read_feed(&self, after: u64, limit: usize) -> Result<Vec<FeedEvent>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
                ))
                .map_err(backend)?;
            let mut rows = stmt
                .query(params![to_i64(after), to_i64(limit as u64)])
                .map_err(backend)?;
            let mut out = Vec::with_capacity(limit.min(4096));
            while let Some(row) = rows.next().map_err(backend)? {
                let (position, event) = event_from_row(row)?;
                out.push(FeedEvent { position, event });
            }
            Ok(out)
        })
        .await
    }

    async fn feed_head(&self) -> Result<u64, StoreError> {
        self.read(last_position).await
    }

    async fn wait_for_events(&self, after: u64, timeout: Duration) {
        let mut rx = self.head.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|h| *h > after)).await;
    }
}

/// Whole types in bulk, as stored text (replays, archived replays).
#[async_trait]
impl BulkReplay for EmbeddedStore {
    async fn read_tails(
        &self,
        aggregate_type: &str,
        after: Arc<std::collections::HashMap<String, u64>>,
    ) -> Result<RawBatch, StoreError> {
        let ty = aggregate_type.to_owned();
        let scans = self.scans.clone();
        // One job on one connection: each stream's tail along its chain, instead of a round
        // trip per stream.
        self.read(move |conn| {
            // `push_raw_event` reads the first five columns.
            let sql = "SELECT aggregate_id, version, event_type, schema_version, data, \
                       aggregate_type FROM events WHERE position = ?1";
            let mut batch = RawBatch::default();
            for (id, head) in heads::of_type(conn, &ty)? {
                let from = after.get(&id).copied().unwrap_or(0) + 1;
                if from > head.version {
                    continue;
                }
                let stream = StreamId::new(ty.clone(), id);
                let start = batch.len();
                let whole = read_chain(
                    conn,
                    &stream,
                    head,
                    from..=head.version,
                    sql,
                    &scans,
                    |row| push_raw_event(&mut batch, row),
                )?;
                if !whole {
                    batch.truncate(start);
                    let mut scan = conn
                        .prepare_cached(
                            "SELECT aggregate_id, version, event_type, schema_version, data \
                             FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
                             AND version >= ?3 ORDER BY version",
                        )
                        .map_err(backend)?;
                    let mut rows = scan
                        .query(params![ty, stream.aggregate_id, to_i64(from)])
                        .map_err(backend)?;
                    while let Some(row) = rows.next().map_err(backend)? {
                        push_raw_event(&mut batch, row)?;
                    }
                }
            }
            Ok(batch)
        })
        .await
    }

    fn replay_raw(
        &self,
        aggregate_type: &str,
        batch: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<RawBatch, StoreError>> {
        // A few batches in flight keep the readers and the consumer all busy.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let pool = self.readers.clone();
        let aggregate_type = aggregate_type.to_owned();
        let batch = batch.max(1);
        let spawned = std::thread::Builder::new()
            .name("chronicle-replay".into())
            .spawn(move || {
                if let Err(e) = replay_halves(&pool, &aggregate_type, batch, &tx) {
                    let _ = tx.blocking_send(Err(e));
                }
            });
        if let Err(e) = spawned {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx.try_send(Err(backend(e)));
            return rx;
        }
        rx
    }
}
