//! The cgroup v2 backend: one directory `<root>/<cgroup path>` in the unified hierarchy.
//!
//! Files used: `cgroup.subtree_control` of each ancestor (to enable cpu, memory, pids);
//! `cpu.max`, `cpu.weight`; `memory.max`, `memory.swap.max` (0: no swap), `memory.low`
//! (reservation); `pids.max`; `cpuset.cpus`/`cpuset.mems` (cpuset enabled only for a cgroup
//! that sets them);
//! `cgroup.procs`; `cgroup.freeze` and `cgroup.events` (`frozen`); `cgroup.kill`
//! (Linux ≥ 5.14); and for stats `cpu.stat` (`usage_usec`), `memory.current`, `memory.peak`
//! (Linux ≥ 5.19), `memory.events` (`oom_kill`), `pids.current`.
//!
//! Device rules become an eBPF program attached to the cgroup ([`devices_bpf`]).

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::devices::DeviceRule;
use super::devices_bpf;
use super::error::CgroupError;
use super::fsio;
use super::{CgroupManager, CgroupPath, Resources, Stats, shares_to_weight, signal_pids};

/// The controllers a container's cgroup needs enabled by its ancestors.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// A cgroup in a v2 (unified) hierarchy.
#[derive(Debug, Clone)]
pub struct V2Cgroup {
    root: PathBuf,
    path: CgroupPath,
    dir: PathBuf,
}

impl V2Cgroup {
    /// The cgroup at `root/path`.
    pub fn new(root: PathBuf, path: CgroupPath) -> Self {
        let dir = root.join(path.as_path());
        Self { root, path, dir }
    }

