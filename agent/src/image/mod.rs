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

/// The class of an image-store error (shared by every crate): drives retries, exit codes
/// and metric labels. Content that fails verification is `Internal`: never retried blindly.
pub use berth_manifests::ErrorKind;
