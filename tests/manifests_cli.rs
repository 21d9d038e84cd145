//! System tests of the real `berth` binary on manifest trees: `validate`, `plan` and the
//! first slice of `up`. Fixtures live in tests/fixtures/; generated ones go to temp dirs.

// Helpers outside #[test] functions panic on purpose: a failed helper is a failed test.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

fn berth() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.env_remove("BERTH_LOG");
    cmd
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let out = berth().args(args).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn validate_accepts_the_examples() {
    let r = run(&["validate", "manifests/examples"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "4 apps in 3 files ok\n", "")
    );
}

/// One line per mistake (a duplicate app and a port clash are reported at both places),
/// sorted by path, line and column, paths relative to the directory.
const INVALID: &[&str] = &[
    "apps/api-copy.yml:2:6: app `api` is defined twice (also at apps/api.yaml:1:6); app names must be unique",
    "apps/api.yaml:1:6: app `api` is defined twice (also at apps/api-copy.yml:2:6); app names must be unique",
    "apps/api.yaml:4:17: expose.port: host port 8000 is also used by app `gateway` (gateway.yaml:5:9)",
    "apps/api.yaml:5:11: replicas: expected a whole number, 0 or more, got \"two\"",
    "apps/web.yaml:5:1: replica: unknown key, did you mean `replicas`?; expected one of: app, image, command, env, resources, port, expose, replicas, autoscale, health, update, stop, restart, volumes, placement, network, logs",
    "apps/web.yaml:8:11: resources.memory: expected a size like 128Mi, 1G or a number of bytes, got \"lots\"",
    "apps/web.yaml:10:10: stop.grace: expected a duration like 10s, 500ms or 1m30s, got \"10 seconds\"",
    "broken.yaml:3:5: yaml syntax: illegal placement of ':' indicator",
    "gateway.yaml:5:9: expose.port: host port 8000 is also used by app `api` (apps/api.yaml:4:17)",
    "gateway.yaml:7:8: autoscale.min: 5 is greater than autoscale.max 2",
    "images.yaml:2:8: image: expected an image reference like registry.example/web:1.4 (repository `Reporter` must be lowercase), got \"Registry.Example/Reporter:latest\"",
    "images.yaml:7:12: autoscale: replicas (line 6) and autoscale exclude each other: keep one",
    "images.yaml:10:11: volumes[0].path: \"var/lib/index\" must be an absolute path (start with /)",
    "nested/bomb.yaml:9:10: alias expansion (replayed events) exceeds the limit of 10000; aliases that expand into huge trees (\"billion laughs\") are refused",
];

