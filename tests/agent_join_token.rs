//! The agent's own controller client (`berth_agent::daemon::client::HttpController`) with
//! join tokens against the real controller (embedded store, real git repository, real HTTP
//! server): the token binds to the host that registers with it, the agent then polls and
//! reports for that host, and an agent holding host A's token is refused B's assignment,
//! B's reports and B's name (403, classed invalid input: a wrong token does not fix itself).
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

use std::sync::Arc;
use std::time::Duration;

use berth_agent::daemon::client::HttpController;
use berth_agent::reconcile::traits::ControllerClient;
use berth_controller::access::{TokenRequest, TokenRole};
use berth_controller::client::Client;
use berth_controller::resolve::FakeResolver;
use berth_controller::{Config, Controller};
use berth_manifests::ErrorKind;
use berth_testkit::{GitRemote, empty_report, registration};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_join_token_speaks_only_for_its_own_host() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRemote::init(dir.path());
    repo.push(
        "web.yaml",
        "app: web\nimage: busybox:1\nreplicas: 2\n",
        "add web",
    );
    let mut config = Config::new(
        dir.path().join("data"),
        repo.url(),
        "main".into(),
        Arc::new(FakeResolver::new()),
    );
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.poll_interval = Duration::from_secs(3600);
    let handle = Controller::start(config).await.unwrap();
    handle.core().sync().await.unwrap();
    let admin = Client::new(&handle.url(), handle.token()).unwrap();
    let join = |_: &str| {
        let admin = &admin;
        async move {
            admin
                .create_token(&TokenRequest {
                    role: TokenRole::Join,
                    host: None,
                })
                .await
                .unwrap()
                .token
        }
    };
    let token_a = join("a").await;
    let agent_a = HttpController::new(&handle.url(), Some(token_a.clone())).unwrap();
    let agent_b = HttpController::new(&handle.url(), Some(join("b").await)).unwrap();

    agent_a.register(&registration("host-a")).await.unwrap();
    agent_b.register(&registration("host-b")).await.unwrap();
    let a = agent_a
        .assignment("host-a", 0, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(a.apps.len(), 1, "web is placed on host-a: {a:?}");
    agent_a.report(&empty_report("host-a")).await.unwrap();

    // A reading B's assignment, reporting for B, registering as B: refused, not retried
    let err = agent_a
        .assignment("host-b", 0, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(format!("{err:?}").contains("403"), "{err:?}");
    let err = agent_a.report(&empty_report("host-b")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = agent_a.register(&registration("host-b")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // a join token is no CLI token
    let cli = Client::new(&handle.url(), &token_a).unwrap();
    let err = cli.status().await.unwrap_err();
    assert!(err.to_string().contains("role join"), "{err}");
    handle.shutdown().await.unwrap();
}
