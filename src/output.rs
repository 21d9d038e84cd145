//! Printing results: tables for people, JSON (and YAML) for scripts. Verbs build rows or
//! serializable values and hand them here; nothing else in the CLI writes formatted output.

use std::io::Write;

use serde::Serialize;

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people
    Table,
    /// One JSON document on stdout
    Json,
}

/// Prints `value` as pretty JSON followed by a newline.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
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
