//! `berth ps`: the instances of every host through the controller (like `heroku ps`) when
//! one is configured (`--controller`/`BERTH_CONTROLLER`) or shares the data dir (`berth up`
//! or `berth controller` on this host, at `--controller`); otherwise, or with `--local`, the
//! containers of the local data dir (like `docker ps`), running ones by default, all with
//! `-a`. The true local status is checked against the live process (pid + start time).

use std::process::ExitCode;

use berth_agent::host::container::{self as host, Listed, Store};
use berth_agent::runtime::id;
use berth_agent::runtime::state::Status;
use berth_manifests::wire::InstanceInfo;
use serde::Serialize;

use crate::output::{self, Format};

/// Arguments of `berth ps`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show stopped containers too
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only the local data dir's containers (the default until a controller is configured)
    #[arg(long)]
    pub local: bool,
}

/// One row of `berth ps -o json` (DESIGN.md contract: at least id, app, host, revision, state).
#[derive(Debug, Serialize)]
pub struct Row {
    /// Full container id.
    pub id: String,
    /// App name (empty for `berth run`).
    pub app: String,
    /// This host's name.
    pub host: String,
    /// App revision (empty for `berth run`).
    pub revision: String,
    /// created | running | stopped.
    pub state: String,
    /// `--name`, or empty.
    pub name: String,
    /// The image, or the rootfs directory.
    pub image: String,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Host pid of the container's init while it runs.
    pub pid: Option<i32>,
    /// Unix seconds at creation.
    pub created: u64,
    /// Exit code once stopped (128 + signal when killed).
    pub exit_code: Option<i32>,
    /// Whether the kernel OOM-killed it.
    pub oom_killed: bool,
}

/// Builds the row for a listed container.
pub fn row(l: &Listed, host: &str) -> Row {
    let spec = &l.state.spec;
    Row {
        id: spec.id.clone(),
        app: spec.app.clone(),
        host: host.to_string(),
        revision: spec.revision.clone(),
        state: l.status.to_string(),
        name: spec.name.clone().unwrap_or_default(),
        image: spec.rootfs.display(),
        command: spec.args.clone(),
        pid: if matches!(l.status, Status::Running | Status::Created) {
            l.state.init.map(|p| p.pid)
        } else {
            None
        },
        created: l.state.created,
        exit_code: l.exit.map(|e| e.code),
        oom_killed: l.exit.is_some_and(|e| e.oom_killed),
    }
}

/// Runs `berth ps`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    if !args.local {
        match cluster(global)? {
            Some(instances) => return print_cluster(global, &instances),
            None => tracing::debug!("no controller answers; listing the local data dir"),
        }
    }
    let store = Store::new(&global.data_dir);
    let (listed, bad) = store.list()?;
    for (id, err) in &bad {
        eprintln!("berth: container {id}: unreadable state: {err}");
    }
    let host = host::hostname();
    let rows: Vec<Row> = listed
        .iter()
        .filter(|l| args.all || l.status != Status::Stopped)
        .map(|l| row(l, &host))
        .collect();
    match global.output {
        Format::Json => output::json(&rows)?,
        Format::Table => {
            let now = host::unix_now();
            let table = rows
                .iter()
                .map(|r| {
                    let status = match (r.state.as_str(), r.exit_code) {
                        ("stopped", Some(c)) => {
                            format!("exited ({c}){}", if r.oom_killed { " oom" } else { "" })
                        }
                        (s, _) => s.to_string(),
                    };
                    vec![
                        id::short(&r.id).to_string(),
                        r.name.clone(),
                        r.image.clone(),
                        r.command.join(" "),
                        format!("{}s ago", now.saturating_sub(r.created)),
                        status,
                        r.pid.map(|p| p.to_string()).unwrap_or_default(),
                    ]
                })
                .collect();
            output::table(
                &["id", "name", "image", "command", "created", "status", "pid"],
                table,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The instances of all hosts from the controller; `None` (list the local data dir) when no
/// controller was configured and none shares the data dir (`berth up` or `berth controller`
/// with this `--data-dir` leave their token file there), or that one does not answer.
fn cluster(global: &super::Global) -> anyhow::Result<Option<Vec<InstanceInfo>>> {
    let configured = super::remote::controller_configured();
    if !configured && !berth_controller::token::token_path(&global.data_dir).exists() {
        return Ok(None);
    }
    let client = match super::remote::client(global) {
        Ok(c) => c,
        Err(_) if !configured => return Ok(None),
        Err(e) => return Err(e),
    };
    match super::remote::block_on(client.instances())? {
        Ok(list) => Ok(Some(list)),
        Err(e) if !configured && e.kind() == berth_manifests::ErrorKind::Unavailable => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn print_cluster(global: &super::Global, instances: &[InstanceInfo]) -> anyhow::Result<ExitCode> {
    match global.output {
        Format::Json => output::json(&instances)?,
        Format::Table => output::table(
            &[
                "id", "app", "host", "revision", "state", "restarts", "message",
            ],
            instances
                .iter()
                .map(|i| {
                    vec![
                        i.id.clone(),
                        i.app.clone(),
                        i.host.clone(),
                        i.revision.to_string(),
                        serde_json::to_value(i.state)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        i.restarts.to_string(),
                        if i.message.is_empty() {
                            "-".into()
                        } else {
                            i.message.clone()
                        },
                    ]
                })
                .collect(),
        )?,
    }
    Ok(ExitCode::SUCCESS)
}
