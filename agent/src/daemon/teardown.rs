//! Stopping and removing every instance an agent runs (`berth down`): each gets its app's
//! stop signal, the grace period, then SIGKILL, and is removed (state, cgroup, rootfs). The
//! stop settings come from the cached assignment; an instance of an app no longer in it (or
//! with no assignment cached) gets SIGTERM and [`DEFAULT_GRACE`].

use std::collections::BTreeMap;
use std::time::Duration;

use berth_manifests::Signal;
use berth_manifests::wire::Assignment;

use crate::reconcile::traits::{EffectError, RunState, Runtime};

/// Grace period for instances whose app is not in the assignment.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// How often the runtime is listed while waiting for instances to exit.
const POLL: Duration = Duration::from_millis(100);

/// What [`stop_all`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Teardown {
    /// Instances removed, sorted.
    pub removed: Vec<String>,
    /// Instances that needed SIGKILL after their grace period, sorted.
    pub killed: Vec<String>,
}

/// Stops every instance `runtime` lists, in parallel, and removes them. Keeps going past a
/// failing instance and returns the first error after trying them all.
pub async fn stop_all<R: Runtime>(
    runtime: &R,
    assignment: Option<&Assignment>,
) -> Result<Teardown, EffectError> {
    let stop: BTreeMap<&str, (Signal, Duration)> = assignment
        .map(|a| {
            a.apps
                .iter()
                .map(|app| {
                    let s = &app.target.spec.stop;
                    (app.target.app.as_str(), (s.signal, s.grace.as_std()))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut first_error: Option<EffectError> = None;
    let mut keep = |r: Result<(), EffectError>| {
        if let Err(e) = r {
            tracing::warn!("{e}");
            first_error.get_or_insert(e);
        }
    };

    let instances = runtime.list().await?;
    // (id, grace) of the running ones, after their stop signal.
    let mut waiting: Vec<(String, Duration)> = Vec::new();
    for i in &instances {
        if i.state == RunState::Running {
            let (signal, grace) = stop
                .get(i.app.as_str())
                .copied()
                .unwrap_or((Signal::TERM, DEFAULT_GRACE));
            keep(runtime.signal(&i.id, signal).await);
            waiting.push((i.id.clone(), grace));
        }
    }

    let mut waited = Duration::ZERO;
    let mut killed = Vec::new();
    while !waiting.is_empty() {
        tokio::time::sleep(POLL).await;
        waited += POLL;
        let running: Vec<String> = runtime
            .list()
            .await?
            .into_iter()
            .filter(|i| i.state == RunState::Running)
            .map(|i| i.id)
            .collect();
        waiting.retain(|(id, _)| running.contains(id));
        for (id, grace) in &mut waiting {
            if waited >= *grace {
                keep(runtime.signal(id, Signal::KILL).await);
                killed.push(id.clone());
                // Waits for the kill like any other exit, bounded by a second grace.
                *grace = Duration::MAX;
            }
        }
        if waited > DEFAULT_GRACE.max(max_grace(&stop)) + DEFAULT_GRACE {
            return Err(EffectError::new(
                "stop",
                waiting
                    .iter()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                berth_manifests::ErrorKind::Unavailable,
                "still running after SIGKILL; check `berth ps --local` and the kernel log",
            ));
        }
    }

    let mut removed = Vec::new();
    for i in runtime.list().await? {
        match runtime.remove(&i.id).await {
            Ok(()) => removed.push(i.id),
            Err(e) => keep(Err(e)),
        }
    }
    removed.sort();
    killed.sort();
    match first_error {
        Some(e) => Err(e),
        None => Ok(Teardown { removed, killed }),
    }
}

fn max_grace(stop: &BTreeMap<&str, (Signal, Duration)>) -> Duration {
    stop.values()
        .map(|(_, g)| *g)
        .max()
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::fake::FakeRuntime;
    use crate::reconcile::traits::ObservedInstance;

    fn instance(id: &str, app: &str) -> ObservedInstance {
        ObservedInstance {
            id: id.into(),
            app: app.into(),
            revision: 1,
            spec_hash: "h".into(),
            image_digest: "sha256:00".into(),
            state: RunState::Running,
            started_at_ms: 0,
            address: None,
            host_port: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stops_with_the_signal_then_removes_everything() {
        let rt = FakeRuntime::new();
        rt.adopt(instance("web-1-0", "web"));
        rt.adopt(instance("web-1-1", "web"));
        let mut exited = instance("job-1-0", "job");
        exited.state = RunState::Exited {
            code: 0,
            oom_killed: false,
            finished_at_ms: 0,
        };
        rt.adopt(exited);
        let done = stop_all(rt.as_ref(), None).await.unwrap();
        assert_eq!(done.removed, ["job-1-0", "web-1-0", "web-1-1"]);
        assert!(done.killed.is_empty());
        assert!(rt.instances().is_empty());
        let calls = rt.calls();
        assert!(
            calls.contains(&"signal web-1-0 15".to_string()),
            "{calls:?}"
        );
        assert!(
            !calls.iter().any(|c| c.starts_with("signal job")),
            "{calls:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn kills_what_ignores_its_stop_signal_after_the_grace_period() {
        let rt = FakeRuntime::new();
        rt.ignore_term(true);
        rt.adopt(instance("web-1-0", "web"));
        let done = stop_all(rt.as_ref(), None).await.unwrap();
        assert_eq!(done.killed, ["web-1-0"]);
        assert_eq!(done.removed, ["web-1-0"]);
        let calls = rt.calls();
        assert!(calls.contains(&"signal web-1-0 9".to_string()), "{calls:?}");
    }
}
