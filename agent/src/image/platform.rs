//! Platforms (`os/arch[/variant]`) and the choice of one manifest from an OCI image index or a
//! Docker manifest list. Written here because oci-client's resolvers ignore `variant`.

use std::fmt;
use std::str::FromStr;

use super::digest::Digest;

/// An `os/architecture[/variant]` triple in OCI (GOOS/GOARCH) spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`, `arm64`, `arm`.
    pub architecture: String,
    /// e.g. `v7` for `arm`, `v8` for `arm64`; `None` means the architecture's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A `--platform` value that is not `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {value:?}: expected os/arch[/variant], e.g. linux/arm64 or linux/arm/v7")]
pub struct PlatformError {
    /// The rejected text.
    pub value: String,
}

impl Platform {
    /// The platform this binary runs on, in OCI spelling.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "riscv64" => ("riscv64", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Self {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// The variant with the architecture's default filled in (`arm64` → `v8`, `amd64` → `v1`),
    /// so `linux/arm64` and `linux/arm64/v8` compare equal.
    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            (_, Some(v)) => Some(v),
            ("arm64", None) => Some("v8"),
            ("amd64", None) => Some("v1"),
            _ => None,
        }
    }

    /// Whether an index entry for `candidate` can run where `self` is wanted. A wanted platform
    /// without a variant accepts any variant of its architecture (best one chosen by
    /// [`select_manifest`]); with one, only that variant.
    fn accepts(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match self.variant {
            None => true,
            Some(_) => self.normalized_variant() == candidate.normalized_variant(),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PlatformError {
            value: s.to_owned(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(err());
        }
        Ok(Self {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }
}

/// One entry of an image index, reduced to what selection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The manifest's digest.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The platform it declares, if any (attestation manifests declare `unknown/unknown`).
    pub platform: Option<Platform>,
}

/// Chooses the manifest for `wanted` from an index: an exact match (variant included) first,
/// then, when no variant was asked for, the entry with the architecture's default variant,
/// then the first entry of that os/architecture. `None` when nothing fits.
pub fn select_manifest<'a>(entries: &'a [IndexEntry], wanted: &Platform) -> Option<&'a IndexEntry> {
    let fits: Vec<&IndexEntry> = entries
        .iter()
        .filter(|e| e.platform.as_ref().is_some_and(|p| wanted.accepts(p)))
        .collect();
    let exact = fits.iter().find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.variant == wanted.variant)
    });
    let default_variant = fits.iter().find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.normalized_variant() == wanted.normalized_variant())
    });
    exact.or(default_variant).or(fits.first()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, platform: &str) -> IndexEntry {
        IndexEntry {
            digest: Digest::of(&[n]),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            platform: Some(platform.parse().unwrap()),
        }
    }

    fn pick<'a>(entries: &'a [IndexEntry], wanted: &str) -> Option<&'a IndexEntry> {
        select_manifest(entries, &wanted.parse().unwrap())
    }

    #[test]
    fn parses_two_and_three_part_platforms() {
        let p: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()),
            ("linux", "arm", Some("v7"))
        );
        assert_eq!(
            "linux/amd64".parse::<Platform>().unwrap().to_string(),
            "linux/amd64"
        );
        for bad in ["linux", "linux/", "a/b/c/d", "linux/am d64", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chooses_the_architecture_asked_for() {
        let entries = [entry(1, "linux/amd64"), entry(2, "linux/arm64")];
        assert_eq!(
            pick(&entries, "linux/arm64").unwrap().digest,
            entries[1].digest
        );
        assert_eq!(
            pick(&entries, "linux/amd64").unwrap().digest,
            entries[0].digest
        );
        assert!(pick(&entries, "linux/s390x").is_none());
        assert!(pick(&entries, "windows/amd64").is_none());
    }

    #[test]
    fn honours_the_variant_that_oci_client_ignores() {
        let entries = [
            entry(1, "linux/arm/v6"),
            entry(2, "linux/arm/v7"),
            entry(3, "linux/arm64/v8"),
        ];
        assert_eq!(
            pick(&entries, "linux/arm/v7").unwrap().digest,
            entries[1].digest
        );
        assert_eq!(
            pick(&entries, "linux/arm/v6").unwrap().digest,
            entries[0].digest
        );
        assert!(pick(&entries, "linux/arm/v5").is_none());
        // arm64 without a variant is v8.
        assert_eq!(
            pick(&entries, "linux/arm64").unwrap().digest,
            entries[2].digest
        );
        assert_eq!(
            pick(&entries, "linux/arm64/v8").unwrap().digest,
            entries[2].digest
        );
    }

    #[test]
    fn without_a_variant_prefers_the_default_one() {
        let entries = [entry(1, "linux/amd64/v3"), entry(2, "linux/amd64")];
        assert_eq!(
            pick(&entries, "linux/amd64").unwrap().digest,
            entries[1].digest
        );
    }

    #[test]
    fn skips_entries_without_a_platform() {
        let mut att = entry(9, "unknown/unknown");
        att.platform = None;
        let entries = [att, entry(1, "linux/amd64")];
        assert_eq!(
            pick(&entries, "linux/amd64").unwrap().digest,
            entries[1].digest
        );
    }

    #[test]
    fn host_platform_is_linux_in_oci_spelling() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert_ne!(host.architecture, "x86_64");
        assert_ne!(host.architecture, "aarch64");
    }
}
