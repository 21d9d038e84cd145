//! Restart policy: whether an exited instance is started again, and when. Pure: the caller
//! passes `now` (Unix ms) and what it knows of the instance; nothing here reads a clock or
//! touches a container.
//!
//! Backoff doubles from [`BASE_BACKOFF_MS`] up to the manifest's `restart.backoff_max`, and
//! resets once an instance ran for [`STABLE_RUN_MS`] before exiting (like Kubernetes' 10 s →
//! 5 min `CrashLoopBackOff`, reset after 10 minutes, but with a shorter stable window so a
//! healthy app that crashes once a day restarts at once).

use berth_manifests::app::{Restart, RestartPolicy};

/// The first wait after an exit.
pub const BASE_BACKOFF_MS: u64 = 1_000;
/// A run at least this long resets the backoff.
pub const STABLE_RUN_MS: u64 = 60_000;
/// Restarts in a row, each after a short run, that make an instance "crash-looping".
pub const CRASH_LOOP_RESTARTS: u32 = 3;

/// How an instance's last run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code (128 + signal for a signal death).
    pub code: i32,
    /// The kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// When its last run started (Unix ms).
    pub started_at_ms: u64,
    /// When it exited (Unix ms).
    pub exited_at_ms: u64,
}

impl Exit {
    /// A non-zero exit or a kill.
    pub fn failed(&self) -> bool {
        self.code != 0 || self.oom_killed
    }

    /// How long the run lasted.
    pub fn ran_ms(&self) -> u64 {
        self.exited_at_ms.saturating_sub(self.started_at_ms)
    }

    /// `exit code 1`, `OOM killed (exit code 137)`.
    pub fn describe(&self) -> String {
        if self.oom_killed {
            format!("OOM killed (exit code {})", self.code)
        } else {
            format!("exit code {}", self.code)
        }
    }
}

/// What the agent remembers between restarts of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backoff {
    /// Restarts since the instance was created.
    pub restarts: u32,
    /// Restarts in a row that each followed a short run (reset by a stable run).
    pub streak: u32,
}

/// What to do about an exited instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again at `at_ms` (now or later); `backoff` is the state to keep once it ran.
    RestartAt {
        /// When (Unix ms).
        at_ms: u64,
        /// The memory to keep after the restart.
        backoff: Backoff,
    },
    /// Leave it exited: the policy does not restart it.
    Leave,
}

/// The wait before the restart that follows `streak` quick exits: 1 s, 2 s, 4 s … up to
/// `max_ms` (at least the base).
pub fn delay_ms(streak: u32, max_ms: u64) -> u64 {
    let exp = streak.min(32);
    BASE_BACKOFF_MS
        .saturating_mul(1u64 << exp)
        .min(max_ms.max(BASE_BACKOFF_MS))
}

/// Decides about one exited instance.
pub fn decide(policy: &Restart, exit: &Exit, memory: Backoff) -> Decision {
    let restart = match policy.policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit.failed(),
        RestartPolicy::Never => false,
    };
    if !restart {
        return Decision::Leave;
    }
    let streak = if exit.ran_ms() >= STABLE_RUN_MS {
        0
    } else {
        memory.streak
    };
    let wait = delay_ms(streak, policy.backoff_max.as_millis());
    Decision::RestartAt {
        at_ms: exit.exited_at_ms.saturating_add(wait),
        backoff: Backoff {
            restarts: memory.restarts.saturating_add(1),
            streak: streak.saturating_add(1),
        },
    }
}

/// Whether restarts in a row show a crash loop (each run shorter than the stable window).
pub fn crash_looping(memory: Backoff) -> bool {
    memory.streak >= CRASH_LOOP_RESTARTS
}

#[cfg(test)]
mod tests {
    use berth_manifests::Duration;

    use super::*;

    fn policy(policy: RestartPolicy, max_s: u64) -> Restart {
        Restart {
            policy,
            backoff_max: Duration::from_secs(max_s),
        }
    }

    fn exit(code: i32, started: u64, exited: u64) -> Exit {
        Exit {
            code,
            oom_killed: false,
            started_at_ms: started,
            exited_at_ms: exited,
        }
    }

    #[test]
    fn policy_table_decides_whether_to_restart() {
        let cases = [
            (RestartPolicy::Always, 0, false, true),
            (RestartPolicy::Always, 1, false, true),
            (RestartPolicy::OnFailure, 0, false, false),
            (RestartPolicy::OnFailure, 2, false, true),
            (RestartPolicy::OnFailure, 0, true, true),
            (RestartPolicy::Never, 1, false, false),
            (RestartPolicy::Never, 0, true, false),
        ];
        for (p, code, oom, want) in cases {
            let e = Exit {
                oom_killed: oom,
                ..exit(code, 0, 10)
            };
            let got = matches!(
                decide(&policy(p, 300), &e, Backoff::default()),
                Decision::RestartAt { .. }
            );
            assert_eq!(got, want, "{p:?} code {code} oom {oom}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let p = policy(RestartPolicy::Always, 10);
        let mut memory = Backoff::default();
        let mut waits = Vec::new();
        let mut t = 0;
        for _ in 0..7 {
            let e = exit(1, t, t + 100);
            match decide(&p, &e, memory) {
                Decision::RestartAt { at_ms, backoff } => {
                    waits.push(at_ms - e.exited_at_ms);
                    memory = backoff;
                    t = at_ms;
                }
                Decision::Leave => panic!("always restarts"),
            }
        }
        assert_eq!(waits, [1000, 2000, 4000, 8000, 10000, 10000, 10000]);
        assert_eq!(memory.restarts, 7);
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let p = policy(RestartPolicy::Always, 300);
        let memory = Backoff {
            restarts: 5,
            streak: 5,
        };
        let e = exit(1, 0, STABLE_RUN_MS);
        let Decision::RestartAt { at_ms, backoff } = decide(&p, &e, memory) else {
            panic!("restarts");
        };
        assert_eq!(at_ms, STABLE_RUN_MS + BASE_BACKOFF_MS);
        assert_eq!(
            backoff,
            Backoff {
                restarts: 6,
                streak: 1
            }
        );
        assert!(!crash_looping(backoff));
    }

    #[test]
    fn quick_exits_in_a_row_are_a_crash_loop() {
        let p = policy(RestartPolicy::Always, 300);
        let mut memory = Backoff::default();
        for _ in 0..CRASH_LOOP_RESTARTS {
            assert!(!crash_looping(memory));
            let Decision::RestartAt { backoff, .. } = decide(&p, &exit(1, 0, 50), memory) else {
                panic!("restarts");
            };
            memory = backoff;
        }
        assert!(crash_looping(memory));
    }

    #[test]
    fn a_tiny_maximum_still_waits_the_base() {
        assert_eq!(delay_ms(0, 0), BASE_BACKOFF_MS);
        assert_eq!(delay_ms(40, u64::MAX), BASE_BACKOFF_MS << 32);
    }

    #[test]
    fn exits_describe_oom_kills() {
        let e = Exit {
            oom_killed: true,
            ..exit(137, 0, 1)
        };
        assert_eq!(e.describe(), "OOM killed (exit code 137)");
        assert_eq!(exit(3, 0, 1).describe(), "exit code 3");
    }
}
