//! cgroups: creates a container's cgroup, applies its limits, moves processes in, reads usage
//! back, freezes, kills and removes it, on cgroup v1, v2 and hybrid hosts.
//!
//! Owns: every read and write under the cgroup mount points. It touches only cgroups at the
//! relative path it is given (e.g. `berth/<container-id>`) under the roots found in
//! mountinfo; it never changes a cgroup it did not create and never removes a parent.
//! It does not decide limits (callers pass [`Resources`]) and does not spawn processes.
//!
//! # Use
//!
//! ```no_run
//! use std::path::Path;
//! use berth_agent::host::cgroup::{
//!     default_device_rules, CgroupJoin, CgroupLayout, CgroupManager, CgroupPath, Resources,
//! };
//! # fn main() -> Result<(), berth_agent::host::cgroup::CgroupError> {
//! let layout = CgroupLayout::detect(Path::new("/proc/self/mountinfo"))?;
//! let cgroup = layout.cgroup(&CgroupPath::new("berth/web-1")?);
//! cgroup.create()?;                                    // mkdir in every hierarchy
//! cgroup.apply(&Resources {
//!     cpu_millicores: Some(500),                       // --cpus 0.5
//!     memory_bytes: Some(64 << 20),                    // --memory 64Mi, no swap
//!     pids_max: Some(64),
//!     ..Resources::default()
//! })?;
//! cgroup.apply_devices(&default_device_rules())?;      // before the container runs
//! # let child_pid = 0;
//! cgroup.add_pid(child_pid)?;                          // before the child execs, or
//!                                                      // CgroupJoin::join_self in the child
//! let stats = cgroup.stats()?;                         // cpu ns, memory, pids, OOM kills
//! cgroup.kill_all()?;                                  // SIGKILL everything inside
//! cgroup.delete()?;                                    // rmdir, retried while busy
//! # let _ = stats; Ok(()) }
//! ```
//!
//! Lifecycle: `create → apply → apply_devices → add_pid → (stats | pids | freeze/thaw |
//! signal_all)* → kill_all → delete`. Every step except `apply_devices` on v2 (each call
//! attaches one more program) is idempotent: `create` of an existing cgroup, `delete` of a
//! missing one and `kill_all` of an empty one succeed. To report an OOM kill, the shim
//! checks that its init died of SIGKILL and `stats().oom_kills` is above zero (the counter
//! covers every process of the cgroup over its lifetime). Calls on one
//! cgroup from several threads are safe as far as the kernel is concerned, but `apply` and
//! `apply_devices` should come from one owner (the shim or runtime) to keep values coherent.
//!
//! Backends: [`v1::V1Cgroup`], [`v2::V2Cgroup`] and [`HybridCgroup`], behind the
//! [`CgroupManager`] trait and the [`Cgroup`] enum that dispatches to them. Root paths come
//! from [`CgroupLayout`], so tests run every backend on a fake tree in a tempdir.

mod detect;
mod devices;
pub mod devices_bpf;
mod error;
mod fsio;
pub mod v1;
pub mod v2;

#[cfg(test)]
mod conformance;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

pub use detect::{CgroupLayout, V1_CONTROLLERS, V1Mounts};
pub use devices::{DeviceAccess, DeviceKind, DeviceRule, default_device_rules};
pub use error::{CgroupError, ErrorKind};

/// The default CFS period when a CPU cap is set without one: 100 ms, as Docker uses.
pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;

/// The smallest CFS quota the kernel accepts, in microseconds.
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// A validated cgroup path relative to the hierarchy roots, e.g. `berth/<container-id>`.
///
/// Components are non-empty, made of `[A-Za-z0-9_.+-]`, and neither `.` nor `..`: a path can
/// never climb out of the parent it names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CgroupPath(PathBuf);

impl CgroupPath {
    /// Validates `path` (relative, `/`-separated).
    pub fn new(path: &str) -> Result<Self, CgroupError> {
        let invalid = |reason| CgroupError::InvalidPath {
            path: path.to_owned(),
            reason,
        };
        if path.is_empty() {
            return Err(invalid("it is empty"));
        }
        if path.starts_with('/') {
            return Err(invalid("it is absolute"));
        }
        for component in path.split('/') {
            if component.is_empty() {
                return Err(invalid("it has an empty component"));
            }
            if component == "." || component == ".." {
                return Err(invalid("it has a . or .. component"));
            }
            if !component
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
            {
                return Err(invalid(
                    "a component has a character outside [A-Za-z0-9_.+-]",
                ));
            }
        }
        Ok(Self(PathBuf::from(path)))
    }

