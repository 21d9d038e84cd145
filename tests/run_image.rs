//! `berth run IMAGE` against the real registry: the image is pulled when missing, its
//! layers become the overlay (whiteouts and opaque directories honoured), its config gives
//! the command, and a command after `--` replaces the image's Cmd. Needs root.

// Test helpers outside #[test] functions: clippy's allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use berth_testkit::Registry;

fn berth(data: &Path, reg: &Registry) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("--data-dir")
        .arg(data)
        .arg("--insecure-registry")
        .arg(reg.addr())
        .arg("--log")
        .arg("warn");
    cmd
}

fn is_root() -> bool {
    // The effective uid, from /proc (keeps `unsafe` out of tests).
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn run_image_pulls_when_missing_and_honours_whiteouts() {
    assert!(
        is_root(),
        "berth run needs root: run the suite as root (CI does)"
    );
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["layers"]).unwrap();
    let data = tempfile::tempdir().unwrap();
    let image = format!("{}/berth-test/layers", reg.addr());

    // The image's own Cmd lists /data and fails if the whited-out file shows through.
    let out = berth(data.path(), &reg)
        .args(["run", "--rm", &image])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("c\n"), "upper file missing: {stdout}");
    assert!(
        !stdout.contains("sub"),
        "opaque /data showed lower content: {stdout}"
    );
    assert!(stdout.contains("kept"), "{stdout}");

    // Second run: no pull (the registry is gone), command replaced, exit code passed through.
    drop(reg);
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "run",
            "--rm",
            &image,
            "--",
            "/bin/sh",
            "-c",
            "test ! -e /etc/removed; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_of_a_missing_image_fails_naming_it() {
    assert!(
        is_root(),
        "berth run needs root: run the suite as root (CI does)"
    );
    let reg = Registry::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let image = format!("{}/berth-test/nothing-here", reg.addr());
    let out = berth(data.path(), &reg)
        .args(["run", "--rm", &image])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing-here"), "{stderr}");
}
