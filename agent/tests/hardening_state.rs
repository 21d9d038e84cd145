//! Crash safety of every atomic state write (issue 9): the agent's `agentstate::write_atomic`
//! (assignment and history), the container store's `container::write_atomic`, the content
//! store's `content::write_atomic` and the controller's token creation. A child process (this
//! test binary re-run as the ignored `crash_child` test) writes versioned records in a loop and
//! is killed with SIGKILL at random moments; after each kill the file must hold a whole record,
//! never older than before (the old or the new content, never a torn one), and the next writer
//! must succeed. Kills that land between creating the temp file and the rename are counted
//! (the temp file is still there) and at least some must, so the window is really exercised.
//!
//! Also: one app's history record corrupted → only that app loses its history.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]
#![allow(
    clippy::disallowed_methods,
    reason = "random kill delays are seeded from the clock"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_agent::host::agentstate::{self, FileState, HISTORY_FILE};
use berth_agent::reconcile::history::{AppHistory, History};
use berth_agent::reconcile::traits::StateStore;

/// Size of a record: large enough that write and fsync take a while.
const PAD: usize = 256 << 10;

/// The helpers under test, by the name the child is told.
const HELPERS: [&str; 4] = ["agentstate", "container", "content", "token"];

fn record(v: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"v": v, "pad": "x".repeat(PAD)})).unwrap()
}

/// The target file each helper writes in `dir`.
fn target(helper: &str, dir: &Path) -> PathBuf {
    match helper {
        "token" => dir.join("controller/token"),
        _ => dir.join("state.json"),
    }
}

/// The version in the target file: `None` when absent; panics when torn.
fn read_version(helper: &str, dir: &Path) -> Option<u64> {
    let path = target(helper, dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("{}: {e}", path.display()),
    };
    if helper == "token" {
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()),
            "torn token file {}: {text:?}",
            path.display()
        );
        return Some(1);
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "torn {helper} file {} ({} bytes): {e}",
            path.display(),
            bytes.len()
        )
    });
    assert_eq!(value["pad"].as_str().unwrap().len(), PAD, "torn record");
    Some(value["v"].as_u64().unwrap())
}

/// One write of version `v` with the helper under test.
fn write(helper: &str, dir: &Path, v: u64) {
    match helper {
        "agentstate" => agentstate::write_atomic(dir, "state.json", &record(v)).unwrap(),
        "container" => {
            berth_agent::host::container::write_atomic(dir, "state.json", &record(v), true).unwrap()
        }
        "content" => {
            let tmp = dir.join("tmp");
            std::fs::create_dir_all(&tmp).unwrap();
            berth_agent::host::content::write_atomic(&tmp, &dir.join("state.json"), &record(v))
                .unwrap()
        }
        "token" => {
            // creation is the only write: start over each time
            let _ = std::fs::remove_file(target(helper, dir));
            berth_controller::token::load_or_create_token(dir).unwrap();
        }
        other => panic!("no helper {other}"),
    }
}

/// Temp files a killed writer may have left in `dir`.
fn temp_files(helper: &str, dir: &Path) -> Vec<PathBuf> {
    let dirs = match helper {
        "token" => vec![dir.join("controller")],
        "content" => vec![dir.join("tmp")],
        _ => vec![dir.to_path_buf()],
    };
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.contains("tmp") || name.starts_with("write-")
        })
        .collect()
}

/// The child: writes ever newer versions until killed.
#[test]
#[ignore = "helper process of the crash tests, run by them"]
fn crash_child() {
    let (Ok(helper), Ok(dir)) = (
        std::env::var("HARDENING_CRASH_HELPER"),
        std::env::var("HARDENING_CRASH_DIR"),
    ) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut v = read_version(&helper, &dir).unwrap_or(0);
    loop {
        v += 1;
        write(&helper, &dir, v);
    }
}

