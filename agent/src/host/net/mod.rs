//! Instance networking on the host: the bridge, one veth pair and one network namespace per
//! `network: private` instance, addresses from the persisted IPAM, host ports for
//! `network: host` instances, optional egress NAT, and orphan cleanup at agent start.
//!
//! ```text
//!  host netns (HostNetns)                      instance netns /run/netns/<prefix><id>
//!  ┌──────────────────────────┐               ┌───────────────────────────────┐
//!  │ bridge berth0 10.88.0.1  │── bv<hash> ═══ eth0 10.88.x.y/16, lo up        │
//!  │ (iptables MASQUERADE opt)│               │ default via 10.88.0.1          │
//!  └──────────────────────────┘               └───────────────────────────────┘
//! ```
//!
//! Lifecycle: [`Network::open`] (bridge ensured, idempotent) → [`Network::attach`] (before
//! the container starts; the runtime joins `Attachment::netns_path` with setns) →
//! [`Network::detach`] (after the container is gone; idempotent) — and
//! [`Network::cleanup_orphans`] at agent start with the ids of instances still alive.
//!
//! Ownership: this module creates the instance network namespace (`ip netns add`, a bind
//! mount under `/run/netns`), so the runtime never needs a pid to wire networking and the
//! namespace outlives a crash of either side until `detach` or orphan cleanup.
//! It must not: create anything outside the configured host namespace, or touch namespaces,
//! links or records whose names lack the configured prefixes.

mod ip;
mod netns;
mod state;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use ip::HostNetns;
pub use netns::run_in_netns;
pub use state::StateDir;

use crate::net::{IpamState, NetConfig, NetError, PortState, validate_instance_id};

/// Where `ip netns add` puts namespace files (iproute2's compiled-in NETNS_RUN_DIR).
pub const NETNS_DIR: &str = "/run/netns";

const IPAM_FILE: &str = "ipam.json";
const PORTS_FILE: &str = "ports.json";
/// Present when this data dir's agent created the bridge (so teardown may delete it).
const BRIDGE_FILE: &str = "bridge.json";
/// The configuration the agent last opened the network with (teardown uses it).
const CONFIG_FILE: &str = "config.json";

/// Present while this data dir's egress NAT rule may exist: the rule exactly as added
/// (`iptables -t nat -A <rule>`), so it can be deleted exactly (`-D <rule>`).
const NAT_FILE: &str = "nat.json";

#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct NatRecord {
    rule: Vec<String>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BridgeRecord {
    /// The bridge this data dir created.
    created: String,
}

/// What an instance got from [`Network::attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The instance's address on the bridge subnet.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The bridge address, the instance's default route.
    pub gateway: Ipv4Addr,
    /// The host-side veth.
    pub host_veth: String,
    /// The namespace file the runtime joins (`setns(fd, CLONE_NEWNET)`) before exec.
    pub netns_path: PathBuf,
}

/// What [`Network::cleanup_orphans`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Network namespaces removed (names).
    pub netns: Vec<String>,
    /// Host veths removed.
    pub veths: Vec<String>,
    /// Address records released (instance ids).
    pub addresses: Vec<String>,
    /// Host-port records released (instance ids).
    pub ports: Vec<String>,
    /// The bridge, when [`Network::teardown`] deleted it.
    pub bridge: Option<String>,
    /// This data dir's egress NAT rule was deleted (`iptables -t nat -S` form).
    pub nat_rule: Option<String>,
}

