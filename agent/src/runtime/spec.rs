//! What a container is asked to be: rootfs, process, mounts, namespaces, limits and the
//! security profile. `berth run` flags and OCI `config.json` both become a [`ContainerSpec`];
//! [`ContainerSpec::validate`] refuses what could escape the rootfs before anything is made.
//! Parsers for the CLI's value syntaxes (`-v`, `--memory`, `--cpus`, `--ulimit`) live here
//! too, so they are tested without a host.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runtime::RuntimeError;
use crate::runtime::caps::CapSet;

/// The default `PATH` when the caller gives none (Docker's).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Files masked with `/dev/null` or, for directories, an empty read-only tmpfs
/// (moby `defaultLinuxMaskedPaths`, SECURITY.md §1.3). `thermal_throttle` dirs are added at
/// setup time, for each cpu that has one.
pub const DEFAULT_MASKED: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// IPC-namespaced sysctls a container may set.
const IPC_SYSCTLS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Paths remounted read-only (SECURITY.md §1.4).
pub const DEFAULT_READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where the root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum Rootfs {
    /// A directory used as it is (changes land in it).
    Dir {
        /// The directory.
        path: PathBuf,
    },
    /// An overlay of read-only lower directories (first is the top) with a private upper
    /// and work dir in the container's state dir.
    Overlay {
        /// Lower directories, top first.
        lowers: Vec<PathBuf>,
    },
}

impl Rootfs {
    /// The directory people recognise the rootfs by (`berth ps` IMAGE column).
    pub fn display(&self) -> String {
        match self {
            Rootfs::Dir { path } => path.display().to_string(),
            Rootfs::Overlay { lowers } => lowers
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        }
    }
}

/// A device node created in the container (OCI `linux.devices`) and allowed by its device
/// cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Absolute path inside the container.
    pub path: String,
    /// `c` (or `u`), `b` or `p`.
    pub kind: char,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Permission bits (default 0666).
    pub mode: Option<u32>,
    /// Owner (default 0).
    pub uid: Option<u32>,
    /// Group (default 0).
    pub gid: Option<u32>,
}

/// A bind mount from the host (a volume) or a filesystem mount (OCI `mounts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the container; resolved inside the rootfs, never through it.
    pub destination: String,
    /// `bind` for host paths, or a filesystem type (`tmpfs`, `proc`, ...).
    pub kind: String,
    /// The host path for binds, the device/source name otherwise.
    pub source: String,
    /// Mount options (`ro`, `nosuid`, `mode=755`, ...), as in OCI and `mount(8)`.
    pub options: Vec<String>,
}

impl Mount {
    /// Whether the mount is read-only.
    pub fn readonly(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// Whether this is a bind mount.
    pub fn is_bind(&self) -> bool {
        self.kind == "bind" || self.options.iter().any(|o| o == "bind" || o == "rbind")
    }
}

/// One resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// The `RLIMIT_*` number.
    pub resource: u32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Names of the resource limits, index = `RLIMIT_*` number on Linux.
pub const RLIMIT_NAMES: [&str; 16] = [
    "cpu",
    "fsize",
    "data",
    "stack",
    "core",
    "rss",
    "nproc",
    "nofile",
    "memlock",
    "as",
    "locks",
    "sigpending",
    "msgqueue",
    "nice",
    "rtprio",
    "rttime",
];

/// The network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A new, empty network namespace with only loopback (up).
    #[default]
    Private,
    /// The host's network namespace.
    Host,
}

/// cgroup limits, handed to the cgroup backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes (no swap beyond it).
    pub memory: Option<u64>,
    /// CPU quota in microseconds per `cpu_period`.
    pub cpu_quota: Option<u64>,
    /// CPU period in microseconds (100000 by default).
    pub cpu_period: Option<u64>,
    /// Relative CPU weight (v1 shares).
    pub cpu_shares: Option<u64>,
    /// Maximum number of tasks.
    pub pids: Option<i64>,
    /// Soft memory limit in bytes (OCI `memory.reservation`).
    #[serde(default)]
    pub memory_reservation: Option<u64>,
    /// v1 memory swappiness 0..=100 (OCI `memory.swappiness`).
    #[serde(default)]
    pub memory_swappiness: Option<u64>,
    /// Kernel TCP buffer limit in bytes, v1 only (OCI `memory.kernelTCP`).
    #[serde(default)]
    pub memory_kernel_tcp: Option<u64>,
    /// No OOM killer for the cgroup (OCI `memory.disableOOMKiller`).
    #[serde(default)]
    pub disable_oom_killer: bool,
    /// CPUs the container may run on, e.g. `0-3` (OCI `cpu.cpus`).
    #[serde(default)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes, e.g. `0` (OCI `cpu.mems`).
    #[serde(default)]
    pub cpuset_mems: Option<String>,
}

