//! The store's tables, and what brings a data directory written by an older Chronicle up to
//! date when it is opened for writing (store.rs `open`).

use crate::heads::MARK_EVERY;
use r2d2_sqlite::rusqlite::{self, Connection};

pub(crate) const SCHEMA: &str = r#"
-- event_id is a UUIDv7 made by the kernel; it carries no UNIQUE index because every append
-- would pay for it and nothing looks events up by id.
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    event_id       TEXT    NOT NULL,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL CHECK (version > 0),
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    recorded_at    TEXT    NOT NULL,
    -- SHA-256 chaining the event to its predecessor in the stream (kernel `chain`).
    hash           TEXT    NOT NULL DEFAULT ''
);
-- Streams without a per-event index (heads.rs): each event's predecessor in its stream (0 for
-- version 1), every MARK_EVERY-th version as an entry point, and each stream's head, all kept
-- by the append in its write transaction (heads::advance). Data directories from before these keep their
-- (type, id, version) UNIQUE index, which costs appends but changes nothing else;
-- `backfill_streams` fills these tables for them.
CREATE TABLE IF NOT EXISTS stream_links (
    position INTEGER PRIMARY KEY,
    prev     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_marks (
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    position       INTEGER NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stream_heads (
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    position       INTEGER NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
-- The audit feed's order (kernel `recorded_order`): keyset pages over a time range. New events
-- land at its right edge (recorded times grow), so an append pays one cheap b-tree insert.
-- IF NOT EXISTS: data directories from before it get it on their next open.
CREATE INDEX IF NOT EXISTS events_by_recorded
    ON events (recorded_at, aggregate_type, aggregate_id, version);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TABLE IF NOT EXISTS idempotency (
    key            TEXT PRIMARY KEY,
    fingerprint    TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    response       TEXT NOT NULL,
    recorded_at    TEXT NOT NULL,
    -- Epoch seconds the record counts until (idempotency.rs); 0 on rows from before it,
    -- which opening fills in.
    expires_at     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    state_version  INTEGER NOT NULL,
    state          TEXT    NOT NULL,
    taken_at       TEXT    NOT NULL,
    chain_head     TEXT,
    PRIMARY KEY (aggregate_type, aggregate_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS read_models (
    projection TEXT    NOT NULL,
    generation INTEGER NOT NULL,
    key        TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    PRIMARY KEY (projection, generation, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS read_model_index (
    projection TEXT    NOT NULL,
    generation INTEGER NOT NULL,
    field      TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    PRIMARY KEY (projection, generation, field, value, key)
) WITHOUT ROWID;
-- A document's index entries are replaced on every write: find them by key, not by scan.
CREATE INDEX IF NOT EXISTS read_model_index_by_key
    ON read_model_index (projection, generation, key);
CREATE TABLE IF NOT EXISTS projections (
    projection        TEXT PRIMARY KEY,
    active_generation INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    projection TEXT    NOT NULL,
    generation INTEGER NOT NULL,
    position   INTEGER NOT NULL,
    PRIMARY KEY (projection, generation)
) WITHOUT ROWID;
"#;

pub(crate) const EVENT_COLUMNS: &str =
    "position, event_id, aggregate_type, aggregate_id, version, \
    event_type, schema_version, data, metadata, recorded_at, hash";

/// Columns added after the first release, for data directories created before them. ADD
/// COLUMN rewrites no rows, so the append-only triggers are not involved.
const MIGRATIONS: &[(&str, &str, &str)] = &[
    ("events", "hash", "TEXT NOT NULL DEFAULT ''"),
    ("snapshots", "chain_head", "TEXT"),
    ("idempotency", "expires_at", "INTEGER NOT NULL DEFAULT 0"),
];

/// Fills the stream tables for a data directory written before them, from its (type, id,
/// version) index, in one transaction.
pub(crate) fn backfill_streams(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         INSERT INTO stream_links (position, prev)
             SELECT position, COALESCE(LAG(position) OVER (
                 PARTITION BY aggregate_type, aggregate_id ORDER BY version), 0)
             FROM events;
         INSERT INTO stream_marks (aggregate_type, aggregate_id, version, position)
             SELECT aggregate_type, aggregate_id, version, position FROM events
             WHERE version % {MARK_EVERY} = 0;
         INSERT INTO stream_heads (aggregate_type, aggregate_id, version, position)
             SELECT aggregate_type, aggregate_id, MAX(version), position FROM events
             GROUP BY aggregate_type, aggregate_id;
         INSERT OR REPLACE INTO store_meta (key, value) VALUES ('heads_exact', 1);
         COMMIT;"
    ))
}

pub(crate) fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )
}

pub(crate) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, decl) in MIGRATIONS {
        let present: bool = conn.query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{EmbeddedStore, DB_FILE};
    use r2d2_sqlite::rusqlite::Connection;

    /// A data directory from before the index gets it when opened.
    #[test]
    fn an_older_data_directory_gets_the_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        EmbeddedStore::open(dir.path()).expect("store").close();
        let index_exists = || {
            Connection::open(dir.path().join(DB_FILE))
                .and_then(|c| {
                    c.query_row(
                        "SELECT COUNT(*) FROM sqlite_master \
                         WHERE type = 'index' AND name = 'events_by_recorded'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .expect("sqlite_master")
                == 1
        };
        assert!(index_exists());
        Connection::open(dir.path().join(DB_FILE))
            .and_then(|c| c.execute_batch("DROP INDEX events_by_recorded"))
            .expect("dropping the index");
        assert!(!index_exists());
        EmbeddedStore::open(dir.path()).expect("reopened").close();
        assert!(index_exists());
    }
}
