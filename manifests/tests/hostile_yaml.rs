//! Structured fuzzing of the parser and validator (issue 9): documents shaped like manifests
//! (the real keys, nested as the schema nests them, plus unknown ones) whose values come from
//! a pool of hostile scalars and structures: numbers past every integer type, negative and
//! fractional counts, unit overflows (`18446744073709551615Ei`, `9999999999999h`), NaN and
//! infinities, unicode and control characters, 10 kB strings, tags, anchors and aliases,
//! merge keys, several documents, maps where scalars belong and the reverse. Each document is
//! loaded alone and with a sibling file, and must:
//!
//! - return (never panic) within a bound (`BOUND`, generous for a loaded CI machine);
//! - on error: name a location inside the file (1-based line and column, line within the
//!   text) and print every message on one line;
//! - on success: be deterministic (a second load gives the same apps and revisions) and
//!   round-trip through the wire form (JSON) to the same app and revision.
//!
//! `PROPTEST_CASES` scales the run: CI uses the default below, scripts/fuzz.sh runs long ones.

// Generators live outside #[test] functions; a failed unwrap there is a test bug.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use berth_manifests::{App, Diagnostics, ManifestSet, Source, load};
use proptest::prelude::*;

/// The most one load may take. Real loads take well under a millisecond; the bound catches
/// runaway (quadratic or exponential) behaviour, not slowness of a shared machine.
const BOUND: Duration = Duration::from_secs(2);

/// A YAML node to emit.
#[derive(Debug, Clone)]
enum Node {
    /// Written as is (plain scalars, flow collections, tags, aliases).
    Raw(String),
    /// A string, double-quoted with escapes.
    Quoted(String),
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
}

/// The schema's keys and what nests under them.
const NESTED: &[(&str, &[&str])] = &[
    ("resources", &["cpu", "memory", "pids"]),
    ("expose", &["port", "host", "path"]),
    ("autoscale", &["min", "max", "metric", "target"]),
    (
        "health",
        &[
            "http",
            "tcp",
            "exec",
            "interval",
            "timeout",
            "failures",
            "start_period",
        ],
    ),
    (
        "update",
        &["max_surge", "max_unavailable", "deadline", "auto_rollback"],
    ),
    ("stop", &["signal", "grace"]),
    ("restart", &["policy", "backoff_max"]),
    ("placement", &["labels", "spread"]),
    ("logs", &["max_size", "max_files"]),
];
const FLAT: &[&str] = &[
    "app", "image", "command", "env", "port", "replicas", "network", "volumes",
];

fn hostile_scalar() -> impl Strategy<Value = Node> {
    let fixed = prop::sample::select(vec![
        "0",
        "-1",
        "1",
        "65535",
        "65536",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "99999999999999999999999999999999999999",
        "1e308",
        "1e309",
        "-1e309",
        ".nan",
        ".inf",
        "-.inf",
        "0x7fffffffffffffff",
        "0o777",
        "1.5",
        "0.0000001",
        "~",
        "null",
        "true",
        "no",
        "''",
        "\"\"",
        "18446744073709551615Ei",
        "9999999999999999Gi",
        "1.5Mi",
        "-5Mi",
        "0.001m",
        "100000000000m",
        "1e3m",
        "9999999999999h",
        "18446744073709551615s",
        "1h-1s",
        "1.5.5s",
        "5sec",
        "SIGKILL",
        "SIG999",
        "ghcr.io/a/b:latest@sha256:xyz",
        "registry:99999/x",
        "UPPER/Case",
        "a..b",
        "-leading",
        "/",
        "/../../etc",
        "host",
        "private",
        "!!binary aGVsbG8=",
        "!!str 5",
        "!!int x",
        "!custom {a: 1}",
        "*undefined",
        "&a 1",
        "[]",
        "{}",
        "[1, [2, [3]]]",
        "{a: {b: {c: {}}}}",
        "? complex key",
        "|\n  block\n",
    ])
    .prop_map(|s| Node::Raw(s.to_owned()));
    let text = prop_oneof![
        "\\PC{0,40}".prop_map(Node::Quoted),
        any::<String>().prop_map(Node::Quoted),
        (any::<char>(), 1usize..12_000).prop_map(|(c, n)| Node::Quoted(c.to_string().repeat(n))),
        "[a-z0-9][a-z0-9-]{0,70}".prop_map(Node::Raw),
        any::<i128>().prop_map(|n| Node::Raw(n.to_string())),
        any::<f64>().prop_map(|f| Node::Raw(format!("{f:e}"))),
        (
            any::<u64>(),
            prop::sample::select(vec![
                "", "m", "Ki", "Mi", "Gi", "Ti", "Ei", "k", "G", "ms", "s", "m", "h", "d"
            ])
        )
            .prop_map(|(n, u)| Node::Raw(format!("{n}{u}"))),
    ];
    prop_oneof![3 => fixed, 2 => text]
}