impl Resources {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory.is_some()
            || self.cpu_quota.is_some()
            || self.cpu_shares.is_some()
            || self.pids.is_some()
            || self.memory_reservation.is_some()
            || self.memory_swappiness.is_some()
            || self.memory_kernel_tcp.is_some()
            || self.disable_oom_killer
            || self.cpuset_cpus.is_some()
            || self.cpuset_mems.is_some()
    }
}

/// Which namespaces the container gets. `path` entries join an existing namespace (OCI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    /// New mount namespace (always: the runtime refuses to run without one).
    pub mount: bool,
    /// New pid namespace: the program is pid 1.
    pub pid: bool,
    /// New UTS namespace (own hostname).
    pub uts: bool,
    /// New IPC namespace.
    pub ipc: bool,
    /// New network namespace (see [`Network`]).
    pub net: bool,
    /// New cgroup namespace (after joining the container's cgroup).
    pub cgroup: bool,
    /// Existing namespaces to join instead, as (type, path), e.g. ("net", "/var/run/netns/x").
    pub join: Vec<(String, PathBuf)>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            mount: true,
            pid: true,
            uts: true,
            ipc: true,
            net: true,
            cgroup: true,
            join: Vec::new(),
        }
    }
}

/// Everything the runtime needs to make one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The container id (32 hex digits for `berth run`, any valid name for OCI).
    pub id: String,
    /// The name given with `--name`, if any.
    pub name: Option<String>,
    /// The root filesystem.
    pub rootfs: Rootfs,
    /// Mount the root read-only.
    pub readonly_rootfs: bool,
    /// The program and its arguments (`args[0]` searched in the container's `PATH`).
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// `uid`, `name`, `uid:gid` or `name:group`; empty = root.
    pub user: String,
    /// Hostname (UTS namespace); empty = the short id.
    pub hostname: String,
    /// Extra mounts, after the default ones, in order.
    pub mounts: Vec<Mount>,
    /// Resource limits.
    pub rlimits: Vec<Rlimit>,
    /// Namespaces.
    pub namespaces: Namespaces,
    /// Capabilities in the bounding, permitted and effective sets (and ambient, for root).
    pub capabilities: CapSet,
    /// Inheritable capabilities (empty by default; OCI may set them).
    pub inheritable: CapSet,
    /// Ambient capabilities (empty by default).
    pub ambient: CapSet,
    /// Set no_new_privs before exec.
    pub no_new_privs: bool,
    /// Apply the default seccomp filter last before exec.
    pub seccomp: bool,
    /// Paths masked inside the container.
    pub masked_paths: Vec<String>,
    /// Paths made read-only inside the container.
    pub readonly_paths: Vec<String>,
    /// cgroup limits.
    pub resources: Resources,
    /// The parent cgroup, relative to each hierarchy's root (`berth` by default).
    pub cgroup_parent: String,
    /// Network mode.
    pub network: Network,
    /// Extra label for `berth ps`: the app name (empty for `berth run`).
    pub app: String,
    /// Mount the default filesystems (/proc, /dev, /sys, ...) before `mounts`; OCI bundles
    /// list their own and set this to false.
    #[serde(default = "yes")]
    pub default_mounts: bool,
    /// Supplementary groups in addition to those from `/etc/group` (OCI `additionalGids`).
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// OCI `cgroupsPath`: the container's exact cgroup (relative to each hierarchy's root),
    /// instead of `<cgroup_parent>/<id>`.
    #[serde(default)]
    pub cgroup_path: Option<String>,
    /// Namespaced sysctls to set (`net.ipv4.ip_forward` = `1`), OCI `linux.sysctl`.
    #[serde(default)]
    pub sysctl: Vec<(String, String)>,
    /// `/proc/self/oom_score_adj` of the container's processes (-1000..=1000).
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// OCI: explicit effective set (default: `capabilities` for root, empty otherwise).
    #[serde(default)]
    pub effective: Option<CapSet>,
    /// OCI: explicit permitted set (same default as `effective`).
    #[serde(default)]
    pub permitted: Option<CapSet>,
    /// The app revision (empty for `berth run`).
    pub revision: String,
    /// Device nodes to create besides the default ones (OCI `linux.devices`).
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Run a minimal init as pid 1 that forwards signals to the program and reaps zombies
    /// (`berth run --init`, like docker's).
    #[serde(default)]
    pub init: bool,
}

