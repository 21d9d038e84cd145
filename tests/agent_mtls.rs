//! System test of control-plane mTLS with the real binaries on loopback: `berth controller
//! --tls` (its CA made on first start), `berth token create --role join` (prints the CA's
//! fingerprint), and `berth agent --join` exchanging the join token for a node certificate,
//! then registering, polling and reporting over mTLS. Refused: an agent pinned to another CA
//! (before sending its token), wrong and revoked join tokens, agent A's certificate reading
//! host B's assignment (403), a host whose join token was revoked (403), and an agent whose
//! certificate expired (a clear error). With a 6 s certificate lifetime the agent renews at
//! 4 s and keeps reporting after its first certificate expired.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]
#![allow(
    clippy::disallowed_methods,
    reason = "waits with deadlines read from the wall clock"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use berth_agent::daemon::client::HttpController;
use berth_agent::host::node_cert;
use berth_agent::reconcile::traits::ControllerClient;
use berth_testkit::GitRemote;
use serde_json::Value;

/// A daemon, stopped (by its pid) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    cdata: PathBuf,
}

impl Cluster {
    fn berth(&self, data: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("berth"));
        cmd.args(args)
            .arg("--data-dir")
            .arg(data)
            .args(["--controller", &self.url])
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_CA")
            .env_remove("BERTH_CONTROLLER")
            .stdin(Stdio::null());
        cmd
    }

    /// An admin CLI call on the controller's host (its data dir: token and CA).
    fn admin(&self, args: &[&str]) -> Output {
        self.berth(&self.cdata, args).output().unwrap()
    }

    fn join_token(&self, host: &str) -> (String, String, String) {
        let out = self.admin(&[
            "token", "create", "--role", "join", "--host", host, "-o", "json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["token"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
            v["ca_fingerprint"].as_str().unwrap().to_string(),
        )
    }

    fn agent_cmd(&self, name: &str, token: &str, pin: &str) -> Command {
        let data = self.dir.path().join(format!("agent-{name}"));
        let log = std::fs::File::create(self.dir.path().join(format!("agent-{name}.log"))).unwrap();
        let mut cmd = self.berth(
            &data,
            &[
                "agent",
                "--join",
                &self.url,
                "--token",
                token,
                "--name",
                name,
                "--ca-fingerprint",
                pin,
                "--cgroup-parent",
                &format!("berth-test-mtls-{}-{name}", std::process::id()),
                "--bridge",
                &format!("bmt{}{name}", std::process::id() % 10_000),
                "--netns-prefix",
                &format!("bmt{}{name}-", std::process::id()),
                "--log",
                "info,berth_agent=debug",
            ],
        );
        cmd.stdout(Stdio::null()).stderr(log);
        cmd
    }

    fn hosts(&self) -> Vec<Value> {
        let out = self.admin(&["status", "-o", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["hosts"].as_array().cloned().unwrap_or_default()
    }

    fn last_seen(&self, host: &str) -> Option<u64> {
        self.hosts()
            .iter()
            .find(|h| h["name"] == host)
            .and_then(|h| h["last_seen_ms"].as_u64())
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("agent-{name}.log")))
            .unwrap_or_default()
    }
}

fn wait_for<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    berth_testkit::wait_for(what, secs, String::new, f)
}

fn now_ms() -> u64 {
    node_cert::now_ms()
}

