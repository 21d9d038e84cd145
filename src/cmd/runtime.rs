//! `berth runtime create|start|state|kill|delete|run`: the OCI runtime command line with
//! runc-compatible flags, so OCI tooling can drive berth's runtime. Containers live under
//! `--root` (default `/run/berth-runtime`), one state dir each.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use berth_agent::host::container::{self as host, RunOptions, Store};
use berth_agent::runtime::oci::{self, Hooks, OciState};
use berth_agent::runtime::state::Status;

use super::UsageError;

/// Arguments of `berth runtime`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for container state
    #[arg(long, default_value = "/run/berth-runtime")]
    pub root: PathBuf,
    /// Accepted for runc compatibility (berth logs to stderr)
    #[arg(long, hide = true)]
    pub log_format: Option<String>,
    /// Accepted for runc compatibility
    #[arg(long, hide = true)]
    pub debug: bool,
    /// runc's systemd cgroup driver (not supported)
    #[arg(long, hide = true)]
    pub systemd_cgroup: bool,
    #[command(subcommand)]
    pub command: Verb,
}

/// Flags shared by `create` and `run`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The bundle directory (config.json and the rootfs)
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// Write the init's pid to this file
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Terminal support (not supported yet: refused)
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility (berth always uses pivot_root)
    #[arg(long, hide = true)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility
    #[arg(long, hide = true)]
    pub no_new_keyring: bool,
    /// The container id
    pub id: String,
}

/// The OCI runtime verbs.
#[derive(Debug, clap::Subcommand)]
pub enum Verb {
    /// Create a container from a bundle; its program waits for `start`
    Create(CreateArgs),
    /// Run the program of a created container
    Start {
        /// The container id
        id: String,
    },
    /// Print the OCI state JSON
    State {
        /// The container id
        id: String,
    },
    /// Send a signal (default SIGTERM)
    Kill {
        /// Signal every process of the container
        #[arg(short = 'a', long)]
        all: bool,
        /// The container id
        id: String,
        /// Signal name or number
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Delete a stopped container (`--force`: kill it first)
    Delete {
        /// Kill a created or running container first
        #[arg(short = 'f', long)]
        force: bool,
        /// The container id
        id: String,
    },
    /// Create and start a container, and wait for it (unless --detach)
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return after start
        #[arg(short = 'd', long)]
        detach: bool,
    },
}

fn load(
    args: &CreateArgs,
) -> anyhow::Result<(
    berth_agent::runtime::spec::ContainerSpec,
    Hooks,
    PathBuf,
    serde_json::Value,
)> {
    if args.console_socket.is_some() {
        return Err(UsageError(
            "--console-socket (terminal: true) is not supported by berth yet".into(),
        )
        .into());
    }
    berth_agent::runtime::id::validate_name(&args.id).map_err(|e| UsageError(e.to_string()))?;
    let bundle = std::path::absolute(&args.bundle)
        .with_context(|| format!("bundle {}", args.bundle.display()))?;
    let path = bundle.join("config.json");
    let spec =
        oci_spec::runtime::Spec::load(&path).with_context(|| format!("read {}", path.display()))?;
    let config = serde_json::to_value(&spec).context("config.json")?;
    if config["process"]["terminal"].as_bool() == Some(true) {
        return Err(UsageError("process.terminal is not supported by berth yet".into()).into());
    }
    let (spec, hooks) = oci::to_spec(&args.id, &bundle, &config)?;
    Ok((spec, hooks, bundle, config))
}

fn state_of(store: &Store, id: &str) -> anyhow::Result<OciState> {
    let listed = store.get(id)?;
    if listed.state.spec.id != id {
        return Err(berth_agent::host::container::ContainerError::NotFound(id.to_string()).into());
    }
    let pid = match listed.status {
        Status::Created | Status::Running => listed.state.init.map(|p| p.pid).unwrap_or(0),
        _ => 0,
    };
    let bundle = listed.state.bundle.clone().unwrap_or_default();
    let annotations = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["annotations"].as_object().cloned())
        .unwrap_or_default();
    Ok(OciState {
        oci_version: "1.0.2".into(),
        id: id.to_string(),
        status: listed.status.to_string(),
        pid,
        bundle: bundle.display().to_string(),
        annotations,
    })
}

