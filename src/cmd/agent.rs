//! `berth agent --name N [--labels k=v,…]`: the per-host daemon. Talks to the controller at
//! the global `--controller` with the global `--token` (else the token file of a controller
//! sharing the data dir), or, with `--join URL --token T [--ca-fingerprint sha256:…]`,
//! exchanges the join token for a node certificate once and speaks mTLS from then on
//! (`berth_agent::host::node_cert`). Keeps its state under `<data-dir>/agent/`, its images
//! under `<data-dir>/images/`. Runs until SIGINT/SIGTERM; containers keep running after it
//! exits.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use berth_agent::daemon::{Agent, AgentConfig, Clock};
use berth_agent::host::agentstate::FileState;
use berth_agent::host::container::{Cgroups, HostCgroups, NoCgroups};
use berth_agent::host::controller_client::HttpController;
use berth_agent::host::deploy_images::StoreImages;
use berth_agent::host::deploy_runtime::ContainerRuntime;
use berth_agent::host::image_store::ImageStore;
use berth_agent::host::net::{HostNetns, Network};
use berth_agent::host::node_cert::{self, NodeCert};
use berth_agent::host::probe::NetProber;
use berth_agent::host::traffic::ProxyTraffic;
use berth_agent::net::NetConfig;
use berth_agent::reconcile::exec::Effects;
use berth_agent::reconcile::traits::{Runtime, StateStore};
use berth_manifests::is_dns_label;

use super::UsageError;
use super::pull::RegistryArgs;

/// `berth agent` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// This host's name in the cluster (a DNS label)
    #[arg(long, env = "BERTH_HOST_NAME")]
    pub name: String,
    /// Placement labels, k=v,…
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Serve `GET /metrics` (OpenMetrics) on this address, e.g. 127.0.0.1:9700
    #[arg(long, env = "BERTH_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// What this host offers to apps, cpu=CORES,memory=SIZE (either may be left out);
    /// default: the online cpus and MemTotal minus a reserve (docs/multi-host.md)
    #[arg(long, env = "BERTH_CAPACITY", value_name = "cpu=2,memory=4Gi")]
    pub capacity: Option<String>,
    /// Report to the controller at least this often (the heartbeat; keep it well under the
    /// controller's --host-grace)
    #[arg(long, default_value = "10s")]
    pub report_interval: berth_manifests::Duration,
    /// The parent cgroup of the instances (one per agent on a host)
    #[arg(long, env = "BERTH_CGROUP_PARENT", default_value = DEFAULT_CGROUP_PARENT)]
    pub cgroup_parent: String,
    /// Join the controller at this URL (https://…) with the join token --token, then use
    /// mTLS with the node certificate kept under <data-dir>/agent/tls (later starts reuse it)
    #[arg(long, value_name = "URL")]
    pub join: Option<String>,
    /// With --join: the controller CA's sha256 (`berth token create --role join` prints
    /// it), checked before the join token is sent; or pass the CA itself with --ca FILE
    #[arg(long, value_name = "sha256:HEX", requires = "join")]
    pub ca_fingerprint: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub net: NetArgs,
}

/// How the agent reaches the controller.
pub enum Link {
    /// Bearer token (`None`: the token file of a controller sharing the data dir).
    Token {
        /// The controller's URL.
        url: String,
        /// The token.
        token: Option<String>,
    },
    /// mTLS with a node certificate, renewed in the background.
    Node {
        /// The controller's URL.
        url: String,
        /// The certificate.
        cert: NodeCert,
    },
}

