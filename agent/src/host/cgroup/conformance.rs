//! One controller test suite, run against every backend on a fake tree in a tempdir
//! (containerd's testsuite pattern): the v2 backend must pass the same tests as v1 and
//! hybrid, which run for real on the development machines (see `tests/cgroup_real.rs`).
//!
//! A fake tree stands in for the kernel: after `create`, the test "populates" the new
//! directory with the control files the kernel would show, then checks what the backend
//! wrote by the *meaning* of the files (limit, swap, quota), which each fake reads from its
//! own kernel's file names and formats.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::*;

const UNLIMITED_V1: &str = "9223372036854771712";

/// A fake kernel: a tempdir tree plus knowledge of its file names and formats.
trait FakeKernel {
    fn layout(&self) -> CgroupLayout;
    /// Creates the control files the kernel shows in a new cgroup directory.
    fn populate(&self, rel: &str);
    /// Removes them again, so `rmdir` works on the fake as on cgroupfs.
    fn depopulate(&self, rel: &str);
    /// Every directory of the cgroup.
    fn dirs(&self, rel: &str) -> Vec<PathBuf>;
    /// `(quota, period)` in µs; quota `None` = unlimited.
    fn cpu_quota(&self, rel: &str) -> (Option<u64>, u64);
    /// The memory limit; `None` = unlimited.
    fn memory_limit(&self, rel: &str) -> Option<u64>;
    /// The swap the cgroup may use on top of its memory; `None` = unlimited.
    fn swap_limit(&self, rel: &str) -> Option<u64>;
    /// `pids.max` as text.
    fn pids_max(&self, rel: &str) -> String;
    /// Contents of every `cgroup.procs` of the cgroup.
    fn procs(&self, rel: &str) -> Vec<String>;
    /// Whether the freezer file says frozen.
    fn frozen(&self, rel: &str) -> bool;
    /// Makes the fake report `frozen` (v2's `cgroup.events` is written by the kernel).
    fn kernel_reports_frozen(&self, rel: &str, frozen: bool);
    /// Writes usage files in the kernel's formats.
    fn write_stats(&self, rel: &str, stats: &Stats);
}

fn write(path: &Path, value: &str) {
    fs::write(path, value).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn read(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn remove_files(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::remove_file(entry.path()).unwrap();
        }
    }
}

fn parse_limit(text: &str, unlimited: &str) -> Option<u64> {
    (text != unlimited).then(|| text.parse().unwrap())
}

// ---- v1 ----

struct FakeV1 {
    tmp: TempDir,
}

const V1_HIERARCHIES: &[&str] = &["cpu", "cpuacct", "memory", "pids", "devices", "freezer"];

impl FakeV1 {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        for c in V1_HIERARCHIES {
            fs::create_dir(tmp.path().join(c)).unwrap();
        }
        Self { tmp }
    }
    fn mounts(&self) -> V1Mounts {
        V1Mounts::under(self.tmp.path(), V1_HIERARCHIES)
    }
    fn dir(&self, controller: &str, rel: &str) -> PathBuf {
        self.tmp.path().join(controller).join(rel)
    }
}

