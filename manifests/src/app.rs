//! The normalized, validated app spec ([`App`]): what the controller stores, hashes into a
//! revision and sends to agents (JSON). Every default is applied and the image reference is
//! normalized, so two manifests that mean the same thing give equal `App`s.
//!
//! The field names are the manifest's (`resources.memory`, `autoscale.max`), so plan output
//! and errors speak the user's language. Plain data: no parsing, no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reference::ImageRef;
use crate::signal::Signal;
use crate::units::{ByteSize, Cpu, Duration};

/// One app, normalized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// Unique name, a DNS label.
    pub app: String,
    /// The image, normalized (`docker.io/library/busybox:latest`).
    pub image: ImageRef,
    /// The command (entrypoint and arguments); `None`: the image config's.
    pub command: Option<Vec<String>>,
    /// Environment variables (`PORT` is added by the agent when `port` is set).
    pub env: BTreeMap<String, String>,
    /// cgroup limits.
    pub resources: Resources,
    /// The port the app listens on inside its network namespace.
    pub port: Option<u16>,
    /// The host port the agent's proxy listens on for this app.
    pub expose: Option<Expose>,
    /// A fixed number of instances; `None` when `autoscale` is set.
    pub replicas: Option<u32>,
    /// Autoscaling bounds; `None` for a fixed number of replicas.
    pub autoscale: Option<Autoscale>,
    /// The health check; `None`: an instance is ready once started.
    pub health: Option<Health>,
    /// How a new revision replaces the old one.
    pub update: Update,
    /// How an instance is stopped.
    pub stop: Stop,
    /// What happens when an instance exits.
    pub restart: Restart,
    /// Named volumes, sorted by mount path.
    pub volumes: Vec<Volume>,
    /// Which hosts may run the app.
    pub placement: Placement,
    /// Own network namespace or the host's.
    pub network: NetworkMode,
    /// Log rotation.
    pub logs: Logs,
}

/// cgroup limits of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in cores (millicore precision).
    pub cpu: Cpu,
    /// Memory limit.
    pub memory: ByteSize,
    /// Most processes and threads.
    pub pids: u32,
}

/// The proxy's listener for an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expose {
    /// Host port.
    pub port: u16,
    /// How the proxy forwards: HTTP (default) or plain TCP. Not serialized when HTTP, so
    /// revisions of manifests written before the field existed keep their hash.
    #[serde(default, skip_serializing_if = "Protocol::is_http")]
    pub protocol: Protocol,
}

/// How the proxy forwards an exposed app's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1: per-request balancing, `X-Forwarded-For`, rps and concurrency counters.
    #[default]
    Http,
    /// Plain TCP: per-connection balancing, bytes copied both ways.
    Tcp,
}

impl Protocol {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        }
    }

    /// Whether this is the default, HTTP.
    pub fn is_http(&self) -> bool {
        *self == Self::Http
    }
}

/// What the autoscaler measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// CPU use in percent of `resources.cpu`, averaged over instances.
    Cpu,
    /// Requests per second per instance, measured at the proxy.
    Rps,
    /// In-flight requests per instance, measured at the proxy.
    Concurrency,
}

impl Metric {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Rps => "rps",
            Self::Concurrency => "concurrency",
        }
    }
}

/// Autoscaling bounds (app totals) and target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Autoscale {
    /// Fewest instances; 0 scales to zero (the proxy holds the first request).
    pub min: u32,
    /// Most instances.
    pub max: u32,
    /// What is measured.
    pub metric: Metric,
    /// The per-instance value the autoscaler aims for.
    pub target: u32,
    /// Stabilization window for scaling up.
    pub scale_up_window: Duration,
    /// Stabilization window for scaling down.
    pub scale_down_window: Duration,
}

/// One kind of probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// `GET path` on the app's port; 2xx and 3xx are healthy.
    Http {
        /// Request path, starts with `/`.
        path: String,
        /// The app's port.
        port: u16,
    },
    /// A TCP connect to the port.
    Tcp {
        /// Port inside the instance's network namespace.
        port: u16,
    },
    /// A command run inside the instance; exit 0 is healthy.
    Exec {
        /// Argument vector.
        command: Vec<String>,
    },
}

/// The health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The probe.
    pub probe: Probe,
    /// Time between probes.
    pub interval: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Consecutive failures before unhealthy.
    pub failures: u32,
    /// Grace after start during which failures do not count.
    pub start_period: Duration,
}

/// Rollout settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Extra instances during a rollout.
    pub max_surge: u32,
    /// Instances that may be missing during a rollout.
    pub max_unavailable: u32,
    /// Time for the new revision to become healthy.
    pub deadline: Duration,
    /// Roll back when the deadline passes or the new revision crash-loops.
    pub auto_rollback: bool,
}

/// Stop settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    /// Sent first.
    pub signal: Signal,
    /// Time before SIGKILL.
    pub grace: Duration,
}

/// When an exited instance is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Always.
    Always,
    /// Only after a non-zero exit or a kill.
    OnFailure,
    /// Never.
    Never,
}

impl RestartPolicy {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        }
    }
}

/// Restart settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    /// When.
    pub policy: RestartPolicy,
    /// Longest wait between restarts (exponential backoff up to this).
    pub backoff_max: Duration,
}

/// A named volume kept by the agent under its data dir, mounted into every instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Name (a DNS label), unique within the app.
    pub name: String,
    /// Absolute mount path inside the container, normalized (no `//`, no trailing `/`).
    pub path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Where the app may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Hosts must have all these labels.
    pub labels: BTreeMap<String, String>,
    /// Put replicas on different hosts when there are enough.
    pub spread: bool,
}

/// Network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Own network namespace with a veth on the agent's bridge.
    Private,
    /// The host's network namespace.
    Host,
}

impl NetworkMode {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Host => "host",
        }
    }
}

/// Log rotation of an instance's stdout and stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logs {
    /// Rotate at this size.
    pub max_size: ByteSize,
    /// Keep this many rotated files.
    pub max_files: u32,
}