/// The node certificate for `--join`: the one under the data dir when it is this host's
/// and still valid, else a new one for the join token.
async fn joined(global: &super::Global, args: &Args, url: &str) -> anyhow::Result<NodeCert> {
    let dir = node_cert::dir(&global.data_dir);
    if let Some(cert) = node_cert::load(&dir).map_err(anyhow::Error::msg)? {
        if cert.host != args.name {
            return Err(UsageError(format!(
                "{} holds host {}'s node certificate, not {}'s; use that name or another --data-dir",
                dir.display(),
                cert.host,
                args.name
            ))
            .into());
        }
        cert.check_valid(node_cert::now_ms(), &dir)
            .map_err(anyhow::Error::msg)?;
        tracing::info!(host = %cert.host, not_after_ms = cert.not_after_ms, "using the stored node certificate");
        return Ok(cert);
    }
    let Some(token) = global.token.as_deref() else {
        return Err(
            UsageError("--join needs the join token: --token T or BERTH_TOKEN".into()).into(),
        );
    };
    let ca = match (&args.ca_fingerprint, &global.ca) {
        (_, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the controller CA --ca {}", path.display()))?,
        (Some(pin), None) => {
            let pin = node_cert::parse_pin(pin).map_err(UsageError)?;
            node_cert::discover_ca(url, &pin)
                .await
                .map_err(anyhow::Error::msg)?
        }
        (None, None) => {
            return Err(UsageError(
                "--join needs --ca-fingerprint sha256:… (berth token create --role join prints \
                 it) or --ca FILE: the controller is authenticated before the join token is sent"
                    .into(),
            )
            .into());
        }
    };
    let cert = node_cert::join(url, token, &args.name, &ca)
        .await
        .map_err(anyhow::Error::msg)?;
    node_cert::save(&dir, &cert)
        .with_context(|| format!("storing the node certificate under {}", dir.display()))?;
    tracing::info!(host = %cert.host, not_after_ms = cert.not_after_ms, "joined; node certificate stored");
    Ok(cert)
}

/// How the agent wires `network: private` instances (docs/networking.md). Tests and
/// several agents on one host give each agent its own names.
#[derive(Debug, Clone, clap::Args)]
pub struct NetArgs {
    /// The instances' bridge (at most 15 bytes)
    #[arg(long, env = "BERTH_BRIDGE", default_value = "berth0")]
    pub bridge: String,
    /// The instances' subnet; the bridge holds its first address
    #[arg(long, env = "BERTH_SUBNET", default_value = "10.88.0.0/16")]
    pub subnet: String,
    /// Prefix of instance network namespaces (/run/netns/<prefix><instance>)
    #[arg(long, env = "BERTH_NETNS_PREFIX", default_value = "berth-")]
    pub netns_prefix: String,
    /// Prefix of host-side veths (at most 7 bytes)
    #[arg(long, env = "BERTH_VETH_PREFIX", default_value = "bv")]
    pub veth_prefix: String,
    /// Host ports for `network: host` instances, LO-HI
    #[arg(long, env = "BERTH_HOST_PORTS", default_value = "20000-29999")]
    pub host_ports: String,
    /// Masquerade instance traffic leaving the host (iptables)
    #[arg(long, env = "BERTH_EGRESS_NAT")]
    pub egress_nat: bool,
}

impl NetArgs {
    /// The network configuration these flags describe.
    pub fn config(&self) -> Result<NetConfig, UsageError> {
        let subnet = self
            .subnet
            .parse()
            .map_err(|e| UsageError(format!("--subnet: {e}")))?;
        let ports = self
            .host_ports
            .split_once('-')
            .and_then(|(lo, hi)| Some((lo.parse().ok()?, hi.parse().ok()?)))
            .ok_or_else(|| {
                UsageError(format!("--host-ports {:?} is not LO-HI", self.host_ports))
            })?;
        let cfg = NetConfig {
            bridge: self.bridge.clone(),
            subnet,
            netns_prefix: self.netns_prefix.clone(),
            veth_prefix: self.veth_prefix.clone(),
            host_ports: ports,
            egress_nat: self.egress_nat,
        };
        cfg.validate().map_err(|e| UsageError(e.to_string()))?;
        Ok(cfg)
    }
}

/// The parent cgroup of an agent's instances unless `--cgroup-parent` says otherwise.
pub const DEFAULT_CGROUP_PARENT: &str = "berth";

pub(crate) fn labels(raw: &[String]) -> Result<BTreeMap<String, String>, UsageError> {
    raw.iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| UsageError(format!("label {l:?} is not key=value")))
        })
        .collect()
}

