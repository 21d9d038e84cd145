//! Health: the probe policy (pure) and the probe runner (effects through traits).
//!
//! One `health` block of the manifest serves as both checks Kubernetes separates:
//! - **readiness**: an instance is ready after its first passing probe, and stops being ready
//!   after `failures` consecutive failures (failures inside `start_period` after its start do
//!   not count). Only ready instances count as available during a rollout (and, with the
//!   traffic issue, receive traffic).
//! - **liveness**: an instance that was ready once and then fails `failures` times in a row is
//!   restarted (through the restart policy). One that never became ready is left to the
//!   rollout deadline, so a slow starter is judged once, by the deadline.
//!
//! ```text
//!            pass                         `failures` in a row (after start_period)
//! Starting -------> Ready <---------------------------------------+
//!    |                |  `failures` in a row                       | pass
//!    |                v                                            |
//!    +---------> Unhealthy -------------------------------------- -+
//!  `failures` in a row after start_period
//! ```
//!
//! Inside `start_period`, until the first pass, a failed probe is repeated after at most
//! [`START_PERIOD_PROBE_MS`] instead of `interval`: a starting instance enters rotation soon
//! after it listens (the cold start of a scale from zero).
//!
//! Nothing here reads a clock: `now` (Unix ms) is passed in.

pub mod runner;

use berth_manifests::app::{Health, Probe};

/// During the start period, before the first success, a failed probe is repeated after at
/// most this long (failures do not count then, so probing faster changes no verdict).
pub const START_PERIOD_PROBE_MS: u64 = 100;

/// The probe's short description, as events name it: `GET /up`, `TCP :8080`, `exec [...]`.
pub fn describe(probe: &Probe) -> String {
    match probe {
        Probe::Http { path, .. } => format!("GET {path}"),
        Probe::Tcp { port } => format!("TCP :{port}"),
        Probe::Exec { command } => format!("exec {command:?}"),
    }
}

/// Until its first passing probe, an instance is probed at least this often (ms), whatever
/// its `interval`: readiness of a new instance gates a rollout, so it is noticed within this
/// time. Failures meanwhile count as usual (only a once-ready instance is restarted by them).
pub const STARTING_INTERVAL_MS: u64 = 100;

/// Where an instance stands with its probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No passing probe yet.
    Starting,
    /// Passing.
    Ready,
    /// Failed `failures` times in a row.
    Unhealthy,
}

/// The probe memory of one instance (kept in the agent's history across restarts of the agent).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeState {
    /// Failures in a row that counted.
    pub failures: u32,
    /// Whether the last counted verdict was "ready".
    pub ready: bool,
    /// Ready at least once since its (re)start.
    pub ever_ready: bool,
    /// When the next probe is due (Unix ms); 0: at once.
    pub next_at_ms: u64,
    /// The last failure, formatted for events and status.
    pub message: String,
}

impl ProbeState {
    /// The state for an instance without a health check: ready once running.
    pub fn without_probe() -> Self {
        Self {
            ready: true,
            ever_ready: true,
            ..Self::default()
        }
    }

