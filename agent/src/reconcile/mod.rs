//! Reconcile: make one app on this host match its assignment.
//!
//! The contract (kube-rs's controller): level-triggered (each pass looks at what runs, not at
//! what changed), idempotent, one pass in flight per app, and every pass ends with a time to
//! come back (probes due, restart backoff, stop grace, periodic resync). Errors are handled by
//! class: transient ones (registry or runtime unavailable) back off with jitter; invalid input
//! (an image that cannot run) marks the revision failed and waits for a change.
//!
//! [`plan::plan`] decides (pure: desired, observed, history, now → steps); [`exec`] observes,
//! probes and applies the steps through the [`traits`].

pub mod exec;
pub mod fake;
pub mod history;
pub mod plan;
pub mod traits;
