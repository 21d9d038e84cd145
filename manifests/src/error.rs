//! Errors of manifest parsing and validation: where (`Location`), what (`ManifestError`), and
//! the pair of both (`Diagnostic`) that `berth validate` prints as `path:line:col: message`.
//!
//! This module only describes errors; it does not decide what is an error.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The class of an error (containerd's errdefs): drives exit codes, HTTP statuses and the
/// `kind` label of error metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input is wrong; retrying the same input fails again.
    InvalidInput,
    /// The thing named does not exist.
    NotFound,
    /// The input contradicts other input or existing state.
    Conflict,
    /// A dependency is not reachable now; retrying later may work.
    Unavailable,
    /// A size, depth or count limit was hit.
    ResourceExhausted,
    /// A bug in berth.
    Internal,
}

/// A place in a manifest source: file path (as the caller named it) and 1-based line and
/// column (in characters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Location {
    /// The source's path, relative to the manifest directory.
    pub path: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

impl Location {
    /// A location in `path` at `line`:`column`.
    pub fn new(path: impl Into<String>, line: u32, column: u32) -> Self {
        Self {
            path: path.into(),
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path, self.line, self.column)
    }
}

/// What is wrong with a manifest. The message names the field (a dotted path such as
/// `resources.memory`) and says what was expected; the location is kept beside it in
/// [`Diagnostic`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The file is bigger than the per-file limit.
    #[error("file is larger than the limit of {} ({limit} bytes); split it into several files", crate::units::ByteSize::from_bytes(*limit as u64))]
    FileTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The bytes are not UTF-8.
    #[error("file is not valid UTF-8; manifests must be UTF-8 text")]
    NotUtf8,
    /// The YAML is malformed (as reported by the YAML parser).
    #[error("yaml syntax: {message}")]
    Syntax {
        /// The parser's description.
        message: String,
    },
    /// A parser budget was exceeded: nesting depth, node count, documents, alias expansion.
    #[error("{what} exceeds the limit of {limit}{hint}")]
    LimitExceeded {
        /// What was counted.
        what: &'static str,
        /// The limit.
        limit: usize,
        /// Extra advice, starting with "; " when present.
        hint: &'static str,
    },
    /// A key that the schema does not know.
    #[error("{field}: unknown key{suggestion}; expected one of: {expected}")]
    UnknownKey {
        /// Dotted path of the unknown key.
        field: String,
        /// ", did you mean `x`?" when a known key is close, else empty.
        suggestion: String,
        /// The keys allowed at this place.
        expected: String,
    },
    /// A required field is absent.
    #[error("{field}: required field is missing{hint}")]
    Missing {
        /// Dotted path of the missing field.
        field: String,
        /// Extra advice, starting with "; " when present.
        hint: String,
    },
    /// A value of the wrong type or shape.
    #[error("{field}: expected {expected}, got {got}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What would have been accepted, e.g. "a size like 128Mi".
        expected: String,
        /// What was written, quoted, or its YAML type.
        got: String,
    },
    /// A value of the right shape that breaks a rule (bounds, combinations of fields).
    #[error("{field}: {rule}")]
    Rule {
        /// Dotted path of the field.
        field: String,
        /// The broken rule, said as what to do.
        rule: String,
    },
    /// Two documents define the same app.
    #[error("app `{app}` is defined twice (also at {other}); app names must be unique")]
    DuplicateApp {
        /// The app name.
        app: String,
        /// Where the other definition is.
        other: Location,
    },
    /// Two apps claim the same host port.
    #[error("{field}: host port {port} is also used by app `{other_app}` ({other})")]
    PortClash {
        /// Dotted path of the port field.
        field: String,
        /// The port.
        port: u16,
        /// The other app.
        other_app: String,
        /// Where the other app's claim is.
        other: Location,
    },
}

impl ManifestError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::FileTooLarge { .. } | Self::LimitExceeded { .. } => ErrorKind::ResourceExhausted,
            Self::DuplicateApp { .. } | Self::PortClash { .. } => ErrorKind::Conflict,
            Self::NotUtf8
            | Self::Syntax { .. }
            | Self::UnknownKey { .. }
            | Self::Missing { .. }
            | Self::Invalid { .. }
            | Self::Rule { .. } => ErrorKind::InvalidInput,
        }
    }
}

/// One error at one place: printed as `path:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {error}")]
pub struct Diagnostic {
    /// Where.
    pub location: Location,
    /// What.
    #[source]
    pub error: ManifestError,
}

impl Diagnostic {
    /// The message on one line, without the location (control characters escaped).
    pub fn message(&self) -> String {
        one_line(&self.error.to_string())
    }
}

/// Every error found in a set of sources, sorted by path, line and column.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("{} error(s) in manifests, first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Always [`ErrorKind::InvalidInput`], or [`ErrorKind::ResourceExhausted`] when every
    /// error is a limit.
    pub fn kind(&self) -> ErrorKind {
        if !self.0.is_empty()
            && self
                .0
                .iter()
                .all(|d| d.error.kind() == ErrorKind::ResourceExhausted)
        {
            ErrorKind::ResourceExhausted
        } else {
            ErrorKind::InvalidInput
        }
    }

    pub(crate) fn push(&mut self, location: Location, error: ManifestError) {
        self.0.push(Diagnostic { location, error });
    }

    pub(crate) fn sort(&mut self) {
        self.0
            .sort_by(|a, b| (&a.location, a.message()).cmp(&(&b.location, b.message())));
        self.0.dedup();
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Escapes control characters (newlines included) so every message stays on one line.
pub(crate) fn one_line(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_owned()
    }
}

/// Quotes a user value for a message, shortened to a readable length.
pub(crate) fn quoted(s: &str) -> String {
    const MAX: usize = 60;
    let mut out: String = s.chars().take(MAX).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    format!("{:?}", out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostic_prints_path_line_col_and_message() {
        let d = Diagnostic {
            location: Location::new("apps/web.yaml", 7, 12),
            error: ManifestError::Invalid {
                field: "resources.memory".into(),
                expected: "a size like 128Mi".into(),
                got: quoted("lots"),
            },
        };
        assert_eq!(
            d.to_string(),
            r#"apps/web.yaml:7:12: resources.memory: expected a size like 128Mi, got "lots""#
        );
    }

    #[test]
    fn messages_never_span_lines() {
        assert_eq!(one_line("a\nb"), "a\\nb");
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let q = quoted(&"x".repeat(200));
        assert!(q.chars().count() < 70, "{q}");
    }
}
