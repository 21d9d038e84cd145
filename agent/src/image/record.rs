//! Image records: what the store keeps about one pulled image (by manifest digest), and the
//! use marks that keep an image from being removed.

use super::digest::Digest;
use super::platform::Platform;

/// One pulled image, stored as `records/<manifest-hex>.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    /// The digest of the image manifest (not of an index that pointed to it).
    pub manifest_digest: Digest,
    /// The digest of the index or manifest list the manifest was chosen from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    /// The image config blob's digest (the "image id" docker shows).
    pub config_digest: Digest,
    /// `registry/repository` names this image was pulled under (tags or digests).
    pub repositories: Vec<String>,
    /// `registry/repository:tag` names that currently point here.
    pub tags: Vec<String>,
    /// `registry/repository@sha256:…` references this image was pulled by (revisions pin
    /// digests). An image with neither tags nor these is dangling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digest_refs: Vec<String>,
    /// The platform of the manifest.
    pub platform: Platform,
    /// The config's `created` timestamp (RFC 3339), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// When this host pulled it, seconds since the Unix epoch.
    pub pulled_at: u64,
    /// Layers, lowest first.
    pub layers: Vec<LayerRecord>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as served (compressed).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Compressed size in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar (from the config, verified on unpack).
    pub diff_id: Digest,
    /// The chain id that names the layer's snapshot.
    pub chain_id: Digest,
    /// Bytes of file content in the snapshot.
    pub unpacked_size: u64,
}

impl ImageRecord {
    /// Bytes on disk of all snapshots (shared layers counted in full).
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.unpacked_size).sum()
    }

    /// No tag and no digest reference names it: what a tag moved away from.
    pub fn is_dangling(&self) -> bool {
        self.tags.is_empty() && self.digest_refs.is_empty()
    }

    /// The chain ids of the layers, lowest first.
    pub fn chain_ids(&self) -> impl Iterator<Item = &Digest> {
        self.layers.iter().map(|l| &l.chain_id)
    }
}

/// A mark that something (a container, a revision) needs an image: GC and `rmi` keep it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageUse {
    /// Who holds the image, e.g. `container/<id>` or `revision/<app>/<n>`. Unique per holder:
    /// marking again replaces the holder's previous image.
    pub holder: String,
    /// The manifest digest held.
    pub image: Digest,
}

/// Holder names become file names: letters, digits, `.`, `_`, `-` and `/` between non-empty
/// components, nothing else, at most 200 bytes.
pub fn valid_holder(holder: &str) -> bool {
    !holder.is_empty()
        && holder.len() <= 200
        && holder.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_names_cannot_escape_the_uses_dir() {
        assert!(valid_holder("container/abc-1"));
        assert!(valid_holder("revision/web/12"));
        for bad in ["", "../x", "a//b", "/a", "a/", "a/./b", "a b", "a\0b"] {
            assert!(!valid_holder(bad), "{bad:?}");
        }
    }
}