fn hooks_path(store: &Store, id: &str) -> PathBuf {
    store.dir(id).join("hooks.json")
}

fn create(store: &Store, args: &CreateArgs) -> anyhow::Result<()> {
    let (spec, hooks, bundle, _) = load(args)?;
    let id = spec.id.clone();
    std::fs::create_dir_all(store_root(store)).context("create --root")?;
    let cgroups = super::cgroups();
    let pid = host::create_oci_forked(store, cgroups.as_ref(), spec, &bundle)?;
    std::fs::write(hooks_path(store, &id), serde_json::to_vec(&hooks)?).context("save hooks")?;
    if let Some(f) = &args.pid_file {
        std::fs::write(f, pid.to_string())
            .with_context(|| format!("write pid file {}", f.display()))?;
    }
    let state = serde_json::to_vec(&state_of(store, &id)?)?;
    if let Err(e) = host::run_hooks(&hooks.create_runtime, &state) {
        let _ = host::remove(store, cgroups.as_ref(), &id, true);
        return Err(e.into());
    }
    Ok(())
}

fn store_root(store: &Store) -> PathBuf {
    store
        .dir("x")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn saved_hooks(store: &Store, id: &str) -> Hooks {
    std::fs::read(hooks_path(store, id))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn start(store: &Store, id: &str) -> anyhow::Result<()> {
    if store.find(id)? != id {
        return Err(berth_agent::host::container::ContainerError::NotFound(id.to_string()).into());
    }
    let created = state_of(store, id)?;
    host::start_oci(store, id)?;
    // The hooks see the container `start` produced: running, with its pid, even when a
    // short program has already ended by now (runtime spec "poststart").
    let mut state = state_of(store, id)?;
    state.status = Status::Running.to_string();
    state.pid = created.pid;
    let state = serde_json::to_vec(&state)?;
    if let Err(e) = host::run_hooks(&saved_hooks(store, id).poststart, &state) {
        eprintln!("berth: poststart hook: {e}");
    }
    Ok(())
}

/// Runs `berth runtime`.
pub fn run(_global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    if args.systemd_cgroup {
        return Err(UsageError(
            "--systemd-cgroup is not supported: berth manages cgroupfs directly".into(),
        )
        .into());
    }
    let store = Store::at(&args.root);
    match args.command {
        Verb::Create(c) => create(&store, &c)?,
        Verb::Start { id } => start(&store, &id)?,
        Verb::State { id } => crate::output::json(&state_of(&store, &id)?)?,
        Verb::Kill { all, id, signal } => {
            let sig = super::kill::signal(&signal)?;
            if all {
                let listed = store.get(&id)?;
                let cgroups = super::cgroups();
                cgroups.signal_all(&listed.state.spec, sig)?;
            } else {
                host::kill(&store, &id, sig)?;
            }
        }
        Verb::Delete { force, id } => {
            let found = store.find(&id)?;
            if found != id {
                return Err(berth_agent::host::container::ContainerError::NotFound(id).into());
            }
            let st = state_of(&store, &id)?;
            let hooks = saved_hooks(&store, &id);
            let cgroups = super::cgroups();
            host::remove(&store, cgroups.as_ref(), &id, force)?;
            let mut st = st;
            st.status = "stopped".into();
            if let Err(e) = host::run_hooks(&hooks.poststop, &serde_json::to_vec(&st)?) {
                eprintln!("berth: poststop hook: {e}");
            }
        }
        Verb::Run { create: c, detach } => {
            if detach {
                create(&store, &c)?;
                start(&store, &c.id)?;
            } else {
                let (spec, _hooks, _, _) = load(&c)?;
                std::fs::create_dir_all(store_root(&store)).context("create --root")?;
                let cgroups = super::cgroups();
                let opts = RunOptions {
                    remove: true,
                    interactive: true,
                };
                let exit = host::run_foreground(&store, cgroups.as_ref(), spec, &opts)?;
                return Ok(ExitCode::from(u8::try_from(exit.code).unwrap_or(255)));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
