//! The image verbs of the real `berth` binary against a real registry: `pull` prints plain
//! lines when stdout is not a terminal, `images -o json`, `rmi`, `image prune`, `image du`, and
//! a pull killed with -9 leaves nothing half-committed and the next pull completes.

// Test helpers outside #[test] functions: clippy's allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use berth_testkit::Registry;

fn berth(data: &Path, reg: &Registry) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.arg("--data-dir")
        .arg(data)
        .arg("--insecure-registry")
        .arg(reg.addr());
    c.env_remove("BERTH_REGISTRY_USERNAME")
        .env_remove("BERTH_REGISTRY_PASSWORD");
    c
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn pull_images_rmi_and_prune_through_the_cli() {
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["hello", "crasher"]).unwrap();
    let data = tempfile::tempdir().unwrap();
    let hello = format!("{}/berth-test/hello", reg.addr());
    let crasher = format!("{}/berth-test/crasher:latest", reg.addr());

    let out = ok(berth(data.path(), &reg).args(["pull", &hello]));
    assert!(
        out.contains(": done"),
        "plain progress lines expected: {out}"
    );
    assert!(out.contains(&format!("Pulled {hello}:latest")), "{out}");
    ok(berth(data.path(), &reg).args(["pull", &crasher]));

    let rows: serde_json::Value =
        serde_json::from_str(&ok(berth(data.path(), &reg).args(["images", "-o", "json"]))).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(r["tag"], "latest");
        assert!(r["digest"].as_str().unwrap().starts_with("sha256:"));
        assert!(r["size"].as_u64().unwrap() > 500_000, "{r}");
        assert_eq!(r["in_use"], false);
        assert!(r["created"].is_string());
    }

    let du: serde_json::Value = serde_json::from_str(&ok(
        berth(data.path(), &reg).args(["image", "du", "-o", "json"])
    ))
    .unwrap();
    assert_eq!(du["images"], 2);
    assert_eq!(du["snapshots"], 2, "the busybox base layer is shared");

    let out = ok(berth(data.path(), &reg).args(["rmi", &crasher]));
    assert!(
        out.starts_with("Deleted: sha256:") && out.contains("(0 layers)"),
        "the shared base stays: {out}"
    );
    let out = berth(data.path(), &reg)
        .args(["rmi", &crasher])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the store"));

    // Untagged images only by default; --all removes the rest.
    let out = ok(berth(data.path(), &reg).args(["image", "prune"]));
    assert!(out.contains("Removed 0 images"), "{out}");
    let out = ok(berth(data.path(), &reg).args(["image", "prune", "--all"]));
    assert!(out.contains("Removed 1 images and 2 layers"), "{out}");
    assert_eq!(
        ok(berth(data.path(), &reg).args(["images", "-o", "json"])).trim(),
        "[]"
    );
}

#[test]
fn a_registry_mirror_serves_docker_hub_names_without_contacting_docker_hub() {
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["hello"]).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mirror = format!("docker.io={}", reg.addr());
    let out = ok(berth(data.path(), &reg).args([
        "--registry-mirror",
        &mirror,
        "pull",
        "berth-test/hello",
    ]));
    assert!(
        out.contains("Pulled docker.io/berth-test/hello:latest"),
        "{out}"
    );
    let rows: serde_json::Value =
        serde_json::from_str(&ok(berth(data.path(), &reg).args(["images", "-o", "json"]))).unwrap();
    assert_eq!(
        rows[0]["repository"], "docker.io/berth-test/hello",
        "{rows}"
    );

    // A malformed mirror is a usage error.
    let out = berth(data.path(), &reg)
        .args(["--registry-mirror", "docker.io", "pull", "berth-test/hello"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_usage_error_exits_2_and_a_missing_image_exits_1() {
    let reg = Registry::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = berth(data.path(), &reg)
        .args(["pull", "Bad:Name:x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = berth(data.path(), &reg)
        .args(["pull", "x/y", "--platform", "linux"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let missing = format!("{}/berth-test/missing", reg.addr());
    let out = berth(data.path(), &reg)
        .args(["pull", &missing])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pushes an image with one large incompressible layer (so a pull takes long enough to kill).
fn push_big_image(reg: &Registry) -> String {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..8 {
        let mut f = std::fs::File::create(src.join(format!("blob{i}"))).unwrap();
        let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
        std::io::copy(&mut std::io::Read::take(&mut urandom, 16 << 20), &mut f).unwrap();
        f.flush().unwrap();
    }
    let script = format!(
        r#"set -e
cd {dir}
tar -C src -cf layer.tar .
gzip -1 -n -c layer.tar > layer.tar.gz
diff=sha256:$(sha256sum layer.tar | cut -d' ' -f1)
push() {{ d=sha256:$(sha256sum "$1" | cut -d' ' -f1)
  loc=$(curl -fsS -o /dev/null -D - -X POST http://{a}/v2/berth-test/big/blobs/uploads/ | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{{print $2}}')
  [[ "$loc" == http* ]] || loc="http://{a}$loc"
  curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$1" "$loc&digest=$d"
  echo "$d $(stat -c %s "$1")"; }}
read ld ls < <(push layer.tar.gz)
printf '{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["%s"]}}}}' "$diff" > config.json
read cd cs < <(push config.json)
printf '{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}}]}}' "$cd" "$cs" "$ld" "$ls" > manifest.json
curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @manifest.json http://{a}/v2/berth-test/big/manifests/latest
"#,
        dir = dir.path().display(),
        a = reg.addr()
    );
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{}/berth-test/big", reg.addr())
}

#[test]
fn a_pull_killed_with_sigkill_leaves_nothing_half_committed_and_the_next_pull_completes() {
    let reg = Registry::start().unwrap();
    let big = push_big_image(&reg);
    let data = tempfile::tempdir().unwrap();
    let images = data.path().join("images");

    let mut child = berth(data.path(), &reg)
        .args(["pull", &big])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Kill as soon as the layer started streaming.
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("pulling"), "{first}");
    child.kill().unwrap(); // SIGKILL, our own child by pid
    child.wait().unwrap();

    let committed: Vec<_> = std::fs::read_dir(images.join("snapshots"))
        .unwrap()
        .collect();
    assert!(
        committed.is_empty(),
        "a snapshot was committed by a killed pull"
    );
    assert_eq!(
        std::fs::read_dir(images.join("records")).unwrap().count(),
        0
    );

    let out = ok(berth(data.path(), &reg).args(["pull", &big]));
    assert!(out.contains("Pulled"), "{out}");
    assert_eq!(
        std::fs::read_dir(images.join("tmp")).unwrap().count(),
        0,
        "tmp/ not cleaned"
    );
    let snaps: Vec<_> = std::fs::read_dir(images.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(snaps.len(), 1);
    assert_eq!(std::fs::read_dir(snaps[0].join("fs")).unwrap().count(), 8);
}