impl ContainerSpec {
    /// The defaults for a container `id` running `args` on `rootfs`: the default security
    /// profile, all namespaces, `RLIMIT_NOFILE` 1024:1024.
    pub fn new(id: String, rootfs: Rootfs, args: Vec<String>) -> ContainerSpec {
        ContainerSpec {
            id,
            name: None,
            rootfs,
            readonly_rootfs: false,
            args,
            env: vec![DEFAULT_PATH.to_string()],
            cwd: "/".to_string(),
            user: String::new(),
            hostname: String::new(),
            mounts: Vec::new(),
            rlimits: vec![Rlimit {
                resource: 7,
                soft: 1024,
                hard: 1024,
            }],
            namespaces: Namespaces::default(),
            capabilities: CapSet::default_set(),
            inheritable: CapSet::EMPTY,
            ambient: CapSet::EMPTY,
            no_new_privs: true,
            seccomp: true,
            masked_paths: DEFAULT_MASKED.iter().map(|s| s.to_string()).collect(),
            readonly_paths: DEFAULT_READONLY.iter().map(|s| s.to_string()).collect(),
            resources: Resources::default(),
            cgroup_parent: "berth".to_string(),
            network: Network::Private,
            app: String::new(),
            revision: String::new(),
            default_mounts: true,
            additional_gids: Vec::new(),
            cgroup_path: None,
            sysctl: Vec::new(),
            oom_score_adj: None,
            effective: None,
            permitted: None,
            init: false,
            devices: Vec::new(),
        }
    }

    /// A minimal spec for unit tests.
    #[cfg(test)]
    pub fn for_test(id: &str) -> ContainerSpec {
        ContainerSpec::new(
            id.to_string(),
            Rootfs::Dir {
                path: PathBuf::from("/tmp/rootfs"),
            },
            vec!["/bin/true".to_string()],
        )
    }

    /// The hostname to set: the given one, or the short id.
    pub fn effective_hostname(&self) -> &str {
        if self.hostname.is_empty() {
            crate::runtime::id::short(&self.id)
        } else {
            &self.hostname
        }
    }

    /// A spec that runs an image: its snapshot dirs (lowest first, as the image store lists
    /// them) become the overlay's lower dirs (top first), and its config gives the defaults —
    /// Entrypoint + Cmd (or `command` when given, as `docker run IMAGE CMD` replaces Cmd),
    /// Env, WorkingDir and User.
    pub fn from_image(
        id: String,
        layer_dirs: &[PathBuf],
        config: &oci_spec::image::Config,
        command: Option<Vec<String>>,
    ) -> ContainerSpec {
        let entrypoint = config.entrypoint().clone().unwrap_or_default();
        let args = match command {
            Some(cmd) => entrypoint.into_iter().chain(cmd).collect(),
            None => entrypoint
                .into_iter()
                .chain(config.cmd().clone().unwrap_or_default())
                .collect(),
        };
        let lowers = layer_dirs.iter().rev().cloned().collect();
        let mut spec = ContainerSpec::new(id, Rootfs::Overlay { lowers }, args);
        for e in config.env().clone().unwrap_or_default() {
            spec.set_env(&e);
        }
        if let Some(cwd) = config.working_dir().clone().filter(|w| !w.is_empty()) {
            spec.cwd = cwd;
        }
        if let Some(user) = config.user().clone().filter(|u| !u.is_empty()) {
            spec.user = user;
        }
        spec
    }