fn hostile_value() -> impl Strategy<Value = Node> {
    hostile_scalar().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Node::Seq),
            prop::collection::vec(("[a-z_]{1,10}|\\PC{1,8}", inner), 0..5).prop_map(Node::Map),
        ]
    })
}

/// A document: a few real keys (nested ones as maps of their own keys, sometimes not), a
/// valid-looking core so validation runs past the first missing field, and unknown keys.
fn document() -> impl Strategy<Value = Node> {
    let nested = (
        prop::sample::select(NESTED.to_vec()),
        prop::collection::vec((any::<prop::sample::Index>(), hostile_value()), 0..5),
        any::<bool>(),
        hostile_value(),
    )
        .prop_map(|((key, subkeys), fields, as_map, other)| {
            if as_map {
                let map = fields
                    .into_iter()
                    .map(|(i, v)| ((*i.get(subkeys)).to_owned(), v))
                    .collect();
                (key.to_owned(), Node::Map(map))
            } else {
                (key.to_owned(), other)
            }
        });
    let flat =
        (prop::sample::select(FLAT.to_vec()), hostile_value()).prop_map(|(k, v)| (k.to_owned(), v));
    let unknown = ("[a-z_]{1,12}", hostile_value());
    (
        any::<bool>(),
        prop::collection::vec(prop_oneof![3 => nested, 3 => flat, 1 => unknown], 0..10),
    )
        .prop_map(|(core, fields)| {
            let mut entries = Vec::new();
            if core {
                entries.push(("app".to_owned(), Node::Raw("fuzzed".to_owned())));
                entries.push((
                    "image".to_owned(),
                    Node::Raw("registry.test/fuzz:1".to_owned()),
                ));
            }
            entries.extend(fields);
            Node::Map(entries)
        })
}

fn emit(node: &Node, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match node {
        Node::Raw(s) => {
            out.push(' ');
            out.push_str(s);
            out.push('\n');
        }
        Node::Quoted(s) => {
            out.push(' ');
            out.push_str(&serde_json::to_string(s).unwrap());
            out.push('\n');
        }
        Node::Map(entries) if entries.is_empty() => out.push_str(" {}\n"),
        Node::Seq(items) if items.is_empty() => out.push_str(" []\n"),
        Node::Map(entries) => {
            out.push('\n');
            for (k, v) in entries {
                out.push_str(&pad);
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push(':');
                emit(v, indent + 2, out);
            }
        }
        Node::Seq(items) => {
            out.push('\n');
            for v in items {
                out.push_str(&pad);
                out.push('-');
                emit(v, indent + 2, out);
            }
        }
    }
}

fn render(docs: &[Node], header: &str) -> String {
    let mut out = String::from(header);
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 || !header.is_empty() {
            out.push_str("---\n");
        }
        let mut body = String::new();
        emit(doc, 0, &mut body);
        // A top-level map is emitted with a leading newline; anything else is a scalar line.
        out.push_str(body.strip_prefix('\n').unwrap_or(&body));
    }
    out
}

