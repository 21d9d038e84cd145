//! The `berth` binary: parses the command line and dispatches to one module per verb under
//! [`cmd`]. It holds no logic of its own: the verbs call into `berth-manifests`,
//! `berth-controller` and `berth-agent`, and [`output`] prints their results.
//!
//! Exit codes (DESIGN.md, contract for scripts): 0 success; 1 the thing asked for failed;
//! 2 usage errors. `berth run` passes the container's own exit code through.

mod cmd;
#[allow(dead_code, reason = "printing helpers are used as verbs land")]
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// berth keeps servers disposable: app manifests pushed to git, run on every host.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: cmd::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check manifests; exit 1 with one `path:line:col: message` line per error
    Validate(cmd::validate::Args),
    /// Show what would change between two manifest trees, without changing anything
    Plan(cmd::plan::Args),
    /// Run berth all-in-one on this host (controller with embedded store + agent)
    Up(cmd::up::Args),
    /// Pull an image into the local store (a progress bar per layer)
    Pull(cmd::pull::Args),
    /// List the images in the local store
    Images(cmd::images::Args),
    /// Remove images from the local store (refused while in use unless -f)
    Rmi(cmd::rmi::Args),
    /// Manage the local image store: prune, du
    Image(cmd::image::Args),
    /// Run the long-lived per-host proxy the agent configures over a unix socket
    Proxy(cmd::proxy::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // `--help` and `--version` are not errors; everything else clap rejects is usage.
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    cmd::init_logging(&cli.global);
    let result = match cli.command {
        Command::Validate(args) => cmd::validate::run(&cli.global, args),
        Command::Plan(args) => cmd::plan::run(&cli.global, args),
        Command::Up(args) => cmd::up::run(&cli.global, args),
        Command::Pull(args) => cmd::pull::run(&cli.global, args),
        Command::Images(args) => cmd::images::run(&cli.global, args),
        Command::Rmi(args) => cmd::rmi::run(&cli.global, args),
        Command::Image(args) => cmd::image::run(&cli.global, args),
        Command::Proxy(args) => cmd::proxy::run(&cli.global, args),
    };
    cmd::exit_code(result)
}
