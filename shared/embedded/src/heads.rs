//! Where each stream ends, kept in memory, so appends need no per-stream index.
//!
//! A b-tree index on (type, id, version) puts every appended event on a random index leaf,
//! and each commit then writes one 4 KiB page to the WAL per event, which the syncer flushes
//! and the checkpointer copies again: about a third of all the CPU an append cost. Instead a
//! stream is a chain: `stream_links` gives each event's predecessor in its stream (keyed by
//! position, so appends land at its right edge), `stream_marks` holds every `MARK_EVERY`th
//! version as an entry point for reads deep in a long stream, and this map holds each stream's
//! last version and position. Only the writer thread changes it, inside its group
//! transaction, so a version check against it is as good as one against an index.
//!
//! The map is persisted to `stream_heads` every `FLUSH_EVERY` events (and on close) together
//! with `heads_through`, the position up to which that table is complete; opening catches up
//! from there by reading the events after it, so a crash costs a short scan, not a wrong head.
//! Another process writing the same data directory is caught the same way: the writer compares
//! the feed's head with `through` at the start of every group, under SQLite's write lock.

use crate::writer::{backend, last_position, GroupHooks};
use chronicle_kernel::{StoreError, StreamId};
use r2d2_sqlite::rusqlite::{params, Connection, OptionalExtension};
use rustc_hash::FxHashMap;
use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

/// A mark every this many versions bounds a read's walk to the range asked plus this.
pub(crate) const MARK_EVERY: u64 = 64;
/// Events between persisting the heads: what a crash makes the next open re-read at most.
const FLUSH_EVERY: u64 = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub version: u64,
    pub position: u64,
}

#[derive(Clone, Copy)]
struct Entry {
    head: Head,
    /// Changed since the last flush to `stream_heads`.
    dirty: bool,
}

#[derive(Default)]
struct State {
    /// Committed heads. A hash map: the writer looks one up for every append, and a b-tree
    /// of string keys cost it several string comparisons each time.
    committed: FxHashMap<StreamId, Entry>,
    /// The same streams in (type, id) order, for listings; changes only with a new stream.
    order: BTreeSet<StreamId>,
    /// The open group's appends: visible to later jobs of the group, to readers only once
    /// the group commits.
    pending: FxHashMap<StreamId, Head>,
    /// Every event at or below this position is in `committed`.
    through: u64,
    /// Head changes since the last flush.
    unflushed: u64,
    /// The open group persists the heads before its COMMIT.
    flushing: bool,
}

impl State {
    fn apply(&mut self, stream: StreamId, head: Head) {
        self.unflushed += 1;
        if let Some(e) = self.committed.get_mut(&stream) {
            if e.head.version < head.version {
                *e = Entry { head, dirty: true };
            }
            return;
        }
        self.order.insert(stream.clone());
        self.committed.insert(stream, Entry { head, dirty: true });
    }
}

pub(crate) struct Heads {
    state: Mutex<State>,
}

