//! `berth rollout status APP [--wait] [--timeout D]`: how the rollout of the app's newest
//! revision stands over all hosts. Exit 0 when complete; 1 naming the cause when it failed
//! (rolled back), was superseded, or `--wait` timed out. Without `--wait`, a rollout still in
//! progress prints its progress and exits 0 (like `kubectl rollout status --watch=false`).

use std::process::ExitCode;
use std::time::Duration;

use berth_manifests::wire::{RolloutPhase, RolloutStatus};

use super::Global;
use super::remote::{block_on, client};
use crate::output::{self, Format};

/// Arguments of `berth rollout`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Show (or wait for) the rollout of an app's newest revision
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The app
    app: String,
    /// Wait until the rollout completes or fails
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (exit 1)
    #[arg(long, default_value = "10m")]
    timeout: berth_manifests::Duration,
    /// The revision to follow (default: the app's newest)
    #[arg(long)]
    revision: Option<u64>,
}

/// Runs `berth rollout`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let Sub::Status(args) = args.command;
    let client = client(global)?;
    let json = global.output == Format::Json;
    block_on(async move {
        let mut status = client.rollout(&args.app, args.revision).await?;
        let revision = status.revision;
        let deadline = tokio::time::Instant::now() + args.timeout.as_std();
        let mut last_line = String::new();
        loop {
            let line = progress(&status);
            if !json && line != last_line {
                println!("{line}");
                last_line = line;
            }
            match status.phase {
                RolloutPhase::Complete => {
                    if json {
                        output::json(&status)?;
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                RolloutPhase::Failed | RolloutPhase::Superseded => {
                    if json {
                        output::json(&status)?;
                    }
                    return Ok(ExitCode::from(1));
                }
                RolloutPhase::Progressing if !args.wait => {
                    if json {
                        output::json(&status)?;
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                RolloutPhase::Progressing => {}
            }
            if tokio::time::Instant::now() >= deadline {
                if json {
                    output::json(&status)?;
                }
                eprintln!(
                    "berth: rollout of {} revision {revision} did not complete within {}",
                    args.app, args.timeout
                );
                return Ok(ExitCode::from(1));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            status = client.rollout(&args.app, Some(revision)).await?;
        }
    })?
}

fn progress(s: &RolloutStatus) -> String {
    match s.phase {
        RolloutPhase::Complete => format!(
            "{} revision {}: rollout complete ({}/{} ready)",
            s.app, s.revision, s.ready, s.desired
        ),
        RolloutPhase::Failed => format!("{}: rollout failed: {}", s.app, s.message),
        RolloutPhase::Superseded => format!("{}: {}", s.app, s.message),
        RolloutPhase::Progressing => {
            let hosts: Vec<String> = s
                .hosts
                .iter()
                .map(|h| match &h.report {
                    Some(r) if r.target == s.revision => {
                        format!("{} {}/{}", h.host, r.ready, r.desired)
                    }
                    _ => format!("{} waiting", h.host),
                })
                .collect();
            if hosts.is_empty() {
                return format!("{} revision {}: waiting: {}", s.app, s.revision, s.message);
            }
            let hosts = { format!(" [{}]", hosts.join(", ")) };
            format!(
                "{} revision {}: waiting, {} of {} instances ready{hosts}",
                s.app, s.revision, s.ready, s.desired
            )
        }
    }
}
