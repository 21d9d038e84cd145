//! The reconcile's [`Runtime`] adapter over the container runtime (`host::container`):
//! instances are detached containers under a shim (they outlive the agent), with their root
//! filesystem an overlay of the image's snapshots. Must not reach into the runtime's state
//! files; it only calls the runtime's functions.
//!
//! The runtime records `app` and `revision` on each container; the rest of an instance's
//! identity (spec hash, image digest) is kept beside it in `<data-dir>/agent/instances/<id>.json`
//! (written atomically before the container is created), so a restarted agent re-adopts its
//! containers and ignores those that `berth run` started.
//!
//! The runtime's calls block (fork, wait, file locks): each runs on tokio's blocking pool.
//! Exec probes run in a child process, the current binary re-executed as
//! [`PROBE_EXEC_VERB`] ([`probe_exec_main`]): the runtime's exec installs process-wide
//! signal forwarding, right for the `berth exec` CLI but not inside the agent, so it happens in
//! that child.
//!
//! Networking ([`ContainerRuntime::with_network`]): a `network: private` instance gets its
//! namespace, veth and address from [`HostNetwork::attach`] before its container is created,
//! and the container joins that namespace by path; a `network: host` instance gets a host
//! port as `$PORT` ([`HostNetwork::allocate_host_port`]) when the app has `expose`. Both are recorded in the labels
//! file (the instance's address and host port for probes and the proxy) and released on
//! removal. A host-mode app without `expose` keeps its manifest `port` (nothing would route to
//! an allocated one). Without a network (tests of the runtime alone) a private instance runs in a new,
//! empty namespace that nothing outside reaches.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_manifests::app::NetworkMode;
use berth_manifests::{ErrorKind, Signal};
use serde::{Deserialize, Serialize};

use crate::host::agentstate::write_atomic;
use crate::host::container::{self, Cgroups, ContainerError, Store, shim};
use crate::host::image_store::ImageStore;
use crate::host::net::Network as HostNetwork;
use crate::reconcile::traits::{
    EffectError, InstanceSpec, LocalImage, ObservedInstance, RunState, Runtime,
};
use crate::runtime::spec::{ContainerSpec, Network};
use crate::runtime::state::{ProcessId, Status};

/// What the agent records beside each of its containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Labels {
    app: String,
    revision: u64,
    spec_hash: String,
    image_digest: String,
    host_network: bool,
    /// Its address on the bridge (`network: private` with a network).
    #[serde(default)]
    address: Option<Ipv4Addr>,
    /// Its `$PORT` on the host (`network: host` with a network).
    #[serde(default)]
    host_port: Option<u16>,
}

/// Containers of the host's runtime, as agent instances.
#[derive(Clone)]
pub struct ContainerRuntime {
    store: Store,
    images: ImageStore,
    cgroups: Arc<dyn Cgroups + Send + Sync>,
    labels_dir: PathBuf,
    cgroup_parent: String,
    data_dir: PathBuf,
    net: Option<Arc<HostNetwork>>,
}

/// The hidden verb the agent re-executes itself as for exec probes:
/// `<binary> __probe_exec <data-dir> <id> -- <command…>`.
pub const PROBE_EXEC_VERB: &str = "__probe_exec";
/// The helper's exit code when it could not run the command at all.
pub const PROBE_EXEC_SETUP_FAILED: i32 = 125;

/// Entry point of [`PROBE_EXEC_VERB`] (`args` after the verb): runs the command in the
/// container and returns its exit code, or [`PROBE_EXEC_SETUP_FAILED`].
pub fn probe_exec_main(args: &[String], cgroups: &dyn Cgroups) -> u8 {
    let (Some(data_dir), Some(id), Some("--")) =
        (args.first(), args.get(1), args.get(2).map(String::as_str))
    else {
        return 125;
    };
    let command = args[3..].to_vec();
    if command.is_empty() {
        return 125;
    }
    let store = Store::new(std::path::Path::new(data_dir));
    let request = container::exec::ExecRequest {
        args: command,
        ..Default::default()
    };
    match container::exec::exec(&store, cgroups, id, request) {
        Ok(code) => u8::try_from(code).unwrap_or(125),
        Err(_) => 125,
    }
}

impl std::fmt::Debug for ContainerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerRuntime")
            .field("labels_dir", &self.labels_dir)
            .finish_non_exhaustive()
    }
}

fn effect(op: &'static str, id: &str, e: ContainerError) -> EffectError {
    EffectError::new(op, id, e.kind(), e)
}