impl FakeKernel for FakeV1 {
    fn layout(&self) -> CgroupLayout {
        CgroupLayout::V1(self.mounts())
    }
    fn populate(&self, rel: &str) {
        let files: &[(&str, &[(&str, &str)])] = &[
            (
                "cpu",
                &[
                    ("cpu.cfs_period_us", "100000"),
                    ("cpu.cfs_quota_us", "-1"),
                    ("cpu.shares", "1024"),
                ],
            ),
            ("cpuacct", &[("cpuacct.usage", "0")]),
            (
                "memory",
                &[
                    ("memory.limit_in_bytes", UNLIMITED_V1),
                    ("memory.memsw.limit_in_bytes", UNLIMITED_V1),
                    ("memory.usage_in_bytes", "0"),
                    ("memory.max_usage_in_bytes", "0"),
                    (
                        "memory.oom_control",
                        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                    ),
                    ("memory.swappiness", "60"),
                ],
            ),
            ("pids", &[("pids.max", "max"), ("pids.current", "0")]),
            ("devices", &[("devices.allow", ""), ("devices.deny", "")]),
            ("freezer", &[("freezer.state", "THAWED")]),
        ];
        for (controller, files) in files {
            let dir = self.dir(controller, rel);
            write(&dir.join("cgroup.procs"), "");
            for (name, value) in *files {
                write(&dir.join(name), value);
            }
        }
    }
    fn depopulate(&self, rel: &str) {
        for c in V1_HIERARCHIES {
            remove_files(&self.dir(c, rel));
        }
    }
    fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        V1_HIERARCHIES.iter().map(|c| self.dir(c, rel)).collect()
    }
    fn cpu_quota(&self, rel: &str) -> (Option<u64>, u64) {
        let dir = self.dir("cpu", rel);
        let quota = read(&dir.join("cpu.cfs_quota_us"));
        let period = read(&dir.join("cpu.cfs_period_us")).parse().unwrap();
        (parse_limit(&quota, "-1"), period)
    }
    fn memory_limit(&self, rel: &str) -> Option<u64> {
        parse_limit(
            &read(&self.dir("memory", rel).join("memory.limit_in_bytes")),
            UNLIMITED_V1,
        )
    }
    fn swap_limit(&self, rel: &str) -> Option<u64> {
        let memsw = parse_limit(
            &read(&self.dir("memory", rel).join("memory.memsw.limit_in_bytes")),
            UNLIMITED_V1,
        )?;
        Some(memsw - self.memory_limit(rel)?)
    }
    fn pids_max(&self, rel: &str) -> String {
        read(&self.dir("pids", rel).join("pids.max"))
    }
    fn procs(&self, rel: &str) -> Vec<String> {
        V1_HIERARCHIES
            .iter()
            .map(|c| read(&self.dir(c, rel).join("cgroup.procs")))
            .collect()
    }
    fn frozen(&self, rel: &str) -> bool {
        read(&self.dir("freezer", rel).join("freezer.state")) == "FROZEN"
    }
    fn kernel_reports_frozen(&self, _rel: &str, _frozen: bool) {
        // v1's freezer.state reads back what was written.
    }
    fn write_stats(&self, rel: &str, stats: &Stats) {
        let memory = self.dir("memory", rel);
        write(
            &self.dir("cpuacct", rel).join("cpuacct.usage"),
            &format!("{}\n", stats.cpu_usage_ns),
        );
        write(
            &memory.join("memory.usage_in_bytes"),
            &format!("{}\n", stats.memory_usage_bytes),
        );
        write(
            &memory.join("memory.max_usage_in_bytes"),
            &format!("{}\n", stats.memory_peak_bytes.unwrap_or(0)),
        );
        write(
            &memory.join("memory.oom_control"),
            &format!(
                "oom_kill_disable 0\nunder_oom 0\noom_kill {}\n",
                stats.oom_kills
            ),
        );
        write(
            &self.dir("pids", rel).join("pids.current"),
            &format!("{}\n", stats.pids_current),
        );
    }
}

// ---- v2 ----

struct FakeV2 {
    tmp: TempDir,
}

