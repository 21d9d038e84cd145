//! `berth plan DIR --against DIR2`: what would change from the apps in DIR2 (the old state)
//! to the apps in DIR: apps added, removed, changed with every changed field, and the
//! revisions. A table for people, `-o json` for scripts. Invalid input in either tree prints
//! the errors as `berth validate` does (paths prefixed with their directory) and exits 1.
//!
//! Comparing against a running controller comes with the controller; the diff itself is
//! `berth_manifests::plan`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_manifests::plan::{Action, Plan, display_value};
use berth_manifests::{App, ManifestSet};
use serde::Serialize;

use super::validate::{json_errors, load_dir, print_errors};
use crate::output::{self, Format};

/// Arguments of `berth plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of manifests: the desired state
    pub dir: PathBuf,
    /// Directory of manifests to compare against: the current state
    #[arg(long, value_name = "DIR2")]
    pub against: Option<PathBuf>,
}

fn prefix(dir: &Path) -> String {
    let s = dir.display().to_string();
    if s.ends_with('/') { s } else { format!("{s}/") }
}

/// Loads both trees; on errors prints them (or returns them for JSON) and gives `None`.
pub(crate) fn load_both(
    global: &super::Global,
    dirs: &[&Path],
) -> anyhow::Result<Option<Vec<ManifestSet>>> {
    let mut sets = Vec::new();
    let mut errors = Vec::new();
    for dir in dirs {
        match load_dir(dir)? {
            Ok(set) => sets.push(set),
            Err(diags) => errors.push((prefix(dir), diags)),
        }
    }
    if errors.is_empty() {
        return Ok(Some(sets));
    }
    match global.output {
        Format::Json => {
            #[derive(Serialize)]
            struct Failed {
                ok: bool,
                errors: Vec<super::validate::JsonError>,
            }
            output::json(&Failed {
                ok: false,
                errors: errors.iter().flat_map(|(p, d)| json_errors(d, p)).collect(),
            })?;
        }
        Format::Table => {
            for (p, d) in &errors {
                print_errors(d, p);
            }
        }
    }
    Ok(None)
}

/// Prints a plan as a table (changed fields one per row) and a summary line.
pub(crate) fn print_plan(plan: &Plan) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for a in &plan.apps {
        let rev = |r: &Option<berth_manifests::Revision>| {
            r.as_ref()
                .map_or_else(|| "-".to_owned(), |r| r.short().to_owned())
        };
        let revision = match a.action {
            Action::Add => format!("+ {}", rev(&a.new_revision)),
            Action::Remove => format!("- {}", rev(&a.old_revision)),
            Action::Change => format!("{} → {}", rev(&a.old_revision), rev(&a.new_revision)),
            Action::Unchanged => continue,
        };
        if a.fields.is_empty() {
            rows.push(vec![
                a.app.clone(),
                a.action.as_str().to_owned(),
                revision.clone(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for (i, f) in a.fields.iter().enumerate() {
            let (app, action, revision) = if i == 0 {
                (
                    a.app.clone(),
                    a.action.as_str().to_owned(),
                    revision.clone(),
                )
            } else {
                (String::new(), String::new(), String::new())
            };
            rows.push(vec![
                app,
                action,
                revision,
                f.field.clone(),
                display_value(&f.old),
                display_value(&f.new),
                if f.new_revision { "yes" } else { "no" }.to_owned(),
            ]);
        }
    }
    if !rows.is_empty() {
        output::table(
            &[
                "app",
                "action",
                "revision",
                "field",
                "old",
                "new",
                "new revision",
            ],
            rows,
        )?;
    }
    let s = plan.summary;
    let revisions = plan.apps.iter().filter(|a| a.makes_revision).count();
    println!(
        "Plan: {} to add, {} to change, {} to remove, {} unchanged; {} new revision{}.",
        s.add,
        s.change,
        s.remove,
        s.unchanged,
        revisions,
        if revisions == 1 { "" } else { "s" }
    );
    Ok(())
}

/// Runs `berth plan`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let Some(against) = &args.against else {
        anyhow::bail!(
            "comparing against a running controller is not built yet; pass --against DIR2 (the manifests of the current state)"
        );
    };
    let Some(sets) = load_both(global, &[&args.dir, against])? else {
        return Ok(ExitCode::from(1));
    };
    let apps =
        |s: &ManifestSet| -> Vec<App> { s.manifests.iter().map(|m| m.app.clone()).collect() };
    let plan = berth_manifests::plan(&apps(&sets[1]), &apps(&sets[0]));
    match global.output {
        Format::Json => output::json(&plan)?,
        Format::Table => print_plan(&plan)?,
    }
    Ok(ExitCode::SUCCESS)
}
