//! berth-testkit: fixtures for tests only (a dev-dependency; never linked into `berth`).
//!
//! - [`Registry`]: a real CNCF Distribution registry (Debian's `docker-registry`) on a free
//!   127.0.0.1 port with its storage in a temp dir, optionally behind basic auth; dropped, it
//!   stops the process it started (by pid) and removes its storage.
//! - [`Etcd`]: a real single-member etcd (Debian's `etcd-server`) on free 127.0.0.1 ports
//!   with its data dir in a temp dir; dropped, it stops the process it started (by pid).
//! - [`push_test_images`]: builds and pushes the `berth-test/*` images with
//!   `scripts/test-images.sh` (one implementation shared with the shell fixtures).
//! - [`HostileRegistry`]: a registry on loopback that lies in one chosen way ([`Misbehave`]):
//!   wrong media types, huge or endless manifests, wrong sizes, slow bodies, bad redirects.
//! - [`busybox_rootfs`]: a minimal root filesystem from Debian's busybox-static.
//! - [`GitRemote`]: a bare repository and a work repository pushing to it (what a controller
//!   follows); [`git`] runs the CLI with a fixed identity.
//! - [`run_ok`], [`wait_for`]: run a command that must succeed; poll until something holds.
//! - [`promtool_check`]: `promtool check metrics` (Debian's prometheus) on an exposition.
//! - [`registration`], [`empty_report`]: a host's registration and a report of nothing.
//!
//! It must not touch anything it did not create. Panics are allowed here: it is test code.
#![allow(clippy::panic)]

mod hostile;
mod netns;
mod prometheus;

pub use hostile::{HOSTILE_REPO, HostileRegistry, Misbehave};
pub use netns::Netns;
pub use prometheus::Prometheus;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The repository's root directory (where `scripts/` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `berth-test/*` images [`push_test_images`] pushes.
pub const TEST_IMAGES: &[&str] = &["hello", "sleeper", "crasher", "burner", "layers", "multi"];

/// A running Distribution registry owned by the test.
pub struct Registry {
    child: Child,
    addr: String,
    auth: Option<(String, String)>,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts an anonymous registry.
    pub fn start() -> std::io::Result<Registry> {
        Self::spawn(None)
    }

    /// Starts a registry that requires HTTP basic auth (htpasswd, bcrypt).
    pub fn start_with_basic_auth(user: &str, password: &str) -> std::io::Result<Registry> {
        Self::spawn(Some((user.to_string(), password.to_string())))
    }

