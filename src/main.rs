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
    };
    cmd::exit_code(result)
}
