//! The agent loop with fakes in virtual time (`tokio::time::pause`): it converges on its
//! assignment, keeps running it while the controller is down and after its own restart,
//! re-adopts instances without duplicates, stops unassigned apps, and reports with events.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use berth_agent::daemon::{Agent, AgentConfig, AgentHandle, Clock};
use berth_agent::reconcile::exec::Effects;
use berth_agent::reconcile::fake::{
    FakeController, FakeImages, FakeProber, FakeRuntime, FakeState, FakeTraffic,
};
use berth_agent::reconcile::traits::{RunState, StateStore};
use berth_manifests::wire::{Assignment, RolloutState};
use common::{HTTP_HEALTH, assigned, assignment, revision};
use tokio::task::JoinHandle;

struct Host {
    runtime: Arc<FakeRuntime>,
    state: Arc<FakeState>,
    controller: Arc<FakeController>,
}

impl Host {
    fn new(first: Assignment) -> Self {
        Self {
            runtime: FakeRuntime::new(),
            state: FakeState::new(),
            controller: FakeController::new(first),
        }
    }

    /// Starts an agent on this host's runtime and state; abort the task to "kill -9" it.
    fn start(&self) -> (AgentHandle, JoinHandle<()>) {
        let fx = Effects {
            runtime: self.runtime.clone(),
            images: FakeImages::new(),
            prober: FakeProber::new(self.runtime.clone()),
            traffic: FakeTraffic::new(),
        };
        let mut config = AgentConfig::new("h1");
        config.poll_wait = Duration::from_secs(30);
        config.report_interval = Duration::from_secs(10);
        let agent = Agent::new(
            config,
            self.controller.clone(),
            self.state.clone(),
            fx,
            Clock::at(1_000_000),
        )
        .unwrap();
        let handle = agent.handle();
        let task = tokio::spawn(agent.run(std::future::pending()));
        (handle, task)
    }
}

fn running(runtime: &FakeRuntime) -> Vec<(String, u64)> {
    runtime
        .instances()
        .into_iter()
        .filter(|i| i.state == RunState::Running)
        .map(|i| (i.id, i.revision))
        .collect()
}

/// Advances virtual time in small steps (letting tasks run) until `done` or `max`.
async fn wait_for(max: Duration, mut done: impl FnMut() -> bool) {
    let step = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while waited < max {
        if done() {
            return;
        }
        tokio::time::sleep(step).await;
        waited += step;
    }
    assert!(done(), "condition not met within {max:?}");
}

fn rollout(handle: &AgentHandle) -> Option<RolloutState> {
    handle.report().apps.first().map(|a| a.rollout.clone())
}

