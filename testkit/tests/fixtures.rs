//! The fixtures work against the real components: a registry starts, the test images push,
//! the catalog lists them, and dropping the registry stops the process it started.

use berth_testkit::{Registry, TEST_IMAGES, busybox_rootfs, http_get, http_status};

#[test]
fn registry_receives_all_test_images() {
    let registry = Registry::start().unwrap();
    registry.push_test_images(&[]).unwrap();
    let catalog = http_get(registry.addr(), "/v2/_catalog").unwrap();
    for name in TEST_IMAGES {
        assert!(
            catalog.contains(&format!("berth-test/{name}")),
            "{name} missing: {catalog}"
        );
    }
    let addr = registry.addr().to_string();
    drop(registry);
    assert!(
        http_status(&addr, "/v2/").is_err(),
        "registry still answers after drop"
    );
}

#[test]
fn registry_with_basic_auth_refuses_anonymous_and_accepts_credentials() {
    let registry = Registry::start_with_basic_auth("berth", "s3cret").unwrap();
    assert_eq!(http_status(registry.addr(), "/v2/").unwrap(), 401);
    registry.push_test_images(&["sleeper"]).unwrap();
    let blob = registry
        .storage_dir()
        .join("docker/registry/v2/repositories/berth-test/sleeper");
    assert!(blob.is_dir(), "push with credentials stored nothing");
}

#[test]
fn busybox_rootfs_has_a_shell_and_users() {
    let dir = tempfile::tempdir().unwrap();
    busybox_rootfs(dir.path()).unwrap();
    assert!(dir.path().join("bin/sh").exists());
    let passwd = std::fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
    assert!(passwd.contains("app:x:1000:1000"));
}

#[test]
fn fixture_scripts_start_push_and_stop_a_registry() {
    let root = berth_testkit::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("bash")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let registry_sh = root.join("scripts/registry.sh");
    let registry_sh = registry_sh.to_str().unwrap();
    let state = dir.path().to_str().unwrap();
    let addr = run(&[registry_sh, "start", state]).trim().to_string();
    let pid = std::fs::read_to_string(dir.path().join("registry.pid")).unwrap();
    let images = root.join("scripts/test-images.sh");
    run(&[
        images.to_str().unwrap(),
        "push",
        &addr,
        "hello",
        "sleeper",
        "crasher",
        "burner",
    ]);
    let catalog = http_get(&addr, "/v2/_catalog").unwrap();
    for name in ["hello", "sleeper", "crasher", "burner"] {
        assert!(
            catalog.contains(&format!("berth-test/{name}")),
            "{name} missing: {catalog}"
        );
    }
    run(&[registry_sh, "stop", state]);
    assert!(
        !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "still running"
    );
    assert!(http_status(&addr, "/v2/").is_err());
}
