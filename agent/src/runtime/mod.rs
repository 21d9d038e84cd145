//! The container runtime's pure half: what a container is (its [`spec::ContainerSpec`]), the
//! states it moves through ([`state::Status`] with its guards), its identity ([`id`]), the
//! capability set ([`caps`]) and user lookup ([`user`]). Nothing here makes a system call,
//! reads a file or the clock: `agent::host::container` does the work and calls in here for
//! every decision, so each decision is unit-tested without root.
//!
//! # Lifecycle
//!
//! ```text
//!                 berth run / runtime create
//!                           |
//!                           v
//!   +----------+  init ready, waits  +---------+  start (exec the program)  +---------+
//!   | creating | ------------------> | created | -------------------------> | running |
//!   +----------+                     +---------+                            +---------+
//!        |                                |  kill / program never ran           |
//!        | setup failed                   v                                     | pid 1 exited,
//!        |                           +---------+ <------------------------------+ killed, OOM
//!        +-------------------------> | stopped |
//!                                    +---------+
//!                                         | rm / delete (state dir, cgroup, upper dir gone)
//!                                         v
//!                                      (gone)
//! ```
//!
//! `berth run` passes through `created` without stopping (the init execs at once);
//! `berth runtime create` stops there until `runtime start`. The guards
//! ([`state::Status::can_start`], [`state::Status::can_kill`], [`state::Status::can_delete`])
//! are the only place these transitions are decided.

pub mod caps;
pub mod error;
pub mod id;
pub mod oci;
pub mod spec;
pub mod state;
pub mod user;

pub use error::{ErrorKind, RuntimeError};
