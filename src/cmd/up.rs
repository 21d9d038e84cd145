//! `berth up`: berth all-in-one on this host. Today only the first slice exists: with
//! `--manifests DIR` it validates the tree and prints the plan against an empty state, and
//! says plainly that the deploy loop (controller + agent) is not built yet. `--repo` is
//! accepted per the contract in DESIGN.md but refused with the same honesty.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::output::{self, Format};

/// Arguments of `berth up`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["manifests", "repo"])))]
pub struct Args {
    /// A plain directory of manifests
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// A git repository of manifests
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,
    /// The branch of --repo
    #[arg(long, value_name = "B", requires = "repo")]
    pub branch: Option<String>,
    /// Where the API, /metrics and the dashboard listen
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    pub listen: String,
}

const NOT_BUILT: &str =
    "the deploy loop (controller + agent) is not built yet: nothing was started";

/// Runs `berth up`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let Some(dir) = &args.manifests else {
        anyhow::bail!(
            "berth up --repo is not built yet (the git source comes with the controller); use --manifests DIR"
        );
    };
    let Some(sets) = super::plan::load_both(global, &[dir])? else {
        return Ok(ExitCode::from(1));
    };
    let apps: Vec<_> = sets[0].manifests.iter().map(|m| m.app.clone()).collect();
    let plan = berth_manifests::plan(&[], &apps);
    match global.output {
        Format::Json => {
            #[derive(Serialize)]
            struct Up<'a> {
                ok: bool,
                deployed: bool,
                note: &'a str,
                plan: &'a berth_manifests::Plan,
            }
            output::json(&Up {
                ok: true,
                deployed: false,
                note: NOT_BUILT,
                plan: &plan,
            })?;
        }
        Format::Table => {
            println!(
                "{} apps in {} valid; plan against an empty state:",
                apps.len(),
                dir.display()
            );
            super::plan::print_plan(&plan)?;
            eprintln!(
                "berth up: {NOT_BUILT} (listen address {} unused)",
                args.listen
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
