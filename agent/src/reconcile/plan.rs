//! The planner: `plan(app, desired, observed, history, now) → Plan` — pure. It decides which
//! revision should run (the target, or the fallback after the target failed here), restarts
//! exited instances per the restart policy, kills live-failing ones, moves a rollout one round
//! forward ([`crate::rollout::moves`]), rolls back on deadline or crash loop, and says what
//! to report and when to look again. It returns the next [`AppHistory`] instead of changing
//! anything; the executor applies the steps and saves the history.
//!
//! Steps (each idempotent, applied in order, all for one app):
//!
//! | step | effect |
//! |---|---|
//! | `Start { id, revision, restarts }` | ensure the image, create and start `id` (replacing an exited container of that id) |
//! | `Stop { id, signal }` | take `id` out of rotation, then send its stop signal (SIGKILL follows after grace, by a later `Kill`) |
//! | `Kill { id }` | SIGKILL |
//! | `Remove { id }` | delete an exited container |
//! | `Admit { id, address }` | a ready instance enters rotation |

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use berth_manifests::Signal;
use berth_manifests::wire::{
    AppReport, AssignedApp, Event, InstanceReport, InstanceState, RevisionSpec, RolloutState, Scale,
};

use super::history::{AppHistory, Rollout, revision_key};
use super::traits::{ObservedInstance, RunState};
use crate::health::{self, ProbeState};
use crate::restart::{self, Backoff, Decision, Exit};
use crate::rollout::{self, Member};

/// Look again at least this often, even when nothing is due (level-triggered resync).
pub const RESYNC_MS: u64 = 5_000;
/// After SIGKILL, look again this soon for the exit (instead of the resync).
pub const AFTER_KILL_MS: u64 = 250;
/// Log lines quoted in a crash-loop message.
pub const LOG_LINES: usize = 5;

/// What the runtime shows (all apps; the planner picks its own) and the last log lines of
/// instances that exited.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Every container the runtime lists.
    pub instances: Vec<ObservedInstance>,
    /// Last output lines of exited instances, by id.
    pub logs: BTreeMap<String, Vec<String>>,
}

/// One effect to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Ensure the image, create and start `id`.
    Start {
        /// Container id.
        id: String,
        /// What it runs.
        revision: Arc<RevisionSpec>,
        /// Restarts so far.
        restarts: u32,
    },
    /// Drain, then the stop signal.
    Stop {
        /// Container id.
        id: String,
        /// The stop signal.
        signal: Signal,
    },
    /// SIGKILL.
    Kill {
        /// Container id.
        id: String,
    },
    /// Delete an exited container.
    Remove {
        /// Container id.
        id: String,
    },
    /// Enter rotation.
    Admit {
        /// Container id.
        id: String,
        /// Its address.
        address: Option<IpAddr>,
    },
}

impl Step {
    /// The step's kind, for logs: `start`, `stop`, `kill`, `remove`, `admit`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start { .. } => "start",
            Self::Stop { .. } => "stop",
            Self::Kill { .. } => "kill",
            Self::Remove { .. } => "remove",
            Self::Admit { .. } => "admit",
        }
    }

    /// The instance the step is about.
    pub fn id(&self) -> &str {
        match self {
            Self::Start { id, .. }
            | Self::Stop { id, .. }
            | Self::Kill { id }
            | Self::Remove { id }
            | Self::Admit { id, .. } => id,
        }
    }
}

/// The planner's answer.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Effects, in order.
    pub steps: Vec<Step>,
    /// The history to keep once the steps are applied.
    pub history: AppHistory,
    /// Rollout progress (`None` when the app is no longer assigned).
    pub report: Option<AppReport>,
    /// The app's instances.
    pub instances: Vec<InstanceReport>,
    /// What happened.
    pub events: Vec<Event>,
    /// Look again after this long at the latest.
    pub requeue_after_ms: u64,
}

/// Instances wanted on this host. With autoscaling the autoscaler (not yet built) chooses
/// within bounds; until then the lower bound, but at least one (no proxy holds requests yet).
pub fn desired_count(scale: &Scale) -> u32 {
    match *scale {
        Scale::Fixed { replicas } => replicas,
        Scale::Auto { min, max } => min.max(1).min(max.max(1)),
    }
}

fn key_of(r: &RevisionSpec) -> String {
    revision_key(&r.spec_hash, &r.image_digest)
}

fn key_of_instance(o: &ObservedInstance) -> String {
    revision_key(&o.spec_hash, &o.image_digest)
}

