//! Helpers shared by the deploy tests: revisions built from real manifests.
#![allow(dead_code, reason = "each test file uses a part")]

use berth_manifests::wire::{AssignedApp, Assignment, RevisionSpec, Scale};
use berth_manifests::{Source, load};

/// A revision of `app` numbered `number` from manifest `extra` lines (health, update, …).
pub fn revision(app: &str, number: u64, extra: &str) -> RevisionSpec {
    let yaml = format!("app: {app}\nimage: registry.test/{app}:{number}\n{extra}");
    let set = load(&[Source {
        path: "app.yaml",
        bytes: yaml.as_bytes(),
    }])
    .unwrap_or_else(|e| panic!("manifest: {e:?}\n{yaml}"));
    RevisionSpec {
        app: app.to_string(),
        number,
        spec: set.manifests[0].app.clone(),
        spec_hash: format!("hash-{app}-{number}-{}", extra.len()),
        image_digest: format!("sha256:{number:064}"),
    }
}

/// HTTP health on /up every second, 3 failures, plus `extra`.
pub const HTTP_HEALTH: &str =
    "port: 8080\nhealth: { http: /up, interval: 1s, timeout: 1s, failures: 3 }\n";

/// `app` assigned with `replicas` of `target`, `fallback` behind it.
pub fn assigned(
    target: RevisionSpec,
    fallback: Option<RevisionSpec>,
    replicas: u32,
) -> AssignedApp {
    AssignedApp {
        target,
        fallback,
        scale: Scale::Fixed { replicas },
        pinned: false,
    }
}

/// An assignment of `apps` to host `h1`.
pub fn assignment(version: u64, apps: Vec<AssignedApp>) -> Assignment {
    Assignment {
        host: "h1".into(),
        version,
        apps,
    }
}
