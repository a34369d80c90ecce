//! Read models in the `read_models` table, one row per (projection, generation, key), with
//! lookups by field through `read_model_index`; every write is conditional on the stored
//! version being lower, so a duplicated or replayed event changes nothing.

use crate::writer::backend;
use crate::writer::{corrupt, to_i64};
use crate::EmbeddedStore;
use async_trait::async_trait;
use chronicle_kernel::{Doc, DocWrite, ModelRef, ReadModelStore, StoreError};
use r2d2_sqlite::rusqlite::{self, params, Connection, OptionalExtension, Row};

/// The generation a model reference points at, resolving "active" inside the same query.
const GENERATION: &str =
    "COALESCE(?2, (SELECT active_generation FROM projections WHERE projection = ?1), 1)";

fn generation_param(model: &ModelRef) -> Option<i64> {
    model.generation.map(to_i64)
}

fn doc_from_row(r: &Row<'_>) -> rusqlite::Result<(String, i64, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn to_doc((key, version, body): (String, i64, String)) -> Result<Doc, StoreError> {
    Ok(Doc {
        key,
        version: version as u64,
        body: serde_json::from_str(&body).map_err(|e| corrupt("read model", e))?,
    })
}

fn resolve_generation(conn: &Connection, model: &ModelRef) -> Result<i64, StoreError> {
    conn.prepare_cached(&format!("SELECT {GENERATION}"))
        .and_then(|mut s| {
            s.query_row(params![model.projection, generation_param(model)], |r| {
                r.get(0)
            })
        })
        .map_err(backend)
}

#[async_trait]
impl ReadModelStore for EmbeddedStore {
    async fn active_generation(&self, projection: &str) -> Result<u64, StoreError> {
        let model = ModelRef::active(projection);
        self.read(move |conn| resolve_generation(conn, &model).map(|g| g as u64))
            .await
    }

    async fn get(&self, model: &ModelRef, key: &str) -> Result<Option<Doc>, StoreError> {
        let (model, key) = (model.clone(), key.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT key, version, body FROM read_models \
                 WHERE projection = ?1 AND generation = {GENERATION} AND key = ?3"
            ))
            .and_then(|mut s| {
                s.query_row(
                    params![model.projection, generation_param(&model), key],
                    doc_from_row,
                )
                .optional()
            })
            .map_err(backend)?
            .map(to_doc)
            .transpose()
        })
        .await
    }

    async fn find(
        &self,
        model: &ModelRef,
        field: &str,
        value: &str,
        limit: usize,
    ) -> Result<Vec<Doc>, StoreError> {
        let (model, field, value) = (model.clone(), field.to_owned(), value.to_owned());
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT r.key, r.version, r.body FROM read_model_index i \
                     JOIN read_models r ON r.projection = i.projection \
                       AND r.generation = i.generation AND r.key = i.key \
                     WHERE i.projection = ?1 AND i.generation = {GENERATION} \
                       AND i.field = ?3 AND i.value = ?4 ORDER BY i.key LIMIT ?5"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![
                        model.projection,
                        generation_param(&model),
                        field,
                        value,
                        to_i64(limit as u64)
                    ],
                    doc_from_row,
                )
                .map_err(backend)?;
            rows.map(|r| r.map_err(backend).and_then(to_doc)).collect()
        })
        .await
    }

    async fn apply(
        &self,
        model: &ModelRef,
        writes: Vec<DocWrite>,
        checkpoint: Option<u64>,
    ) -> Result<usize, StoreError> {
        let model = model.clone();
        self.writer
            .write(move |conn| {
                let generation = resolve_generation(conn, &model)?;
                let p = &model.projection;
                let mut applied = 0;
                for w in &writes {
                    let changed = conn
                        .prepare_cached(
                            "INSERT INTO read_models (projection, generation, key, version, body) \
                             VALUES (?1, ?2, ?3, ?4, ?5) \
                             ON CONFLICT (projection, generation, key) DO UPDATE \
                             SET version = excluded.version, body = excluded.body \
                             WHERE excluded.version > read_models.version",
                        )
                        .and_then(|mut s| {
                            s.execute(params![p, generation, w.key, to_i64(w.version), w.body.to_string()])
                        })
                        .map_err(backend)?;
                    if changed == 0 {
                        continue; // an older or equal version: a duplicate or replay
                    }
                    applied += 1;
                    conn.prepare_cached(
                        "DELETE FROM read_model_index WHERE projection = ?1 AND generation = ?2 AND key = ?3",
                    )
                    .and_then(|mut s| s.execute(params![p, generation, w.key]))
                    .map_err(backend)?;
                    for (field, value) in &w.index {
                        conn.prepare_cached(
                            "INSERT OR IGNORE INTO read_model_index (projection, generation, field, value, key) \
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                        )
                        .and_then(|mut s| s.execute(params![p, generation, field, value, w.key]))
                        .map_err(backend)?;
                    }
                }
                if let Some(position) = checkpoint {
                    conn.prepare_cached(
                        "INSERT INTO checkpoints (projection, generation, position) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (projection, generation) DO UPDATE SET position = excluded.position \
                         WHERE excluded.position > checkpoints.position",
                    )
                    .and_then(|mut s| s.execute(params![p, generation, to_i64(position)]))
                    .map_err(backend)?;
                }
                Ok(applied)
            })
            .await
    }

    async fn checkpoint(&self, model: &ModelRef) -> Result<u64, StoreError> {
        let model = model.clone();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT position FROM checkpoints WHERE projection = ?1 AND generation = {GENERATION}"
            ))
            .and_then(|mut s| {
                s.query_row(params![model.projection, generation_param(&model)], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()
            })
            .map(|p| p.unwrap_or(0) as u64)
            .map_err(backend)
        })
        .await
    }

    async fn activate(&self, projection: &str, generation: u64) -> Result<(), StoreError> {
        let projection = projection.to_owned();
        self.writer
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO projections (projection, active_generation) VALUES (?1, ?2) \
                     ON CONFLICT (projection) DO UPDATE SET active_generation = excluded.active_generation",
                    params![projection, to_i64(generation)],
                )
                .map(|_| ())
                .map_err(backend)
            })
            .await
    }

    async fn drop_generation(&self, projection: &str, generation: u64) -> Result<(), StoreError> {
        let projection = projection.to_owned();
        self.writer
            .write(move |conn| {
                let active = resolve_generation(conn, &ModelRef::active(&projection))?;
                if active == to_i64(generation) {
                    return Err(StoreError::Invalid(format!(
                        "generation {generation} of {projection} is active"
                    )));
                }
                for table in ["read_models", "read_model_index", "checkpoints"] {
                    conn.execute(
                        &format!("DELETE FROM {table} WHERE projection = ?1 AND generation = ?2"),
                        params![projection, to_i64(generation)],
                    )
                    .map_err(backend)?;
                }
                Ok(())
            })
            .await
    }
}