    /// Sets `KEY=VALUE`, replacing an earlier value of `KEY`.
    pub fn set_env(&mut self, pair: &str) {
        let key = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair);
        self.env
            .retain(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e) != key);
        self.env.push(pair.to_string());
    }

    /// Refuses specs that could reach outside the container or cannot work: relative or
    /// `..` destinations, destinations over `/proc`, a cwd under `/proc`, bad env, no program.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        crate::runtime::id::validate_name(&self.id)?;
        if self.args.is_empty() || self.args[0].is_empty() {
            return Err(invalid(
                "command",
                "no program to run: give one after `--`".into(),
            ));
        }
        container_path("cwd", &self.cwd)?;
        if under(&self.cwd, "/proc") {
            return Err(invalid(
                "cwd",
                format!(
                    "{:?} is under /proc: the working directory must be inside the container's own files",
                    self.cwd
                ),
            ));
        }
        for m in &self.mounts {
            container_path("mount destination", &m.destination)?;
            let is_default = matches!(m.kind.as_str(), "proc" | "sysfs" | "mqueue" | "devpts");
            if m.is_bind() && (under(&m.destination, "/proc") || m.destination == "/") {
                return Err(invalid(
                    "mount destination",
                    format!(
                        "{:?}: volumes cannot be mounted over / or /proc",
                        m.destination
                    ),
                ));
            }
            if !is_default && under(&m.destination, "/proc") && m.destination != "/proc" {
                return Err(invalid(
                    "mount destination",
                    format!("{:?}: mounts inside /proc are not allowed", m.destination),
                ));
            }
            if m.is_bind() && !Path::new(&m.source).is_absolute() {
                return Err(invalid(
                    "volume",
                    format!("host path {:?} must be absolute", m.source),
                ));
            }
        }
        for d in &self.devices {
            container_path("device path", &d.path)?;
            if !matches!(d.kind, 'c' | 'u' | 'b' | 'p') {
                return Err(invalid(
                    "device type",
                    format!("{:?} of {}: must be c, u, b or p", d.kind, d.path),
                ));
            }
            if under(&d.path, "/proc") || under(&d.path, "/sys") {
                return Err(invalid(
                    "device path",
                    format!(
                        "{:?}: devices cannot be created under /proc or /sys",
                        d.path
                    ),
                ));
            }
        }
        for e in &self.env {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() && !k.contains('\0') && !e.contains('\0') => {}
                _ => return Err(invalid("env", format!("{e:?} is not KEY=VALUE"))),
            }
        }
        let h = self.effective_hostname();
        if h.len() > 64
            || !h
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(invalid(
                "hostname",
                format!("{h:?} must be at most 64 characters of [A-Za-z0-9.-]"),
            ));
        }
        for p in self.masked_paths.iter().chain(&self.readonly_paths) {
            container_path("masked/readonly path", p)?;
        }
        if !self.namespaces.mount {
            return Err(invalid(
                "namespaces",
                "a mount namespace is required: berth never changes the host's mounts".into(),
            ));
        }
        if !self.cgroup_parent.is_empty() {
            relative_clean("cgroup parent", &self.cgroup_parent)?;
        }
        for (k, _) in &self.sysctl {
            if k.is_empty() || k.contains('/') || k.contains("..") {
                return Err(invalid("sysctl", format!("{k:?} is not a sysctl name")));
            }
            // Only sysctls that belong to the container's own namespaces (runc's rule):
            // anything else would change the host.
            let ipc = self.namespaces.ipc
                && (IPC_SYSCTLS.contains(&k.as_str()) || k.starts_with("fs.mqueue."));
            let net =
                self.namespaces.net && self.network == Network::Private && k.starts_with("net.");
            if !ipc && !net {
                return Err(invalid(
                    "sysctl",
                    format!(
                        "{k:?} is not namespaced to the container: only kernel.msg*/sem/shm*, fs.mqueue.* (own ipc namespace) and net.* (own network namespace)"
                    ),
                ));
            }
        }
        if let Some(adj) = self.oom_score_adj
            && !(-1000..=1000).contains(&adj)
        {
            return Err(invalid(
                "oom_score_adj",
                format!("{adj} is outside -1000..=1000"),
            ));
        }
        if let Some(p) = &self.cgroup_path {
            relative_clean("cgroups path", p)?;
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn invalid(field: &'static str, reason: String) -> RuntimeError {
    RuntimeError::InvalidSpec { field, reason }
}

/// Whether `path` is `base` or below it (textually; paths are checked clean first).
fn under(path: &str, base: &str) -> bool {
    let p = Path::new(path);
    p.starts_with(base)
}

/// An absolute path inside the container without `..` components.
fn container_path(field: &'static str, path: &str) -> Result<(), RuntimeError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(invalid(field, format!("{path:?} must be an absolute path")));
    }
    if p.components().any(|c| c == Component::ParentDir) || path.contains('\0') {
        return Err(invalid(
            field,
            format!("{path:?} contains `..`: paths inside the container may not climb out"),
        ));
    }
    Ok(())
}

