//! The cgroup v1 backend: one directory per mounted hierarchy (cpu, cpuacct, memory, pids,
//! devices, freezer), each at `<mount point>/<cgroup path>`.
//!
//! Files used: `cpu.cfs_period_us`, `cpu.cfs_quota_us`, `cpu.shares`;
//! `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes` (equal, so no swap);
//! `memory.soft_limit_in_bytes`, `memory.swappiness`, `memory.kmem.tcp.limit_in_bytes`,
//! `memory.oom_control` (OCI extras);
//! `cpuset.cpus`/`cpuset.mems` (only a cgroup that sets them is made in the cpuset
//! hierarchy); `pids.max`; `devices.deny`/`devices.allow`; `freezer.state`; `cgroup.procs`; and for stats
//! `cpuacct.usage`, `memory.usage_in_bytes`, `memory.max_usage_in_bytes`,
//! `memory.oom_control` (`oom_kill`, Linux ≥ 4.13), `pids.current`.

use std::io;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::devices::DeviceRule;
use super::error::CgroupError;
use super::fsio;
use super::{CgroupManager, CgroupPath, Resources, Stats, V1Mounts, signal_pids};

/// The v1 controllers a container's cgroup is created in, when mounted.
const USED_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids", "devices", "freezer"];

/// A cgroup on a v1 host.
#[derive(Debug, Clone)]
pub struct V1Cgroup {
    mounts: V1Mounts,
    path: CgroupPath,
}

impl V1Cgroup {
    /// The cgroup at `path` in each of `mounts`' hierarchies.
    pub fn new(mounts: V1Mounts, path: CgroupPath) -> Self {
        Self { mounts, path }
    }

    /// The path relative to the hierarchy roots.
    pub fn path(&self) -> &CgroupPath {
        &self.path
    }

    /// The directory of this cgroup in `controller`'s hierarchy, if that is mounted.
    pub fn controller_dir(&self, controller: &str) -> Option<PathBuf> {
        self.mounts
            .mount_point(controller)
            .map(|mount| mount.join(self.path.as_path()))
    }

    fn require(&self, controller: &'static str) -> Result<PathBuf, CgroupError> {
        self.controller_dir(controller)
            .ok_or(CgroupError::ControllerMissing { controller })
    }

    /// The distinct directories of this cgroup (co-mounted controllers share one).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = USED_CONTROLLERS
            .iter()
            .filter_map(|c| self.controller_dir(c))
            .collect();
        // Only cgroups with cpuset limits have a directory there (`apply_cpuset`).
        dirs.extend(self.controller_dir("cpuset").filter(|d| d.is_dir()));
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// The `cgroup.procs` that lists the members: the pids hierarchy's when mounted, since
    /// every process is added to every hierarchy.
    fn procs_file(&self) -> Result<PathBuf, CgroupError> {
        ["pids", "memory", "cpu", "freezer"]
            .iter()
            .find_map(|c| self.controller_dir(c))
            .map(|dir| dir.join("cgroup.procs"))
            .ok_or(CgroupError::ControllerMissing { controller: "pids" })
    }

    fn apply_memory(&self, limit: u64) -> Result<(), CgroupError> {
        let dir = self.require("memory")?;
        let limit_file = dir.join("memory.limit_in_bytes");
        let memsw_file = dir.join("memory.memsw.limit_in_bytes");
        let value = limit.to_string();
        if !memsw_file.exists() {
            // No swap accounting (swapaccount=0): swap cannot be capped per cgroup, so ask
            // the kernel not to swap this cgroup's pages.
            fsio::write(&limit_file, &value)?;
            let swappiness = dir.join("memory.swappiness");
            if swappiness.exists() {
                fsio::write(&swappiness, "0")?;
            }
            return Ok(());
        }
        // The kernel keeps limit <= memsw limit at every step: when lowering, the memory
        // limit goes first; when raising, memsw must be raised first (EINVAL otherwise).
        match fsio::write(&limit_file, &value) {
            Ok(()) => fsio::write(&memsw_file, &value),
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                fsio::write(&memsw_file, &value)?;
                fsio::write(&limit_file, &value)
            }
            Err(err) => Err(err),
        }
    }

    /// Creates the cgroup in the cpuset hierarchy and writes its lists. A new v1 cpuset
    /// starts with empty `cpus`/`mems` (no task may join it then), so every ancestor this
    /// creates first gets its parent's lists.
    fn apply_cpuset(&self, cpus: Option<&str>, mems: Option<&str>) -> Result<(), CgroupError> {
        let mount = self
            .mounts
            .mount_point("cpuset")
            .ok_or(CgroupError::ControllerMissing {
                controller: "cpuset",
            })?;
        let mut dir = mount.to_path_buf();
        for component in self.path.as_path().components() {
            let parent = dir.clone();
            dir.push(component);
            fsio::create_dir(&dir)?;
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if fsio::read(&dir.join(file))?.trim().is_empty() {
                    fsio::write(&dir.join(file), fsio::read(&parent.join(file))?.trim())?;
                }
            }
        }
        if let Some(cpus) = cpus {
            fsio::write(&dir.join("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = mems {
            fsio::write(&dir.join("cpuset.mems"), mems)?;
        }
        Ok(())
    }

    fn freezer_state(&self, state: &'static str) -> Result<(), CgroupError> {
        let file = self.require("freezer")?.join("freezer.state");
        fsio::write(&file, state)?;
        let reached = fsio::poll(100, || Ok(fsio::read(&file)?.trim() == state))?;
        if reached {
            Ok(())
        } else {
            Err(CgroupError::FreezeTimeout { path: file, state })
        }
    }
}