    /// `self/child`, validated like [`CgroupPath::new`].
    pub fn join(&self, child: &str) -> Result<Self, CgroupError> {
        Self::new(&format!("{}/{child}", self.0.display()))
    }

    /// The relative path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

/// The limits of one cgroup. `None` leaves the kernel's current value alone, so `apply` only
/// writes what is set (apply a fresh cgroup once, or pass every field when changing limits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU time cap in millicores (1000 = one full core): quota = millicores × period / 1000.
    pub cpu_millicores: Option<u64>,
    /// CFS period for the cap, in microseconds (1 000..=1 000 000); [`DEFAULT_CPU_PERIOD_US`]
    /// when `None`.
    pub cpu_period_us: Option<u64>,
    /// Relative CPU weight in v1 `cpu.shares` units (2..=262 144, 1024 is the default); v2
    /// gets the equivalent `cpu.weight` (see [`shares_to_weight`]).
    pub cpu_shares: Option<u64>,
    /// Memory limit in bytes. Swap is disabled for the cgroup whenever this is set.
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids_max: Option<u64>,
    /// Soft memory limit in bytes: v1 `memory.soft_limit_in_bytes`, v2 `memory.low`.
    pub memory_reservation_bytes: Option<u64>,
    /// v1 `memory.swappiness` (0..=100; v2 has no per-cgroup swappiness: ignored there).
    pub memory_swappiness: Option<u64>,
    /// v1 `memory.kmem.tcp.limit_in_bytes` (v2: ignored, TCP memory is part of
    /// `memory.max` there).
    pub memory_kernel_tcp_bytes: Option<u64>,
    /// v1 `memory.oom_control` = 1: tasks wait instead of being OOM-killed (v2: ignored).
    pub disable_oom_killer: bool,
    /// `cpuset.cpus` (e.g. `0-3`); the cgroup is then also created in the v1 cpuset
    /// hierarchy (only then: it costs a few writes per container).
    pub cpuset_cpus: Option<String>,
    /// `cpuset.mems` (memory nodes, e.g. `0`).
    pub cpuset_mems: Option<String>,
}

impl Resources {
    /// Checks ranges the kernel would reject, with a message naming the field.
    pub fn validate(&self) -> Result<(), CgroupError> {
        let invalid = |reason: String| Err(CgroupError::InvalidResources { reason });
        if let Some(period) = self.cpu_period_us
            && !(1_000..=1_000_000).contains(&period)
        {
            return invalid(format!("cpu period {period}us is outside 1000..=1000000"));
        }
        if self.cpu_millicores == Some(0) {
            return invalid("cpu limit of 0 millicores; omit the limit for no cap".to_owned());
        }
        if let Some(shares) = self.cpu_shares
            && !(2..=262_144).contains(&shares)
        {
            return invalid(format!("cpu shares {shares} are outside 2..=262144"));
        }
        if self.memory_bytes == Some(0) {
            return invalid("memory limit of 0 bytes".to_owned());
        }
        if self.pids_max == Some(0) {
            return invalid("pids limit of 0".to_owned());
        }
        if let Some(s) = self.memory_swappiness
            && s > 100
        {
            return invalid(format!("memory swappiness {s} is outside 0..=100"));
        }
        for (name, list) in [("cpus", &self.cpuset_cpus), ("mems", &self.cpuset_mems)] {
            if let Some(list) = list
                && (list.is_empty()
                    || !list
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ',' || c == '-'))
            {
                return invalid(format!(
                    "cpuset {name} {list:?} is not a list of numbers and ranges like 0-3,5"
                ));
            }
        }
        Ok(())
    }

    /// The CFS `(quota, period)` in microseconds for the CPU cap, if one is set. The quota
    /// is raised to the kernel's minimum of 1 ms.
    pub fn cpu_quota(&self) -> Option<(u64, u64)> {
        let millicores = self.cpu_millicores?;
        let period = self.cpu_period_us.unwrap_or(DEFAULT_CPU_PERIOD_US);
        let quota = millicores.saturating_mul(period) / 1000;
        Some((quota.max(MIN_CPU_QUOTA_US), period))
    }
}

