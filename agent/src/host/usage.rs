//! Scrape-time usage of the agent's instances for [`crate::metrics`]: every running
//! container of the data dir that the agent labelled as an instance (a file under
//! `<data-dir>/agent/instances/`), with its cgroup's cpu time, memory and OOM-kill count.
//! Containers that `berth run` started in the same data dir are not instances and are left
//! out.

use std::path::PathBuf;
use std::sync::Arc;

use super::container::{Cgroups, Store};
use crate::metrics::{InstanceUsage, UsageSource};
use crate::runtime::state::Status;

/// Reads instances' cgroups under one data dir.
pub struct CgroupUsage {
    store: Store,
    labels_dir: PathBuf,
    cgroups: Arc<dyn Cgroups + Send + Sync>,
}

impl std::fmt::Debug for CgroupUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupUsage")
            .field("labels_dir", &self.labels_dir)
            .finish_non_exhaustive()
    }
}

impl CgroupUsage {
    /// The instances of the agent whose data dir is `data_dir`.
    pub fn new(data_dir: &std::path::Path, cgroups: Arc<dyn Cgroups + Send + Sync>) -> Self {
        CgroupUsage {
            store: Store::new(data_dir),
            labels_dir: data_dir.join("agent").join("instances"),
            cgroups,
        }
    }
}

/// The app of instance id `<app>-<revision>-<seq>`.
fn app_of(id: &str) -> Option<&str> {
    let mut parts = id.rsplitn(3, '-');
    let _seq = parts.next()?;
    let _revision = parts.next()?;
    parts.next()
}

impl UsageSource for CgroupUsage {
    fn usage(&self) -> Vec<InstanceUsage> {
        let Ok((listed, _)) = self.store.list() else {
            return Vec::new();
        };
        listed
            .into_iter()
            .filter(|l| l.status == Status::Running)
            .filter(|l| {
                self.labels_dir
                    .join(format!("{}.json", l.state.spec.id))
                    .is_file()
            })
            .filter_map(|l| {
                let id = &l.state.spec.id;
                let stats = self.cgroups.stats(&l.state.spec)?;
                #[allow(clippy::cast_precision_loss, reason = "cpu ns as seconds for metrics")]
                let cpu_seconds = stats.cpu_usage_ns as f64 / 1e9;
                Some(InstanceUsage {
                    app: app_of(id)?.to_string(),
                    instance: id.clone(),
                    cpu_seconds,
                    memory_bytes: stats.memory_usage_bytes,
                    oom_kills: stats.oom_kills,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::app_of;

    #[test]
    fn the_app_is_the_id_without_revision_and_sequence() {
        assert_eq!(app_of("web-3-0"), Some("web"));
        assert_eq!(app_of("shop-api-12-7"), Some("shop-api"));
        assert_eq!(app_of("web"), None);
    }
}
