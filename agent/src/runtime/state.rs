//! A container's recorded state (`state.json` under its state dir), its status guards, and
//! the pure rule that turns a record plus what the host shows now into the true status.

use serde::{Deserialize, Serialize};

use crate::runtime::RuntimeError;
use crate::runtime::spec::ContainerSpec;

/// Where a container is in its lifecycle (see the diagram in [`crate::runtime`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Namespaces and rootfs are being set up.
    Creating,
    /// The init is set up and waits for `start`.
    Created,
    /// The container's program runs.
    Running,
    /// The program ended (or never ran); the exit status is recorded when known.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

impl Status {
    /// Only a created container can be started.
    pub fn can_start(self) -> bool {
        self == Status::Created
    }

    /// Signals go to created or running containers.
    pub fn can_kill(self) -> bool {
        matches!(self, Status::Created | Status::Running)
    }

    /// Only stopped containers are deleted without force (the runtime spec: deleting a
    /// `created` container without `--force` is an error, unlike runc).
    pub fn can_delete(self) -> bool {
        self == Status::Stopped
    }

    /// Checks `guard` for `action`, or says why not.
    pub fn require(
        self,
        id: &str,
        action: &'static str,
        guard: fn(Status) -> bool,
        hint: &'static str,
    ) -> Result<(), RuntimeError> {
        if guard(self) {
            Ok(())
        } else {
            Err(RuntimeError::BadState {
                id: id.to_string(),
                status: self,
                action,
                hint,
            })
        }
    }
}

/// How a container's program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit code as a shell reports it: the program's code, or 128 + signal.
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// The cgroup recorded an OOM kill while it ran.
    pub oom_killed: bool,
    /// Unix seconds when the shim saw it end.
    pub finished: u64,
}

impl Exit {
    /// The code of a process killed by `signal`.
    pub fn from_signal(signal: i32, oom_killed: bool, finished: u64) -> Exit {
        Exit {
            code: 128 + signal,
            signal: Some(signal),
            oom_killed,
            finished,
        }
    }
}

/// A process the runtime recorded, identified by pid and start time together (a pid alone
/// may have been reused since).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// Host pid.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot).
    pub start_time: u64,
}

/// The record kept in `<data-dir>/containers/<id>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    /// What the container was asked to be.
    pub spec: ContainerSpec,
    /// Recorded status; [`observe`] turns it into the true status.
    pub status: Status,
    /// Unix seconds at creation.
    pub created: u64,
    /// The container's init (pid 1 inside), once it exists.
    pub init: Option<ProcessId>,
    /// The shim that owns the init (detached containers).
    pub shim: Option<ProcessId>,
    /// The cgroup path relative to each hierarchy's root, when limits apply.
    pub cgroup: Option<String>,
    /// OCI bundle directory (`berth runtime` only).
    pub bundle: Option<std::path::PathBuf>,
    /// How the program ended, once known.
    pub exit: Option<Exit>,
}

/// What the host shows about a recorded container right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The start time of the process now at the recorded init pid, if one exists.
    pub init_start_time: Option<u64>,
    /// The exit record the shim wrote, if any.
    pub exit: Option<Exit>,
    /// The recorded shim is still the same live process (it is about to record the exit).
    pub shim_alive: bool,
}

/// The true status of a recorded container: running only while the same process (pid and
/// start time) is alive; a reused pid counts as ended. Never returns `Creating` for a
/// container whose init is gone.
pub fn observe(state: &ContainerState, now: Observed) -> (Status, Option<Exit>) {
    let exit = state.exit.or(now.exit);
    let alive = match (state.init, now.init_start_time) {
        (Some(init), Some(start)) => init.start_time == start,
        _ => false,
    };
    match state.status {
        Status::Stopped => (Status::Stopped, exit),
        Status::Creating | Status::Created | Status::Running if alive && exit.is_none() => {
            (state.status, None)
        }
        // The init is gone but its shim has not recorded how yet: still ending.
        Status::Created | Status::Running if exit.is_none() && now.shim_alive => {
            (state.status, None)
        }
        Status::Creating if state.init.is_none() && exit.is_none() => (Status::Creating, None),
        _ => (Status::Stopped, exit),
    }
}

/// Whether the recorded init may be signalled: only when the process at its pid is the one
/// recorded.
pub fn same_process(recorded: ProcessId, current_start_time: Option<u64>) -> bool {
    current_start_time == Some(recorded.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::spec::ContainerSpec;

    fn state(status: Status) -> ContainerState {
        ContainerState {
            spec: ContainerSpec::for_test("c1"),
            status,
            created: 1,
            init: Some(ProcessId {
                pid: 42,
                start_time: 1000,
            }),
            shim: None,
            cgroup: None,
            bundle: None,
            exit: None,
        }
    }

    #[test]
    fn guards_follow_the_lifecycle() {
        assert!(Status::Created.can_start());
        assert!(!Status::Running.can_start());
        assert!(Status::Running.can_kill() && Status::Created.can_kill());
        assert!(!Status::Stopped.can_kill());
        assert!(Status::Stopped.can_delete());
        assert!(!Status::Created.can_delete(), "spec: created needs --force");
        let err = Status::Created
            .require("c1", "delete", Status::can_delete, ": use --force")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "container c1 is created: cannot delete: use --force"
        );
    }

    #[test]
    fn a_reused_pid_is_not_the_container() {
        let s = state(Status::Running);
        let now = Observed {
            init_start_time: Some(999),
            exit: None,
            shim_alive: false,
        };
        assert_eq!(observe(&s, now).0, Status::Stopped);
        assert!(!same_process(s.init.unwrap(), Some(999)));
        assert!(same_process(s.init.unwrap(), Some(1000)));
    }

    #[test]
    fn the_exit_written_while_nobody_watched_is_reported() {
        let s = state(Status::Running);
        let exit = Exit {
            code: 7,
            signal: None,
            oom_killed: false,
            finished: 5,
        };
        let now = Observed {
            init_start_time: None,
            exit: Some(exit),
            shim_alive: true,
        };
        assert_eq!(observe(&s, now), (Status::Stopped, Some(exit)));
    }

    #[test]
    fn a_live_init_keeps_its_status() {
        let s = state(Status::Running);
        let now = Observed {
            init_start_time: Some(1000),
            exit: None,
            shim_alive: false,
        };
        assert_eq!(observe(&s, now), (Status::Running, None));
    }

    #[test]
    fn an_ended_init_stays_running_until_its_shim_records_the_exit() {
        let s = state(Status::Running);
        let now = Observed {
            init_start_time: None,
            exit: None,
            shim_alive: true,
        };
        assert_eq!(observe(&s, now), (Status::Running, None));
        let now = Observed {
            shim_alive: false,
            ..now
        };
        assert_eq!(observe(&s, now), (Status::Stopped, None));
    }
}
