//! The git source: fetches one branch of a manifest repository into a bare mirror under the
//! controller's data dir, and reads the manifest files (`*.yaml`, `*.yml`) of a commit.
//!
//! It drives the `git` CLI (DEPS.md: git2 needs OpenSSL for https; the CLI handles file://,
//! local paths, ssh and https). Every call has a deadline, runs without hooks, prompts or the
//! user's config, and refuses `ext::` transports. Reading a tree never touches a work tree:
//! blobs come from the object database, so a symlink in the repository can never make the
//! controller read a file outside it (Argo CD CVE-2022-24904 class) — symlinks named like
//! manifests are reported as errors, submodules are skipped, sizes and counts are capped.
//!
//! It must not parse or validate manifests: it hands (path, bytes) pairs to berth-manifests.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Limits on what one commit may hold; beyond them the commit is refused as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeLimits {
    /// Largest manifest file, in bytes.
    pub max_file_bytes: u64,
    /// All manifest files together, in bytes.
    pub max_total_bytes: u64,
    /// Number of manifest files.
    pub max_files: usize,
}

impl Default for TreeLimits {
    fn default() -> Self {
        TreeLimits {
            max_file_bytes: 1 << 20,
            max_total_bytes: 16 << 20,
            max_files: 2000,
        }
    }
}

/// A commit id (40 or 64 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId(String);

impl CommitId {
    /// Parses a full hex object id.
    pub fn parse(s: &str) -> Option<CommitId> {
        let s = s.trim();
        let ok = (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| CommitId(s.to_ascii_lowercase()))
    }

    /// The hex id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, for people.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl std::fmt::Display for CommitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who made a commit and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// The commit.
    pub id: CommitId,
    /// Author name and email, `Name <email>`.
    pub author: String,
    /// Commit time, seconds since the epoch.
    pub time: i64,
    /// First line of the message.
    pub subject: String,
}

/// A manifest file of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path inside the repository, `/`-separated.
    pub path: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// The manifest files of one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The commit read.
    pub commit: CommitInfo,
    /// Manifest files, sorted by path.
    pub files: Vec<SourceFile>,
}

