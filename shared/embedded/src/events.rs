//! The event store on SQLite (`EventStore`): a command's events, their stream links and head,
//! and its idempotency record go in one transaction of the writer thread (writer.rs), after
//! every check, so a command is stored whole or not at all; streams are read along their
//! chains (heads.rs), the audit feed by recorded time on `events_by_recorded`.

use crate::heads::{self, read_chain, Head, MARK_EVERY};
use crate::idempotency;
use crate::schema::EVENT_COLUMNS;
use crate::store::{EmbeddedStore, DB_FILE};
use crate::verify;
use crate::writer::backend;
use crate::writer::{corrupt, to_i64};
use async_trait::async_trait;
use chronicle_kernel::envelope::{format_timestamp, parse_timestamp};
use chronicle_kernel::{
    AppendError, AppendRequest, BulkVerify, EventEnvelope, EventStore, IdempotencyRecord, Metadata,
    ReadRange, RecordedFeed, RecordedPage, StoreError, StoredHashes, StreamId, StreamListing,
    StreamPage,
};
use chrono::{DateTime, Utc};
use r2d2_sqlite::rusqlite::{params, Connection, OptionalExtension, Row};
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn event_from_row(row: &Row<'_>) -> Result<(u64, EventEnvelope), StoreError> {
    let get_str = |i: usize| -> Result<&str, StoreError> {
        row.get_ref(i)
            .and_then(|v| v.as_str().map_err(Into::into))
            .map_err(backend)
    };
    let position: i64 = row.get(0).map_err(backend)?;
    let version: i64 = row.get(4).map_err(backend)?;
    let schema_version: i64 = row.get(6).map_err(backend)?;
    let env = EventEnvelope {
        event_id: get_str(1)?.parse().map_err(|e| corrupt("event_id", e))?,
        aggregate_type: get_str(2)?.to_owned(),
        aggregate_id: get_str(3)?.to_owned(),
        version: version as u64,
        event_type: get_str(5)?.to_owned(),
        schema_version: u32::try_from(schema_version).map_err(|e| corrupt("schema_version", e))?,
        data: serde_json::from_str(get_str(7)?).map_err(|e| corrupt("data", e))?,
        metadata: serde_json::from_str::<Metadata>(get_str(8)?)
            .map_err(|e| corrupt("metadata", e))?,
        recorded_at: parse_timestamp(get_str(9)?).map_err(|e| corrupt("recorded_at", e))?,
        hash: get_str(10)?.to_owned(),
    };
    Ok((position as u64, env))
}

/// A stream read of at most this many events runs on the calling thread (`read_stream`).
const INLINE_EVENTS: u64 = 256;

/// An append, encoded into owned column values on the caller's thread, so the writer thread
/// only binds and runs SQL.
struct Encoded {
    stream: StreamId,
    expected_version: u64,
    rows: Vec<EventRow>,
    idempotency: Option<idempotency::IdempotencyRow>,
}

/// An event's columns (its stream's are in `Encoded`).
struct EventRow {
    event_id: String,
    version: i64,
    event_type: String,
    schema_version: u32,
    data: String,
    metadata: String,
    recorded_at: String,
    hash: String,
}

