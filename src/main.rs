//! The `berth` binary: parses the command line and dispatches to one module per verb under
//! [`cmd`]. It holds no logic of its own: the verbs call into `berth-manifests`,
//! `berth-controller` and `berth-agent`, and [`output`] prints their results.
//!
//! Exit codes (DESIGN.md, contract for scripts): 0 success; 1 the thing asked for failed;
//! 2 usage errors. `berth run` passes the container's own exit code through.

mod alloc;
mod cmd;
#[allow(dead_code, reason = "printing helpers are used as verbs land")]
mod output;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

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
    /// Stop `berth up` and remove every instance it started under the data dir
    Down(cmd::down::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(cmd::completions::Args),
    /// Run the controller: git sync, revisions, the agent and CLI API
    Controller(cmd::controller::Args),
    /// Make, list and revoke API tokens with roles (join, read, deploy, admin)
    Token(cmd::token::Args),
    /// Show apps, hosts and the git source
    Status(cmd::status::Args),
    /// List apps with their revision and ready instances
    Apps(cmd::apps::Args),
    /// Show an app's revision history
    Revisions(cmd::revisions::Args),
    /// Pin an app to an earlier revision until its manifest changes
    Rollback(cmd::rollback::Args),
    /// Follow rollouts (`berth rollout status APP --wait`)
    Rollout(cmd::rollout::Args),
    /// Show what happened and why (`-f` to follow)
    Events(cmd::events::Args),
    /// Pull an image into the local store (a progress bar per layer)
    Pull(cmd::pull::Args),
    /// List the images in the local store
    Images(cmd::images::Args),
    /// Remove images from the local store (refused while in use unless -f)
    Rmi(cmd::rmi::Args),
    /// Manage the local image store: prune, du
    Image(cmd::image::Args),
    /// Run one container on this host (like `docker run`); the exit code is the container's
    Run(Box<cmd::run::Args>),
    /// List containers on this host (`-a` includes stopped ones)
    Ps(cmd::ps::Args),
    /// Show one container's record as JSON
    Inspect(cmd::inspect::Args),
    /// Print a container's output (`-f` follows)
    Logs(cmd::logs::Args),
    /// Stop a container: the stop signal, a grace period, then SIGKILL
    Stop(cmd::stop::Args),
    /// Send a signal to a container
    Kill(cmd::kill::Args),
    /// Remove stopped containers (`-f` kills running ones first)
    Rm(cmd::rm::Args),
    /// Run a program in a running container (same namespaces, cgroup and profile)
    Exec(cmd::exec::Args),
    /// The OCI runtime command line (runc-compatible subset)
    Runtime(cmd::runtime::Args),
    /// A container's init (berth re-executed by itself; not for people)
    #[command(name = "__init", hide = true)]
    Init,
    /// A container's shim (berth re-executed by itself; not for people)
    #[command(name = "__shim", hide = true)]
    Shim,
    /// A `berth exec` helper (berth re-executed by itself; not for people)
    #[command(name = "__exec", hide = true)]
    ExecHelper,
    /// Run the per-host agent: long-poll the controller, run the assignment, report
    Agent(cmd::agent::Args),
    /// Many simulated agents against a controller (the scale harness; not for people)
    #[command(name = "__sim-agents", hide = true)]
    SimAgents(cmd::sim_agents::Args),
    /// Run the long-lived per-host proxy the agent configures over a unix socket
    Proxy(cmd::proxy::Args),
}

#[global_allocator]
static GLOBAL: alloc::BerthAlloc = alloc::BerthAlloc;

fn main() -> ExitCode {
    // A container's init must start fast and touch nothing else: dispatch before parsing.
    if std::env::args_os().nth(1).is_some_and(|a| a == "__init") {
        return cmd::runtime_init::init();
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "__exec") {
        return cmd::runtime_init::exec();
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "__shim") {
        return cmd::runtime_init::shim();
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__shim-exit")
    {
        return cmd::runtime_init::shim_exit();
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__probe_exec")
    {
        return cmd::agent::probe_exec();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // `--help` and `--version` are not errors; everything else clap rejects is usage.
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    // The daemons cap the C allocator's arenas before their runtimes start threads
    // (agent/src/host/alloc.rs: memory stays flat under container churn).
    if matches!(
        cli.command,
        Command::Up(_) | Command::Controller(_) | Command::Agent(_) | Command::Proxy(_)
    ) {
        berth_agent::host::alloc::limit_arenas();
    }
    if matches!(cli.command, Command::Proxy(_)) {
        alloc::use_mimalloc();
    }
    // Verbs that print end quietly when their reader goes away (`berth status | head`);
    // the daemons keep SIGPIPE ignored, so a closed socket or pipe is an error they handle.
    if !matches!(
        cli.command,
        Command::Up(_) | Command::Controller(_) | Command::Agent(_) | Command::Proxy(_)
    ) {
        berth_agent::host::sys::default_sigpipe();
    }
    cmd::init_logging(&cli.global);
    let result = match cli.command {
        Command::Validate(args) => cmd::validate::run(&cli.global, args),
        Command::Plan(args) => cmd::plan::run(&cli.global, args),
        Command::Up(args) => cmd::up::run(&cli.global, args),
        Command::Down(args) => cmd::down::run(&cli.global, args),
        Command::Completions(args) => cmd::completions::run(args, Cli::command()),
        Command::Controller(args) => cmd::controller::run(&cli.global, args),
        Command::Token(args) => cmd::token::run(&cli.global, args),
        Command::Status(args) => cmd::status::run(&cli.global, args),
        Command::Apps(args) => cmd::apps::run(&cli.global, args),
        Command::Revisions(args) => cmd::revisions::run(&cli.global, args),
        Command::Rollback(args) => cmd::rollback::run(&cli.global, args),
        Command::Rollout(args) => cmd::rollout::run(&cli.global, args),
        Command::Events(args) => cmd::events::run(&cli.global, args),
        Command::Pull(args) => cmd::pull::run(&cli.global, args),
        Command::Images(args) => cmd::images::run(&cli.global, args),
        Command::Rmi(args) => cmd::rmi::run(&cli.global, args),
        Command::Image(args) => cmd::image::run(&cli.global, args),
        Command::Run(args) => cmd::run::run(&cli.global, *args),
        Command::Ps(args) => cmd::ps::run(&cli.global, args),
        Command::Inspect(args) => cmd::inspect::run(&cli.global, args),
        Command::Logs(args) => cmd::logs::run(&cli.global, args),
        Command::Stop(args) => cmd::stop::run(&cli.global, args),
        Command::Kill(args) => cmd::kill::run(&cli.global, args),
        Command::Rm(args) => cmd::rm::run(&cli.global, args),
        Command::Exec(args) => cmd::exec::run(&cli.global, args),
        Command::Runtime(args) => cmd::runtime::run(&cli.global, args),
        Command::Init => Ok(cmd::runtime_init::init()),
        Command::Shim => Ok(cmd::runtime_init::shim()),
        Command::ExecHelper => Ok(cmd::runtime_init::exec()),
        Command::Agent(args) => cmd::agent::run(&cli.global, args),
        Command::Proxy(args) => cmd::proxy::run(&cli.global, args),
        Command::SimAgents(args) => cmd::sim_agents::run(&cli.global, args),
    };
    cmd::exit_code(result)
}