impl ContainerRuntime {
    /// The runtime under `data_dir` (containers in `<data_dir>/containers`, labels in
    /// `<data_dir>/agent/instances`), images from `images`, limits through `cgroups`.
    pub fn new(
        data_dir: &std::path::Path,
        images: ImageStore,
        cgroups: Arc<dyn Cgroups + Send + Sync>,
    ) -> Result<Self, EffectError> {
        let labels_dir = data_dir.join("agent").join("instances");
        std::fs::create_dir_all(&labels_dir).map_err(|e| {
            EffectError::new(
                "create",
                labels_dir.display().to_string(),
                ErrorKind::Unavailable,
                e,
            )
        })?;
        Ok(Self {
            store: Store::new(data_dir),
            images,
            cgroups,
            labels_dir,
            cgroup_parent: "berth".into(),
            data_dir: data_dir.to_path_buf(),
            net: None,
        })
    }

    /// Wires instances through `net`: private ones get a namespace, veth and address, host
    /// ones a host port.
    pub fn with_network(mut self, net: Arc<HostNetwork>) -> Self {
        self.net = Some(net);
        self
    }

    /// The network instances are wired through, if any.
    pub fn network(&self) -> Option<&Arc<HostNetwork>> {
        self.net.as_ref()
    }

    /// The parent cgroup of the agent's containers (default `berth`).
    pub fn with_cgroup_parent(mut self, parent: impl Into<String>) -> Self {
        self.cgroup_parent = parent.into();
        self
    }

    /// Detaches the instance's network and frees its host port (idempotent).
    fn release_network(&self, id: &str) -> Result<(), EffectError> {
        if let Some(net) = &self.net {
            let err = |e: crate::net::NetError| EffectError::new("remove", id, e.kind(), e);
            net.detach(id).map_err(err)?;
            net.release_host_port(id).map_err(err)?;
        }
        Ok(())
    }

    /// The container with exactly this id (the runtime's lookups also accept a unique id
    /// prefix: `web-2-1` must never reach `web-2-10`).
    fn exact(&self, id: &str) -> Option<container::Listed> {
        self.store.get(id).ok().filter(|l| l.state.spec.id == id)
    }

    fn labels_path(&self, id: &str) -> PathBuf {
        self.labels_dir.join(format!("{id}.json"))
    }

    fn labels(&self, id: &str) -> Option<Labels> {
        let bytes = std::fs::read(self.labels_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The container spec of an instance: the image's config, overridden by the manifest.
    fn container_spec(
        &self,
        spec: &InstanceSpec,
        image: &LocalImage,
    ) -> Result<ContainerSpec, EffectError> {
        let img = self
            .images
            .get(&image.reference)
            .map_err(|e| EffectError::new("create_start", &spec.id, ErrorKind::NotFound, e))?;
        let app = &spec.revision.spec;
        let config = img.config.config().clone().unwrap_or_default();
        // The manifest's command replaces the image's Entrypoint and Cmd both.
        let mut c = ContainerSpec::from_image(spec.id.clone(), img.layer_dirs(), &config, None);
        if let Some(cmd) = &app.command {
            c.args = cmd.clone();
        }
        if let Some(port) = app.port {
            c.set_env(&format!("PORT={port}"));
        }
        for (k, v) in &app.env {
            c.set_env(&format!("{k}={v}"));
        }
        c.resources.memory = Some(app.resources.memory.as_bytes());
        let period = 100_000u64;
        c.resources.cpu_period = Some(period);
        c.resources.cpu_quota = Some(app.resources.cpu.as_millis().saturating_mul(period) / 1000);
        c.resources.pids = Some(i64::from(app.resources.pids));
        if app.network == NetworkMode::Host {
            c.network = Network::Host;
            c.namespaces.net = false;
        }
        c.cgroup_parent = self.cgroup_parent.clone();
        c.app = spec.revision.app.clone();
        c.revision = spec.revision.number.to_string();
        c.validate()
            .map_err(|e| EffectError::new("create_start", &spec.id, e.kind(), e))?;
        Ok(c)
    }
}

/// The text of a log line (`<RFC 3339 time> <stream> <text>`, as the shim writes it).
fn log_text(line: &str) -> &str {
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some("stdout" | "stderr"), Some(text)) => text,
        (Some(_), Some("stdout" | "stderr"), None) => "",
        _ => line,
    }
}

fn remove_labels(this: &ContainerRuntime, id: &str) -> Result<(), EffectError> {
    match std::fs::remove_file(this.labels_path(id)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EffectError::new("remove", id, ErrorKind::Unavailable, e)),
    }
}

