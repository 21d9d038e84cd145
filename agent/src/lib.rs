//! berth-agent: makes one host match its assignment. It owns reconcile (a pure planner plus an
//! executor), the container runtime (namespaces, rootfs, cgroups, shim), the image store (pull,
//! verify, unpack, GC), the proxy, probes, the autoscaler, local state and the agent's metrics.
//!
//! Everything that talks to the Linux kernel or the disk lives under [`host`], behind narrow
//! traits, so the rest of the crate is testable without root. The agent never decides the
//! desired state: that comes from the controller (or from `berth up`'s embedded controller).

pub mod autoscale;
pub mod daemon;
pub mod health;
pub mod host;
pub mod image;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod reconcile;
pub mod restart;
pub mod rollout;
pub mod runtime;
