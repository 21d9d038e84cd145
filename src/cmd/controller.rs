//! `berth controller`: runs the controller daemon (git sync, store, agent and CLI API) until
//! SIGINT/SIGTERM, then shuts down cleanly.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use berth_controller::resolve::{RegistryResolver, credentials_from_docker_config};
use berth_controller::{Config, Controller, StoreConfig};

use super::{Global, UsageError};

/// Arguments of `berth controller`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest repository: a URL (https://, ssh://, file://) or a local path
    #[arg(long)]
    pub repo: String,
    /// The branch to follow
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Where the API listens
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Time between polls of the repository (`POST /v1/sync` fetches at once)
    #[arg(long, default_value = "5s")]
    pub poll_interval: berth_manifests::Duration,
    /// A host silent longer than this is marked down and its apps are placed on other
    /// matching hosts; a host back from down gets work once it has reported this long
    #[arg(long, alias = "node-grace", default_value = "30s")]
    pub host_grace: berth_manifests::Duration,
    /// Make `GET /metrics` require the API token too (scrapers then need a bearer token)
    #[arg(long)]
    pub metrics_token_required: bool,
    /// Where the state lives: `embedded` (a file under --data-dir) or
    /// `etcd://HOST:PORT[,HOST:PORT...]` (several controllers, one elected leader)
    #[arg(long, env = "BERTH_STORE", default_value = "embedded")]
    pub store: String,
    /// With etcd: the leader's lease; a dead leader is replaced within about this long
    #[arg(long, default_value = "5s")]
    pub lease_ttl: berth_manifests::Duration,
    /// With etcd: the URL the other controllers forward writes to (default: http://<--listen>)
    #[arg(long)]
    pub advertise: Option<String>,
    /// Most API connections open at once; past it new ones are closed at once (default:
    /// the open-file limit, raised to its maximum at start, less 256, and at least 1024;
    /// each agent holds one or two)
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most API connections open at once from one IP address (raise it for load tests of
    /// many simulated agents on one address)
    #[arg(long, default_value_t = berth_controller::server::MAX_CONNECTIONS_PER_PEER)]
    pub max_connections_per_peer: usize,
    /// Serve HTTPS with the controller's own CA and accept agents' node certificates (the
    /// default when --listen is not a loopback address)
    #[arg(long, conflicts_with = "insecure_http")]
    pub tls: bool,
    /// Serve plain HTTP even on a non-loopback --listen (tokens then cross the network in
    /// the clear; agents cannot --join)
    #[arg(long)]
    pub insecure_http: bool,
    /// Another name (DNS name or IP address) clients reach the controller by, for its
    /// serving certificate; repeatable
    #[arg(long = "tls-name", value_delimiter = ',')]
    pub tls_names: Vec<String>,
    /// Lifetime of agents' node certificates (they renew at two thirds of it)
    #[arg(long, default_value = "24h")]
    pub node_cert_lifetime: berth_manifests::Duration,
}

/// Runs `berth controller`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    if args.poll_interval.as_millis() < 100 {
        return Err(UsageError("--poll-interval must be at least 100ms".into()).into());
    }
    if args.lease_ttl.as_millis() < 2000 {
        return Err(
            UsageError("--lease-ttl must be at least 2s (etcd's shortest lease)".into()).into(),
        );
    }
    let store = StoreConfig::parse(&args.store).map_err(|e| UsageError(format!("--store: {e}")))?;
    let credentials = credentials_from_docker_config(&docker_config_path())?;
    let resolver = RegistryResolver::new(global.insecure_registries.clone(), credentials)?
        .with_mirrors(global.mirrors()?);
    let mut config = Config::new(
        global.data_dir.clone(),
        args.repo,
        args.branch,
        Arc::new(resolver),
    );
    config.listen = args.listen;
    config.poll_interval = args.poll_interval.as_std();
    config.host_grace = args.host_grace.as_std();
    config.token = global.token.clone();
    config.metrics_token_required = args.metrics_token_required;
    config.store = store;
    config.lease_ttl = args.lease_ttl.as_std();
    config.advertise = args.advertise;
    // a controller of many agents holds a connection per long-poll: use every file
    // descriptor the system allows, and size the connection cap to them
    let nofile = match berth_agent::host::sys::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            1024
        }
    };
    config.max_connections = args
        .max_connections
        .unwrap_or_else(|| auto_max_connections(nofile));
    config.max_connections_per_peer = args.max_connections_per_peer;
    if args.node_cert_lifetime.as_millis() < 3000 {
        return Err(UsageError("--node-cert-lifetime must be at least 3s".into()).into());
    }
    config.tls = args.tls || (!args.insecure_http && !args.listen.ip().is_loopback());
    config.tls_names = args.tls_names;
    config.node_cert_lifetime = args.node_cert_lifetime.as_std();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let handle = Controller::start(config).await?;
        if let Some(fingerprint) = handle.ca_fingerprint() {
            eprintln!(
                "berth controller CA {fingerprint} (certificate in {})",
                berth_controller::pki::ca_path(&global.data_dir).display()
            );
        }
        eprintln!(
            "berth controller listening on {} (token in {})",
            handle.url(),
            if global.token.is_some() {
                "--token".to_string()
            } else {
                berth_controller::token::token_path(&global.data_dir)
                    .display()
                    .to_string()
            }
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        handle.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The default `--max-connections` for an open-file limit of `nofile`: all of it but 256
/// descriptors (store, git, logs), at least [`berth_controller::server::MAX_CONNECTIONS`].
fn auto_max_connections(nofile: u64) -> usize {
    usize::try_from(nofile.saturating_sub(256))
        .unwrap_or(usize::MAX)
        .max(berth_controller::server::MAX_CONNECTIONS)
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub(crate) fn docker_config_path() -> std::path::PathBuf {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => std::path::PathBuf::from(dir).join("config.json"),
        None => std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".docker/config.json"),
    }
}
