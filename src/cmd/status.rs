//! `berth status`: apps (revision, ready/desired, pin, last error), hosts and the git source,
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
                    a.last_error.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    )?;
    println!("\nHOSTS");
    output::table(
        &["name", "ready", "labels", "last seen"],
        status
            .hosts
            .iter()
            .map(|h| {
                let labels: Vec<String> =
                    h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                vec![
                    h.name.clone(),
                    if h.ready { "yes".into() } else { "no".into() },
                    if labels.is_empty() {
                        "-".into()
                    } else {
                        labels.join(",")
                    },
                    age(h.last_seen_ms, now),
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
