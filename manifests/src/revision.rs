//! Revision identity: a sha256 over the canonical JSON of a normalized [`App`]. Canonical
//! because `App` has one spelling for every value (sizes, durations, cpu, image references
//! are normalized; maps are sorted; volumes sorted by path), so key order, formatting, YAML
//! style and equivalent spellings (`1m30s` or `90s`) do not change it; any field change does.
//! Pure.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::App;

/// Prefix of the hashed bytes: a schema change that must change every revision bumps it.
const SCHEMA: &[u8] = b"berth.app.v1\n";

/// The content hash of a normalized app: `sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(String);

impl Revision {
    /// The full form, `sha256:<64 hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> &str {
        let hex = self.0.strip_prefix("sha256:").unwrap_or(&self.0);
        hex.get(..12).unwrap_or(hex)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl App {
    /// The app's revision identity.
    pub fn revision(&self) -> Revision {
        // Serializing an `App` to JSON cannot fail: every map has string keys and every field
        // serializes infallibly. Were it ever to fail, the error text is hashed instead, which
        // still differs from the hash of every valid spec.
        let json = serde_json::to_vec(self).unwrap_or_else(|e| e.to_string().into_bytes());
        let mut h = Sha256::new();
        h.update(SCHEMA);
        h.update(&json);
        Revision(format!("sha256:{}", hex::encode(h.finalize())))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Source, load};

    fn rev(src: &str) -> String {
        let set = load(&[Source {
            path: "a.yaml",
            bytes: src.as_bytes(),
        }])
        .unwrap();
        set.manifests[0].app.revision().to_string()
    }

    #[test]
    fn equivalent_spellings_give_the_same_revision() {
        let a = rev(
            "app: web\nimage: busybox\nstop: { grace: 90s }\nresources: { memory: 128Mi, cpu: 0.5 }\n",
        );
        let b = rev(
            "resources:\n  cpu: 500m\n  memory: 134217728\nimage: docker.io/library/busybox:latest\nstop:\n  grace: 1m30s\napp: web\n",
        );
        assert_eq!(a, b);
        assert!(a.starts_with("sha256:") && a.len() == 71, "{a}");
    }

    #[test]
    fn writing_a_default_explicitly_does_not_change_the_revision() {
        assert_eq!(
            rev("app: web\nimage: busybox\n"),
            rev(
                "app: web\nimage: busybox\nnetwork: private\nreplicas: 1\nstop: { signal: TERM }\n"
            )
        );
    }

    #[test]
    fn changing_a_value_changes_the_revision() {
        assert_ne!(
            rev("app: web\nimage: busybox\n"),
            rev("app: web\nimage: busybox\nreplicas: 2\n")
        );
    }
}
