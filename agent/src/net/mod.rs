//! Pure parts of instance networking: the configuration (bridge, subnet, name prefixes, host
//! port range) and the allocation logic of the host-local IPAM and of the host-port pool.
//!
//! Nothing here touches the kernel or the disk: [`crate::host::net`] persists these states
//! (flock + atomic writes) and creates the bridge, veths and network namespaces.

pub mod config;
pub mod ipam;

pub use config::{NetConfig, Subnet};
pub use ipam::{IpamState, NetError, PortState, validate_instance_id};
