//! `berth run`: one container on this host, no daemon (like `docker run`). In the
//! foreground the exit code is the container's (128 + signal when killed, 137 after an OOM
//! kill, with a message); with `-d` a shim owns the container and the id is printed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berth_agent::host::container::{self as host, RunOptions, Store};
use berth_agent::runtime::spec::{self, ContainerSpec, Network, Rootfs};

use super::UsageError;

/// Arguments of `berth run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Use this directory as the root filesystem
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Mount the rootfs as the read-only lower layer of an overlay with a private upper
    /// layer in the container's state dir (the directory is never changed)
    #[arg(long)]
    pub overlay: bool,
    /// Container name (unique on this host)
    #[arg(long)]
    pub name: Option<String>,
    /// Remove the container when it ends
    #[arg(long)]
    pub rm: bool,
    /// Run in the background under a shim; print the id
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep stdin attached
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run a minimal init as pid 1 that forwards signals to the program and reaps zombies
    #[arg(long)]
    pub init: bool,
    /// Environment variable KEY=VALUE (KEY alone copies it from here); repeatable
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Bind mount HOST:CONTAINER[:ro]; repeatable
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro]")]
    pub volumes: Vec<String>,
    /// Memory limit, e.g. 64Mi
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit in cores, e.g. 0.5
    #[arg(long)]
    pub cpus: Option<String>,
    /// Maximum number of processes
    #[arg(long)]
    pub pids: Option<i64>,
    /// User: uid, name, uid:gid or name:group (names from the rootfs's /etc/passwd, /etc/group)
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Mount the root filesystem read-only
    #[arg(long)]
    pub read_only: bool,
    /// Hostname (default: the short id)
    #[arg(long)]
    pub hostname: Option<String>,
    /// Network: private (own empty network namespace) or host
    #[arg(long, default_value = "private", value_parser = ["private", "host"])]
    pub network: String,
    /// Resource limit NAME=SOFT[:HARD], e.g. nofile=1024:2048; repeatable
    #[arg(long = "ulimit")]
    pub ulimits: Vec<String>,
    /// Parent cgroup, relative to each hierarchy's root
    #[arg(long, default_value = "berth")]
    pub cgroup_parent: String,
    /// Image reference; pulled into the local store when missing (`berth pull`)
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
    /// The program and its arguments (after `--`)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Builds the container spec from the flags.
pub fn build_spec(
    global: &super::Global,
    args: &Args,
    id: String,
) -> anyhow::Result<ContainerSpec> {
    let mut spec = match (&args.rootfs, &args.image) {
        (Some(dir), None) => {
            let dir =
                std::path::absolute(dir).with_context(|| format!("rootfs {}", dir.display()))?;
            if !dir.is_dir() {
                return Err(
                    UsageError(format!("rootfs {} is not a directory", dir.display())).into(),
                );
            }
            let rootfs = if args.overlay {
                Rootfs::Overlay { lowers: vec![dir] }
            } else {
                Rootfs::Dir { path: dir }
            };
            let command = if args.command.is_empty() {
                vec!["/bin/sh".to_string()]
            } else {
                args.command.clone()
            };
            ContainerSpec::new(id, rootfs, command)
        }
        (None, Some(image)) => spec_from_image(global, image, id, &args.command)?,
        (Some(_), Some(image)) => {
            return Err(UsageError(format!(
                "give either an image or --rootfs, not both (image {image:?})"
            ))
            .into());
        }
        (None, None) => return Err(UsageError("give an IMAGE or --rootfs DIR".into()).into()),
    };
    spec.name = args.name.clone();
    spec.readonly_rootfs = args.read_only;
    spec.init = args.init;
    for e in &args.env {
        if e.contains('=') {
            spec.set_env(e);
        } else if let Ok(v) = std::env::var(e) {
            spec.set_env(&format!("{e}={v}"));
        }
    }
    for v in &args.volumes {
        spec.mounts
            .push(spec::parse_volume(v).map_err(|e| UsageError(e.to_string()))?);
    }
    if let Some(m) = &args.memory {
        spec.resources.memory = Some(spec::parse_size(m).map_err(|e| UsageError(e.to_string()))?);
    }
    if let Some(c) = &args.cpus {
        let (quota, period) = spec::parse_cpus(c).map_err(|e| UsageError(e.to_string()))?;
        spec.resources.cpu_quota = Some(quota);
        spec.resources.cpu_period = Some(period);
    }
    if let Some(p) = args.pids {
        if p < 1 {
            return Err(UsageError(format!("--pids {p} must be at least 1")).into());
        }
        spec.resources.pids = Some(p);
    }
    if let Some(u) = &args.user {
        spec.user = u.clone();
    }
    if let Some(w) = &args.workdir {
        spec.cwd = w.clone();
    }
    if let Some(h) = &args.hostname {
        spec.hostname = h.clone();
    }
    if args.network == "host" {
        spec.network = Network::Host;
        spec.namespaces.net = false;
    }
    for u in &args.ulimits {
        let r = spec::parse_rlimit(u).map_err(|e| UsageError(e.to_string()))?;
        spec.rlimits.retain(|x| x.resource != r.resource);
        spec.rlimits.push(r);
    }
    spec.cgroup_parent = args.cgroup_parent.clone();
    if let Some(name) = &spec.name {
        berth_agent::runtime::id::validate_name(name).map_err(|e| UsageError(e.to_string()))?;
    }
    spec.validate().map_err(|e| UsageError(e.to_string()))?;
    Ok(spec)
}

