//! `berth pull` (the real binary) against a registry that lies (berth-testkit's
//! [`HostileRegistry`]): wrong media types, a 100 MB manifest, an endless manifest, a blob
//! whose `Content-Length` or size is wrong, a blob that never ends, a corrupted blob, a
//! redirect to a link-local address. Each pull must fail within a time bound, with an error
//! naming the reference or the digest, with bounded memory (the peak RSS of the `berth`
//! process, from wait4's rusage), and store nothing (`berth images` empty, no blob kept).
//! The same fixture serving its image correctly is pulled first, so the faults, not the
//! fixture, make the pulls fail. (Bodies at 1 byte/s are tested against the library with a
//! short speed window in agent/tests/hardening_registry_slow.rs: the default window is 30 s.)

// Test helpers outside #[test] functions: clippy's allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::{HostileRegistry, Misbehave};

/// Most a refused pull may take (retries with backoff included: about 2-4 s of waiting).
const TIME_BOUND: Duration = Duration::from_secs(30);
/// Most memory the pulling process may peak at (its baseline is ~20 MiB; the manifest cap
/// is 4 MiB). A 100 MB manifest read whole would blow past it.
const RSS_BOUND_KIB: i64 = 64 * 1024;

struct Pull {
    ok: bool,
    stderr: String,
    took: Duration,
    max_rss_kib: i64,
}

/// Runs `berth pull` and reaps it with wait4 to read its peak RSS.
#[allow(
    clippy::disallowed_methods,
    reason = "the pull's duration is what is bounded"
)]
#[allow(
    clippy::zombie_processes,
    reason = "reaped with wait4, which also gives its rusage"
)]
fn pull(data: &Path, reg: &HostileRegistry) -> Pull {
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--data-dir")
        .arg(data)
        .arg("--insecure-registry")
        .arg(reg.addr())
        .args(["pull", &reg.reference()])
        .env_remove("BERTH_REGISTRY_USERNAME")
        .env_remove("BERTH_REGISTRY_PASSWORD")
        .stdout(Stdio::null())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: all-zero bytes are a valid `rusage` (plain integers and timevals).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `status` and `usage` are valid for writes.
    let reaped = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    Pull {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stderr: std::fs::read_to_string(stderr.path()).unwrap(),
        took: start.elapsed(),
        max_rss_kib: usage.ru_maxrss,
    }
}

fn images(data: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--data-dir")
        .arg(data)
        .args(["images", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Bytes of regular files under `dir` (the pull's leftovers: nothing of the 64 KiB layer or
/// of a flood may stay).
fn stored_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        if meta.is_dir() {
            total += stored_bytes(&e.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// Pulls from a registry misbehaving as `how`: the pull fails in time and memory bounds, the
/// error contains every string of `names`, and nothing is stored.
fn refused(how: Misbehave, names: &[&str]) -> (HostileRegistry, Pull) {
    let reg = HostileRegistry::start(how.clone()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = pull(data.path(), &reg);
    eprintln!(
        "{how:?}: exit ok={} in {:?}, peak RSS {} KiB, flooded {} bytes: {}",
        p.ok,
        p.took,
        p.max_rss_kib,
        reg.flooded(),
        p.stderr.trim()
    );
    assert!(!p.ok, "{how:?}: the pull succeeded");
    assert!(
        p.took < TIME_BOUND,
        "{how:?}: took {:?} (bound {TIME_BOUND:?})",
        p.took
    );
    assert!(
        p.max_rss_kib < RSS_BOUND_KIB,
        "{how:?}: peak RSS {} KiB",
        p.max_rss_kib
    );
    for name in names {
        let name = name
            .replace("{ref}", &reg.reference())
            .replace("{layer}", reg.layer_digest());
        assert!(
            p.stderr.contains(&name),
            "{how:?}: the error does not name {name:?}: {}",
            p.stderr
        );
    }
    assert_eq!(images(data.path()), serde_json::json!([]), "{how:?}");
    let kept = stored_bytes(data.path());
    assert!(
        kept < 16 * 1024,
        "{how:?}: {kept} bytes stay in the data dir"
    );
    (reg, p)
}

#[test]
fn the_hostile_registry_serves_a_valid_image_when_it_behaves() {
    let reg = HostileRegistry::start(Misbehave::Nothing).unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = pull(data.path(), &reg);
    assert!(p.ok, "{}", p.stderr);
    let rows = images(data.path());
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert!(stored_bytes(data.path()) >= 64 * 1024);
    eprintln!("valid pull: {:?}, peak RSS {} KiB", p.took, p.max_rss_kib);
}

#[test]
fn a_manifest_of_a_wrong_media_type_is_refused() {
    for t in [
        "text/html",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.oci.image.config.v1+json",
    ] {
        refused(Misbehave::ManifestMediaType(t.to_owned()), &["{ref}"]);
    }
}

#[test]
fn a_100_mb_manifest_is_refused_unread() {
    let (reg, _) = refused(Misbehave::ManifestDeclared(100_000_000), &["{ref}"]);
    assert!(
        reg.flooded() < 100_000_000 / 2,
        "{} bytes of the manifest were read",
        reg.flooded()
    );
}

#[test]
fn an_endless_manifest_is_cut_off_at_the_cap() {
    let (reg, _) = refused(Misbehave::ManifestEndless, &["{ref}"]);
    assert!(reg.flooded() < 1 << 30, "the flood ran to its end");
}

#[test]
fn a_blob_shorter_than_its_content_length_fails_naming_the_blob() {
    refused(Misbehave::BlobContentLengthLonger(4096), &["{layer}"]);
}

#[test]
fn a_blob_longer_than_its_descriptor_fails_naming_the_blob() {
    refused(Misbehave::BlobSizeSmaller, &["{layer}"]);
    let (reg, _) = refused(Misbehave::BlobEndless, &["{layer}"]);
    assert!(reg.flooded() < 1 << 30, "the endless blob ran to its end");
}

#[test]
fn a_corrupted_blob_fails_its_digest_check() {
    refused(Misbehave::BlobCorrupt, &["{layer}"]);
}

#[test]
fn blob_redirects_to_link_local_addresses_are_refused() {
    refused(
        Misbehave::BlobRedirect("http://169.254.169.254/latest/meta-data/".to_owned()),
        &["169.254.169.254"],
    );
    refused(
        Misbehave::BlobRedirect("file:///etc/shadow".to_owned()),
        &["file:///etc/shadow"],
    );
}