    fn spawn(auth: Option<(String, String)>) -> std::io::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-registry-")
            .tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog: {{ level: warn, accesslog: {{ disabled: true }} }}\n\
             storage:\n  filesystem: {{ rootdirectory: {} }}\n  delete: {{ enabled: true }}\n\
             http: {{ addr: {addr}, secret: berth-test-secret }}\n",
            storage.display()
        );
        if let Some((user, password)) = &auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()?;
            if !out.status.success() {
                return Err(std::io::Error::other(
                    "htpasswd failed: install apache2-utils",
                ));
            }
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, out.stdout)?;
            config.push_str(&format!(
                "auth: {{ htpasswd: {{ realm: berth-test, path: {} }} }}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                std::io::Error::other(format!(
                    "cannot start docker-registry ({e}): run scripts/install-deps.sh"
                ))
            })?;
        let mut registry = Registry {
            child,
            addr,
            auth,
            dir,
        };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&mut self) -> std::io::Result<()> {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.path().join("registry.log"))
                    .unwrap_or_default();
                return Err(std::io::Error::other(format!(
                    "registry exited ({status}): {log}"
                )));
            }
            if let Ok(200 | 401) = http_status(&self.addr, "/v2/") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other(format!(
            "registry on {} did not become ready",
            self.addr
        )))
    }

    fn adopt(child: Child, addr: String, dir: tempfile::TempDir) -> Registry {
        Registry {
            child,
            addr,
            auth: None,
            dir,
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The registry's storage root: blobs live under
    /// `docker/registry/v2/blobs/sha256/<first 2 hex>/<hex>/data`.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Path of a blob's bytes in the registry's storage (to corrupt it in tests).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// Builds and pushes the given test images (all of [`TEST_IMAGES`] when empty).
    pub fn push_test_images(&self, names: &[&str]) -> std::io::Result<()> {
        push_test_images_to(&self.addr, self.auth.as_ref(), names)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Our own child, by pid; the temp dir then removes the storage.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running single-member etcd owned by the test.
pub struct Etcd {
    child: Child,
    client: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd on free loopback ports (client and peer) with a temp data dir; it allows
    /// transactions of up to 10,000 ops and requests of up to 16 MiB (docs/controller.md).
    pub fn start() -> std::io::Result<Etcd> {
        let mut last = None;
        // a free port can be taken between the check and etcd's bind: try a few times
        for _ in 0..3 {
            match Self::spawn() {
                Ok(etcd) => return Ok(etcd),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("etcd did not start")))
    }

    fn spawn() -> std::io::Result<Etcd> {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-etcd-")
            .tempdir()?;
        let client = format!("127.0.0.1:{}", free_port()?);
        let peer = format!("http://127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(dir.path().join("etcd.log"))?;
        let child = Command::new("etcd")
            .arg("--name=berth-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls=http://{client}"))
            .arg(format!("--advertise-client-urls=http://{client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=berth-test={peer}"))
            .args(["--max-txn-ops=10000", "--max-request-bytes=16777216"])
            .args(["--logger=zap", "--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                std::io::Error::other(format!(
                    "cannot start etcd ({e}): run scripts/install-deps.sh (etcd-server)"
                ))
            })?;
        let mut etcd = Etcd { child, client, dir };
        etcd.wait_ready()?;
        Ok(etcd)
    }

    fn wait_ready(&mut self) -> std::io::Result<()> {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "etcd exited ({status}): {}",
                    self.log()
                )));
            }
            if http_get(&self.client, "/health").is_ok_and(|b| b.contains("true")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other(format!(
            "etcd on {} did not become healthy: {}",
            self.client,
            self.log()
        )))
    }

    /// The client endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// The store URL for `berth controller --store`: `etcd://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.client)
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Our own child, by pid; the temp dir then removes the data dir.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds and pushes test images to `addr` (`127.0.0.1:PORT`) with `scripts/test-images.sh`.
pub fn push_test_images(addr: &str, names: &[&str]) -> std::io::Result<()> {
    push_test_images_to(addr, None, names)
}

fn push_test_images_to(
    addr: &str,
    auth: Option<&(String, String)>,
    names: &[&str],
) -> std::io::Result<()> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/test-images.sh"))
        .arg("push")
        .arg(addr)
        .args(names);
    if let Some((user, password)) = auth {
        cmd.env("BERTH_TEST_REGISTRY_AUTH", format!("{user}:{password}"));
    }
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "scripts/test-images.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Writes a minimal root filesystem into `dir`: `/bin/busybox` with a symlink per applet,
/// `/etc/passwd` and `/etc/group` (root, app 1000, nobody), and empty `proc dev sys tmp`.
pub fn busybox_rootfs(dir: &Path) -> std::io::Result<()> {
    for sub in [
        "bin", "etc", "proc", "dev", "sys", "tmp", "root", "home/app",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let busybox = dir.join("bin/busybox");
    std::fs::copy("/bin/busybox", &busybox)?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = dir.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n\
         nobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::os::unix::fs::chown(dir.join("home/app"), Some(1000), Some(1000))?;
    Ok(())
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The status code of a plain `GET path` against `addr` (HTTP/1.0, no body read).
pub fn http_status(addr: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))
}

