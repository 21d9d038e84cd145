//! `berth up`: berth all-in-one on this host — the controller (embedded store) and the agent
//! in one process, with manifests from a plain directory (`--manifests DIR`, committed into
//! an internal git repository under `<data-dir>/up/` whenever a manifest file changes) or
//! from a git repository (`--repo URL`). It prints each app's state and address as it
//! changes, runs until SIGINT/SIGTERM or `berth down`, and leaves the apps running when it
//! stops (the next `up` re-adopts them; `berth down` removes them). `-d` runs it in the
//! background and returns once the controller has synced and the agent has registered.
//!
//! `<data-dir>/up/up.pid` is the running `up`'s lock and record (pid, start time, URL);
//! `up.log` is the background run's output.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_agent::daemon::AgentConfig;
use berth_agent::host::pidlock::{self, PidLock, PidLockError};
use berth_controller::local::LocalRepo;
use berth_controller::resolve::{RegistryResolver, credentials_from_docker_config};
use berth_controller::{Config, Controller};
use berth_manifests::is_dns_label;
use tokio::sync::watch;

use super::pull::RegistryArgs;
use super::{Global, UsageError};

/// Arguments of `berth up`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["manifests", "repo"])))]
pub struct Args {
    /// A plain directory of manifests (committed into an internal repository on every change)
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// A git repository of manifests (URL or local path)
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,
    /// The branch of --repo (default main)
    #[arg(long, value_name = "B")]
    pub branch: Option<String>,
    /// Where the API, /metrics and the dashboard listen
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// This host's name (a DNS label; default: the hostname, else `local`)
    #[arg(long, env = "BERTH_HOST_NAME")]
    pub name: Option<String>,
    /// Placement labels of this host, k=v,…
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Time between polls of --repo (`POST /v1/sync` and changes of --manifests act at once)
    #[arg(long, default_value = "5s")]
    pub poll_interval: berth_manifests::Duration,
    /// Run in the background; return once the controller synced and the agent registered
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// The parent cgroup of the instances (one per agent on a host)
    #[arg(long, env = "BERTH_CGROUP_PARENT", default_value = super::agent::DEFAULT_CGROUP_PARENT)]
    pub cgroup_parent: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub net: super::agent::NetArgs,
}

/// `<data-dir>/up`.
pub fn up_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("up")
}

/// The running `up`'s lock and record.
pub fn pid_path(data_dir: &Path) -> PathBuf {
    up_dir(data_dir).join("up.pid")
}

fn log_path(data_dir: &Path) -> PathBuf {
    up_dir(data_dir).join("up.log")
}

/// How long `up -d` waits for the background process to be ready.
const DETACH_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `berth up`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let name = host_name(args.name.as_deref())?;
    if args.branch.is_some() && args.repo.is_none() {
        return Err(UsageError("--branch goes with --repo".into()).into());
    }
    if args.poll_interval.as_millis() < 100 {
        return Err(UsageError("--poll-interval must be at least 100ms".into()).into());
    }
    if let Some(dir) = &args.manifests {
        // Refuse a broken tree before starting anything; later mistakes are reported by the
        // controller while the last good state keeps running.
        if super::plan::load_both(global, &[dir])?.is_none() {
            return Ok(ExitCode::from(1));
        }
    }
    if let Some(rec) = pidlock::read(&pid_path(&global.data_dir))
        && rec.alive()
    {
        anyhow::bail!(
            "berth up already runs for data dir {} (pid {}); `berth down` stops it",
            global.data_dir.display(),
            rec.pid
        );
    }
    if args.detach {
        return detach(global);
    }
    foreground(global, args, name)
}

fn host_name(flag: Option<&str>) -> Result<String, UsageError> {
    if let Some(name) = flag {
        return if is_dns_label(name) {
            Ok(name.to_string())
        } else {
            Err(UsageError(format!("--name {name:?} is not a DNS label")))
        };
    }
    let host = berth_agent::host::container::hostname().to_ascii_lowercase();
    let label: String = host
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let label = label.trim_matches('-');
    Ok(if is_dns_label(label) {
        label.to_string()
    } else {
        "local".to_string()
    })
}