/// Reaps the shim of a container once it has exited, if this process started it. The shim is
/// a child of the process that started the container (here, the agent, which lives on): left
/// a zombie, it would hold a pid until the agent exits and look alive to the runtime (same pid
/// and start time), so removing the container would wait out the runtime's 5 s for it. Only a
/// process with the recorded start time is reaped; `waitpid` refuses (ECHILD) a shim that is
/// not our child (adopted after an agent restart: init reaps those).
fn reap_shim(store: &Store, shim: ProcessId) {
    if store.start_time(shim.pid) == Some(shim.start_time) {
        let _ = crate::host::sys::waitpid(shim.pid, libc::WNOHANG);
    }
}

/// Waits (at most 5 s) until the shim of a stopped container is gone, reaping it.
fn reap_shim_wait(store: &Store, shim: ProcessId) {
    container::wait_until(Duration::from_secs(5), || {
        reap_shim(store, shim);
        store.start_time(shim.pid) != Some(shim.start_time)
    });
}

async fn blocking<T: Send + 'static>(
    op: &'static str,
    id: &str,
    f: impl FnOnce() -> Result<T, EffectError> + Send + 'static,
) -> Result<T, EffectError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EffectError::new(op, id, ErrorKind::Internal, e))?
}

impl Runtime for ContainerRuntime {
    async fn list(&self) -> Result<Vec<ObservedInstance>, EffectError> {
        let this = self.clone();
        blocking("list", "containers", move || {
            let (listed, _unreadable) = this
                .store
                .list()
                .map_err(|e| effect("list", "containers", e))?;
            for l in &listed {
                if let (Status::Stopped, Some(shim)) = (l.status, l.state.shim) {
                    reap_shim(&this.store, shim);
                }
            }
            Ok(listed
                .into_iter()
                .filter_map(|l| {
                    let id = l.state.spec.id.clone();
                    let labels = this.labels(&id)?;
                    let state = match (l.status, l.exit) {
                        (Status::Stopped, exit) => {
                            let exit = exit.unwrap_or(crate::runtime::state::Exit {
                                code: 137,
                                signal: None,
                                oom_killed: false,
                                finished: l.state.created,
                            });
                            RunState::Exited {
                                code: exit.code,
                                oom_killed: exit.oom_killed,
                                finished_at_ms: exit.finished.saturating_mul(1000),
                            }
                        }
                        _ => RunState::Running,
                    };
                    Some(ObservedInstance {
                        id,
                        app: labels.app,
                        revision: labels.revision,
                        spec_hash: labels.spec_hash,
                        image_digest: labels.image_digest,
                        state,
                        started_at_ms: l.state.created.saturating_mul(1000),
                        address: if labels.host_network {
                            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
                        } else {
                            labels.address.map(IpAddr::V4)
                        },
                        host_port: labels.host_port,
                    })
                })
                .collect())
        })
        .await
    }

    async fn create_start(
        &self,
        spec: &InstanceSpec,
        image: &LocalImage,
    ) -> Result<(), EffectError> {
        let mut c = self.container_spec(spec, image)?;
        let mut labels = Labels {
            app: spec.revision.app.clone(),
            revision: spec.revision.number,
            spec_hash: spec.revision.spec_hash.clone(),
            image_digest: spec.revision.image_digest.clone(),
            host_network: c.network == Network::Host,
            address: None,
            host_port: None,
        };
        // Host mode with `expose`: the proxy routes to a host port of its own per instance (so
        // a surge instance can start beside the old one). Without `expose` nothing would
        // route to an allocated port: the app keeps the manifest's `port`.
        let allocate_port = spec.revision.spec.expose.is_some();
        let this = self.clone();
        let id = spec.id.clone();
        blocking("create_start", &spec.id, move || {
            // A restart reuses the id: the exited container goes first.
            if let Some(l) = this.exact(&id) {
                if let (Status::Stopped, Some(shim)) = (l.status, l.state.shim) {
                    reap_shim_wait(&this.store, shim);
                }
                container::remove(&this.store, this.cgroups.as_ref(), &id, false)
                    .map_err(|e| effect("create_start", &id, e))?;
            }
            if let Some(net) = &this.net {
                let net_err = |e: crate::net::NetError| {
                    EffectError::new("create_start", &id, e.kind(), e)
                };
                if labels.host_network && allocate_port {
                    let port = net.allocate_host_port(&id).map_err(net_err)?;
                    c.set_env(&format!("PORT={port}"));
                    labels.host_port = Some(port);
                } else if !labels.host_network {
                    // A restart (or a crash mid-start) may have left the old wiring.
                    net.detach(&id).map_err(net_err)?;
                    let a = net.attach(&id).map_err(net_err)?;
                    c.namespaces.join.retain(|(kind, _)| kind != "net");
                    c.namespaces.join.push(("net".into(), a.netns_path));
                    labels.address = Some(a.ip);
                }
            }
            let started = (|| {
                let bytes = serde_json::to_vec(&labels)
                    .map_err(|e| EffectError::new("create_start", &id, ErrorKind::Internal, e))?;
                write_atomic(&this.labels_dir, &format!("{id}.json"), &bytes).map_err(|e| {
                    EffectError::new("create_start", &id, ErrorKind::Unavailable, e)
                })?;
                container::run_detached(&this.store, c, false)
                    .map(|_| ())
                    .map_err(|e| effect("create_start", &id, e))
            })();
            if started.is_err() {
                // Nothing runs in the namespace: give its address and port back.
                if let Err(e) = this.release_network(&id) {
                    tracing::warn!(instance = %id, error = %e.chain(), "network cleanup after a failed start");
                }
            }
            started
        })
        .await
    }

