//! The planner, pure: desired + observed + history + now → steps, history, report.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

mod common;

use std::net::{IpAddr, Ipv4Addr};

use berth_agent::health::ProbeState;
use berth_agent::reconcile::history::{AppHistory, InstanceMemory, Rollout, revision_key};
use berth_agent::reconcile::plan::{Observation, Step, plan};
use berth_agent::reconcile::traits::{ObservedInstance, RunState};
use berth_agent::restart::Backoff;
use berth_manifests::wire::{InstanceState, RevisionSpec, RolloutState};
use common::{HTTP_HEALTH, assigned, revision};

fn key(r: &RevisionSpec) -> String {
    revision_key(&r.spec_hash, &r.image_digest)
}

fn running(id: &str, r: &RevisionSpec, started: u64) -> ObservedInstance {
    ObservedInstance {
        id: id.into(),
        app: r.app.clone(),
        revision: r.number,
        spec_hash: r.spec_hash.clone(),
        image_digest: r.image_digest.clone(),
        state: RunState::Running,
        started_at_ms: started,
        address: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
        host_port: None,
    }
}

fn exited(id: &str, r: &RevisionSpec, code: i32, started: u64, finished: u64) -> ObservedInstance {
    ObservedInstance {
        state: RunState::Exited {
            code,
            oom_killed: false,
            finished_at_ms: finished,
        },
        ..running(id, r, started)
    }
}

fn ready() -> InstanceMemory {
    InstanceMemory {
        probe: ProbeState {
            ready: true,
            ever_ready: true,
            next_at_ms: u64::MAX,
            ..ProbeState::default()
        },
        admitted: true,
        ..InstanceMemory::default()
    }
}

fn failing(message: &str) -> InstanceMemory {
    InstanceMemory {
        probe: ProbeState {
            failures: 3,
            next_at_ms: u64::MAX,
            message: message.into(),
            ..ProbeState::default()
        },
        ..InstanceMemory::default()
    }
}

fn obs(instances: Vec<ObservedInstance>) -> Observation {
    Observation {
        instances,
        logs: Default::default(),
    }
}

fn history(current: &RevisionSpec, mems: &[(&str, InstanceMemory)]) -> AppHistory {
    AppHistory {
        current: Some(key(current)),
        next_seq: 10,
        instances: mems
            .iter()
            .map(|(id, m)| ((*id).to_string(), m.clone()))
            .collect(),
        ..AppHistory::default()
    }
}

fn starts(steps: &[Step]) -> Vec<(String, u64)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Start { id, revision, .. } => Some((id.clone(), revision.number)),
            _ => None,
        })
        .collect()
}

