//! Faults with the real `berth up` (issue 9), everything inside a network namespace the test
//! creates (as in tests/up_cli.rs), with its own data dir and cgroup parent:
//!
//! - the registry goes away during a rollout: the new revision waits (its pull backs off), the
//!   old revision keeps serving, and the rollout completes once the registry is back;
//! - `berth up` is killed with SIGKILL at several points of rollouts: after a restart there is
//!   no duplicate instance and no healthy instance of the target revision was restarted;
//! - after `berth down` nothing is left: no mount under the data dir, no cgroup under our
//!   parent, no process started from the data dir.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods, reason = "tests time their own waits")]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_testkit::{Registry, run_ok};

mod up_support;
use up_support::Sandbox;

/// A tmpfs of `size` mounted on a temp dir; unmounted (lazily, ours only) on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-tmpfs-")
            .tempdir()
            .unwrap();
        run_ok(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(dir.path()),
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// What these tests do with a sandbox beyond the shared one.
trait Faults {
    fn containers(&self) -> Vec<(String, u64, String, u64)>;
    fn up_pid(&self) -> Option<i64>;
    fn up(&self, dir: &Path);
    fn down_and_check_nothing_left(&self);
}

impl Faults for Sandbox {
    /// The app's containers: (id, revision, state, pid).
    fn containers(&self) -> Vec<(String, u64, String, u64)> {
        let out = self
            .berth(&["ps", "-a", "--local", "-o", "json"])
            .output()
            .unwrap();
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        list.as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c["id"].as_str().unwrap_or_default().to_string(),
                            c["revision"]
                                .as_str()
                                .and_then(|r| r.parse().ok())
                                .unwrap_or(0),
                            c["state"].as_str().unwrap_or_default().to_string(),
                            c["pid"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn up_pid(&self) -> Option<i64> {
        let text = std::fs::read_to_string(self.data().join("up/up.pid")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["pid"].as_i64()
    }

    fn up(&self, dir: &Path) {
        let mut args = vec![
            "up",
            "-d",
            "--manifests",
            dir.to_str().unwrap(),
            "--name",
            "f",
        ];
        args.extend(REGISTRY_FLAGS);
        run_ok(&mut self.berth(&args));
    }

    /// `berth down`, then checks nothing it made is left.
    fn down_and_check_nothing_left(&self) {
        run_ok(&mut self.berth(&["down", "--timeout", "5s"]));
        let data = self.data().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&data)).collect();
        assert!(left.is_empty(), "mounts left after down: {left:#?}");
        for c in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let parent = c.path().join(self.cgroup_parent());
            if let Ok(children) = std::fs::read_dir(&parent) {
                let dirs: Vec<_> = children
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path())
                    .collect();
                assert!(dirs.is_empty(), "cgroups left after down: {dirs:#?}");
            }
        }
        let procs: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .filter_map(|e| {
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                cmd.contains(&data)
                    .then(|| format!("{}: {cmd}", e.path().display()))
            })
            .collect();
        assert!(procs.is_empty(), "processes left after down: {procs:#?}");
    }
}

const REGISTRY_FLAGS: [&str; 4] = [
    "--insecure-registry",
    "127.0.0.1:5000",
    "--registry-mirror",
    "docker.io=127.0.0.1:5000",
];

fn wait_for<T>(what: &str, secs: u64, sandbox: &Sandbox, f: impl FnMut() -> Option<T>) -> T {
    sandbox.wait_for(what, secs, f)
}

fn manifest(image: &str, extra: &str) -> String {
    format!(
        "app: hello\nimage: {image}\nport: 8080\nexpose: {{ port: 8080 }}\n\
         health: {{ http: /up, interval: 1s, timeout: 1s }}\n\
         update: {{ max_surge: 0, max_unavailable: 1, deadline: 60s }}\n\
         stop: {{ grace: 2s }}\n{extra}"
    )
}

fn ready_at(sandbox: &Sandbox, revision: u64) -> Option<()> {
    let st = sandbox.status();
    (st["apps"][0]["revision"] == revision && st["apps"][0]["ready"] == 1).then_some(())
}