    async fn signal(&self, id: &str, signal: Signal) -> Result<(), EffectError> {
        let this = self.clone();
        let key = id.to_string();
        blocking("signal", id, move || {
            if this.exact(&key).is_none() {
                return Ok(());
            }
            match container::kill(&this.store, &key, i32::from(signal.number())) {
                Ok(_) => Ok(()),
                // Gone or not running: nothing to signal.
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Conflict) => Ok(()),
                Err(e) => Err(effect("signal", &key, e)),
            }
        })
        .await
    }

    async fn remove(&self, id: &str) -> Result<(), EffectError> {
        let this = self.clone();
        let key = id.to_string();
        blocking("remove", id, move || {
            let Some(l) = this.exact(&key) else {
                // gone already (only its labels and network may be left)
                this.release_network(&key)?;
                return remove_labels(&this, &key);
            };
            if l.status == Status::Stopped
                && let Some(shim) = l.state.shim
            {
                reap_shim_wait(&this.store, shim);
            }
            match container::remove(&this.store, this.cgroups.as_ref(), &key, false) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(effect("remove", &key, e)),
            }
            this.release_network(&key)?;
            remove_labels(&this, &key)
        })
        .await
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<i32, EffectError> {
        let mut child = tokio::process::Command::new("/proc/self/exe")
            .arg(PROBE_EXEC_VERB)
            .arg(&self.data_dir)
            .arg(id)
            .arg("--")
            .args(command)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| EffectError::new("exec", id, ErrorKind::Unavailable, e))?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => match status.code() {
                Some(PROBE_EXEC_SETUP_FAILED) | None => Err(EffectError::new(
                    "exec",
                    id,
                    ErrorKind::Unavailable,
                    "the exec helper could not run the command in the container",
                )),
                Some(code) => Ok(code),
            },
            Ok(Err(e)) => Err(EffectError::new("exec", id, ErrorKind::Unavailable, e)),
            Err(_) => {
                let _ = child.start_kill();
                Err(EffectError::new(
                    "exec",
                    id,
                    ErrorKind::Unavailable,
                    "timed out",
                ))
            }
        }
    }

    async fn cpu_usage(&self, id: &str) -> Option<Duration> {
        let this = self.clone();
        let key = id.to_string();
        tokio::task::spawn_blocking(move || {
            let state = this.store.read(&key).ok()?;
            let ns = this.cgroups.cpu_usage_ns(&state.spec)?;
            Some(Duration::from_nanos(ns))
        })
        .await
        .ok()
        .flatten()
    }

    async fn log_tail(&self, id: &str, lines: usize) -> Result<Vec<String>, EffectError> {
        let path = shim::log_path(&self.store.dir(id).join("logs"));
        let text = match tokio::fs::read(&path).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => {
                // Older layouts keep the log in the state dir itself.
                let alt = shim::log_path(&self.store.dir(id));
                tokio::fs::read(&alt)
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            }
        };
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        Ok(all[start..]
            .iter()
            .map(|l| log_text(l).to_string())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_lose_their_time_and_stream() {
        assert_eq!(
            super::log_text("2026-11-23T23:00:00.123Z stderr crasher: exiting 1"),
            "crasher: exiting 1"
        );
        assert_eq!(super::log_text("2026-11-23T23:00:00Z stdout"), "");
        assert_eq!(super::log_text("no prefix here"), "no prefix here");
    }
}
