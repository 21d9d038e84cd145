//! Control-plane mTLS with two real `berth controller --tls` processes on one real etcd: they
//! share one CA (made create-if-absent in the store), so an agent that joins through the
//! follower (its join forwarded to the leader with the join token) gets a certificate both
//! accept; its registrations, reports and renewals sent to the follower are forwarded to the
//! leader, which takes the host from the follower's controller certificate
//! (`x-berth-forwarded-host`); another host's assignment is still 403 there.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]
#![allow(
    clippy::disallowed_methods,
    reason = "waits with deadlines read from the wall clock"
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_agent::daemon::client::HttpController;
use berth_agent::host::node_cert;
use berth_agent::reconcile::traits::ControllerClient;
use berth_controller::access::{TokenRequest, TokenRole};
use berth_controller::client::Client;
use berth_manifests::wire::{HostReport, Registration};
use berth_testkit::{Etcd, GitRemote};

const TOKEN: &str = "mtls-ha-test-token";

/// A controller process, killed (by its pid) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_controller(etcd: &Etcd, repo: &Path, data: &Path) -> (Daemon, String) {
    std::fs::create_dir_all(data).unwrap();
    let port = berth_testkit::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let file = std::fs::File::create(data.join("controller.log")).unwrap();
    let child = Command::new(assert_cmd::cargo::cargo_bin("berth"))
        .args(["controller", "--repo"])
        .arg(format!("file://{}", repo.display()))
        .args(["--branch", "main", "--listen", &listen, "--tls"])
        .args(["--poll-interval", "200ms", "--store", &etcd.url()])
        .args(["--lease-ttl", "2s", "--token", TOKEN, "--data-dir"])
        .arg(data)
        .env("BERTH_LOG", "info")
        .env_remove("BERTH_TOKEN")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    (Daemon(child), format!("https://{listen}"))
}

fn ca_of(data: &Path) -> Option<String> {
    std::fs::read_to_string(berth_controller::pki::ca_path(data)).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_on_etcd_share_the_ca_and_forward_agents_certificates() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRemote::init(dir.path());
    let bare = repo.bare().to_path_buf();
    repo.push("README.md", "no apps\n", "empty");
    let datas = [dir.path().join("c1"), dir.path().join("c2")];
    let controllers: Vec<(Daemon, String)> = datas
        .iter()
        .map(|d| start_controller(&etcd, &bare, d))
        .collect();

    // both answer over HTTPS, trusting each one's ca.pem; one leads
    let started = Instant::now();
    let (leader, follower) = loop {
        let mut leading = Vec::new();
        for (i, (_, url)) in controllers.iter().enumerate() {
            let Some(ca) = ca_of(&datas[i]) else { continue };
            let client = Client::with_ca(url, TOKEN, Some(&ca)).unwrap();
            if let Ok(status) = client.leader().await
                && status.leader.is_some()
            {
                leading.push(status.leading);
            }
        }
        match leading[..] {
            [true, false] => break (0, 1),
            [false, true] => break (1, 0),
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no leader among the controllers: {leading:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ca = ca_of(&datas[0]).unwrap();
    assert_eq!(ca, ca_of(&datas[1]).unwrap(), "one CA for both controllers");
    let follower_url = &controllers[follower].1;
    let leader_url = &controllers[leader].1;

    // a join token made through the follower; the agent joins through the follower too
    let admin = Client::with_ca(follower_url, TOKEN, Some(&ca)).unwrap();
    let issued = admin
        .create_token(&TokenRequest {
            role: TokenRole::Join,
            host: Some("h1".into()),
        })
        .await
        .unwrap();
    let pin = issued.ca_fingerprint.clone().unwrap();
    let discovered = node_cert::discover_ca(follower_url, &pin).await.unwrap();
    assert_eq!(discovered, ca);
    let cert = node_cert::join(follower_url, &issued.token, "h1", &discovered)
        .await
        .unwrap();

    // registration and reports sent to the follower reach the leader under h1's name
    let agent =
        HttpController::with_node_cert(follower_url, &cert.ca_pem, &cert.identity_pem()).unwrap();
    agent
        .register(&Registration {
            name: "h1".into(),
            labels: Default::default(),
            capacity: Default::default(),
            agent_version: "test".into(),
        })
        .await
        .unwrap();
    agent
        .report(&HostReport {
            host: "h1".into(),
            assignment_version: 0,
            instances: Vec::new(),
            apps: Vec::new(),
            events: Vec::new(),
        })
        .await
        .unwrap();
    agent.assignment("h1", 0, Duration::ZERO).await.unwrap();
    let err = agent.assignment("h2", 0, Duration::ZERO).await.unwrap_err();
    assert!(format!("{err:?}").contains("403"), "{err:?}");
    // renewal through the follower; the new certificate works at the leader as well
    let renewed = node_cert::renew(&agent, &cert).await.unwrap();
    assert_ne!(renewed.cert_pem, cert.cert_pem);
    let at_leader =
        HttpController::with_node_cert(leader_url, &ca, &renewed.identity_pem()).unwrap();
    at_leader.assignment("h1", 0, Duration::ZERO).await.unwrap();
    let status = Client::with_ca(leader_url, TOKEN, Some(&ca))
        .unwrap()
        .status()
        .await
        .unwrap();
    assert!(
        status.hosts.iter().any(|h| h.name == "h1"),
        "{:?}",
        status.hosts
    );
}
