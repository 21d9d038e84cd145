#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "attach/detach latency figures are printed for the notes"
)]
//! Privileged tests of instance networking. Every bridge, veth, route and NAT rule lives in a
//! network namespace the test creates as "the host" (`berth-test-<pid>-<n>`); instance
//! namespaces are named `berth-test-<pid>-<n>i-<id>`. Drop guards remove all of them, even on
//! failure. Traffic only goes to addresses inside these namespaces.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_agent::host::net::{HostNetns, NETNS_DIR, Network, run_in_netns};
use berth_agent::net::{NetConfig, Subnet};

static N: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().unwrap()
}

/// A test "host" namespace plus the prefix its instances get; removes both on drop.
struct TestHost {
    name: String,
    inst_prefix: String,
    data: tempfile::TempDir,
}

impl TestHost {
    fn new() -> Self {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let name = format!("berth-test-{}-{n}", std::process::id());
        let out = ip(&["netns", "add", &name]);
        assert!(out.status.success(), "{out:?}");
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self {
            inst_prefix: format!("{name}i-"),
            name,
            data: tempfile::tempdir().unwrap(),
        }
    }

    fn cfg(&self) -> NetConfig {
        NetConfig {
            bridge: "tbr0".into(),
            subnet: "10.77.0.0/24".parse::<Subnet>().unwrap(),
            netns_prefix: self.inst_prefix.clone(),
            veth_prefix: "tv".into(),
            host_ports: (41000, 41009),
            egress_nat: false,
        }
    }

    fn open(&self) -> Network {
        Network::open(
            self.cfg(),
            HostNetns::Named(self.name.clone()),
            self.data.path(),
        )
        .unwrap()
    }

    fn path(&self) -> std::path::PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Ok(dir) = std::fs::read_dir(NETNS_DIR) {
            for e in dir.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&self.inst_prefix) {
                    ip(&["netns", "delete", &n]);
                }
            }
        }
        ip(&["netns", "delete", &self.name]);
    }
}

fn link_exists(ns: &str, dev: &str) -> bool {
    ip(&["-n", ns, "link", "show", "dev", dev]).status.success()
}

/// Binds a listener inside `netns` and accepts one connection, echoing one line back.
fn echo_once_in(netns: &Path, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let listener = run_in_netns(netns, || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    })
}

fn hello_from(netns: &Path, to: SocketAddr) {
    let got = run_in_netns(netns, || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.write_all(b"hello")?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf)?;
        Ok::<_, std::io::Error>(buf)
    })
    .unwrap()
    .unwrap();
    assert_eq!(&got, b"hello");
}

#[test]
fn attached_instances_get_distinct_addresses_and_reach_each_other_and_the_gateway() {
    let host = TestHost::new();
    let net = host.open();
    let t0 = Instant::now();
    let a = net.attach("a").unwrap();
    let t_attach = t0.elapsed();
    let b = net.attach("b").unwrap();
    eprintln!("attach latency (first instance): {t_attach:?}");
    assert_ne!(a.ip, b.ip);
    assert_eq!(a.gateway, Ipv4Addr::new(10, 77, 0, 1));
    assert!(a.netns_path.exists());

    // Loopback is up inside the instance.
    let srv = echo_once_in(&a.netns_path, "127.0.0.1:7001".parse().unwrap());
    hello_from(&a.netns_path, "127.0.0.1:7001".parse().unwrap());
    srv.join().unwrap();

    // b reaches a through the bridge.
    let srv = echo_once_in(&a.netns_path, SocketAddr::new(a.ip.into(), 7002));
    hello_from(&b.netns_path, SocketAddr::new(a.ip.into(), 7002));
    srv.join().unwrap();

    // a reaches the bridge address (the gateway) in the host namespace.
    let srv = echo_once_in(&host.path(), SocketAddr::new(a.gateway.into(), 7003));
    hello_from(&a.netns_path, SocketAddr::new(a.gateway.into(), 7003));
    srv.join().unwrap();

    // The default route points at the gateway.
    let inst_ns = a
        .netns_path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let routes =
        String::from_utf8(ip(&["-n", &inst_ns, "route", "show", "default"]).stdout).unwrap();
    assert!(routes.contains("via 10.77.0.1"), "{routes}");

    let t0 = Instant::now();
    net.detach("a").unwrap();
    eprintln!("detach latency: {:?}", t0.elapsed());
    assert!(!a.netns_path.exists());
    assert!(!link_exists(&host.name, &a.host_veth));
    assert!(link_exists(&host.name, &b.host_veth));
    assert_eq!(net.address_of("a").unwrap(), None);
    // Detach is idempotent.
    net.detach("a").unwrap();
    net.detach("b").unwrap();
    assert!(!b.netns_path.exists());
}

