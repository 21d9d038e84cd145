//! The image store against a real Distribution registry (berth-testkit): pull by tag and by
//! digest, platform choice from an index, basic auth, a blob corrupted in the registry's
//! storage, a lying diff_id, whiteouts in snapshots (and through a real overlay mount),
//! concurrent pulls, use marks, rmi and prune. Needs root and docker-registry.

// Test helpers outside #[test] functions: clippy's allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use berth_agent::host::image_store::{
    ImageError, ImageStore, NoProgress, PullEvent, PullOptions, PullProgress, Removed,
};
use berth_agent::host::registry::{Credentials, RegistryConfig};
use berth_agent::image::{Digest, Reference};
use berth_testkit::Registry;

fn registry_with(images: &[&str]) -> Registry {
    let r = Registry::start().expect("start docker-registry");
    r.push_test_images(images).expect("push test images");
    r
}

fn options(reg: &Registry) -> PullOptions {
    PullOptions {
        registry: RegistryConfig {
            insecure: vec![reg.addr().to_owned()],
            ..Default::default()
        },
        ..Default::default()
    }
}

fn reference(reg: &Registry, name: &str) -> Reference {
    format!("{}/berth-test/{name}", reg.addr()).parse().unwrap()
}

/// Records events, to tell downloaded layers from reused ones.
#[derive(Default)]
struct Recorder(Mutex<Vec<PullEvent>>);

impl PullProgress for Recorder {
    fn event(&self, e: PullEvent) {
        self.0.lock().unwrap().push(e);
    }
}

impl Recorder {
    fn count(&self, f: impl Fn(&PullEvent) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|e| f(e)).count()
    }
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    (dir, store)
}

fn tmp_is_empty(store: &ImageStore) -> bool {
    fs::read_dir(store.layout().tmp()).unwrap().next().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_by_tag_then_by_digest_reusing_the_snapshots() {
    let reg = registry_with(&["hello"]);
    let (_d, store) = store();
    let by_tag = store
        .pull(&reference(&reg, "hello"), &options(&reg), &NoProgress)
        .await
        .unwrap();

    assert_eq!(by_tag.layer_dirs().len(), 2);
    let base = &by_tag.layer_dirs()[0];
    assert!(base.join("bin/busybox").is_file());
    assert!(
        fs::symlink_metadata(base.join("bin/sh"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_to_string(by_tag.layer_dirs()[1].join("www/index.html")).unwrap(),
        "hello from berth\n"
    );
    let cfg = by_tag.config.config().as_ref().unwrap();
    assert_eq!(cfg.cmd().as_ref().unwrap()[0], "/bin/sh");
    assert_eq!(cfg.working_dir().as_deref(), Some("/"));
    assert!(
        cfg.exposed_ports()
            .as_ref()
            .unwrap()
            .contains(&"8080/tcp".to_string())
    );
    assert_eq!(
        by_tag.record.tags,
        [format!("{}/berth-test/hello:latest", reg.addr())]
    );

    let pinned = reference(&reg, "hello")
        .with_digest(by_tag.digest().clone())
        .unwrap();
    let events = Recorder::default();
    let by_digest = store.pull(&pinned, &options(&reg), &events).await.unwrap();
    assert_eq!(by_digest.digest(), by_tag.digest());
    // The digest reference is recorded: the image is not dangling even if the tag moves.
    assert_eq!(by_digest.record.digest_refs, [pinned.to_string()]);
    assert!(!by_digest.record.is_dangling());
    assert_eq!(
        events.count(|e| matches!(e, PullEvent::LayerExists { .. })),
        2
    );
    assert_eq!(
        events.count(|e| matches!(e, PullEvent::LayerProgress { .. })),
        0
    );

    // The runtime's view: get by name, by digest and by short id.
    let got = store
        .get(&format!("{}/berth-test/hello", reg.addr()))
        .unwrap();
    assert_eq!(got.layer_dirs(), by_tag.layer_dirs());
    assert_eq!(
        store.get(&by_tag.digest().to_string()).unwrap().digest(),
        by_tag.digest()
    );
    assert_eq!(
        store.get(by_tag.digest().short()).unwrap().digest(),
        by_tag.digest()
    );
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(tmp_is_empty(&store));

    // `ensure` uses the local copy: it works with the registry gone.
    let tagged = reference(&reg, "hello");
    drop(reg);
    let (_d2, empty) = self::store();
    let err = empty
        .ensure(&tagged, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(!matches!(err, ImageError::NotFound { .. }), "{err:?}");
    let local = store
        .ensure(&tagged, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(local.digest(), by_tag.digest());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chooses_the_platform_from_an_index() {
    let reg = registry_with(&["multi"]);
    let (_d, store) = store();
    let multi = reference(&reg, "multi");
    let mut opts = options(&reg);
    opts.platform = Some("linux/arm64".parse().unwrap());
    let arm = store.pull(&multi, &opts, &NoProgress).await.unwrap();
    let top = arm.layer_dirs().last().unwrap();
    assert_eq!(
        fs::read_to_string(top.join("platform")).unwrap(),
        "linux/arm64\n"
    );
    assert_eq!(arm.record.platform.architecture, "arm64");
    assert!(arm.record.index_digest.is_some());

    opts.platform = Some("linux/amd64".parse().unwrap());
    let amd = store.pull(&multi, &opts, &NoProgress).await.unwrap();
    assert_eq!(
        fs::read_to_string(amd.layer_dirs().last().unwrap().join("platform")).unwrap(),
        "linux/amd64\n"
    );
    assert_ne!(amd.digest(), arm.digest());

    opts.platform = Some("linux/s390x".parse().unwrap());
    let err = store.pull(&multi, &opts, &NoProgress).await.unwrap_err();
    assert!(matches!(err, ImageError::NoPlatform { .. }), "{err:?}");
    assert!(
        err.to_string().contains("linux/amd64, linux/arm64"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_works_with_credentials_and_fails_clearly_without() {
    let reg = Registry::start_with_basic_auth("berth", "s3cret").unwrap();
    reg.push_test_images(&["crasher"]).unwrap();
    let (_d, store) = store();
    let image = reference(&reg, "crasher");

    let err = store
        .pull(&image, &options(&reg), &NoProgress)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("needs credentials") && msg.contains(reg.addr()),
        "{msg}"
    );

    let mut opts = options(&reg);
    opts.registry.credentials = Some(Credentials {
        username: "berth".into(),
        password: "wrong".into(),
    });
    let err = store.pull(&image, &opts, &NoProgress).await.unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");

    opts.registry.credentials = Some(Credentials {
        username: "berth".into(),
        password: "s3cret".into(),
    });
    store.pull(&image, &opts, &NoProgress).await.unwrap();

    // The same through a docker config.json.
    let (_d2, store2) = self::store();
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("config.json");
    fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"YmVydGg6czNjcmV0"}}}}}}"#,
            reg.addr()
        ),
    )
    .unwrap();
    let mut opts = options(&reg);
    opts.registry.auth_file = Some(cfg);
    store2.pull(&image, &opts, &NoProgress).await.unwrap();
}