/// `berth down`'s network half: opens `data_dir`'s networking state with the configuration
/// the agent last ran with (recorded by [`Network::open`]) without creating anything, and
/// removes everything it made ([`Network::teardown`]). A data dir whose agent never opened
/// the network is a no-op. Call after the instances' containers are gone.
pub fn teardown(data_dir: &Path, host: HostNetns) -> Result<CleanupReport, NetError> {
    let path = data_dir.join("net").join(CONFIG_FILE);
    if !path.exists() {
        return Ok(CleanupReport::default());
    }
    let state = StateDir::open(data_dir)?;
    let cfg = {
        let lock = state.lock()?;
        match state.read::<NetConfig>(&lock, CONFIG_FILE)? {
            Some(cfg) => cfg,
            None => return Ok(CleanupReport::default()),
        }
    };
    let net = Network::open_state(cfg, host, data_dir)?;
    let report = net.teardown()?;
    let lock = net.state.lock()?;
    net.state.remove(&lock, CONFIG_FILE)?;
    Ok(report)
}

/// The networking of one host: configuration, the namespace it works in, its state files.
#[derive(Debug)]
pub struct Network {
    cfg: NetConfig,
    host: HostNetns,
    state: StateDir,
    /// The bridge (and NAT) are known to be set up.
    ready: std::sync::atomic::AtomicBool,
}

impl Network {
    /// Validates `cfg`, opens the state under `<data_dir>/net`, and ensures the bridge exists
    /// in `host` with the gateway address and is up (and NAT when configured). Idempotent.
    pub fn open(cfg: NetConfig, host: HostNetns, data_dir: &Path) -> Result<Self, NetError> {
        let net = Self::open_deferred(cfg, host, data_dir)?;
        net.ensure_ready()?;
        Ok(net)
    }

    /// Like [`Network::open`], but the bridge (and NAT) are set up by the first
    /// [`Network::attach`]: an agent that runs only `network: host` instances creates
    /// nothing in the kernel.
    pub fn open_deferred(
        cfg: NetConfig,
        host: HostNetns,
        data_dir: &Path,
    ) -> Result<Self, NetError> {
        let net = Self::open_state(cfg, host, data_dir)?;
        let lock = net.state.lock()?;
        net.state.write(&lock, CONFIG_FILE, &net.cfg)?;
        // A rule left by an earlier run whose NAT was turned off or changed (subnet, bridge):
        // an orphan now.
        if let Some(rec) = net.state.read::<NatRecord>(&lock, NAT_FILE)?
            && (!net.cfg.egress_nat || rec.rule != net.nat_rule())
        {
            net.delete_nat(&lock, &rec)?;
        }
        drop(lock);
        Ok(net)
    }

