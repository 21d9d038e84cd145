//! The agent's state files: one conformance suite for the real file store and its fake, and
//! the file store's crash safety (the old or the new file, never a torn one).
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use berth_agent::host::agentstate::{ASSIGNMENT_FILE, FileState, write_atomic};
use berth_agent::reconcile::fake::FakeState;
use berth_agent::reconcile::history::{AppHistory, History};
use berth_agent::reconcile::traits::StateStore;
use berth_manifests::ErrorKind;
use berth_manifests::wire::Assignment;
use common::{assigned, assignment, revision};

/// What every `StateStore` does.
fn conformance(store: &dyn StateStore) {
    assert_eq!(store.load_assignment().unwrap(), None, "empty at first");
    assert_eq!(store.load_history().unwrap(), History::default());
    let a1 = assignment(1, vec![assigned(revision("web", 1, ""), None, 2)]);
    store.save_assignment(&a1).unwrap();
    assert_eq!(store.load_assignment().unwrap(), Some(a1));
    let a2 = assignment(2, vec![]);
    store.save_assignment(&a2).unwrap();
    assert_eq!(store.load_assignment().unwrap(), Some(a2), "replaced");
    let mut h = History::default();
    h.apps.insert(
        "web".into(),
        AppHistory {
            next_seq: 4,
            ..AppHistory::default()
        },
    );
    store.save_history(&h).unwrap();
    assert_eq!(store.load_history().unwrap(), h);
}

#[test]
fn file_state_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(&FileState::open(dir.path().join("agent")).unwrap());
}

#[test]
fn fake_state_conforms() {
    conformance(&*FakeState::new());
}

#[test]
fn file_state_survives_a_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let a = assignment(3, vec![assigned(revision("web", 3, ""), None, 1)]);
    FileState::open(dir.path())
        .unwrap()
        .save_assignment(&a)
        .unwrap();
    assert_eq!(
        FileState::open(dir.path())
            .unwrap()
            .load_assignment()
            .unwrap(),
        Some(a)
    );
}

#[test]
fn a_leftover_temp_file_does_not_change_what_loads() {
    // A crash between writing the temp file and renaming it leaves the old file in place.
    let dir = tempfile::tempdir().unwrap();
    let store = FileState::open(dir.path()).unwrap();
    let old = assignment(1, vec![]);
    store.save_assignment(&old).unwrap();
    std::fs::write(
        dir.path().join(".assignment.json.tmp-999"),
        b"{\"host\": \"h1\", \"vers",
    )
    .unwrap();
    assert_eq!(store.load_assignment().unwrap(), Some(old));
}

#[test]
fn a_corrupt_file_is_invalid_input_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileState::open(dir.path()).unwrap();
    std::fs::write(dir.path().join(ASSIGNMENT_FILE), b"{not json").unwrap();
    let err = store.load_assignment().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("assignment.json"), "{err}");
}

#[test]
fn readers_see_the_old_or_the_new_file_never_a_torn_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileState::open(dir.path()).unwrap());
    let big = |v: u64| {
        let apps = (0..50)
            .map(|i| assigned(revision(&format!("app{i}"), v, ""), None, 1))
            .collect();
        assignment(v, apps)
    };
    store.save_assignment(&big(0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let a: Assignment = store.load_assignment().unwrap().unwrap();
                assert_eq!(a.apps.len(), 50);
                reads += 1;
            }
            reads
        })
    };
    for v in 1..100 {
        store.save_assignment(&big(v)).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    assert_eq!(store.load_assignment().unwrap().unwrap().version, 99);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn write_atomic_fails_cleanly_in_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(write_atomic(&missing, "x.json", b"{}").is_err());
    assert!(!missing.exists());
}

#[test]
fn the_fake_fails_the_next_calls_on_request() {
    let store = FakeState::new();
    store.fail_next(2, ErrorKind::Unavailable);
    assert!(store.load_assignment().is_err());
    assert!(store.save_history(&History::default()).is_err());
    assert!(store.load_history().is_ok());
}