fn encode(req: &AppendRequest) -> Result<Encoded, AppendError> {
    let stream = &req.stream;
    let rows = req
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let want = req.expected_version + 1 + i as u64;
            if e.aggregate_type != stream.aggregate_type
                || e.aggregate_id != stream.aggregate_id
                || e.version != want
            {
                return Err(StoreError::Invalid(format!(
                    "event {} v{} does not continue {stream} at version {want}",
                    e.stream(),
                    e.version
                )));
            }
            if !e.data.is_object() {
                return Err(StoreError::Invalid(
                    "event data must be a JSON object".into(),
                ));
            }
            // The text the kernel hashed when it sealed the events, when it passed it on.
            let text = match req.stored.get(i) {
                Some(t) if req.stored.len() == req.events.len() => t.clone(),
                _ => chronicle_kernel::chain::StoredText::of(e),
            };
            Ok(EventRow {
                event_id: text.event_id,
                version: to_i64(e.version),
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                data: text.data,
                metadata: text.metadata,
                recorded_at: text.recorded_at,
                hash: e.hash.clone(),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let idempotency = req
        .idempotency
        .as_ref()
        .map(idempotency::IdempotencyRow::of);
    Ok(Encoded {
        stream: stream.clone(),
        expected_version: req.expected_version,
        rows,
        idempotency,
    })
}

/// Inserts one event after `prev` (its predecessor's position, 0 for version 1) with its link
/// and, every `MARK_EVERY` versions, a mark; returns its position.
fn insert_event(
    conn: &Connection,
    stream: &StreamId,
    row: &EventRow,
    prev: u64,
) -> Result<u64, StoreError> {
    // OR FAIL (here and below): a one-row insert fails before changing anything, so SQLite
    // can skip the statement journal it would keep for OR ABORT.
    conn.prepare_cached(&format!(
        "INSERT OR FAIL INTO events ({EVENT_COLUMNS}) \
         VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            row.event_id,
            stream.aggregate_type,
            stream.aggregate_id,
            row.version,
            row.event_type,
            row.schema_version,
            row.data,
            row.metadata,
            row.recorded_at,
            row.hash,
        ])
    })
    .map_err(backend)?;
    let position = conn.last_insert_rowid();
    conn.prepare_cached("INSERT OR FAIL INTO stream_links (position, prev) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![position, to_i64(prev)]))
        .map_err(backend)?;
    if (row.version as u64).is_multiple_of(MARK_EVERY) {
        conn.prepare_cached(
            "INSERT OR FAIL INTO stream_marks (aggregate_type, aggregate_id, version, position) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| {
            s.execute(params![
                stream.aggregate_type,
                stream.aggregate_id,
                row.version,
                position
            ])
        })
        .map_err(backend)?;
    }
    Ok(position as u64)
}

/// Appends the events (and the idempotency record). Every check comes before the first
/// write, so a refused append changes nothing and needs no savepoint (writer.rs `write_checked`).
/// The version check reads the head inside the writer's transaction, under SQLite's write
/// lock, so it is exact whatever other processes did; `heads::advance` checks it again as it
/// moves the head.
fn append_encoded(conn: &Connection, enc: &Encoded) -> Result<(), AppendError> {
    if let Some(idem) = &enc.idempotency {
        idempotency::check_free(conn, idem)?;
    }
    let head = heads::head(conn, &enc.stream)?;
    let actual = head.map_or(0, |h| h.version);
    if actual != enc.expected_version {
        return Err(AppendError::Conflict {
            stream: enc.stream.to_string(),
            expected: enc.expected_version,
            actual,
        });
    }
    let mut prev = head.map_or(0, |h| h.position);
    for row in &enc.rows {
        prev = insert_event(conn, &enc.stream, row, prev)?;
    }
    heads::advance(
        conn,
        &enc.stream,
        enc.expected_version,
        Head {
            version: enc.expected_version + enc.rows.len() as u64,
            position: prev,
        },
    )?;
    if let Some(idem) = &enc.idempotency {
        idempotency::insert(conn, idem)?;
    }
    Ok(())
}

/// A stream's events by scanning for them: for a chain that `chain_positions` could not walk.
/// (On a data directory from before the stream tables this is the old index's range scan.)
fn read_stream_by_scan(
    conn: &Connection,
    stream: &StreamId,
    range: &ReadRange,
) -> Result<Vec<EventEnvelope>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
             AND version >= ?3 AND version <= ?4 ORDER BY version LIMIT ?5"
        ))
        .map_err(backend)?;
    let mut rows = stmt
        .query(params![
            stream.aggregate_type,
            stream.aggregate_id,
            to_i64(range.from_version),
            range.to_version.map_or(i64::MAX, to_i64),
            range.limit.map_or(-1, |l| to_i64(l as u64)),
        ])
        .map_err(backend)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        out.push(event_from_row(row)?.1);
    }
    Ok(out)
}

