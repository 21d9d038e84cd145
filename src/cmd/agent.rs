//! `berth agent --name N [--labels k=v,…]`: the per-host daemon. Talks to the controller at
//! the global `--controller` with the global `--token` (else the token file of a controller
//! sharing the data dir), keeps its state under
//! `<data-dir>/agent/`, its images under `<data-dir>/images/`. Runs until SIGINT/SIGTERM;
//! containers keep running after it exits. (`--join` with mTLS is the multi-host issue.)

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
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub net: NetArgs,
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
        tracing::info!(controller = %global.controller, name = %args.name, "agent running");
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
            &global.controller,
            global.token.clone(),
            stop_signal(),
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Assembles the agent on this host (state, image store, network, runtime, probes, proxy)
/// against the controller at `controller_url` and runs it until `shutdown` resolves. Shared
/// by `berth agent` and `berth up`. Without `token`, the token file of a controller sharing
/// the data dir. `net` wires private instances (bridge, subnet, name prefixes). The proxy
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
    controller_url: &str,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let state =
        FileState::open(global.data_dir.join("agent")).map_err(|e| anyhow::anyhow!(e.chain()))?;
    let images = ImageStore::open(&global.data_dir).context("opening the image store")?;
    let controller = match token {
        Some(t) => HttpController::new(controller_url, Some(t)),
        None => HttpController::with_token_file(
            controller_url,
            berth_controller::token::token_path(&global.data_dir),
        ),
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
