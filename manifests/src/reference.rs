//! Image references (`busybox`, `host:5000/a/b:tag`, `name@sha256:<64 hex>`), parsed by the
//! grammar of the distribution project and normalized by Docker's rules: no registry means
//! `docker.io`, a single-component name on Docker Hub gets `library/`, no tag and no digest
//! means `:latest`. The one parser of image references: the controller resolves and the agent
//! pulls with it (the agent's `image::Reference` wraps it with a checked sha256 digest). This
//! module never touches a network.
//!
//! Where Docker's CLI and the distribution grammar differ from what one might expect:
//! only `index.docker.io` is an alias of `docker.io` (`registry-1.docker.io` is a registry of
//! its own, as in `distribution/reference`'s `normalize.go`); a first component with an
//! uppercase letter is a registry (`Foo/bar`); `registry/repository` is at most 255
//! characters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Docker Hub, the registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of references that name neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// The longest `registry/repository` the distribution grammar allows.
pub const MAX_NAME_LEN: usize = 255;

/// A normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why a reference did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing written.
    #[error("empty image reference")]
    Empty,
    /// `registry/repository` longer than 255 characters.
    #[error("name longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    /// Invalid registry host or port.
    #[error("invalid registry `{0}` (expected a host name or address with an optional :port)")]
    Registry(String),
    /// Uppercase in the repository.
    #[error("repository `{0}` must be lowercase")]
    Uppercase(String),
    /// A bad path component.
    #[error(
        "invalid repository component `{0}` (lowercase letters and digits, separated by `.`, `_`, `__` or dashes)"
    )]
    Component(String),
    /// A bad tag.
    #[error(
        "invalid tag `{0}` (letters, digits, `_`, `.`, `-`, at most 128, not starting with `.` or `-`)"
    )]
    Tag(String),
    /// A bad digest.
    #[error(
        "invalid digest `{0}` (expected sha256:<64 lowercase hex> or sha512:<128 lowercase hex>)"
    )]
    Digest(String),
}

impl ReferenceError {
    /// Always invalid input: the reference as written is wrong.
    pub fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::InvalidInput
    }
}