/// A client of the controller with `data`'s stored node certificate. The agent renews its
/// certificate and key as two files, each replaced atomically: read between the two writes
/// they do not match and no client can be built from them, so this reads them again.
fn node_client(url: &str, data: &Path) -> (HttpController, node_cert::NodeCert) {
    wait_for("a matching node certificate and key", 5, || {
        let cert = node_cert::load(&node_cert::dir(data)).ok()??;
        let client =
            HttpController::with_node_cert(url, &cert.ca_pem, &cert.identity_pem()).ok()?;
        Some((client, cert))
    })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn agents_join_with_tokens_then_speak_mtls_for_their_own_host_only() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRemote::init(dir.path());
    repo.push("README.md", "no apps\n", "empty");
    let cdata = dir.path().join("controller");
    let port = berth_testkit::free_port().unwrap();
    let c = Cluster {
        url: format!("https://127.0.0.1:{port}"),
        cdata: cdata.clone(),
        dir,
    };
    let clog = std::fs::File::create(c.dir.path().join("controller.log")).unwrap();
    let _controller = Daemon(
        Command::new(assert_cmd::cargo::cargo_bin("berth"))
            .args(["controller", "--repo"])
            .arg(repo.url())
            .args(["--listen", &format!("127.0.0.1:{port}"), "--tls"])
            .args(["--node-cert-lifetime", "6s", "--poll-interval", "200ms"])
            .args(["--log", "info", "--data-dir"])
            .arg(&cdata)
            .env_remove("BERTH_TOKEN")
            .stdout(Stdio::null())
            .stderr(clog)
            .spawn()
            .unwrap(),
    );
    // the CLI on the controller's host trusts <data-dir>/controller/ca.pem and uses its token
    wait_for("the controller to serve HTTPS", 30, || {
        c.admin(&["status", "-o", "json"])
            .status
            .success()
            .then_some(())
    });
    // plain HTTP to a TLS controller gets nowhere
    let plain = Cluster {
        url: format!("http://127.0.0.1:{port}"),
        cdata: cdata.clone(),
        dir: tempfile::tempdir().unwrap(),
    }
    .admin(&["status", "-o", "json"]);
    assert_eq!(plain.status.code(), Some(1), "{plain:?}");

    // elsewhere the CLI needs the CA: refused without it (saying so), fine with --ca
    let admin_token = std::fs::read_to_string(cdata.join("controller/token")).unwrap();
    let elsewhere = c.dir.path().join("elsewhere");
    let out = c
        .berth(&elsewhere, &["status", "--token", admin_token.trim()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--ca FILE"), "{stderr}");
    let ca_file = cdata.join("controller/ca.pem");
    let out = c
        .berth(
            &elsewhere,
            &[
                "status",
                "--token",
                admin_token.trim(),
                "--ca",
                ca_file.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let (token_a, id_a, pin) = c.join_token("a");
    let (token_b, _, pin_b) = c.join_token("b");
    assert_eq!(pin, pin_b);
    assert!(pin.starts_with("sha256:") && pin.len() == 71, "{pin}");

    // pinned to another CA: refused before the token is sent, nothing stored
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let out = c.agent_cmd("a", &token_a, &wrong_pin).output().unwrap();
    assert!(!out.status.success());
    let log = c.log("a");
    assert!(log.contains("not the pinned"), "{log}");
    assert!(!node_cert::dir(&c.dir.path().join("agent-a")).exists());
    // a wrong token and a revoked one: 401
    let out = c
        .agent_cmd("a", "bt.0123456789ab.ffff", &pin)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = c.log("a");
    assert!(
        log.contains("401") && log.contains("wrong or was revoked"),
        "{log}"
    );
    let (token_c, id_c, _) = c.join_token("c");
    assert!(c.admin(&["token", "revoke", &id_c]).status.success());
    let out = c.agent_cmd("c", &token_c, &pin).output().unwrap();
    assert!(!out.status.success());
    assert!(c.log("c").contains("401"), "{}", c.log("c"));
    // B's token does not make A
    let out = c.agent_cmd("a", &token_b, &pin).output().unwrap();
    assert!(!out.status.success());
    assert!(c.log("a").contains("403"), "{}", c.log("a"));

    // A and B join and run: registered, polling and reporting over mTLS
    let _agent_a = Daemon(c.agent_cmd("a", &token_a, &pin).spawn().unwrap());
    let mut agent_b = Daemon(c.agent_cmd("b", &token_b, &pin).spawn().unwrap());
    wait_for("hosts a and b to register over mTLS", 30, || {
        let hosts = c.hosts();
        let ready = |n: &str| hosts.iter().any(|h| h["name"] == n && h["ready"] == true);
        (ready("a") && ready("b")).then_some(())
    });
    let adata = c.dir.path().join("agent-a");
    let tls_dir = node_cert::dir(&adata);
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&tls_dir.join("node.key")), 0o600);
    assert_eq!(mode(&tls_dir), 0o700);

    // A's certificate reads A's assignment, not B's
    let (client_a, first) = node_client(&c.url, &adata);
    block_on(client_a.assignment("a", 0, Duration::ZERO)).unwrap();
    let err = block_on(client_a.assignment("b", 0, Duration::ZERO)).unwrap_err();
    assert!(format!("{err:?}").contains("403"), "{err:?}");
    assert!(format!("{err:?}").contains("not b"), "{err:?}");

    // renewal at 2/3 of 6 s: the stored certificate rotates, twice, and A keeps reporting
    // after its first certificate expired
    let second = wait_for("a's certificate to be renewed", 20, || {
        let (_, now) = node_client(&c.url, &adata);
        (now.cert_pem != first.cert_pem).then_some(now)
    });
    assert!(second.not_after_ms > first.not_after_ms);
    assert_ne!(second.key_pem, first.key_pem, "a new key each renewal");
    wait_for("a's certificate to be renewed again", 20, || {
        let (_, now) = node_client(&c.url, &adata);
        (now.cert_pem != second.cert_pem).then_some(())
    });
    wait_for("a report after the first certificate expired", 30, || {
        c.last_seen("a")
            .filter(|seen| *seen > first.not_after_ms + 500)
    });
    let (client_a, _) = node_client(&c.url, &adata);
    block_on(client_a.assignment("a", 0, Duration::ZERO)).unwrap();

    // an expired certificate: the TLS handshake fails, and the agent says what to do
    drop(std::mem::replace(
        &mut agent_b,
        Daemon(Command::new("true").spawn().unwrap()),
    ));
    let bdata = c.dir.path().join("agent-b");
    let (client_b, b_cert) = node_client(&c.url, &bdata);
    wait_for("b's certificate to expire", 20, || {
        (now_ms() > b_cert.not_after_ms + 1000).then_some(())
    });
    let err = block_on(client_b.assignment("b", 0, Duration::ZERO)).unwrap_err();
    let text = format!("{err:?}").to_lowercase();
    assert!(text.contains("expired"), "{text}");
    let out = c.agent_cmd("b", &token_b, &pin).output().unwrap();
    assert!(!out.status.success());
    let log = c.log("b");
    assert!(
        log.contains("expired") && log.contains("join again"),
        "{log}"
    );

    // revoking A's join token revokes its certificates: 403
    assert!(c.admin(&["token", "revoke", &id_a]).status.success());
    let (client_a, _) = node_client(&c.url, &adata);
    let err = block_on(client_a.assignment("a", 0, Duration::ZERO)).unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("403") && text.contains("revoked"), "{text}");
}
