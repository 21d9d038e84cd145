//! berth-manifests: the app manifest schema (DESIGN.md §3), parsing of YAML sources with
//! `path:line:col` errors, validation across files, revision identity (a content hash of the
//! normalized spec), and the wire types the controller and agent exchange.
//!
//! This crate is pure: it takes file names and bytes as arguments and returns values. It must
//! not touch the filesystem, the network, the clock or processes; callers read the files.

pub mod reference;
pub mod signal;
pub mod units;

pub use reference::{ImageRef, ReferenceError};
pub use signal::Signal;
pub use units::{ByteSize, Cpu, Duration, UnitError};
