//! The executor: one reconcile pass of one app. Observe (list instances), probe the running
//! ones that are due, read the last log lines of fresh exits, ask the planner, apply its steps
//! through the traits, and apply the error policy:
//!
//! - transient errors (`unavailable`, `resource exhausted`, `internal`): no new instance is
//!   started before a backoff with jitter (1 s doubling to 60 s, 50–100 %), then retried;
//! - invalid input (`invalid input`, `not found`, `conflict`) while starting a revision: the
//!   revision is marked failed here (the planner rolls back, or reports `Failed`) and is not
//!   retried until the assignment names another revision: wait for change, never spin.
//!
//! The caller guarantees one pass per app at a time (the agent loop runs one task per app).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_manifests::Signal;
use berth_manifests::app::{Health, Probe};
use berth_manifests::wire::{AppReport, AssignedApp, Event, InstanceReport, RevisionSpec};

use super::history::{AppHistory, revision_key};
use super::plan::{self, LOG_LINES, Observation, Step};
use super::traits::{
    EffectError, Images, InstanceSpec, ObservedInstance, Prober, Route, RunState, Runtime, Traffic,
};
use crate::health;

/// The effects one agent acts through.
#[derive(Debug)]
pub struct Effects<R, I, P, T> {
    /// Containers.
    pub runtime: Arc<R>,
    /// Images.
    pub images: Arc<I>,
    /// Network probes.
    pub prober: Arc<P>,
    /// The traffic hook.
    pub traffic: Arc<T>,
}

impl<R, I, P, T> Clone for Effects<R, I, P, T> {
    fn clone(&self) -> Self {
        Self {
            runtime: self.runtime.clone(),
            images: self.images.clone(),
            prober: self.prober.clone(),
            traffic: self.traffic.clone(),
        }
    }
}

/// What one pass produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Rollout progress (`None`: the app is not assigned).
    pub report: Option<AppReport>,
    /// The app's instances.
    pub instances: Vec<InstanceReport>,
    /// What happened.
    pub events: Vec<Event>,
    /// Come back after this long at the latest.
    pub requeue_after: Duration,
    /// Steps that failed.
    pub errors: Vec<EffectError>,
    /// Steps applied (or tried).
    pub steps: usize,
}

/// After a pass that changed something, look again this soon (a started instance gets its
/// first probe, a stopped one is removed) instead of waiting for the resync.
pub const AFTER_STEPS_MS: u64 = 20;

/// Longest backoff after transient errors.
pub const RETRY_MAX_MS: u64 = 60_000;

/// The wait after `attempts` transient failures in a row: 1 s doubling up to 60 s, scaled to
/// 50–100 % by a jitter derived from the app's name and the attempt (so hosts and apps spread
/// out, and tests stay deterministic).
pub fn retry_delay_ms(app: &str, attempts: u32) -> u64 {
    let base = 1_000u64
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(16))
        .min(RETRY_MAX_MS);
    // FNV-1a over name and attempt: a cheap, stable spread.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in app.bytes().chain(attempts.to_le_bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let fraction = 500 + hash % 501; // per mille
    base.saturating_mul(fraction) / 1000
}

