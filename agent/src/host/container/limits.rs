//! The seam between the runtime and the cgroup backends (`host::cgroup`, written
//! separately): the runtime asks for a container's cgroup to be created with its
//! [`Resources`](crate::runtime::spec::Resources), for the init to be moved into it before
//! its cgroup namespace is made, whether it saw an OOM kill, to signal every process in it,
//! and to remove it.

use std::path::PathBuf;

use super::ContainerError;
use crate::runtime::spec::ContainerSpec;

/// How a new process enters the container's cgroup by itself. Moving *another* process
/// (writing its pid to `cgroup.procs`) takes the kernel's global thread-group lock for
/// writing, which waits for an RCU grace period: 5-15 ms per container here. A process
/// cloned with `CLONE_INTO_CGROUP` (v2) starts in its cgroup, and a single-threaded process
/// that writes `0` to a v1 `tasks` file moves only itself, which skips that lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelfJoin {
    /// The cgroup v2 directory to clone the process into.
    pub clone_into: Option<PathBuf>,
    /// The cgroup v1 `tasks` files the process writes `0` to.
    pub tasks: Vec<PathBuf>,
}

/// What the runtime needs from cgroups. Every method is idempotent.
pub trait Cgroups {
    /// The container's cgroup path relative to each hierarchy's root, if it gets one.
    fn path(&self, spec: &ContainerSpec) -> Option<String>;
    /// Creates the container's cgroup with its limits.
    fn create(&self, spec: &ContainerSpec) -> Result<(), ContainerError>;
    /// Moves `pid` into the container's cgroup.
    fn add(&self, spec: &ContainerSpec, pid: i32) -> Result<(), ContainerError>;
    /// How a new process can enter the (created) cgroup by itself instead of through
    /// [`Cgroups::add`]; `None` when it cannot or need not.
    fn self_join(&self, _spec: &ContainerSpec) -> Option<SelfJoin> {
        None
    }
    /// Whether the kernel OOM-killed a process of the container.
    fn oom_killed(&self, spec: &ContainerSpec) -> bool;
    /// CPU time used by the container's cgroup so far, in ns (`None`: unknown).
    fn cpu_usage_ns(&self, _spec: &ContainerSpec) -> Option<u64> {
        None
    }
    /// Sends `signal` to every process in the container's cgroup; false if unsupported.
    fn signal_all(&self, spec: &ContainerSpec, signal: i32) -> Result<bool, ContainerError>;
    /// Removes the container's cgroup (after its processes are gone).
    fn remove(&self, spec: &ContainerSpec) -> Result<(), ContainerError>;
    /// The container's usage counters (cpu, memory, OOM kills), if it has a cgroup.
    fn stats(&self, _spec: &ContainerSpec) -> Option<crate::host::cgroup::Stats> {
        None
    }
}

/// No cgroups: containers without limits still run (the pid namespace bounds their
/// processes: when pid 1 dies the kernel kills the rest). Limits are refused.
#[derive(Debug, Default)]
pub struct NoCgroups;

impl Cgroups for NoCgroups {
    fn path(&self, _spec: &ContainerSpec) -> Option<String> {
        None
    }

    fn create(&self, spec: &ContainerSpec) -> Result<(), ContainerError> {
        if spec.resources.any() {
            return Err(ContainerError::Cgroup {
                path: spec.cgroup_parent.clone(),
                message: "cgroup limits are not available in this build yet".into(),
            });
        }
        Ok(())
    }

    fn add(&self, _spec: &ContainerSpec, _pid: i32) -> Result<(), ContainerError> {
        Ok(())
    }

    fn oom_killed(&self, _spec: &ContainerSpec) -> bool {
        false
    }

    fn signal_all(&self, _spec: &ContainerSpec, _signal: i32) -> Result<bool, ContainerError> {
        Ok(false)
    }

    fn remove(&self, _spec: &ContainerSpec) -> Result<(), ContainerError> {
        Ok(())
    }
}