impl CgroupManager for V1Cgroup {
    fn create(&self) -> Result<(), CgroupError> {
        let dirs = self.dirs();
        if dirs.is_empty() {
            return Err(CgroupError::ControllerMissing {
                controller: "memory",
            });
        }
        dirs.iter().try_for_each(|dir| fsio::create_dir(dir))
    }

    fn apply(&self, resources: &Resources) -> Result<(), CgroupError> {
        resources.validate()?;
        if let Some((quota, period)) = resources.cpu_quota() {
            let dir = self.require("cpu")?;
            fsio::write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
            fsio::write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if let Some(shares) = resources.cpu_shares {
            let dir = self.require("cpu")?;
            fsio::write(&dir.join("cpu.shares"), &shares.to_string())?;
        }
        if let Some(limit) = resources.memory_bytes {
            self.apply_memory(limit)?;
        }
        if let Some(max) = resources.pids_max {
            let dir = self.require("pids")?;
            fsio::write(&dir.join("pids.max"), &max.to_string())?;
        }
        if let Some(soft) = resources.memory_reservation_bytes {
            let dir = self.require("memory")?;
            fsio::write(&dir.join("memory.soft_limit_in_bytes"), &soft.to_string())?;
        }
        if let Some(swappiness) = resources.memory_swappiness {
            let dir = self.require("memory")?;
            fsio::write(&dir.join("memory.swappiness"), &swappiness.to_string())?;
        }
        if let Some(tcp) = resources.memory_kernel_tcp_bytes {
            let dir = self.require("memory")?;
            fsio::write(
                &dir.join("memory.kmem.tcp.limit_in_bytes"),
                &tcp.to_string(),
            )?;
        }
        if resources.disable_oom_killer {
            let dir = self.require("memory")?;
            fsio::write(&dir.join("memory.oom_control"), "1")?;
        }
        if resources.cpuset_cpus.is_some() || resources.cpuset_mems.is_some() {
            self.apply_cpuset(
                resources.cpuset_cpus.as_deref(),
                resources.cpuset_mems.as_deref(),
            )?;
        }
        Ok(())
    }

    fn apply_devices(&self, rules: &[DeviceRule]) -> Result<(), CgroupError> {
        let dir = self.require("devices")?;
        for rule in rules {
            fsio::write(&dir.join(rule.v1_file()), &rule.v1_line())?;
        }
        Ok(())
    }

    fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        let value = pid.to_string();
        self.dirs()
            .iter()
            .try_for_each(|dir| fsio::write(&dir.join("cgroup.procs"), &value))
    }

    fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        fsio::read_pids(&self.procs_file()?)
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let cpuacct = self.require("cpuacct")?;
        let memory = self.require("memory")?;
        let pids = self.require("pids")?;
        let peak_file = memory.join("memory.max_usage_in_bytes");
        Ok(Stats {
            cpu_usage_ns: fsio::read_u64(&cpuacct.join("cpuacct.usage"))?,
            memory_usage_bytes: fsio::read_u64(&memory.join("memory.usage_in_bytes"))?,
            memory_peak_bytes: Some(fsio::read_u64(&peak_file)?),
            pids_current: fsio::read_u64(&pids.join("pids.current"))?,
            oom_kills: fsio::read_keyed(&memory.join("memory.oom_control"), "oom_kill")?,
        })
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        self.freezer_state("FROZEN")
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        self.freezer_state("THAWED")
    }

    fn signal_all(&self, signal: Signal) -> Result<(), CgroupError> {
        let procs = self.procs_file()?;
        signal_pids(&fsio::read_pids(&procs)?, signal, &procs)
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        let procs = self.procs_file()?;
        if !dir_exists(procs.parent()) {
            return Ok(());
        }
        let has_freezer = self.controller_dir("freezer").is_some();
        // Frozen tasks cannot fork between the listing and the signal; SIGKILL is delivered
        // when they thaw. Signal even if freezing timed out: a partial kill beats none.
        let froze = if has_freezer { self.freeze() } else { Ok(()) };
        let killed =
            fsio::read_pids(&procs).and_then(|pids| signal_pids(&pids, Signal::SIGKILL, &procs));
        let thawed = if has_freezer { self.thaw() } else { Ok(()) };
        match froze.and(killed).and(thawed) {
            // The cgroup vanished meanwhile (its last process ended and its owner removed
            // it, e.g. a shim racing `berth stop`): nothing is left to kill.
            Err(_)
                if !dir_exists(procs.parent())
                    || (has_freezer && !dir_exists(self.controller_dir("freezer").as_deref())) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    fn delete(&self) -> Result<(), CgroupError> {
        // Try every hierarchy even if one fails, and report the first failure. A busy
        // hierarchy means live processes, which keep the others busy too: stop there rather
        // than wait out the retries once per hierarchy (a later delete finishes the job).
        let mut first_err = None;
        for dir in self.dirs() {
            match fsio::remove_dir(&dir) {
                Ok(()) => {}
                Err(err @ CgroupError::Busy { .. }) => return Err(err),
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn dir_exists(dir: Option<&Path>) -> bool {
    dir.is_some_and(|d| match d.metadata() {
        Ok(meta) => meta.is_dir(),
        Err(err) => err.kind() != io::ErrorKind::NotFound,
    })
}