/// One reconcile pass of `app` at `now` (Unix ms). `history` is updated in place; the caller
/// saves it.
pub async fn reconcile<R: Runtime, I: Images, P: Prober, T: Traffic>(
    fx: &Effects<R, I, P, T>,
    app: &str,
    desired: Option<&AssignedApp>,
    history: &mut AppHistory,
    now: u64,
) -> Outcome {
    let mut out = Outcome::default();
    let instances = match fx.runtime.list().await {
        Ok(list) => list,
        Err(err) => {
            out.requeue_after = Duration::from_millis(transient(app, history, &err, now));
            out.errors.push(err);
            return out;
        }
    };

    // Probe running instances that are due; fetch the last lines of fresh exits.
    let mut logs = BTreeMap::new();
    for o in instances.iter().filter(|o| o.app == app) {
        let spec = spec_of(desired, &o.spec_hash, &o.image_digest);
        let mem = history.instances.entry(o.id.clone()).or_default();
        if mem.kill_at_ms.is_some() {
            continue;
        }
        match o.state {
            RunState::Running => {
                let Some(health) = spec.and_then(|s| s.spec.health.as_ref()) else {
                    continue;
                };
                if mem.probe.due(now) {
                    let health = &host_port_health(health, spec.and_then(|s| s.spec.port), o);
                    let verdict =
                        health::runner::run(&*fx.runtime, &*fx.prober, &o.id, o.address, health)
                            .await;
                    crate::metrics::global().probe(app, verdict.is_ok());
                    tracing::debug!(app, id = %o.id, verdict = ?verdict, "probed");
                    mem.probe.record(health, o.started_at_ms, now, verdict);
                }
            }
            RunState::Exited { .. } if mem.restart_at_ms.is_none() => {
                if let Ok(lines) = fx.runtime.log_tail(&o.id, LOG_LINES).await {
                    logs.insert(o.id.clone(), lines);
                }
            }
            RunState::Exited { .. } => {}
        }
    }

    // Where each instance of the app takes traffic, and how long its drain may take.
    let mut endpoints = BTreeMap::new();
    for o in instances.iter().filter(|o| o.app == app) {
        let spec = spec_of(desired, &o.spec_hash, &o.image_digest);
        let grace = spec.map_or(DRAIN_DEFAULT, |s| s.spec.stop.grace.as_std());
        endpoints.insert(o.id.clone(), (endpoint(o, spec), grace));
    }

    let observation = Observation { instances, logs };
    let plan = plan::plan(app, desired, &observation, history, now);
    let memory_before = history.instances.clone();
    *history = plan.history;
    out.report = plan.report;
    out.instances = plan.instances;
    out.events = plan.events;
    let mut requeue_ms = plan.requeue_after_ms;

    let mut failed_transient = false;
    let mut steps = plan.steps;
    // The target's image is fetched before an instance of another revision is first
    // stopped for it: with the registry down, the serving revision keeps serving and the
    // rollout waits (backing off) instead of stopping the old and failing the start.
    if let Some(target) = desired.map(|d| &d.target) {
        let of_target = |id: &str| {
            observation.instances.iter().any(|o| {
                o.id == id
                    && o.spec_hash == target.spec_hash
                    && o.image_digest == target.image_digest
            })
        };
        let stops_others = steps
            .iter()
            .any(|s| matches!(s, Step::Stop { .. }) && !of_target(s.id()));
        if stops_others
            && let Err(err) = fx
                .images
                .ensure(&target.spec.image, &target.image_digest)
                .await
            && err.transient()
        {
            let held: Vec<String> = steps
                .iter()
                .filter(|s| match s {
                    Step::Stop { .. } => !of_target(s.id()),
                    Step::Start { revision, .. } => {
                        revision.spec_hash == target.spec_hash
                            && revision.image_digest == target.image_digest
                    }
                    _ => false,
                })
                .map(|s| s.id().to_string())
                .collect();
            steps.retain(|s| {
                !held.iter().any(|id| id == s.id())
                    || !matches!(s, Step::Stop { .. } | Step::Start { .. })
            });
            // the plan already marked them stopping (kill deadline) or starting: undo that
            for id in &held {
                match memory_before.get(id) {
                    Some(m) => history.instances.insert(id.clone(), m.clone()),
                    None => history.instances.remove(id),
                };
            }
            failed_transient = true;
            requeue_ms = requeue_ms.min(transient(app, history, &err, now));
            out.events.push(Event {
                time_ms: now,
                object: format!("app/{app}"),
                reason: "PullFailed".into(),
                message: format!(
                    "revision {} waits for its image, the running instances keep serving: {}",
                    target.number,
                    err.chain()
                ),
            });
            out.errors.push(err);
        }
    }
    out.steps = steps.len();
    for step in &steps {
        tracing::debug!(app, step = step.name(), id = step.id(), "applying");
        if let Err(err) = apply(fx, app, step, &endpoints).await {
            match step {
                Step::Start { revision, .. } if !err.transient() => {
                    let reason =
                        format!("revision {} cannot start: {}", revision.number, err.chain());
                    history.failed.insert(
                        revision_key(&revision.spec_hash, &revision.image_digest),
                        reason.clone(),
                    );
                    history.instances.remove(step.id());
                    out.events.push(Event {
                        time_ms: now,
                        object: format!("app/{app}"),
                        reason: "StartFailed".into(),
                        message: reason,
                    });
                    requeue_ms = requeue_ms.min(1);
                }
                _ => {
                    if err.transient() {
                        failed_transient = true;
                        requeue_ms = requeue_ms.min(transient(app, history, &err, now));
                    }
                    out.events.push(Event {
                        time_ms: now,
                        object: format!("instance/{}", step.id()),
                        reason: "StepFailed".into(),
                        message: err.chain(),
                    });
                }
            }
            out.errors.push(err);
        }
    }
    // The proxy's view of the app, level-triggered: its listener and the admitted instances.
    let route = desired.and_then(|d| route_of(&d.target));
    let backends: Vec<(String, SocketAddr)> = observation
        .instances
        .iter()
        .filter(|o| o.app == app && o.state == RunState::Running)
        .filter(|o| {
            history
                .instances
                .get(&o.id)
                .is_some_and(|m| m.admitted && m.kill_at_ms.is_none())
        })
        .filter_map(|o| Some((o.id.clone(), endpoints.get(&o.id)?.0?)))
        .collect();
    if let Err(err) = fx.traffic.sync(app, route.as_ref(), &backends).await {
        requeue_ms = requeue_ms.min(AFTER_STEPS_MS.max(1_000));
        out.errors.push(err);
    }
    if !failed_transient && !steps.is_empty() {
        requeue_ms = requeue_ms.min(AFTER_STEPS_MS);
        if out.errors.is_empty() {
            history.retry = Default::default();
        }
    }
    out.requeue_after = Duration::from_millis(requeue_ms.max(1));
    out
}

