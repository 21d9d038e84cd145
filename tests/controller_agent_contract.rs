//! The contract between the two sides of the deploy loop: the agent's real HTTP controller
//! client (`berth_agent::daemon::client::HttpController`) against the real controller
//! (in-process, real redb store, real git repository). Only the digest resolver is a fake.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

use std::sync::Arc;
use std::time::Duration;

use berth_agent::daemon::client::HttpController;
use berth_agent::reconcile::traits::ControllerClient;
use berth_controller::resolve::FakeResolver;
use berth_controller::{Config, Controller};
use berth_manifests::ErrorKind;
use berth_manifests::wire::{
    AppReport, HostReport, Registration, RevisionState, RolloutState, Scale,
};
use berth_testkit::GitRemote;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_client_speaks_the_controllers_api() {
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
    let agent = HttpController::new(&handle.url(), Some(handle.token().to_string())).unwrap();

    // register, then the first poll (after=0) answers at once with the app
    let reg = Registration {
        name: "h1".into(),
        labels: Default::default(),
        capacity: Default::default(),
        agent_version: "contract".into(),
    };
    let registered = agent.register(&reg).await.unwrap();
    let first = agent
        .assignment("h1", 0, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(first.version, registered.assignment_version);
    assert_eq!(first.apps[0].target.number, 1);
    assert_eq!(first.apps[0].scale, Scale::Fixed { replicas: 2 });
    assert!(first.apps[0].target.image_digest.starts_with("sha256:"));

    // a long-poll at the current version returns on the next change
    let waiting = {
        let agent = agent.clone();
        let v = first.version;
        tokio::spawn(async move { agent.assignment("h1", v, Duration::from_secs(50)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    repo.push(
        "web.yaml",
        "app: web\nimage: busybox:2\nreplicas: 2\n",
        "web 2",
    );
    handle.core().sync().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.apps[0].target.number, 2);
    assert_eq!(second.apps[0].fallback.as_ref().unwrap().number, 1);

    // the agent's rollback report fails revision 2 and moves the target back
    agent
        .report(&HostReport {
            host: "h1".into(),
            assignment_version: second.version,
            instances: Vec::new(),
            apps: vec![AppReport {
                requests_total: None,
                app: "web".into(),
                target: 2,
                desired: 2,
                ready: 2,
                rollout: RolloutState::RolledBack {
                    to: 1,
                    reason: "crash loop: exit code 3".into(),
                },
            }],
            events: Vec::new(),
        })
        .await
        .unwrap();
    let third = agent
        .assignment("h1", second.version, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(third.apps[0].target.number, 1);
    let revs = handle.core().revisions("web").await.unwrap();
    assert_eq!(revs[1].state, RevisionState::Failed);

    // error classes the agent's retry policy relies on
    let mut stranger = HostReport {
        host: "stranger".into(),
        assignment_version: 0,
        instances: Vec::new(),
        apps: Vec::new(),
        events: Vec::new(),
    };
    let err = agent.report(&stranger).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    stranger.host = "h1".into();
    let wrong = HttpController::new(&handle.url(), Some("wrong".into())).unwrap();
    let err = wrong.report(&stranger).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");

    handle.shutdown().await.unwrap();
}
