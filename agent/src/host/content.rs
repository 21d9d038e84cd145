//! The image store's files under `<data-dir>/images/`: the layout, the content store of small
//! blobs (manifests, indexes, configs) by digest, atomic file writes and advisory locks.
//!
//! ```text
//! images/                    0700 root
//!   blobs/sha256/<hex>       verified manifests, indexes and configs (layers: see image_store)
//!   snapshots/<chain-hex>/   one unpacked layer: fs/ (an overlay lower dir) + layer.json
//!   records/<manifest-hex>.json   one pulled image (image::ImageRecord)
//!   uses/<holder>.json       use marks (image::record::ImageUse)
//!   tmp/                     work in progress; emptied when the store opens with no pull running
//!   ingest/<hex>.lock        per-blob/per-snapshot flock: concurrent pulls share the work
//!   store.lock               shared by pulls, exclusive for prune/rmi and tmp cleanup
//! ```
//!
//! A blob is committed only after its size and sha256 match: written to `tmp/`, fsynced,
//! verified, renamed into place, and the directory fsynced. It must not: parse blobs, or touch
//! anything outside the directory it is given.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::FlockOperation;

use crate::image::{Digest, ErrorKind};

/// Where everything of the image store lives.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `<data_dir>/images`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("images"),
        }
    }

    /// `<data-dir>/images`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Verified small blobs.
    pub fn blob(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// All snapshots.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// One snapshot's directory (holding `fs/` and `layer.json`).
    pub fn snapshot(&self, chain_id: &Digest) -> PathBuf {
        self.snapshots().join(chain_id.hex())
    }

    /// Image records.
    pub fn records(&self) -> PathBuf {
        self.root.join("records")
    }

    /// One image record.
    pub fn record(&self, manifest: &Digest) -> PathBuf {
        self.records().join(format!("{}.json", manifest.hex()))
    }

    /// Use marks.
    pub fn uses(&self) -> PathBuf {
        self.root.join("uses")
    }

    /// Work in progress.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A lock file for the work on one digest.
    pub fn ingest_lock(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("ingest")
            .join(format!("{}.lock", digest.hex()))
    }

    /// The store-wide lock.
    pub fn store_lock(&self) -> PathBuf {
        self.root.join("store.lock")
    }

    /// Creates the directories (0700), leaving existing ones as they are.
    pub fn create(&self) -> Result<(), ContentError> {
        for dir in [
            self.root.clone(),
            self.root.join("blobs"),
            self.root.join("blobs/sha256"),
            self.snapshots(),
            self.records(),
            self.uses(),
            self.tmp(),
            self.root.join("ingest"),
        ] {
            fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&dir)
                .map_err(|source| ContentError::Io {
                    op: "create",
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// A fresh, unique path under `tmp/` (not created).
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        self.tmp()
            .join(format!("{what}-{}-{n}", std::process::id()))
    }
}

/// Errors of the content store and its file helpers.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// Bytes did not hash to the digest they were stored under.
    #[error(
        "blob {expected} failed verification: its content hashes to {actual}; nothing was stored"
    )]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of the bytes.
        actual: Digest,
    },
    /// A blob is bigger than the caller allows.
    #[error("blob {digest} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// No blob with this digest is stored.
    #[error("blob {digest} is not in the store")]
    NotFound {
        /// The blob.
        digest: Digest,
    },
    /// A file operation failed.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl ContentError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::DigestMismatch { .. } => ErrorKind::Internal,
            Self::TooLarge { .. } => ErrorKind::ResourceExhausted,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull => {
                ErrorKind::ResourceExhausted
            }
            Self::Io { .. } => ErrorKind::Unavailable,
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContentError {
    let path = path.to_owned();
    move |source| ContentError::Io { op, path, source }
}

