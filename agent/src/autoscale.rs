//! The autoscaler's decision: how many instances an app should run on this host now, from
//! one sample of its metric. Kubernetes HPA's rule — `desired = ceil(current × value /
//! target)`, no change within a 10% tolerance — with scale-up and scale-down stabilization
//! windows, a maximum step per evaluation, the host's share of the manifest's bounds, and
//! scale to zero after an idle window (DESIGN.md §5). The agent evaluates it every 250 ms
//! (rates over the last second).
//!
//! Pure: the caller passes `now` (a monotonic timestamp) and the sample; nothing here reads
//! a clock, a cgroup or the proxy. Missing, NaN, negative or infinite metrics never scale
//! down and never scale to zero (SECURITY.md checklist 54): the autoscaler holds.
//!
//! ```text
//!   sample ──> recommendation ──> stabilization window ──> step limit ──> bounds ──> desired
//!             (HPA rule, tolerance)  (up: min of window;     (max_step_up/down)   ([floor, max];
//!                                     down: max of window)                         floor 0 only
//!                                                                                  when idle)
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use berth_manifests::app::{Autoscale, Metric};

/// How an app scales on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Fewest instances on this host (0: scale to zero when idle).
    pub min: u32,
    /// Most instances on this host.
    pub max: u32,
    /// What is measured.
    pub metric: Metric,
    /// The per-instance value aimed for (percent of the cpu limit, rps, or in-flight).
    pub target: f64,
    /// No change while `|value / target - 1|` is within this (HPA: 0.1).
    pub tolerance: f64,
    /// Scale up only to the lowest recommendation of this window.
    pub scale_up_window: Duration,
    /// Scale down only to the highest recommendation of this window.
    pub scale_down_window: Duration,
    /// Most instances added in one evaluation.
    pub max_step_up: u32,
    /// Most instances removed in one evaluation.
    pub max_step_down: u32,
    /// With `min: 0`, how long without traffic before the last instance stops.
    pub idle_window: Duration,
}

impl Policy {
    /// The policy for `spec` with this host's share of its bounds (`min`, `max`). Steps:
    /// up to 4 or doubling, down to half, per evaluation (HPA's default up-rate); idle
    /// window: the scale-down window, at least 30 s.
    pub fn from_spec(spec: &Autoscale, min: u32, max: u32) -> Policy {
        let scale_down_window = spec.scale_down_window.as_std();
        Policy {
            min,
            max: max.max(min),
            metric: spec.metric,
            target: f64::from(spec.target.max(1)),
            tolerance: 0.1,
            scale_up_window: spec.scale_up_window.as_std(),
            scale_down_window,
            max_step_up: 4,
            max_step_down: u32::MAX,
            idle_window: scale_down_window.max(Duration::from_secs(30)),
        }
    }
}

/// One observation of an app on this host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Instances running now (the scale being changed).
    pub current: u32,
    /// The metric averaged per instance, or `None` when it could not be read.
    pub value: Option<f64>,
    /// Whether the app saw any request (or had one in flight) since the last sample.
    pub active: bool,
    /// Requests the proxy holds because no instance is running (scale from zero).
    pub waiting: u32,
}

/// Why the autoscaler chose what it chose (an event and a metric label each time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The metric is within the tolerance of its target.
    WithinTolerance,
    /// The metric is above its target.
    Above,
    /// The metric is below its target.
    Below,
    /// The metric could not be read (or was NaN, negative, infinite): hold.
    MetricMissing,
    /// A larger scale is recommended but the scale-up window holds it back.
    StabilizingUp,
    /// A smaller scale is recommended but the scale-down window holds it back.
    StabilizingDown,
    /// The step limit cut the change.
    StepLimited,
    /// Raised to the minimum or lowered to the maximum.
    Bounds,
    /// No traffic for the idle window with `min: 0`: scale to zero.
    Idle,
    /// A request waits and nothing runs: start one.
    Wake,
}

impl Reason {
    /// A snake_case label for metrics and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::WithinTolerance => "within_tolerance",
            Reason::Above => "above_target",
            Reason::Below => "below_target",
            Reason::MetricMissing => "metric_missing",
            Reason::StabilizingUp => "stabilizing_up",
            Reason::StabilizingDown => "stabilizing_down",
            Reason::StepLimited => "step_limited",
            Reason::Bounds => "bounds",
            Reason::Idle => "idle",
            Reason::Wake => "wake",
        }
    }
}

/// One evaluation's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Instances to run.
    pub desired: u32,
    /// What the HPA rule alone recommended.
    pub recommendation: u32,
    /// Why `desired` is what it is.
    pub reason: Reason,
}