fn event(now: u64, object: String, reason: &str, message: String) -> Event {
    Event {
        time_ms: now,
        object,
        reason: reason.to_string(),
        message,
    }
}

fn exit_of(o: &ObservedInstance) -> Option<Exit> {
    match o.state {
        RunState::Exited {
            code,
            oom_killed,
            finished_at_ms,
        } => Some(Exit {
            code,
            oom_killed,
            started_at_ms: o.started_at_ms,
            exited_at_ms: finished_at_ms,
        }),
        RunState::Running => None,
    }
}

fn exit_message(exit: &Exit, logs: Option<&Vec<String>>) -> String {
    let mut msg = format!("exited: {}", exit.describe());
    if let Some(lines) = logs.filter(|l| !l.is_empty()) {
        let start = lines.len().saturating_sub(LOG_LINES);
        msg.push_str("; last log lines: ");
        msg.push_str(&lines[start..].join(" | "));
    }
    msg
}

fn is_ready(spec: Option<&RevisionSpec>, probe: &ProbeState) -> bool {
    match spec.and_then(|s| s.spec.health.as_ref()) {
        None => true,
        Some(_) => probe.ready,
    }
}

/// Why the rollout of `target` has failed, if it has (read-only pre-pass).
fn rollout_failure(
    target: &RevisionSpec,
    desired: u32,
    live: &[&ObservedInstance],
    observed: &Observation,
    history: &AppHistory,
    started_at_ms: u64,
    now: u64,
) -> Option<String> {
    let tkey = key_of(target);
    let mut ready = 0u32;
    let mut unready_message = None;
    for o in live.iter().filter(|o| key_of_instance(o) == tkey) {
        let mem = history.instances.get(&o.id).cloned().unwrap_or_default();
        let backoff = mem.pending_backoff.unwrap_or(mem.backoff);
        if let Some(exit) = exit_of(o) {
            let msg = exit_message(&exit, observed.logs.get(&o.id));
            if mem.restart_at_ms.is_some() {
                if restart::crash_looping(backoff) {
                    return Some(format!(
                        "crash loop: instance {} restarted {} times, {msg}",
                        o.id, backoff.restarts
                    ));
                }
                continue;
            }
            match restart::decide(&target.spec.restart, &exit, mem.backoff) {
                Decision::RestartAt { backoff, .. } if restart::crash_looping(backoff) => {
                    return Some(format!(
                        "crash loop: instance {} restarted {} times, {msg}",
                        o.id, mem.backoff.restarts
                    ));
                }
                Decision::Leave if exit.failed() => {
                    return Some(format!("instance {} {msg}", o.id));
                }
                _ => {}
            }
        } else if is_ready(Some(target), &mem.probe) {
            ready = ready.saturating_add(1);
        } else if unready_message.is_none() && !mem.probe.message.is_empty() {
            unready_message = Some(mem.probe.message.clone());
        }
    }
    let update = &target.spec.update;
    if ready < desired && rollout::deadline_passed(update, started_at_ms, now) {
        let why = unready_message.unwrap_or_else(|| format!("{ready} of {desired} ready"));
        return Some(format!(
            "not healthy within the deadline ({}): {why}",
            update.deadline
        ));
    }
    None
}

