//! Docker-style image references: `busybox` → `docker.io/library/busybox:latest`,
//! `ghcr.io/o/app:1.4`, `127.0.0.1:5000/app@sha256:…`, `app:1.4@sha256:…` (the digest wins).
//!
//! The grammar follows the distribution project's reference rules: the first path component is
//! a registry when it contains `.` or `:` or is `localhost`; otherwise the registry is
//! `docker.io` and one-component names get the `library/` prefix.

use std::fmt;
use std::str::FromStr;

use super::digest::Digest;

/// The registry that names without one refer to.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of names that carry neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a reference was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The text is empty or has characters no reference may hold.
    #[error("invalid image reference {reference:?}: {reason}")]
    Invalid {
        /// The text as given.
        reference: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The part after `@` is not a sha256 digest.
    #[error("invalid image reference {reference:?}")]
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
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, when the reference has one (`latest` was filled in when it had neither).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, when the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository` without tag or digest: the name `berth images` shows.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same image pinned to `digest` (the tag is dropped).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// `name:tag` when the reference has a tag: the key a tag record is stored under.
    pub fn tagged_name(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn invalid(reference: &str, reason: &'static str) -> ReferenceError {
    ReferenceError::Invalid {
        reference: reference.to_owned(),
        reason,
    }
}

fn is_registry(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn valid_registry(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || name.starts_with('[') => (name, Some(port)),
        _ => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    name_ok && port_ok
}

/// One path component: lower-case alphanumerics, separated by `.`, `_`, `__` or runs of `-`.
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut prev_sep: Option<u8> = None;
    let mut sep_len = 0;
    for b in bytes {
        if alnum(b) {
            prev_sep = None;
            sep_len = 0;
            continue;
        }
        match (b, prev_sep) {
            (b'-', None | Some(b'-')) => {}
            (b'_', None) => {}
            (b'_', Some(b'_')) if sep_len == 1 => {}
            (b'.', None) => {}
            _ => return false,
        }
        prev_sep = Some(*b);
        sep_len += 1;
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let bytes = t.as_bytes();
    match bytes.first() {
        Some(b) if b.is_ascii_alphanumeric() || *b == b'_' => {}
        _ => return false,
    }
    bytes.len() <= 128
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 4096 {
            return Err(invalid(s, "empty or longer than 4096 characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let digest = d.parse().map_err(|source| ReferenceError::Digest {
                    reference: s.to_owned(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (s, None),
        };
        // A tag is a `:` after the last `/` (a `:` before it belongs to the registry's port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(invalid(
                        s,
                        "the tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
                    ));
                }
                (&rest[..last_slash + i], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        let (registry, repository) = match path.split_once('/') {
            Some((first, remainder)) if is_registry(first) => {
                (first.to_owned(), remainder.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), path.to_owned()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DEFAULT_REGISTRY.to_owned()
        } else {
            registry
        };
        if !valid_registry(&registry) {
            return Err(invalid(
                s,
                "the registry must be a host name with an optional port",
            ));
        }
        if repository.len() > 255 || !repository.split('/').all(valid_component) {
            return Err(invalid(
                s,
                "repository path components must be lower-case letters and digits separated by '.', '_', '__' or '-'",
            ));
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn short_names_are_docker_hub_library_latest() {
        assert_eq!(
            parse("busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            parse("busybox:1.36").to_string(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(parse("user/app").to_string(), "docker.io/user/app:latest");
        assert_eq!(
            parse("index.docker.io/library/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn registry_with_port_is_not_mistaken_for_a_tag() {
        let r = parse("127.0.0.1:5000/berth-test/hello");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "berth-test/hello");
        assert_eq!(r.tag(), Some("latest"));
        let r = parse("localhost/app:v2");
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost", "app", Some("v2"))
        );
    }

    #[test]
    fn digest_references_have_no_default_tag() {
        let r = parse(&format!("ghcr.io/o/app@{D}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(|d| d.to_string()).as_deref(), Some(D));
        let r = parse(&format!("app:1@{D}"));
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.to_string(), format!("docker.io/library/app:1@{D}"));
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "Busybox",
            "a//b",
            "app:",
            "app:-x",
            "app@sha256:12",
            "/app",
            "app/",
            "a/../b",
            "reg.io/a b",
            "app:tag/with/slash:x",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn component_separators_follow_the_distribution_grammar() {
        for ok in ["a_b", "a__b", "a-b", "a---b", "a.b", "a0"] {
            assert!(valid_component(ok), "{ok} refused");
        }
        for bad in ["a___b", "a..b", "a._b", "_a", "a-", ".."] {
            assert!(!valid_component(bad), "{bad} accepted");
        }
    }
}
