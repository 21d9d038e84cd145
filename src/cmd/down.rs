//! `berth down`: stops the `berth up` of this data dir (SIGTERM to the recorded process,
//! verified by its start time), then stops and removes every instance the agent started
//! under the data dir (each with its app's stop signal and grace period, then SIGKILL) and
//! the agent's cached assignment, so nothing restarts them. Images, the controller's store
//! and the revision history stay (the next `up` starts from them).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use berth_agent::daemon::teardown;
use berth_agent::host::agentstate::{ASSIGNMENT_FILE, FileState, HISTORY_FILE};
use berth_agent::host::deploy_runtime::ContainerRuntime;
use berth_agent::host::image_store::ImageStore;
use berth_agent::host::pidlock;
use berth_agent::reconcile::traits::StateStore;

use super::Global;

/// Arguments of `berth down`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to wait for `berth up` to exit after SIGTERM before SIGKILL
    #[arg(long, default_value = "30s")]
    pub timeout: berth_manifests::Duration,
    /// The parent cgroup of the instances, removed once empty (as given to `up`/`agent`)
    #[arg(long, env = "BERTH_CGROUP_PARENT", default_value = super::agent::DEFAULT_CGROUP_PARENT)]
    pub cgroup_parent: String,
}

/// Runs `berth down`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let pid_file = super::up::pid_path(&global.data_dir);
    match pidlock::read(&pid_file) {
        Some(rec) if rec.alive() => {
            rec.signal(libc_sigterm())
                .with_context(|| format!("stopping berth up (pid {})", rec.pid))?;
            let timeout = args.timeout.as_std();
            if !wait_gone(&rec, timeout) {
                eprintln!(
                    "berth up (pid {}) still runs {timeout:?} after SIGTERM: SIGKILL",
                    rec.pid
                );
                rec.signal(libc_sigkill())?;
                wait_gone(&rec, Duration::from_secs(5));
            }
            println!("stopped berth up (pid {})", rec.pid);
        }
        Some(_) => {
            // It crashed or was killed: the record is stale.
            let _ = std::fs::remove_file(&pid_file);
        }
        None => {}
    }

    let agent_dir = global.data_dir.join("agent");
    if !agent_dir.is_dir() {
        println!("nothing to remove under {}", global.data_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let state = FileState::open(&agent_dir).map_err(|e| anyhow::anyhow!(e.chain()))?;
    let assignment = state.load_assignment().unwrap_or_else(|e| {
        eprintln!("berth: {e}; stopping every instance with SIGTERM");
        None
    });
    let images = ImageStore::open(&global.data_dir).context("opening the image store")?;
    let runtime = ContainerRuntime::new(&global.data_dir, images, super::agent::cgroups())
        .map_err(|e| anyhow::anyhow!(e.chain()))?;
    let done = super::remote::block_on(teardown::stop_all(&runtime, assignment.as_ref()))?
        .map_err(|e| anyhow::anyhow!("{e}; run `berth down` again"))?;
    for name in [ASSIGNMENT_FILE, HISTORY_FILE] {
        match std::fs::remove_file(agent_dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("removing {}", agent_dir.join(name).display()));
            }
        }
    }
    // The proxy process and the instances' network (namespaces, veths, the bridge if the
    // agent created it).
    let traffic = super::remote::block_on(berth_agent::host::traffic::teardown(&global.data_dir))?
        .map_err(|e| anyhow::anyhow!("{e}; run `berth down` again"))?;
    if traffic.proxy_stopped {
        println!("stopped the proxy");
    }
    if let Some(rule) = &traffic.net.nat_rule {
        println!("removed the egress NAT rule ({rule})");
    }
    if let Ok(host) = berth_agent::host::container::HostCgroups::detect(std::path::Path::new(
        "/proc/self/mountinfo",
    )) && let Err(e) = host.remove_parent(&args.cgroup_parent)
    {
        eprintln!("berth: the parent cgroup stays: {e}");
    }
    for id in &done.killed {
        println!("{id}: killed after its grace period");
    }
    println!(
        "removed {} instance{}",
        done.removed.len(),
        if done.removed.len() == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Polls until the recorded process is gone; whether it went within `timeout`.
fn wait_gone(rec: &pidlock::PidRecord, timeout: Duration) -> bool {
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while rec.alive() {
        if waited >= timeout {
            return false;
        }
        std::thread::sleep(step);
        waited += step;
    }
    true
}

fn libc_sigterm() -> i32 {
    i32::from(berth_manifests::Signal::TERM.number())
}

fn libc_sigkill() -> i32 {
    i32::from(berth_manifests::Signal::KILL.number())
}