/// One page of the audit feed after a key, on `events_by_recorded` (a unit test checks the plan).
fn read_recorded_sql() -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE (recorded_at, aggregate_type, aggregate_id, version) > (?1, ?2, ?3, ?4) \
           AND recorded_at <= ?5 \
         ORDER BY recorded_at, aggregate_type, aggregate_id, version LIMIT ?6"
    )
}

/// A position in the audit feed: the sort key of the last event returned, with the time as
/// stored (fixed-width RFC 3339, so text order is time order).
type RecordedKey = (String, String, String, u64);

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn append(&self, request: &AppendRequest) -> Result<(), AppendError> {
        if request.events.is_empty() {
            return Err(StoreError::Invalid("an append needs at least one event".into()).into());
        }
        let enc = encode(request)?;
        self.writer
            .write_checked(move |conn| append_encoded(conn, &enc))
            .await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: ReadRange,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let stream = stream.clone();
        let scans = self.scans.clone();
        let key = stream.clone();
        let read = move |conn: &Connection, head: Option<Head>| {
            let Some(head) = head else {
                return Ok(Vec::new());
            };
            let (from, to) = range.versions(head.version);
            if from > to {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position = ?1");
            if read_chain(conn, &stream, head, from..=to, &sql, &scans, |row| {
                out.push(event_from_row(row)?.1);
                Ok(())
            })? {
                return Ok(out);
            }
            read_stream_by_scan(conn, &stream, &range)
        };
        // What a command's load reads (the events after a snapshot) is short: read it here.
        if let Some(conn) = self.readers.try_get() {
            let head = heads::head(&conn, &key)?;
            let short = head.is_none_or(|h| {
                let (from, to) = range.versions(h.version);
                to.saturating_sub(from) < INLINE_EVENTS
            });
            if short {
                return read(&conn, head);
            }
        }
        self.read(move |conn| {
            let head = heads::head(conn, &key)?;
            read(conn, head)
        })
        .await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let stream = stream.clone();
        self.read_short(move |conn| Ok(heads::head(conn, &stream)?.map_or(0, |h| h.version)))
            .await
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let record = self.read_idempotency_record(key).await?;
        if record.is_some() {
            // A commit is readable a moment before its fsync: answer a repeat only once the
            // original is durable, by waiting for a (no-op) write, which is answered after
            // an fsync that covers every earlier commit.
            self.writer
                .write_checked(|_| Ok::<(), StoreError>(()))
                .await?;
        }
        Ok(record)
    }
}

#[async_trait]
impl StoredHashes for EmbeddedStore {
    async fn hashes_at(&self, at: &[(StreamId, u64)]) -> Result<Vec<Option<String>>, StoreError> {
        let at = at.to_vec();
        let scans = self.scans.clone();
        // One job on one connection rather than a round trip per event.
        self.read(move |conn| {
            let mut by_scan = conn
                .prepare_cached(
                    "SELECT hash FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
                     AND version = ?3",
                )
                .map_err(backend)?;
            at.iter()
                .map(|(s, v)| {
                    let Some(head) = heads::head(conn, s)?.filter(|h| (1..=h.version).contains(v))
                    else {
                        return Ok(None);
                    };
                    let mut hash = None;
                    let sql = "SELECT aggregate_type, aggregate_id, version, hash FROM events \
                               WHERE position = ?1";
                    if read_chain(conn, s, head, *v..=*v, sql, &scans, |row| {
                        hash = Some(row.get::<_, String>("hash").map_err(backend)?);
                        Ok(())
                    })? {
                        return Ok(hash);
                    }
                    by_scan
                        .query_row(params![s.aggregate_type, s.aggregate_id, to_i64(*v)], |r| {
                            r.get::<_, String>(0)
                        })
                        .optional()
                        .map_err(backend)
                })
                .collect()
        })
        .await
    }
}

