//! One module per verb. Each exposes `Args` (clap) and `run(&Global, Args) -> Result<ExitCode>`.
//! A verb prints its results through [`crate::output`] and returns an error for failures;
//! [`exit_code`] maps errors to the contract's exit codes. No verb holds domain logic: that
//! lives in the library crates.

pub mod agent;
pub mod completions;
pub mod down;
pub mod exec;
pub mod image;
pub mod images;
pub mod inspect;
pub mod kill;
pub mod logs;
pub mod plan;
pub mod proxy;
pub mod ps;
pub mod pull;
pub mod rm;
pub mod rmi;
pub mod run;
pub mod runtime;
pub mod runtime_init;
pub mod sim_agents;
pub mod stop;
pub mod up;
pub mod validate;

pub mod apps;
pub mod controller;
pub mod events;
mod remote;
pub mod revisions;
pub mod rollback;
pub mod rollout;
pub mod status;
pub mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::output::Format;

/// Flags every verb accepts (DESIGN.md, contract for scripts), each with its environment
/// variable.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// Where berth keeps its state
    #[arg(
        long,
        env = "BERTH_DATA_DIR",
        default_value = "/var/lib/berth",
        global = true
    )]
    pub data_dir: PathBuf,
    /// The controller's URL
    #[arg(
        long,
        env = "BERTH_CONTROLLER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub controller: String,
    /// API token for the controller
    #[arg(long, env = "BERTH_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The controller's CA certificate (PEM) for https:// controller URLs (default: the
    /// data dir's `controller/ca.pem`, written by a controller on this host)
    #[arg(long, env = "BERTH_CA", global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A registry (HOST:PORT) reached over plain HTTP; repeatable. Only these use plain HTTP
    #[arg(
        long = "insecure-registry",
        env = "BERTH_INSECURE_REGISTRIES",
        value_delimiter = ',',
        global = true
    )]
    pub insecure_registries: Vec<String>,
    /// A pull mirror REGISTRY=HOST[:PORT] (e.g. docker.io=127.0.0.1:5000): that registry's
    /// images are fetched from the mirror only; repeatable
    #[arg(
        long = "registry-mirror",
        env = "BERTH_REGISTRY_MIRRORS",
        value_delimiter = ',',
        global = true
    )]
    pub registry_mirrors: Vec<String>,
    /// Output format of verbs that print tables
    /// Output format of verbs that print tables: table, json or yaml
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FORMAT",
        default_value = "table",
        value_parser = crate::output::parse_format,
        global = true
    )]
    pub output: Format,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `berth_agent=debug`
    #[arg(long, env = "BERTH_LOG", default_value = "warn", global = true)]
    pub log: String,
}

impl Global {
    /// `--registry-mirror` as registry → mirror host (`index.docker.io` means `docker.io`).
    pub fn mirrors(&self) -> Result<std::collections::BTreeMap<String, String>, UsageError> {
        self.registry_mirrors
            .iter()
            .filter(|m| !m.is_empty())
            .map(|m| {
                let (registry, mirror) = m
                    .split_once('=')
                    .filter(|(r, h)| !r.is_empty() && !h.is_empty() && !h.contains('/'))
                    .ok_or_else(|| {
                        UsageError(format!(
                            "--registry-mirror {m:?} is not REGISTRY=HOST[:PORT], e.g. docker.io=127.0.0.1:5000"
                        ))
                    })?;
                let registry = match registry {
                    "index.docker.io" | "registry-1.docker.io" => "docker.io",
                    r => r,
                };
                Ok((registry.to_owned(), mirror.to_owned()))
            })
            .collect()
    }
}

/// An error in how berth was called, as opposed to a failure of what was asked: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Logs go to stderr so that stdout stays parseable (`-o json`).
pub fn init_logging(global: &Global) {
    let filter = tracing_subscriber::EnvFilter::try_new(&global.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Maps a verb's outcome to the process exit code: usage errors 2, other errors 1.
pub fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("berth: {err:#}");
            if err.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// The cgroup backend for container verbs.
pub fn cgroups() -> Box<dyn berth_agent::host::container::Cgroups> {
    use berth_agent::host::container::{HostCgroups, NoCgroups};
    match HostCgroups::detect(std::path::Path::new("/proc/self/mountinfo")) {
        Ok(host) => Box::new(host),
        Err(e) => {
            tracing::warn!("no cgroups: {e}; containers run without limits");
            Box::new(NoCgroups)
        }
    }
}
