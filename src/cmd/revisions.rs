//! `berth revisions APP`: an app's revision history (number, image, digest, state, pin,
//! cause), newest first. `-o json` prints `[RevisionInfo]` oldest first.

use std::process::ExitCode;

use berth_manifests::wire::RevisionState;

use super::Global;
use super::remote::{block_on, client};
use crate::output::{self, Format};

/// Arguments of `berth revisions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The app
    pub app: String,
}

/// Runs `berth revisions`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let revs = block_on(client(global)?.revisions(&args.app))??;
    if global.output == Format::Json {
        output::json(&revs)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::table(
        &["revision", "image", "digest", "state", "pinned", "cause"],
        revs.iter()
            .rev()
            .map(|r| {
                let state = match r.state {
                    RevisionState::Active => "active".to_string(),
                    RevisionState::Superseded => "superseded".to_string(),
                    RevisionState::Failed => match &r.failure {
                        Some(f) => format!("failed: {f}"),
                        None => "failed".to_string(),
                    },
                };
                let digest = r.digest.strip_prefix("sha256:").unwrap_or(&r.digest);
                vec![
                    r.number.to_string(),
                    r.image.clone(),
                    digest.get(..12).unwrap_or(digest).to_string(),
                    state,
                    if r.pinned {
                        "pinned".into()
                    } else {
                        "-".into()
                    },
                    r.cause.clone(),
                ]
            })
            .collect(),
    )?;
    Ok(ExitCode::SUCCESS)
}
