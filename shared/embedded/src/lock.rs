//! One writing process per data directory: an exclusive lock on `chronicle.lock`, held for as
//! long as the store is open (`flock`, as SQLite tools, LMDB and RocksDB do).
//!
//! SQLite serialises transactions between processes, but a second writer still has its own
//! caches and background jobs (projections, the publish log, rebuilds), and two servers on one
//! directory would each believe they own it. The lock is released by the kernel when the
//! holder exits, `kill -9` included, so a stale lock file never blocks a restart. The stream
//! conditional head update in every append's transaction (heads.rs) keeps versions unique even
//! where the lock is bypassed.

use chronicle_kernel::StoreError;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub const LOCK_FILE: &str = "chronicle.lock";

#[derive(Debug)]
pub(crate) struct DirLock {
    file: File,
}

/// Who holds a data directory's lock, as its lock file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    /// The holder's HTTP address, when it is a server (`http://127.0.0.1:8080`).
    pub url: Option<String>,
}

impl Holder {
    fn parse(text: &str) -> Self {
        let mut lines = text.lines().map(str::trim);
        Self {
            pid: lines.next().and_then(|l| l.parse().ok()),
            url: lines
                .next()
                .filter(|l| l.starts_with("http://"))
                .map(str::to_owned),
        }
    }
}

/// The holder of `dir`'s lock if a live process holds it; `None` if nobody does (checked by
/// trying the lock, which is released again at once). Creates nothing.
pub fn locked_by(dir: &Path) -> Option<Holder> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .ok()?;
    match file.try_lock() {
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Some(Holder::parse(&text))
        }
        // Free (the lock is dropped with the file) or not lockable: nobody to talk to.
        _ => None,
    }
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
        Ok(Self { file })
    }

    /// Adds the holder's HTTP address to the lock file, so that commands that find the
    /// directory in use can send their work to it (`chronicle rebuild`).
    pub(crate) fn advertise(&mut self, url: &str) -> std::io::Result<()> {
        let text = format!("{}\n{url}\n", std::process::id());
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())
    }
}

fn held(dir: &Path, path: &Path, file: &mut File) -> StoreError {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let found = Holder::parse(&text);
    let mut holder = match found.pid {
        Some(pid) => format!("another process (pid {pid})"),
        None => "another process".to_owned(),
    };
    if let Some(url) = &found.url {
        holder.push_str(&format!(", serving {url},"));
    }
    StoreError::Backend(format!(
        "{} is in use: {holder} holds {} and writes to it; one writer per data directory. \
         Stop that process, or send the work to it (its HTTP API, e.g. POST \
         /admin/projections/NAME/rebuild); history, state, audit and verify can run beside it",
        dir.display(),
        path.display()
    ))
}