/// Writes `bytes` to `path` atomically: a temp file in `tmp_dir` (same filesystem), fsync,
/// rename, fsync of the target directory. A crash leaves the old file or the new one.
pub fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ContentError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = tmp_dir.join(format!(
        "write-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io("rename into place", path))?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs the directory holding `path`, so a rename into it survives a crash.
pub fn sync_parent(path: &Path) -> Result<(), ContentError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// The verified small blobs (manifests, indexes, configs).
#[derive(Debug, Clone)]
pub struct ContentStore {
    layout: Layout,
}

impl ContentStore {
    /// The store over `layout` (whose directories must exist).
    pub fn new(layout: Layout) -> Self {
        Self { layout }
    }

    /// Stores `bytes` under `digest` if they hash to it; a mismatch stores nothing.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), ContentError> {
        let actual = Digest::of(bytes);
        if &actual != digest {
            return Err(ContentError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let path = self.layout.blob(digest);
        if path.exists() {
            return Ok(());
        }
        write_atomic(&self.layout.tmp(), &path, bytes)
    }

    /// Reads a blob of at most `limit` bytes and checks it still hashes to its digest.
    pub fn get(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, ContentError> {
        let path = self.layout.blob(digest);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContentError::NotFound {
                    digest: digest.clone(),
                });
            }
            Err(e) => return Err(io("stat", &path)(e)),
        };
        if meta.len() > limit {
            return Err(ContentError::TooLarge {
                digest: digest.clone(),
                size: meta.len(),
                limit,
            });
        }
        let bytes = fs::read(&path).map_err(io("read", &path))?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(ContentError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Removes a blob; a missing one is fine.
    pub fn remove(&self, digest: &Digest) -> Result<(), ContentError> {
        let path = self.layout.blob(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Every stored blob's digest.
    pub fn list(&self) -> Result<Vec<Digest>, ContentError> {
        list_hex_names(&self.layout.root().join("blobs/sha256"), "")
    }
}

/// The digests named by the entries of `dir` (`<hex><suffix>`); other names are ignored.
pub fn list_hex_names(dir: &Path, suffix: &str) -> Result<Vec<Digest>, ContentError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        if let Ok(d) = format!("sha256:{hex}").parse() {
            out.push(d);
        }
    }
    out.sort();
    Ok(out)
}

/// An advisory lock (flock) held until dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until the lock on `path` (created if missing) is held, shared or exclusive.
    pub fn acquire(path: &Path, exclusive: bool) -> Result<Self, ContentError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io("open the lock", path))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        rustix::fs::flock(&file, op).map_err(|e| io("lock", path)(e.into()))?;
        Ok(Self { _file: file })
    }

    /// Takes the lock only if it is free right now.
    pub fn try_acquire(path: &Path, exclusive: bool) -> Result<Option<Self>, ContentError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io("open the lock", path))?;
        let op = if exclusive {
            FlockOperation::NonBlockingLockExclusive
        } else {
            FlockOperation::NonBlockingLockShared
        };
        match rustix::fs::flock(&file, op) {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(io("lock", path)(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create().unwrap();
        (dir, ContentStore::new(layout.clone()), layout)
    }

    #[test]
    fn put_then_get_round_trips_verified_bytes() {
        let (_d, store, _) = store();
        let digest = Digest::of(b"hello");
        store.put(&digest, b"hello").unwrap();
        assert_eq!(store.get(&digest, 100).unwrap(), b"hello");
        assert_eq!(store.list().unwrap(), vec![digest]);
    }

    #[test]
    fn a_mismatch_stores_nothing_and_names_the_digest() {
        let (_d, store, layout) = store();
        let digest = Digest::of(b"hello");
        let err = store.put(&digest, b"hellO").unwrap_err();
        assert!(err.to_string().contains(&digest.to_string()), "{err}");
        assert!(store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(layout.tmp()).unwrap().count(), 0);
    }

    #[test]
    fn a_blob_corrupted_on_disk_is_refused_on_read() {
        let (_d, store, layout) = store();
        let digest = Digest::of(b"hello");
        store.put(&digest, b"hello").unwrap();
        fs::write(layout.blob(&digest), b"jello").unwrap();
        assert!(matches!(
            store.get(&digest, 100),
            Err(ContentError::DigestMismatch { .. })
        ));
        assert!(matches!(
            store.get(&Digest::of(b"x"), 100),
            Err(ContentError::NotFound { .. })
        ));
    }

    #[test]
    fn store_directories_are_private_to_root() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, _, layout) = store();
        for dir in [layout.root().to_owned(), layout.snapshots(), layout.tmp()] {
            assert_eq!(
                fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
                0o700,
                "{dir:?}"
            );
        }
    }

    #[test]
    fn an_exclusive_lock_excludes_a_second_holder() {
        let (_d, _, layout) = store();
        let path = layout.store_lock();
        let held = FileLock::acquire(&path, true).unwrap();
        assert!(FileLock::try_acquire(&path, false).unwrap().is_none());
        drop(held);
        assert!(FileLock::try_acquire(&path, true).unwrap().is_some());
    }
}
