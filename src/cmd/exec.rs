//! `berth exec [-i] ID -- CMD`: runs a program in a running container with the same
//! namespaces, cgroup and security profile as its init; the exit code is the program's.

use std::process::ExitCode;

use berth_agent::host::container::Store;
use berth_agent::host::container::exec::{self, ExecRequest};
use berth_agent::host::container::pty;

/// Arguments of `berth exec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep stdin attached
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a terminal in the container (with -i: the caller's terminal in raw mode)
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Environment variable KEY=VALUE; repeatable
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User: uid, name, uid:gid or name:group
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container id, unique id prefix or name
    pub id: String,
    /// The program and its arguments (after `--`)
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs `berth exec`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let req = ExecRequest {
        args: args.command,
        env: args.env,
        cwd: args.workdir,
        user: args.user,
        interactive: args.interactive,
        tty: args.tty,
    };
    // Restored when dropped, after the program ended (also on errors).
    let _raw = (args.tty && args.interactive)
        .then(|| pty::RawMode::enable(0))
        .flatten();
    let cgroups = super::cgroups();
    let code = exec::exec(
        &Store::new(&global.data_dir),
        cgroups.as_ref(),
        &args.id,
        req,
    )?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}
