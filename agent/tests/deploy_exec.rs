//! The executor against recording fakes: rollouts, rollbacks, crash loops, the error policy
//! and re-adoption after an agent restart, in virtual time (`now` advanced by the requeue).
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

mod common;

use std::sync::Arc;

use berth_agent::reconcile::exec::{Effects, Outcome, reconcile};
use berth_agent::reconcile::fake::{FakeImages, FakeProber, FakeRuntime, FakeTraffic};
use berth_agent::reconcile::history::AppHistory;
use berth_agent::reconcile::traits::RunState;
use berth_manifests::ErrorKind;
use berth_manifests::wire::{AssignedApp, InstanceState, RolloutState};
use common::{HTTP_HEALTH, assigned, revision};

struct World {
    fx: Effects<FakeRuntime, FakeImages, FakeProber, FakeTraffic>,
    history: AppHistory,
    now: u64,
}

impl World {
    fn new() -> Self {
        let runtime = FakeRuntime::new();
        Self {
            fx: Effects {
                prober: FakeProber::new(runtime.clone()),
                runtime,
                images: FakeImages::new(),
                traffic: FakeTraffic::new(),
            },
            history: AppHistory::default(),
            now: 1_000,
        }
    }

    async fn pass(&mut self, want: Option<&AssignedApp>) -> Outcome {
        self.fx.runtime.set_now(self.now);
        let out = reconcile(&self.fx, "web", want, &mut self.history, self.now).await;
        // The next pass comes at the requeue time, or sooner (a changed assignment).
        self.now += u64::try_from(out.requeue_after.as_millis())
            .unwrap()
            .min(1_000);
        out
    }

    /// Passes until `done` says so (at most `max`), calling `check` after each.
    async fn run_until(
        &mut self,
        want: &AssignedApp,
        max: usize,
        mut each: impl FnMut(&World, &Outcome),
        done: impl Fn(&Outcome) -> bool,
    ) -> Outcome {
        for _ in 0..max {
            let out = self.pass(Some(want)).await;
            each(self, &out);
            if done(&out) {
                return out;
            }
        }
        panic!(
            "not done after {max} passes; calls: {:?}",
            self.fx.runtime.calls()
        );
    }
}

fn ready_count(out: &Outcome) -> usize {
    out.instances
        .iter()
        .filter(|i| i.state == InstanceState::Ready)
        .count()
}

fn complete(out: &Outcome) -> bool {
    out.report.as_ref().map(|r| &r.rollout) == Some(&RolloutState::Complete)
}

async fn deployed(world: &mut World, want: &AssignedApp) {
    world.run_until(want, 50, |_, _| {}, complete).await;
}

#[tokio::test]
async fn rolling_update_keeps_desired_ready_throughout() {
    let mut w = World::new();
    let r1 = revision("web", 1, HTTP_HEALTH);
    let r2 = revision("web", 2, &format!("{HTTP_HEALTH}env: {{ V: '2' }}\n"));
    deployed(&mut w, &assigned(r1.clone(), None, 3)).await;
    assert_eq!(w.fx.runtime.running("web", 1), 3);

    let want = assigned(r2, Some(r1), 3);
    let mut peak = 0;
    let out = w
        .run_until(
            &want,
            100,
            |w, out| {
                let live =
                    w.fx.runtime
                        .instances()
                        .iter()
                        .filter(|i| i.state == RunState::Running)
                        .count();
                peak = peak.max(live);
                assert!(
                    ready_count(out) >= 3,
                    "fewer than 3 ready: {:?}",
                    out.instances
                );
            },
            complete,
        )
        .await;
    assert_eq!(w.fx.runtime.running("web", 2), 3);
    assert_eq!(w.fx.runtime.running("web", 1), 0);
    assert!(peak <= 4, "max_surge 1: at most 4 instances, saw {peak}");
    assert_eq!(out.report.unwrap().ready, 3);
    // Each old instance left rotation before its stop signal.
    let traffic = w.fx.traffic.calls();
    for id in ["web-1-0", "web-1-1", "web-1-2"] {
        let drain = traffic
            .iter()
            .position(|c| c == &format!("drain {id}"))
            .unwrap();
        assert!(
            drain
                > traffic
                    .iter()
                    .position(|c| c == &format!("admit {id}"))
                    .unwrap()
        );
    }
    assert!(
        w.fx.runtime
            .calls()
            .iter()
            .any(|c| c == "signal web-1-0 15")
    );
}