#[test]
fn attach_latency_over_twenty_instances() {
    let host = TestHost::new();
    let net = host.open();
    let ids: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
    let t0 = Instant::now();
    for id in &ids {
        net.attach(id).unwrap();
    }
    let attach = t0.elapsed() / 20;
    let t0 = Instant::now();
    for id in &ids {
        net.detach(id).unwrap();
    }
    eprintln!(
        "mean attach {attach:?}, mean detach {:?} per instance",
        t0.elapsed() / 20
    );
}

#[test]
fn addresses_survive_reopening_and_second_attach_is_refused() {
    let host = TestHost::new();
    let net = host.open();
    let a = net.attach("a").unwrap();
    assert!(net.attach("a").is_err(), "double attach must be refused");
    drop(net);
    let net = host.open(); // an agent restart: bridge exists, state is on disk
    assert_eq!(net.address_of("a").unwrap(), Some(a.ip));
    let b = net.attach("b").unwrap();
    assert_ne!(a.ip, b.ip);
    net.detach("a").unwrap();
    net.detach("b").unwrap();
}

#[test]
fn orphan_cleanup_removes_only_our_leftovers() {
    let host = TestHost::new();
    let net = host.open();
    let keep = net.attach("keep").unwrap();
    let gone = net.attach("gone").unwrap();
    net.allocate_host_port("keep").unwrap();
    net.allocate_host_port("gone-port").unwrap();
    // Someone else's namespace (no instance prefix) and veth (no veth prefix).
    let other_ns = format!("{}x-other", host.name);
    assert!(ip(&["netns", "add", &other_ns]).status.success());
    let _other_guard = scopeguard(other_ns.clone());
    assert!(
        ip(&[
            "-n", &host.name, "link", "add", "other0", "type", "veth", "peer", "name", "other1"
        ])
        .status
        .success()
    );
    drop(net);

    let net = host.open();
    let alive: HashSet<String> = ["keep".to_owned()].into();
    let report = net.cleanup_orphans(&alive).unwrap();
    assert_eq!(report.netns, vec![format!("{}gone", host.inst_prefix)]);
    assert_eq!(report.veths, vec![gone.host_veth.clone()]);
    assert_eq!(report.addresses, vec!["gone".to_owned()]);
    assert_eq!(report.ports, vec!["gone-port".to_owned()]);

    assert!(keep.netns_path.exists() && link_exists(&host.name, &keep.host_veth));
    assert!(!gone.netns_path.exists() && !link_exists(&host.name, &gone.host_veth));
    assert!(Path::new(NETNS_DIR).join(&other_ns).exists());
    assert!(link_exists(&host.name, "other0"));
    assert_eq!(net.address_of("keep").unwrap(), Some(keep.ip));
    net.detach("keep").unwrap();
}

#[test]
fn host_ports_are_persisted_and_skip_busy_ports() {
    let host = TestHost::new();
    // Hold the first port of the range on loopback (in the test's own namespace).
    let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 41000));
    let net = host.open();
    let p = net.allocate_host_port("a").unwrap();
    if busy.is_ok() {
        assert_ne!(p, 41000);
    }
    assert_eq!(net.allocate_host_port("a").unwrap(), p);
    drop(net);
    let net = host.open();
    assert_eq!(net.allocate_host_port("a").unwrap(), p);
    let q = net.allocate_host_port("b").unwrap();
    assert_ne!(p, q);
    net.release_host_port("a").unwrap();
    net.release_host_port("b").unwrap();
}

#[test]
fn egress_nat_installs_one_masquerade_rule_in_the_host_namespace() {
    let host = TestHost::new();
    let cfg = NetConfig {
        egress_nat: true,
        ..host.cfg()
    };
    let hns = HostNetns::Named(host.name.clone());
    let open = || Network::open(cfg.clone(), hns.clone(), host.data.path());
    let net = match open() {
        Ok(n) => n,
        Err(e)
            if e.to_string().contains("iptables")
                && Command::new("iptables").arg("-V").output().is_err() =>
        {
            panic!("iptables is missing: install it (scripts/install-deps.sh): {e}");
        }
        Err(e) => panic!("{e}"),
    };
    drop(net);
    open().unwrap(); // idempotent: no second rule
    assert_eq!(ours(&host.name), 1, "{}", nat_rules(&host.name));
    let rules = nat_rules(&host.name);
    assert!(rules.contains("10.77.0.0/24"), "{rules}");
    let fwd = Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.name,
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
}

fn nat_rules(ns: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "iptables",
            "-t",
            "nat",
            "-S",
            "POSTROUTING",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Rules carrying berth's egress-NAT comment.
fn ours(ns: &str) -> usize {
    nat_rules(ns)
        .lines()
        .filter(|l| l.contains("berth egress-nat"))
        .count()
}

fn iptables_in(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "iptables"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "iptables {args:?}: {out:?}");
}