/// A small xorshift generator: kill delays need no quality, only spread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn crash_loop(helper: &str, kills: usize) {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("{helper}: seed {seed}");
    let mut rng = Rng(seed);
    let mut last = None;
    let mut mid_write = 0;
    for _ in 0..kills {
        // what earlier kills left is cleared, so a temp file after this kill is this one's
        for t in temp_files(helper, dir.path()) {
            std::fs::remove_file(t).unwrap();
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--ignored", "--nocapture"])
            .env("HARDENING_CRASH_HELPER", helper)
            .env("HARDENING_CRASH_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(5_000 + rng.next() % 40_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if !temp_files(helper, dir.path()).is_empty() {
            mid_write += 1;
        }
        let now = read_version(helper, dir.path());
        assert!(
            now >= last,
            "{helper}: the file went back from {last:?} to {now:?}"
        );
        last = now;
    }
    eprintln!(
        "{helper}: {kills} kills, {mid_write} left a temp file (killed mid-write), \
         last version {last:?}"
    );
    assert!(
        mid_write > 0,
        "{helper}: no kill landed during a write; the test proved nothing"
    );
    // the next writer succeeds over whatever the crashes left
    write(helper, dir.path(), last.unwrap_or(0) + 1);
    assert!(read_version(helper, dir.path()) > last || helper == "token");
}

#[test]
fn agentstate_writes_survive_sigkill_at_any_point() {
    crash_loop("agentstate", 40);
}

#[test]
fn container_state_writes_survive_sigkill_at_any_point() {
    crash_loop("container", 40);
}

#[test]
fn content_writes_survive_sigkill_at_any_point() {
    crash_loop("content", 40);
}

#[test]
fn controller_token_creation_survives_sigkill_at_any_point() {
    crash_loop("token", 40);
}

#[test]
fn every_helper_has_a_crash_test() {
    // a new helper must get its crash loop too
    for helper in HELPERS {
        let dir = tempfile::tempdir().unwrap();
        write(helper, dir.path(), 1);
        assert!(read_version(helper, dir.path()).is_some(), "{helper}");
    }
}

#[test]
fn temp_files_of_killed_agents_are_removed_when_the_state_opens() {
    let dir = tempfile::tempdir().unwrap();
    let state = FileState::open(dir.path()).unwrap();
    state.save_history(&History::default()).unwrap();
    // what a writer killed between create and rename leaves (a pid that no longer runs)
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let stale = dir
        .path()
        .join(format!(".{HISTORY_FILE}.tmp-{}", gone.id()));
    // the temp file of a writer that still runs (this process) is left alone
    let live = dir
        .path()
        .join(format!(".{HISTORY_FILE}.tmp-{}", std::process::id()));
    std::fs::write(&live, b"{").unwrap();
    std::fs::write(&stale, b"{\"apps\": {\"web\": {\"next_s").unwrap();
    // and an unrelated file that must stay
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, b"keep").unwrap();
    let state = FileState::open(dir.path()).unwrap();
    assert!(!stale.exists(), "stale temp file kept: {}", stale.display());
    assert!(other.exists());
    assert!(live.exists(), "a running writer's temp file was removed");
    assert_eq!(state.load_history().unwrap(), History::default());
}

#[test]
fn one_apps_corrupt_history_record_affects_only_that_app() {
    let dir = tempfile::tempdir().unwrap();
    let state = FileState::open(dir.path()).unwrap();
    let mut history = History::default();
    for (app, seq) in [("api", 7), ("web", 3), ("worker", 11)] {
        history.apps.insert(
            app.into(),
            AppHistory {
                next_seq: seq,
                ..AppHistory::default()
            },
        );
    }
    state.save_history(&history).unwrap();
    // corrupt web's record only
    let path = dir.path().join(HISTORY_FILE);
    let mut raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    raw["apps"]["web"]["next_seq"] = serde_json::json!("not a number");
    std::fs::write(&path, serde_json::to_vec(&raw).unwrap()).unwrap();

    let loaded = state.load_history().unwrap();
    assert_eq!(loaded.apps["api"].next_seq, 7);
    assert_eq!(loaded.apps["worker"].next_seq, 11);
    assert!(
        !loaded.apps.contains_key("web"),
        "the corrupt record should be dropped, got {:?}",
        loaded.apps.get("web")
    );
    // it recovers: the next save writes a whole record for it again
    let mut next = loaded.clone();
    next.apps.insert(
        "web".into(),
        AppHistory {
            next_seq: 1,
            ..AppHistory::default()
        },
    );
    state.save_history(&next).unwrap();
    assert_eq!(state.load_history().unwrap(), next);

    // a file that is not a history at all is still refused as invalid input (the agent
    // then starts with an empty history, as before)
    std::fs::write(&path, b"[1, 2").unwrap();
    let err = state.load_history().unwrap_err();
    assert_eq!(err.kind(), berth_manifests::ErrorKind::InvalidInput);
}
