//! The autoscaler in the agent loop, with fakes in virtual time (`tokio::time::pause`):
//! request rate at the (fake) proxy raises the instance count toward the maximum, never
//! past it, and back to the minimum after the scale-down window; each change is an event
//! with its reason; an app with `min: 0` goes to zero when idle and a held request starts
//! an instance at once.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use berth_agent::daemon::{Agent, AgentConfig, AgentHandle, Clock};
use berth_agent::reconcile::exec::Effects;
use berth_agent::reconcile::fake::{
    FakeController, FakeImages, FakeProber, FakeRuntime, FakeState, FakeTraffic,
};
use berth_agent::reconcile::traits::RunState;
use berth_manifests::wire::{AssignedApp, Scale};
use common::{HTTP_HEALTH, assignment, revision};

fn start(
    app: AssignedApp,
) -> (
    Arc<FakeRuntime>,
    Arc<FakeTraffic>,
    Arc<FakeController>,
    AgentHandle,
) {
    let runtime = FakeRuntime::new();
    let traffic = FakeTraffic::new();
    let controller = FakeController::new(assignment(1, vec![app]));
    let fx = Effects {
        runtime: runtime.clone(),
        images: FakeImages::new(),
        prober: FakeProber::new(runtime.clone()),
        traffic: traffic.clone(),
    };
    let mut config = AgentConfig::new("h1");
    config.report_interval = Duration::from_secs(1);
    let agent = Agent::new(
        config,
        controller.clone(),
        FakeState::new(),
        fx,
        Clock::at(1_000_000),
    )
    .unwrap();
    let handle = agent.handle();
    tokio::spawn(agent.run(std::future::pending()));
    (runtime, traffic, controller, handle)
}

fn running(runtime: &FakeRuntime) -> usize {
    runtime
        .instances()
        .into_iter()
        .filter(|i| i.state == RunState::Running)
        .count()
}

fn autoscaled(extra: &str, min: u32, max: u32) -> AssignedApp {
    AssignedApp {
        target: revision(
            "web",
            1,
            &format!("{HTTP_HEALTH}expose: {{ port: 8000 }}\n{extra}"),
        ),
        fallback: None,
        scale: Scale::Auto { min, max },
        pinned: false,
    }
}

/// Advances virtual time in 100 ms steps until `done`, checking `each` at every step.
async fn until(max: Duration, mut each: impl FnMut(), mut done: impl FnMut() -> bool) {
    let mut waited = Duration::ZERO;
    while !done() {
        assert!(waited < max, "condition not met within {max:?}");
        each();
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
}

fn events(controller: &FakeController) -> Vec<(String, String)> {
    controller
        .reports()
        .iter()
        .flat_map(|r| r.events.iter())
        .map(|e| (e.reason.clone(), e.message.clone()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn request_rate_scales_out_to_max_and_back_to_min_after_the_window() {
    let app = autoscaled(
        "autoscale: { min: 1, max: 3, metric: rps, target: 10, scale_down_window: 5s }\n",
        1,
        3,
    );
    let (runtime, traffic, controller, _h) = start(app);
    until(Duration::from_secs(10), || {}, || running(&runtime) == 1).await;

    // 25 rps on one instance: ceil(1 × 25 / 10) = 3.
    traffic.set_load("web", 25.0, 0);
    let bounded = |n: usize| assert!((1..=3).contains(&n), "{n} instances");
    until(
        Duration::from_secs(5),
        || bounded(running(&runtime)),
        || running(&runtime) == 3,
    )
    .await;
    // Far more load: still never above max.
    traffic.set_load("web", 1_000.0, 0);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bounded(running(&runtime));
    }
    // Load stops: nothing changes inside the scale-down window, then back to min.
    traffic.set_load("web", 0.0, 0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(running(&runtime), 3, "held by the scale-down window");
    until(
        Duration::from_secs(30),
        || bounded(running(&runtime)),
        || running(&runtime) == 1,
    )
    .await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let ev = events(&controller);
    // The rate is averaged over the last second, sampled every 250 ms: a step is seen
    // partly first (1 → 2), fully within the second (→ 3).
    let up = ev.iter().find(|(r, _)| r == "ScaledUp").unwrap();
    assert!(
        up.1.starts_with("1 → ") && up.1.contains("rps per instance"),
        "{up:?}"
    );
    assert!(
        ev.iter()
            .any(|(r, m)| r == "ScaledUp" && m.contains("→ 3 instances")),
        "{ev:?}"
    );
    let down = ev.iter().find(|(r, _)| r == "ScaledDown").unwrap();
    assert!(down.1.starts_with("3 → "), "{down:?}");
    assert!(
        ev.iter()
            .any(|(r, m)| r == "ScaledDown" && m.contains("→ 1 instances")),
        "{ev:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn concurrency_within_tolerance_holds_the_scale() {
    let app = autoscaled(
        "autoscale: { min: 1, max: 5, metric: concurrency, target: 10 }\n",
        1,
        5,
    );
    let (runtime, traffic, controller, _h) = start(app);
    until(Duration::from_secs(10), || {}, || running(&runtime) == 1).await;
    // 10.5 in flight on one instance: within 10 % of the target.
    traffic.set_load("web", 5.0, 10);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(running(&runtime), 1);
    // 30 in flight: 3 instances.
    traffic.set_load("web", 5.0, 30);
    until(Duration::from_secs(5), || {}, || running(&runtime) == 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        events(&controller)
            .iter()
            .any(|(r, m)| r == "ScaledUp" && m.contains("in-flight"))
    );
}

#[tokio::test(start_paused = true)]
async fn idle_app_goes_to_zero_and_a_held_request_starts_one_at_once() {
    let app = autoscaled(
        "autoscale: { min: 0, max: 2, metric: rps, target: 10, scale_down_window: 1s }\n",
        0,
        2,
    );
    let (runtime, traffic, controller, _h) = start(app);
    until(Duration::from_secs(10), || {}, || running(&runtime) == 1).await;
    // No requests: zero after the idle window (30 s at least).
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(running(&runtime), 1, "not idle long enough yet");
    until(Duration::from_secs(20), || {}, || running(&runtime) == 0).await;
    // A request waits at the proxy: an instance starts within the same second.
    traffic.hold_request("web");
    until(Duration::from_millis(500), || {}, || running(&runtime) == 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ev = events(&controller);
    assert!(
        ev.iter()
            .any(|(r, m)| r == "ScaledDown" && m.contains("idle")),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|(r, m)| r == "ScaledUp" && m.contains("wake")),
        "{ev:?}"
    );
}