/// Converts fractional cores (`--cpus 0.5`) to millicores, rounding to the nearest one.
/// `None` for a value that is not finite and positive.
pub fn millicores_from_cores(cores: f64) -> Option<u64> {
    if !cores.is_finite() || cores <= 0.0 || cores > 1.0e9 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let millicores = (cores * 1000.0).round() as u64;
    Some(millicores.max(1))
}

/// Maps v1 `cpu.shares` (2..=262 144) to v2 `cpu.weight` (1..=10 000) linearly, the
/// conversion runc and crun use: 2 shares become weight 1, 1024 become 39, 262 144 become
/// 10 000.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9_999) / 262_142
}

/// Usage read back from a cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// CPU time consumed by all tasks, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Current memory usage in bytes (page cache included, as the kernel counts it).
    pub memory_usage_bytes: u64,
    /// Highest memory usage seen, in bytes; `None` where the kernel does not track it
    /// (v2 before Linux 5.19 has no `memory.peak`).
    pub memory_peak_bytes: Option<u64>,
    /// Number of tasks in the cgroup.
    pub pids_current: u64,
    /// How many processes the OOM killer killed in this cgroup.
    pub oom_kills: u64,
}

/// Operations on one cgroup, whatever the backend. See the module docs for the lifecycle.
pub trait CgroupManager {
    /// Creates the cgroup directory in every hierarchy (and its missing parents); enables the
    /// controllers on v2. An existing cgroup is fine.
    fn create(&self) -> Result<(), CgroupError>;

    /// Writes the limits that are set in `resources`, after [`Resources::validate`].
    fn apply(&self, resources: &Resources) -> Result<(), CgroupError>;

    /// Installs a device allow-list, rules in order (the first should deny all; the last
    /// matching rule decides). v1 writes `devices.deny`/`devices.allow`; v2 attaches an
    /// eBPF device program. Call once, before the container runs: on v2 every call attaches
    /// one more program.
    fn apply_devices(&self, rules: &[DeviceRule]) -> Result<(), CgroupError>;

    /// Moves process `pid` (all its threads) into the cgroup.
    fn add_pid(&self, pid: u32) -> Result<(), CgroupError>;

    /// The processes in the cgroup.
    fn pids(&self) -> Result<Vec<u32>, CgroupError>;

    /// Usage counters.
    fn stats(&self) -> Result<Stats, CgroupError>;

    /// Stops every task in the cgroup and waits (bounded) until the kernel says frozen.
    fn freeze(&self) -> Result<(), CgroupError>;

    /// Resumes a frozen cgroup.
    fn thaw(&self) -> Result<(), CgroupError>;

    /// Sends `signal` to every process in the cgroup (those already gone are skipped).
    fn signal_all(&self, signal: Signal) -> Result<(), CgroupError>;

    /// SIGKILLs every process in the cgroup, race-free against forks: v2 `cgroup.kill` when
    /// the kernel has it, else freeze, signal each pid, thaw. Returns once the signals are
    /// sent; wait for the processes (or poll [`CgroupManager::pids`]) before `delete`.
    fn kill_all(&self) -> Result<(), CgroupError>;

    /// Removes the cgroup directory in every hierarchy. Busy cgroups are retried for about a
    /// second; a missing cgroup is success. Parents are left alone.
    fn delete(&self) -> Result<(), CgroupError>;
}

/// A cgroup on a hybrid host: v1 for limits and stats, plus a leaf in the controller-less
/// v2 tree that tracks the same processes and offers `cgroup.kill`.
#[derive(Debug, Clone)]
pub struct HybridCgroup {
    v1: v1::V1Cgroup,
    unified: v2::V2Cgroup,
}

impl HybridCgroup {
    /// The v1 part.
    pub fn v1(&self) -> &v1::V1Cgroup {
        &self.v1
    }

    /// The v2 leaf.
    pub fn unified(&self) -> &v2::V2Cgroup {
        &self.unified
    }
}

impl CgroupManager for HybridCgroup {
    fn create(&self) -> Result<(), CgroupError> {
        self.v1.create()?;
        // The unified tree holds no controllers: a plain directory, nothing to enable.
        fsio::create_dir(self.unified.dir())
    }

    fn apply(&self, resources: &Resources) -> Result<(), CgroupError> {
        self.v1.apply(resources)
    }

    fn apply_devices(&self, rules: &[DeviceRule]) -> Result<(), CgroupError> {
        self.v1.apply_devices(rules)
    }

    fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        self.v1.add_pid(pid)?;
        self.unified.add_pid(pid)
    }

    fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        self.v1.pids()
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        self.v1.stats()
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        self.v1.freeze()
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        self.v1.thaw()
    }

    fn signal_all(&self, signal: Signal) -> Result<(), CgroupError> {
        self.v1.signal_all(signal)
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        if self.unified.has_kill_file() {
            // Kills what the leaf tracks; the v1 pass catches anything moved in only there.
            self.unified.kill_all()?;
        }
        self.v1.kill_all()
    }

    fn delete(&self) -> Result<(), CgroupError> {
        // Busy in v1 means live processes, which keep the leaf busy too: don't wait twice.
        self.v1.delete()?;
        fsio::remove_dir(self.unified.dir())
    }
}

/// A cgroup of whichever backend the host has: the type the runtime holds.
#[derive(Debug, Clone)]
pub enum Cgroup {
    V1(v1::V1Cgroup),
    V2(v2::V2Cgroup),
    Hybrid(HybridCgroup),
}

impl CgroupLayout {
    /// The cgroup at `path` under this layout's roots. Nothing is created until
    /// [`CgroupManager::create`].
    pub fn cgroup(&self, path: &CgroupPath) -> Cgroup {
        match self {
            Self::V1(mounts) => Cgroup::V1(v1::V1Cgroup::new(mounts.clone(), path.clone())),
            Self::V2 { root } => Cgroup::V2(v2::V2Cgroup::new(root.clone(), path.clone())),
            Self::Hybrid { v1, unified } => Cgroup::Hybrid(HybridCgroup {
                v1: v1::V1Cgroup::new(v1.clone(), path.clone()),
                unified: v2::V2Cgroup::new(unified.clone(), path.clone()),
            }),
        }
    }
}

impl Cgroup {
    fn manager(&self) -> &dyn CgroupManager {
        match self {
            Self::V1(cgroup) => cgroup,
            Self::V2(cgroup) => cgroup,
            Self::Hybrid(cgroup) => cgroup,
        }
    }

    /// The path relative to the hierarchy roots.
    pub fn path(&self) -> &CgroupPath {
        match self {
            Self::V1(cgroup) => cgroup.path(),
            Self::V2(cgroup) => cgroup.path(),
            Self::Hybrid(cgroup) => cgroup.v1.path(),
        }
    }

    /// Every directory this cgroup occupies (one per v1 hierarchy, plus the v2 leaf).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Self::V1(cgroup) => cgroup.dirs(),
            Self::V2(cgroup) => vec![cgroup.dir().to_path_buf()],
            Self::Hybrid(cgroup) => {
                let mut dirs = cgroup.v1.dirs();
                dirs.push(cgroup.unified.dir().to_path_buf());
                dirs
            }
        }
    }
}

impl CgroupManager for Cgroup {
    fn create(&self) -> Result<(), CgroupError> {
        self.manager().create()
    }
    fn apply(&self, resources: &Resources) -> Result<(), CgroupError> {
        self.manager().apply(resources)
    }
    fn apply_devices(&self, rules: &[DeviceRule]) -> Result<(), CgroupError> {
        self.manager().apply_devices(rules)
    }
    fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        self.manager().add_pid(pid)
    }
    fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        self.manager().pids()
    }
    fn stats(&self) -> Result<Stats, CgroupError> {
        self.manager().stats()
    }
    fn freeze(&self) -> Result<(), CgroupError> {
        self.manager().freeze()
    }
    fn thaw(&self) -> Result<(), CgroupError> {
        self.manager().thaw()
    }
    fn signal_all(&self, signal: Signal) -> Result<(), CgroupError> {
        self.manager().signal_all(signal)
    }
    fn kill_all(&self) -> Result<(), CgroupError> {
        self.manager().kill_all()
    }
    fn delete(&self) -> Result<(), CgroupError> {
        self.manager().delete()
    }
}

/// The `cgroup.procs` files of one cgroup, opened in advance, so a freshly forked child can
/// move itself in without allocating: what a `pre_exec` hook or a cloned container init needs
/// (the child joins before it execs, so no process of the container ever runs outside).
///
/// Open it in the parent after [`CgroupManager::create`]; the files are close-on-exec.
#[derive(Debug)]
pub struct CgroupJoin {
    files: Vec<File>,
}