fn transient(app: &str, history: &mut AppHistory, err: &EffectError, now: u64) -> u64 {
    history.retry.attempts = history.retry.attempts.saturating_add(1);
    let wait = retry_delay_ms(app, history.retry.attempts);
    history.retry.not_before_ms = now.saturating_add(wait);
    history.retry.last_error = err.chain();
    wait
}

fn spec_of<'a>(
    desired: Option<&'a AssignedApp>,
    spec_hash: &str,
    digest: &str,
) -> Option<&'a RevisionSpec> {
    let d = desired?;
    std::iter::once(&d.target)
        .chain(d.fallback.as_ref())
        .find(|r| r.spec_hash == spec_hash && r.image_digest == digest)
}

/// Drain timeout of an instance whose revision is no longer known (the default stop grace).
const DRAIN_DEFAULT: Duration = Duration::from_secs(10);

/// With no instance in rotation, requests wait this long for one (a restart, a rollout's
/// gap)...
pub const HOLD: Duration = Duration::from_secs(5);
/// ...and this long for an app that scales to zero (an instance starts and becomes ready).
pub const HOLD_FROM_ZERO: Duration = Duration::from_secs(30);

/// The proxy listener of a revision with `expose`.
pub fn route_of(revision: &RevisionSpec) -> Option<Route> {
    let expose = revision.spec.expose.as_ref()?;
    let from_zero = matches!(&revision.spec.autoscale, Some(a) if a.min == 0);
    Some(Route {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), expose.port),
        mode: match expose.protocol {
            berth_manifests::app::Protocol::Http => crate::proxy::Mode::Http,
            berth_manifests::app::Protocol::Tcp => crate::proxy::Mode::Tcp,
        },
        hold: if from_zero { HOLD_FROM_ZERO } else { HOLD },
    })
}

/// Where an instance takes the app's traffic: its address and the app's port (or the host
/// port standing in for it).
fn endpoint(o: &ObservedInstance, spec: Option<&RevisionSpec>) -> Option<SocketAddr> {
    let ip = o.address?;
    let port = o.host_port.or(spec?.spec.port)?;
    Some(SocketAddr::new(ip, port))
}

/// A host-network instance listens on its host port instead of the app's port: probes of the
/// app's port go there.
fn host_port_health(health: &Health, app_port: Option<u16>, o: &ObservedInstance) -> Health {
    let mut h = health.clone();
    if let (Some(app_port), Some(host_port)) = (app_port, o.host_port) {
        match &mut h.probe {
            Probe::Http { port, .. } | Probe::Tcp { port } if *port == app_port => {
                *port = host_port;
            }
            _ => {}
        }
    }
    h
}

async fn apply<R: Runtime, I: Images, P: Prober, T: Traffic>(
    fx: &Effects<R, I, P, T>,
    app: &str,
    step: &Step,
    endpoints: &BTreeMap<String, (Option<SocketAddr>, Duration)>,
) -> Result<(), EffectError> {
    let of = |id: &str| endpoints.get(id).copied().unwrap_or((None, DRAIN_DEFAULT));
    match step {
        Step::Start {
            id,
            revision,
            restarts,
        } => {
            let image = fx
                .images
                .ensure(&revision.spec.image, &revision.image_digest)
                .await?;
            let spec = InstanceSpec {
                id: id.clone(),
                revision: revision.clone(),
                restarts: *restarts,
            };
            fx.runtime.create_start(&spec, &image).await
        }
        Step::Stop { id, signal } => {
            // Out of rotation and drained first; a failed drain must not keep it running.
            if let Err(e) = fx.traffic.drain(app, id, of(id).1).await {
                tracing::warn!(app, instance = %id, error = %e.chain(), "drain failed; stopping anyway");
            }
            fx.runtime.signal(id, *signal).await
        }
        Step::Kill { id } => {
            // Unhealthy or past its grace: out of rotation without waiting.
            if let Err(e) = fx.traffic.drain(app, id, Duration::ZERO).await {
                tracing::warn!(app, instance = %id, error = %e.chain(), "withdraw failed; killing anyway");
            }
            fx.runtime.signal(id, Signal::KILL).await
        }
        Step::Remove { id } => fx.runtime.remove(id).await,
        Step::Admit { id, .. } => fx.traffic.admit(app, id, of(id).0).await,
    }
}