    /// The path relative to the root.
    pub fn path(&self) -> &CgroupPath {
        &self.path
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the kernel offers `cgroup.kill` here (Linux ≥ 5.14).
    pub fn has_kill_file(&self) -> bool {
        self.dir.join("cgroup.kill").exists()
    }

    /// Enables the needed controllers in `cgroup.subtree_control` of the root and of every
    /// ancestor of the leaf, as far as each one offers them in `cgroup.controllers`.
    fn enable_controllers(&self) -> Result<(), CgroupError> {
        self.enable(CONTROLLERS)
    }

    /// [`Self::enable_controllers`] for the given controllers.
    fn enable(&self, controllers: &[&str]) -> Result<(), CgroupError> {
        let mut dir = self.root.clone();
        let mut ancestors = vec![dir.clone()];
        let components: Vec<_> = self.path.as_path().components().collect();
        for component in components.iter().take(components.len().saturating_sub(1)) {
            dir.push(component);
            ancestors.push(dir.clone());
        }
        for ancestor in ancestors {
            let available_file = ancestor.join("cgroup.controllers");
            if !available_file.exists() {
                continue;
            }
            let available = fsio::read(&available_file)?;
            let wanted: Vec<String> = controllers
                .iter()
                .filter(|c| available.split_whitespace().any(|a| a == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if !wanted.is_empty() {
                fsio::write(&ancestor.join("cgroup.subtree_control"), &wanted.join(" "))?;
            }
        }
        Ok(())
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let (value, state) = if frozen {
            ("1", "frozen")
        } else {
            ("0", "thawed")
        };
        fsio::write(&self.dir.join("cgroup.freeze"), value)?;
        let events = self.dir.join("cgroup.events");
        let reached = fsio::poll(100, || {
            Ok(fsio::keyed_value(&fsio::read(&events)?, "frozen") == Some(value))
        })?;
        if reached {
            Ok(())
        } else {
            Err(CgroupError::FreezeTimeout {
                path: events,
                state,
            })
        }
    }
}

impl CgroupManager for V2Cgroup {
    fn create(&self) -> Result<(), CgroupError> {
        // Parents first, so that enabling controllers never races the leaf's creation.
        if let Some(parent) = self.dir.parent() {
            fsio::create_dir(parent)?;
        }
        self.enable_controllers()?;
        fsio::create_dir(&self.dir)
    }

    fn apply(&self, resources: &Resources) -> Result<(), CgroupError> {
        resources.validate()?;
        if let Some((quota, period)) = resources.cpu_quota() {
            fsio::write(&self.dir.join("cpu.max"), &format!("{quota} {period}"))?;
        }
        if let Some(shares) = resources.cpu_shares {
            let weight = shares_to_weight(shares).to_string();
            fsio::write(&self.dir.join("cpu.weight"), &weight)?;
        }
        if let Some(limit) = resources.memory_bytes {
            fsio::write(&self.dir.join("memory.max"), &limit.to_string())?;
            let swap = self.dir.join("memory.swap.max");
            // Absent when the kernel has no swap support (CONFIG_SWAP=n): nothing to cap.
            if swap.exists() {
                fsio::write(&swap, "0")?;
            }
        }
        if let Some(max) = resources.pids_max {
            fsio::write(&self.dir.join("pids.max"), &max.to_string())?;
        }
        if let Some(soft) = resources.memory_reservation_bytes {
            fsio::write(&self.dir.join("memory.low"), &soft.to_string())?;
        }
        if resources.cpuset_cpus.is_some() || resources.cpuset_mems.is_some() {
            // Only containers that ask for it get the cpuset controller.
            self.enable(&["cpuset"])?;
        }
        for (file, list) in [
            ("cpuset.cpus", &resources.cpuset_cpus),
            ("cpuset.mems", &resources.cpuset_mems),
        ] {
            if let Some(list) = list {
                if !self.dir.join(file).exists() {
                    return Err(CgroupError::ControllerMissing {
                        controller: "cpuset",
                    });
                }
                fsio::write(&self.dir.join(file), list)?;
            }
        }
        Ok(())
    }

    fn apply_devices(&self, rules: &[DeviceRule]) -> Result<(), CgroupError> {
        devices_bpf::attach(&self.dir, rules)
    }

    fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        fsio::write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        fsio::read_pids(&self.dir.join("cgroup.procs"))
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let peak = self.dir.join("memory.peak");
        Ok(Stats {
            cpu_usage_ns: fsio::read_keyed(&self.dir.join("cpu.stat"), "usage_usec")?
                .saturating_mul(1000),
            memory_usage_bytes: fsio::read_u64(&self.dir.join("memory.current"))?,
            memory_peak_bytes: if peak.exists() {
                Some(fsio::read_u64(&peak)?)
            } else {
                None
            },
            pids_current: fsio::read_u64(&self.dir.join("pids.current"))?,
            oom_kills: fsio::read_keyed(&self.dir.join("memory.events"), "oom_kill")?,
        })
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    fn signal_all(&self, signal: Signal) -> Result<(), CgroupError> {
        let procs = self.dir.join("cgroup.procs");
        signal_pids(&fsio::read_pids(&procs)?, signal, &procs)
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        if !self.dir.is_dir() {
            return Ok(());
        }
        if self.has_kill_file() {
            return match fsio::write(&self.dir.join("cgroup.kill"), "1") {
                // Its last process ended and its owner removed it meanwhile (a shim racing
                // `berth stop`): nothing is left to kill.
                Err(_) if !self.dir.is_dir() => Ok(()),
                other => other,
            };
        }
        // Before 5.14: freeze so nothing forks between listing and signalling; signal even
        // if freezing timed out.
        let freezable = self.dir.join("cgroup.freeze").exists();
        let froze = if freezable { self.freeze() } else { Ok(()) };
        let procs = self.dir.join("cgroup.procs");
        let killed =
            fsio::read_pids(&procs).and_then(|pids| signal_pids(&pids, Signal::SIGKILL, &procs));
        let thawed = if freezable { self.thaw() } else { Ok(()) };
        froze.and(killed).and(thawed)
    }

    fn delete(&self) -> Result<(), CgroupError> {
        fsio::remove_dir(&self.dir)
    }
}
