//! One writing process per data directory: an exclusive lock on `chronicle.lock`, held for as
//! long as the store is open (`flock`, as SQLite tools, LMDB and RocksDB do).
//!
//! SQLite serialises transactions between processes, but a second writer still has its own
//! caches and background jobs (projections, the publish log, rebuilds), and two servers on one
//! directory would each believe they own it. The lock is released by the kernel when the
//! holder exits, `kill -9` included, so a stale lock file never blocks a restart. The stream
//! triggers (heads.rs) keep versions unique even where the lock is bypassed.

use chronicle_kernel::StoreError;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub const LOCK_FILE: &str = "chronicle.lock";

#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the directory's lock, or fails at once naming the holder's pid where it is known.
    /// Touches nothing else in `dir`.
    pub(crate) fn acquire(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(held(dir, &path, &mut file)),
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::Backend(format!(
                    "locking {}: {e}",
                    path.display()
                )))
            }
        }
        // The pid is for the message a second writer prints; the lock itself is the flock.
        let pid = format!("{}\n", std::process::id());
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %path.display(), "could not record the pid in the lock file");
        }
        Ok(Self { _file: file })
    }
}

fn held(dir: &Path, path: &Path, file: &mut File) -> StoreError {
    let mut text = String::new();
    let pid = file
        .read_to_string(&mut text)
        .ok()
        .and_then(|_| text.trim().parse::<u32>().ok());
    let holder = match pid {
        Some(pid) => format!("another process (pid {pid})"),
        None => "another process".to_owned(),
    };
    StoreError::Backend(format!(
        "{} is in use: {holder} holds {} and writes to it; one writer per data directory. \
         Stop that process, or send the work to it (its HTTP API, e.g. POST \
         /admin/projections/NAME/rebuild); history, state, audit and verify can run beside it",
        dir.display(),
        path.display()
    ))
}
