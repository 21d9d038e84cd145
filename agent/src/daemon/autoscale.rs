//! The agent's autoscaler loop: every [`INTERVAL`] (and at once when the proxy holds a
//! request for an app with no instance), one sample per autoscaled app — cgroup CPU usage of
//! its instances and request rate at the proxy over the last [`RATE_WINDOW`], requests in
//! flight now — goes through the pure
//! [`crate::autoscale::Autoscaler`]; a changed count is handed to the app's worker as a
//! fixed scale (the planner starts or stops instances) and reported as an event with its
//! reason.
//!
//! ```text
//!  every 250 ms ─┐                      ┌─► scales[app] = n ─► supervisor ─► worker: plan(Fixed n)
//!  held req ─────┴─► sample ─► evaluate ┤
//!                                       └─► event ScaledUp/ScaledDown (reason, value, target)
//! ```
//!
//! The count starts from the instances running (an agent restart keeps the scale) or the
//! lower bound (at least one). It must not: start or stop instances itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use berth_manifests::app::{Autoscale, Metric};
use berth_manifests::wire::{AssignedApp, Event, Scale};

use super::{Clock, Shared, lock, push_events};
use crate::autoscale::{Autoscaler, Policy, Sample};
use crate::reconcile::exec::Effects;
use crate::reconcile::traits::{Images, Load, Prober, RunState, Runtime, Traffic};

/// How often each autoscaled app is evaluated. A load step is seen within this (plus the
/// time the rate needs to cross the target's tolerance), not within a second: the step to a
/// serving extra replica has a 2 s budget (issue 6).
pub const INTERVAL: Duration = Duration::from_millis(250);

/// Rates (rps, cpu) are averaged over about this long: samples taken every [`INTERVAL`]
/// keep the noise of a one-second average. Right after an app appears the window is shorter
/// (the samples there are).
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// `desired` with the autoscaler's count as a fixed scale (unchanged for fixed apps).
pub(super) fn scaled(mut desired: AssignedApp, scales: &BTreeMap<String, u32>) -> AssignedApp {
    if let Scale::Auto { min, max } = desired.scale {
        let n = scales
            .get(&desired.target.app)
            .copied()
            .unwrap_or_else(|| initial(min, max, 0));
        desired.scale = Scale::Fixed { replicas: n };
    }
    desired
}

/// The count an app starts with: the instances running (within bounds), else the lower
/// bound but at least one.
fn initial(min: u32, max: u32, running: u32) -> u32 {
    let max = max.max(min);
    if running > 0 {
        running.clamp(min, max)
    } else {
        min.max(1).min(max.max(1))
    }
}

/// The previous sample of an app (rates are differences).
#[derive(Debug, Default)]
struct Previous {
    at: Duration,
    requests: u64,
    cpu: BTreeMap<String, Duration>,
}

struct AppScaler {
    scaler: Autoscaler,
    /// Samples of the last [`RATE_WINDOW`], oldest first.
    previous: std::collections::VecDeque<Previous>,
}

/// Per-instance value of `metric` between `prev` and now; `None` when it cannot be known.
fn metric_value(
    spec: &Autoscale,
    cpu_limit_cores: f64,
    current: u32,
    prev: Option<&Previous>,
    now: &Previous,
    in_flight: u64,
) -> Option<f64> {
    let per = f64::from(current.max(1));
    match spec.metric {
        Metric::Concurrency => Some(in_flight as f64 / per),
        Metric::Rps => {
            let p = prev?;
            let dt = now.at.checked_sub(p.at)?.as_secs_f64();
            (dt > 0.0).then(|| now.requests.saturating_sub(p.requests) as f64 / dt / per)
        }
        Metric::Cpu => {
            let p = prev?;
            let dt = now.at.checked_sub(p.at)?.as_secs_f64();
            if dt <= 0.0 || cpu_limit_cores <= 0.0 {
                return None;
            }
            let used: f64 = now
                .cpu
                .iter()
                .filter_map(|(id, t)| Some(t.saturating_sub(*p.cpu.get(id)?).as_secs_f64()))
                .sum();
            Some(used / dt / cpu_limit_cores * 100.0 / per)
        }
    }
}

fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::Cpu => "cpu %",
        Metric::Rps => "rps",
        Metric::Concurrency => "in-flight",
    }
}

