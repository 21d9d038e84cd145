//! Placement-lite and per-host assignments, as pure functions: which hosts run which app and
//! how many instances each, and whether a host's assignment changed (its version grows only
//! then). No I/O.
//!
//! Until the multi-host issue brings real scheduling: an app goes to every registered host
//! whose labels include all of `placement.labels`; fixed replicas (and autoscale min/max) are
//! divided over those hosts sorted by name, the remainder going to the first ones; a host
//! whose share is zero does not get the app. A host that stops reporting keeps its share:
//! moving work away from silent hosts is the multi-host issue's job, and dropping a host's
//! apps when the controller itself was down would stop healthy containers.

use std::collections::BTreeMap;

use berth_manifests::wire::{AssignedApp, Assignment, RevisionSpec, Scale};

/// What placement needs about one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeable {
    /// The revision to run.
    pub target: RevisionSpec,
    /// The last good revision.
    pub fallback: Option<RevisionSpec>,
    /// Pinned by a rollback.
    pub pinned: bool,
}

/// What placement needs about one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLabels {
    /// The host.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// Divides `total` over `n` slots: `total / n` each, the remainder to the first slots.
pub fn divide(total: u32, n: usize) -> Vec<u32> {
    if n == 0 {
        return Vec::new();
    }
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    let base = total / n32;
    let rest = (total % n32) as usize;
    (0..n).map(|i| base + u32::from(i < rest)).collect()
}

/// Whether a host's labels satisfy an app's placement.
pub fn matches(host: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| host.get(k) == Some(v))
}

/// Every host's apps, sorted by host then app. Every host in `hosts` has an entry (possibly
/// empty), so a host whose apps all went away gets an empty assignment.
pub fn place(apps: &[Placeable], hosts: &[HostLabels]) -> BTreeMap<String, Vec<AssignedApp>> {
    let mut hosts: Vec<&HostLabels> = hosts.iter().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out: BTreeMap<String, Vec<AssignedApp>> =
        hosts.iter().map(|h| (h.name.clone(), Vec::new())).collect();
    for app in apps {
        let spec = &app.target.spec;
        let eligible: Vec<&&HostLabels> = hosts
            .iter()
            .filter(|h| matches(&h.labels, &spec.placement.labels))
            .collect();
        let scales: Vec<Scale> = match &spec.autoscale {
            Some(auto) => divide(auto.min, eligible.len())
                .into_iter()
                .zip(divide(auto.max, eligible.len()))
                .map(|(min, max)| Scale::Auto { min, max })
                .collect(),
            None => divide(spec.replicas.unwrap_or(1), eligible.len())
                .into_iter()
                .map(|replicas| Scale::Fixed { replicas })
                .collect(),
        };
        for (host, scale) in eligible.iter().zip(scales) {
            let share = match scale {
                Scale::Fixed { replicas } => replicas,
                Scale::Auto { max, .. } => max,
            };
            if share == 0 {
                continue;
            }
            if let Some(list) = out.get_mut(&host.name) {
                list.push(AssignedApp {
                    target: app.target.clone(),
                    fallback: app.fallback.clone(),
                    scale,
                    pinned: app.pinned,
                });
            }
        }
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| a.target.app.cmp(&b.target.app));
    }
    out
}

/// The host's next assignment: the same one when its apps did not change, else the apps
/// under version + 1. Versions only grow.
pub fn next_assignment(
    host: &str,
    previous: Option<&Assignment>,
    apps: Vec<AssignedApp>,
) -> Option<Assignment> {
    match previous {
        Some(prev) if prev.apps == apps => None,
        Some(prev) => Some(Assignment {
            host: host.to_string(),
            version: prev.version + 1,
            apps,
        }),
        None => Some(Assignment {
            host: host.to_string(),
            version: 1,
            apps,
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use berth_manifests::{Source, load};

    fn placeable(src: &str) -> Placeable {
        let app = load(&[Source {
            path: "a.yaml",
            bytes: src.as_bytes(),
        }])
        .unwrap()
        .manifests
        .remove(0)
        .app;
        Placeable {
            target: RevisionSpec {
                app: app.app.clone(),
                number: 1,
                spec_hash: crate::revisions::spec_hash(&app),
                spec: app,
                image_digest: format!("sha256:{}", "b".repeat(64)),
            },
            fallback: None,
            pinned: false,
        }
    }

    fn host(name: &str, labels: &[(&str, &str)]) -> HostLabels {
        HostLabels {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn divide_gives_the_remainder_to_the_first_slots() {
        assert_eq!(divide(5, 3), [2, 2, 1]);
        assert_eq!(divide(1, 3), [1, 0, 0]);
        assert_eq!(divide(4, 2), [2, 2]);
        assert!(divide(3, 0).is_empty());
    }

    #[test]
    fn replicas_are_divided_over_matching_hosts_by_name() {
        let app = placeable("app: web\nimage: busybox\nreplicas: 3\n");
        let placed = place(&[app], &[host("b", &[]), host("a", &[])]);
        let scales: Vec<_> = placed.values().map(|apps| apps[0].scale).collect();
        assert_eq!(
            scales,
            [Scale::Fixed { replicas: 2 }, Scale::Fixed { replicas: 1 }]
        );
    }

    #[test]
    fn hosts_without_the_labels_or_a_share_get_nothing() {
        let app = placeable(
            "app: web\nimage: busybox\nreplicas: 1\nplacement:\n  labels:\n    role: web\n",
        );
        let placed = place(
            &[app],
            &[
                host("a", &[("role", "db")]),
                host("b", &[("role", "web")]),
                host("c", &[("role", "web")]),
            ],
        );
        assert!(placed["a"].is_empty());
        assert_eq!(placed["b"].len(), 1);
        assert!(placed["c"].is_empty(), "share of 1 over 2 hosts is 1 + 0");
    }

    #[test]
    fn autoscale_bounds_are_divided_too() {
        let app = placeable(
            "app: web\nimage: busybox\nport: 8080\nautoscale:\n  min: 1\n  max: 5\n  metric: rps\n  target: 10\n",
        );
        let placed = place(&[app], &[host("a", &[]), host("b", &[])]);
        assert_eq!(placed["a"][0].scale, Scale::Auto { min: 1, max: 3 });
        assert_eq!(placed["b"][0].scale, Scale::Auto { min: 0, max: 2 });
    }

    #[test]
    fn version_grows_only_when_apps_change() {
        let app = placeable("app: web\nimage: busybox\n");
        let apps = place(&[app], &[host("a", &[])]).remove("a").unwrap();
        let first = next_assignment("a", None, apps.clone()).unwrap();
        assert_eq!(first.version, 1);
        assert_eq!(next_assignment("a", Some(&first), apps), None);
        let second = next_assignment("a", Some(&first), Vec::new()).unwrap();
        assert_eq!(second.version, 2);
    }
}