/// Decides one reconcile of `app`. `desired` is `None` when the app is no longer assigned.
pub fn plan(
    app: &str,
    desired: Option<&AssignedApp>,
    observed: &Observation,
    history: &AppHistory,
    now: u64,
) -> Plan {
    let mut h = history.clone();
    let mut steps = Vec::new();
    let mut events = Vec::new();
    let mut reports = Vec::new();
    let mut wake = now.saturating_add(RESYNC_MS);

    let obs: Vec<&ObservedInstance> = observed.instances.iter().filter(|o| o.app == app).collect();
    h.instances.retain(|id, _| obs.iter().any(|o| &o.id == id));

    let target = desired.map(|d| Arc::new(d.target.clone()));
    let fallback = desired.and_then(|d| d.fallback.clone()).map(Arc::new);
    let tkey = target.as_deref().map(key_of);
    let fkey = fallback.as_deref().map(key_of);
    let spec_for = |key: &str| -> Option<Arc<RevisionSpec>> {
        if tkey.as_deref() == Some(key) {
            target.clone()
        } else if fkey.as_deref() == Some(key) {
            fallback.clone()
        } else {
            None
        }
    };

    // Instances being stopped: SIGKILL after grace, remove once exited.
    let mut live: Vec<&ObservedInstance> = Vec::new();
    for o in &obs {
        let mem = h.instances.entry(o.id.clone()).or_default();
        let Some(kill_at) = mem.kill_at_ms else {
            live.push(o);
            continue;
        };
        match o.state {
            RunState::Exited { .. } => steps.push(Step::Remove { id: o.id.clone() }),
            RunState::Running if !mem.killed && now >= kill_at => {
                steps.push(Step::Kill { id: o.id.clone() });
                mem.killed = true;
            }
            RunState::Running if !mem.killed => wake = wake.min(kill_at),
            // SIGKILLed: look again soon to remove it (and free its network) once it exited.
            RunState::Running => wake = wake.min(now.saturating_add(AFTER_KILL_MS)),
        }
        reports.push(report_of(o, mem, InstanceState::Stopping));
    }

    let (Some(desired), Some(target), Some(tkey)) = (desired, target.clone(), tkey.clone()) else {
        // Unassigned: everything goes.
        for o in live {
            stop_or_remove(o, None, &mut h, &mut steps, &mut wake, now);
            if let Some(mem) = h.instances.get(&o.id) {
                reports.push(report_of(o, mem, InstanceState::Stopping));
            }
        }
        return Plan {
            steps,
            history: h,
            report: None,
            instances: reports,
            events,
            requeue_after_ms: wake.saturating_sub(now).max(1),
        };
    };
    let n = desired_count(&desired.scale);

    // Which revision runs: the target unless it failed here.
    h.failed
        .retain(|k, _| *k == tkey || fkey.as_deref() == Some(k.as_str()));
    let in_rollout = h.rollout.as_ref().filter(|r| r.key == tkey).cloned();
    if let Some(r) = &in_rollout
        && !h.failed.contains_key(&tkey)
        && let Some(reason) = rollout_failure(&target, n, &live, observed, &h, r.started_at_ms, now)
    {
        h.rollout = None;
        let object = format!("app/{app}");
        if target.spec.update.auto_rollback {
            h.failed.insert(tkey.clone(), reason.clone());
            let (why, what) = match &fallback {
                Some(f) if fkey.as_deref() != Some(tkey.as_str()) => (
                    "RolledBack",
                    format!(
                        "revision {} failed, rolling back to revision {}: {reason}",
                        target.number, f.number
                    ),
                ),
                _ => (
                    "RolloutFailed",
                    format!(
                        "revision {} failed and there is nothing to roll back to: {reason}",
                        target.number
                    ),
                ),
            };
            events.push(event(now, object, why, what));
        } else {
            h.failed.insert(tkey.clone(), reason.clone());
            events.push(event(
                now,
                object,
                "RolloutFailed",
                format!(
                    "revision {} failed (auto_rollback is off): {reason}",
                    target.number
                ),
            ));
        }
    }
    let target_failed = h.failed.get(&tkey).cloned();
    let rolled_back_to = match (&target_failed, &fallback, &fkey) {
        (Some(_), Some(f), Some(fk))
            if *fk != tkey && !h.failed.contains_key(fk) && target.spec.update.auto_rollback =>
        {
            Some(f.clone())
        }
        _ => None,
    };
    let effective = rolled_back_to.clone().unwrap_or_else(|| target.clone());
    let ekey = key_of(&effective);

    // A new rollout starts when the effective revision is not the one that completed here.
    if h.current.as_deref() != Some(ekey.as_str())
        && rolled_back_to.is_none()
        && target_failed.is_none()
        && h.rollout.as_ref().map(|r| &r.key) != Some(&ekey)
    {
        h.rollout = Some(Rollout {
            key: ekey.clone(),
            number: effective.number,
            started_at_ms: now,
        });
        events.push(event(
            now,
            format!("app/{app}"),
            "RolloutStarted",
            format!("rolling out revision {} ({n} instances)", effective.number),
        ));
    }
    if let Some(r) = &h.rollout {
        wake = wake.min(
            r.started_at_ms
                .saturating_add(effective.spec.update.deadline.as_millis()),
        );
    }

    // Each live instance: restart, liveness, readiness.
    let mut new = Vec::new();
    let mut old = Vec::new();
    let mut states: BTreeMap<String, InstanceState> = BTreeMap::new();
    for o in &live {
        let key = key_of_instance(o);
        let is_eff = key == ekey;
        let spec = spec_for(&key);
        let Some(mem) = h.instances.get_mut(&o.id) else {
            continue;
        };
        let state = match exit_of(o) {
            None => {
                let health = spec.as_deref().and_then(|s| s.spec.health.as_ref());
                if let Some(hc) = health {
                    if is_eff && mem.probe.liveness_failed(hc) {
                        steps.push(Step::Kill { id: o.id.clone() });
                        mem.message = format!("restarted: {}", mem.probe.message);
                        events.push(event(
                            now,
                            format!("instance/{}", o.id),
                            "Unhealthy",
                            mem.message.clone(),
                        ));
                        mem.probe = ProbeState::default();
                        mem.admitted = false;
                    }
                    wake = wake.min(mem.probe.next_at_ms.max(now.saturating_add(1)));
                }
                let ready = is_ready(spec.as_deref(), &mem.probe);
                if ready {
                    if !mem.admitted {
                        steps.push(Step::Admit {
                            id: o.id.clone(),
                            address: o.address,
                        });
                        mem.admitted = true;
                    }
                    mem.message.clear();
                } else if !mem.probe.message.is_empty() {
                    mem.message.clone_from(&mem.probe.message);
                }
                let member = Member {
                    id: o.id.clone(),
                    ready,
                    started_at_ms: o.started_at_ms,
                };
                if is_eff {
                    new.push(member);
                } else {
                    old.push(member);
                }
                match health.map(|hc| mem.probe.status(hc)) {
                    None | Some(health::Status::Ready) => InstanceState::Ready,
                    Some(health::Status::Unhealthy) => InstanceState::Unhealthy,
                    Some(health::Status::Starting) => InstanceState::Starting,
                }
            }
            Some(exit) => {
                mem.admitted = false;
                mem.last_exit_code = Some(exit.code);
                if !is_eff {
                    // Exited instances of other revisions are not restarted.
                    steps.push(Step::Remove { id: o.id.clone() });
                    mem.kill_at_ms = Some(now);
                    InstanceState::Stopping
                } else {
                    let state = restart_exited(
                        o,
                        &exit,
                        &effective,
                        mem,
                        observed,
                        &mut steps,
                        &mut events,
                        &mut wake,
                        now,
                    );
                    new.push(Member {
                        id: o.id.clone(),
                        ready: false,
                        started_at_ms: o.started_at_ms,
                    });
                    state
                }
            }
        };
        states.insert(o.id.clone(), state);
    }

    // Move the rollout one round.
    let moves = rollout::moves(n, &effective.spec.update, &new, &old);
    for id in &moves.stop {
        if let Some(o) = live.iter().find(|o| &o.id == id) {
            let spec = spec_for(&key_of_instance(o));
            stop_or_remove(o, spec.as_deref(), &mut h, &mut steps, &mut wake, now);
            states.insert(id.clone(), InstanceState::Stopping);
        }
    }
    if moves.start > 0 && now < h.retry.not_before_ms {
        wake = wake.min(h.retry.not_before_ms);
    } else {
        for _ in 0..moves.start {
            let id = next_id(app, effective.number, &mut h, &obs);
            steps.push(Step::Start {
                id: id.clone(),
                revision: effective.clone(),
                restarts: 0,
            });
            h.instances.insert(id, Default::default());
        }
    }

    // Completion.
    let ready_eff = new.iter().filter(|m| m.ready).count();
    let done = old.is_empty()
        && moves.start == 0
        && moves.stop.is_empty()
        && u32::try_from(ready_eff).unwrap_or(0) >= n;
    if done && h.current.as_deref() != Some(ekey.as_str()) {
        h.current = Some(ekey.clone());
        if h.rollout.take().is_some() {
            events.push(event(
                now,
                format!("app/{app}"),
                "RolloutComplete",
                format!("revision {} runs on {n} ready instances", effective.number),
            ));
        }
    }

    for o in &live {
        if let (Some(mem), Some(state)) = (h.instances.get(&o.id), states.get(&o.id)) {
            reports.push(report_of(o, mem, *state));
        }
    }
    let ready_target = live
        .iter()
        .filter(|o| key_of_instance(o) == tkey && states.get(&o.id) == Some(&InstanceState::Ready))
        .count();
    let rollout_state = match (&target_failed, &rolled_back_to) {
        (Some(reason), Some(to)) => RolloutState::RolledBack {
            to: to.number,
            reason: reason.clone(),
        },
        (Some(reason), None) => RolloutState::Failed {
            reason: reason.clone(),
        },
        (None, _) if done => RolloutState::Complete,
        (None, _) => RolloutState::Progressing,
    };
    let report = AppReport {
        requests_total: None,
        app: app.to_string(),
        target: target.number,
        desired: n,
        ready: u32::try_from(ready_target).unwrap_or(u32::MAX),
        rollout: rollout_state,
    };
    reports.sort_by(|a, b| a.id.cmp(&b.id));
    Plan {
        steps,
        history: h,
        report: Some(report),
        instances: reports,
        events,
        requeue_after_ms: wake.saturating_sub(now).max(1),
    }
}

