//! Which cgroup setup the host has, read from `/proc/self/mountinfo` text.
//!
//! Three setups exist in the wild:
//! - **v1 (legacy)**: one `cgroup` mount per controller (or per group of co-mounted
//!   controllers), usually under a tmpfs at `/sys/fs/cgroup`;
//! - **v2 (unified)**: one `cgroup2` mount, usually at `/sys/fs/cgroup`;
//! - **hybrid**: v1 controllers plus a `cgroup2` mount (typically `/sys/fs/cgroup/unified`)
//!   that holds none of the controllers we use. Limits go through v1; the v2 tree is used
//!   only to track the processes (and for `cgroup.kill`).
//!
//! Detection is a pure function of the mountinfo text so every setup is tested from sample
//! files; [`CgroupLayout::detect`] reads the file whose path it is given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::CgroupError;
use super::fsio;

/// The v1 controllers berth knows about.
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// The controllers whose limits berth sets: they decide whether v1 is in use.
const LIMIT_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// Mount points of the v1 hierarchies, by controller name. Co-mounted controllers
/// (e.g. `cpu,cpuacct`) map to the same directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V1Mounts {
    controllers: BTreeMap<String, PathBuf>,
}

impl V1Mounts {
    /// Mounts given as `(controller, mount point)` pairs; unknown controller names are kept
    /// but never used.
    pub fn new<I, S, P>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (S, P)>,
        S: Into<String>,
        P: Into<PathBuf>,
    {
        Self {
            controllers: pairs
                .into_iter()
                .map(|(name, path)| (name.into(), path.into()))
                .collect(),
        }
    }

    /// One hierarchy per controller at `root/<controller>`, the usual layout (and the shape
    /// of a fake tree in tests).
    pub fn under(root: &Path, controllers: &[&str]) -> Self {
        Self::new(controllers.iter().map(|c| (*c, root.join(c))))
    }

    /// The mount point of `controller`, if mounted.
    pub fn mount_point(&self, controller: &str) -> Option<&Path> {
        self.controllers.get(controller).map(PathBuf::as_path)
    }

    /// The mounted controllers and their mount points.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.controllers
            .iter()
            .map(|(name, path)| (name.as_str(), path.as_path()))
    }

    fn has_limit_controller(&self) -> bool {
        LIMIT_CONTROLLERS
            .iter()
            .any(|c| self.controllers.contains_key(*c))
    }
}

/// The cgroup setup of a host: where the hierarchies are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Pure v1: every controller in its own hierarchy.
    V1(V1Mounts),
    /// Pure v2: one unified hierarchy rooted at `root`.
    V2 { root: PathBuf },
    /// v1 controllers for limits, plus a controller-less v2 tree at `unified` that tracks the
    /// processes.
    Hybrid { v1: V1Mounts, unified: PathBuf },
}

impl CgroupLayout {
    /// Reads the mountinfo file at `mountinfo` (normally `/proc/self/mountinfo`) and detects
    /// the setup.
    pub fn detect(mountinfo: &Path) -> Result<Self, CgroupError> {
        let text = fsio::read(mountinfo)?;
        Self::from_mountinfo(&text, &mountinfo.display().to_string())
    }

    /// Detects the setup from mountinfo text. `source_name` names the text in errors.
    ///
    /// v1 is in use as soon as one of cpu, memory or pids is mounted as v1; a `cgroup2`
    /// mount next to it makes the setup hybrid. Without v1 limit controllers, the `cgroup2`
    /// mount (the one at `/sys/fs/cgroup` when there are several) is the unified root.
    pub fn from_mountinfo(text: &str, source_name: &str) -> Result<Self, CgroupError> {
        let mut v1 = Vec::new();
        let mut v2: Vec<PathBuf> = Vec::new();
        for entry in text.lines().filter_map(parse_line) {
            match entry.fstype {
                "cgroup" => {
                    for option in entry.super_options.split(',') {
                        if V1_CONTROLLERS.contains(&option) {
                            v1.push((option.to_owned(), entry.mount_point.clone()));
                        }
                    }
                }
                "cgroup2" => v2.push(entry.mount_point),
                _ => {}
            }
        }
        let v1 = V1Mounts::new(v1);
        let unified = v2
            .iter()
            .find(|p| p.as_path() == Path::new("/sys/fs/cgroup"))
            .or_else(|| v2.first())
            .cloned();
        match (v1.has_limit_controller(), unified) {
            (true, Some(unified)) => Ok(Self::Hybrid { v1, unified }),
            (true, None) => Ok(Self::V1(v1)),
            (false, Some(root)) => Ok(Self::V2 { root }),
            (false, None) => Err(CgroupError::NoHierarchy {
                source_name: source_name.to_owned(),
            }),
        }
    }

    /// A short name for logs and `berth info`: `v1`, `v2` or `hybrid`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::V1(_) => "v1",
            Self::V2 { .. } => "v2",
            Self::Hybrid { .. } => "hybrid",
        }
    }
}

struct MountEntry<'a> {
    mount_point: PathBuf,
    fstype: &'a str,
    super_options: &'a str,
}