/// Starts `berth up` again without `-d`, in its own process group with its output in
/// `up.log`, and waits until it says it is ready (or exits).
fn detach(global: &Global) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;

    let dir = up_dir(&global.data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log_file = log_path(&global.data_dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .with_context(|| format!("opening {}", log_file.display()))?;
    let exe = std::env::current_exe().context("finding the berth binary")?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "-d" && a != "--detach")
        .collect();
    let mut child = std::process::Command::new(exe)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting berth up in the background")?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    let mut waited = Duration::ZERO;
    let step = Duration::from_millis(100);
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_file).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            anyhow::bail!(
                "berth up exited ({status}) before it was ready; its log is {}",
                log_file.display()
            );
        }
        if let Some(rec) = pidlock::read(&pid_path(&global.data_dir))
            && rec.pid == pid
            && rec.extra["state"] == "ready"
        {
            println!(
                "berth up running in the background (pid {pid}): controller {}, log {}",
                rec.extra["url"].as_str().unwrap_or("?"),
                log_file.display()
            );
            println!("`berth status` shows the apps; `berth down` stops and removes them");
            return Ok(ExitCode::SUCCESS);
        }
        if waited >= DETACH_TIMEOUT {
            anyhow::bail!(
                "berth up (pid {pid}) not ready after {DETACH_TIMEOUT:?}; it keeps starting — see {}",
                log_file.display()
            );
        }
        std::thread::sleep(step);
        waited += step;
    }
}

fn foreground(global: &Global, args: Args, name: String) -> anyhow::Result<ExitCode> {
    let pid_file = pid_path(&global.data_dir);
    let mut lock = PidLock::acquire(
        &pid_file,
        serde_json::json!({ "state": "starting", "url": format!("http://{}", args.listen) }),
    )
    .map_err(|e| match e {
        PidLockError::Held { pid, .. } => anyhow::anyhow!(
            "berth up already runs for data dir {} (pid {pid}); `berth down` stops it",
            global.data_dir.display()
        ),
        e => e.into(),
    })?;
    let (repo_url, branch, local) = match &args.manifests {
        Some(dir) => {
            let local = LocalRepo::open(&up_dir(&global.data_dir).join("manifests.git"), dir)
                .map_err(|e| {
                    anyhow::anyhow!("tracking {} in an internal repository: {e}", dir.display())
                })?;
            (
                local.url(),
                berth_controller::local::BRANCH.to_string(),
                Some(local),
            )
        }
        None => (
            args.repo.clone().unwrap_or_default(),
            args.branch.clone().unwrap_or_else(|| "main".into()),
            None,
        ),
    };
    let options = args.registry.pull_options(global)?;
    let net = args.net.config()?;
    let credentials = credentials_from_docker_config(&super::controller::docker_config_path())?;
    let resolver = RegistryResolver::new(global.insecure_registries.clone(), credentials)?
        .with_mirrors(global.mirrors()?);
    let mut config = Config::new(
        global.data_dir.clone(),
        repo_url.clone(),
        branch,
        Arc::new(resolver),
    );
    config.listen = args.listen;
    config.poll_interval = args.poll_interval.as_std();
    config.token = global.token.clone();
    let mut agent_config = AgentConfig::new(name.clone());
    agent_config.labels = super::agent::labels(&args.labels)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_keep_alive(super::pull::BLOCKING_KEEP_ALIVE)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let handle = Controller::start(config)
            .await
            .with_context(|| format!("starting the controller on {}", args.listen))?;
        let url = handle.url();
        // One /metrics for both halves.
        handle
            .core()
            .metrics()
            .set_extra(Box::new(|| berth_agent::metrics::global().encode_body()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let stopper = {
            let rx = stop_rx.clone();
            let tx = stop_tx.clone();
            async move {
                tokio::select! {
                    () = super::agent::stop_signal() => {}
                    () = stopped(rx) => {}
                }
                let _ = tx.send(true);
            }
        };
        let agent = {
            let tx = stop_tx.clone();
            let shutdown = stopped(stop_rx.clone());
            let token = handle.token().to_string();
            let url = url.clone();
            let cgroup_parent = args.cgroup_parent.clone();
            async move {
                let r = super::agent::serve(
                    global,
                    agent_config,
                    options,
                    &cgroup_parent,
                    net,
                    super::agent::Link::Token {
                        url,
                        token: Some(token),
                    },
                    shutdown,
                )
                .await;
                let _ = tx.send(true);
                r
            }
        };
        let core = handle.core().clone();
        let watcher = watch_manifests(local, core.clone(), stopped(stop_rx.clone()));
        let shown = show(
            core,
            About {
                host: &name,
                url: &url,
                token: handle.token(),
                repo: &repo_url,
                manifests: args.manifests.as_deref(),
            },
            &mut lock,
            stopped(stop_rx.clone()),
        );
        let ((), agent, (), ()) = tokio::join!(stopper, agent, watcher, shown);
        handle.shutdown().await.context("stopping the controller")?;
        agent
    });
    lock.release();
    result?;
    println!("berth up stopped; the apps keep running (`berth down` removes them)");
    Ok(ExitCode::SUCCESS)
}

