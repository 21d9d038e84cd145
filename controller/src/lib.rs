//! berth-controller: holds the desired state. It owns the git source, the store (embedded by
//! default, etcd for HA), revisions and rollbacks, placement, the agent API, the CLI API, the
//! dashboard and the controller's metrics.
//!
//! It never touches a container, an image or a host's kernel state: that is the agent's job.

pub mod git;
pub mod process;
pub mod store;

/// The class of an error (containerd's errdefs). To be replaced by the shared
/// `berth_manifests::ErrorKind` when the manifests crate lands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is wrong; retrying the same input fails again.
    InvalidInput,
    /// The thing named does not exist.
    NotFound,
    /// The input contradicts other input or existing state.
    Conflict,
    /// A dependency is not reachable now; retrying later may work.
    Unavailable,
    /// A size, depth or count limit was hit.
    ResourceExhausted,
    /// A bug in berth.
    Internal,
}