    fn ensure_ready(&self) -> Result<(), NetError> {
        use std::sync::atomic::Ordering;
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.ensure_bridge()?;
        if self.cfg.egress_nat {
            self.ensure_nat()?;
        }
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Like [`Network::open`] but creates nothing in the kernel (for [`teardown`]).
    fn open_state(cfg: NetConfig, host: HostNetns, data_dir: &Path) -> Result<Self, NetError> {
        cfg.validate()?;
        let state = StateDir::open(data_dir)?;
        {
            let lock = state.lock()?;
            let ipam = state
                .read::<IpamState>(&lock, IPAM_FILE)?
                .unwrap_or_else(|| IpamState::new(cfg.subnet));
            ipam.check_subnet(cfg.subnet)?;
            if ipam.subnet() != cfg.subnet {
                state.write(&lock, IPAM_FILE, &IpamState::new(cfg.subnet))?;
            }
        }
        Ok(Self {
            cfg,
            host,
            state,
            ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    fn ensure_bridge(&self) -> Result<(), NetError> {
        let br = &self.cfg.bridge;
        let gw = format!("{}/{}", self.cfg.subnet.gateway(), self.cfg.subnet.prefix());
        // Looked at under the lock: two first attaches at once (two apps starting their first
        // instances) would otherwise both see no bridge, and the second `link add` would fail
        // with "File exists" (a failed start, and a replaced instance id, under load).
        let lock = self.state.lock()?;
        if ip::ip(&self.host, &["link", "show", "dev", br]).is_err() {
            // Recorded before it exists, so a crash in between cannot leak an unrecorded one.
            self.state.write(
                &lock,
                BRIDGE_FILE,
                &BridgeRecord {
                    created: br.clone(),
                },
            )?;
            ip::ip(&self.host, &["link", "add", br, "type", "bridge"])?;
        }
        drop(lock);
        ip::ip_batch_host(
            &self.host,
            &[
                format!("addr replace {gw} dev {br}"),
                format!("link set dev {br} up"),
            ],
        )
    }

    fn ensure_nat(&self) -> Result<(), NetError> {
        // Forwarding is per network namespace: set it in the host namespace only.
        let path = match &self.host {
            HostNetns::Current => None,
            HostNetns::Named(n) => Some(Path::new(NETNS_DIR).join(n)),
        };
        let write = || std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1\n");
        let res = match path {
            None => write(),
            Some(p) => run_in_netns(&p, write)?,
        };
        res.map_err(|source| NetError::State {
            path: PathBuf::from("/proc/sys/net/ipv4/ip_forward"),
            op: "enable forwarding",
            source,
        })?;
        let rule = self.nat_rule();
        let lock = self.state.lock()?;
        if let Some(old) = self.state.read::<NatRecord>(&lock, NAT_FILE)?
            && old.rule != rule
        {
            self.delete_nat(&lock, &old)?;
        }
        // Recorded before it exists, so a crash in between cannot leak an unrecorded rule.
        self.state
            .write(&lock, NAT_FILE, &NatRecord { rule: rule.clone() })?;
        if self.iptables_nat("-C", &rule).is_err() {
            self.iptables_nat("-A", &rule)?;
        }
        Ok(())
    }

    /// This data dir's MASQUERADE rule. The comment names the data dir (a hash of its
    /// path), so agents sharing a subnet and namespace each own a rule of their own and
    /// teardown deletes exactly ours, never a rule someone else added.
    fn nat_rule(&self) -> Vec<String> {
        use sha2::Digest;
        let dir = self.state.path().to_string_lossy().into_owned();
        let tag = hex::encode(sha2::Sha256::digest(dir.as_bytes()));
        let comment = format!("berth egress-nat {}", tag.get(..16).unwrap_or(&tag));
        [
            "POSTROUTING",
            "-s",
            &self.cfg.subnet.to_string(),
            "!",
            "-o",
            &self.cfg.bridge,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "MASQUERADE",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn iptables_nat(&self, op: &str, rule: &[String]) -> Result<String, NetError> {
        let mut args = vec!["-t", "nat", op];
        args.extend(rule.iter().map(String::as_str));
        ip::iptables(&self.host, &args)
    }

    /// Deletes the recorded rule (every copy of it), then the record. Whether a rule was
    /// there.
    fn delete_nat(&self, lock: &state::StateLock, rec: &NatRecord) -> Result<bool, NetError> {
        let mut deleted = false;
        // Bounded: a rule that `-C` finds but `-D` cannot delete fails the `-D`.
        for _ in 0..16 {
            if self.iptables_nat("-C", &rec.rule).is_err() {
                break;
            }
            self.iptables_nat("-D", &rec.rule)?;
            deleted = true;
        }
        self.state.remove(lock, NAT_FILE)?;
        Ok(deleted)
    }

    /// The namespace file of an instance.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(self.cfg.netns_name(id))
    }

    /// Gives a new instance its network: a namespace, an address, a veth pair on the bridge,
    /// loopback up and a default route via the bridge. Call before the container starts.
    /// Fails with `AlreadyAttached` if the namespace exists (detach first); on failure,
    /// everything made so far is removed again.
    pub fn attach(&self, id: &str) -> Result<Attachment, NetError> {
        validate_instance_id(id)?;
        let ns = self.cfg.netns_name(id);
        let netns_path = self.netns_path(id);
        if netns_path.exists() {
            return Err(NetError::AlreadyAttached { id: id.to_owned() });
        }
        self.ensure_ready()?;
        let ip = {
            let lock = self.state.lock()?;
            let mut ipam = self.load_ipam(&lock)?;
            let ip = ipam.allocate(id)?;
            self.state.write(&lock, IPAM_FILE, &ipam)?;
            ip
        };
        let veth = self.cfg.host_veth(id);
        let attachment = Attachment {
            ip,
            prefix: self.cfg.subnet.prefix(),
            gateway: self.cfg.subnet.gateway(),
            host_veth: veth.clone(),
            netns_path,
        };
        match self.wire(&ns, &attachment) {
            Ok(()) => Ok(attachment),
            Err(e) => {
                if let Err(cleanup) = self.detach(id) {
                    tracing::warn!(instance = id, error = %cleanup, "cleanup after failed attach");
                }
                Err(e)
            }
        }
    }

    fn wire(&self, ns: &str, a: &Attachment) -> Result<(), NetError> {
        ip::ip(&HostNetns::Current, &["netns", "add", ns])?;
        ip::ip_batch_host(
            &self.host,
            &[
                format!(
                    "link add {} type veth peer name eth0 netns {ns}",
                    a.host_veth
                ),
                format!("link set dev {} master {} up", a.host_veth, self.cfg.bridge),
            ],
        )?;
        ip::ip_batch(
            ns,
            &[
                "link set dev lo up".to_owned(),
                format!("addr add {}/{} dev eth0", a.ip, a.prefix),
                "link set dev eth0 up".to_owned(),
                format!("route add default via {}", a.gateway),
            ],
        )
    }

    /// Removes an instance's veth pair and namespace and releases its address. Idempotent:
    /// missing pieces are skipped. Call after the container's processes are gone.
    pub fn detach(&self, id: &str) -> Result<(), NetError> {
        validate_instance_id(id)?;
        let veth = self.cfg.host_veth(id);
        match ip::ip(&self.host, &["link", "del", "dev", &veth]) {
            Ok(_) => {}
            Err(NetError::Command { stderr, .. }) if stderr.contains("Cannot find device") => {}
            Err(e) => return Err(e),
        }
        if self.netns_path(id).exists() {
            ip::ip(
                &HostNetns::Current,
                &["netns", "delete", &self.cfg.netns_name(id)],
            )?;
        }
        let lock = self.state.lock()?;
        let mut ipam = self.load_ipam(&lock)?;
        if ipam.release(id).is_some() {
            self.state.write(&lock, IPAM_FILE, &ipam)?;
        }
        Ok(())
    }

    /// The persisted address of an instance, if any.
    pub fn address_of(&self, id: &str) -> Result<Option<Ipv4Addr>, NetError> {
        let lock = self.state.lock()?;
        Ok(self.load_ipam(&lock)?.get(id))
    }

    /// A host port for a `network: host` instance (its `$PORT`, bound on 127.0.0.1): the same
    /// port again for the same id; ports something else listens on are skipped.
    pub fn allocate_host_port(&self, id: &str) -> Result<u16, NetError> {
        let lock = self.state.lock()?;
        let mut ports = self.load_ports(&lock)?;
        let port = ports.allocate(id, |p| {
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_err()
        })?;
        self.state.write(&lock, PORTS_FILE, &ports)?;
        Ok(port)
    }

    /// Frees an instance's host port. Idempotent.
    pub fn release_host_port(&self, id: &str) -> Result<(), NetError> {
        let lock = self.state.lock()?;
        let mut ports = self.load_ports(&lock)?;
        if ports.release(id).is_some() {
            self.state.write(&lock, PORTS_FILE, &ports)?;
        }
        Ok(())
    }

    /// Removes what a previous run of this data dir left behind for instances not in
    /// `alive`: the namespace (`<netns_prefix><id>`) and host veth of every instance with an
    /// address record here, and the address and port records. Only recorded ids are
    /// touched (attach records the address before it creates anything, detach releases it
    /// last), so namespaces and veths of other agents — even with the same prefixes — and
    /// anything without our prefixes are left alone.
    pub fn cleanup_orphans(&self, alive: &HashSet<String>) -> Result<CleanupReport, NetError> {
        let mut report = CleanupReport::default();
        let recorded: Vec<String> = {
            let lock = self.state.lock()?;
            self.load_ipam(&lock)?
                .allocations()
                .map(|(id, _)| id.to_owned())
                .filter(|id| !alive.contains(id))
                .collect()
        };
        // Veths first: deleting a namespace would take its pair with it unreported.
        let links = if recorded.is_empty() {
            String::new()
        } else {
            ip::ip(&self.host, &["-o", "link", "show", "type", "veth"])?
        };
        let present: HashSet<&str> = links
            .lines()
            // "12: bv1a2b3c4d@if11: <...>"
            .filter_map(|line| line.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name))
            .collect();
        for id in &recorded {
            let veth = self.cfg.host_veth(id);
            if present.contains(veth.as_str()) {
                ip::ip(&self.host, &["link", "del", "dev", &veth])?;
                report.veths.push(veth);
            }
        }
        for id in &recorded {
            if validate_instance_id(id).is_err() {
                continue;
            }
            let name = self.cfg.netns_name(id);
            if Path::new(NETNS_DIR).join(&name).exists() {
                ip::ip(&HostNetns::Current, &["netns", "delete", &name])?;
                report.netns.push(name);
            }
        }
        let lock = self.state.lock()?;
        let mut ipam = self.load_ipam(&lock)?;
        for id in recorded {
            ipam.release(&id);
            report.addresses.push(id);
        }
        self.state.write(&lock, IPAM_FILE, &ipam)?;
        let mut ports = self.load_ports(&lock)?;
        let dead: Vec<String> = ports
            .allocations()
            .map(|(id, _)| id.to_owned())
            .filter(|id| !alive.contains(id))
            .collect();
        for id in dead {
            ports.release(&id);
            report.ports.push(id);
        }
        self.state.write(&lock, PORTS_FILE, &ports)?;
        Ok(report)
    }

    /// Removes everything this data dir's networking made: every recorded instance's
    /// namespace and veth, all address and port records, and the bridge if this data dir
    /// created it. Call after the instances' containers are gone (`berth down`).
    pub fn teardown(&self) -> Result<CleanupReport, NetError> {
        let mut report = self.cleanup_orphans(&HashSet::new())?;
        let lock = self.state.lock()?;
        if let Some(rec) = self.state.read::<BridgeRecord>(&lock, BRIDGE_FILE)? {
            if rec.created == self.cfg.bridge
                && ip::ip(&self.host, &["link", "show", "dev", &rec.created]).is_ok()
            {
                ip::ip(&self.host, &["link", "del", "dev", &rec.created])?;
                report.bridge = Some(rec.created);
            }
            self.state.remove(&lock, BRIDGE_FILE)?;
        }
        if let Some(rec) = self.state.read::<NatRecord>(&lock, NAT_FILE)?
            && self.delete_nat(&lock, &rec)?
        {
            report.nat_rule = Some(rec.rule.join(" "));
        }
        Ok(report)
    }

    fn load_ipam(&self, lock: &state::StateLock) -> Result<IpamState, NetError> {
        Ok(self
            .state
            .read::<IpamState>(lock, IPAM_FILE)?
            .unwrap_or_else(|| IpamState::new(self.cfg.subnet)))
    }

    fn load_ports(&self, lock: &state::StateLock) -> Result<PortState, NetError> {
        let ports = self
            .state
            .read::<PortState>(lock, PORTS_FILE)?
            .unwrap_or_else(|| PortState::new(self.cfg.host_ports));
        if ports.range() != self.cfg.host_ports {
            if ports.allocations().next().is_some() {
                let (lo, hi) = ports.range();
                return Err(NetError::ConfigChanged {
                    pool: format!("host port range {lo}-{hi}"),
                    configured: format!("{}-{}", self.cfg.host_ports.0, self.cfg.host_ports.1),
                });
            }
            return Ok(PortState::new(self.cfg.host_ports));
        }
        Ok(ports)
    }
}