/// Runs `berth run`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let id = host::new_id()?;
    let spec = build_spec(global, &args, id)?;
    let store = Store::new(&global.data_dir);
    let cgroups = super::cgroups();
    let opts = RunOptions {
        remove: args.rm,
        interactive: args.interactive,
    };
    if args.detach {
        if args.interactive {
            return Err(UsageError("-i cannot be combined with -d".into()).into());
        }
        let id = spec.id.clone();
        host::run_detached_forked(&store, cgroups.as_ref(), spec, args.rm)?;
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    let limit = spec.resources.memory;
    let exit = host::run_foreground(&store, cgroups.as_ref(), spec, &opts)?;
    if exit.oom_killed {
        let limit = limit
            .map(spec::format_size)
            .unwrap_or_else(|| "unknown".into());
        eprintln!("killed: out of memory (limit {limit})");
    }
    Ok(ExitCode::from(u8::try_from(exit.code).unwrap_or(255)))
}

/// The spec of a container running `image` from the local store, pulling it first when the
/// store does not have it. The pull runs in a child `berth pull` so that this process stays
/// single-threaded: the container is cloned from it.
fn spec_from_image(
    global: &super::Global,
    image: &str,
    id: String,
    command: &[String],
) -> anyhow::Result<ContainerSpec> {
    let store = berth_agent::host::image_store::ImageStore::open(&global.data_dir)
        .with_context(|| format!("image store in {}", global.data_dir.display()))?;
    let found = match store.get(image) {
        Ok(found) => found,
        Err(e) if e.kind() == berth_agent::image::ErrorKind::NotFound => {
            let exe = std::env::current_exe().context("path of the berth binary")?;
            let mut pull = std::process::Command::new(exe);
            pull.arg("--data-dir").arg(&global.data_dir);
            if !global.insecure_registries.is_empty() {
                pull.arg("--insecure-registry")
                    .arg(global.insecure_registries.join(","));
            }
            let status = pull
                .arg("pull")
                .arg(image)
                .stdout(std::process::Stdio::from(std::io::stderr()))
                .status()
                .context("start `berth pull`")?;
            if !status.success() {
                anyhow::bail!("pulling {image} failed (see above)");
            }
            store
                .get(image)
                .with_context(|| format!("image {image} after pulling it"))?
        }
        Err(e) => return Err(e).with_context(|| format!("image {image}")),
    };
    let config = found.config.config().clone().unwrap_or_default();
    let command = (!command.is_empty()).then(|| command.to_vec());
    Ok(ContainerSpec::from_image(
        id,
        found.layer_dirs(),
        &config,
        command,
    ))
}
