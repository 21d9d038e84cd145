//! `berth images`: the images in the local store, one row per tag (untagged images show
//! `<none>`), with size, creation time and whether something uses them.

use std::process::ExitCode;

use berth_agent::host::image_store::ImageStore;
use berth_agent::image::gc::in_use;

use super::pull::human_bytes;
use crate::output::Format;

/// Arguments of `berth images`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// One row of `berth images -o json`.
#[derive(Debug, serde::Serialize)]
struct Row {
    repository: String,
    tag: Option<String>,
    digest: String,
    id: String,
    size: u64,
    created: Option<String>,
    platform: String,
    in_use: bool,
    used_by: Vec<String>,
}

/// Runs `berth images`.
pub fn run(global: &super::Global, _args: Args) -> anyhow::Result<ExitCode> {
    let store = ImageStore::open(&global.data_dir)?;
    let uses = store.uses()?;
    let mut rows = Vec::new();
    for r in store.list()? {
        let used_by: Vec<String> = uses
            .iter()
            .filter(|u| u.image == r.manifest_digest)
            .map(|u| u.holder.clone())
            .collect();
        let base = Row {
            repository: r.repositories.first().cloned().unwrap_or_default(),
            tag: None,
            digest: r.manifest_digest.to_string(),
            id: r.config_digest.to_string(),
            size: r.size(),
            created: r.created.clone(),
            platform: r.platform.to_string(),
            in_use: in_use(&uses, &r.manifest_digest),
            used_by,
        };
        if r.tags.is_empty() {
            rows.push(base);
            continue;
        }
        for t in &r.tags {
            let (repo, tag) = t.rsplit_once(':').unwrap_or((t.as_str(), ""));
            rows.push(Row {
                repository: repo.to_owned(),
                tag: Some(tag.to_owned()),
                used_by: base.used_by.clone(),
                created: base.created.clone(),
                digest: base.digest.clone(),
                id: base.id.clone(),
                platform: base.platform.clone(),
                ..base
            });
        }
    }
    rows.sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
    match global.output {
        Format::Json => crate::output::json(&rows)?,
        Format::Table => crate::output::table(
            &["repository", "tag", "digest", "size", "created", "in use"],
            rows.iter()
                .map(|r| {
                    vec![
                        r.repository.clone(),
                        r.tag.clone().unwrap_or_else(|| "<none>".into()),
                        r.digest
                            .trim_start_matches("sha256:")
                            .chars()
                            .take(12)
                            .collect(),
                        human_bytes(r.size),
                        r.created.as_deref().map(short_time).unwrap_or_default(),
                        if r.in_use {
                            r.used_by.join(",")
                        } else {
                            "-".into()
                        },
                    ]
                })
                .collect(),
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `2024-05-01T12:34:56.789Z` → `2024-05-01 12:34`.
fn short_time(rfc3339: &str) -> String {
    rfc3339
        .get(..16)
        .map_or_else(|| rfc3339.to_owned(), |s| s.replacen('T', " ", 1))
}
