//! The agent against the real controller (in-process, git repository on disk, fake digest
//! resolver) over HTTP, with the fake runtime: a commit runs, a revision failing its health
//! check rolls back on the host and is marked failed at the controller, and the next manifest
//! change rolls out. Real time, short deadlines.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]

use std::sync::Arc;
use std::time::Duration;

use berth_agent::daemon::{Agent, AgentConfig, AgentHandle, Clock};
use berth_agent::host::controller_client::HttpController;
use berth_agent::reconcile::exec::Effects;
use berth_agent::reconcile::fake::{FakeImages, FakeProber, FakeRuntime, FakeState, FakeTraffic};
use berth_agent::reconcile::traits::RunState;
use berth_controller::client::Client;
use berth_controller::resolve::FakeResolver;
use berth_controller::server::{Config, Controller};
use berth_manifests::wire::{RevisionState, RolloutState};
use berth_testkit::GitRemote;

/// A git remote (with its work repository) and the controller's data dir, in one temp dir.
struct Repo {
    dir: tempfile::TempDir,
    git: GitRemote,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let git = GitRemote::init(dir.path());
        Repo { dir, git }
    }

    fn push(&self, text: &str, message: &str) {
        self.git.push("web.yaml", text, message);
    }
}

fn web(image: &str) -> String {
    format!(
        "app: web\nimage: {image}\nreplicas: 2\nport: 8080\n\
         health: {{ http: /up, interval: 1s, timeout: 1s, failures: 2 }}\n\
         update: {{ deadline: 3s }}\nstop: {{ grace: 1s }}\n"
    )
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn running(rt: &FakeRuntime, revision: u64) -> usize {
    rt.instances()
        .iter()
        .filter(|i| i.revision == revision && i.state == RunState::Running)
        .count()
}

fn rollout(handle: &AgentHandle) -> Option<RolloutState> {
    handle.report().apps.first().map(|a| a.rollout.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_out_rolls_back_and_the_controller_marks_the_revision_failed() {
    let repo = Repo::new();
    repo.push(&web("busybox:1"), "add web");
    let mut config = Config::new(
        repo.dir.path().join("data"),
        repo.git.url(),
        "main".into(),
        Arc::new(FakeResolver::new()),
    );
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.poll_interval = Duration::from_secs(3600);
    let controller = Controller::start(config).await.unwrap();
    let client = Client::new(&controller.url(), controller.token()).unwrap();

    let runtime = FakeRuntime::new();
    let prober = FakeProber::new(runtime.clone());
    let fx = Effects {
        runtime: runtime.clone(),
        images: FakeImages::new(),
        prober: prober.clone(),
        traffic: FakeTraffic::new(),
    };
    let mut agent_config = AgentConfig::new("h1");
    agent_config.poll_wait = Duration::from_secs(2);
    agent_config.report_interval = Duration::from_millis(200);
    let http =
        HttpController::new(&controller.url(), Some(controller.token().to_string())).unwrap();
    let agent = Agent::new(
        agent_config,
        Arc::new(http),
        FakeState::new(),
        fx,
        Clock::system(),
    )
    .unwrap();
    let handle = agent.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));

    // A commit runs.
    eventually("revision 1 ready at the controller", || async {
        running(&runtime, 1) == 2
            && client
                .status()
                .await
                .is_ok_and(|s| s.apps.iter().any(|a| a.name == "web" && a.ready == 2))
    })
    .await;

    // A revision failing its health check: rolled back here, failed at the controller.
    prober.answer(2, Ok(500));
    repo.push(&web("busybox:2"), "break web");
    client.sync().await.unwrap();
    // The controller moves the target back to 1 as soon as the agent reports, so the agent's
    // RolledBack state is short-lived: the failure recorded at the controller is what lasts,
    // with the agent's reason.
    eventually("revision 2 marked failed", || {
        assert!(running(&runtime, 1) >= 2, "revision 1 kept serving");
        let client = &client;
        async move {
            client.revisions("web").await.is_ok_and(|revs| {
                revs.iter()
                    .any(|r| r.number == 2 && r.state == RevisionState::Failed)
            })
        }
    })
    .await;
    let revs = client.revisions("web").await.unwrap();
    let failure = revs
        .iter()
        .find(|r| r.number == 2)
        .unwrap()
        .failure
        .clone()
        .unwrap();
    assert!(failure.contains("health check GET /up"), "{failure}");
    assert!(failure.contains("status 500"), "{failure}");
    eventually("revision 2 gone", || async { running(&runtime, 2) == 0 }).await;

    // The next manifest change rolls out.
    // Measured, not asserted (no test asserts a duration): commit → a revision-3 instance
    // ready on the host, with the fake runtime (so: sync, assignment, long-poll, reconcile,
    // first probe). Printed for `--no-capture`.
    let t0 = tokio::time::Instant::now();
    repo.push(&web("busybox:3"), "fix web");
    client.sync().await.unwrap();
    let ready3 = || {
        handle
            .report()
            .instances
            .iter()
            .any(|i| i.revision == 3 && i.state == berth_manifests::wire::InstanceState::Ready)
    };
    while !ready3() && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "measure: commit -> first revision-3 instance ready: {} ms",
        t0.elapsed().as_millis()
    );
    eventually("revision 3 complete", || {
        let state = rollout(&handle);
        let (r3, r1) = (running(&runtime, 3), running(&runtime, 1));
        async move { state == Some(RolloutState::Complete) && r3 == 2 && r1 == 0 }
    })
    .await;
    eprintln!(
        "measure: commit -> rollout of 2 instances complete: {} ms",
        t0.elapsed().as_millis()
    );

    stop.send(()).unwrap();
    task.await.unwrap();
    controller.shutdown().await.unwrap();
}
