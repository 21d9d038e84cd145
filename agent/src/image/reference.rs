//! The image store's reference: a [`berth_manifests::ImageRef`] (the one parser of image
//! references, Docker's normalization: `busybox` → `docker.io/library/busybox:latest`) whose
//! digest, when it pins one, is a checked [`Digest`] (sha256, the only algorithm the store
//! verifies).

use std::fmt;
use std::str::FromStr;

use berth_manifests::ImageRef;

use super::digest::Digest;

pub use berth_manifests::reference::{DEFAULT_REGISTRY, DEFAULT_TAG};

/// A parsed, normalised image reference with a checked digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    image: ImageRef,
    digest: Option<Digest>,
}

/// Why a reference was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The text does not follow the reference grammar.
    #[error("invalid image reference {reference:?}: {source}")]
    Invalid {
        /// The text as given.
        reference: String,
        /// The grammar rule it breaks.
        #[source]
        source: berth_manifests::ReferenceError,
    },
    /// The digest is not one the store can verify (sha256).
    #[error("invalid image reference {reference:?}: the image store verifies sha256 digests only")]
    Digest {
        /// The text as given.
        reference: String,
        /// The digest parse error.
        #[source]
        source: super::DigestError,
    },
}

impl Reference {
    /// The registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        self.image.registry()
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        self.image.repository()
    }

    /// The tag, when the reference has one (`latest` was filled in when it had neither).
    pub fn tag(&self) -> Option<&str> {
        self.image.tag()
    }

    /// The digest, when the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository` without tag or digest: the name `berth images` shows.
    pub fn name(&self) -> String {
        self.image.name()
    }

    /// The same image pinned to `digest` (the tag is dropped).
    pub fn with_digest(&self, digest: Digest) -> Result<Self, ReferenceError> {
        let image =
            self.image
                .pinned(&digest.to_string())
                .map_err(|source| ReferenceError::Invalid {
                    reference: format!("{}@{digest}", self.name()),
                    source,
                })?;
        Ok(Self {
            image,
            digest: Some(digest),
        })
    }

    /// `name:tag` when the reference has a tag: the key a tag record is stored under.
    pub fn tagged_name(&self) -> Option<String> {
        self.image.tagged_name()
    }

    /// The reference as the manifests parse it.
    pub fn image_ref(&self) -> &ImageRef {
        &self.image
    }
}

impl TryFrom<ImageRef> for Reference {
    type Error = ReferenceError;

    fn try_from(image: ImageRef) -> Result<Self, ReferenceError> {
        let digest = match image.digest() {
            None => None,
            Some(d) => Some(d.parse().map_err(|source| ReferenceError::Digest {
                reference: image.to_string(),
                source,
            })?),
        };
        Ok(Self { image, digest })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.image.fmt(f)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let image: ImageRef = s.parse().map_err(|source| ReferenceError::Invalid {
            reference: s.to_owned(),
            source,
        })?;
        Self::try_from(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    // The grammar's own tests are in berth-manifests (`reference.rs`); these are the store's.

    #[test]
    fn digests_are_checked_and_pinning_drops_the_tag() {
        let r = parse(&format!("ghcr.io/o/app@{D}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(|d| d.to_string()).as_deref(), Some(D));
        let r = parse(&format!("app:1@{D}"));
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.to_string(), format!("docker.io/library/app:1@{D}"));
        let pinned = parse("busybox:1.36")
            .with_digest(D.parse().unwrap())
            .unwrap();
        assert_eq!(pinned.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(pinned.tagged_name(), None);
        assert_eq!(pinned.digest().map(|d| d.to_string()).as_deref(), Some(D));
    }

    #[test]
    fn sha512_parses_in_manifests_but_the_store_refuses_it() {
        let text = format!("app@sha512:{}", "a".repeat(128));
        assert!(text.parse::<ImageRef>().is_ok());
        let err = text.parse::<Reference>().unwrap_err();
        assert!(matches!(err, ReferenceError::Digest { .. }), "{err}");
        assert!(err.to_string().contains("sha256"), "{err}");
    }

    #[test]
    fn errors_name_the_reference_and_the_rule() {
        let err = "Busybox".parse::<Reference>().unwrap_err();
        assert!(err.to_string().contains("\"Busybox\""), "{err}");
        assert!(err.to_string().contains("lowercase"), "{err}");
        assert_eq!(
            parse("busybox").tagged_name().as_deref(),
            Some("docker.io/library/busybox:latest")
        );
    }
}
