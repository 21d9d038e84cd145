//! The sandbox of the layer-extraction tests (`image_unpack.rs`, `hardening_unpack_fuzz.rs`):
//! a temp dir with `root/` (where a layer is unpacked) and `outside/` holding a secret that
//! must never change, and the check that nothing outside the root did.
#![allow(dead_code, reason = "each test file uses a part")]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `root/` and `outside/secret` in a temp dir (removed on drop).
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// In the default temp dir.
    pub fn new() -> Self {
        Self::in_dir(tempfile::tempdir().unwrap())
    }

    /// On tmpfs (`/dev/shm`) where there is one: fast for many small cases.
    pub fn on_tmpfs() -> Self {
        let base = Path::new("/dev/shm");
        if !base.is_dir() {
            return Self::new();
        }
        Self::in_dir(
            tempfile::Builder::new()
                .prefix("berth-unpack-test-")
                .tempdir_in(base)
                .unwrap(),
        )
    }

    fn in_dir(dir: tempfile::TempDir) -> Self {
        fs::create_dir(dir.path().join("root")).unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/secret"), b"host secret").unwrap();
        fs::set_permissions(
            dir.path().join("outside/secret"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::set_permissions(
            dir.path().join("outside"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        Self { dir }
    }

    /// The temp dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where layers are unpacked.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// What must not change.
    pub fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// What changed outside the root, if anything: the temp dir holds only `outside/` and
    /// `root/`, `outside/` only `secret`, with its content, mode 0600, one link and its owner,
    /// and `outside/` keeps mode 0755.
    pub fn outside_changes(&self) -> Result<(), String> {
        let mut top: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        if top != ["outside", "root"] {
            return Err(format!("the sandbox now holds {top:?}"));
        }
        let names: Vec<String> = fs::read_dir(self.outside())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if names != ["secret"] {
            return Err(format!("outside/ now holds {names:?}"));
        }
        let dir = fs::symlink_metadata(self.outside()).unwrap();
        let secret = self.outside().join("secret");
        let meta = fs::symlink_metadata(&secret).unwrap();
        if !meta.is_file()
            || fs::read(&secret).unwrap() != b"host secret"
            || meta.mode() & 0o7777 != 0o600
            || meta.nlink() != 1
            || meta.uid() != dir.uid()
        {
            return Err(format!("outside/secret changed: {meta:?}"));
        }
        let dmode = dir.mode() & 0o7777;
        if dmode != 0o755 {
            return Err(format!("outside/ mode changed to {dmode:o}"));
        }
        Ok(())
    }
}