#[test]
fn validate_reports_every_mistake_with_its_exact_location() {
    let r = run(&["validate", "tests/fixtures/invalid"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines, INVALID);
}

#[test]
fn validate_json_lists_errors_with_path_line_column_and_kind() {
    let r = run(&["validate", "tests/fixtures/invalid", "-o", "json"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr, "");
    let v = json(&r.stdout);
    assert_eq!(v["ok"], false);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), INVALID.len());
    let rendered: Vec<String> = errors
        .iter()
        .map(|e| {
            format!(
                "{}:{}:{}: {}",
                e["path"].as_str().unwrap(),
                e["line"],
                e["column"],
                e["message"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(rendered, INVALID);
    assert_eq!(errors[0]["kind"], "conflict");
    assert_eq!(errors[13]["kind"], "resource_exhausted");
}

#[test]
fn validate_json_lists_apps_with_revisions() {
    let r = run(&["validate", "manifests/examples", "-o", "json"]);
    assert_eq!(r.code, 0);
    let v = json(&r.stdout);
    assert_eq!(v["ok"], true);
    assert_eq!(v["files"], 3);
    let apps: Vec<&str> = v["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["app"].as_str().unwrap())
        .collect();
    assert_eq!(apps, ["shop-api", "shop-frontend", "web", "worker"]);
    assert!(
        v["apps"][2]["revision"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(v["apps"][2]["image"], "docker.io/berth-test/hello:latest");
}

fn write(dir: &Path, name: &str, content: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, content).unwrap();
}

#[test]
fn a_10mb_file_is_refused_without_parsing_and_other_files_are_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut big = String::from("app: big\nimage: busybox\nenv:\n");
    while big.len() < 10 << 20 {
        big.push_str("  KEY: \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"\n");
    }
    write(dir.path(), "big.yaml", &big);
    write(dir.path(), "ok.yaml", "app: ok\nimage: busybox\nport: 0\n");
    let r = run(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr.lines().collect::<Vec<_>>(),
        [
            "big.yaml:1:1: file is larger than the limit of 1Mi (1048576 bytes); split it into several files",
            "ok.yaml:3:7: port: expected a port number from 1 to 65535, got an integer 0",
        ]
    );
}

#[test]
fn ten_thousand_levels_of_nesting_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "flow.yaml",
        &format!(
            "app: a\nimage: busybox\nenv: {}{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
    );
    let mut block = String::from("app: b\nimage: busybox\nenv:\n");
    for i in 1..1000 {
        block.push_str(&format!("{}k:\n", " ".repeat(i + 1)));
    }
    write(dir.path(), "block.yaml", &block);
    let r = run(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(r.code, 1);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stderr);
    assert!(
        lines[0].starts_with("block.yaml:")
            && lines[0].ends_with("nesting depth exceeds the limit of 32"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("flow.yaml:3:")
            && lines[1].ends_with("nesting depth exceeds the limit of 32"),
        "{}",
        lines[1]
    );
}

#[test]
fn validate_skips_hidden_entries_and_other_extensions() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".git/config.yaml", "not: [valid");
    write(dir.path(), ".hidden.yaml", "not: [valid");
    write(dir.path(), "notes.txt", "not: [valid");
    write(dir.path(), "a/b/app.YML", "app: deep\nimage: busybox\n");
    let r = run(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "1 app in 1 file ok\n"),
        "{}",
        r.stderr
    );
}

#[test]
fn validate_of_a_missing_directory_fails() {
    let r = run(&["validate", "tests/fixtures/no-such-dir"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no-such-dir"), "{}", r.stderr);
}

#[test]
fn plan_json_lists_added_removed_and_changed_fields() {
    let r = run(&[
        "plan",
        "tests/fixtures/plan/new",
        "--against",
        "tests/fixtures/plan/old",
        "-o",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&r.stdout);
    assert_eq!(
        v["summary"],
        serde_json::json!({"add": 1, "change": 1, "remove": 1, "unchanged": 1})
    );
    let actions: Vec<(&str, &str)> = v["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["app"].as_str().unwrap(), a["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("fresh", "add"),
            ("gone", "remove"),
            ("same", "unchanged"),
            ("web", "change")
        ]
    );
    let web = &v["apps"][3];
    assert_eq!(web["makes_revision"], true);
    assert_ne!(web["old_revision"], web["new_revision"]);
    let fields: Vec<(&str, &Value, &Value, &Value)> = web["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["field"].as_str().unwrap(),
                &f["old"],
                &f["new"],
                &f["new_revision"],
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            (
                "env.LOG_LEVEL",
                &Value::Null,
                &serde_json::json!("debug"),
                &Value::Bool(true)
            ),
            (
                "image",
                &serde_json::json!("docker.io/berth-test/hello:1"),
                &serde_json::json!("docker.io/berth-test/hello:2"),
                &Value::Bool(true)
            ),
            (
                "resources.memory",
                &serde_json::json!("128Mi"),
                &serde_json::json!("256Mi"),
                &Value::Bool(true)
            ),
        ]
    );
    assert_eq!(v["apps"][0]["old_revision"], Value::Null);
    assert_eq!(v["apps"][1]["new_revision"], Value::Null);
}

#[test]
fn plan_table_shows_each_changed_field_and_a_summary() {
    let r = run(&[
        "plan",
        "tests/fixtures/plan/new",
        "--against",
        "tests/fixtures/plan/old",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<Vec<&str>> = r
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "APP", "ACTION", "REVISION", "FIELD", "OLD", "NEW", "NEW", "REVISION"
        ]
    );
    assert_eq!(lines[1][..2], ["fresh", "add"]);
    assert_eq!(lines[2][..2], ["gone", "remove"]);
    assert_eq!(
        (lines[3][0], lines[3][1], lines[3][5]),
        ("web", "change", "env.LOG_LEVEL")
    );
    assert_eq!(lines[5], ["resources.memory", "128Mi", "256Mi", "yes"]);
    assert_eq!(
        r.stdout.lines().last(),
        Some("Plan: 1 to add, 1 to change, 1 to remove, 1 unchanged; 2 new revisions.")
    );
}

#[test]
fn plan_reports_errors_of_either_tree_with_the_directory_in_the_path() {
    let r = run(&[
        "plan",
        "manifests/examples",
        "--against",
        "tests/fixtures/invalid",
    ]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), INVALID.len());
    assert_eq!(
        lines[7],
        "tests/fixtures/invalid/broken.yaml:3:5: yaml syntax: illegal placement of ':' indicator"
    );
}

#[test]
fn plan_without_against_says_what_is_missing() {
    let r = run(&["plan", "manifests/examples"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("pass --against DIR2"), "{}", r.stderr);
}

#[test]
fn up_with_invalid_manifests_exits_1_with_the_errors() {
    let r = run(&["up", "--manifests", "tests/fixtures/invalid"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.lines().count(), INVALID.len());
}

#[test]
fn up_needs_exactly_one_source() {
    assert_eq!(run(&["up"]).code, 2);
    assert_eq!(run(&["up", "--manifests", "a", "--repo", "b"]).code, 2);
    assert_eq!(run(&["up", "--manifests", "a", "--branch", "b"]).code, 2);
}

#[test]
fn validate_accepts_a_single_file_and_extension_keys_for_anchors() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "apps.yaml",
        "x-limits: &limits { memory: 64Mi, cpu: 0.25 }\napp: a\nimage: busybox\nresources: *limits\n---\napp: b\nimage: busybox\nresources:\n  <<: *limits\n  pids: 10\n",
    );
    let file = dir.path().join("apps.yaml");
    let r = run(&["validate", file.to_str().unwrap(), "-o", "json"]);
    assert_eq!(r.code, 1, "anchors do not cross documents: {}", r.stdout);
    assert!(r.stdout.contains("apps.yaml"), "{}", r.stdout);
    write(
        dir.path(),
        "apps.yaml",
        "x-limits: &limits { memory: 64Mi, cpu: 0.25 }\napp: a\nimage: busybox\nresources:\n  <<: *limits\n  pids: 10\n",
    );
    let r = run(&["validate", file.to_str().unwrap()]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "1 app in 1 file ok\n"),
        "{}",
        r.stderr
    );
}