/// The autoscaler of one app on one host: the policy and the recent recommendations.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    policy: Policy,
    history: VecDeque<(Duration, u32)>,
    last_active: Option<Duration>,
}

impl Autoscaler {
    /// A fresh autoscaler; `now` starts the idle clock (a new app is not idle at once).
    pub fn new(policy: Policy, now: Duration) -> Autoscaler {
        Autoscaler {
            policy,
            history: VecDeque::new(),
            last_active: Some(now),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy (a new revision or new bounds); keeps the history.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Evaluates one sample taken at `now`.
    pub fn evaluate(&mut self, now: Duration, sample: Sample) -> Decision {
        let p = self.policy.clone();
        if sample.active || sample.waiting > 0 {
            self.last_active = Some(now);
        }
        let idle = match self.last_active {
            Some(at) => now.saturating_sub(at) >= p.idle_window,
            None => true,
        };
        // Scale from zero: a waiting request starts one instance at once, windows or not.
        if sample.current == 0 {
            let floor = if p.min == 0 && sample.waiting == 0 {
                0
            } else {
                p.min.max(1)
            };
            let desired = floor.min(p.max.max(1));
            let reason = if sample.waiting > 0 {
                Reason::Wake
            } else {
                Reason::Idle
            };
            let reason = if desired > 0 && sample.waiting == 0 {
                Reason::Bounds
            } else {
                reason
            };
            self.remember(now, desired);
            return Decision {
                desired,
                recommendation: desired,
                reason,
            };
        }
        // The floor is 1 unless scale to zero is allowed and the app is idle.
        let floor = if p.min == 0 && idle && sample.waiting == 0 {
            0
        } else {
            p.min.max(1)
        };

        let (recommendation, mut reason) = match sample.value {
            Some(v) if v.is_finite() && v >= 0.0 => {
                let ratio = v / p.target;
                if (ratio - 1.0).abs() <= p.tolerance {
                    (sample.current, Reason::WithinTolerance)
                } else {
                    let want = (f64::from(sample.current) * ratio).ceil();
                    let want = if want >= f64::from(u32::MAX) {
                        u32::MAX
                    } else {
                        want as u32
                    };
                    (
                        want,
                        if ratio > 1.0 {
                            Reason::Above
                        } else {
                            Reason::Below
                        },
                    )
                }
            }
            _ => (sample.current, Reason::MetricMissing),
        };
        // Idle with min 0: the recommendation is zero whatever the (stale) metric says.
        let recommendation = if floor == 0 && idle {
            0
        } else {
            recommendation
        };
        if floor == 0 && idle {
            reason = Reason::Idle;
        }
        let bounded = recommendation.clamp(floor, p.max.max(floor));
        self.remember(now, bounded);

        let current = sample.current;
        let mut desired = current;
        if bounded > current {
            let window_min = self.window_extreme(now, p.scale_up_window, bounded, u32::min);
            if window_min > current {
                desired = window_min;
                if window_min < bounded {
                    reason = Reason::StabilizingUp;
                }
            } else {
                reason = Reason::StabilizingUp;
            }
        } else if bounded < current {
            let window_max = if reason == Reason::Idle {
                bounded // the idle window already was the stabilization
            } else {
                self.window_extreme(now, p.scale_down_window, bounded, u32::max)
            };
            if window_max < current {
                desired = window_max;
                if window_max > bounded {
                    reason = Reason::StabilizingDown;
                }
            } else {
                reason = Reason::StabilizingDown;
            }
        }
        if recommendation != bounded && desired == bounded {
            reason = if reason == Reason::Idle {
                Reason::Idle
            } else {
                Reason::Bounds
            };
        }
        // Step limits.
        if desired > current && desired - current > p.max_step_up {
            desired = current.saturating_add(p.max_step_up.max(current));
            desired = desired.min(bounded.max(current));
            reason = Reason::StepLimited;
        } else if desired < current && current - desired > p.max_step_down {
            desired = current - p.max_step_down;
            reason = Reason::StepLimited;
        }
        // A current scale outside the bounds (bounds just changed) moves into them at once.
        let desired = desired.clamp(floor, p.max.max(floor));
        if desired != current && (current < floor || current > p.max) {
            reason = Reason::Bounds;
        }
        Decision {
            desired,
            recommendation,
            reason,
        }
    }

    fn remember(&mut self, now: Duration, recommendation: u32) {
        // A run of equal recommendations is kept as its newest one: a window holds the
        // value exactly when it holds the run's newest entry, so the extremes do not change,
        // and a steady app keeps one entry however long its windows are.
        match self.history.back_mut() {
            Some(last) if last.1 == recommendation => last.0 = now,
            _ => self.history.push_back((now, recommendation)),
        }
        let keep = self
            .policy
            .scale_up_window
            .max(self.policy.scale_down_window);
        while let Some(&(at, _)) = self.history.front() {
            if now.saturating_sub(at) > keep {
                self.history.pop_front();
            } else {
                break;
            }
        }
    }

    /// The min or max of the recommendations within `window` before `now` (`fallback` when
    /// the window is empty or zero).
    fn window_extreme(
        &self,
        now: Duration,
        window: Duration,
        fallback: u32,
        pick: fn(u32, u32) -> u32,
    ) -> u32 {
        self.history
            .iter()
            .filter(|(at, _)| now.saturating_sub(*at) <= window)
            .map(|(_, r)| *r)
            .fold(fallback, pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: u32, max: u32) -> Policy {
        Policy {
            min,
            max,
            metric: Metric::Cpu,
            target: 60.0,
            tolerance: 0.1,
            scale_up_window: Duration::ZERO,
            scale_down_window: Duration::from_secs(60),
            max_step_up: 4,
            max_step_down: u32::MAX,
            idle_window: Duration::from_secs(60),
        }
    }

    fn sample(current: u32, value: f64) -> Sample {
        Sample {
            current,
            value: Some(value),
            active: true,
            waiting: 0,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn applies_the_hpa_rule_above_target() {
        let mut a = Autoscaler::new(policy(1, 10), secs(0));
        // 2 instances at 90% with a 60% target: ceil(2 × 1.5) = 3
        let d = a.evaluate(secs(1), sample(2, 90.0));
        assert_eq!(
            (d.desired, d.recommendation, d.reason),
            (3, 3, Reason::Above)
        );
    }

    #[test]
    fn holds_within_the_ten_percent_tolerance() {
        let mut a = Autoscaler::new(policy(1, 10), secs(0));
        for v in [54.5, 60.0, 65.9] {
            let d = a.evaluate(secs(1), sample(4, v));
            assert_eq!(
                (d.desired, d.reason),
                (4, Reason::WithinTolerance),
                "value {v}"
            );
        }
        let d = a.evaluate(secs(2), sample(4, 66.5));
        assert_eq!(d.desired, 5);
    }

    #[test]
    fn scale_down_waits_for_the_window_and_takes_its_highest_recommendation() {
        let mut a = Autoscaler::new(policy(1, 10), secs(0));
        assert_eq!(a.evaluate(secs(0), sample(6, 60.0)).desired, 6);
        // load drops: the recommendation is 2, but within the window 6 was recommended
        let d = a.evaluate(secs(10), sample(6, 20.0));
        assert_eq!(
            (d.desired, d.recommendation, d.reason),
            (6, 2, Reason::StabilizingDown)
        );
        let d = a.evaluate(secs(30), sample(6, 20.0));
        assert_eq!(d.desired, 6);
        // 61 s after the last high recommendation, the window holds only lows
        let d = a.evaluate(secs(61), sample(6, 20.0));
        assert_eq!((d.desired, d.reason), (2, Reason::Below));
    }

    #[test]
    fn scale_up_window_takes_the_lowest_recommendation() {
        let mut p = policy(1, 20);
        p.scale_up_window = secs(10);
        p.max_step_up = 100;
        let mut a = Autoscaler::new(p, secs(0));
        assert_eq!(a.evaluate(secs(0), sample(2, 60.0)).desired, 2);
        // a spike: recommendation 6, but the window still holds 2
        let d = a.evaluate(secs(1), sample(2, 180.0));
        assert_eq!((d.desired, d.reason), (2, Reason::StabilizingUp));
        let d = a.evaluate(secs(5), sample(2, 180.0));
        assert_eq!(d.desired, 2);
        // after the window, sustained load scales up
        let d = a.evaluate(secs(11), sample(2, 180.0));
        assert_eq!(d.desired, 6);
    }

    #[test]
    fn a_step_is_limited_per_evaluation() {
        let mut a = Autoscaler::new(policy(1, 100), secs(0));
        // 1 instance at 100× target wants 100; first step: max(4, current) more
        let d = a.evaluate(secs(1), sample(1, 6000.0));
        assert_eq!((d.desired, d.reason), (5, Reason::StepLimited));
        let d = a.evaluate(secs(2), sample(5, 6000.0));
        assert_eq!(d.desired, 10, "doubling once current exceeds the step");
    }

    #[test]
    fn stays_within_bounds() {
        let mut a = Autoscaler::new(policy(2, 5), secs(0));
        let d = a.evaluate(secs(1), sample(4, 6000.0));
        assert_eq!(d.desired, 5);
        let mut a = Autoscaler::new(policy(2, 5), secs(0));
        let d = a.evaluate(secs(100), sample(3, 1.0));
        assert_eq!(d.desired, 2);
        // bounds changed under a running scale: move into them at once
        let mut a = Autoscaler::new(policy(2, 5), secs(0));
        let d = a.evaluate(secs(1), sample(9, 60.0));
        assert_eq!((d.desired, d.reason), (5, Reason::Bounds));
    }

    #[test]
    fn missing_nan_negative_or_infinite_metrics_hold_the_scale() {
        for value in [None, Some(f64::NAN), Some(-5.0), Some(f64::INFINITY)] {
            let mut a = Autoscaler::new(policy(0, 10), secs(0));
            let s = Sample {
                current: 3,
                value,
                active: true,
                waiting: 0,
            };
            let d = a.evaluate(secs(120), s);
            assert_eq!(
                (d.desired, d.reason),
                (3, Reason::MetricMissing),
                "{value:?}"
            );
        }
    }

    #[test]
    fn missing_metrics_never_scale_to_zero_while_traffic_flows() {
        let mut a = Autoscaler::new(policy(0, 10), secs(0));
        for t in 0..300 {
            let s = Sample {
                current: 1,
                value: None,
                active: true,
                waiting: 0,
            };
            assert_eq!(a.evaluate(secs(t), s).desired, 1);
        }
    }

    #[test]
    fn scales_to_zero_after_the_idle_window_and_wakes_on_a_waiting_request() {
        let mut a = Autoscaler::new(policy(0, 4), secs(0));
        let quiet = |current| Sample {
            current,
            value: Some(0.0),
            active: false,
            waiting: 0,
        };
        for t in 1..60 {
            assert_eq!(a.evaluate(secs(t), quiet(1)).desired, 1, "at {t}s");
        }
        let d = a.evaluate(secs(60), quiet(1));
        assert_eq!((d.desired, d.reason), (0, Reason::Idle));
        assert_eq!(a.evaluate(secs(70), quiet(0)).desired, 0);
        let waiting = Sample {
            current: 0,
            value: None,
            active: false,
            waiting: 1,
        };
        let d = a.evaluate(secs(71), waiting);
        assert_eq!((d.desired, d.reason), (1, Reason::Wake));
        // once woken, traffic keeps it up
        let busy = Sample {
            current: 1,
            value: Some(10.0),
            active: true,
            waiting: 0,
        };
        assert_eq!(a.evaluate(secs(72), busy).desired, 1);
    }

    #[test]
    fn min_zero_never_goes_to_zero_while_active() {
        let mut a = Autoscaler::new(policy(0, 4), secs(0));
        for t in 0..200 {
            let s = Sample {
                current: 1,
                value: Some(0.0),
                active: true,
                waiting: 0,
            };
            assert_eq!(a.evaluate(secs(t), s).desired, 1);
        }
    }

    #[test]
    fn a_fresh_app_with_min_zero_and_nothing_running_stays_at_zero() {
        let mut a = Autoscaler::new(policy(0, 4), secs(0));
        let s = Sample {
            current: 0,
            value: None,
            active: false,
            waiting: 0,
        };
        assert_eq!(a.evaluate(secs(1), s).desired, 0);
        // but min ≥ 1 starts one
        let mut a = Autoscaler::new(policy(2, 4), secs(0));
        assert_eq!(a.evaluate(secs(1), s).desired, 2);
    }

    #[test]
    fn flapping_load_is_damped_by_the_scale_down_window() {
        let mut a = Autoscaler::new(policy(1, 10), secs(0));
        let mut current = 4;
        let mut changes = 0;
        for t in 0..120u64 {
            let v = if t % 2 == 0 { 120.0 } else { 20.0 };
            let d = a.evaluate(secs(t), sample(current, v));
            if d.desired != current {
                changes += 1;
                current = d.desired;
            }
            assert!((1..=10).contains(&current));
        }
        assert!(changes <= 3, "flapped {changes} times");
    }

    #[test]
    fn policy_from_spec_uses_the_manifest_windows_and_host_share() {
        let spec = Autoscale {
            min: 0,
            max: 10,
            metric: Metric::Rps,
            target: 50,
            scale_up_window: berth_manifests::Duration::from_secs(5),
            scale_down_window: berth_manifests::Duration::from_secs(90),
        };
        let p = Policy::from_spec(&spec, 0, 5);
        assert_eq!((p.min, p.max, p.target), (0, 5, 50.0));
        assert_eq!(p.scale_up_window, secs(5));
        assert_eq!(p.idle_window, secs(90));
    }
}