    /// Whether a probe is due at `now`.
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_at_ms
    }

    /// Folds one probe result in. `started_at_ms` is the instance's (last) start. The next
    /// probe is due after `interval`, or after at most [`STARTING_INTERVAL_MS`] while the
    /// instance has not passed once (a new revision is ready as soon as it answers, not up to
    /// an interval later).
    pub fn record(
        &mut self,
        health: &Health,
        started_at_ms: u64,
        now_ms: u64,
        result: Result<(), String>,
    ) {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.ready = true;
                self.ever_ready = true;
                self.message.clear();
            }
            Err(detail) => {
                let in_start_period =
                    now_ms < started_at_ms.saturating_add(health.start_period.as_millis());
                if in_start_period && !self.ever_ready {
                    // Failures do not count yet: look again soon, so a starting instance
                    // (a scale from zero) enters rotation within ~100 ms of listening.
                    self.next_at_ms = now_ms.saturating_add(
                        health.interval.as_millis().clamp(1, START_PERIOD_PROBE_MS),
                    );
                    self.message = format!(
                        "health check {}: failing during start period: {detail}",
                        describe(&health.probe)
                    );
                    return;
                }
                self.failures = self.failures.saturating_add(1);
                self.message = format!(
                    "health check {}: {} consecutive failure{}: {detail}",
                    describe(&health.probe),
                    self.failures,
                    if self.failures == 1 { "" } else { "s" }
                );
                if self.failures >= health.failures.max(1) {
                    self.ready = false;
                }
            }
        }
        let every = health.interval.as_millis().max(1);
        let every = if self.ever_ready {
            every
        } else {
            every.min(STARTING_INTERVAL_MS)
        };
        self.next_at_ms = now_ms.saturating_add(every);
    }

    /// Where the instance stands.
    pub fn status(&self, health: &Health) -> Status {
        if self.ready {
            Status::Ready
        } else if self.failures >= health.failures.max(1) {
            Status::Unhealthy
        } else {
            Status::Starting
        }
    }

    /// A once-ready instance that now fails: restart it.
    pub fn liveness_failed(&self, health: &Health) -> bool {
        self.ever_ready && self.failures >= health.failures.max(1)
    }
}

#[cfg(test)]
mod tests {
    use berth_manifests::Duration;

    use super::*;

    fn health(failures: u32, start_period_s: u64) -> Health {
        Health {
            probe: Probe::Http {
                path: "/up".into(),
                port: 8080,
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failures,
            start_period: Duration::from_secs(start_period_s),
        }
    }

    #[test]
    fn first_pass_makes_ready_and_threshold_failures_make_unhealthy() {
        let h = health(3, 0);
        let mut s = ProbeState::default();
        assert_eq!(s.status(&h), Status::Starting);
        s.record(&h, 0, 1000, Ok(()));
        assert_eq!(s.status(&h), Status::Ready);
        s.record(&h, 0, 2000, Err("status 500".into()));
        s.record(&h, 0, 3000, Err("status 500".into()));
        assert_eq!(s.status(&h), Status::Ready, "two failures are not three");
        assert!(!s.liveness_failed(&h));
        s.record(&h, 0, 4000, Err("status 500".into()));
        assert_eq!(s.status(&h), Status::Unhealthy);
        assert!(s.liveness_failed(&h));
        assert_eq!(
            s.message,
            "health check GET /up: 3 consecutive failures: status 500"
        );
        s.record(&h, 0, 5000, Ok(()));
        assert_eq!(s.status(&h), Status::Ready);
        assert_eq!(s.failures, 0);
    }

    #[test]
    fn failures_inside_the_start_period_do_not_count() {
        let h = health(1, 10);
        let mut s = ProbeState::default();
        s.record(&h, 0, 9_999, Err("connection refused".into()));
        assert_eq!(s.status(&h), Status::Starting);
        assert_eq!(s.failures, 0);
        s.record(&h, 0, 10_000, Err("connection refused".into()));
        assert_eq!(s.status(&h), Status::Unhealthy);
        assert!(!s.liveness_failed(&h), "never ready: left to the deadline");
    }

    #[test]
    fn probes_are_due_every_interval() {
        let h = health(3, 0);
        let mut s = ProbeState::default();
        assert!(s.due(0));
        s.record(&h, 0, 500, Ok(()));
        assert!(!s.due(1499));
        assert!(s.due(1500));
    }

    #[test]
    fn probes_are_frequent_until_the_first_pass() {
        let h = health(3, 0);
        let mut s = ProbeState::default();
        s.record(&h, 0, 500, Err("connection refused".into()));
        assert!(s.due(500 + STARTING_INTERVAL_MS), "starting: every 100 ms");
        s.record(&h, 0, 700, Ok(()));
        assert!(!s.due(700 + STARTING_INTERVAL_MS), "ready: every interval");
        assert!(s.due(1700));
    }

    #[test]
    fn probes_are_described_for_people() {
        assert_eq!(describe(&Probe::Tcp { port: 80 }), "TCP :80");
        assert_eq!(
            describe(&Probe::Exec {
                command: vec!["true".into()]
            }),
            "exec [\"true\"]"
        );
    }
}