/// A relative path without `..` (cgroup parents).
fn relative_clean(field: &'static str, path: &str) -> Result<(), RuntimeError> {
    let p = Path::new(path.trim_start_matches('/'));
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(invalid(
            field,
            format!("{path:?} must be a plain relative path"),
        ));
    }
    Ok(())
}

/// Parses `-v HOST:CTR[:ro|:rw]` into a bind mount.
pub fn parse_volume(value: &str) -> Result<Mount, RuntimeError> {
    let parts: Vec<&str> = value.split(':').collect();
    let (host, ctr, mode) = match parts.as_slice() {
        [h, c] => (*h, *c, "rw"),
        [h, c, m] => (*h, *c, *m),
        _ => {
            return Err(invalid(
                "--volume",
                format!("{value:?} is not HOST:CONTAINER[:ro|:rw]"),
            ));
        }
    };
    let mut options = vec!["rbind".to_string()];
    match mode {
        "ro" => options.push("ro".into()),
        "rw" => {}
        m => return Err(invalid("--volume", format!("mode {m:?} is not ro or rw"))),
    }
    let mount = Mount {
        destination: ctr.to_string(),
        kind: "bind".to_string(),
        source: host.to_string(),
        options,
    };
    container_path("--volume", ctr)?;
    if !Path::new(host).is_absolute() {
        return Err(invalid(
            "--volume",
            format!("host path {host:?} must be absolute"),
        ));
    }
    Ok(mount)
}

/// Parses a size: `64Mi`, `1G`, `512k`, `1048576` (binary and decimal suffixes).
pub fn parse_size(value: &str) -> Result<u64, RuntimeError> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| invalid("--memory", format!("{value:?} is not a size such as 64Mi")))?;
    let mult: u64 = match unit {
        "" | "b" | "B" => 1,
        "k" | "K" | "kb" | "KB" => 1000,
        "Ki" | "KiB" => 1 << 10,
        "m" | "M" | "mb" | "MB" => 1000 * 1000,
        "Mi" | "MiB" => 1 << 20,
        "g" | "G" | "gb" | "GB" => 1000 * 1000 * 1000,
        "Gi" | "GiB" => 1 << 30,
        _ => {
            return Err(invalid(
                "--memory",
                format!("unit {unit:?} in {value:?} is unknown: use Ki, Mi, Gi, k, M or G"),
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|b| *b > 0)
        .ok_or_else(|| invalid("--memory", format!("{value:?} is out of range")))
}

/// Formats bytes the way `--memory` takes them (`32Mi`).
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}")
}

/// Parses `--cpus 0.5` into (quota, period) microseconds with a 100 ms period.
pub fn parse_cpus(value: &str) -> Result<(u64, u64), RuntimeError> {
    let cpus: f64 = value
        .parse()
        .map_err(|_| invalid("--cpus", format!("{value:?} is not a number such as 0.5")))?;
    if !cpus.is_finite() || !(0.01..=1024.0).contains(&cpus) {
        return Err(invalid(
            "--cpus",
            format!("{value:?} must be between 0.01 and 1024"),
        ));
    }
    let period = 100_000u64;
    Ok(((cpus * period as f64).round() as u64, period))
}

