//! berth-controller: holds the desired state. It owns the git source, the store (embedded by
//! default, etcd for HA), revisions and rollbacks, placement, the agent API, the CLI API, the
//! dashboard and the controller's metrics.
//!
//! It never touches a container, an image or a host's kernel state: that is the agent's job.

pub mod access;
pub mod api;
pub mod assign;
pub mod client;
pub mod dashboard;
pub mod events;
pub mod git;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod model;
pub mod pki;
pub mod process;
pub mod resolve;
pub mod revisions;
pub mod server;
pub mod state;
pub mod store;
pub mod token;

pub use berth_manifests::ErrorKind;
pub use server::{Config, Controller, ControllerHandle, StartError, StoreConfig};
