//! Printing results: tables for people, JSON (and YAML) for scripts. Verbs build rows or
//! serializable values and hand them here; nothing else in the CLI writes formatted output.

use std::io::Write;

use serde::Serialize;

/// What verbs print: a table for people, or one structured document for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people (`-o table`, the default)
    Table,
    /// One structured document on stdout: JSON (`-o json`) or YAML (`-o yaml`), the same
    /// value either way; [`json`] writes whichever was asked for.
    Json,
}

/// `-o yaml` was given: [`json`] writes YAML. Set once, while the command line is parsed.
static YAML: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Parses `-o`: `table`, `json` or `yaml` (a structured document in YAML).
pub fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "table" => Ok(Format::Table),
        "json" => Ok(Format::Json),
        "yaml" => {
            YAML.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(Format::Json)
        }
        other => Err(format!("{other:?} is not one of table, json, yaml")),
    }
}

/// Prints `value` as pretty JSON (or YAML after `-o yaml`) followed by a newline.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if YAML.load(std::sync::atomic::Ordering::Relaxed) {
        let text = serde_saphyr::to_string(value)?;
        out.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            writeln!(out)?;
        }
        return Ok(());
    }
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Prints a table with a header row; columns are aligned, no borders (like `docker ps`).
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> anyhow::Result<()> {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    for row in rows {
        t.add_row(row);
    }
    let mut out = std::io::stdout().lock();
    for line in t.to_string().lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