/// Parses `--ulimit NAME=SOFT[:HARD]` (`nofile=1024:2048`, `core=0`, `-1` = unlimited).
pub fn parse_rlimit(value: &str) -> Result<Rlimit, RuntimeError> {
    let bad = || {
        invalid(
            "--ulimit",
            format!("{value:?} is not NAME=SOFT[:HARD], e.g. nofile=1024:2048"),
        )
    };
    let (name, limits) = value.split_once('=').ok_or_else(bad)?;
    let name = name.trim().to_ascii_lowercase();
    let name = name.strip_prefix("rlimit_").unwrap_or(&name);
    let resource = RLIMIT_NAMES
        .iter()
        .position(|n| *n == name)
        .ok_or_else(|| {
            invalid(
                "--ulimit",
                format!("unknown limit {name:?}: one of {}", RLIMIT_NAMES.join(", ")),
            )
        })?;
    let num = |s: &str| -> Result<u64, RuntimeError> {
        if s == "-1" || s == "unlimited" {
            Ok(u64::MAX)
        } else {
            s.parse().map_err(|_| bad())
        }
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((s, h)) => (num(s)?, num(h)?),
        None => (num(limits)?, num(limits)?),
    };
    if soft > hard {
        return Err(invalid(
            "--ulimit",
            format!("{value:?}: soft limit is above the hard limit"),
        ));
    }
    Ok(Rlimit {
        resource: u32::try_from(resource).map_err(|_| bad())?,
        soft,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_destinations_that_climb_out_are_refused() {
        let mut spec = ContainerSpec::for_test("c1");
        spec.mounts.push(parse_volume("/tmp:/data").unwrap());
        spec.validate().unwrap();
        let err = parse_volume("/tmp:../../etc").unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        let err = parse_volume("/tmp:/a/../../etc").unwrap_err();
        assert!(err.to_string().contains("may not climb out"), "{err}");
        spec.mounts[0].destination = "/x/../../etc".into();
        assert!(spec.validate().is_err());
        spec.mounts[0].destination = "/proc/sys".into();
        assert!(spec.validate().is_err());
    }

    #[test]
    fn only_namespaced_sysctls_are_allowed() {
        let mut spec = ContainerSpec::for_test("c1");
        spec.sysctl = vec![("net.ipv4.ip_forward".into(), "1".into())];
        spec.validate().unwrap();
        spec.sysctl = vec![("kernel.core_pattern".into(), "|/evil".into())];
        assert!(spec.validate().is_err());
        spec.sysctl = vec![("net.ipv4.ip_forward".into(), "1".into())];
        spec.network = Network::Host;
        spec.namespaces.net = false;
        assert!(
            spec.validate().is_err(),
            "net sysctl allowed on the host network"
        );
    }

    #[test]
    fn cwd_under_proc_is_refused() {
        let mut spec = ContainerSpec::for_test("c1");
        spec.cwd = "/proc/self/fd/7".into();
        let err = spec.validate().unwrap_err();
        assert!(err.to_string().contains("under /proc"), "{err}");
        spec.cwd = "relative".into();
        assert!(spec.validate().is_err());
    }

    #[test]
    fn volume_modes_parse() {
        assert!(parse_volume("/h:/c:ro").unwrap().readonly());
        assert!(!parse_volume("/h:/c").unwrap().readonly());
        assert!(parse_volume("/h:/c:rx").is_err());
        assert!(parse_volume("rel:/c").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("32Mi").unwrap(), 32 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12Xi").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(format_size(32 << 20), "32Mi");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn cpus_become_quota_and_period() {
        assert_eq!(parse_cpus("0.5").unwrap(), (50_000, 100_000));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("nan").is_err());
    }

    #[test]
    fn rlimits_parse() {
        assert_eq!(
            parse_rlimit("nofile=100:200").unwrap(),
            Rlimit {
                resource: 7,
                soft: 100,
                hard: 200
            }
        );
        assert_eq!(parse_rlimit("core=-1").unwrap().hard, u64::MAX);
        assert!(parse_rlimit("nofile=200:100").is_err());
        assert!(parse_rlimit("bogus=1").is_err());
    }

    #[test]
    fn default_spec_has_the_security_profile() {
        let spec = ContainerSpec::for_test("c1");
        assert!(spec.no_new_privs && spec.seccomp);
        assert_eq!(spec.inheritable, CapSet::EMPTY);
        assert_eq!(
            spec.rlimits,
            vec![Rlimit {
                resource: 7,
                soft: 1024,
                hard: 1024
            }]
        );
        assert!(spec.masked_paths.iter().any(|p| p == "/proc/kcore"));
    }

    #[test]
    fn set_env_replaces_earlier_values() {
        let mut spec = ContainerSpec::for_test("c1");
        spec.set_env("PATH=/bin");
        spec.set_env("A=1");
        assert_eq!(spec.env, vec!["PATH=/bin", "A=1"]);
    }
}
