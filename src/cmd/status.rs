//! `berth status`: apps (revision, ready/desired, pin, last error or why instances are
//! unplaced), hosts (state, cpu and memory allocated of capacity, last convergence time) and
//! the git source,
//! through the controller. `-o json` prints `ClusterStatus`.

use std::process::ExitCode;

use super::Global;
use super::remote::{age, block_on, client, now_ms};
use crate::output::{self, Format};

/// Arguments of `berth status`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `berth status`.
pub fn run(global: &Global, _args: Args) -> anyhow::Result<ExitCode> {
    let client = client(global)?;
    let status = block_on(client.status())??;
    if global.output == Format::Json {
        output::json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    println!("APPS");
    output::table(
        &["name", "revision", "ready", "pinned", "last error"],
        status
            .apps
            .iter()
            .map(|a| {
                let revision = if a.head != 0 && a.head != a.revision {
                    format!("{} (git: {})", a.revision, a.head)
                } else {
                    a.revision.to_string()
                };
                vec![
                    a.name.clone(),
                    revision,
                    format!("{}/{}", a.ready, a.desired),
                    if a.pinned {
                        "pinned".into()
                    } else {
                        "-".into()
                    },
                    match (&a.last_error, &a.unplaced) {
                        (Some(e), Some(u)) => format!("{e}; unplaced: {u}"),
                        (Some(e), None) => e.clone(),
                        (None, Some(u)) => format!("unplaced: {u}"),
                        (None, None) => "-".into(),
                    },
                ]
            })
            .collect(),
    )?;
    println!("\nHOSTS");
    output::table(
        &[
            "name",
            "state",
            "cpu",
            "memory",
            "labels",
            "last seen",
            "converged in",
        ],
        status
            .hosts
            .iter()
            .map(|h| {
                let labels: Vec<String> =
                    h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                vec![
                    h.name.clone(),
                    if h.state.is_empty() {
                        if h.ready { "ready" } else { "down" }.into()
                    } else {
                        h.state.clone()
                    },
                    super::plan::used_of(h.allocated.cpu_millis, h.capacity.cpu_millis, true),
                    super::plan::used_of(h.allocated.memory_bytes, h.capacity.memory_bytes, false),
                    if labels.is_empty() {
                        "-".into()
                    } else {
                        labels.join(",")
                    },
                    age(h.last_seen_ms, now),
                    h.converged_in_ms
                        .map_or_else(|| "-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                ]
            })
            .collect(),
    )?;
    let s = &status.sync;
    println!("\nSYNC");
    println!("  repo    {} (branch {})", s.repo, s.branch);
    println!(
        "  applied {}",
        s.commit
            .as_deref()
            .map_or("none yet", |c| c.get(..12).unwrap_or(c))
    );
    if let Some(head) = &s.head {
        println!("  head    {}", head.get(..12).unwrap_or(head));
    }
    println!("  fetched {}", age(s.fetched_at_ms, now));
    for e in &s.errors {
        println!("  error   {e}");
    }
    Ok(ExitCode::SUCCESS)
}