/// Runs the agent until a stop signal.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    if !is_dns_label(&args.name) {
        return Err(UsageError(format!("--name {:?} is not a DNS label", args.name)).into());
    }
    let mut config = AgentConfig::new(args.name.clone());
    config.labels = labels(&args.labels)?;
    let detected = berth_agent::host::capacity::detect().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read this host's capacity; declaring none (not limited)");
        berth_manifests::wire::Capacity::default()
    });
    config.capacity = match &args.capacity {
        Some(spec) => {
            berth_agent::host::capacity::parse_override(spec, detected).map_err(UsageError)?
        }
        None => detected,
    };
    if args.report_interval.as_millis() < 100 {
        return Err(UsageError("--report-interval must be at least 100ms".into()).into());
    }
    config.report_interval = args.report_interval.as_std();
    let options = args.registry.pull_options(global)?;
    let net = args.net.config()?;
    let rt = super::pull::runtime()?;
    rt.block_on(async {
        let link = match &args.join {
            Some(url) => Link::Node {
                url: url.clone(),
                cert: joined(global, &args, url).await?,
            },
            None => Link::Token {
                url: global.controller.clone(),
                token: global.token.clone(),
            },
        };
        tracing::info!(name = %args.name, "agent running");
        if let Some(addr) = args.metrics_listen {
            let (bound, serving) = berth_agent::host::metrics_server::bind(addr)
                .await
                .with_context(|| format!("listening for metrics on {addr}"))?;
            tracing::info!(%bound, "metrics at /metrics");
            tokio::spawn(serving);
        }
        serve(
            global,
            config,
            options,
            &args.cgroup_parent,
            net,
            link,
            stop_signal(),
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Assembles the agent on this host (state, image store, network, runtime, probes, proxy)
/// against the controller `link` names and runs it until `shutdown` resolves. Shared
/// by `berth agent` and `berth up`. With a node certificate, it is renewed in the background. `net` wires private instances (bridge, subnet, name prefixes). The proxy
/// (`berth proxy`, started from this binary when none runs for the data dir) outlives the
/// agent; `berth_agent::host::traffic::teardown` stops it and removes the network.
#[allow(
    clippy::too_many_arguments,
    reason = "two call sites (agent, up) that pass their own flags straight through"
)]
pub async fn serve(
    global: &super::Global,
    config: AgentConfig,
    options: berth_agent::host::image_store::PullOptions,
    cgroup_parent: &str,
    net: NetConfig,
    link: Link,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let state =
        FileState::open(global.data_dir.join("agent")).map_err(|e| anyhow::anyhow!(e.chain()))?;
    let images = ImageStore::open(&global.data_dir).context("opening the image store")?;
    let mut renewal = None;
    let controller = match link {
        Link::Token {
            url,
            token: Some(t),
        } => HttpController::new(&url, Some(t)),
        Link::Token { url, token: None } => HttpController::with_token_file(
            &url,
            berth_controller::token::token_path(&global.data_dir),
        ),
        Link::Node { url, cert } => {
            HttpController::with_node_cert(&url, &cert.ca_pem, &cert.identity_pem()).inspect(|c| {
                renewal = Some(tokio::spawn(node_cert::renew_loop(
                    c.clone(),
                    node_cert::dir(&global.data_dir),
                    cert,
                )));
            })
        }
    }
    .map_err(|e| anyhow::anyhow!(e.chain()))?;
    let data_dir = global.data_dir.clone();
    let network = tokio::task::spawn_blocking(move || {
        Network::open_deferred(net, HostNetns::Current, &data_dir)
    })
    .await?
    .context("opening the instances' network state")?;
    let network = Arc::new(network);
    let cgroups = cgroups();
    berth_agent::metrics::global().set_usage_source(Box::new(
        berth_agent::host::usage::CgroupUsage::new(&global.data_dir, cgroups.clone()),
    ));
    let runtime = ContainerRuntime::new(&global.data_dir, images.clone(), cgroups)
        .map_err(|e| anyhow::anyhow!(e.chain()))?
        .with_cgroup_parent(cgroup_parent)
        .with_network(network.clone());
    // Re-adopt the containers that outlived the previous agent, then remove the network
    // leftovers of the ones that did not.
    let adopted = runtime
        .list()
        .await
        .map_err(|e| anyhow::anyhow!(e.chain()))?;
    let alive: HashSet<String> = adopted.iter().map(|i| i.id.clone()).collect();
    let cleaned = {
        let network = network.clone();
        tokio::task::spawn_blocking(move || network.cleanup_orphans(&alive)).await?
    }
    .context("removing network leftovers of gone instances")?;
    if !cleaned.netns.is_empty() || !cleaned.veths.is_empty() {
        tracing::info!(netns = ?cleaned.netns, veths = ?cleaned.veths, "removed network leftovers");
    }
    let mut keep: BTreeSet<String> = adopted.into_iter().map(|i| i.app).collect();
    if let Ok(Some(a)) = state.load_assignment() {
        keep.extend(a.apps.into_iter().map(|app| app.target.app));
    }
    let exe = std::env::current_exe().context("finding the berth binary to start the proxy")?;
    let traffic = ProxyTraffic::open(&exe, &global.data_dir, &keep)
        .await
        .map_err(|e| anyhow::anyhow!(e.chain()))?;
    let traffic = Arc::new(traffic);
    let refresher = tokio::spawn(
        traffic
            .clone()
            .refresh_metrics(std::time::Duration::from_secs(2)),
    );
    let fx = Effects {
        runtime: Arc::new(runtime),
        images: Arc::new(StoreImages::new(images, options)),
        prober: Arc::new(NetProber::new().context("building the probe client")?),
        traffic,
    };
    let agent = Agent::new(
        config,
        Arc::new(controller),
        Arc::new(state),
        fx,
        Clock::system(),
    )?;
    agent.run(shutdown).await;
    refresher.abort();
    if let Some(r) = renewal {
        r.abort();
    }
    Ok(())
}

/// `berth __probe_exec <data-dir> <id> -- CMD…`: the agent's exec-probe helper (re-executed
/// by the agent; not for people).
pub fn probe_exec() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let cgroups = cgroups();
    ExitCode::from(berth_agent::host::deploy_runtime::probe_exec_main(
        &args,
        cgroups.as_ref(),
    ))
}

pub(crate) fn cgroups() -> Arc<dyn Cgroups + Send + Sync> {
    match HostCgroups::detect(std::path::Path::new("/proc/self/mountinfo")) {
        Ok(host) => Arc::new(host),
        Err(e) => {
            tracing::warn!("no cgroups: {e}; instances run without limits");
            Arc::new(NoCgroups)
        }
    }
}

pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