/// One pass over the whole events table in position order (verify.rs), on a thread of its own.
#[async_trait]
impl BulkVerify for EmbeddedStore {
    async fn verify_all_chains(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<chronicle_kernel::chain::VerifyReport, StoreError> {
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let db = self.dir.join(DB_FILE);
        let counter = done.clone();
        let mut job =
            tokio::task::spawn_blocking(move || verify::verify_all_blocking(&db, &counter));
        loop {
            tokio::select! {
                r = &mut job => {
                    return r.map_err(backend).and_then(|r| r);
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    progress(done.load(std::sync::atomic::Ordering::Relaxed));
                }
            }
        }
    }
}

#[async_trait]
impl StreamListing for EmbeddedStore {
    async fn list_streams(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<StreamPage, StoreError> {
        // Keyset pagination over the stream heads: the cursor is the last stream.
        let after: (String, String) = match cursor {
            Some(c) => serde_json::from_str(&c)
                .map_err(|e| StoreError::Invalid(format!("stream cursor `{c}`: {e}")))?,
            None => (String::new(), String::new()),
        };
        let limit = limit.max(1);
        self.read(move |conn| {
            let streams = heads::streams_after(conn, &StreamId::new(after.0, after.1), limit)?;
            let next = match streams.last() {
                Some(last) if streams.len() == limit => Some(
                    serde_json::to_string(&(&last.aggregate_type, &last.aggregate_id))
                        .map_err(backend)?,
                ),
                _ => None,
            };
            Ok(StreamPage { streams, next })
        })
        .await
    }
}

#[async_trait]
impl RecordedFeed for EmbeddedStore {
    async fn read_recorded(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<String>,
        limit: usize,
    ) -> Result<RecordedPage, StoreError> {
        if limit == 0 {
            return Err(StoreError::Invalid(
                "a page holds at least one event".into(),
            ));
        }
        let (from, to) = (format_timestamp(&from), format_timestamp(&to));
        // Keyset pagination on `events_by_recorded`, after the cursor or from the range's start
        // (versions start at 1, so every event at `from` sorts after this key). One lower
        // bound only: given `recorded_at >= from` as well, SQLite seeks by that and scans.
        let start: RecordedKey = (from, String::new(), String::new(), 0);
        let after = match after {
            Some(c) => {
                let key: RecordedKey = serde_json::from_str(&c)
                    .map_err(|e| StoreError::Invalid(format!("audit cursor `{c}`: {e}")))?;
                key.max(start)
            }
            None => start,
        };
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&read_recorded_sql()).map_err(backend)?;
            // One more than a page: whether another page follows is then known exactly.
            let mut rows = stmt
                .query(params![
                    after.0,
                    after.1,
                    after.2,
                    to_i64(after.3),
                    to,
                    to_i64(limit as u64 + 1)
                ])
                .map_err(backend)?;
            let mut events = Vec::with_capacity(limit.min(1024) + 1);
            while let Some(row) = rows.next().map_err(backend)? {
                events.push(event_from_row(row)?.1);
            }
            let next = if events.len() > limit {
                events.truncate(limit);
                events
                    .last()
                    .map(|e| {
                        serde_json::to_string(&(
                            format_timestamp(&e.recorded_at),
                            &e.aggregate_type,
                            &e.aggregate_id,
                            e.version,
                        ))
                    })
                    .transpose()
                    .map_err(backend)?
            } else {
                None
            };
            Ok(RecordedPage { events, next })
        })
        .await
    }
}

impl EmbeddedStore {
    async fn read_idempotency_record(
        &self,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = key.to_owned();
        self.read_short(move |conn| idempotency::read(conn, &key, Utc::now()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("a plan");
        let rows = stmt
            .query_map(params!["a", "b", "c", 1, "d", 10], |r| {
                r.get::<_, String>(3)
            })
            .expect("plan rows");
        rows.map(|r| r.expect("a plan row")).collect()
    }

    /// The audit feed seeks in its index to the cursor and reads on in order: no sort, and no
    /// scan from the range's start (which would make page n cost n pages).
    #[test]
    fn the_audit_feed_reads_its_index_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("store");
        store.close();
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("db");
        let steps = plan(&conn, &read_recorded_sql());
        assert!(
            steps.iter().any(|s| {
                s.contains(
                "USING INDEX events_by_recorded ((recorded_at,aggregate_type,aggregate_id,version)>"
            )
            }),
            "{steps:?}"
        );
        assert!(
            !steps.iter().any(|s| s.contains("TEMP B-TREE")),
            "pages must not be sorted: {steps:?}"
        );
    }
}
