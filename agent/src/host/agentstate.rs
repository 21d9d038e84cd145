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

use crate::reconcile::history::{AppHistory, History};
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
        remove_stale_temp_files(&dir);
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

/// Removes the temp files of writers killed between creating them and the rename
/// (`.<name>.tmp-<pid>` of a pid that no longer runs): each restart has a new pid, so
/// they would pile up. Best effort: a file that cannot be removed is only logged.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = [ASSIGNMENT_FILE, HISTORY_FILE].iter().find_map(|f| {
            name.strip_prefix(&format!(".{f}.tmp-"))
                .and_then(|p| p.parse::<i32>().ok())
        }) else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if gone && let Err(error) = fs::remove_file(entry.path()) {
            tracing::warn!(path = %entry.path().display(), %error, "cannot remove a stale temp file");
        }
    }
}

/// Reads a history leniently: a record of one app that does not parse is dropped with a
/// warning (that app starts afresh), the others are kept. A file that is not a history at
/// all is an error.
fn history_from_json(path: &Path, raw: serde_json::Value) -> Result<History, EffectError> {
    let invalid = |e| {
        EffectError::new(
            "load history",
            path.display().to_string(),
            ErrorKind::InvalidInput,
            e,
        )
    };
    let serde_json::Value::Object(mut top) = raw else {
        return serde_json::from_value(raw).map_err(invalid);
    };
    let apps = match top.remove("apps") {
        None => serde_json::Map::new(),
        Some(serde_json::Value::Object(apps)) => apps,
        Some(other) => {
            top.insert("apps".into(), other);
            return serde_json::from_value(serde_json::Value::Object(top)).map_err(invalid);
        }
    };
    let mut history: History =
        serde_json::from_value(serde_json::Value::Object(top)).map_err(invalid)?;
    for (app, record) in apps {
        match serde_json::from_value::<AppHistory>(record) {
            Ok(h) => {
                history.apps.insert(app, h);
            }
            Err(error) => tracing::warn!(
                path = %path.display(), %app, %error,
                "ignoring the app's corrupt reconcile history; it starts afresh"
            ),
        }
    }
    Ok(history)
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
        match self.load::<serde_json::Value>(HISTORY_FILE, "load history")? {
            Some(raw) => history_from_json(&self.dir.join(HISTORY_FILE), raw),
            None => Ok(History::default()),
        }
    }

    fn save_history(&self, history: &History) -> Result<(), EffectError> {
        self.save(HISTORY_FILE, "save history", history)
    }
}
