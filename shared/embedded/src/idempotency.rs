//! Idempotency records in the `idempotency` table, and their expiry. A record counts until its
//! `expires_at` (epoch seconds, set by the kernel): reads skip expired rows and an append may
//! replace one, so the boundary is exact whether or not the row is gone yet.

use crate::writer::backend;
use chronicle_kernel::envelope::{format_timestamp, parse_timestamp};
use chronicle_kernel::{AppendError, IdempotencyRecord, StoreError, StreamId};
use chrono::{DateTime, Utc};
use r2d2_sqlite::rusqlite::{params, Connection, OptionalExtension};

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