/// Puts a copy of `berth-test/hello:latest`'s manifest with an extra annotation under
/// `tag`: a new digest whose blobs the agent already has, so its pull needs only the
/// registry's manifest. Returns the digest.
fn push_variant(reg: &Registry, tag: &str) -> String {
    let accept = "application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.v2+json";
    let url = format!("http://{}/v2/berth-test/hello/manifests", reg.addr());
    let out = run_ok(
        Command::new("curl")
            .args(["-fsS", "-D", "-", "-H"])
            .arg(format!("Accept: {accept}"))
            .arg(format!("{url}/latest")),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let media_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(body).unwrap();
    doc["annotations"] = serde_json::json!({ "berth.test/variant": tag });
    let bytes = serde_json::to_vec(&doc).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    let out = run_ok(
        Command::new("curl")
            .args(["-fsS", "-D", "-", "-o", "/dev/null", "-X", "PUT", "-H"])
            .arg(format!("Content-Type: {media_type}"))
            .arg("--data-binary")
            .arg(format!("@{}", file.path().display()))
            .arg(format!("{url}/{tag}")),
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("docker-content-digest")
                .then(|| v.trim().to_string())
        })
        .unwrap()
}

#[test]
fn a_registry_outage_during_a_rollout_keeps_the_old_revision_serving() {
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["hello"]).unwrap();
    let digest = push_variant(&reg, "v2");
    let sandbox = Sandbox::new("regdown");
    let inside = reg.serve_in(&sandbox.netns, 5000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.yaml");
    std::fs::write(&file, manifest("berth-test/hello:latest", "")).unwrap();
    sandbox.up(dir.path());
    wait_for("revision 1 ready", 90, &sandbox, || ready_at(&sandbox, 1));

    let serving: Vec<_> = sandbox
        .containers()
        .into_iter()
        .filter(|c| c.2 == "running")
        .collect();
    assert_eq!(serving.len(), 1, "{serving:?}");

    // the registry goes away; revision 2 pins a digest (no tag to resolve) not pulled yet
    drop(inside);
    let cut = Instant::now();
    std::fs::write(&file, manifest(&format!("berth-test/hello@{digest}"), "")).unwrap();
    wait_for("revision 2 to be targeted", 30, &sandbox, || {
        (sandbox.status()["apps"][0]["revision"] == 2).then_some(())
    });
    // for a while: the old instance keeps running (same pid) and answering
    let (mut answered, mut missed) = (0, Vec::new());
    while cut.elapsed() < Duration::from_secs(12) {
        if sandbox.http(8080, "/up").is_some() {
            answered += 1;
        } else {
            missed.push(cut.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let running: Vec<_> = sandbox
        .containers()
        .into_iter()
        .filter(|c| c.2 == "running")
        .collect();
    assert_eq!(
        running,
        serving,
        "the serving instance changed during the outage\nup.log:\n{}",
        sandbox.log_tail()
    );
    assert!(
        missed.len() * 10 <= answered,
        "the old revision missed {} of {} requests during the outage, at {missed:?}\nup.log:\n{}",
        missed.len(),
        answered + missed.len(),
        sandbox.log_tail()
    );
    eprintln!(
        "old revision answered {answered} requests during a 12 s registry outage, missed {}",
        missed.len()
    );

    // the registry returns: the rollout completes
    let _back = reg.serve_in(&sandbox.netns, 5000).unwrap();
    let back = Instant::now();
    wait_for(
        "revision 2 ready after the registry returned",
        120,
        &sandbox,
        || ready_at(&sandbox, 2),
    );
    eprintln!(
        "revision 2 ready {:?} after the registry returned",
        back.elapsed()
    );
    wait_for("revision 2 to answer", 30, &sandbox, || {
        sandbox.http(8080, "/up")
    });
    wait_for("only revision 2 to run", 30, &sandbox, || {
        let running: Vec<_> = sandbox
            .containers()
            .into_iter()
            .filter(|c| c.2 == "running")
            .collect();
        (running.len() == 1 && running[0].1 == 2).then_some(())
    });
    sandbox.down_and_check_nothing_left();
}

#[test]
fn kill_9_of_up_during_rollouts_leaves_no_duplicate_and_restarts_no_healthy_instance() {
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["hello"]).unwrap();
    let sandbox = Sandbox::new("kill9");
    let _inside = reg.serve_in(&sandbox.netns, 5000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.yaml");
    std::fs::write(&file, manifest("berth-test/hello:latest", "")).unwrap();
    sandbox.up(dir.path());
    wait_for("revision 1 ready", 90, &sandbox, || ready_at(&sandbox, 1));

    // kill points: ms after the edit that starts a new rollout
    for (n, delay_ms) in [0u64, 250, 700, 1500, 3000].into_iter().enumerate() {
        let revision = n as u64 + 2;
        std::fs::write(
            &file,
            manifest(
                "berth-test/hello:latest",
                &format!("env: {{ ROUND: \"{n}\" }}\n"),
            ),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let pid = sandbox.up_pid().expect("up.pid");
        run_ok(Command::new("kill").args(["-KILL", &pid.to_string()]));
        wait_for("the killed up to exit", 10, &sandbox, || {
            (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
        let before = sandbox.containers();
        eprintln!("killed up {delay_ms} ms into rollout {revision}: {before:?}");
        sandbox.up(dir.path());
        wait_for(&format!("revision {revision} ready"), 90, &sandbox, || {
            ready_at(&sandbox, revision)
        });
        // settle: old instances leave after their grace
        std::thread::sleep(Duration::from_secs(3));
        let after = sandbox.containers();
        let running: Vec<_> = after.iter().filter(|c| c.2 == "running").collect();
        assert_eq!(
            running.len(),
            1,
            "duplicate instances after a restart at {delay_ms} ms: {after:?}"
        );
        assert_eq!(running[0].1, revision, "{after:?}");
        // an instance of the target revision already running before the kill was adopted,
        // not restarted: same id, same pid
        for b in before
            .iter()
            .filter(|c| c.1 == revision && c.2 == "running")
        {
            assert!(
                after.iter().any(|a| a.0 == b.0 && a.3 == b.3),
                "instance {} (pid {}) of revision {revision} was restarted: {after:?}",
                b.0,
                b.3
            );
        }
        assert!(sandbox.http(8080, "/up").is_some());
    }
    sandbox.down_and_check_nothing_left();
}

/// Fills the filesystem of `dir` with one file until ENOSPC; returns the file.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 << 10];
    loop {
        if let Err(e) = f.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(libc_enospc()), "{e}");
            break;
        }
    }
    // smaller writes to take the last bytes
    while f.write_all(&[0u8; 512]).is_ok() {}
    path
}

fn libc_enospc() -> i32 {
    28
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_old_revision_keeps_serving() {
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["hello"]).unwrap();
    let tmpfs = Tmpfs::new("64m");
    let data = tempfile::Builder::new()
        .prefix("data-")
        .tempdir_in(tmpfs.0.path())
        .unwrap();
    let sandbox = Sandbox::with_data("diskfull", data);
    let _inside = reg.serve_in(&sandbox.netns, 5000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.yaml");
    std::fs::write(&file, manifest("berth-test/hello:latest", "")).unwrap();
    sandbox.up(dir.path());
    wait_for("revision 1 ready", 90, &sandbox, || ready_at(&sandbox, 1));
    let serving: Vec<_> = sandbox
        .containers()
        .into_iter()
        .filter(|c| c.2 == "running")
        .collect();

    // the disk fills up, then an edit asks for revision 2
    let filler = fill(tmpfs.0.path());
    std::fs::write(
        &file,
        manifest("berth-test/hello:latest", "env: { V: \"2\" }\n"),
    )
    .unwrap();
    let full = Instant::now();
    let (mut answered, mut missed) = (0, 0);
    while full.elapsed() < Duration::from_secs(10) {
        if sandbox.http(8080, "/up").is_some() {
            answered += 1;
        } else {
            missed += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = std::fs::read_to_string(sandbox.data().join("up/up.log")).unwrap_or_default();
    let st = sandbox.status();
    eprintln!(
        "disk full for 10 s: old revision answered {answered}, missed {missed}; status: {st}\n\
         up.log:\n{}",
        sandbox.log_tail()
    );
    let running: Vec<_> = sandbox
        .containers()
        .into_iter()
        .filter(|c| c.2 == "running")
        .collect();
    assert_eq!(
        running, serving,
        "the serving instance changed while the disk was full"
    );
    assert!(
        missed * 10 <= answered,
        "missed {missed} of {}",
        answered + missed
    );
    // the error says what is full
    let said = format!("{log}{st}");
    assert!(
        said.contains("No space left on device") || said.contains("no space"),
        "no disk-full error reported:\n{}",
        sandbox.log_tail()
    );
    assert!(
        said.lines()
            .any(|l| l.to_lowercase().contains("space")
                && l.contains(tmpfs.0.path().to_str().unwrap())),
        "the disk-full error does not name the path:\n{}",
        sandbox.log_tail()
    );

    // space returns: the rollout completes, nothing is corrupt
    std::fs::remove_file(filler).unwrap();
    let freed = Instant::now();
    wait_for(
        "revision 2 ready after space returned",
        120,
        &sandbox,
        || ready_at(&sandbox, 2),
    );
    eprintln!(
        "revision 2 ready {:?} after space returned",
        freed.elapsed()
    );
    let history = sandbox.data().join("agent/history.json");
    let text = std::fs::read_to_string(&history).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap();
    sandbox.down_and_check_nothing_left();
}