/// `GET path` against `addr` (HTTP/1.0); the body as text.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// Runs `c` and returns its output; panics with the command and its stdout and stderr unless
/// it exits 0.
pub fn run_ok(c: &mut Command) -> std::process::Output {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` every 100 ms until it returns a value, for at most `secs` seconds; then panics
/// with `timed out after {secs}s waiting for {what}` and what `context` says (the daemons'
/// logs, a status: whatever explains the wait).
#[allow(
    clippy::disallowed_methods,
    reason = "tests wait on real processes in real time"
)]
pub fn wait_for<T>(
    what: &str,
    secs: u64,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::Instant::now() >= deadline {
            panic!("timed out after {secs}s waiting for {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The registration of host `name`: no labels, no declared capacity, agent version `test`.
pub fn registration(name: &str) -> berth_manifests::wire::Registration {
    berth_manifests::wire::Registration {
        name: name.into(),
        labels: Default::default(),
        capacity: Default::default(),
        agent_version: "test".into(),
    }
}

/// A report from `host` of no instances and no apps (assignment version 0).
pub fn empty_report(host: &str) -> berth_manifests::wire::HostReport {
    berth_manifests::wire::HostReport {
        host: host.into(),
        assignment_version: 0,
        instances: Vec::new(),
        apps: Vec::new(),
        events: Vec::new(),
    }
}

/// Runs `promtool check metrics` on `text` (a Prometheus exposition); panics with promtool's
/// findings and the text unless it accepts it (lint warnings included, as promtool exits 1).
pub fn promtool_check(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool: {e} (Debian package prometheus; scripts/install-deps.sh)")
        });
    if let Some(mut stdin) = promtool.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("writing to promtool: {e}"));
    }
    let out = promtool
        .wait_with_output()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool check metrics refused the text:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bare git repository (the "remote" a controller follows) and a work repository that
/// pushes to its `main` branch: `ROOT/remote.git` and `ROOT/work`. The caller owns `ROOT`
/// (usually a temp dir, removed on drop).
#[derive(Debug, Clone)]
pub struct GitRemote {
    bare: PathBuf,
    work: PathBuf,
}

impl GitRemote {
    /// Creates both repositories under `root`; panics (with git's error) when git cannot.
    pub fn init(root: &Path) -> GitRemote {
        let bare = root.join("remote.git");
        let work = root.join("work");
        for dir in [&bare, &work] {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        git(&bare, &["init", "--quiet", "--bare"]);
        git(&work, &["init", "--quiet"]);
        git(&work, &["remote", "add", "origin", &bare.to_string_lossy()]);
        GitRemote { bare, work }
    }

    /// The bare repository.
    pub fn bare(&self) -> &Path {
        &self.bare
    }

    /// The work repository.
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// `file://` URL of the bare repository (what a controller is given).
    pub fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Writes each `(path, Some(text))` and removes each `(path, None)` in the work
    /// repository (paths relative to it, parent dirs created), commits everything with
    /// `message` (even nothing: a new commit each time) and pushes it to `main` (forced). Returns the new commit's id.
    pub fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (path, text) in files {
            let full = self.work.join(path);
            match text {
                Some(text) => {
                    if let Some(parent) = full.parent() {
                        std::fs::create_dir_all(parent)
                            .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
                    }
                    std::fs::write(&full, text)
                        .unwrap_or_else(|e| panic!("write {}: {e}", full.display()));
                }
                None => {
                    let _ = std::fs::remove_file(&full);
                }
            }
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "--quiet", "--allow-empty", "-m", message],
        );
        git(
            &self.work,
            &["push", "--quiet", "--force", "origin", "HEAD:main"],
        );
        git(&self.work, &["rev-parse", "HEAD"]).trim().to_string()
    }

    /// [`GitRemote::commit`] of one file.
    pub fn push(&self, path: &str, text: &str, message: &str) -> String {
        self.commit(&[(path, Some(text))], message)
    }
}

/// Runs the `git` CLI in `dir` with a fixed identity, `main` as the default branch and no
/// user or system config; panics with git's stderr on failure. Returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run git {args:?}: {e}; install git"));
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promtool_check_accepts_a_valid_exposition() {
        promtool_check("# HELP x_total Things.\n# TYPE x_total counter\nx_total 1\n");
    }

    #[test]
    #[should_panic(expected = "promtool check metrics refused the text")]
    fn promtool_check_refuses_a_malformed_exposition() {
        promtool_check("x_total{ 1\n");
    }

    #[test]
    fn git_remote_commits_and_pushes_files_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let repo = GitRemote::init(dir.path());
        let first = repo.commit(
            &[("a/b.yaml", Some("one\n")), ("c.yaml", Some("two\n"))],
            "add",
        );
        let second = repo.commit(&[("c.yaml", None)], "remove c");
        assert_ne!(first, second);
        assert_eq!(git(repo.bare(), &["rev-parse", "main"]).trim(), second);
        let files = git(repo.bare(), &["ls-tree", "-r", "--name-only", "main"]);
        assert_eq!(files, "a/b.yaml\n");
        assert!(repo.url().starts_with("file:///"));
    }
}
