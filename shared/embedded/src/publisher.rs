//! The embedded publisher: events appended as JSON lines to a log file that other local
//! processes can tail (`tail -f`), the local stand-in for a Kinesis stream. Each call is
//! written and fsynced before it returns, so a published event survives a crash.

use async_trait::async_trait;
use chronicle_kernel::{EventEnvelope, PublishError, Publisher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct JsonlPublisher {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl JsonlPublisher {
    /// Opens (or creates) the log for appending.
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(Self {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every event in the log, in the order published.
    pub fn read_all(path: impl AsRef<Path>) -> std::io::Result<Vec<EventEnvelope>> {
        let text = std::fs::read_to_string(path)?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })
            .collect()
    }
}

#[async_trait]
impl Publisher for JsonlPublisher {
    async fn publish(&self, events: &[EventEnvelope]) -> Result<(), PublishError> {
        let fail = |reason: String| PublishError {
            total: events.len(),
            failed: (0..events.len()).collect(),
            reason,
        };
        let mut buf = Vec::with_capacity(events.len() * 256);
        for e in events {
            serde_json::to_writer(&mut buf, e).map_err(|e| fail(e.to_string()))?;
            buf.push(b'\n');
        }
        let file = self.file.clone();
        // One write of whole lines, then fsync, off the async threads.
        tokio::task::spawn_blocking(move || {
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            f.write_all(&buf)?;
            f.sync_data()
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("writing the publish log: {e}")))
    }
}
