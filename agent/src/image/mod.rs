//! The image store's pure parts: docker-style references, digests and chain ids, platform
//! selection from an index, image records and garbage-collection decisions.
//!
//! Nothing here touches the disk, the network or the clock: the store that pulls, verifies,
//! unpacks and deletes lives in [`crate::host::image_store`] (with the content store in
//! [`crate::host::content`], extraction in [`crate::host::unpack`] and the registry client in
//! [`crate::host::registry`]), and calls these functions to decide.

pub mod digest;
pub mod gc;
pub mod platform;
pub mod record;
pub mod reference;

pub use digest::{Digest, DigestError};
pub use platform::Platform;
pub use record::{ImageRecord, LayerRecord};
pub use reference::{Reference, ReferenceError};

/// The class of an image-store error: drives retries, exit codes and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The caller asked for something malformed or refused by policy; retrying won't help.
    InvalidInput,
    /// The image, tag or blob does not exist.
    NotFound,
    /// The image is in use, or another operation holds it.
    Conflict,
    /// The registry or the disk is unreachable for now; retry later.
    Unavailable,
    /// A size, count or disk limit was reached.
    ResourceExhausted,
    /// Content failed verification (digest, size, diff_id) or a bug: never retried blindly.
    Internal,
}
