//! Host-local address and port allocation, as pure state machines: an instance id maps to one
//! IPv4 address of the subnet (or one host port of the range). Allocation is idempotent per
//! id and next-fit (a released address is reused only after the rest of the pool has been
//! tried), so a quickly recycled address does not receive a departed instance's traffic.
//!
//! Persistence, locking and the kernel live in [`crate::host::net`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use berth_manifests::ErrorKind;
use serde::{Deserialize, Serialize};

use super::config::{Subnet, validate_name_chars};

/// Errors of network configuration, allocation and wiring.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A subnet string is malformed.
    #[error("bad subnet {subnet:?}: {reason}")]
    BadSubnet {
        /// The text given.
        subnet: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A configuration value is not acceptable.
    #[error("bad network configuration {what}: {value:?}")]
    BadConfig {
        /// The field.
        what: &'static str,
        /// Its value.
        value: String,
    },
    /// An instance id cannot name kernel objects.
    #[error("bad instance id {id:?}: use 1-64 characters of [A-Za-z0-9_.-], not starting with '.'")]
    BadInstanceId {
        /// The id.
        id: String,
    },
    /// No free address or port is left.
    #[error("{pool} is exhausted ({size} entries in use): remove instances or widen it")]
    Exhausted {
        /// Which pool (subnet or port range).
        pool: String,
        /// How many entries it has.
        size: u32,
    },
    /// The persisted state belongs to another subnet or range.
    #[error(
        "persisted {pool} does not match the configured {configured}: remove instances first or restore the old configuration"
    )]
    ConfigChanged {
        /// What the state file holds.
        pool: String,
        /// What is configured.
        configured: String,
    },
    /// An instance is already attached.
    #[error("instance {id} is already attached: detach it first")]
    AlreadyAttached {
        /// The instance.
        id: String,
    },
    /// A state file could not be read, written or locked.
    #[error("network state {path}: {op}")]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// What was done.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A state file is not valid JSON of the expected shape.
    #[error("network state {path} is corrupt: move it away and restart the agent")]
    Corrupt {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// An `ip` (or `iptables`) command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line (and batch input).
        command: String,
        /// Its error output.
        stderr: String,
    },
    /// A command could not be started.
    #[error("cannot run {program}: is iproute2 installed?")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Entering a network namespace failed.
    #[error("cannot enter network namespace {path}")]
    Setns {
        /// The namespace file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl NetError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadSubnet { .. } | Self::BadConfig { .. } | Self::BadInstanceId { .. } => {
                ErrorKind::InvalidInput
            }
            Self::Exhausted { .. } => ErrorKind::ResourceExhausted,
            Self::ConfigChanged { .. } | Self::AlreadyAttached { .. } => ErrorKind::Conflict,
            Self::State { .. } | Self::Command { .. } | Self::Setns { .. } => {
                ErrorKind::Unavailable
            }
            Self::Corrupt { .. } | Self::Spawn { .. } => ErrorKind::Internal,
        }
    }
}

/// Checks that an instance id can name a network namespace file.
pub fn validate_instance_id(id: &str) -> Result<(), NetError> {
    if id.is_empty() || id.len() > 64 || validate_name_chars(id).is_err() {
        return Err(NetError::BadInstanceId { id: id.to_owned() });
    }
    Ok(())
}

/// A next-fit pool over `lo..=hi` with per-id, idempotent allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pool {
    /// id -> value.
    allocations: BTreeMap<String, u32>,
    /// Where the next search starts.
    next: u32,
}

