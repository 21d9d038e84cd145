//! `berth rmi [-f] IMAGE...`: removes tags, and images whose last tag goes (with the
//! snapshots no other image shares). Refuses images in use unless `-f`.

use std::process::ExitCode;

use berth_agent::host::image_store::{ImageStore, Removed};

/// Arguments of `berth rmi`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images: names, NAME@DIGEST, digests or short ids
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove even when containers or revisions use the image
    #[arg(short, long)]
    pub force: bool,
}

/// Runs `berth rmi`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let store = ImageStore::open(&global.data_dir)?;
    let mut failed = false;
    for image in &args.images {
        match store.remove(image, args.force) {
            Ok(Removed::Untagged(tag)) => println!("Untagged: {tag}"),
            Ok(Removed::Deleted { image, snapshots }) => {
                println!("Deleted: {image} ({snapshots} layers)")
            }
            Err(e) => {
                eprintln!("berth: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