#[allow(
    clippy::disallowed_methods,
    reason = "the time bound of one load is what is checked"
)]
fn timed_load(sources: &[Source<'_>]) -> Result<Result<ManifestSet, Diagnostics>, String> {
    let start = Instant::now();
    let result = load(sources);
    let took = start.elapsed();
    if took > BOUND {
        return Err(format!("load took {took:?}, over the bound of {BOUND:?}"));
    }
    Ok(result)
}

/// Checks the contract of one load of `text` (alone, and beside a valid sibling file).
fn check(text: &str) -> Result<(), TestCaseError> {
    let lines = text.lines().count().max(1) as u32;
    let sibling = "app: sibling\nimage: registry.test/sib:1\n";
    for sources in [
        vec![Source {
            path: "fuzz.yaml",
            bytes: text.as_bytes(),
        }],
        vec![
            Source {
                path: "fuzz.yaml",
                bytes: text.as_bytes(),
            },
            Source {
                path: "sib.yaml",
                bytes: sibling.as_bytes(),
            },
        ],
    ] {
        let first = timed_load(&sources).map_err(TestCaseError::fail)?;
        match &first {
            Err(diags) => {
                prop_assert!(!diags.is_empty(), "an error without diagnostics");
                for d in &diags.0 {
                    let shown = d.to_string();
                    prop_assert!(!d.message().contains('\n'), "multi-line message: {shown}");
                    prop_assert!(d.location.line >= 1 && d.location.column >= 1, "{shown}");
                    if d.location.path == "fuzz.yaml" {
                        prop_assert!(
                            d.location.line <= lines + 1,
                            "line past the end ({lines} lines): {shown}"
                        );
                    }
                }
            }
            Ok(set) => {
                for m in &set.manifests {
                    let wire: App =
                        serde_json::from_str(&serde_json::to_string(&m.app).unwrap()).unwrap();
                    prop_assert_eq!(&wire, &m.app);
                    prop_assert_eq!(wire.revision(), m.revision.clone());
                }
            }
        }
        let again = timed_load(&sources).map_err(TestCaseError::fail)?;
        prop_assert_eq!(first, again, "two loads of the same bytes differ");
    }
    Ok(())
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), ..ProptestConfig::default() })]

    #[test]
    fn hostile_manifests_give_errors_with_locations_never_a_panic(
        docs in prop::collection::vec(document(), 1..4),
        header in prop::sample::select(vec!["", "%YAML 1.2\n", "# comment\n", "\u{feff}", "anchor: &x [1, 2]\n"]),
    ) {
        check(&render(&docs, header))?;
    }
}

proptest! {
    // Each case loads up to ~1 MiB (the file limit) four times: fewer cases.
    #![proptest_config(ProptestConfig { cases: cases(40), ..ProptestConfig::default() })]

    #[test]
    fn alias_and_merge_key_documents_stay_bounded(
        fanout in 1usize..12,
        levels in 1usize..12,
        merge in any::<bool>(),
        at in prop::sample::select(FLAT.to_vec()),
    ) {
        // A "billion laughs" ladder of `levels` anchors, each a list of `fanout` aliases of the
        // previous one, used as the value of a real key (or merged into the document).
        let mut text = String::from("l0: &l0 [x]\n");
        for i in 1..levels {
            let refs = vec![format!("*l{}", i - 1); fanout].join(", ");
            text.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
        }
        let top = levels - 1;
        if merge {
            text.push_str(&format!("m: &m {{app: merged, {at}: *l{top}}}\n<<: *m\n"));
        } else {
            text.push_str(&format!("app: ladder\nimage: registry.test/x:1\n{at}: *l{top}\n"));
        }
        check(&text)?;
    }

    #[test]
    fn deeply_nested_and_oversized_sources_are_refused_quickly(
        depth in 1usize..5_000,
        open in prop::sample::select(vec!["[", "{a: ", "- ", "a:\n "]),
        pad in 0usize..(1 << 21),
    ) {
        let mut text = String::from("app: deep\nimage: registry.test/x:1\nenv: ");
        for _ in 0..depth { text.push_str(open); }
        text.push_str("x\n");
        check(&text)?;
        // Past the per-file byte limit (1 MiB): refused as a whole, not parsed.
        let mut big = String::from("app: big\nimage: registry.test/x:1\nenv:\n");
        while big.len() < pad { big.push_str("  K: vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\n"); }
        check(&big)?;
    }
}
