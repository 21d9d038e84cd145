//! A plain directory of manifests as a git source (`berth up --manifests DIR`): an internal
//! repository under the data dir whose work tree is the directory. Every change of the
//! directory's manifest files (`*.yaml`, `*.yml`, in subdirectories too) becomes a commit on
//! `main`, which the controller syncs like any repository — so a plain directory gets the same
//! all-or-nothing validation, revision history and commit ids as a git-pushed one.
//!
//! The directory itself is only read: the repository's index and objects live in the git
//! dir, and nothing is checked out into the directory. Changes are found by a cheap scan of
//! names, sizes and modification times ([`LocalRepo::fingerprint`]); `git add` then decides
//! what really changed, so touching a file without changing it makes no commit.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::git::{GitError, is_manifest_path};

/// The branch the internal repository commits to.
pub const BRANCH: &str = "main";

/// Directory entries scanned at most for a fingerprint (the controller caps a commit at 2000
/// manifest files; this bounds the scan of a directory full of other things).
const MAX_SCANNED: usize = 100_000;

/// `info/exclude` of the internal repository: manifests only (as [`is_manifest_path`]).
const EXCLUDE: &str = "*\n!*/\n!*.[yY][aA][mM][lL]\n!*.[yY][mM][lL]\n.*\n";

/// An internal repository tracking a plain directory.
#[derive(Debug, Clone)]
pub struct LocalRepo {
    git_dir: PathBuf,
    work_tree: PathBuf,
}

impl LocalRepo {
    /// Opens (creating when needed) the repository at `git_dir` tracking `work_tree`, and
    /// commits the directory's current manifests (an empty commit the first time if it has
    /// none, so that the branch exists).
    pub fn open(git_dir: &Path, work_tree: &Path) -> Result<LocalRepo, GitError> {
        let work_tree = std::fs::canonicalize(work_tree).map_err(|source| GitError::Io {
            path: work_tree.to_path_buf(),
            source,
        })?;
        let repo = LocalRepo {
            git_dir: git_dir.to_path_buf(),
            work_tree,
        };
        if !git_dir.join("HEAD").is_file() {
            std::fs::create_dir_all(git_dir).map_err(|source| GitError::Io {
                path: git_dir.to_path_buf(),
                source,
            })?;
            repo.git(&["init", "--quiet", "--initial-branch", BRANCH])?;
        }
        // Only manifests are tracked: everything else is ignored, hidden entries included.
        let info = git_dir.join("info");
        std::fs::create_dir_all(&info)
            .and_then(|()| std::fs::write(info.join("exclude"), EXCLUDE))
            .map_err(|source| GitError::Io { path: info, source })?;
        repo.commit("berth up: manifests of the directory")?;
        Ok(repo)
    }

    /// The repository's path, for the controller's `repo` setting.
    pub fn url(&self) -> String {
        self.git_dir.display().to_string()
    }

    /// The tracked directory.
    pub fn work_tree(&self) -> &Path {
        &self.work_tree
    }

    /// Commits the directory's manifests if they differ from the last commit (or if there is
    /// no commit yet). The new commit's id, or `None` when nothing changed.
    pub fn commit(&self, message: &str) -> Result<Option<String>, GitError> {
        self.git(&["add", "--all", "--", "."])?;
        let has_head = self
            .git(&["rev-parse", "--verify", "--quiet", "HEAD"])
            .is_ok();
        if has_head
            && self
                .git(&["diff", "--cached", "--quiet", "--no-renames"])
                .is_ok()
        {
            return Ok(None);
        }
        self.git(&[
            "commit",
            "--quiet",
            "--allow-empty",
            "--no-verify",
            "--message",
            message,
        ])?;
        let id = self.git(&["rev-parse", "HEAD"])?;
        Ok(Some(String::from_utf8_lossy(&id).trim().to_string()))
    }

    /// A hash of the manifest files' names, sizes and modification times: when it changes,
    /// [`LocalRepo::commit`] may have something to commit. Hidden entries (`.git`, editor
    /// files) are skipped; symlinks are not followed.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        let mut stack = vec![self.work_tree.clone()];
        let mut scanned = 0usize;
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                dir.hash(&mut hasher);
                continue;
            };
            let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                scanned += 1;
                if scanned > MAX_SCANNED {
                    return hasher.finish();
                }
                let name = entry.file_name();
                if name.as_encoded_bytes().starts_with(b".") {
                    continue;
                }
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if is_manifest_path(&name.to_string_lossy()) {
                    entry.path().hash(&mut hasher);
                    meta.len().hash(&mut hasher);
                    meta.modified().ok().hash(&mut hasher);
                    meta.file_type().is_symlink().hash(&mut hasher);
                }
            }
        }
        hasher.finish()
    }

    fn git(&self, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let name = args.first().copied().unwrap_or("git").to_string();
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&self.git_dir)
            .arg("--work-tree")
            .arg(&self.work_tree)
            .args(["-c", "core.hooksPath=/dev/null"])
            // The directory may belong to another user than the one running berth.
            .args(["-c", "safe.directory=*"])
            .args(["-c", "user.name=berth", "-c", "user.email=berth@localhost"])
            .args(["-c", "commit.gpgSign=false", "-c", "core.autocrlf=false"])
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| GitError::Spawn { source })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(GitError::Command {
                command: name,
                repo: self.work_tree.display().to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn commits_only_manifest_changes_and_leaves_the_directory_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("manifests");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("web.yaml"), "app: web\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "not a manifest\n").unwrap();
        let repo = LocalRepo::open(&tmp.path().join("repo.git"), &dir).unwrap();
        let first = repo.git(&["rev-parse", "HEAD"]).unwrap();
        let files = repo.git(&["ls-tree", "-r", "--name-only", "HEAD"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&files), "web.yaml\n");
        assert!(
            !dir.join(".git").exists(),
            "nothing written into the directory"
        );

        // Nothing changed: no commit, even when re-opened.
        assert_eq!(repo.commit("again").unwrap(), None);
        let reopened = LocalRepo::open(&tmp.path().join("repo.git"), &dir).unwrap();
        assert_eq!(reopened.git(&["rev-parse", "HEAD"]).unwrap(), first);

        // An edit, a new file in a subdirectory and a non-manifest: one commit of the first two.
        let before = repo.fingerprint();
        std::fs::write(dir.join("web.yaml"), "app: web\nreplicas: 2\n").unwrap();
        std::fs::write(dir.join("sub/worker.yml"), "app: worker\n").unwrap();
        std::fs::write(dir.join("other.txt"), "x").unwrap();
        assert_ne!(repo.fingerprint(), before);
        let id = repo.commit("change").unwrap().unwrap();
        assert_eq!(id.len(), 40);
        let files = repo.git(&["ls-tree", "-r", "--name-only", "HEAD"]).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&files),
            "sub/worker.yml\nweb.yaml\n"
        );

        // A deletion is a change too.
        std::fs::remove_file(dir.join("web.yaml")).unwrap();
        assert!(repo.commit("delete").unwrap().is_some());
        let files = repo.git(&["ls-tree", "-r", "--name-only", "HEAD"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&files), "sub/worker.yml\n");
    }

    #[test]
    fn an_empty_directory_still_makes_the_branch() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = LocalRepo::open(&tmp.path().join("r.git"), tmp.path()).unwrap();
        assert!(repo.git(&["rev-parse", "--verify", BRANCH]).is_ok());
    }
}