fn is_domain_component(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn valid_registry(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        // [IPv6]:port
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty()
            || !addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err())
    {
        return false;
    }
    host.is_empty() && s.starts_with('[')
        || !host.is_empty() && host.split('.').all(is_domain_component)
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__", or any number of "-"
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_digest(s: &str) -> bool {
    let Some((alg, hex)) = s.split_once(':') else {
        return false;
    };
    let len = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ImageRef {
    /// The registry host (and port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when neither tag nor digest was written).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`sha256:…`), if one was written. When both are present the digest wins.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same image in another registry (e.g. a local mirror of `docker.io` in tests and
    /// air-gapped hosts). `library/` stays as it was normalized.
    pub fn with_registry(&self, registry: &str) -> Result<Self, ReferenceError> {
        if !valid_registry(registry) {
            return Err(ReferenceError::Registry(registry.to_owned()));
        }
        Ok(Self {
            registry: registry.to_owned(),
            ..self.clone()
        })
    }

    /// `registry/repository:tag` when the reference has a tag (the key a tag is stored under).
    pub fn tagged_name(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// The same image pinned to `digest` alone: the tag is dropped, so the reference names
    /// exactly one manifest (an image store pulls a platform's manifest of an index so).
    pub fn pinned(&self, digest: &str) -> Result<Self, ReferenceError> {
        let mut r = self.with_digest(digest)?;
        r.tag = None;
        Ok(r)
    }

    /// The same reference pinned to `digest` (the controller resolves tags once).
    pub fn with_digest(&self, digest: &str) -> Result<Self, ReferenceError> {
        if !valid_digest(digest) {
            return Err(ReferenceError::Digest(digest.to_owned()));
        }
        Ok(Self {
            digest: Some(digest.to_owned()),
            ..self.clone()
        })
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !valid_digest(d) {
                    return Err(ReferenceError::Digest(d.to_owned()));
                }
                (r, Some(d.to_owned()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/' (a registry port comes before).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(ReferenceError::Tag(tag.to_owned()));
                }
                (&rest[..last_slash + i], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Empty);
        }
        // Docker's rule: the first component is a registry if it has `.` or `:`, is
        // `localhost`, or has uppercase letters.
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                if !valid_registry(first) {
                    return Err(ReferenceError::Registry(first.to_owned()));
                }
                let registry = if first == "index.docker.io" {
                    DEFAULT_REGISTRY
                } else {
                    first
                };
                (registry.to_owned(), path)
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name),
        };
        for component in path.split('/') {
            if component.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(ReferenceError::Uppercase(path.to_owned()));
            }
            if !valid_component(component) {
                return Err(ReferenceError::Component(component.to_owned()));
            }
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong);
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            _ => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    /// The normalized form: `registry/repository[:tag][@digest]`.
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

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn norm(s: &str) -> String {
        s.parse::<ImageRef>()
            .map(|r| r.to_string())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn short_names_normalize_to_docker_hub_library_latest() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(
            norm("berth-test/hello"),
            "docker.io/berth-test/hello:latest"
        );
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn registries_with_ports_and_nested_paths_are_kept() {
        assert_eq!(norm("host:5000/a/b:tag"), "host:5000/a/b:tag");
        assert_eq!(
            norm("127.0.0.1:5000/berth-test/hello"),
            "127.0.0.1:5000/berth-test/hello:latest"
        );
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("[::1]:5000/app:v1"), "[::1]:5000/app:v1");
        assert_eq!(norm("registry.example/web:1.4"), "registry.example/web:1.4");
        let r: ImageRef = "host:5000/a/b:tag".parse().unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("host:5000", "a/b", Some("tag"))
        );
    }

    #[test]
    fn digests_pin_and_tags_plus_digests_keep_both() {
        assert_eq!(
            norm(&format!("busybox@sha256:{HEX}")),
            format!("docker.io/library/busybox@sha256:{HEX}")
        );
        assert_eq!(
            norm(&format!("busybox:1.36@sha256:{HEX}")),
            format!("docker.io/library/busybox:1.36@sha256:{HEX}")
        );
        let r: ImageRef = format!("h:1/x@sha256:{HEX}").parse().unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(format!("sha256:{HEX}").as_str()));
    }

    #[test]
    fn invalid_references_are_rejected_with_the_reason() {
        assert_eq!(norm(""), "error: empty image reference");
        assert!(
            norm("Busybox").contains("registry") || norm("Busybox").contains("lowercase"),
            "{}",
            norm("Busybox")
        );
        assert!(norm("example.com/Web").contains("lowercase"));
        assert!(norm("busybox:").contains("invalid tag"));
        assert!(norm("busybox:-x").contains("invalid tag"));
        assert!(norm(&format!("busybox:{}", "t".repeat(129))).contains("invalid tag"));
        assert!(norm("busybox@sha256:abc").contains("invalid digest"));
        assert!(norm(&format!("busybox@sha256:{}", HEX.to_uppercase())).contains("invalid digest"));
        assert!(norm(&format!("busybox@md5:{HEX}")).contains("invalid digest"));
        assert!(norm("a//b").contains("component"));
        assert!(norm("a/b-").contains("component"));
        assert!(norm("a/b...c").contains("component"));
        assert!(norm("a b").contains("component"));
        assert!(norm("host:99999/a").contains("registry"));
        assert!(norm("-host.com/a").contains("registry"));
        assert!(norm(&format!("example.com/{}", "a".repeat(260))).contains("longer"));
    }

    #[test]
    fn separators_follow_the_distribution_grammar() {
        for ok in ["a_b", "a__b", "a.b", "a-b", "a---b", "a1/b2", "a0"] {
            assert!(ok.parse::<ImageRef>().is_ok(), "{ok}");
        }
        for bad in [
            "a___b", "a._b", "_a", "a.", ".a", "a..b", "a-", "..", "a_-b",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn retargeting_keeps_the_path_and_pins_digests() {
        let r: ImageRef = "berth-test/hello".parse().unwrap();
        assert_eq!(
            r.with_registry("127.0.0.1:5000").unwrap().to_string(),
            "127.0.0.1:5000/berth-test/hello:latest"
        );
        assert!(r.with_registry("bad host").is_err());
        let pinned = r.with_digest(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(
            pinned.to_string(),
            format!("docker.io/berth-test/hello:latest@sha256:{HEX}")
        );
    }

    #[test]
    fn parts_of_registry_port_and_localhost_references() {
        let r: ImageRef = "127.0.0.1:5000/berth-test/hello".parse().unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag(), r.digest()),
            ("127.0.0.1:5000", "berth-test/hello", Some("latest"), None)
        );
        let r: ImageRef = "localhost/app:v2".parse().unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost", "app", Some("v2"))
        );
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(r.tagged_name().as_deref(), Some("localhost/app:v2"));
        let d: ImageRef = format!("localhost/app@sha256:{HEX}").parse().unwrap();
        assert_eq!(d.tagged_name(), None);
    }

    #[test]
    fn only_index_docker_io_is_an_alias_of_docker_hub() {
        // distribution/reference normalizes `index.docker.io` only (legacyDefaultDomain);
        // `registry-1.docker.io` is a registry name like any other.
        assert_eq!(
            norm("registry-1.docker.io/x"),
            "registry-1.docker.io/x:latest"
        );
        assert_eq!(norm("index.docker.io/x"), "docker.io/library/x:latest");
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "Busybox",
            "a//b",
            "app:",
            "app:-x",
            "app@sha256:12",
            "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ":tag",
            "/app",
            "app/",
            "a/../b",
            "reg.io/a b",
            "app:tag/with/slash:x",
            "a/b@",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn pinning_alone_drops_the_tag() {
        let r: ImageRef = "app:1".parse().unwrap();
        let pinned = r.pinned(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(
            pinned.to_string(),
            format!("docker.io/library/app@sha256:{HEX}")
        );
        assert_eq!(pinned.tag(), None);
        assert!(r.pinned("sha256:12").is_err());
    }

    #[test]
    fn normalized_form_round_trips() {
        for s in [
            "busybox",
            "host:5000/a/b:tag",
            "localhost/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let r: ImageRef = s.parse().unwrap();
            assert_eq!(r.to_string().parse::<ImageRef>().unwrap(), r);
        }
    }
}