/// Commits the directory's changes (a cheap scan every 250 ms); the controller sees the new
/// commit of a local repository at once. A failed commit is retried every 2 s.
async fn watch_manifests(
    local: Option<LocalRepo>,
    core: Arc<berth_controller::state::Core<berth_controller::store::AnyStore>>,
    stop: impl std::future::Future<Output = ()>,
) {
    let Some(local) = local else {
        return stop.await;
    };
    tokio::pin!(stop);
    let mut seen = Some(local.fingerprint());
    let mut pause = Duration::from_millis(250);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = Duration::from_millis(250);
        let now = local.fingerprint();
        if seen.as_ref() == Some(&now) {
            continue;
        }
        seen = Some(now);
        let repo = local.clone();
        let committed =
            tokio::task::spawn_blocking(move || repo.commit("berth up: manifests changed")).await;
        match committed {
            Ok(Ok(Some(id))) => {
                println!(
                    "manifests changed in {}: commit {}",
                    local.work_tree().display(),
                    &id[..12.min(id.len())]
                );
                if let Err(e) = core.sync().await {
                    println!("sync failed: {e}");
                }
            }
            Ok(Ok(None)) => {}
            // (a full disk, say): tried again every 2 s until it works, not only at the
            // next edit
            Ok(Err(e)) => {
                println!("cannot commit the manifests (trying again in 2 s): {e}");
                seen = None;
                pause = Duration::from_secs(2);
            }
            Err(e) => {
                println!("cannot commit the manifests (trying again in 2 s): {e}");
                seen = None;
                pause = Duration::from_secs(2);
            }
        }
    }
}

/// What `show` prints about this `up`.
struct About<'a> {
    host: &'a str,
    url: &'a str,
    token: &'a str,
    repo: &'a str,
    manifests: Option<&'a Path>,
}

/// Prints the source, then every change of an app's state, and marks `up` ready in its pid
/// file after the first sync.
async fn show(
    core: Arc<berth_controller::state::Core<berth_controller::store::AnyStore>>,
    about: About<'_>,
    lock: &mut PidLock,
    stop: impl std::future::Future<Output = ()>,
) {
    let About {
        host,
        url,
        token,
        repo,
        manifests,
    } = about;
    tokio::pin!(stop);
    let mut ready = false;
    let mut shown_apps: BTreeMap<String, String> = BTreeMap::new();
    let mut shown_errors: Vec<String> = Vec::new();
    loop {
        if let Ok(status) = core.status().await {
            let synced = status.sync.commit.is_some() || !status.sync.errors.is_empty();
            let registered = status.hosts.iter().any(|h| h.name == host);
            if !ready && synced && registered {
                ready = true;
                let source = manifests.map_or(repo.to_string(), |d| d.display().to_string());
                println!("berth up: controller {url}, host {host}, manifests from {source}");
                println!("dashboard: {url}/#token={token}");
                if let Err(e) = lock.update(serde_json::json!({
                    "state": "ready", "url": url, "host": host, "source": source,
                })) {
                    println!("cannot update {}: {e}", lock.record().pid);
                }
            }
            if status.sync.errors != shown_errors {
                for e in &status.sync.errors {
                    println!("manifests rejected (the last good state keeps running): {e}");
                }
                shown_errors = status.sync.errors.clone();
            }
            let ports = exposed_ports(&core, host).await;
            for app in &status.apps {
                let mut line = format!(
                    "{}: revision {}, {}/{} ready",
                    app.name, app.revision, app.ready, app.desired
                );
                if app.pinned {
                    line.push_str(", pinned");
                }
                if let Some(port) = ports.get(&app.name) {
                    line.push_str(&format!(", http://127.0.0.1:{port}"));
                }
                if let Some(e) = &app.last_error {
                    line.push_str(&format!(" — {e}"));
                }
                if shown_apps.get(&app.name) != Some(&line) {
                    println!("{line}");
                    shown_apps.insert(app.name.clone(), line);
                }
            }
            shown_apps.retain(|name, _| status.apps.iter().any(|a| &a.name == name));
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn exposed_ports(
    core: &berth_controller::state::Core<berth_controller::store::AnyStore>,
    host: &str,
) -> BTreeMap<String, u16> {
    match core.assignment(host).await {
        Ok(Some(a)) => a
            .apps
            .iter()
            .filter_map(|app| {
                Some((
                    app.target.app.clone(),
                    app.target.spec.expose.as_ref()?.port,
                ))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}