/// What went wrong with the git source.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `git` could not be started.
    #[error("cannot run git: {source}; install it (apt-get install git)")]
    Spawn {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A git command failed.
    #[error("git {command} failed for {repo}: {stderr}")]
    Command {
        /// The subcommand, e.g. `fetch`.
        command: String,
        /// The repository URL or mirror path.
        repo: String,
        /// git's own words.
        stderr: String,
    },
    /// A git command ran past its deadline and was killed.
    #[error("git {command} for {repo} took longer than {timeout:?}; is the repository reachable?")]
    Timeout {
        /// The subcommand.
        command: String,
        /// The repository.
        repo: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The branch does not exist in the repository.
    #[error("branch {branch:?} not found in {repo}")]
    BranchNotFound {
        /// The repository.
        repo: String,
        /// The branch asked for.
        branch: String,
    },
    /// The URL uses a transport berth refuses.
    #[error("repository URL {url:?} is not allowed: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The commit's tree breaks a rule (symlinked manifest, size or count limit).
    #[error("commit {commit}: {path}: {reason}")]
    Tree {
        /// The commit.
        commit: String,
        /// The offending path (or `.` for the whole tree).
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// Reading or writing the mirror failed.
    #[error("git mirror {path}: {source}")]
    Io {
        /// The mirror directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl GitError {
    /// The error's class: transient failures are retried with backoff, invalid ones wait
    /// for a new commit.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            GitError::Spawn { .. } | GitError::Io { .. } => crate::ErrorKind::Internal,
            GitError::Command { .. } | GitError::Timeout { .. } => crate::ErrorKind::Unavailable,
            GitError::BranchNotFound { .. } => crate::ErrorKind::NotFound,
            GitError::BadUrl { .. } | GitError::Tree { .. } => crate::ErrorKind::InvalidInput,
        }
    }
}

/// One branch of one repository, mirrored into `mirror`.
#[derive(Debug, Clone)]
pub struct GitSource {
    url: String,
    branch: String,
    mirror: PathBuf,
    limits: TreeLimits,
    timeout: Duration,
}

impl GitSource {
    /// A source for `branch` of `url` (a URL, or a local path), mirrored into `mirror`.
    pub fn new(url: &str, branch: &str, mirror: &Path) -> Result<GitSource, GitError> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("ext::") || lower.contains("::") {
            return Err(GitError::BadUrl {
                url: url.into(),
                reason: "remote helpers are refused",
            });
        }
        if url.starts_with('-') || branch.starts_with('-') || branch.contains("..") {
            return Err(GitError::BadUrl {
                url: url.into(),
                reason: "looks like an option",
            });
        }
        Ok(GitSource {
            url: url.to_string(),
            branch: branch.to_string(),
            mirror: mirror.to_path_buf(),
            limits: TreeLimits::default(),
            timeout: Duration::from_secs(120),
        })
    }

    /// Replaces the tree limits.
    pub fn with_limits(mut self, limits: TreeLimits) -> GitSource {
        self.limits = limits;
        self
    }

    /// Replaces the deadline of each git command.
    pub fn with_timeout(mut self, timeout: Duration) -> GitSource {
        self.timeout = timeout;
        self
    }

    /// The repository URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The branch.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// Fetches the branch (force-pushes included) and returns its head commit.
    pub fn fetch(&self) -> Result<CommitId, GitError> {
        self.ensure_mirror()?;
        let refspec = format!("+refs/heads/{0}:refs/remotes/origin/{0}", self.branch);
        let out = self.git(&[
            "fetch",
            "--quiet",
            "--no-tags",
            "--prune",
            "--",
            &self.url,
            &refspec,
        ]);
        match out {
            Err(GitError::Command { stderr, .. })
                if stderr.contains("couldn't find remote ref") =>
            {
                return Err(GitError::BranchNotFound {
                    repo: self.url.clone(),
                    branch: self.branch.clone(),
                });
            }
            other => other?,
        };
        let head = self.git(&[
            "rev-parse",
            "--verify",
            &format!("refs/remotes/origin/{}^{{commit}}", self.branch),
        ])?;
        CommitId::parse(&String::from_utf8_lossy(&head)).ok_or_else(|| GitError::Command {
            command: "rev-parse".into(),
            repo: self.url.clone(),
            stderr: "no commit id in output".into(),
        })
    }

    /// Reads the manifest files of `commit` (which [`fetch`](Self::fetch) brought in).
    pub fn snapshot(&self, commit: &CommitId) -> Result<Snapshot, GitError> {
        let info = self.commit_info(commit)?;
        let listing = self.git(&["ls-tree", "-r", "-l", "-z", "--full-tree", commit.as_str()])?;
        let mut wanted = Vec::new();
        let mut total = 0u64;
        for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
            let entry = String::from_utf8_lossy(entry);
            let Some((meta, path)) = entry.split_once('\t') else {
                continue;
            };
            let fields: Vec<&str> = meta.split_whitespace().collect();
            let [mode, kind, oid, size] = fields[..] else {
                continue;
            };
            if !is_manifest_path(path) {
                continue;
            }
            let refuse = |reason: String| GitError::Tree {
                commit: commit.to_string(),
                path: path.to_string(),
                reason,
            };
            match (mode, kind) {
                ("120000", _) => {
                    return Err(refuse(
                        "is a symlink; manifests must be regular files".into(),
                    ));
                }
                (_, "commit") => continue, // a submodule: never followed
                (_, "blob") => {}
                _ => continue,
            }
            let size: u64 = size.parse().unwrap_or(u64::MAX);
            if size > self.limits.max_file_bytes {
                return Err(refuse(format!(
                    "{size} bytes is over the {} byte limit for one manifest file",
                    self.limits.max_file_bytes
                )));
            }
            total = total.saturating_add(size);
            wanted.push((path.to_string(), oid.to_string(), size));
        }
        let tree_error = |reason: String| GitError::Tree {
            commit: commit.to_string(),
            path: ".".into(),
            reason,
        };
        if wanted.len() > self.limits.max_files {
            return Err(tree_error(format!(
                "{} manifest files is over the limit of {}",
                wanted.len(),
                self.limits.max_files
            )));
        }
        if total > self.limits.max_total_bytes {
            return Err(tree_error(format!(
                "{total} bytes of manifests is over the limit of {}",
                self.limits.max_total_bytes
            )));
        }
        let blobs = self.read_blobs(wanted.iter().map(|(_, oid, _)| oid.as_str()))?;
        let mut files: Vec<SourceFile> = wanted
            .into_iter()
            .zip(blobs)
            .map(|((path, _, _), bytes)| SourceFile { path, bytes })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Snapshot {
            commit: info,
            files,
        })
    }

    fn commit_info(&self, commit: &CommitId) -> Result<CommitInfo, GitError> {
        let out = self.git(&[
            "show",
            "-s",
            "--format=%H%x00%an <%ae>%x00%ct%x00%s",
            &format!("{}^{{commit}}", commit.as_str()),
            "--",
        ])?;
        let text = String::from_utf8_lossy(&out);
        let mut parts = text.trim_end_matches('\n').splitn(4, '\0');
        let bad = || GitError::Command {
            command: "show".into(),
            repo: self.mirror.display().to_string(),
            stderr: format!("unexpected output {text:?}"),
        };
        let id = parts.next().and_then(CommitId::parse).ok_or_else(bad)?;
        let author = parts.next().ok_or_else(bad)?.to_string();
        let time = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let subject = parts.next().unwrap_or_default().to_string();
        Ok(CommitInfo {
            id,
            author,
            time,
            subject,
        })
    }

    /// Reads blobs through one `git cat-file --batch`, in order.
    fn read_blobs<'a>(
        &self,
        oids: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<Vec<u8>>, GitError> {
        let oids: Vec<&str> = oids.collect();
        if oids.is_empty() {
            return Ok(Vec::new());
        }
        let io = |source| GitError::Io {
            path: self.mirror.clone(),
            source,
        };
        let mut child = self
            .command(&["cat-file", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| GitError::Spawn { source })?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| io(std::io::Error::other("no stdin")))?;
        let input: String = oids.iter().map(|oid| format!("{oid}\n")).collect();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io(std::io::Error::other("no stdout")))?;
        let mut reader = BufReader::new(stdout);
        let mut blobs = Vec::with_capacity(oids.len());
        for oid in &oids {
            let mut header = String::new();
            reader.read_line(&mut header).map_err(io)?;
            let fields: Vec<&str> = header.split_whitespace().collect();
            let size = match fields[..] {
                [_, "blob", size] => size.parse::<u64>().ok(),
                _ => None,
            };
            let Some(size) = size.filter(|s| *s <= self.limits.max_file_bytes) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(GitError::Command {
                    command: "cat-file".into(),
                    repo: self.mirror.display().to_string(),
                    stderr: format!("unexpected answer for {oid}: {header:?}"),
                });
            };
            let mut bytes = Vec::with_capacity(size as usize);
            (&mut reader)
                .take(size)
                .read_to_end(&mut bytes)
                .map_err(io)?;
            let mut newline = [0u8; 1];
            reader.read_exact(&mut newline).map_err(io)?;
            blobs.push(bytes);
        }
        drop(reader);
        let _ = writer.join();
        let _ = child.wait();
        Ok(blobs)
    }

    fn ensure_mirror(&self) -> Result<(), GitError> {
        if self.mirror.join("HEAD").is_file() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.mirror).map_err(|source| GitError::Io {
            path: self.mirror.clone(),
            source,
        })?;
        self.git(&["init", "--quiet", "--bare"])?;
        Ok(())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(&self.mirror)
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "protocol.ext.allow=never",
            ])
            .args([
                "-c",
                "protocol.file.allow=always",
                "-c",
                "credential.helper=",
            ])
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ASKPASS", "/bin/false")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE");
        cmd
    }

    /// Runs git with a deadline; stdout on success.
    fn git(&self, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let name = args.first().copied().unwrap_or("git").to_string();
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| GitError::Spawn { source })?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(64 << 10).read_to_end(&mut buf);
            }
            buf
        });
        let status = crate::process::wait_deadline(&mut child, self.timeout).map_err(|source| {
            GitError::Io {
                path: self.mirror.clone(),
                source,
            }
        })?;
        let Some(status) = status else {
            return Err(GitError::Timeout {
                command: name,
                repo: self.url.clone(),
                timeout: self.timeout,
            });
        };
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        if !status.success() {
            return Err(GitError::Command {
                command: name,
                repo: self.url.clone(),
                stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
            });
        }
        Ok(stdout)
    }
}

impl GitSource {
    /// For a repository on this machine (a path or `file://` URL): the branch's head as the
    /// repository's ref files say, read without running git (cheap enough to check several
    /// times a second, so a `git push` into it is seen at once). `None` for remote URLs or when
    /// the ref cannot be read (the regular fetch then reports why).
    pub fn local_head(&self) -> Option<String> {
        let path = self.url.strip_prefix("file://").unwrap_or(&self.url);
        if !path.starts_with('/') {
            return None;
        }
        let mut dir = PathBuf::from(path);
        if dir.join(".git").is_dir() {
            dir = dir.join(".git");
        }
        let name = format!("refs/heads/{}", self.branch);
        if let Ok(text) = std::fs::read_to_string(dir.join(&name)) {
            return Some(text.trim().to_string());
        }
        let packed = std::fs::read_to_string(dir.join("packed-refs")).ok()?;
        packed.lines().find_map(|line| {
            let (id, r) = line.split_once(' ')?;
            (r == name).then(|| id.to_string())
        })
    }
}

/// Whether a repository path names a manifest file.
pub fn is_manifest_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml")
}
