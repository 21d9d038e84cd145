//! The agent's local state files under `<data-dir>/agent/`: `assignment.json` (the last
//! assignment received, so the agent runs it while the controller is down and after its own
//! restart) and `history.json` (reconcile memory: rollouts, failed revisions, restart
//! backoff). Each write is atomic — temp file in the same directory, fsync, rename, fsync of
//! the directory — so a crash leaves the old or the new file, never a torn one.
//! Must not hold any other state (containers and images have their own stores).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use berth_manifests::ErrorKind;
use berth_manifests::wire::Assignment;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::reconcile::history::History;
use crate::reconcile::traits::{EffectError, StateStore};

/// File name of the cached assignment.
pub const ASSIGNMENT_FILE: &str = "assignment.json";
/// File name of the reconcile history.
pub const HISTORY_FILE: &str = "history.json";

/// State files in one directory (`<data-dir>/agent`).
#[derive(Debug, Clone)]
pub struct FileState {
    dir: PathBuf,
}

impl FileState {
    /// Uses (and creates, mode 0700) `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, EffectError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_error("create state dir", &dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| io_error("create state dir", &dir, e))?;
        }
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn load<T: DeserializeOwned>(
        &self,
        name: &str,
        op: &'static str,
    ) -> Result<Option<T>, EffectError> {
        let path = self.dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(op, &path, e)),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            EffectError::new(op, path.display().to_string(), ErrorKind::InvalidInput, e)
        })
    }

    fn save<T: Serialize>(
        &self,
        name: &str,
        op: &'static str,
        value: &T,
    ) -> Result<(), EffectError> {
        let path = self.dir.join(name);
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| {
            EffectError::new(op, path.display().to_string(), ErrorKind::Internal, e)
        })?;
        write_atomic(&self.dir, name, &bytes).map_err(|e| io_error(op, &path, e))
    }
}

/// Writes `dir/name` atomically: temp file, fsync, rename over, fsync the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dir.join(name))?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn io_error(op: &'static str, path: &Path, e: io::Error) -> EffectError {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::InvalidInput,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::ResourceExhausted,
        _ => ErrorKind::Unavailable,
    };
    EffectError::new(op, path.display().to_string(), kind, e)
}

impl StateStore for FileState {
    fn load_assignment(&self) -> Result<Option<Assignment>, EffectError> {
        self.load(ASSIGNMENT_FILE, "load assignment")
    }

    fn save_assignment(&self, assignment: &Assignment) -> Result<(), EffectError> {
        self.save(ASSIGNMENT_FILE, "save assignment", assignment)
    }

    fn load_history(&self) -> Result<History, EffectError> {
        Ok(self.load(HISTORY_FILE, "load history")?.unwrap_or_default())
    }

    fn save_history(&self, history: &History) -> Result<(), EffectError> {
        self.save(HISTORY_FILE, "save history", history)
    }
}