impl Heads {
    /// Loads the persisted heads and catches up with the events after them.
    pub(crate) fn load(conn: &Connection) -> Result<Self, StoreError> {
        let mut state = State::default();
        let mut stmt = conn
            .prepare("SELECT aggregate_type, aggregate_id, version, position FROM stream_heads")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    StreamId::new(r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                    Head {
                        version: r.get::<_, i64>(2)? as u64,
                        position: r.get::<_, i64>(3)? as u64,
                    },
                ))
            })
            .map_err(backend)?;
        for row in rows {
            let (stream, head) = row.map_err(backend)?;
            state.order.insert(stream.clone());
            state.committed.insert(stream, Entry { head, dirty: false });
        }
        state.through = conn
            .query_row(
                "SELECT value FROM store_meta WHERE key = 'heads_through'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(backend)?
            .unwrap_or(0) as u64;
        let heads = Self {
            state: Mutex::new(state),
        };
        heads.catch_up(conn)?;
        Ok(heads)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the events stored after `through` (written by another process, or before a
    /// crash that came before their heads were persisted).
    pub(crate) fn catch_up(&self, conn: &Connection) -> Result<(), StoreError> {
        let through = self.lock().through;
        let last = last_position(conn)?;
        if last <= through {
            return Ok(());
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT aggregate_type, aggregate_id, version, position FROM events \
                 WHERE position > ?1 AND position <= ?2 ORDER BY position",
            )
            .map_err(backend)?;
        let mut rows = stmt
            .query(params![through as i64, last as i64])
            .map_err(backend)?;
        let mut found = Vec::new();
        while let Some(r) = rows.next().map_err(backend)? {
            found.push((
                StreamId::new(
                    r.get::<_, String>(0).map_err(backend)?,
                    r.get::<_, String>(1).map_err(backend)?,
                ),
                Head {
                    version: r.get::<_, i64>(2).map_err(backend)? as u64,
                    position: r.get::<_, i64>(3).map_err(backend)? as u64,
                },
            ));
        }
        let mut state = self.lock();
        for (stream, head) in found {
            state.apply(stream, head);
        }
        state.through = state.through.max(last);
        Ok(())
    }

    /// The committed head of a stream, for readers.
    pub(crate) fn get(&self, stream: &StreamId) -> Option<Head> {
        self.lock().committed.get(stream).map(|e| e.head)
    }

    /// The head as the open group sees it, for the writer's version checks.
    pub(crate) fn current(&self, stream: &StreamId) -> Option<Head> {
        let state = self.lock();
        state
            .pending
            .get(stream)
            .copied()
            .or_else(|| state.committed.get(stream).map(|e| e.head))
    }

    /// Records a job's appends once the job has succeeded.
    pub(crate) fn stage(&self, stream: StreamId, head: Head) {
        self.lock().pending.insert(stream, head);
    }

    /// Up to `limit` committed streams after `after` (all types), in (type, id) order.
    pub(crate) fn streams_after(&self, after: &StreamId, limit: usize) -> Vec<StreamId> {
        use std::ops::Bound;
        self.lock()
            .order
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Every committed stream of one type with its head.
    pub(crate) fn of_type(&self, aggregate_type: &str) -> Vec<(String, Head)> {
        use std::ops::Bound;
        let from = StreamId::new(aggregate_type, "");
        let state = self.lock();
        state
            .order
            .range((Bound::Included(&from), Bound::Unbounded))
            .take_while(|s| s.aggregate_type == aggregate_type)
            .filter_map(|s| {
                let e = state.committed.get(s)?;
                Some((s.aggregate_id.clone(), e.head))
            })
            .collect()
    }

    /// Writes the changed heads and how far they reach, in the open transaction.
    fn flush(&self, conn: &Connection) -> Result<(), StoreError> {
        let (rows, through) = {
            let state = self.lock();
            let mut rows: Vec<(StreamId, Head)> = state
                .committed
                .iter()
                .filter(|(_, e)| e.dirty)
                .map(|(s, e)| (s.clone(), e.head))
                .collect();
            rows.extend(state.pending.iter().map(|(s, h)| (s.clone(), *h)));
            (rows, state.through)
        };
        let mut upsert = conn
            .prepare_cached(
                "INSERT INTO stream_heads (aggregate_type, aggregate_id, version, position) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
                 SET version = excluded.version, position = excluded.position \
                 WHERE excluded.version > stream_heads.version",
            )
            .map_err(backend)?;
        for (s, h) in &rows {
            upsert
                .execute(params![
                    s.aggregate_type,
                    s.aggregate_id,
                    h.version as i64,
                    h.position as i64
                ])
                .map_err(backend)?;
        }
        // The group's own events are covered too: they are all in `pending`.
        let last = last_position(conn)?;
        conn.prepare_cached(
            "INSERT INTO store_meta (key, value) VALUES ('heads_through', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut s| s.execute([last.max(through) as i64]))
        .map_err(backend)?;
        Ok(())
    }
}

impl GroupHooks for Heads {
    fn begin(&self, conn: &Connection) -> Result<(), StoreError> {
        self.lock().pending.clear();
        // Under the write lock nobody else can append until COMMIT: after this, `through` is
        // exact for the whole group.
        self.catch_up(conn)
    }

    fn before_commit(&self, conn: &Connection, closing: bool) -> Result<(), StoreError> {
        let due = {
            let state = self.lock();
            let changed = state.unflushed > 0 || !state.pending.is_empty();
            changed && (closing || state.unflushed + state.pending.len() as u64 >= FLUSH_EVERY)
        };
        if due {
            self.flush(conn)?;
        }
        self.lock().flushing = due;
        Ok(())
    }

    fn end(&self, committed: Option<u64>) {
        let mut state = self.lock();
        let pending = std::mem::take(&mut state.pending);
        let flushed = std::mem::take(&mut state.flushing);
        let Some(position) = committed else {
            // Rolled back: the group's appends never happened; a flush in it neither.
            return;
        };
        for (stream, head) in pending {
            state.apply(stream, head);
        }
        state.through = state.through.max(position);
        if flushed {
            for e in state.committed.values_mut() {
                e.dirty = false;
            }
            state.unflushed = 0;
        }
    }
}