impl FakeV2 {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        write(
            &tmp.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        write(&tmp.path().join("cgroup.subtree_control"), "");
        Self { tmp }
    }
    fn dir(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
}

impl FakeKernel for FakeV2 {
    fn layout(&self) -> CgroupLayout {
        CgroupLayout::V2 {
            root: self.tmp.path().to_path_buf(),
        }
    }
    fn populate(&self, rel: &str) {
        let dir = self.dir(rel);
        for (name, value) in [
            ("cgroup.procs", ""),
            ("cgroup.controllers", "cpu memory pids\n"),
            ("cgroup.subtree_control", ""),
            ("cgroup.freeze", "0"),
            ("cgroup.events", "populated 0\nfrozen 0\n"),
            ("cgroup.kill", ""),
            ("cpu.max", "max 100000"),
            ("cpu.weight", "100"),
            ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
            ("memory.max", "max"),
            ("memory.swap.max", "max"),
            ("memory.current", "0"),
            ("memory.peak", "0"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
            ),
            ("pids.max", "max"),
            ("pids.current", "0"),
        ] {
            write(&dir.join(name), value);
        }
    }
    fn depopulate(&self, rel: &str) {
        remove_files(&self.dir(rel));
    }
    fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        vec![self.dir(rel)]
    }
    fn cpu_quota(&self, rel: &str) -> (Option<u64>, u64) {
        let text = read(&self.dir(rel).join("cpu.max"));
        let (quota, period) = text.split_once(' ').unwrap();
        (parse_limit(quota, "max"), period.parse().unwrap())
    }
    fn memory_limit(&self, rel: &str) -> Option<u64> {
        parse_limit(&read(&self.dir(rel).join("memory.max")), "max")
    }
    fn swap_limit(&self, rel: &str) -> Option<u64> {
        parse_limit(&read(&self.dir(rel).join("memory.swap.max")), "max")
    }
    fn pids_max(&self, rel: &str) -> String {
        read(&self.dir(rel).join("pids.max"))
    }
    fn procs(&self, rel: &str) -> Vec<String> {
        vec![read(&self.dir(rel).join("cgroup.procs"))]
    }
    fn frozen(&self, rel: &str) -> bool {
        read(&self.dir(rel).join("cgroup.freeze")) == "1"
    }
    fn kernel_reports_frozen(&self, rel: &str, frozen: bool) {
        write(
            &self.dir(rel).join("cgroup.events"),
            &format!("populated 1\nfrozen {}\n", u8::from(frozen)),
        );
    }
    fn write_stats(&self, rel: &str, stats: &Stats) {
        let dir = self.dir(rel);
        write(
            &dir.join("cpu.stat"),
            &format!(
                "usage_usec {}\nuser_usec 1\nsystem_usec 2\nnr_periods 0\n",
                stats.cpu_usage_ns / 1000
            ),
        );
        write(
            &dir.join("memory.current"),
            &format!("{}\n", stats.memory_usage_bytes),
        );
        write(
            &dir.join("memory.peak"),
            &format!("{}\n", stats.memory_peak_bytes.unwrap_or(0)),
        );
        write(
            &dir.join("memory.events"),
            &format!(
                "low 0\nhigh 0\nmax 7\noom {0}\noom_kill {0}\noom_group_kill 0\n",
                stats.oom_kills
            ),
        );
        write(
            &dir.join("pids.current"),
            &format!("{}\n", stats.pids_current),
        );
    }
}

// ---- hybrid: the v1 fake plus a controller-less unified tree ----

struct FakeHybrid {
    v1: FakeV1,
    unified: TempDir,
}

impl FakeHybrid {
    fn new() -> Self {
        let unified = tempfile::tempdir().unwrap();
        write(&unified.path().join("cgroup.controllers"), "hugetlb\n");
        Self {
            v1: FakeV1::new(),
            unified,
        }
    }
    fn leaf(&self, rel: &str) -> PathBuf {
        self.unified.path().join(rel)
    }
}

impl FakeKernel for FakeHybrid {
    fn layout(&self) -> CgroupLayout {
        CgroupLayout::Hybrid {
            v1: self.v1.mounts(),
            unified: self.unified.path().to_path_buf(),
        }
    }
    fn populate(&self, rel: &str) {
        self.v1.populate(rel);
        write(&self.leaf(rel).join("cgroup.procs"), "");
        write(
            &self.leaf(rel).join("cgroup.events"),
            "populated 0\nfrozen 0\n",
        );
    }
    fn depopulate(&self, rel: &str) {
        self.v1.depopulate(rel);
        remove_files(&self.leaf(rel));
    }
    fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        let mut dirs = self.v1.dirs(rel);
        dirs.push(self.leaf(rel));
        dirs
    }
    fn cpu_quota(&self, rel: &str) -> (Option<u64>, u64) {
        self.v1.cpu_quota(rel)
    }
    fn memory_limit(&self, rel: &str) -> Option<u64> {
        self.v1.memory_limit(rel)
    }
    fn swap_limit(&self, rel: &str) -> Option<u64> {
        self.v1.swap_limit(rel)
    }
    fn pids_max(&self, rel: &str) -> String {
        self.v1.pids_max(rel)
    }
    fn procs(&self, rel: &str) -> Vec<String> {
        let mut procs = self.v1.procs(rel);
        procs.push(read(&self.leaf(rel).join("cgroup.procs")));
        procs
    }
    fn frozen(&self, rel: &str) -> bool {
        self.v1.frozen(rel)
    }
    fn kernel_reports_frozen(&self, rel: &str, frozen: bool) {
        self.v1.kernel_reports_frozen(rel, frozen);
    }
    fn write_stats(&self, rel: &str, stats: &Stats) {
        self.v1.write_stats(rel, stats);
    }
}

