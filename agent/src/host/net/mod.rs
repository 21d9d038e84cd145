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
}

/// The networking of one host: configuration, the namespace it works in, its state files.
#[derive(Debug)]
pub struct Network {
    cfg: NetConfig,
    host: HostNetns,
    state: StateDir,
}

impl Network {
    /// Validates `cfg`, opens the state under `<data_dir>/net`, and ensures the bridge exists
    /// in `host` with the gateway address and is up (and NAT when configured). Idempotent.
    pub fn open(cfg: NetConfig, host: HostNetns, data_dir: &Path) -> Result<Self, NetError> {
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
        let net = Self { cfg, host, state };
        net.ensure_bridge()?;
        if net.cfg.egress_nat {
            net.ensure_nat()?;
        }
        Ok(net)
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    fn ensure_bridge(&self) -> Result<(), NetError> {
        let br = &self.cfg.bridge;
        let gw = format!("{}/{}", self.cfg.subnet.gateway(), self.cfg.subnet.prefix());
        if ip::ip(&self.host, &["link", "show", "dev", br]).is_err() {
            ip::ip(&self.host, &["link", "add", br, "type", "bridge"])?;
        }
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
        let subnet = self.cfg.subnet.to_string();
        let rule = [
            "POSTROUTING",
            "-s",
            subnet.as_str(),
            "!",
            "-o",
            self.cfg.bridge.as_str(),
            "-j",
            "MASQUERADE",
        ];
        let mut check = vec!["-t", "nat", "-C"];
        check.extend_from_slice(&rule);
        if ip::iptables(&self.host, &check).is_err() {
            let mut add = vec!["-t", "nat", "-A"];
            add.extend_from_slice(&rule);
            ip::iptables(&self.host, &add)?;
        }
        Ok(())
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

    /// Removes what a previous run left behind for instances not in `alive`: namespaces named
    /// `<netns_prefix>*`, host veths named `<veth_prefix>*` on no alive instance, and address
    /// and port records. Anything without our prefixes is left alone.
    pub fn cleanup_orphans(&self, alive: &HashSet<String>) -> Result<CleanupReport, NetError> {
        let mut report = CleanupReport::default();
        // Veths first: deleting a namespace would take its pair with it unreported.
        let keep: HashSet<String> = alive.iter().map(|id| self.cfg.host_veth(id)).collect();
        let links = ip::ip(&self.host, &["-o", "link", "show", "type", "veth"])?;
        for line in links.lines() {
            // "12: bv1a2b3c4d@if11: <...>"
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(self.cfg.veth_prefix.as_str()) && !keep.contains(name) {
                ip::ip(&self.host, &["link", "del", "dev", name])?;
                report.veths.push(name.to_owned());
            }
        }
        let prefix = &self.cfg.netns_prefix;
        let entries = match std::fs::read_dir(NETNS_DIR) {
            Ok(d) => d.filter_map(Result::ok).collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(NetError::State {
                    path: NETNS_DIR.into(),
                    op: "list",
                    source,
                });
            }
        };
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix(prefix.as_str()) else {
                continue;
            };
            if alive.contains(id) || validate_instance_id(id).is_err() {
                continue;
            }
            ip::ip(&HostNetns::Current, &["netns", "delete", &name])?;
            report.netns.push(name);
        }
        let lock = self.state.lock()?;
        let mut ipam = self.load_ipam(&lock)?;
        let dead: Vec<String> = ipam
            .allocations()
            .map(|(id, _)| id.to_owned())
            .filter(|id| !alive.contains(id))
            .collect();
        for id in dead {
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