impl Pool {
    fn allocate(
        &mut self,
        id: &str,
        lo: u32,
        hi: u32,
        usable: impl Fn(u32) -> bool,
        pool: impl Fn() -> String,
    ) -> Result<u32, NetError> {
        validate_instance_id(id)?;
        if let Some(&v) = self.allocations.get(id) {
            return Ok(v);
        }
        let used: std::collections::BTreeSet<u32> = self.allocations.values().copied().collect();
        let size = hi - lo + 1;
        let start = if (lo..=hi).contains(&self.next) {
            self.next
        } else {
            lo
        };
        for i in 0..size {
            let v = lo + (start - lo + i) % size;
            if usable(v) && !used.contains(&v) {
                self.allocations.insert(id.to_owned(), v);
                self.next = if v == hi { lo } else { v + 1 };
                return Ok(v);
            }
        }
        Err(NetError::Exhausted { pool: pool(), size })
    }
}

/// Address allocations of one subnet. The gateway (`.1`), network and broadcast addresses are
/// never given out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamState {
    subnet: Subnet,
    pool: Pool,
}

impl IpamState {
    /// An empty state for `subnet`.
    pub fn new(subnet: Subnet) -> Self {
        Self {
            subnet,
            pool: Pool {
                allocations: BTreeMap::new(),
                next: u32::from(subnet.network()) + 2,
            },
        }
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Fails when a persisted state belongs to another subnet while it still has allocations
    /// (an empty state is simply replaced by the caller).
    pub fn check_subnet(&self, configured: Subnet) -> Result<(), NetError> {
        if self.subnet != configured && !self.pool.allocations.is_empty() {
            return Err(NetError::ConfigChanged {
                pool: format!("subnet {}", self.subnet),
                configured: configured.to_string(),
            });
        }
        Ok(())
    }

    /// The address of `id`, allocating one if it has none.
    pub fn allocate(&mut self, id: &str) -> Result<Ipv4Addr, NetError> {
        let s = self.subnet;
        let lo = u32::from(s.network());
        let hi = u32::from(s.broadcast());
        self.pool
            .allocate(
                id,
                lo,
                hi,
                |v| s.assignable(Ipv4Addr::from(v)),
                || format!("subnet {s}"),
            )
            .map(Ipv4Addr::from)
    }

    /// Frees `id`'s address; returns it if there was one.
    pub fn release(&mut self, id: &str) -> Option<Ipv4Addr> {
        self.pool.allocations.remove(id).map(Ipv4Addr::from)
    }

    /// The address of `id`, if allocated.
    pub fn get(&self, id: &str) -> Option<Ipv4Addr> {
        self.pool.allocations.get(id).copied().map(Ipv4Addr::from)
    }

    /// Every allocation, by id.
    pub fn allocations(&self) -> impl Iterator<Item = (&str, Ipv4Addr)> {
        self.pool
            .allocations
            .iter()
            .map(|(k, v)| (k.as_str(), Ipv4Addr::from(*v)))
    }
}

/// Host-port allocations of `network: host` instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortState {
    range: (u16, u16),
    pool: Pool,
}

impl PortState {
    /// An empty state for the inclusive range.
    pub fn new(range: (u16, u16)) -> Self {
        Self {
            range,
            pool: Pool {
                allocations: BTreeMap::new(),
                next: u32::from(range.0),
            },
        }
    }

    /// The range.
    pub fn range(&self) -> (u16, u16) {
        self.range
    }

    /// The port of `id`, allocating one if it has none. `in_use` reports ports held by other
    /// programs (the caller probes them), which are skipped.
    pub fn allocate(&mut self, id: &str, in_use: impl Fn(u16) -> bool) -> Result<u16, NetError> {
        let (lo, hi) = self.range;
        self.pool
            .allocate(
                id,
                u32::from(lo),
                u32::from(hi),
                |v| u16::try_from(v).is_ok_and(|p| !in_use(p)),
                || format!("host port range {lo}-{hi}"),
            )
            .and_then(|v| {
                u16::try_from(v).map_err(|_| NetError::BadConfig {
                    what: "host_ports",
                    value: format!("{lo}-{hi}"),
                })
            })
    }

    /// Frees `id`'s port.
    pub fn release(&mut self, id: &str) -> Option<u16> {
        self.pool
            .allocations
            .remove(id)
            .and_then(|v| u16::try_from(v).ok())
    }

