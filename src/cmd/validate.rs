//! `berth validate DIR`: reads every `*.yaml`/`*.yml` under DIR and checks them together with
//! `berth-manifests`. Exit 0 with a summary, or exit 1 with one `path:line:col: message` line
//! per error on stderr (paths relative to DIR, sorted). `-o json` prints one JSON object.
//!
//! Also home of [`read_tree`]/[`load_dir`], the only code that reads manifest files from disk
//! (`plan` and `up` use them). No validation logic lives here.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use berth_manifests::{Diagnostics, ManifestSet, Source, defaults};
use serde::Serialize;

use crate::output::{self, Format};

/// Most manifest files read from one tree.
const MAX_FILES: usize = 10_000;

/// Arguments of `berth validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of manifests (searched recursively for *.yaml and *.yml), or one file
    pub dir: PathBuf,
}

/// One file of a manifest tree: path relative to the tree's root (`/`-separated) and bytes.
pub struct File {
    /// Relative path.
    pub path: String,
    /// Content, at most one byte over the per-file limit (enough to report it too large).
    pub bytes: Vec<u8>,
}

/// Reads every `*.yaml`/`*.yml` file under `dir` (or `dir` itself when it is a file), sorted
/// by path. Hidden entries (`.git`) are
/// skipped; symlinks to files are followed, symlinks to directories are not (no loops).
pub fn read_tree(dir: &Path) -> anyhow::Result<Vec<File>> {
    let meta =
        std::fs::metadata(dir).with_context(|| format!("manifest directory {}", dir.display()))?;
    if meta.is_file() {
        // One file: its name is the path in messages.
        let name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        return Ok(vec![File {
            path: name,
            bytes: read_capped(dir)?,
        }]);
    }
    anyhow::ensure!(
        meta.is_dir(),
        "{} is not a directory or a file",
        dir.display()
    );
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn walk(dir: &Path, prefix: &str, files: &mut Vec<File>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut entries: Vec<_> = entries
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let file_type = entry
            .file_type()
            .with_context(|| format!("reading {}", path.display()))?;
        if file_type.is_dir() {
            walk(&path, &rel, files)?;
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if !(lower.ends_with(".yaml") || lower.ends_with(".yml")) {
            continue;
        }
        // A symlink is read when it points to a file; a dangling one is an error.
        let target =
            std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if !target.is_file() {
            continue;
        }
        anyhow::ensure!(
            files.len() < MAX_FILES,
            "more than {MAX_FILES} manifest files under the directory; is it the right one?"
        );
        files.push(File {
            path: rel,
            bytes: read_capped(&path)?,
        });
    }
    Ok(())
}

/// Reads at most one byte more than the per-file limit: enough to report a file too large
/// without reading a huge one.
fn read_capped(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(defaults::MAX_FILE_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

/// Reads and loads the tree under `dir`: all apps, or every error.
pub fn load_dir(dir: &Path) -> anyhow::Result<Result<ManifestSet, Diagnostics>> {
    let files = read_tree(dir)?;
    let sources: Vec<Source<'_>> = files
        .iter()
        .map(|f| Source {
            path: &f.path,
            bytes: &f.bytes,
        })
        .collect();
    Ok(berth_manifests::load(&sources))
}

/// An error as scripts see it.
#[derive(Serialize)]
pub struct JsonError {
    path: String,
    line: u32,
    column: u32,
    message: String,
    kind: berth_manifests::ErrorKind,
}

/// The errors of `diags` for JSON, paths prefixed with `prefix` (empty for none).
pub fn json_errors(diags: &Diagnostics, prefix: &str) -> Vec<JsonError> {
    diags
        .0
        .iter()
        .map(|d| JsonError {
            path: format!("{prefix}{}", d.location.path),
            line: d.location.line,
            column: d.location.column,
            message: d.message(),
            kind: d.error.kind(),
        })
        .collect()
}

/// Prints one `path:line:col: message` line per error on stderr, paths prefixed with `prefix`.
pub fn print_errors(diags: &Diagnostics, prefix: &str) {
    for d in &diags.0 {
        let l = &d.location;
        eprintln!(
            "{prefix}{}:{}:{}: {}",
            l.path,
            l.line,
            l.column,
            d.message()
        );
    }
}

#[derive(Serialize)]
struct JsonApp<'a> {
    app: &'a str,
    revision: &'a str,
    image: String,
    path: &'a str,
    line: u32,
    column: u32,
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    files: usize,
    apps: Vec<JsonApp<'a>>,
    errors: Vec<JsonError>,
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Runs `berth validate`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let files = read_tree(&args.dir)?;
    let sources: Vec<Source<'_>> = files
        .iter()
        .map(|f| Source {
            path: &f.path,
            bytes: &f.bytes,
        })
        .collect();
    let result = berth_manifests::load(&sources);
    match (global.output, &result) {
        (Format::Json, Ok(set)) => output::json(&Report {
            ok: true,
            files: set.files,
            apps: set
                .manifests
                .iter()
                .map(|m| JsonApp {
                    app: &m.app.app,
                    revision: m.revision.as_str(),
                    image: m.app.image.to_string(),
                    path: &m.location.path,
                    line: m.location.line,
                    column: m.location.column,
                })
                .collect(),
            errors: Vec::new(),
        })?,
        (Format::Json, Err(diags)) => output::json(&Report {
            ok: false,
            files: files.len(),
            apps: Vec::new(),
            errors: json_errors(diags, ""),
        })?,
        (Format::Table, Ok(set)) => {
            if set.files == 0 {
                eprintln!(
                    "berth: no *.yaml or *.yml files under {}",
                    args.dir.display()
                );
            }
            println!(
                "{} in {} ok",
                plural(set.manifests.len(), "app"),
                plural(set.files, "file")
            );
        }
        (Format::Table, Err(diags)) => print_errors(diags, ""),
    }
    Ok(if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