/// The host's cgroups (v1, v2 or hybrid, from `mountinfo`): each container gets
/// `<cgroup_parent>/<id>` with its limits and the default device allow-list (so CAP_MKNOD
/// cannot open host devices).
#[derive(Debug)]
pub struct HostCgroups {
    layout: crate::host::cgroup::CgroupLayout,
}

impl HostCgroups {
    /// Detects the layout from `mountinfo` (normally `/proc/self/mountinfo`).
    pub fn detect(mountinfo: &std::path::Path) -> Result<HostCgroups, ContainerError> {
        let layout = crate::host::cgroup::CgroupLayout::detect(mountinfo).map_err(|e| {
            ContainerError::Cgroup {
                path: mountinfo.display().to_string(),
                message: e.to_string(),
            }
        })?;
        Ok(HostCgroups { layout })
    }

    /// Removes the (empty) parent cgroup of an agent's containers in every hierarchy, as
    /// `berth down` does after removing them. Busy (something still runs under it) is an
    /// error that names the path; a missing parent is fine.
    pub fn remove_parent(&self, parent: &str) -> Result<(), ContainerError> {
        use crate::host::cgroup::CgroupManager;
        let parent = parent.trim_matches('/');
        let cg_path =
            crate::host::cgroup::CgroupPath::new(parent).map_err(|e| cg_err(parent, e))?;
        self.layout
            .cgroup(&cg_path)
            .delete()
            .map_err(|e| cg_err(parent, e))
    }

    fn cgroup(&self, spec: &ContainerSpec) -> Result<crate::host::cgroup::Cgroup, ContainerError> {
        let path = self.path(spec).unwrap_or_default();
        let cg_path = crate::host::cgroup::CgroupPath::new(&path).map_err(|e| cg_err(&path, e))?;
        Ok(self.layout.cgroup(&cg_path))
    }
}