/// Applies the restart policy to an exited instance of the running revision.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the planner's locals"
)]
fn restart_exited(
    o: &ObservedInstance,
    exit: &Exit,
    effective: &Arc<RevisionSpec>,
    mem: &mut super::history::InstanceMemory,
    observed: &Observation,
    steps: &mut Vec<Step>,
    events: &mut Vec<Event>,
    wake: &mut u64,
    now: u64,
) -> InstanceState {
    if mem.restart_at_ms.is_none() {
        let msg = exit_message(exit, observed.logs.get(&o.id));
        match restart::decide(&effective.spec.restart, exit, mem.backoff) {
            Decision::RestartAt { at_ms, backoff } => {
                mem.restart_at_ms = Some(at_ms);
                mem.pending_backoff = Some(backoff);
                mem.message = if restart::crash_looping(backoff) {
                    format!(
                        "crash loop, restart {} in {} ms: {msg}",
                        backoff.restarts,
                        at_ms.saturating_sub(now)
                    )
                } else {
                    format!("restart in {} ms: {msg}", at_ms.saturating_sub(now))
                };
                events.push(event(
                    now,
                    format!("instance/{}", o.id),
                    "BackOff",
                    mem.message.clone(),
                ));
            }
            Decision::Leave => {
                if mem.message != msg {
                    events.push(event(
                        now,
                        format!("instance/{}", o.id),
                        "Exited",
                        msg.clone(),
                    ));
                }
                mem.message = msg;
                return InstanceState::Exited;
            }
        }
    }
    match mem.restart_at_ms {
        Some(at) if now >= at => {
            let backoff: Backoff = mem.pending_backoff.take().unwrap_or(mem.backoff);
            mem.backoff = backoff;
            mem.restart_at_ms = None;
            mem.probe = ProbeState::default();
            steps.push(Step::Start {
                id: o.id.clone(),
                revision: effective.clone(),
                restarts: backoff.restarts,
            });
            InstanceState::Starting
        }
        Some(at) => {
            *wake = (*wake).min(at);
            InstanceState::Restarting
        }
        None => InstanceState::Exited,
    }
}

