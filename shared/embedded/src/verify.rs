//! Verifying every stream's hash chain at once (`BulkVerify::verify_all_chains`): one
//! sequential scan of the events table, hashed straight from the stored text on a second
//! thread, instead of a read per stream.

use crate::writer::backend;
use chronicle_kernel::{StoreError, StreamId};
use r2d2_sqlite::rusqlite::{self, params, Connection};
use std::path::Path;
use std::time::Duration;

/// Each stream's latest snapshot head, keyed by (type, id): what its chain must pass through.
type Pins = std::collections::HashMap<(String, String), (u64, String)>;

fn snapshot_pins(conn: &Connection) -> Result<Pins, StoreError> {
    // SQLite gives a bare column the values of the MAX() row of its group.
    let mut stmt = conn
        .prepare(
            "SELECT aggregate_type, aggregate_id, MAX(version), chain_head FROM snapshots \
             GROUP BY aggregate_type, aggregate_id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .map_err(backend)?;
    let mut pins = Pins::new();
    for row in rows {
        let (t, id, v, head) = row.map_err(backend)?;
        if let Some(head) = head {
            pins.insert((t, id), (v as u64, head));
        }
    }
    Ok(pins)
}

/// Verifies the chains of the streams in `[from, to)` (stream keys; `None`: unbounded), straight
/// from the stored text in stream order: no JSON is decoded, each row is hashed as stored.
/// Without a stream index this scans and sorts the table, so it only serves the rare streams
/// found stored out of version order (tampering) by `verify_all_blocking`.
fn verify_range(
    conn: &Connection,
    from: Option<&(String, String)>,
    to: Option<&(String, String)>,
    pins: &Pins,
    done: &std::sync::atomic::AtomicU64,
) -> Result<chronicle_kernel::chain::VerifyReport, StoreError> {
    use chronicle_kernel::chain::{CanonicalFields, ChainCheck, VerifyReport};
    let (lo_t, lo_id) = from.cloned().unwrap_or_default();
    let (hi_t, hi_id) = to.cloned().unwrap_or_default();
    let mut stmt = conn
        .prepare(
            "SELECT event_id, aggregate_type, aggregate_id, version, event_type, schema_version, \
                    data, metadata, recorded_at, hash FROM events \
             WHERE (aggregate_type, aggregate_id) >= (?1, ?2) \
               AND (?5 OR (aggregate_type, aggregate_id) < (?3, ?4)) \
             ORDER BY aggregate_type, aggregate_id, version",
        )
        .map_err(backend)?;
    let mut rows = stmt
        .query(params![lo_t, lo_id, hi_t, hi_id, to.is_none()])
        .map_err(backend)?;
    let mut report = VerifyReport::default();
    let mut check: Option<ChainCheck> = None;
    let finish = |check: ChainCheck, report: &mut VerifyReport| {
        report.add(check.finish());
        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    while let Some(row) = rows.next().map_err(backend)? {
        let text = |i: usize| -> Result<&str, StoreError> {
            row.get_ref(i)
                .and_then(|v| v.as_str().map_err(Into::into))
                .map_err(backend)
        };
        let (t, id) = (text(1)?, text(2)?);
        let same = check
            .as_ref()
            .is_some_and(|c| c.stream().aggregate_type == t && c.stream().aggregate_id == id);
        if !same {
            if let Some(c) = check.take() {
                finish(c, &mut report);
            }
            let pin = pins.get(&(t.to_owned(), id.to_owned())).cloned();
            check = Some(ChainCheck::new(StreamId::new(t, id)).pinned(pin));
        }
        let Some(c) = check.as_mut() else { continue };
        if c.is_broken() {
            continue;
        }
        let version: i64 = row.get(3).map_err(backend)?;
        let schema_version: i64 = row.get(5).map_err(backend)?;
        c.next(
            &CanonicalFields {
                event_id: text(0)?,
                aggregate_type: t,
                aggregate_id: id,
                version: version as u64,
                event_type: text(4)?,
                schema_version: schema_version as u32,
                data: text(6)?,
                metadata: text(7)?,
                recorded_at: text(8)?,
            },
            text(9)?,
        );
    }
    if let Some(c) = check.take() {
        finish(c, &mut report);
    }
    Ok(report)
}

/// A read-only connection for a whole-store scan in index order, which jumps from the index
/// to table pages row by row: memory-mapped, so those jumps are loads, not read() calls, and
/// without SQLite's per-call mutex since one thread uses it.
fn scan_connection(db: &Path) -> Result<Connection, StoreError> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(backend)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(backend)?;
    conn.execute_batch("PRAGMA mmap_size = 17179869184; PRAGMA cache_size = -65536;")
        .map_err(backend)?;
    Ok(conn)
}

/// Rows of the events table as stored, packed into one text buffer (a batch of the scan).
#[derive(Default)]
struct RowBatch {
    text: String,
    /// Per row: version, schema version, and the end of each of its 9 text fields in `text`.
    rows: Vec<(u64, u32, [usize; 9])>,
}

/// Both cores: this thread reads the events table in position (rowid) order, which is
/// sequential on disk, and a second thread recomputes the hashes, one chain per stream held in
/// memory. A stream's events are stored in version order, so position order is chain order;
/// a stream found out of order (a tampered version) is checked again in version order, so the
/// report is the one the stream-by-stream path gives. `done` counts streams seen.
pub(crate) fn verify_all_blocking(
    db: &Path,
    done: &std::sync::atomic::AtomicU64,
) -> Result<chronicle_kernel::chain::VerifyReport, StoreError> {
    use chronicle_kernel::chain::{CanonicalFields, ChainCheck, VerifyReport};
    use std::collections::HashMap;
    let conn = scan_connection(db)?;
    let pins = snapshot_pins(&conn)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<RowBatch>(4);
    let pins_ref = &pins;
    let (report, reorder) = std::thread::scope(|scope| {
        let checker = scope.spawn(move || {
            let mut checks: HashMap<String, ChainCheck> = HashMap::new();
            let mut scratch = String::new();
            let mut reorder: Vec<StreamId> = Vec::new();
            for batch in rx {
                let mut start = 0;
                for (version, schema_version, ends) in &batch.rows {
                    let (row_start, text, ends) = (start, &batch.text, *ends);
                    start = ends[8];
                    let f = move |k: usize| {
                        let from = if k == 0 { row_start } else { ends[k - 1] };
                        &text[from..ends[k]]
                    };
                    let (t, id) = (f(1), f(2));
                    // The key built in a reused buffer: an allocation only for a new stream.
                    scratch.clear();
                    scratch.push_str(t);
                    scratch.push('\0');
                    scratch.push_str(id);
                    if !checks.contains_key(scratch.as_str()) {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let pin = pins_ref.get(&(t.to_owned(), id.to_owned())).cloned();
                        let check = ChainCheck::new(StreamId::new(t, id)).pinned(pin);
                        checks.insert(scratch.clone(), check);
                    }
                    let Some(c) = checks.get_mut(scratch.as_str()) else {
                        continue;
                    };
                    if c.is_broken() {
                        continue;
                    }
                    if *version != c.head().0 + 1 {
                        // A version out of place: a version-order read reports it as the
                        // stream-by-stream path does (rare: only tampering does this).
                        reorder.push(c.stream().clone());
                    }
                    c.next(
                        &CanonicalFields {
                            event_id: f(0),
                            aggregate_type: t,
                            aggregate_id: id,
                            version: *version,
                            event_type: f(3),
                            schema_version: *schema_version,
                            data: f(4),
                            metadata: f(5),
                            recorded_at: f(6),
                        },
                        f(7),
                    );
                }
            }
            let mut report = VerifyReport::default();
            for (_, c) in checks {
                report.add(c.finish());
            }
            (report, reorder)
        });
        let read = (|| {
            let mut stmt = conn
                .prepare(
                    "SELECT event_id, aggregate_type, aggregate_id, event_type, data, metadata, \
                            recorded_at, hash, version, schema_version FROM events ORDER BY position",
                )
                .map_err(backend)?;
            let mut rows = stmt.query([]).map_err(backend)?;
            let mut batch = RowBatch::default();
            while let Some(row) = rows.next().map_err(backend)? {
                let mut ends = [0usize; 9];
                for (k, end) in ends.iter_mut().enumerate().take(8) {
                    let v = row
                        .get_ref(k)
                        .and_then(|v| v.as_str().map_err(Into::into))
                        .map_err(backend)?;
                    batch.text.push_str(v);
                    *end = batch.text.len();
                }
                ends[8] = batch.text.len();
                let version: i64 = row.get(8).map_err(backend)?;
                let schema_version: i64 = row.get(9).map_err(backend)?;
                batch
                    .rows
                    .push((version as u64, schema_version as u32, ends));
                if batch.rows.len() == 4096 && tx.send(std::mem::take(&mut batch)).is_err() {
                    break;
                }
            }
            if !batch.rows.is_empty() {
                let _ = tx.send(batch);
            }
            Ok::<(), StoreError>(())
        })();
        drop(tx);
        let checked = checker
            .join()
            .map_err(|_| backend("the chain checker panicked"));
        read.and(checked)
    })?;
    let mut report = report;
    let by_stream = |r: &mut VerifyReport| {
        r.breaks.sort_by(|a, b| {
            (&a.aggregate_type, &a.aggregate_id).cmp(&(&b.aggregate_type, &b.aggregate_id))
        })
    };
    if reorder.is_empty() {
        by_stream(&mut report);
        return Ok(report);
    }
    // The streams stored out of order, again in version order.
    let mut again: std::collections::HashSet<StreamId> = reorder.into_iter().collect();
    let mut events = report.events;
    report.breaks.retain(|b| {
        let redo = again.contains(&StreamId::new(&b.aggregate_type, &b.aggregate_id));
        if redo {
            events -= b.version - 1;
        }
        !redo
    });
    report.events = events;
    for stream in again.drain() {
        let key = (stream.aggregate_type.clone(), stream.aggregate_id.clone());
        let lo = Some(&key);
        let hi = (key.0.clone(), format!("{}\u{0}", key.1));
        let one = verify_range(
            &conn,
            lo,
            Some(&hi),
            &pins,
            &std::sync::atomic::AtomicU64::new(0),
        )?;
        report.events += one.events;
        report.breaks.extend(one.breaks);
    }
    by_stream(&mut report);
    Ok(report)
}