fn cg_err(path: &str, e: impl std::fmt::Display) -> ContainerError {
    ContainerError::Cgroup {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// The default device allow-list plus `rwm` on each of the spec's own device nodes.
fn device_rules(spec: &ContainerSpec) -> Vec<crate::host::cgroup::DeviceRule> {
    use crate::host::cgroup::{DeviceAccess, DeviceKind, DeviceRule};
    let mut rules = crate::host::cgroup::default_device_rules();
    rules.extend(
        spec.devices
            .iter()
            .filter(|d| d.kind != 'p')
            .map(|d| DeviceRule {
                allow: true,
                kind: if d.kind == 'b' {
                    DeviceKind::Block
                } else {
                    DeviceKind::Char
                },
                major: Some(d.major),
                minor: Some(d.minor),
                access: DeviceAccess::ALL,
            }),
    );
    rules
}

/// The cgroup limits for a spec's resources.
pub fn cgroup_resources(r: &crate::runtime::spec::Resources) -> crate::host::cgroup::Resources {
    crate::host::cgroup::Resources {
        cpu_millicores: match (r.cpu_quota, r.cpu_period) {
            (Some(q), Some(p)) if p > 0 => Some((q.saturating_mul(1000) / p).max(1)),
            (Some(q), None) => Some((q.saturating_mul(1000) / 100_000).max(1)),
            _ => None,
        },
        cpu_period_us: r.cpu_period,
        cpu_shares: r.cpu_shares,
        memory_bytes: r.memory,
        pids_max: r.pids.and_then(|p| u64::try_from(p).ok()),
        memory_reservation_bytes: r.memory_reservation,
        memory_swappiness: r.memory_swappiness,
        memory_kernel_tcp_bytes: r.memory_kernel_tcp,
        disable_oom_killer: r.disable_oom_killer,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
    }
}

impl Cgroups for HostCgroups {
    fn stats(&self, spec: &ContainerSpec) -> Option<crate::host::cgroup::Stats> {
        use crate::host::cgroup::CgroupManager;
        self.cgroup(spec).ok()?.stats().ok()
    }

    fn path(&self, spec: &ContainerSpec) -> Option<String> {
        if let Some(exact) = &spec.cgroup_path {
            return Some(exact.trim_matches('/').to_string());
        }
        let parent = spec.cgroup_parent.trim_matches('/');
        Some(if parent.is_empty() {
            spec.id.clone()
        } else {
            format!("{parent}/{}", spec.id)
        })
    }

    fn create(&self, spec: &ContainerSpec) -> Result<(), ContainerError> {
        use crate::host::cgroup::CgroupManager;
        let cg = self.cgroup(spec)?;
        let path = self.path(spec).unwrap_or_default();
        cg.create().map_err(|e| cg_err(&path, e))?;
        let applied = cg
            .apply(&cgroup_resources(&spec.resources))
            .and_then(|()| cg.apply_devices(&device_rules(spec)));
        if let Err(e) = applied {
            let _ = cg.delete();
            return Err(cg_err(&path, e));
        }
        Ok(())
    }

    fn add(&self, spec: &ContainerSpec, pid: i32) -> Result<(), ContainerError> {
        use crate::host::cgroup::CgroupManager;
        let path = self.path(spec).unwrap_or_default();
        let pid = u32::try_from(pid).map_err(|e| cg_err(&path, e))?;
        self.cgroup(spec)?
            .add_pid(pid)
            .map_err(|e| cg_err(&path, e))
    }

    fn self_join(&self, spec: &ContainerSpec) -> Option<SelfJoin> {
        use crate::host::cgroup::Cgroup;
        let tasks = |dirs: Vec<PathBuf>| dirs.into_iter().map(|d| d.join("tasks")).collect();
        Some(match self.cgroup(spec).ok()? {
            Cgroup::V1(cg) => SelfJoin {
                clone_into: None,
                tasks: tasks(cg.dirs()),
            },
            Cgroup::V2(cg) => SelfJoin {
                clone_into: Some(cg.dir().to_path_buf()),
                tasks: Vec::new(),
            },
            Cgroup::Hybrid(cg) => SelfJoin {
                clone_into: Some(cg.unified().dir().to_path_buf()),
                tasks: tasks(cg.v1().dirs()),
            },
        })
    }

    fn oom_killed(&self, spec: &ContainerSpec) -> bool {
        use crate::host::cgroup::CgroupManager;
        self.cgroup(spec)
            .ok()
            .and_then(|cg| cg.stats().ok())
            .is_some_and(|s| s.oom_kills > 0)
    }

    fn cpu_usage_ns(&self, spec: &ContainerSpec) -> Option<u64> {
        use crate::host::cgroup::CgroupManager;
        Some(self.cgroup(spec).ok()?.stats().ok()?.cpu_usage_ns)
    }

    fn signal_all(&self, spec: &ContainerSpec, signal: i32) -> Result<bool, ContainerError> {
        use crate::host::cgroup::CgroupManager;
        let path = self.path(spec).unwrap_or_default();
        let cg = self.cgroup(spec)?;
        if signal == libc::SIGKILL {
            cg.kill_all().map_err(|e| cg_err(&path, e))?;
        } else {
            let sig = nix::sys::signal::Signal::try_from(signal).map_err(|e| cg_err(&path, e))?;
            cg.signal_all(sig).map_err(|e| cg_err(&path, e))?;
        }
        Ok(true)
    }

    fn remove(&self, spec: &ContainerSpec) -> Result<(), ContainerError> {
        use crate::host::cgroup::CgroupManager;
        let path = self.path(spec).unwrap_or_default();
        let cg = self.cgroup(spec)?;
        // Processes left behind (a `berth exec` still running when pid 1 ended) go first.
        if cg.pids().map(|p| !p.is_empty()).unwrap_or(false) {
            let _ = cg.kill_all();
        }
        cg.delete().map_err(|e| cg_err(&path, e))
    }
}
