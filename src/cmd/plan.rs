//! `berth plan DIR --against DIR2`: what would change from the apps in DIR2 (the old state)
//! to the apps in DIR: apps added, removed, changed with every changed field, and the
//! revisions. A table for people, `-o json` for scripts. Invalid input in either tree prints
//! the errors as `berth validate` does (paths prefixed with their directory) and exits 1.
//! The diff itself is `berth_manifests::plan`.
//!
//! Placement, through the controller: `berth plan` shows which host runs how many instances
//! of which app, each host's cpu and memory allocated of its capacity, and why an app is
//! (partly) unplaced (`GET /v1/placement`). `berth plan DIR` places DIR's apps on the
//! controller's hosts as the controller would (the same pure function,
//! `berth_controller::assign`, keeping what runs where it may stay) without changing
//! anything. `-o json` prints a `PlacementView`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_manifests::plan::{Action, Plan, display_value};
use berth_manifests::wire::{HostPlacement, PlacedApp, PlacementView};
use berth_manifests::{App, ManifestSet};
use serde::Serialize;

use super::validate::{json_errors, load_dir, print_errors};
use crate::output::{self, Format};

/// Arguments of `berth plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of manifests: the desired state (none: the controller's placement now)
    pub dir: Option<PathBuf>,
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

/// `1.5/4` (cpu cores) or `512Mi/2Gi`; `-` capacity when not declared.
pub(crate) fn used_of(used: u64, capacity: u64, cpu: bool) -> String {
    let show = |v: u64, declared: bool| {
        if cpu {
            berth_controller::assign::show_cpu(v, declared)
        } else {
            berth_controller::assign::show_memory(v, declared)
        }
    };
    let cap = if capacity == 0 {
        "-".to_string()
    } else {
        show(capacity, true)
    };
    format!("{}/{cap}", show(used, true))
}

/// Prints a placement: one row per host and app, then the unplaced apps.
fn print_placement(view: &PlacementView) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for h in &view.hosts {
        let head = vec![
            h.name.clone(),
            h.state.clone(),
            used_of(h.allocated.cpu_millis, h.capacity.cpu_millis, true),
            used_of(h.allocated.memory_bytes, h.capacity.memory_bytes, false),
        ];
        if h.apps.is_empty() {
            rows.push([head.clone(), vec!["-".into(), String::new()]].concat());
        }
        for (i, a) in h.apps.iter().enumerate() {
            let left = if i == 0 {
                head.clone()
            } else {
                vec![String::new(); 4]
            };
            rows.push([left, vec![a.app.clone(), a.instances.to_string()]].concat());
        }
    }
    if rows.is_empty() {
        println!("No host is registered.");
    } else {
        output::table(
            &["host", "state", "cpu", "memory", "app", "instances"],
            rows,
        )?;
    }
    for u in &view.unplaced {
        println!("unplaced: app {}: {}", u.app, u.reason);
    }
    Ok(())
}

/// The placement `apps` would get on the controller's hosts (as `now` describes them).
fn what_if(apps: &[App], now: &PlacementView) -> PlacementView {
    use berth_controller::assign::{self, Demand, HostInfo, HostState, Previous};
    let state = |s: &str| match s {
        "ready" => HostState::Ready,
        "returning" => HostState::Returning,
        _ => HostState::Down,
    };
    let mut infos: Vec<HostInfo> = now
        .hosts
        .iter()
        .map(|h| HostInfo {
            name: h.name.clone(),
            labels: h.labels.clone(),
            capacity: h.capacity,
            state: state(&h.state),
        })
        .collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let mut previous = Previous::new();
    for h in &now.hosts {
        for a in &h.apps {
            previous
                .entry(a.app.clone())
                .or_default()
                .push((h.name.clone(), a.instances));
        }
    }
    let mut apps: Vec<&App> = apps.iter().collect();
    apps.sort_by(|a, b| a.app.cmp(&b.app));
    let demands: Vec<Demand<'_>> = apps.iter().map(|a| Demand::of(a)).collect();
    let refs: Vec<&HostInfo> = infos.iter().collect();
    let alloc = assign::allocate(&demands, &refs, &previous);
    let mut hosts: Vec<HostPlacement> = infos
        .iter()
        .zip(&alloc.used)
        .map(|(h, used)| HostPlacement {
            name: h.name.clone(),
            state: h.state.as_str().to_string(),
            labels: h.labels.clone(),
            capacity: h.capacity,
            allocated: *used,
            apps: Vec::new(),
        })
        .collect();
    for (d, placed) in demands.iter().zip(&alloc.placed) {
        for &(i, instances) in placed {
            hosts[i].apps.push(PlacedApp {
                app: d.app.to_string(),
                instances,
            });
        }
    }
    PlacementView {
        hosts,
        unplaced: alloc.unplaced,
    }
}

/// Runs `berth plan`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let Some(dir) = &args.dir else {
        if args.against.is_some() {
            anyhow::bail!("--against DIR2 needs DIR: berth plan DIR --against DIR2");
        }
        let client = super::remote::client(global)?;
        let view = super::remote::block_on(client.placement())??;
        match global.output {
            Format::Json => output::json(&view)?,
            Format::Table => print_placement(&view)?,
        }
        return Ok(ExitCode::SUCCESS);
    };
    let Some(against) = &args.against else {
        let Some(sets) = load_both(global, &[dir])? else {
            return Ok(ExitCode::from(1));
        };
        let client = super::remote::client(global)?;
        let now = super::remote::block_on(client.placement())?.map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\n(berth plan {} compares with the controller's placement; to compare \
                 two directories without a controller, pass --against DIR2)",
                dir.display()
            )
        })?;
        let apps: Vec<App> = sets[0].manifests.iter().map(|m| m.app.clone()).collect();
        let view = what_if(&apps, &now);
        match global.output {
            Format::Json => output::json(&view)?,
            Format::Table => print_placement(&view)?,
        }
        return Ok(ExitCode::SUCCESS);
    };
    let Some(sets) = load_both(global, &[dir, against])? else {
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
