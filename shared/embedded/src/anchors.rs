//! Anchors on one machine: the store's heads in one query, and an anchor log of two kinds of
//! file in `DATA_DIR/anchors/`: `log.jsonl`, one anchor a line, only ever appended (opened
//! append-only, fsynced with its directory before `append` returns), and `heads-{sequence}.lz4`,
//! the heads each anchor committed to (`type\tid\tversion\thash` lines, LZ4-compressed), written
//! once under a temporary name and renamed into place. The heads file needs no protection of
//! its own: verify recomputes its root and holds it to the anchor. The log is what must live
//! where the store's writers can't rewrite it: `chronicle anchor --copy-to` and `--exec` send
//! each new anchor elsewhere too.

use crate::store::EmbeddedStore;
use crate::writer::backend;
use async_trait::async_trait;
use chronicle_kernel::anchor::{Anchor, Head};
use chronicle_kernel::{AnchorLog, StoreError, StreamHeads};
use r2d2_sqlite::rusqlite::OptionalExtension;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[async_trait]
impl StreamHeads for EmbeddedStore {
    async fn heads(&self) -> Result<Vec<Head>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT h.aggregate_type, h.aggregate_id, h.version, e.hash \
                     FROM stream_heads h LEFT JOIN events e ON e.position = h.position \
                     ORDER BY h.aggregate_type, h.aggregate_id",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        Head {
                            aggregate_type: r.get(0)?,
                            aggregate_id: r.get(1)?,
                            version: r.get::<_, i64>(2)? as u64,
                            hash: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                        },
                        r.get::<_, Option<String>>(3)?.is_some(),
                    ))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (mut head, found) = row.map_err(backend)?;
                if !found {
                    // The head's event is gone (deleted behind the store's back): the head is
                    // what the events table still holds of the stream, read the slow way.
                    let last = conn
                        .query_row(
                            "SELECT version, hash FROM events \
                             WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
                             ORDER BY version DESC LIMIT 1",
                            [&head.aggregate_type, &head.aggregate_id],
                            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
                        )
                        .optional()
                        .map_err(backend)?;
                    match last {
                        Some((version, hash)) => {
                            head.version = version;
                            head.hash = hash;
                        }
                        None => continue,
                    }
                }
                out.push(head);
            }
            Ok(out)
        })
        .await
    }
}

/// The anchor log in a directory (`DATA_DIR/anchors`).
#[derive(Clone, Debug)]
pub struct DirAnchorLog {
    dir: PathBuf,
}

/// The log file's name in the directory.
pub const ANCHOR_LOG: &str = "log.jsonl";

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

impl DirAnchorLog {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(ANCHOR_LOG)
    }

    fn heads_path(&self, sequence: u64) -> PathBuf {
        self.dir.join(format!("heads-{sequence:020}.lz4"))
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing", &self.dir, e))
    }
}

#[async_trait]
impl AnchorLog for DirAnchorLog {
    async fn append(&self, anchor: &Anchor, heads: &[Head]) -> Result<(), StoreError> {
        let this = self.clone();
        let anchor = anchor.clone();
        let heads = heads.to_vec();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&this.dir).map_err(|e| io("creating", &this.dir, e))?;
            // The heads first: an anchor in the log always has its heads beside it.
            let path = this.heads_path(anchor.sequence);
            let tmp = path.with_extension("lz4.tmp");
            {
                let mut text = String::with_capacity(heads.len() * 96);
                for h in &heads {
                    text.push_str(&format!(
                        "{}\t{}\t{}\t{}\n",
                        h.aggregate_type, h.aggregate_id, h.version, h.hash
                    ));
                }
                let packed = lz4_flex::compress_prepend_size(text.as_bytes());
                let mut file = std::fs::File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
                file.write_all(&packed)
                    .map_err(|e| io("writing", &tmp, e))?;
                file.sync_all().map_err(|e| io("syncing", &tmp, e))?;
            }
            std::fs::rename(&tmp, &path).map_err(|e| io("renaming", &tmp, e))?;
            let log = this.log_path();
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| io("opening", &log, e))?;
            let line =
                serde_json::to_string(&anchor).map_err(|e| StoreError::Invalid(e.to_string()))?;
            file.write_all(format!("{line}\n").as_bytes())
                .map_err(|e| io("appending to", &log, e))?;
            file.sync_all().map_err(|e| io("syncing", &log, e))?;
            this.sync_dir()
        })
        .await
        .map_err(backend)?
    }

    async fn anchors(&self) -> Result<Vec<Anchor>, StoreError> {
        let log = self.log_path();
        tokio::task::spawn_blocking(move || {
            let file = match std::fs::File::open(&log) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io("opening", &log, e)),
            };
            let mut out = Vec::new();
            for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.map_err(|e| io("reading", &log, e))?;
                if line.trim().is_empty() {
                    continue;
                }
                let anchor: Anchor = serde_json::from_str(&line).map_err(|e| {
                    StoreError::Corrupt(format!("{} line {}: {e}", log.display(), i + 1))
                })?;
                out.push(anchor);
            }
            Ok(out)
        })
        .await
        .map_err(backend)?
    }

    async fn heads(&self, sequence: u64) -> Result<Vec<Head>, StoreError> {
        let path = self.heads_path(sequence);
        tokio::task::spawn_blocking(move || {
            let packed = std::fs::read(&path).map_err(|e| io("reading", &path, e))?;
            let text = lz4_flex::decompress_size_prepended(&packed)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "{}: not the heads an anchor wrote",
                        path.display()
                    ))
                })?;
            text.lines()
                .enumerate()
                .map(|(i, line)| {
                    let corrupt = || {
                        StoreError::Corrupt(format!("{} line {}: {line:?}", path.display(), i + 1))
                    };
                    let mut f = line.split('\t');
                    let (Some(t), Some(id), Some(v), Some(h), None) =
                        (f.next(), f.next(), f.next(), f.next(), f.next())
                    else {
                        return Err(corrupt());
                    };
                    Ok(Head {
                        aggregate_type: t.to_owned(),
                        aggregate_id: id.to_owned(),
                        version: v.parse().map_err(|_| corrupt())?,
                        hash: h.to_owned(),
                    })
                })
                .collect()
        })
        .await
        .map_err(backend)?
    }
}
