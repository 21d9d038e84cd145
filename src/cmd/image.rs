//! `berth image prune [--all]` and `berth image du`: garbage collection and disk usage of the
//! local image store. The rule of what prune keeps is in berth-agent's `image::gc` and
//! docs/images.md.

use std::process::ExitCode;

use berth_agent::host::image_store::ImageStore;

use super::pull::human_bytes;
use crate::output::Format;

/// Arguments of `berth image`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

/// `berth image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Remove unused dangling images (with --all: every unused image) and orphan layers
    Prune {
        /// Also remove tagged images nothing uses
        #[arg(short, long)]
        all: bool,
    },
    /// Disk usage of the image store
    Du,
}

/// Runs `berth image …`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let store = ImageStore::open(&global.data_dir)?;
    match args.command {
        Sub::Prune { all } => {
            let report = store.prune(all)?;
            match global.output {
                Format::Json => crate::output::json(&serde_json::json!({
                    "images": report.images.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                    "layers": report.snapshots,
                    "bytes": report.bytes,
                }))?,
                Format::Table => {
                    for d in &report.images {
                        println!("Deleted: {d}");
                    }
                    println!(
                        "Removed {} images and {} layers; freed {}",
                        report.images.len(),
                        report.snapshots,
                        human_bytes(report.bytes)
                    );
                }
            }
        }
        Sub::Du => {
            let du = store.disk_usage()?;
            match global.output {
                Format::Json => crate::output::json(&du)?,
                Format::Table => crate::output::table(
                    &["what", "count", "size", "reclaimable"],
                    vec![
                        vec![
                            "images".into(),
                            format!("{} ({} in use)", du.images, du.images_in_use),
                            human_bytes(du.snapshot_bytes + du.blob_bytes),
                            human_bytes(du.reclaimable_bytes),
                        ],
                        vec![
                            "layers".into(),
                            du.snapshots.to_string(),
                            human_bytes(du.snapshot_bytes),
                            String::new(),
                        ],
                        vec![
                            "manifests+configs".into(),
                            String::new(),
                            human_bytes(du.blob_bytes),
                            String::new(),
                        ],
                    ],
                )?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
