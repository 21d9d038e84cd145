//! The seam between the runtime and the cgroup backends (`host::cgroup`, written
//! separately): the runtime asks for a container's cgroup to be created with its
//! [`Resources`](crate::runtime::spec::Resources), for the init to be moved into it before
//! its cgroup namespace is made, whether it saw an OOM kill, to signal every process in it,
//! and to remove it.

use super::ContainerError;
use crate::runtime::spec::ContainerSpec;

/// What the runtime needs from cgroups. Every method is idempotent.
pub trait Cgroups {
    /// The container's cgroup path relative to each hierarchy's root, if it gets one.
    fn path(&self, spec: &ContainerSpec) -> Option<String>;
    /// Creates the container's cgroup with its limits.
    fn create(&self, spec: &ContainerSpec) -> Result<(), ContainerError>;
    /// Moves `pid` into the container's cgroup.
    fn add(&self, spec: &ContainerSpec, pid: i32) -> Result<(), ContainerError>;
    /// Whether the kernel OOM-killed a process of the container.
    fn oom_killed(&self, spec: &ContainerSpec) -> bool;
    /// Sends `signal` to every process in the container's cgroup; false if unsupported.
    fn signal_all(&self, spec: &ContainerSpec, signal: i32) -> Result<bool, ContainerError>;
    /// Removes the container's cgroup (after its processes are gone).
    fn remove(&self, spec: &ContainerSpec) -> Result<(), ContainerError>;
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