#[test]
fn teardown_and_orphan_cleanup_remove_exactly_our_nat_rule() {
    let host = TestHost::new();
    let hns = HostNetns::Named(host.name.clone());
    // Someone else's rules in the same namespace, one of them for the same subnet.
    let foreign_same = "POSTROUTING -s 10.77.0.0/24 ! -o tbr0 -j MASQUERADE";
    let foreign_other = "POSTROUTING -s 10.99.0.0/24 -j MASQUERADE";
    for r in [foreign_same, foreign_other] {
        let mut args = vec!["-t", "nat", "-A"];
        args.extend(r.split(' '));
        iptables_in(&host.name, &args);
    }
    let foreign = |rules: &str| {
        [foreign_same, foreign_other]
            .iter()
            .all(|f| rules.lines().any(|l| l == format!("-A {f}")))
    };
    let nat = NetConfig {
        egress_nat: true,
        ..host.cfg()
    };
    // Two data dirs sharing subnet and namespace each own a rule.
    let other_data = tempfile::tempdir().unwrap();
    Network::open(nat.clone(), hns.clone(), host.data.path()).unwrap();
    Network::open(nat.clone(), hns.clone(), other_data.path()).unwrap();
    assert_eq!(ours(&host.name), 2, "{}", nat_rules(&host.name));

    // `berth down`'s teardown: only this data dir's rule goes.
    let report = berth_agent::host::net::teardown(host.data.path(), hns.clone()).unwrap();
    assert!(report.nat_rule.is_some(), "{report:?}");
    let rules = nat_rules(&host.name);
    assert_eq!(ours(&host.name), 1, "{rules}");
    assert!(foreign(&rules), "foreign rules must stay: {rules}");
    // Idempotent.
    let again = berth_agent::host::net::teardown(host.data.path(), hns.clone()).unwrap();
    assert_eq!(again.nat_rule, None);

    // Agent start with NAT turned off: the other data dir's rule is an orphan now.
    Network::open_deferred(host.cfg(), hns.clone(), other_data.path()).unwrap();
    let rules = nat_rules(&host.name);
    assert_eq!(ours(&host.name), 0, "{rules}");
    assert!(foreign(&rules), "{rules}");

    // A changed subnet replaces the old rule instead of adding a second one.
    Network::open(nat.clone(), hns.clone(), host.data.path()).unwrap();
    let moved = NetConfig {
        subnet: "10.78.0.0/24".parse::<Subnet>().unwrap(),
        bridge: "tbr1".into(),
        ..nat
    };
    Network::open(moved, hns, host.data.path()).unwrap();
    let rules = nat_rules(&host.name);
    assert_eq!(ours(&host.name), 1, "{rules}");
    assert!(
        rules
            .lines()
            .any(|l| l.contains("berth egress-nat") && l.contains("10.78.0.0/24")),
        "{rules}"
    );
    assert!(foreign(&rules), "{rules}");
}

struct NsGuard(String);
impl Drop for NsGuard {
    fn drop(&mut self) {
        ip(&["netns", "delete", &self.0]);
    }
}
fn scopeguard(name: String) -> NsGuard {
    NsGuard(name)
}

#[test]
fn concurrent_attaches_from_separate_handles_get_distinct_addresses() {
    // Each thread opens its own Network (its own lock file descriptions), as two agent
    // processes would: the flock must serialise the IPAM updates.
    let host = TestHost::new();
    drop(host.open());
    let ips: Vec<Ipv4Addr> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let host = &host;
                s.spawn(move || host.open().attach(&format!("c{i}")).unwrap().ip)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: HashSet<Ipv4Addr> = ips.iter().copied().collect();
    assert_eq!(distinct.len(), 8, "{ips:?}");
    let net = host.open();
    for (i, ip) in ips.iter().enumerate() {
        let id = format!("c{i}");
        assert_eq!(net.address_of(&id).unwrap(), Some(*ip));
        net.detach(&id).unwrap();
    }
}

#[test]
fn first_attaches_at_once_on_a_deferred_network_all_succeed() {
    // The agent opens its network deferred and starts the first instances of several apps at
    // once: each attach finds no bridge yet, and only one may create it (the others used to
    // fail with "File exists").
    let host = TestHost::new();
    let net = Network::open_deferred(
        host.cfg(),
        HostNetns::Named(host.name.clone()),
        host.data.path(),
    )
    .unwrap();
    assert!(!link_exists(&host.name, "tbr0"));
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let net = &net;
                s.spawn(move || net.attach(&format!("f{i}")).map(|a| a.ip))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, r) in results.iter().enumerate() {
        if r.is_ok() {
            net.detach(&format!("f{i}")).unwrap();
        }
    }
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(failed.is_empty(), "first attaches failed: {failed:?}");
    assert!(link_exists(&host.name, "tbr0"));
}