/// Evaluates every autoscaled app each [`INTERVAL`], and at once when woken.
pub(super) async fn run<R: Runtime, I: Images, P: Prober, T: Traffic>(
    fx: Effects<R, I, P, T>,
    shared: Arc<Shared>,
    clock: Clock,
) {
    let start = tokio::time::Instant::now();
    let mut apps: BTreeMap<String, AppScaler> = BTreeMap::new();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.wake.notified() => {}
        }
        let now = start.elapsed();
        let assignment = shared.assignment.borrow().clone();
        let autos: Vec<(String, Autoscale, u32, u32, f64)> = assignment
            .iter()
            .flat_map(|a| a.apps.iter())
            .filter_map(|app| match (&app.scale, &app.target.spec.autoscale) {
                (Scale::Auto { min, max }, Some(spec)) => Some((
                    app.target.app.clone(),
                    spec.clone(),
                    *min,
                    *max,
                    app.target.spec.resources.cpu.as_millis() as f64 / 1000.0,
                )),
                _ => None,
            })
            .collect();
        apps.retain(|name, _| {
            let keep = autos.iter().any(|(a, ..)| a == name);
            if !keep {
                crate::metrics::global().not_autoscaled(name);
            }
            keep
        });
        lock(&shared.scales).retain(|name, _| autos.iter().any(|(a, ..)| a == name));
        let woken: BTreeSet<String> = std::mem::take(&mut *lock(&shared.woken));
        if autos.is_empty() {
            continue;
        }
        let Ok(instances) = fx.runtime.list().await else {
            continue;
        };
        let load = fx.traffic.load().await;
        let mut events = Vec::new();
        let mut changed = false;
        for (name, spec, min, max, cpu_limit) in autos {
            let running: Vec<&str> = instances
                .iter()
                .filter(|i| i.app == name && i.state == RunState::Running)
                .map(|i| i.id.as_str())
                .collect();
            let policy = Policy::from_spec(&spec, min, max);
            let app = apps.entry(name.clone()).or_insert_with(|| {
                let n = initial(min, max, u32::try_from(running.len()).unwrap_or(u32::MAX));
                lock(&shared.scales).entry(name.clone()).or_insert(n);
                AppScaler {
                    scaler: Autoscaler::new(policy.clone(), now),
                    previous: std::collections::VecDeque::new(),
                }
            });
            if *app.scaler.policy() != policy {
                app.scaler.set_policy(policy);
            }
            let current = lock(&shared.scales)
                .get(&name)
                .copied()
                .unwrap_or_else(|| initial(min, max, 0));
            let counters = load.get(&name).copied().unwrap_or_default();
            let mut sample_now = Previous {
                at: now,
                requests: counters.requests_total,
                cpu: BTreeMap::new(),
            };
            if spec.metric == Metric::Cpu {
                for id in &running {
                    if let Some(t) = fx.runtime.cpu_usage(id).await {
                        sample_now.cpu.insert((*id).to_string(), t);
                    }
                }
            }
            // Rates against the oldest sample of the window (about a second ago; half an
            // interval of slack for a late tick; the newest stays however old it is).
            while app.previous.len() > 1
                && app
                    .previous
                    .front()
                    .is_some_and(|p| now.saturating_sub(p.at) > RATE_WINDOW + INTERVAL / 2)
            {
                app.previous.pop_front();
            }
            let value = metric_value(
                &spec,
                cpu_limit,
                current,
                app.previous.front(),
                &sample_now,
                counters.in_flight,
            );
            let active = counters.in_flight > 0
                || app
                    .previous
                    .back()
                    .is_some_and(|p| counters.requests_total > p.requests);
            let waiting = counters
                .waiting
                .saturating_add(u64::from(woken.contains(&name)));
            let decision = app.scaler.evaluate(
                now,
                Sample {
                    current,
                    value,
                    active,
                    waiting: u32::try_from(waiting).unwrap_or(u32::MAX),
                },
            );
            app.previous.push_back(sample_now);
            let direction = match decision.desired.cmp(&current) {
                std::cmp::Ordering::Greater => "up",
                std::cmp::Ordering::Less => "down",
                std::cmp::Ordering::Equal => "hold",
            };
            crate::metrics::global().autoscaled(
                &name,
                decision.desired,
                direction,
                decision.reason.as_str(),
            );
            if decision.desired != current {
                lock(&shared.scales).insert(name.clone(), decision.desired);
                changed = true;
                let shown = value.map_or_else(|| "unknown".to_string(), |v| format!("{v:.1}"));
                events.push(Event {
                    time_ms: clock.now_ms(),
                    object: format!("app/{name}"),
                    reason: if decision.desired > current {
                        "ScaledUp".into()
                    } else {
                        "ScaledDown".into()
                    },
                    message: format!(
                        "{current} → {} instances: {} ({} per instance {shown}, target {}, bounds {min}–{max})",
                        decision.desired,
                        decision.reason.as_str(),
                        metric_name(spec.metric),
                        spec.target
                    ),
                });
                tracing::info!(app = %name, from = current, to = decision.desired, reason = decision.reason.as_str(), "autoscaled");
            }
        }
        push_events(&shared, events);
        if changed {
            shared.rescale.notify_one();
        }
    }
}

/// Wakes the autoscaler whenever the proxy holds a request for want of an instance.
pub(super) async fn wake_on_held_requests<T: Load>(traffic: Arc<T>, shared: Arc<Shared>) {
    while let Some(app) = traffic.woken().await {
        lock(&shared.woken).insert(app);
        shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_scale_keeps_running_instances_within_bounds() {
        assert_eq!(initial(1, 5, 0), 1);
        assert_eq!(initial(0, 5, 0), 1);
        assert_eq!(initial(2, 5, 0), 2);
        assert_eq!(initial(1, 5, 3), 3);
        assert_eq!(initial(1, 2, 4), 2);
        assert_eq!(initial(0, 5, 0), 1);
    }

    #[test]
    fn rates_are_per_instance_and_need_two_samples() {
        let spec = |metric| Autoscale {
            min: 1,
            max: 4,
            metric,
            target: 10,
            scale_up_window: berth_manifests::Duration::from_millis(0),
            scale_down_window: berth_manifests::Duration::from_millis(0),
        };
        let a = Previous {
            at: Duration::from_secs(1),
            requests: 100,
            cpu: [("x".to_string(), Duration::from_millis(100))].into(),
        };
        let b = Previous {
            at: Duration::from_secs(2),
            requests: 300,
            cpu: [("x".to_string(), Duration::from_millis(600))].into(),
        };
        assert_eq!(metric_value(&spec(Metric::Rps), 1.0, 2, None, &b, 0), None);
        assert_eq!(
            metric_value(&spec(Metric::Rps), 1.0, 2, Some(&a), &b, 0),
            Some(100.0)
        );
        assert_eq!(
            metric_value(&spec(Metric::Concurrency), 1.0, 2, None, &b, 6),
            Some(3.0)
        );
        // 0.5 s of CPU in 1 s against a 0.5-core limit: 100 %, one instance.
        assert_eq!(
            metric_value(&spec(Metric::Cpu), 0.5, 1, Some(&a), &b, 0),
            Some(100.0)
        );
    }
}