#[tokio::test(start_paused = true)]
async fn converges_and_reports_to_the_controller() {
    let r1 = revision("web", 1, HTTP_HEALTH);
    let host = Host::new(assignment(1, vec![assigned(r1, None, 2)]));
    let (handle, task) = host.start();
    wait_for(Duration::from_secs(30), || {
        rollout(&handle) == Some(RolloutState::Complete)
    })
    .await;
    assert_eq!(running(&host.runtime).len(), 2);
    wait_for(Duration::from_secs(15), || {
        host.controller
            .reports()
            .iter()
            .any(|r| r.apps.first().map(|a| &a.rollout) == Some(&RolloutState::Complete))
    })
    .await;
    let reports = host.controller.reports();
    let events: Vec<_> = reports.iter().flat_map(|r| r.events.iter()).collect();
    assert!(events.iter().any(|e| e.reason == "RolloutStarted"));
    assert!(events.iter().any(|e| e.reason == "RolloutComplete"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.reason == "RolloutStarted")
            .count(),
        1,
        "events are sent once"
    );
    assert_eq!(host.controller.registrations()[0].name, "h1");
    assert_eq!(
        host.state.load_assignment().unwrap().map(|a| a.version),
        Some(1),
        "assignment cached"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn controller_down_for_a_minute_stops_nothing_then_reconnects() {
    let r1 = revision("web", 1, HTTP_HEALTH);
    let r2 = revision("web", 2, &format!("{HTTP_HEALTH}env: {{ V: '2' }}\n"));
    let host = Host::new(assignment(1, vec![assigned(r1.clone(), None, 2)]));
    let (handle, task) = host.start();
    wait_for(Duration::from_secs(30), || {
        rollout(&handle) == Some(RolloutState::Complete)
    })
    .await;
    host.runtime.clear_calls();
    host.controller.set_down(true);
    let reports_before = host.controller.reports().len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = host.runtime.calls();
    assert!(
        calls.iter().all(|c| c == "list"),
        "nothing stopped or restarted while the controller was down: {calls:?}"
    );
    assert_eq!(running(&host.runtime).len(), 2);
    assert_eq!(host.controller.reports().len(), reports_before);

    // Back up, with a new revision: the agent reconnects and converges.
    host.controller
        .set(assignment(2, vec![assigned(r2, Some(r1), 2)]));
    host.controller.set_down(false);
    wait_for(Duration::from_secs(90), || {
        let r = running(&host.runtime);
        r.len() == 2 && r.iter().all(|(_, rev)| *rev == 2)
    })
    .await;
    wait_for(Duration::from_secs(30), || {
        host.controller.reports().len() > reports_before
    })
    .await;
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn restarts_from_the_cached_assignment_without_the_controller() {
    let r1 = revision("web", 1, "");
    let host = Host::new(assignment(1, vec![assigned(r1.clone(), None, 1)]));
    host.state
        .save_assignment(&assignment(7, vec![assigned(r1, None, 2)]))
        .unwrap();
    host.controller.set_down(true);
    let (handle, task) = host.start();
    wait_for(Duration::from_secs(30), || {
        running(&host.runtime).len() == 2
    })
    .await;
    assert_eq!(handle.assignment().unwrap().version, 7);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn agent_killed_mid_rollout_converges_without_duplicates_or_restarts() {
    let r1 = revision("web", 1, HTTP_HEALTH);
    let r2 = revision("web", 2, &format!("{HTTP_HEALTH}env: {{ V: '2' }}\n"));
    let host = Host::new(assignment(1, vec![assigned(r1.clone(), None, 3)]));
    let (handle, task) = host.start();
    wait_for(Duration::from_secs(30), || {
        rollout(&handle) == Some(RolloutState::Complete)
    })
    .await;
    host.controller
        .set(assignment(2, vec![assigned(r2, Some(r1), 3)]));
    wait_for(Duration::from_secs(30), || {
        running(&host.runtime).iter().any(|(_, rev)| *rev == 2)
    })
    .await;
    // kill -9: the task dies wherever it is; containers and state files stay.
    task.abort();
    let _ = task.await;
    let before: Vec<_> = running(&host.runtime);
    host.runtime.clear_calls();

    let (handle, task) = host.start();
    let mut peak = 0;
    wait_for(Duration::from_secs(120), || {
        peak = peak.max(running(&host.runtime).len());
        rollout(&handle) == Some(RolloutState::Complete)
    })
    .await;
    assert!(peak <= 4, "no duplicates (3 + surge 1), saw {peak}");
    let after = running(&host.runtime);
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|(_, rev)| *rev == 2));
    // The revision-2 instances that ran before the crash were adopted, not restarted.
    for (id, rev) in before.iter().filter(|(_, rev)| *rev == 2) {
        assert!(after.contains(&(id.clone(), *rev)), "{id} kept");
        assert!(
            !host
                .runtime
                .calls()
                .iter()
                .any(|c| c == &format!("create_start {id}")),
            "{id} not recreated"
        );
    }
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn an_unassigned_app_is_stopped_and_forgotten() {
    let r1 = revision("web", 1, "");
    let r2 = revision("api", 1, "");
    let host = Host::new(assignment(
        1,
        vec![assigned(r2.clone(), None, 1), assigned(r1, None, 1)],
    ));
    let (handle, task) = host.start();
    wait_for(Duration::from_secs(30), || {
        running(&host.runtime).len() == 2
    })
    .await;
    host.controller
        .set(assignment(2, vec![assigned(r2, None, 1)]));
    wait_for(Duration::from_secs(30), || {
        host.runtime.instances().iter().all(|i| i.app == "api")
    })
    .await;
    wait_for(Duration::from_secs(10), || {
        !host.state.load_history().unwrap().apps.contains_key("web")
    })
    .await;
    let report = handle.report();
    assert_eq!(report.apps.len(), 1);
    assert!(report.instances.iter().all(|i| i.app == "api"));
    task.abort();
}

/// The soak's question in virtual time: rolling an app through revisions leaves nothing of
/// the replaced instances (history, report, metrics' memory), and unassigning it leaves
/// nothing of the app, its metric series included.
#[tokio::test(start_paused = true)]
async fn replaced_instances_and_removed_apps_leave_nothing_behind() {
    let app = "churn-leak";
    let rev = |n: u64| revision(app, n, &format!("env: {{ V: '{n}' }}\n"));
    let keep = revision("churn-keep", 1, "");
    let host = Host::new(assignment(
        1,
        vec![assigned(rev(1), None, 3), assigned(keep.clone(), None, 1)],
    ));
    let (handle, task) = host.start();
    let converged = |n: u64| {
        let of_app: Vec<_> = host
            .runtime
            .instances()
            .into_iter()
            .filter(|i| i.app == app)
            .collect();
        of_app.len() == 3
            && of_app
                .iter()
                .all(|i| i.revision == n && i.state == RunState::Running)
            && handle
                .report()
                .apps
                .iter()
                .any(|a| a.app == app && a.target == n && a.rollout == RolloutState::Complete)
    };
    for n in 1..=6u64 {
        if n > 1 {
            host.controller.set(assignment(
                n,
                vec![
                    assigned(rev(n), Some(rev(n - 1)), 3),
                    assigned(keep.clone(), None, 1),
                ],
            ));
        }
        wait_for(Duration::from_secs(120), || converged(n)).await;
        // one more pass after the last stop, so every structure has seen the end state
        tokio::time::sleep(Duration::from_secs(2)).await;
        let history = host.state.load_history().unwrap();
        assert_eq!(history.apps[app].instances.len(), 3, "history of round {n}");
        let report = handle.report();
        assert_eq!(
            report.instances.iter().filter(|i| i.app == app).count(),
            3,
            "report of round {n}"
        );
        let (_, known) = berth_agent::metrics::global().remembered(app);
        assert_eq!(known, 3, "restart counts known in round {n}");
    }
    let text = berth_agent::metrics::global().encode();
    assert!(text.contains(&format!("app=\"{app}\"")), "{text}");

    host.controller
        .set(assignment(7, vec![assigned(keep, None, 1)]));
    wait_for(Duration::from_secs(60), || {
        host.runtime.instances().iter().all(|i| i.app != app)
            && !host.state.load_history().unwrap().apps.contains_key(app)
            && handle.report().apps.iter().all(|a| a.app != app)
    })
    .await;
    wait_for(Duration::from_secs(10), || {
        berth_agent::metrics::global().remembered(app) == (0, 0)
    })
    .await;
    let text = berth_agent::metrics::global().encode();
    assert!(
        !text.contains(&format!("app=\"{app}\"")),
        "series of the removed app remain:\n{text}"
    );
    assert!(
        text.contains("app=\"churn-keep\""),
        "the other app keeps its series"
    );
    task.abort();
}