// ---- the suite ----

const REL: &str = "berth/c1";

fn created(fake: &dyn FakeKernel) -> Cgroup {
    let cgroup = fake.layout().cgroup(&CgroupPath::new(REL).unwrap());
    cgroup.create().unwrap();
    fake.populate(REL);
    cgroup
}

fn creates_the_cgroup_in_every_hierarchy_idempotently(fake: &dyn FakeKernel) {
    let cgroup = created(fake);
    for dir in fake.dirs(REL) {
        assert!(dir.is_dir(), "{} missing", dir.display());
    }
    assert_eq!(cgroup.dirs().len(), fake.dirs(REL).len());
    assert_eq!(cgroup.path().as_path(), Path::new(REL));
    cgroup.create().unwrap();
}

fn caps_cpu_from_millicores(fake: &dyn FakeKernel) {
    let cgroup = created(fake);
    cgroup
        .apply(&Resources {
            cpu_millicores: Some(500),
            ..Resources::default()
        })
        .unwrap();
    assert_eq!(fake.cpu_quota(REL), (Some(50_000), 100_000));
    cgroup
        .apply(&Resources {
            cpu_millicores: Some(1500),
            cpu_period_us: Some(20_000),
            ..Resources::default()
        })
        .unwrap();
    assert_eq!(fake.cpu_quota(REL), (Some(30_000), 20_000));
}

fn limits_memory_and_disables_swap(fake: &dyn FakeKernel) {
    let cgroup = created(fake);
    assert_eq!(fake.memory_limit(REL), None);
    cgroup
        .apply(&Resources {
            memory_bytes: Some(32 << 20),
            ..Resources::default()
        })
        .unwrap();
    assert_eq!(fake.memory_limit(REL), Some(32 << 20));
    assert_eq!(fake.swap_limit(REL), Some(0));
}

fn limits_pids(fake: &dyn FakeKernel) {
    let cgroup = created(fake);
    cgroup
        .apply(&Resources {
            pids_max: Some(64),
            ..Resources::default()
        })
        .unwrap();
    assert_eq!(fake.pids_max(REL), "64");
}

fn leaves_unset_limits_alone(fake: &dyn FakeKernel) {
    let cgroup = created(fake);
    cgroup.apply(&Resources::default()).unwrap();
    assert_eq!(fake.cpu_quota(REL).0, None);
    assert_eq!(fake.memory_limit(REL), None);
    assert_eq!(fake.pids_max(REL), "max");
}