fn stops(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Stop { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn first_revision_starts_the_desired_instances() {
    let r1 = revision("web", 1, HTTP_HEALTH);
    let p = plan(
        "web",
        Some(&assigned(r1, None, 2)),
        &obs(vec![]),
        &AppHistory::default(),
        0,
    );
    assert_eq!(
        starts(&p.steps),
        [("web-1-0".into(), 1), ("web-1-1".into(), 1)]
    );
    let report = p.report.unwrap();
    assert_eq!(report.rollout, RolloutState::Progressing);
    assert_eq!(p.events[0].reason, "RolloutStarted");
    assert!(p.history.rollout.is_some());
}

#[test]
fn rollout_moves_round_by_round() {
    let r1 = revision("web", 1, HTTP_HEALTH);
    let r2 = revision("web", 2, &format!("{HTTP_HEALTH}env: {{ V: '2' }}\n"));
    let want = assigned(r2.clone(), Some(r1.clone()), 2);
    let rollout = Some(Rollout {
        key: key(&r2),
        number: 2,
        started_at_ms: 0,
    });
    // (what runs, memories, starts wanted, stops wanted)
    type Case<'a> = (
        Vec<ObservedInstance>,
        Vec<(&'a str, InstanceMemory)>,
        usize,
        Vec<&'a str>,
    );
    let cases: Vec<Case> = vec![
        // nothing new yet: surge one
        (
            vec![running("a", &r1, 0), running("b", &r1, 1)],
            vec![("a", ready()), ("b", ready())],
            1,
            vec![],
        ),
        // the new one is not ready: wait
        (
            vec![
                running("a", &r1, 0),
                running("b", &r1, 1),
                running("n", &r2, 2),
            ],
            vec![
                ("a", ready()),
                ("b", ready()),
                ("n", InstanceMemory::default()),
            ],
            0,
            vec![],
        ),
        // the new one is ready: the oldest old one goes, another new one starts
        (
            vec![
                running("a", &r1, 0),
                running("b", &r1, 1),
                running("n", &r2, 2),
            ],
            vec![("a", ready()), ("b", ready()), ("n", ready())],
            1,
            vec!["a"],
        ),
        // both new ready: the last old one goes
        (
            vec![
                running("b", &r1, 1),
                running("n", &r2, 2),
                running("m", &r2, 3),
            ],
            vec![("b", ready()), ("n", ready()), ("m", ready())],
            0,
            vec!["b"],
        ),
    ];
    for (i, (instances, mems, n_starts, want_stops)) in cases.into_iter().enumerate() {
        let mut h = history(&r1, &mems);
        h.rollout = rollout.clone();
        let p = plan("web", Some(&want), &obs(instances), &h, 5_000);
        assert_eq!(starts(&p.steps).len(), n_starts, "case {i}: {:?}", p.steps);
        assert_eq!(stops(&p.steps), want_stops, "case {i}");
        assert_eq!(
            p.report.unwrap().rollout,
            RolloutState::Progressing,
            "case {i}"
        );
    }
}

#[test]
fn rollout_completes_when_only_ready_new_instances_run() {
    let r1 = revision("web", 1, HTTP_HEALTH);
    let r2 = revision("web", 2, &format!("{HTTP_HEALTH}env: {{ V: '2' }}\n"));
    let mut h = history(&r1, &[("n", ready()), ("m", ready())]);
    h.rollout = Some(Rollout {
        key: key(&r2),
        number: 2,
        started_at_ms: 0,
    });
    let p = plan(
        "web",
        Some(&assigned(r2.clone(), Some(r1), 2)),
        &obs(vec![running("n", &r2, 1), running("m", &r2, 2)]),
        &h,
        5_000,
    );
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert_eq!(p.report.unwrap().rollout, RolloutState::Complete);
    assert_eq!(p.history.current, Some(key(&r2)));
    assert!(p.history.rollout.is_none());
    assert_eq!(p.events[0].reason, "RolloutComplete");
}

#[test]
fn rolls_back_when_new_revision_is_not_healthy_by_the_deadline() {
    let r1 = revision("web", 1, HTTP_HEALTH);
    let r2 = revision(
        "web",
        2,
        &format!("{HTTP_HEALTH}update: {{ deadline: 30s }}\n"),
    );
    let probe = "health check GET /up: 3 consecutive failures: status 500";
    let mut h = history(
        &r1,
        &[("a", ready()), ("b", ready()), ("n", failing(probe))],
    );
    h.rollout = Some(Rollout {
        key: key(&r2),
        number: 2,
        started_at_ms: 1_000,
    });
    let want = assigned(r2.clone(), Some(r1.clone()), 2);
    let seen = obs(vec![
        running("a", &r1, 0),
        running("b", &r1, 0),
        running("n", &r2, 1_000),
    ]);

    let before = plan("web", Some(&want), &seen, &h, 30_999);
    assert_eq!(before.report.unwrap().rollout, RolloutState::Progressing);
    assert!(before.steps.is_empty(), "{:?}", before.steps);

    let p = plan("web", Some(&want), &seen, &h, 31_000);
    let reason = format!("not healthy within the deadline (30s): {probe}");
    assert_eq!(
        p.report.unwrap().rollout,
        RolloutState::RolledBack {
            to: 1,
            reason: reason.clone()
        }
    );
    assert_eq!(
        stops(&p.steps),
        ["n"],
        "the failing new instance stops, old ones stay"
    );
    assert!(starts(&p.steps).is_empty());
    assert_eq!(p.history.failed.get(&key(&r2)), Some(&reason));
    assert_eq!(p.events[0].reason, "RolledBack");
    assert!(p.events[0].message.contains("status 500"));

    // Later passes keep the fallback and never retry revision 2.
    let again = plan(
        "web",
        Some(&want),
        &obs(vec![running("a", &r1, 0), running("b", &r1, 0)]),
        &p.history,
        40_000,
    );
    assert!(again.steps.is_empty(), "{:?}", again.steps);
    assert!(matches!(
        again.report.unwrap().rollout,
        RolloutState::RolledBack { to: 1, .. }
    ));
}

#[test]
fn rolls_back_when_new_revision_crash_loops() {
    let r1 = revision("web", 1, "");
    let r2 = revision("web", 2, "command: [/bin/false]\n");
    let mut crashing = InstanceMemory {
        backoff: Backoff {
            restarts: 2,
            streak: 2,
        },
        ..InstanceMemory::default()
    };
    crashing.last_exit_code = Some(1);
    let mut h = history(&r1, &[("a", ready()), ("n", crashing)]);
    h.rollout = Some(Rollout {
        key: key(&r2),
        number: 2,
        started_at_ms: 0,
    });
    let mut seen = obs(vec![
        running("a", &r1, 0),
        exited("n", &r2, 1, 4_000, 4_100),
    ]);
    seen.logs.insert(
        "n".into(),
        vec!["starting".into(), "fatal: no config".into()],
    );
    let p = plan("web", Some(&assigned(r2, Some(r1), 1)), &seen, &h, 4_100);
    let Some(RolloutState::RolledBack { to, reason }) = p.report.map(|r| r.rollout) else {
        panic!("rolled back");
    };
    assert_eq!(to, 1);
    assert!(reason.starts_with("crash loop: instance n"), "{reason}");
    assert!(reason.contains("exit code 1"), "{reason}");
    assert!(reason.contains("fatal: no config"), "{reason}");
    assert_eq!(p.steps, [Step::Remove { id: "n".into() }]);
}

#[test]
fn a_new_manifest_clears_the_failure() {
    let r1 = revision("web", 1, "");
    let r2 = revision("web", 2, "env: { V: '2' }\n");
    let r3 = revision("web", 3, "env: { V: '3' }\n");
    let mut h = history(&r1, &[("a", ready())]);
    h.failed.insert(key(&r2), "crash loop".into());
    let p = plan(
        "web",
        Some(&assigned(r3, Some(r1.clone()), 1)),
        &obs(vec![running("a", &r1, 0)]),
        &h,
        1_000,
    );
    assert!(p.history.failed.is_empty());
    assert_eq!(starts(&p.steps), [("web-3-10".into(), 3)]);
    assert_eq!(p.report.unwrap().rollout, RolloutState::Progressing);
}

#[test]
fn exited_instance_restarts_after_backoff_and_shows_why() {
    let r1 = revision("web", 1, "");
    let h = history(&r1, &[("a", ready())]);
    let want = assigned(r1.clone(), None, 1);
    let mut seen = obs(vec![exited("a", &r1, 2, 0, 500)]);
    seen.logs.insert("a".into(), vec!["panic: boom".into()]);

    let p = plan("web", Some(&want), &seen, &h, 500);
    assert!(p.steps.is_empty(), "waits for the backoff: {:?}", p.steps);
    let inst = &p.instances[0];
    assert_eq!(inst.state, InstanceState::Restarting);
    assert_eq!(inst.last_exit_code, Some(2));
    assert!(inst.message.contains("exit code 2"), "{}", inst.message);
    assert!(inst.message.contains("panic: boom"), "{}", inst.message);
    assert_eq!(p.requeue_after_ms, 1_000);

    let later = plan("web", Some(&want), &seen, &p.history, 1_500);
    assert!(matches!(&later.steps[..], [Step::Start { id, restarts: 1, .. }] if id == "a"));
    assert_eq!(later.history.instances["a"].backoff.restarts, 1);
}

#[test]
fn restart_policy_never_leaves_the_instance_exited() {
    let r1 = revision("job", 1, "restart: { policy: never }\n");
    let h = history(&r1, &[("a", ready())]);
    let p = plan(
        "job",
        Some(&assigned(r1.clone(), None, 1)),
        &obs(vec![exited("a", &r1, 0, 0, 500)]),
        &h,
        10_000,
    );
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert_eq!(p.instances[0].state, InstanceState::Exited);
}

#[test]
fn stopping_sends_sigkill_after_grace_then_removes() {
    let r1 = revision("web", 1, "stop: { grace: 5s }\n");
    let mut mem = ready();
    mem.kill_at_ms = Some(5_000);
    let h = history(&r1, &[("old", mem)]);
    let want = assigned(r1.clone(), None, 0);
    let still = obs(vec![running("old", &r1, 0)]);
    assert!(plan("web", Some(&want), &still, &h, 4_999).steps.is_empty());
    let p = plan("web", Some(&want), &still, &h, 5_000);
    assert_eq!(p.steps, [Step::Kill { id: "old".into() }]);
    assert_eq!(p.instances[0].state, InstanceState::Stopping);
    let gone = plan(
        "web",
        Some(&want),
        &obs(vec![exited("old", &r1, 137, 0, 5_000)]),
        &p.history,
        5_001,
    );
    assert_eq!(gone.steps, [Step::Remove { id: "old".into() }]);
}

#[test]
fn an_unassigned_app_is_stopped() {
    let r1 = revision("web", 1, "stop: { signal: SIGINT, grace: 2s }\n");
    let h = history(&r1, &[("a", ready())]);
    let p = plan("web", None, &obs(vec![running("a", &r1, 0)]), &h, 0);
    assert!(matches!(&p.steps[..], [Step::Stop { id, .. }] if id == "a"));
    assert!(p.report.is_none());
    assert_eq!(
        p.history.instances["a"].kill_at_ms,
        Some(10_000),
        "default grace without a spec"
    );
}

#[test]
fn a_once_ready_instance_failing_its_probe_is_restarted() {
    let r1 = revision("web", 1, HTTP_HEALTH);
    let mut mem = failing("health check GET /up: 3 consecutive failures: status 503");
    mem.probe.ever_ready = true;
    let h = history(&r1, &[("a", mem)]);
    let p = plan(
        "web",
        Some(&assigned(r1.clone(), None, 1)),
        &obs(vec![running("a", &r1, 0)]),
        &h,
        9_000,
    );
    assert_eq!(p.steps, [Step::Kill { id: "a".into() }]);
    assert_eq!(p.events[0].reason, "Unhealthy");
}

#[test]
fn a_failing_first_revision_reports_failed() {
    let r1 = revision(
        "web",
        1,
        &format!("{HTTP_HEALTH}update: {{ deadline: 10s }}\n"),
    );
    let mut h = AppHistory::default();
    h.instances.insert(
        "n".into(),
        failing("health check GET /up: 3 consecutive failures: status 500"),
    );
    h.rollout = Some(Rollout {
        key: key(&r1),
        number: 1,
        started_at_ms: 0,
    });
    let p = plan(
        "web",
        Some(&assigned(r1.clone(), None, 1)),
        &obs(vec![running("n", &r1, 0)]),
        &h,
        10_000,
    );
    assert!(
        matches!(p.report.unwrap().rollout, RolloutState::Failed { reason } if reason.contains("status 500"))
    );
    assert_eq!(p.events[0].reason, "RolloutFailed");
}

#[test]
fn ids_skip_instances_that_already_exist() {
    let r1 = revision("web", 1, "");
    let h = AppHistory::default();
    let stray = running("web-1-0", &revision("web", 9, "env: { X: '1' }\n"), 0);
    let p = plan(
        "web",
        Some(&assigned(r1, None, 1)),
        &obs(vec![stray]),
        &h,
        0,
    );
    assert_eq!(starts(&p.steps), [("web-1-1".into(), 1)]);
}