/// Parses one mountinfo line:
/// `id parent major:minor root mount-point options [optional...] - fstype source super-options`.
fn parse_line(line: &str) -> Option<MountEntry<'_>> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split_whitespace().nth(4)?;
    let mut right = right.split_whitespace();
    let fstype = right.next()?;
    let _source = right.next()?;
    let super_options = right.next().unwrap_or("");
    Some(MountEntry {
        mount_point: PathBuf::from(unescape(mount_point)),
        fstype,
        super_options,
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    // This machine: v1 controllers (cpu and cpuacct mounted apart) + an empty cgroup2 at
    // /sys/fs/cgroup/unified.
    const HYBRID: &str = include_str!("testdata/mountinfo-hybrid");
    // Debian 10 / Ubuntu 18.04 style: co-mounted cpu,cpuacct; no cgroup2 mount.
    const V1: &str = include_str!("testdata/mountinfo-v1");
    // Debian 12 / systemd 252 default: cgroup2 at /sys/fs/cgroup.
    const V2: &str = include_str!("testdata/mountinfo-v2");

    #[test]
    fn detects_hybrid_with_unified_mount_beside_v1_controllers() {
        let layout = CgroupLayout::from_mountinfo(HYBRID, "sample").unwrap();
        let CgroupLayout::Hybrid { v1, unified } = layout else {
            panic!("expected hybrid, got {layout:?}");
        };
        assert_eq!(unified, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(v1.mount_point("cpu"), Some(Path::new("/sys/fs/cgroup/cpu")));
        assert_eq!(
            v1.mount_point("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpuacct"))
        );
        assert_eq!(
            v1.mount_point("memory"),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            v1.mount_point("pids"),
            Some(Path::new("/sys/fs/cgroup/pids"))
        );
        // name=systemd is a named hierarchy without a controller.
        assert!(v1.iter().all(|(name, _)| name != "name=systemd"));
    }

    #[test]
    fn detects_pure_v1_with_comounted_cpu_and_cpuacct() {
        let layout = CgroupLayout::from_mountinfo(V1, "sample").unwrap();
        let CgroupLayout::V1(v1) = layout else {
            panic!("expected v1, got {layout:?}");
        };
        let cpu = Path::new("/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(v1.mount_point("cpu"), Some(cpu));
        assert_eq!(v1.mount_point("cpuacct"), Some(cpu));
        assert_eq!(
            v1.mount_point("freezer"),
            Some(Path::new("/sys/fs/cgroup/freezer"))
        );
    }

    #[test]
    fn detects_pure_v2_at_sys_fs_cgroup() {
        let layout = CgroupLayout::from_mountinfo(V2, "sample").unwrap();
        assert_eq!(
            layout,
            CgroupLayout::V2 {
                root: PathBuf::from("/sys/fs/cgroup")
            }
        );
        assert_eq!(layout.name(), "v2");
    }

    #[test]
    fn only_named_v1_hierarchy_beside_cgroup2_is_v2() {
        let text = "\
30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /run/systemd/legacy rw - cgroup cgroup rw,xattr,name=systemd
";
        let layout = CgroupLayout::from_mountinfo(text, "sample").unwrap();
        assert_eq!(layout.name(), "v2");
    }

    #[test]
    fn no_cgroup_mount_is_an_unavailable_error() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n";
        let err = CgroupLayout::from_mountinfo(text, "sample").unwrap_err();
        assert_eq!(err.kind(), super::super::ErrorKind::Unavailable);
        assert!(err.to_string().contains("sample"), "{err}");
    }

    #[test]
    fn unescapes_octal_sequences_in_mount_points() {
        let text = "31 25 0:27 / /tmp/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        let layout = CgroupLayout::from_mountinfo(text, "sample").unwrap();
        assert_eq!(
            layout,
            CgroupLayout::V2 {
                root: PathBuf::from("/tmp/my cgroups")
            }
        );
    }

    #[test]
    fn detect_reads_the_given_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mountinfo");
        std::fs::write(&path, V2).unwrap();
        assert_eq!(CgroupLayout::detect(&path).unwrap().name(), "v2");
        let missing = CgroupLayout::detect(&dir.path().join("nope")).unwrap_err();
        assert_eq!(missing.kind(), super::super::ErrorKind::NotFound);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_mountinfo_never_panics(text in "\\PC{0,400}") {
            let _ = CgroupLayout::from_mountinfo(&text, "fuzz");
        }

        #[test]
        fn arbitrary_mount_points_with_escapes_never_panic(point in "[a-z/\\\\0-9 ]{0,40}") {
            let line = format!("1 1 0:1 / {point} rw - cgroup2 cgroup2 rw\n");
            let _ = CgroupLayout::from_mountinfo(&line, "fuzz");
        }
    }

    #[test]
    fn skips_malformed_lines() {
        let text = "garbage\n\n39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        let layout = CgroupLayout::from_mountinfo(text, "sample").unwrap();
        assert_eq!(layout.name(), "v1");
    }
}