#[tokio::test]
async fn rolls_back_when_new_revision_fails_health() {
    let mut w = World::new();
    let r1 = revision("web", 1, HTTP_HEALTH);
    let r2 = revision(
        "web",
        2,
        &format!("{HTTP_HEALTH}update: {{ deadline: 20s }}\n"),
    );
    deployed(&mut w, &assigned(r1.clone(), None, 2)).await;
    w.fx.prober.answer(2, Ok(500));

    let want = assigned(r2, Some(r1), 2);
    let start = w.now;
    let out = w
        .run_until(
            &want,
            400,
            |w, out| {
                assert!(ready_count(out) >= 2, "old revision kept serving");
                assert_eq!(w.fx.runtime.running("web", 1), 2);
            },
            |out| {
                matches!(
                    out.report.as_ref().map(|r| &r.rollout),
                    Some(RolloutState::RolledBack { .. })
                )
            },
        )
        .await;
    assert!(
        w.now - start <= 22_000,
        "rolled back within its deadline (+ one pass)"
    );
    let Some(RolloutState::RolledBack { to, reason }) = out.report.map(|r| r.rollout) else {
        panic!()
    };
    assert_eq!(to, 1);
    // Never ready, so probed every 100 ms for 20 s: the count says how long it failed.
    assert!(
        reason.starts_with("not healthy within the deadline (20s): health check GET /up: "),
        "{reason}"
    );
    assert!(
        reason.ends_with(" consecutive failures: status 500"),
        "{reason}"
    );
    assert!(out.events.iter().any(|e| e.reason == "RolledBack"));
    // The new instance is gone, and revision 2 is not retried.
    w.run_until(&want, 50, |_, _| {}, |_| true).await;
    for _ in 0..30 {
        w.pass(Some(&want)).await;
    }
    assert_eq!(w.fx.runtime.running("web", 2), 0);
    assert_eq!(w.fx.runtime.running("web", 1), 2);
    let creates =
        w.fx.runtime
            .calls()
            .iter()
            .filter(|c| c.starts_with("create_start web-2"))
            .count();
    assert_eq!(creates, 1, "revision 2 started once, never retried");
}

#[tokio::test]
async fn crash_loop_is_visible_and_rolls_back() {
    let mut w = World::new();
    let r1 = revision("web", 1, "");
    let r2 = revision("web", 2, "command: [/bin/crash]\n");
    deployed(&mut w, &assigned(r1.clone(), None, 1)).await;
    let want = assigned(r2, Some(r1), 1);
    let mut saw_restarting = None;
    let out = w
        .run_until(
            &want,
            200,
            |w, out| {
                for i in w.fx.runtime.instances() {
                    if i.revision == 2 && i.state == RunState::Running {
                        w.fx.runtime.exit(
                            &i.id,
                            3,
                            false,
                            &["loading", "error: missing DATABASE_URL"],
                        );
                    }
                }
                if let Some(i) = out
                    .instances
                    .iter()
                    .find(|i| i.state == InstanceState::Restarting)
                {
                    saw_restarting = Some(i.clone());
                }
            },
            |out| {
                matches!(
                    out.report.as_ref().map(|r| &r.rollout),
                    Some(RolloutState::RolledBack { .. })
                )
            },
        )
        .await;
    let restarting = saw_restarting.expect("a Restarting instance was reported");
    assert_eq!(restarting.last_exit_code, Some(3));
    assert!(
        restarting.message.contains("error: missing DATABASE_URL"),
        "{}",
        restarting.message
    );
    let Some(RolloutState::RolledBack { reason, .. }) = out.report.map(|r| r.rollout) else {
        panic!()
    };
    assert!(reason.starts_with("crash loop"), "{reason}");
    assert!(reason.contains("exit code 3"), "{reason}");
    assert_eq!(w.fx.runtime.running("web", 1), 1);
}

#[tokio::test]
async fn transient_pull_failures_back_off_then_succeed() {
    let mut w = World::new();
    let r1 = revision("web", 1, "");
    w.fx.images.fail_next(3, ErrorKind::Unavailable);
    let want = assigned(r1, None, 1);
    let first = w.pass(Some(&want)).await;
    assert_eq!(first.errors.len(), 1);
    assert!(first.events.iter().any(|e| e.reason == "StepFailed"));
    let wait = first.requeue_after.as_millis();
    assert!(
        (500..=1_000).contains(&wait),
        "first retry after 0.5–1 s, got {wait}"
    );
    assert_eq!(w.history.retry.attempts, 1);
    let out = w.run_until(&want, 100, |_, _| {}, complete).await;
    assert!(out.errors.is_empty());
    assert_eq!(w.fx.images.calls().len(), 4, "three failures, one success");
    assert_eq!(w.history.retry.attempts, 0);
    assert_eq!(w.fx.runtime.running("web", 1), 1);
}