fn stop_or_remove(
    o: &ObservedInstance,
    spec: Option<&RevisionSpec>,
    h: &mut AppHistory,
    steps: &mut Vec<Step>,
    wake: &mut u64,
    now: u64,
) {
    let mem = h.instances.entry(o.id.clone()).or_default();
    mem.admitted = false;
    match o.state {
        RunState::Exited { .. } => {
            mem.kill_at_ms = Some(now);
            steps.push(Step::Remove { id: o.id.clone() });
        }
        RunState::Running => {
            let (signal, grace) = spec.map_or((Signal::TERM, 10_000), |s| {
                (s.spec.stop.signal, s.spec.stop.grace.as_millis())
            });
            let kill_at = now.saturating_add(grace);
            mem.kill_at_ms = Some(kill_at);
            *wake = (*wake).min(kill_at);
            steps.push(Step::Stop {
                id: o.id.clone(),
                signal,
            });
        }
    }
}

fn next_id(app: &str, revision: u64, h: &mut AppHistory, obs: &[&ObservedInstance]) -> String {
    loop {
        let id = format!("{app}-{revision}-{}", h.next_seq);
        h.next_seq = h.next_seq.saturating_add(1);
        if !obs.iter().any(|o| o.id == id) && !h.instances.contains_key(&id) {
            return id;
        }
    }
}

fn report_of(
    o: &ObservedInstance,
    mem: &super::history::InstanceMemory,
    state: InstanceState,
) -> InstanceReport {
    InstanceReport {
        id: o.id.clone(),
        app: o.app.clone(),
        revision: o.revision,
        state,
        restarts: mem.backoff.restarts,
        last_exit_code: mem.last_exit_code,
        message: mem.message.clone(),
        started_at_ms: o.started_at_ms,
    }
}