    /// The port of `id`, if allocated.
    pub fn get(&self, id: &str) -> Option<u16> {
        self.pool
            .allocations
            .get(id)
            .and_then(|v| u16::try_from(*v).ok())
    }

    /// Every allocation, by id.
    pub fn allocations(&self) -> impl Iterator<Item = (&str, u16)> {
        self.pool
            .allocations
            .iter()
            .filter_map(|(k, v)| u16::try_from(*v).ok().map(|p| (k.as_str(), p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subnet(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn allocation_skips_gateway_and_is_idempotent() {
        let mut st = IpamState::new(subnet("10.88.0.0/16"));
        let a = st.allocate("a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(st.allocate("a").unwrap(), a);
        assert_eq!(st.allocate("b").unwrap(), Ipv4Addr::new(10, 88, 0, 3));
    }

    #[test]
    fn released_address_is_reused_only_after_the_rest() {
        let mut st = IpamState::new(subnet("10.0.0.0/29")); // .2 .. .6 usable
        let a = st.allocate("a").unwrap();
        assert_eq!(st.release("a"), Some(a));
        assert_ne!(st.allocate("b").unwrap(), a);
        for id in ["c", "d", "e"] {
            st.allocate(id).unwrap();
        }
        // .2 was the only free one left: it wraps around.
        assert_eq!(st.allocate("f").unwrap(), a);
        let err = st.allocate("g").unwrap_err();
        assert!(matches!(err, NetError::Exhausted { .. }));
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    }

    #[test]
    fn bad_ids_are_refused() {
        let mut st = IpamState::new(subnet("10.0.0.0/24"));
        for id in ["", "../x", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(st.allocate(id).is_err(), "{id:?}");
        }
    }

    #[test]
    fn changed_subnet_with_allocations_is_a_conflict() {
        let mut st = IpamState::new(subnet("10.0.0.0/24"));
        st.check_subnet(subnet("10.1.0.0/24")).unwrap();
        st.allocate("a").unwrap();
        assert_eq!(
            st.check_subnet(subnet("10.1.0.0/24")).unwrap_err().kind(),
            ErrorKind::Conflict
        );
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut st = IpamState::new(subnet("10.0.0.0/24"));
        st.allocate("a").unwrap();
        st.allocate("b").unwrap();
        st.release("a");
        let back: IpamState = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(back, st);
        let mut back = back;
        assert_eq!(back.allocate("c").unwrap(), Ipv4Addr::new(10, 0, 0, 4));
    }

    #[test]
    fn ports_skip_ones_in_use() {
        let mut st = PortState::new((20000, 20002));
        assert_eq!(st.allocate("a", |p| p == 20000).unwrap(), 20001);
        assert_eq!(st.allocate("b", |_| false).unwrap(), 20002);
        assert_eq!(st.allocate("c", |_| false).unwrap(), 20000);
        assert!(st.allocate("d", |_| false).is_err());
        assert_eq!(st.release("b"), Some(20002));
        assert_eq!(st.allocate("d", |_| false).unwrap(), 20002);
    }

    proptest! {
        #[test]
        fn allocations_are_distinct_and_assignable(ops in proptest::collection::vec((0u8..40, any::<bool>()), 0..200)) {
            let s = subnet("10.9.0.0/27");
            let mut st = IpamState::new(s);
            for (id, alloc) in ops {
                let id = format!("i{id}");
                if alloc { let _ = st.allocate(&id); } else { st.release(&id); }
                let ips: Vec<Ipv4Addr> = st.allocations().map(|(_, ip)| ip).collect();
                let set: std::collections::BTreeSet<_> = ips.iter().collect();
                prop_assert_eq!(set.len(), ips.len());
                prop_assert!(ips.iter().all(|ip| s.assignable(*ip)));
            }
        }
    }
}
