//! Networking configuration: which bridge, which subnet, which name prefixes mark kernel
//! objects as ours, and which host ports `network: host` instances get. Pure data.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ipam::NetError;

/// An IPv4 subnet in CIDR form (`10.88.0.0/16`). The address is normalised to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// A subnet from a network address and a prefix length in 8..=30 (smaller subnets have
    /// no room for a gateway and instances; larger ones are not a bridge subnet).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, NetError> {
        if !(8..=30).contains(&prefix) {
            return Err(NetError::BadSubnet {
                subnet: format!("{addr}/{prefix}"),
                reason: "the prefix length must be between 8 and 30",
            });
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses in the subnet, network and broadcast included.
    pub fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    /// The bridge's address: the first host address (`.1`). Instances route through it.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + self.size() - 1)
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// Whether `ip` may be given to an instance: inside, and not network, gateway or broadcast.
    pub fn assignable(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.gateway() && ip != self.broadcast()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = |reason| NetError::BadSubnet {
            subnet: s.to_owned(),
            reason,
        };
        let (addr, prefix) = s.split_once('/').ok_or(bad("expected ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
        Self::new(addr, prefix)
    }
}

impl TryFrom<String> for Subnet {
    type Error = NetError;
    fn try_from(s: String) -> Result<Self, NetError> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

/// How the agent wires instances. Defaults: bridge `berth0`, subnet `10.88.0.0/16`, kernel
/// object prefix `berth-` (network namespaces `berth-<instance>`, host veths `bv<hash>`), host
/// ports 20000–29999 for `network: host`, no egress NAT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// The bridge's name (≤ 15 bytes, the kernel's limit).
    pub bridge: String,
    /// The instances' subnet; the bridge holds its first address.
    pub subnet: Subnet,
    /// Prefix of instance network namespace names (`/run/netns/<prefix><instance>`). Orphan
    /// cleanup removes only namespaces with this prefix.
    pub netns_prefix: String,
    /// Prefix of host-side veth names (`<prefix><8 hex>`, ≤ 15 bytes in all).
    pub veth_prefix: String,
    /// Host ports for `network: host` instances, inclusive.
    pub host_ports: (u16, u16),
    /// Masquerade traffic from the subnet leaving through another interface (iptables).
    pub egress_nat: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            bridge: "berth0".to_owned(),
            subnet: Subnet {
                network: Ipv4Addr::new(10, 88, 0, 0),
                prefix: 16,
            },
            netns_prefix: "berth-".to_owned(),
            veth_prefix: "bv".to_owned(),
            host_ports: (20000, 29999),
            egress_nat: false,
        }
    }
}

impl NetConfig {
    /// Checks names and ranges before anything is created.
    pub fn validate(&self) -> Result<(), NetError> {
        let bad = |what: &'static str, value: &str| NetError::BadConfig {
            what,
            value: value.to_owned(),
        };
        if self.bridge.is_empty() || self.bridge.len() > 15 || !is_ifname(&self.bridge) {
            return Err(bad("bridge", &self.bridge));
        }
        if self.veth_prefix.is_empty()
            || self.veth_prefix.len() > 7
            || !is_ifname(&self.veth_prefix)
        {
            return Err(bad("veth_prefix", &self.veth_prefix));
        }
        if self.netns_prefix.is_empty()
            || self.netns_prefix.len() > 64
            || validate_name_chars(&self.netns_prefix).is_err()
        {
            return Err(bad("netns_prefix", &self.netns_prefix));
        }
        let (lo, hi) = self.host_ports;
        if lo == 0 || lo > hi {
            return Err(bad("host_ports", &format!("{lo}-{hi}")));
        }
        Ok(())
    }

    /// The network namespace name of an instance.
    pub fn netns_name(&self, instance: &str) -> String {
        format!("{}{}", self.netns_prefix, instance)
    }

    /// The host-side veth name of an instance: the prefix and 8 hex digits of a hash of the
    /// id, since interface names are limited to 15 bytes.
    pub fn host_veth(&self, instance: &str) -> String {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(instance.as_bytes());
        format!("{}{}", self.veth_prefix, hex::encode(&hash[..4]))
    }
}

fn is_ifname(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

pub(super) fn validate_name_chars(s: &str) -> Result<(), ()> {
    if s.starts_with('.')
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_parses_and_normalises() {
        let s: Subnet = "10.88.3.7/16".parse().unwrap();
        assert_eq!(s.to_string(), "10.88.0.0/16");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 88, 255, 255));
        assert!(s.assignable(Ipv4Addr::new(10, 88, 0, 2)));
        assert!(!s.assignable(Ipv4Addr::new(10, 88, 0, 1)));
        assert!(!s.assignable(Ipv4Addr::new(10, 89, 0, 2)));
    }

    #[test]
    fn subnet_rejects_bad_input() {
        for s in [
            "10.0.0.0",
            "10.0.0.0/31",
            "10.0.0.0/4",
            "x/16",
            "10.0.0.0/x",
        ] {
            assert!(s.parse::<Subnet>().is_err(), "{s}");
        }
    }

    #[test]
    fn default_config_is_valid_and_veth_names_fit() {
        let c = NetConfig::default();
        c.validate().unwrap();
        let v = c.host_veth("web-0123456789abcdef-very-long-instance-id");
        assert!(v.len() <= 15, "{v}");
        assert_ne!(v, c.host_veth("web-2"));
    }

    #[test]
    fn config_rejects_long_bridge_names() {
        let c = NetConfig {
            bridge: "a-very-long-bridge-name".into(),
            ..NetConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
