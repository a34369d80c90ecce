//! Streams without a per-event index: chains that SQLite itself keeps, and heads on disk.
//!
//! A b-tree index on (type, id, version) puts every appended event on a random leaf of an
//! index as large as the store, and each commit then writes a 4 KiB page to the WAL per event.
//! Instead a stream is a chain: `stream_links` gives each event's predecessor in its stream
//! (keyed by position, so appends land at its right edge), `stream_marks` holds every
//! `MARK_EVERY`th version as an entry point for reads deep in a long stream, and
//! `stream_heads` holds each stream's last version and position: one row per stream, not per
//! event, so a commit rewrites one small, hot page per stream it touches.
//!
//! The append moves the head in its own write transaction with a conditional write
//! ([`advance`]: `UPDATE ... WHERE version = expected`, `INSERT OR IGNORE` for a new stream),
//! and fails unless exactly one row changed. SQLite runs one write transaction at a time per
//! file, across processes, so a second store that bypassed the directory lock sees the first's
//! head and cannot store a version twice; nothing kept in memory is trusted. (Triggers doing the
//! same per inserted row also cover hand-written INSERTs, but cost appends 25-35% more CPU;
//! nothing but this code writes events.) A reader's snapshot sees the heads and the events they
//! point at together, and memory does not grow with the number of streams.

use crate::writer::backend;
use crate::writer::to_i64;
use chronicle_kernel::{StoreError, StreamId};
use r2d2_sqlite::rusqlite::{self, params, Connection, OptionalExtension, Row};

/// A mark every this many versions bounds a read's walk to the range asked plus this.
pub(crate) const MARK_EVERY: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub version: u64,
    pub position: u64,
}

/// A stream's head as `conn` sees it (inside the writer's transaction: exact).
pub(crate) fn head(conn: &Connection, stream: &StreamId) -> Result<Option<Head>, StoreError> {
    conn.prepare_cached(
        "SELECT version, position FROM stream_heads WHERE aggregate_type = ?1 AND aggregate_id = ?2",
    )
    .and_then(|mut s| {
        s.query_row(params![stream.aggregate_type, stream.aggregate_id], |r| {
            Ok(Head {
                version: r.get::<_, i64>(0)? as u64,
                position: r.get::<_, i64>(1)? as u64,
            })
        })
        .optional()
    })
    .map_err(backend)
}

/// Moves a stream's head from `expected` to `to`, or fails without writing if the stored head
/// is not at `expected`: the version check as SQLite enforces it, in the write transaction.
pub(crate) fn advance(
    conn: &Connection,
    stream: &StreamId,
    expected: u64,
    to: Head,
) -> Result<(), StoreError> {
    let changed = if expected == 0 {
        // The primary key refuses a second version 1 of a stream.
        conn.prepare_cached(
            "INSERT OR IGNORE INTO stream_heads (aggregate_type, aggregate_id, version, position) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| {
            s.execute(params![
                stream.aggregate_type,
                stream.aggregate_id,
                to.version as i64,
                to.position as i64
            ])
        })
    } else {
        conn.prepare_cached(
            "UPDATE stream_heads SET version = ?3, position = ?4 \
             WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND version = ?5",
        )
        .and_then(|mut s| {
            s.execute(params![
                stream.aggregate_type,
                stream.aggregate_id,
                to.version as i64,
                to.position as i64,
                expected as i64
            ])
        })
    }
    .map_err(backend)?;
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::Backend(format!(
            "{stream} is no longer at version {expected}"
        )))
    }
}

/// Up to `limit` streams after `after` (all types), in (type, id) order.
pub(crate) fn streams_after(
    conn: &Connection,
    after: &StreamId,
    limit: usize,
) -> Result<Vec<StreamId>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT aggregate_type, aggregate_id FROM stream_heads \
             WHERE (aggregate_type, aggregate_id) > (?1, ?2) \
             ORDER BY aggregate_type, aggregate_id LIMIT ?3",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(
            params![
                after.aggregate_type,
                after.aggregate_id,
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                Ok(StreamId::new(
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                ))
            },
        )
        .map_err(backend)?;
    rows.map(|r| r.map_err(backend)).collect()
}

/// Every stream of one type with its head, in id order.
pub(crate) fn of_type(
    conn: &Connection,
    aggregate_type: &str,
) -> Result<Vec<(String, Head)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT aggregate_id, version, position FROM stream_heads \
             WHERE aggregate_type = ?1 ORDER BY aggregate_id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([aggregate_type], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Head {
                    version: r.get::<_, i64>(1)? as u64,
                    position: r.get::<_, i64>(2)? as u64,
                },
            ))
        })
        .map_err(backend)?;
    rows.map(|r| r.map_err(backend)).collect()
}

