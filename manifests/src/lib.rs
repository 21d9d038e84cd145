//! berth-manifests: the app manifest schema (DESIGN.md §3), parsing of YAML sources with
//! `path:line:col` errors, validation across files, revision identity (a content hash of the
//! normalized spec), and the wire types the controller and agent exchange.
//!
//! This crate is pure: it takes file names and bytes as arguments and returns values. It must
//! not touch the filesystem, the network, the clock or processes; callers read the files.
//!
//! The pipeline of [`load`]: bytes → YAML tree with locations (`yaml`) → as-written spec
//! ([`raw::RawApp`]) → normalized spec ([`App`], defaults from [`defaults`]) → checks across
//! apps → [`ManifestSet`]. Every error of every file is collected into [`Diagnostics`].

pub mod app;
pub mod defaults;
pub mod error;
pub mod exposition;
mod normalize;
pub mod plan;
pub mod raw;
pub mod reference;
pub mod revision;
pub mod signal;
pub mod units;
mod validate;
pub mod wire;
mod yaml;

pub use app::App;
pub use error::{Diagnostic, Diagnostics, ErrorKind, Location, ManifestError};
pub use normalize::{is_dns_label, is_env_name, normalize_path};
pub use plan::{Plan, plan};
pub use reference::{ImageRef, ReferenceError};
pub use revision::Revision;
pub use signal::Signal;
pub use units::{ByteSize, Cpu, Duration, UnitError};

/// One manifest file: its path relative to the manifest directory (`/`-separated) and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Relative path, used in error locations.
    pub path: &'a str,
    /// The file's content (at most [`defaults::MAX_FILE_BYTES`] are accepted).
    pub bytes: &'a [u8],
}

/// A valid app and where it was defined.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The normalized spec.
    pub app: App,
    /// Where its document starts.
    pub location: Location,
    /// Its revision identity (content hash).
    pub revision: Revision,
}

/// All apps of a manifest tree, valid together, sorted by name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ManifestSet {
    /// The apps.
    pub manifests: Vec<Manifest>,
    /// How many sources were read.
    pub files: usize,
}

impl ManifestSet {
    /// The app named `name`.
    pub fn get(&self, name: &str) -> Option<&Manifest> {
        self.manifests.iter().find(|m| m.app.app == name)
    }
}

/// Decodes one source into as-written apps, reporting shape errors into `errors`.
pub fn parse_source(source: Source<'_>, errors: &mut Diagnostics) -> Vec<raw::RawApp> {
    let (text, docs) = match yaml::parse(source.path, source.bytes) {
        Ok(parsed) => parsed,
        Err((location, error)) => {
            errors.push(location, error);
            return Vec::new();
        }
    };
    let mut decoder = raw::Decoder {
        path: source.path,
        source: &text,
        errors,
        invalid: Default::default(),
    };
    docs.iter().filter_map(|doc| decoder.app(doc)).collect()
}

/// Parses, normalizes and validates every source: all valid apps, or every error found.
pub fn load(sources: &[Source<'_>]) -> Result<ManifestSet, Diagnostics> {
    let mut errors = Diagnostics::default();
    let mut apps = Vec::new();
    for source in sources {
        for raw in parse_source(*source, &mut errors) {
            if let Some(app) = normalize::normalize(&raw, &mut errors) {
                apps.push((raw, app));
            }
        }
    }
    validate::across(&apps, &mut errors);
    if !errors.is_empty() {
        errors.sort();
        return Err(errors);
    }
    let mut manifests: Vec<Manifest> = apps
        .into_iter()
        .map(|(raw, app)| Manifest {
            revision: app.revision(),
            app,
            location: raw.location,
        })
        .collect();
    manifests.sort_by(|a, b| a.app.app.cmp(&b.app.app));
    Ok(ManifestSet {
        manifests,
        files: sources.len(),
    })
}

#[cfg(test)]
mod tests;
