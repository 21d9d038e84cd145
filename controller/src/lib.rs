//! berth-controller: holds the desired state. It owns the git source, the store (embedded by
//! default, etcd for HA), revisions and rollbacks, placement, the agent API, the CLI API, the
//! dashboard and the controller's metrics.
//!
//! It never touches a container, an image or a host's kernel state: that is the agent's job.

pub mod git;
pub mod process;
pub mod store;

pub use berth_manifests::ErrorKind;
