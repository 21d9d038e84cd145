//! CLI polish: `berth completions SHELL` (a script the shell accepts, naming the verbs; a closed
//! pipe is no crash; an unknown shell is a usage error) and `-o yaml`.
#![allow(clippy::unwrap_used, reason = "test")]

use std::io::Read;
use std::process::{Command, Stdio};

#[test]
fn bash_completion_parses_and_knows_the_verbs() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for verb in ["up", "down", "rollback", "runtime", "completions"] {
        assert!(
            script.contains(&format!("berth__subcmd__{verb}")),
            "no {verb} in the script"
        );
    }
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    bash.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(bash.wait().unwrap().success(), "bash -n refused the script");
}

#[test]
fn a_closed_pipe_is_not_a_crash_and_an_unknown_shell_is_a_usage_error() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["completions", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    // Like any Unix tool: it ends (successfully, or by SIGPIPE), never with a panic.
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.success() || status.signal() == Some(13),
        "{status:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn yaml_output_is_the_json_document_in_yaml() {
    let examples = berth_testkit::repo_root().join("manifests/examples");
    let run = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("validate")
            .arg(&examples)
            .args(["-o", format])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&run("json")).unwrap();
    let yaml: serde_json::Value = serde_saphyr::from_str(&run("yaml")).unwrap();
    assert_eq!(json, yaml);
    assert!(json["apps"].as_array().is_some_and(|a| !a.is_empty()));
}