impl CgroupJoin {
    /// Opens every `cgroup.procs` of `cgroup` for writing.
    pub fn open(cgroup: &Cgroup) -> Result<Self, CgroupError> {
        let files = cgroup
            .dirs()
            .into_iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|source| CgroupError::Write {
                        path,
                        value: "0".to_owned(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { files })
    }

    /// Moves the calling process into the cgroup (writes `0` to each file). It makes only
    /// `write(2)` calls and does not allocate, so it is safe between fork and exec.
    pub fn join_self(&self) -> io::Result<()> {
        for mut file in &self.files {
            file.write_all(b"0")?;
        }
        Ok(())
    }
}

/// Sends `signal` to each pid; a pid that already exited is skipped. Shared by the backends.
fn signal_pids(pids: &[u32], signal: Signal, procs_file: &Path) -> Result<(), CgroupError> {
    for &pid in pids {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(source) => {
                return Err(CgroupError::Signal {
                    pid,
                    path: procs_file.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_path_rejects_escapes_and_odd_characters() {
        for bad in [
            "", "/abs", "a//b", "a/../b", "..", ".", "a b", "a/b\n", "x/y*",
        ] {
            let err = CgroupPath::new(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        let ok = CgroupPath::new("berth/web-1.v2+x_y").unwrap();
        assert_eq!(ok.as_path(), Path::new("berth/web-1.v2+x_y"));
        assert!(ok.join("..").is_err());
        assert_eq!(
            ok.join("c").unwrap().as_path(),
            Path::new("berth/web-1.v2+x_y/c")
        );
    }

    proptest::proptest! {
        #[test]
        fn an_accepted_cgroup_path_stays_under_its_root(path in "[a-z./+_-]{1,12}(/[a-z./+_-]{0,12}){0,3}") {
            if let Ok(valid) = CgroupPath::new(&path) {
                let root = Path::new("/sys/fs/cgroup/memory");
                let joined = root.join(valid.as_path());
                proptest::prop_assert!(joined.starts_with(root));
                proptest::prop_assert!(joined != root);
                proptest::prop_assert!(valid
                    .as_path()
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))));
            }
        }
    }

    #[test]
    fn cpu_quota_comes_from_millicores_and_period() {
        let half = Resources {
            cpu_millicores: Some(500),
            ..Resources::default()
        };
        assert_eq!(half.cpu_quota(), Some((50_000, 100_000)));
        let two = Resources {
            cpu_millicores: Some(2000),
            cpu_period_us: Some(10_000),
            ..Resources::default()
        };
        assert_eq!(two.cpu_quota(), Some((20_000, 10_000)));
        let tiny = Resources {
            cpu_millicores: Some(1),
            ..Resources::default()
        };
        assert_eq!(tiny.cpu_quota(), Some((1_000, 100_000)), "kernel minimum");
        assert_eq!(Resources::default().cpu_quota(), None);
    }

    #[test]
    fn fractional_cores_round_to_millicores() {
        assert_eq!(millicores_from_cores(0.5), Some(500));
        assert_eq!(millicores_from_cores(1.25), Some(1250));
        assert_eq!(millicores_from_cores(0.0001), Some(1));
        assert_eq!(millicores_from_cores(0.0), None);
        assert_eq!(millicores_from_cores(-1.0), None);
        assert_eq!(millicores_from_cores(f64::NAN), None);
        assert_eq!(millicores_from_cores(f64::INFINITY), None);
    }

    #[test]
    fn shares_map_to_weight_linearly() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(0), 1, "clamped");
    }

    #[test]
    fn validate_names_the_bad_field() {
        let cases = [
            (
                Resources {
                    cpu_period_us: Some(10),
                    ..Resources::default()
                },
                "cpu period",
            ),
            (
                Resources {
                    cpu_millicores: Some(0),
                    ..Resources::default()
                },
                "millicores",
            ),
            (
                Resources {
                    cpu_shares: Some(1),
                    ..Resources::default()
                },
                "cpu shares",
            ),
            (
                Resources {
                    memory_bytes: Some(0),
                    ..Resources::default()
                },
                "memory",
            ),
            (
                Resources {
                    pids_max: Some(0),
                    ..Resources::default()
                },
                "pids",
            ),
        ];
        for (resources, field) in cases {
            let err = resources.validate().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(err.to_string().contains(field), "{err} should name {field}");
        }
        assert!(Resources::default().validate().is_ok());
    }
}
