//! The bridge to the YAML parser (serde-saphyr): turns one source into a tree of [`Node`]s
//! that carry their line and column, under the limits of [`crate::defaults`], and turns parser
//! errors into [`ManifestError`]s. Nothing here knows the manifest schema.
//!
//! The tree is built with `deserialize_any` plus `Spanned`, so every mapping key, value and
//! list item has a location, and the schema decoder (`crate::raw`) can report every error it
//! finds rather than the first. Pure: bytes in, values out.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Spanned, budget::BudgetBreach};

use crate::defaults;
use crate::error::{Location, ManifestError};

/// A YAML node with its place in the source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub kind: Kind,
    pub line: u32,
    pub column: u32,
    /// Byte range of the node's source text where it is defined (for aliases: the anchor's).
    pub span: Option<(usize, usize)>,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The source text of a scalar as written (`1.10`, `"8080"`), if known.
    pub fn raw<'s>(&self, source: &'s str) -> Option<&'s str> {
        let (start, len) = self.span?;
        source.get(start..start.checked_add(len)?)
    }

    /// The YAML type for messages: "a string", "a mapping", …
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "nothing (null)",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

fn node(s: Spanned<Kind>) -> Node {
    let span = s.defined.span();
    let span = match (span.byte_offset(), span.byte_len()) {
        (Some(o), Some(l)) => usize::try_from(o).ok().zip(usize::try_from(l).ok()),
        _ => None,
    };
    Node {
        kind: s.value,
        line: u32::try_from(s.referenced.line()).unwrap_or(u32::MAX),
        column: u32::try_from(s.referenced.column()).unwrap_or(u32::MAX),
        span,
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any yaml value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Kind, E> {
        Ok(Kind::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Kind, E> {
        Ok(Kind::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Kind, E> {
        Ok(i128::try_from(v).map_or(Kind::Float(v as f64), Kind::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Kind, E> {
        Ok(Kind::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Kind, E> {
        Ok(Kind::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_none<E>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_unit<E>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Kind>>()? {
            items.push(node(item));
        }
        Ok(Kind::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Kind>>()? {
            let value = map.next_value::<Spanned<Kind>>()?;
            entries.push((node(key), node(value)));
        }
        Ok(Kind::Map(entries))
    }
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        // `yes`/`on` stay strings: the schema, not YAML 1.1, decides what is a boolean.
        strict_booleans: true,
        // Tags mean nothing in a manifest: `!include`, `!Ref` or `!!binary` are refused
        // rather than silently read as plain values.
        reject_unsupported_tags: true,
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_documents: defaults::MAX_DOCUMENTS,
            max_depth: defaults::MAX_DEPTH,
            flow_nesting_limit: defaults::MAX_DEPTH,
            max_nodes: defaults::MAX_NODES,
            max_aliases: defaults::MAX_ALIASES,
            max_total_scalar_bytes: defaults::MAX_FILE_BYTES,
            max_reader_input_bytes: Some(defaults::MAX_FILE_BYTES),
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: defaults::MAX_ALIAS_REPLAYED_EVENTS,
            max_replay_stack_depth: 16,
            max_alias_expansions_per_anchor: defaults::MAX_ALIASES,
        },
    }
}

/// The documents of one source, each a root node; empty documents are skipped.
/// On failure: where and what (a file with a syntax error reports that one error).
pub(crate) fn parse(
    path: &str,
    bytes: &[u8],
) -> Result<(String, Vec<Node>), (Location, ManifestError)> {
    if bytes.len() > defaults::MAX_FILE_BYTES {
        return Err((
            Location::new(path, 1, 1),
            ManifestError::FileTooLarge {
                limit: defaults::MAX_FILE_BYTES,
            },
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = line_col(&bytes[..e.valid_up_to()]);
            return Err((Location::new(path, line, column), ManifestError::NotUtf8));
        }
    };
    match serde_saphyr::from_multiple_with_options::<Spanned<Kind>>(text, options()) {
        Ok(docs) => Ok((text.to_owned(), docs.into_iter().map(node).collect())),
        Err(err) => {
            let (line, column) = err
                .location()
                .map(|l| (l.line(), l.column()))
                .filter(|(l, _)| *l > 0)
                .map_or((1, 1), |(l, c)| {
                    (
                        u32::try_from(l).unwrap_or(u32::MAX),
                        u32::try_from(c).unwrap_or(u32::MAX).max(1),
                    )
                });
            Err((Location::new(path, line, column), convert(&err)))
        }
    }
}

/// 1-based line and column (in characters) of the end of `prefix`.
fn line_col(prefix: &[u8]) -> (u32, u32) {
    let text = String::from_utf8_lossy(prefix);
    let line = text.matches('\n').count() + 1;
    let column = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

fn original(mut err: &serde_saphyr::Error) -> &serde_saphyr::Error {
    loop {
        match err {
            serde_saphyr::Error::WithSnippet { error, .. }
            | serde_saphyr::Error::AliasError { error, .. } => {
                err = error;
            }
            _ => return err,
        }
    }
}

const ALIAS_HINT: &str = "; aliases that expand into huge trees (\"billion laughs\") are refused";

fn convert(err: &serde_saphyr::Error) -> ManifestError {
    use serde_saphyr::Error as E;
    let limit = |what, limit, hint| ManifestError::LimitExceeded { what, limit, hint };
    match original(err) {
        E::Budget { breach, .. } => match breach {
            BudgetBreach::Depth { .. } => limit("nesting depth", defaults::MAX_DEPTH, ""),
            BudgetBreach::Documents { .. } => limit(
                "number of documents in one file",
                defaults::MAX_DOCUMENTS,
                "",
            ),
            BudgetBreach::Nodes { .. } => limit(
                "number of yaml nodes (aliases expanded)",
                defaults::MAX_NODES,
                ALIAS_HINT,
            ),
            BudgetBreach::Aliases { .. } => {
                limit("number of aliases", defaults::MAX_ALIASES, ALIAS_HINT)
            }
            BudgetBreach::ScalarBytes { .. } => {
                limit("total bytes of values", defaults::MAX_FILE_BYTES, "")
            }
            other => ManifestError::Syntax {
                message: format!("yaml budget exceeded: {other:?}"),
            },
        },
        E::AliasReplayLimitExceeded { .. } | E::AliasReplayCounterOverflow { .. } => limit(
            "alias expansion (replayed events)",
            defaults::MAX_ALIAS_REPLAYED_EVENTS,
            ALIAS_HINT,
        ),
        E::AliasExpansionLimitExceeded { .. } => limit(
            "expansions of one anchor",
            defaults::MAX_ALIASES,
            ALIAS_HINT,
        ),
        E::AliasReplayStackDepthExceeded { .. } => limit("alias nesting", 16, ALIAS_HINT),
        other => {
            use serde_saphyr::MessageFormatter;
            let message = serde_saphyr::UserMessageFormatter
                .format_message(other)
                .into_owned();
            if message.contains("recursion limit") {
                limit("nesting depth", defaults::MAX_DEPTH, "")
            } else {
                ManifestError::Syntax { message }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(src: &str) -> Vec<Node> {
        parse("t.yaml", src.as_bytes()).map(|(_, d)| d).unwrap()
    }

    fn parse_err(src: &str) -> String {
        match parse("t.yaml", src.as_bytes()) {
            Ok(_) => "ok".into(),
            Err((loc, e)) => format!("{loc}: {e}"),
        }
    }

    #[test]
    fn nodes_carry_line_and_column_of_keys_and_values() {
        let docs = parse_ok("app: web\nresources:\n  memory: 128Mi\n");
        let Kind::Map(entries) = &docs[0].kind else {
            panic!()
        };
        let (k, v) = &entries[1];
        assert_eq!((k.line, k.column), (2, 1));
        let Kind::Map(inner) = &v.kind else { panic!() };
        assert_eq!((inner[0].1.line, inner[0].1.column), (3, 11));
        assert_eq!(inner[0].1.kind, Kind::Str("128Mi".into()));
    }

    #[test]
    fn several_documents_give_several_roots_and_empty_ones_are_skipped() {
        assert_eq!(parse_ok("a: 1\n---\n---\nb: 2\n").len(), 2);
        assert_eq!(parse_ok("").len(), 0);
    }

    #[test]
    fn raw_text_keeps_the_spelling_of_numbers_and_quotes() {
        let src = "a: 1.10\nb: \"8080\"\nc: yes\n";
        let docs = parse_ok(src);
        let Kind::Map(e) = &docs[0].kind else {
            panic!()
        };
        assert_eq!(e[0].1.raw(src), Some("1.10"));
        assert_eq!(e[1].1.raw(src), Some("\"8080\""));
        assert_eq!(e[2].1.kind, Kind::Str("yes".into()), "strict booleans");
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_are_located() {
        assert_eq!(
            parse_err("app: web\nimage: [a, b\nport: 1\n")
                .split(": ")
                .next(),
            Some("t.yaml:3:5")
        );
        let dup = parse_err("app: web\nport: 1\napp: x\n");
        assert!(
            dup.starts_with("t.yaml:3:1: yaml syntax: duplicate"),
            "{dup}"
        );
    }

    #[test]
    fn billion_laughs_fails_fast_with_a_limit_error() {
        let mut src = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let mut prev = 'a';
        for c in "bcdefghi".chars() {
            src.push_str(&format!(
                "{c}: &{c} [{}]\n",
                vec![format!("*{prev}"); 9].join(",")
            ));
            prev = c;
        }
        let err = parse_err(&src);
        assert!(
            err.contains("exceeds the limit") && err.contains("billion laughs"),
            "{err}"
        );
    }

    #[test]
    fn deep_nesting_is_refused_in_flow_and_block_style() {
        let flow = format!("a: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            parse_err(&flow).contains("nesting depth exceeds the limit of 32"),
            "{}",
            parse_err(&flow)
        );
        let mut block = String::from("a:\n");
        for i in 1..200 {
            block.push_str(&format!("{}k:\n", " ".repeat(i)));
        }
        assert!(
            parse_err(&block).contains("nesting depth exceeds the limit of 32"),
            "{}",
            parse_err(&block)
        );
    }

    #[test]
    fn oversized_and_non_utf8_files_are_refused_before_parsing() {
        let big = "#".repeat(defaults::MAX_FILE_BYTES + 1);
        assert!(parse_err(&big).starts_with("t.yaml:1:1: file is larger than the limit"));
        let bad = parse("t.yaml", b"app: web\nimage: \xff\n")
            .err()
            .map(|(l, _)| l.to_string());
        assert_eq!(bad.as_deref(), Some("t.yaml:2:8"));
    }
}