/// The layer digests of an image as the registry serves them.
async fn layer_digests(reg: &Registry, name: &str) -> Vec<String> {
    let client = berth_agent::host::registry::RegistryClient::new(options(reg).registry).unwrap();
    let (bytes, _) = client.manifest(&reference(reg, name)).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_corrupted_in_the_registry_fails_naming_it_and_stores_nothing() {
    let reg = registry_with(&["hello"]);
    let layers = layer_digests(&reg, "hello").await;
    let base = &layers[0];
    let path = reg.blob_path(base);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&path, bytes).unwrap();

    let (_d, store) = store();
    let err = store
        .pull(&reference(&reg, "hello"), &options(&reg), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(base.as_str()), "{err}");
    assert!(err.to_string().contains("failed verification"), "{err}");
    assert!(
        store.list().unwrap().is_empty(),
        "an image record was written"
    );
    // The other layer may have been committed (it is intact); the corrupt one must not be.
    for chain in store.snapshots().unwrap() {
        let meta = fs::read_to_string(store.layout().snapshot(&chain).join("layer.json")).unwrap();
        assert!(
            !meta.contains(base.as_str()),
            "the corrupt layer was committed"
        );
    }
    assert!(tmp_is_empty(&store), "partial snapshot left in tmp/");
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .arg("-fsS")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn push_blob(reg: &Registry, repo: &str, bytes: &[u8]) -> (String, usize) {
    let digest = Digest::of(bytes).to_string();
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), bytes).unwrap();
    let headers = curl(&[
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-X",
        "POST",
        &format!("http://{}/v2/{repo}/blobs/uploads/", reg.addr()),
    ]);
    let loc = headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .unwrap()
        .trim()
        .to_owned();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{}{loc}", reg.addr())
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    curl(&[
        "-o",
        "/dev/null",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.path().display()),
        &format!("{loc}{sep}digest={digest}"),
    ]);
    (digest, bytes.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_whose_diff_id_lies_is_refused() {
    let reg = Registry::start().unwrap();
    let repo = "berth-test/liar";
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, "f", &b"hello"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let layer = gz.finish().unwrap();
    let (ldigest, lsize) = push_blob(&reg, repo, &layer);
    let lie = Digest::of(b"not the tar").to_string();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{lie}"]}}}}"#
    );
    let (cdigest, csize) = push_blob(&reg, repo, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cdigest}","size":{csize}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{ldigest}","size":{lsize}}}]}}"#
    );
    let mfile = tempfile::NamedTempFile::new().unwrap();
    fs::write(mfile.path(), &manifest).unwrap();
    curl(&[
        "-o",
        "/dev/null",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{}", mfile.path().display()),
        &format!("http://{}/v2/{repo}/manifests/latest", reg.addr()),
    ]);

    let (_d, store) = store();
    let err = store
        .pull(&reference(&reg, "liar"), &options(&reg), &NoProgress)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("lies") && msg.contains(&lie) && msg.contains(&ldigest),
        "{msg}"
    );
    assert!(store.snapshots().unwrap().is_empty());
    assert!(store.list().unwrap().is_empty());
    assert!(tmp_is_empty(&store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_are_overlay_whiteouts_and_hide_lower_files_when_mounted() {
    let reg = registry_with(&["layers"]);
    let (_d, store) = store();
    let image = store
        .pull(&reference(&reg, "layers"), &options(&reg), &NoProgress)
        .await
        .unwrap();
    let dirs = image.layer_dirs();
    assert_eq!(dirs.len(), 3);
    let wh = fs::symlink_metadata(dirs[2].join("etc/removed")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let mut v = [0u8; 4];
    let n = rustix::fs::getxattr(dirs[2].join("data"), "trusted.overlay.opaque", &mut v).unwrap();
    assert_eq!(&v[..n], b"y");

    // Mount them read-only in a private mount namespace (dies with the process).
    let mnt = tempfile::tempdir().unwrap();
    let lower: Vec<String> = dirs.iter().rev().map(|d| d.display().to_string()).collect();
    let script = format!(
        "mount -t overlay overlay -o ro,lowerdir={} {m} && test ! -e {m}/etc/removed && cat {m}/etc/kept && ls {m}/data",
        lower.join(":"),
        m = mnt.path().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text, "kept\nc\n",
        "opaque /data must show only the upper layer's file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_share_the_layers() {
    let reg = registry_with(&["sleeper"]);
    let (_d, store) = store();
    let image = reference(&reg, "sleeper");
    let opts = options(&reg);
    let (a, b) = tokio::join!(
        store.pull(&image, &opts, &NoProgress),
        store.pull(&image, &opts, &NoProgress)
    );
    assert_eq!(a.unwrap().digest(), b.unwrap().digest());
    assert_eq!(store.snapshots().unwrap().len(), 1);
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(tmp_is_empty(&store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmi_refuses_images_in_use_and_prune_keeps_them() {
    let reg = registry_with(&["hello", "sleeper"]);
    let (_d, store) = store();
    let hello = store
        .pull(&reference(&reg, "hello"), &options(&reg), &NoProgress)
        .await
        .unwrap();
    let sleeper = store
        .pull(&reference(&reg, "sleeper"), &options(&reg), &NoProgress)
        .await
        .unwrap();
    // They share the busybox base layer.
    assert_eq!(store.snapshots().unwrap().len(), 2);
    store.mark_in_use("container/c1", hello.digest()).unwrap();

    let name = format!("{}/berth-test/hello", reg.addr());
    let err = store.remove(&name, false).unwrap_err();
    assert!(err.to_string().contains("container/c1"), "{err}");

    // prune --all keeps the image in use, removes the other, keeps the shared base layer.
    let report = store.prune(true).unwrap();
    assert_eq!(report.images, vec![sleeper.digest().clone()]);
    assert_eq!(report.snapshots, 0);
    assert!(store.get(&name).is_ok());
    let du = store.disk_usage().unwrap();
    assert_eq!((du.images, du.images_in_use, du.snapshots), (1, 1, 2));
    assert_eq!(du.reclaimable_bytes, 0);

    store.release("container/c1").unwrap();
    match store.remove(&name, false).unwrap() {
        Removed::Deleted { snapshots, .. } => assert_eq!(snapshots, 2),
        other => panic!("{other:?}"),
    }
    assert!(store.snapshots().unwrap().is_empty());
    assert!(store.list().unwrap().is_empty());
    assert!(matches!(store.get(&name), Err(ImageError::NotFound { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_an_interrupted_pull_are_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let junk = store.layout().tmp_path("snap");
    fs::create_dir_all(junk.join("fs/bin")).unwrap();
    fs::write(junk.join("fs/bin/half"), b"half a layer").unwrap();
    drop(store);
    let store = ImageStore::open(dir.path()).unwrap();
    assert!(tmp_is_empty(&store));
    assert!(
        Path::new(&store.layout().snapshots())
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
}
