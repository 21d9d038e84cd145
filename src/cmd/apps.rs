//! `berth apps`: every app with its revision and ready/desired count, through the controller.

use std::process::ExitCode;

use super::Global;
use super::remote::{block_on, client};
use crate::output::{self, Format};

/// Arguments of `berth apps`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `berth apps`.
pub fn run(global: &Global, _args: Args) -> anyhow::Result<ExitCode> {
    let apps = block_on(client(global)?.apps())??;
    if global.output == Format::Json {
        output::json(&apps)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::table(
        &["name", "revision", "ready", "pinned"],
        apps.iter()
            .map(|a| {
                vec![
                    a.name.clone(),
                    a.revision.to_string(),
                    format!("{}/{}", a.ready, a.desired),
                    if a.pinned {
                        "pinned".into()
                    } else {
                        "-".into()
                    },
                ]
            })
            .collect(),
    )?;
    Ok(ExitCode::SUCCESS)
}