/// The positions of a stream's events `from..=to` (versions, `to` at most its head), oldest
/// first: its chain walked back from the first mark at or after `to`, else from its head.
/// `None` if the chain breaks before `from` (rows removed or changed behind the store's
/// back); callers then read by scan, which finds whatever is left.
fn chain_positions(
    conn: &Connection,
    stream: &StreamId,
    head: Head,
    from: u64,
    to: u64,
) -> Result<Option<Vec<u64>>, StoreError> {
    let to = to.min(head.version);
    if from > to {
        return Ok(Some(Vec::new()));
    }
    if to == head.version {
        // A walk from the head: no mark to look for (the usual read, up to the head).
        return walk_back(conn, head.version, head.position, from, to);
    }
    let mark: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT version, position FROM stream_marks \
             WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND version >= ?3 \
             ORDER BY version LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row(
                params![stream.aggregate_type, stream.aggregate_id, to_i64(to)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
        .map_err(backend)?;
    let (version, position) = match mark {
        Some((v, p)) if (v as u64) < head.version => (v as u64, p as u64),
        _ => (head.version, head.position),
    };
    walk_back(conn, version, position, from, to)
}

/// The positions of versions `from..=to` of a chain, walked back from `version` at `position`
/// (at or after `to`); `None` if the chain breaks first.
fn walk_back(
    conn: &Connection,
    mut version: u64,
    mut position: u64,
    from: u64,
    to: u64,
) -> Result<Option<Vec<u64>>, StoreError> {
    let mut link = conn
        .prepare_cached("SELECT prev FROM stream_links WHERE position = ?1")
        .map_err(backend)?;
    let mut out = Vec::with_capacity((to - from + 1).min(1 << 16) as usize);
    loop {
        if version <= to {
            out.push(position);
        }
        if version == from {
            break;
        }
        let prev: Option<i64> = link
            .query_row([to_i64(position)], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        match prev {
            Some(p) if p > 0 => {
                position = p as u64;
                version -= 1;
            }
            _ => return Ok(None),
        }
    }
    out.reverse();
    Ok(Some(out))
}

/// Reads a stream's events `from..=to` along its chain: `sql` selects one event by position
/// (`?1`) with at least its `aggregate_type`, `aggregate_id` and `version`, and each row that is
/// the stream's event at the next version goes to `take`. False if the chain breaks or a row is
/// not the one expected (rows removed or changed behind the store's back): the caller then drops
/// what `take` kept and reads by scan; such reads are counted in `scans` and logged.
pub(crate) fn read_chain(
    conn: &Connection,
    stream: &StreamId,
    head: Head,
    versions: std::ops::RangeInclusive<u64>,
    sql: &str,
    scans: &std::sync::atomic::AtomicU64,
    mut take: impl FnMut(&Row<'_>) -> Result<(), StoreError>,
) -> Result<bool, StoreError> {
    let is_expected = |row: &Row<'_>, version: u64| -> rusqlite::Result<bool> {
        Ok(
            row.get_ref("aggregate_type")?.as_str()? == stream.aggregate_type
                && row.get_ref("aggregate_id")?.as_str()? == stream.aggregate_id
                && row.get::<_, i64>("version")? as u64 == version,
        )
    };
    let (from, to) = versions.into_inner();
    let mut whole = false;
    if let Some(positions) = chain_positions(conn, stream, head, from, to)? {
        let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
        whole = true;
        for (version, position) in (from..).zip(positions) {
            let mut rows = stmt.query([to_i64(position)]).map_err(backend)?;
            match rows.next().map_err(backend)? {
                Some(row) if is_expected(row, version).map_err(backend)? => take(row)?,
                _ => {
                    whole = false;
                    break;
                }
            }
        }
    }
    if !whole {
        scans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(%stream, "the stream's chain is broken (changed behind the store's back?); reading it by scan");
    }
    Ok(whole)
}

/// Brings `stream_heads` up to date for a data directory written when heads were kept in
/// memory and persisted only now and then (up to `heads_through`): the events after that
/// point, once, in the open transaction.
pub(crate) fn catch_up_persisted(conn: &Connection) -> Result<(), StoreError> {
    let exact: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM store_meta WHERE key = 'heads_exact'",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if exact {
        return Ok(());
    }
    let through: i64 = conn
        .query_row(
            "SELECT value FROM store_meta WHERE key = 'heads_through'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?
        .unwrap_or(0);
    // SQLite gives a bare column the values of the MAX() row of its group.
    conn.execute(
        "INSERT INTO stream_heads (aggregate_type, aggregate_id, version, position)
         SELECT aggregate_type, aggregate_id, MAX(version), position FROM events
         WHERE position > ?1 GROUP BY aggregate_type, aggregate_id
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
         SET version = excluded.version, position = excluded.position
         WHERE excluded.version > stream_heads.version",
        [through],
    )
    .map_err(backend)?;
    conn.execute_batch(
        "DELETE FROM store_meta WHERE key = 'heads_through';
         INSERT INTO store_meta (key, value) VALUES ('heads_exact', 1);",
    )
    .map_err(backend)
}
