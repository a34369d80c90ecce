//! Snapshots in the `snapshots` table, one row per (stream, version); `latest` reads the
//! newest at or below a version.

use crate::writer::backend;
use crate::writer::{corrupt, to_i64};
use crate::EmbeddedStore;
use async_trait::async_trait;
use chronicle_kernel::envelope::{format_timestamp, parse_timestamp};
use chronicle_kernel::{Snapshot, SnapshotStore, StoreError, StreamId};
use r2d2_sqlite::rusqlite::{params, OptionalExtension};

#[async_trait]
impl SnapshotStore for EmbeddedStore {
    async fn latest(
        &self,
        stream: &StreamId,
        max_version: Option<u64>,
    ) -> Result<Option<Snapshot>, StoreError> {
        let stream = stream.clone();
        self.read_short(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT version, state_version, state, taken_at, chain_head FROM snapshots \
                     WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND version <= ?3 \
                     ORDER BY version DESC LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            stream.aggregate_type,
                            stream.aggregate_id,
                            max_version.map_or(i64::MAX, to_i64)
                        ],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, i64>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, String>(3)?,
                                r.get::<_, Option<String>>(4)?,
                            ))
                        },
                    )
                    .optional()
                })
                .map_err(backend)?;
            let Some((version, state_version, state, taken_at, chain_head)) = row else {
                return Ok(None);
            };
            Ok(Some(Snapshot {
                stream,
                version: version as u64,
                state_version: u32::try_from(state_version)
                    .map_err(|e| corrupt("state_version", e))?,
                state: serde_json::from_str(&state).map_err(|e| corrupt("snapshot", e))?,
                taken_at: parse_timestamp(&taken_at).map_err(|e| corrupt("taken_at", e))?,
                chain_head,
            }))
        })
        .await
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.writer
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO snapshots \
                     (aggregate_type, aggregate_id, version, state_version, state, taken_at, \
                      chain_head) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        snapshot.stream.aggregate_type,
                        snapshot.stream.aggregate_id,
                        to_i64(snapshot.version),
                        snapshot.state_version,
                        snapshot.state.to_string(),
                        format_timestamp(&snapshot.taken_at),
                        snapshot.chain_head,
                    ])
                })
                .map(|_| ())
                .map_err(backend)
            })
            .await
    }
}
