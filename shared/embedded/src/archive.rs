//! The archive on the embedded default: segment files in a directory (`DATA_DIR/archive` by
//! default), one subdirectory per aggregate type.

use async_trait::async_trait;
use chronicle_kernel::archive::{Archive, ByteRange, SEGMENT_SUFFIX};
use chronicle_kernel::StoreError;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

pub struct DirArchive {
    root: PathBuf,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("archive: {what} {}: {e}", path.display()))
}

impl DirArchive {
    /// Uses `root`, creating it when missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| io("creating", &root, e))?;
        Ok(Self { root })
    }

    /// The archive in `root` for reading, without creating the directory (an archive that
    /// does not exist yet lists no segments).
    pub fn read_only(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// A segment's path; names are relative and stay under the root.
    fn path(&self, name: &str) -> Result<PathBuf, StoreError> {
        let rel = Path::new(name);
        if name.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(StoreError::Invalid(format!(
                "archive segment name `{name}` is not a relative path"
            )));
        }
        Ok(self.root.join(rel))
    }

    fn put_blocking(&self, name: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        let path = self.path(name)?;
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
        if path.exists() {
            return Ok(false);
        }
        // Written whole under a temporary name and synced, then hard-linked to its name:
        // linking fails if the name exists, so a segment appears complete or not at all, and
        // is never replaced.
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
            f.write_all(bytes).map_err(|e| io("writing", &tmp, e))?;
            f.sync_all().map_err(|e| io("syncing", &tmp, e))?;
            match fs::hard_link(&tmp, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(io("linking", &path, e)),
            }
            // Read-only: the archive's files are not edited in place.
            let mut perms = fs::metadata(&path)
                .map_err(|e| io("reading", &path, e))?
                .permissions();
            perms.set_readonly(true);
            fs::set_permissions(&path, perms).map_err(|e| io("protecting", &path, e))?;
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("syncing", &dir, e))?;
            Ok(true)
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut dirs = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io("listing", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io("listing", &dir, e))?;
                let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let name = if rel.is_empty() {
                    file.clone()
                } else {
                    format!("{rel}/{file}")
                };
                let kind = entry.file_type().map_err(|e| io("listing", &dir, e))?;
                if kind.is_dir() {
                    dirs.push((entry.path(), name));
                } else if file.ends_with(SEGMENT_SUFFIX)
                    && !file.starts_with('.')
                    && name.starts_with(prefix)
                {
                    out.push(name);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn read_blocking(&self, name: &str, range: ByteRange) -> Result<Vec<u8>, StoreError> {
        let path = self.path(name)?;
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::Corrupt(format!(
                    "archive segment {name} is missing"
                )))
            }
            Err(e) => return Err(io("opening", &path, e)),
        };
        let size = f.metadata().map_err(|e| io("reading", &path, e))?.len();
        let (offset, len) = match range {
            ByteRange::All => (0, size),
            ByteRange::Span { offset, len } => (offset, len),
            ByteRange::Suffix(n) => (size.saturating_sub(n), n.min(size)),
        };
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(StoreError::Corrupt(format!(
                "archive segment {name}: {len} bytes at {offset} lie past its end ({size} bytes)"
            )));
        }
        let mut buf = vec![0; len as usize];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| io("reading", &path, e))?;
        Ok(buf)
    }
}

#[async_trait]
impl Archive for DirArchive {
    async fn put_segment(&self, name: &str, bytes: Vec<u8>) -> Result<bool, StoreError> {
        let me = self.clone_handle();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || me.put_blocking(&name, &bytes))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn list_segments(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let me = self.clone_handle();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || me.list_blocking(&prefix))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn read_segment(&self, name: &str, range: ByteRange) -> Result<Vec<u8>, StoreError> {
        let me = self.clone_handle();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || me.read_blocking(&name, range))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

impl DirArchive {
    fn clone_handle(&self) -> DirArchive {
        DirArchive {
            root: self.root.clone(),
        }
    }
}