fn rejects_invalid_resources_before_writing(fake: &dyn FakeKernel) {
    let cgroup = created(fake);
    let err = cgroup
        .apply(&Resources {
            memory_bytes: Some(1 << 20),
            cpu_shares: Some(1),
            ..Resources::default()
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(fake.memory_limit(REL), None, "nothing written");
}

fn adds_a_pid_to_every_hierarchy_and_lists_it(fake: &dyn FakeKernel) {
    let cgroup = created(fake);
    cgroup.add_pid(4242).unwrap();
    for procs in fake.procs(REL) {
        assert_eq!(procs, "4242");
    }
    assert_eq!(cgroup.pids().unwrap(), vec![4242]);
}

fn reads_stats_from_kernel_files(fake: &dyn FakeKernel) {
    let cgroup = created(fake);
    let sample = Stats {
        cpu_usage_ns: 1_234_567_000,
        memory_usage_bytes: 30 << 20,
        memory_peak_bytes: Some(33_554_432),
        pids_current: 7,
        oom_kills: 2,
    };
    fake.write_stats(REL, &sample);
    assert_eq!(cgroup.stats().unwrap(), sample);
}

fn freezes_and_thaws(fake: &dyn FakeKernel) {
    let cgroup = created(fake);
    fake.kernel_reports_frozen(REL, true);
    cgroup.freeze().unwrap();
    assert!(fake.frozen(REL));
    fake.kernel_reports_frozen(REL, false);
    cgroup.thaw().unwrap();
    assert!(!fake.frozen(REL));
}

fn kill_all_of_an_empty_cgroup_succeeds(fake: &dyn FakeKernel) {
    let cgroup = created(fake);
    // The fake's events file must follow the freezer for backends that freeze first.
    fake.kernel_reports_frozen(REL, false);
    cgroup
        .signal_all(nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    // v2 writes cgroup.kill; v1 finds no pid to signal. Neither touches other processes.
    cgroup.kill_all().unwrap();
}

fn deletes_the_leaf_only_and_idempotently(fake: &dyn FakeKernel) {
    let cgroup = created(fake);
    fake.depopulate(REL);
    cgroup.delete().unwrap();
    for dir in fake.dirs(REL) {
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(dir.parent().unwrap().is_dir(), "parent must stay");
    }
    cgroup.delete().unwrap();
    cgroup.kill_all().unwrap();
}

fn stats_of_a_missing_cgroup_are_not_found(fake: &dyn FakeKernel) {
    let cgroup = fake
        .layout()
        .cgroup(&CgroupPath::new("berth/never").unwrap());
    assert_eq!(cgroup.stats().unwrap_err().kind(), ErrorKind::NotFound);
}

macro_rules! conformance_suite {
    ($backend:ident, $fake:expr) => {
        mod $backend {
            use super::*;
            conformance_suite!(@tests $fake;
                creates_the_cgroup_in_every_hierarchy_idempotently,
                caps_cpu_from_millicores,
                limits_memory_and_disables_swap,
                limits_pids,
                leaves_unset_limits_alone,
                rejects_invalid_resources_before_writing,
                adds_a_pid_to_every_hierarchy_and_lists_it,
                reads_stats_from_kernel_files,
                freezes_and_thaws,
                kill_all_of_an_empty_cgroup_succeeds,
                deletes_the_leaf_only_and_idempotently,
                stats_of_a_missing_cgroup_are_not_found,
            );
        }
    };
    (@tests $fake:expr; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                super::$test(&$fake);
            }
        )*
    };
}

conformance_suite!(v1, FakeV1::new());
conformance_suite!(v2, FakeV2::new());
conformance_suite!(hybrid, FakeHybrid::new());

// ---- backend-specific behaviour ----

#[test]
fn v2_enables_controllers_in_every_ancestor() {
    let fake = FakeV2::new();
    let root = fake.tmp.path();
    fs::create_dir(root.join("berth")).unwrap();
    write(
        &root.join("berth/cgroup.controllers"),
        "cpu io memory pids\n",
    );
    write(&root.join("berth/cgroup.subtree_control"), "");
    let cgroup = fake.layout().cgroup(&CgroupPath::new(REL).unwrap());
    cgroup.create().unwrap();
    assert_eq!(
        read(&root.join("cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    assert_eq!(
        read(&root.join("berth/cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
}

#[test]
fn v2_enables_only_the_controllers_a_parent_offers() {
    let fake = FakeV2::new();
    write(&fake.tmp.path().join("cgroup.controllers"), "memory io\n");
    let cgroup = fake.layout().cgroup(&CgroupPath::new("c2").unwrap());
    cgroup.create().unwrap();
    assert_eq!(
        read(&fake.tmp.path().join("cgroup.subtree_control")),
        "+memory"
    );
}

#[test]
fn v2_converts_shares_to_weight_and_v1_writes_shares() {
    let resources = Resources {
        cpu_shares: Some(512),
        ..Resources::default()
    };
    let v2 = FakeV2::new();
    created(&v2).apply(&resources).unwrap();
    assert_eq!(
        read(&v2.dir(REL).join("cpu.weight")),
        shares_to_weight(512).to_string()
    );
    let v1 = FakeV1::new();
    created(&v1).apply(&resources).unwrap();
    assert_eq!(read(&v1.dir("cpu", REL).join("cpu.shares")), "512");
}

#[test]
fn v2_kill_all_writes_cgroup_kill() {
    let fake = FakeV2::new();
    let cgroup = created(&fake);
    cgroup.kill_all().unwrap();
    assert_eq!(read(&fake.dir(REL).join("cgroup.kill")), "1");
}

#[test]
fn v2_without_memory_peak_reports_no_peak() {
    let fake = FakeV2::new();
    let cgroup = created(&fake);
    fs::remove_file(fake.dir(REL).join("memory.peak")).unwrap();
    assert_eq!(cgroup.stats().unwrap().memory_peak_bytes, None);
}

#[test]
fn v2_device_rules_on_a_directory_that_is_no_cgroup_fail_loudly() {
    // The program loads (as root) but cannot attach to a tmpfs directory: never a silent
    // success. The real attach is tested in tests/cgroup_real.rs.
    let fake = FakeV2::new();
    let cgroup = created(&fake);
    let err = cgroup.apply_devices(&default_device_rules()).unwrap_err();
    assert!(err.to_string().contains("device program"), "{err}");
}

#[test]
fn v1_writes_device_rules_to_allow_and_deny_files() {
    let fake = FakeV1::new();
    let cgroup = created(&fake);
    cgroup.apply_devices(&default_device_rules()).unwrap();
    // The fake keeps only the last write of each file; the real test checks the whole list.
    let dir = fake.dir("devices", REL);
    assert_eq!(read(&dir.join("devices.allow")), "c 136:* rwm");
    assert_eq!(read(&dir.join("devices.deny")), "c 10:229 rwm");
}

#[test]
fn v1_without_swap_accounting_sets_swappiness_to_zero() {
    let fake = FakeV1::new();
    let cgroup = created(&fake);
    let memory = fake.dir("memory", REL);
    fs::remove_file(memory.join("memory.memsw.limit_in_bytes")).unwrap();
    cgroup
        .apply(&Resources {
            memory_bytes: Some(64 << 20),
            ..Resources::default()
        })
        .unwrap();
    assert_eq!(read(&memory.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read(&memory.join("memory.swappiness")), "0");
}

#[test]
fn v1_comounted_cpu_and_cpuacct_share_one_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let both = tmp.path().join("cpu,cpuacct");
    let mounts = V1Mounts::new([("cpu", both.clone()), ("cpuacct", both.clone())]);
    let cgroup = CgroupLayout::V1(mounts).cgroup(&CgroupPath::new(REL).unwrap());
    assert_eq!(cgroup.dirs(), vec![both.join(REL)]);
}

#[test]
fn v1_limit_without_its_controller_is_unavailable() {
    let tmp = tempfile::tempdir().unwrap();
    let mounts = V1Mounts::under(tmp.path(), &["memory"]);
    fs::create_dir(tmp.path().join("memory")).unwrap();
    let cgroup = CgroupLayout::V1(mounts).cgroup(&CgroupPath::new(REL).unwrap());
    cgroup.create().unwrap();
    let err = cgroup
        .apply(&Resources {
            pids_max: Some(10),
            ..Resources::default()
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("pids"), "{err}");
}

#[test]
fn hybrid_adds_the_pid_to_the_unified_leaf_too() {
    let fake = FakeHybrid::new();
    let cgroup = created(&fake);
    cgroup.add_pid(77).unwrap();
    assert_eq!(read(&fake.leaf(REL).join("cgroup.procs")), "77");
}

#[test]
fn stats_report_the_file_that_could_not_be_parsed() {
    let fake = FakeV2::new();
    let cgroup = created(&fake);
    write(&fake.dir(REL).join("pids.current"), "lots\n");
    let err = cgroup.stats().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.to_string().contains("pids.current"), "{err}");
}