#[tokio::test]
async fn an_image_that_cannot_run_marks_the_revision_failed_and_waits_for_change() {
    let mut w = World::new();
    let r1 = revision("web", 1, "");
    let r2 = revision("web", 2, "env: { V: '2' }\n");
    deployed(&mut w, &assigned(r1.clone(), None, 1)).await;
    w.fx.images.fail_next(1, ErrorKind::NotFound);
    let want = assigned(r2, Some(r1), 1);
    let out = w
        .run_until(
            &want,
            20,
            |_, _| {},
            |out| {
                matches!(
                    out.report.as_ref().map(|r| &r.rollout),
                    Some(RolloutState::RolledBack { .. })
                )
            },
        )
        .await;
    let Some(RolloutState::RolledBack { reason, .. }) = out.report.map(|r| r.rollout) else {
        panic!()
    };
    assert!(reason.contains("revision 2 cannot start: pull"), "{reason}");
    for _ in 0..20 {
        w.pass(Some(&want)).await;
    }
    assert_eq!(w.fx.images.calls().len(), 2, "never retried");
    assert_eq!(w.fx.runtime.running("web", 1), 1);
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_grace() {
    let mut w = World::new();
    let r1 = revision("web", 1, "stop: { grace: 3s }\n");
    deployed(&mut w, &assigned(r1.clone(), None, 1)).await;
    w.fx.runtime.ignore_term(true);
    let started = w.now;
    for _ in 0..20 {
        w.pass(None).await;
        if w.fx.runtime.instances().is_empty() {
            break;
        }
    }
    assert!(
        w.fx.runtime.instances().is_empty(),
        "{:?}",
        w.fx.runtime.calls()
    );
    let calls = w.fx.runtime.calls();
    let term = calls.iter().position(|c| c == "signal web-1-0 15").unwrap();
    let kill = calls.iter().position(|c| c == "signal web-1-0 9").unwrap();
    assert!(term < kill);
    assert!(w.now - started >= 3_000, "SIGKILL only after the grace");
}

#[tokio::test]
async fn exec_probe_runs_inside_the_instance() {
    let mut w = World::new();
    let r1 = revision(
        "web",
        1,
        "health: { exec: [/bin/check, --ready], interval: 1s, failures: 1 }\n",
    );
    w.fx.runtime.set_exec_code(1, 1);
    let want = assigned(r1, None, 1);
    for _ in 0..3 {
        w.pass(Some(&want)).await;
    }
    assert!(
        w.fx.runtime
            .calls()
            .iter()
            .any(|c| c == "exec web-1-0 /bin/check --ready")
    );
    let out = w.pass(Some(&want)).await;
    assert_eq!(out.instances[0].state, InstanceState::Unhealthy);
    assert!(
        out.instances[0].message.contains("exit code 1"),
        "{}",
        out.instances[0].message
    );
    w.fx.runtime.set_exec_code(1, 0);
    w.run_until(&want, 10, |_, _| {}, complete).await;
}

#[tokio::test]
async fn a_restarted_agent_adopts_what_runs_without_restarting_it() {
    // Mid-rollout, the agent dies: its history is the last one saved (before this pass).
    let mut w = World::new();
    let r1 = revision("web", 1, HTTP_HEALTH);
    let r2 = revision("web", 2, &format!("{HTTP_HEALTH}env: {{ V: '2' }}\n"));
    deployed(&mut w, &assigned(r1.clone(), None, 2)).await;
    let want = assigned(r2, Some(r1), 2);
    w.pass(Some(&want)).await;
    w.pass(Some(&want)).await;
    let saved = w.history.clone();
    w.pass(Some(&want)).await; // its effects happen, its history is lost
    w.history = saved;
    w.fx.runtime.clear_calls();
    let mut peak = 0;
    w.run_until(
        &want,
        100,
        |w, out| {
            peak = peak.max(
                w.fx.runtime
                    .instances()
                    .iter()
                    .filter(|i| i.state == RunState::Running)
                    .count(),
            );
            assert!(ready_count(out) >= 2);
        },
        complete,
    )
    .await;
    assert!(peak <= 3, "no duplicates: {peak}");
    assert_eq!(w.fx.runtime.running("web", 2), 2);

    // And with no history at all (a wiped state dir), a converged app is left alone.
    w.history = AppHistory::default();
    w.fx.runtime.clear_calls();
    let want_now = want.clone();
    w.run_until(&want_now, 20, |_, _| {}, complete).await;
    for _ in 0..5 {
        w.pass(Some(&want_now)).await;
    }
    let calls = w.fx.runtime.calls();
    assert!(
        calls.iter().all(|c| c == "list"),
        "healthy instances untouched, got {calls:?}"
    );
}

#[tokio::test]
async fn runtime_list_failure_backs_off() {
    let mut w = World::new();
    w.fx.runtime.fail_next(2, ErrorKind::Unavailable);
    let want = assigned(revision("web", 1, ""), None, 1);
    let a = w.pass(Some(&want)).await;
    let b = w.pass(Some(&want)).await;
    assert_eq!(a.errors.len() + b.errors.len(), 2);
    assert!(
        b.requeue_after > a.requeue_after / 2,
        "backoff grows (with jitter)"
    );
    w.run_until(&want, 20, |_, _| {}, complete).await;
    let _ = Arc::strong_count(&w.fx.runtime);
}
