//! Layer extraction fuzzed into a temp root (issue 9). Random archives built from hostile
//! parts: names with `..`, `.`, empty components, absolute names and the absolute path of a
//! directory outside the root, whiteouts (`.wh.`, `.wh..`, `.wh...`, opaque markers in odd
//! places); symlinks to `..`, `/`, the outside directory and then files written through
//! them; hardlinks to files outside (relative and absolute); device nodes and fifos; entries
//! declaring huge sizes (the archive then ends early); PAX headers that rename the next entry
//! or carry `trusted.overlay.*` xattrs; raw random header blocks; random byte flips of the
//! finished archive; gzip, zstd or no compression; small entry and size limits.
//!
//! Whatever the archive, [`unpack_layer`] must return (an error is fine) within a bound, and
//! afterwards: the sandbox holds only `root/` and `outside/`, `outside/` is unchanged (same
//! entries, content, modes, link count of its file), and the root holds no device node
//! except overlay whiteouts (0:0), since devices are not allowed. Roots live on /dev/shm
//! (tmpfs: the final syncfs costs nothing). Needs root (chown, mknod, trusted.* xattrs).
//!
//! `PROPTEST_CASES` scales the run (scripts/fuzz.sh runs long ones).

// Test helpers outside #[test] functions: clippy's allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_agent::host::unpack::{Expected, Limits, unpack_layer};
use berth_agent::image::Digest;
use proptest::prelude::*;

mod unpack_support;
use unpack_support::Sandbox;

/// The most one extraction may take (archives here are at most a few MiB).
const BOUND: Duration = Duration::from_secs(20);

/// Placeholder for the absolute path of the sandbox's `outside/` directory.
const OUT: &str = "@OUT";

#[derive(Debug, Clone)]
enum Part {
    File(String, Vec<u8>, u32),
    Dir(String, u32),
    Symlink(String, String),
    Hardlink(String, String),
    Device(String, bool, u32, u32),
    Fifo(String),
    /// A regular file header declaring `size` bytes, followed by only `actual` bytes.
    Huge(String, u64, usize),
    /// A PAX header: a `path` for the next entry, or an xattr of it.
    Pax(Vec<(String, Vec<u8>)>),
    /// 512 random bytes where a header belongs.
    RawBlock(Vec<u8>),
}

fn component() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a",
        "b",
        "c",
        "dir",
        "..",
        ".",
        "",
        OUT,
        ".wh.a",
        ".wh.b",
        ".wh..",
        ".wh...",
        ".wh..wh..opq",
        ".wh.",
        "secret",
        "etc",
    ])
    .prop_map(str::to_owned)
}

fn name() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(component(), 1..5)).prop_map(|(abs, parts)| {
        let joined = parts.join("/");
        if abs { format!("/{joined}") } else { joined }
    })
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "..",
            "../..",
            "../outside",
            "../outside/secret",
            "../../../../../../..",
            "/",
            "@OUT",
            "@OUT/secret",
            "/etc/passwd",
            "a",
            "a/b",
            ".",
            "",
        ])
        .prop_map(str::to_owned),
        name(),
    ]
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        4 => (name(), prop::collection::vec(any::<u8>(), 0..64), prop::sample::select(vec![0o644, 0o4755, 0o000, 0o7777]))
            .prop_map(|(n, d, m)| Part::File(n, d, m)),
        3 => (name(), prop::sample::select(vec![0o755, 0o000, 0o1777])).prop_map(|(n, m)| Part::Dir(n, m)),
        4 => (name(), target()).prop_map(|(n, t)| Part::Symlink(n, t)),
        3 => (name(), target()).prop_map(|(n, t)| Part::Hardlink(n, t)),
        1 => (name(), any::<bool>(), 0u32..300, 0u32..300).prop_map(|(n, c, ma, mi)| Part::Device(n, c, ma, mi)),
        1 => name().prop_map(Part::Fifo),
        1 => (name(), prop::sample::select(vec![1u64 << 20, 1 << 33, 0o77_777_777_777]), 0usize..2048)
            .prop_map(|(n, s, a)| Part::Huge(n, s, a)),
        1 => prop::collection::vec(
                prop_oneof![
                    name().prop_map(|n| ("path".to_owned(), n.into_bytes())),
                    target().prop_map(|t| ("linkpath".to_owned(), t.into_bytes())),
                    prop::sample::select(vec![
                        "SCHILY.xattr.trusted.overlay.redirect",
                        "SCHILY.xattr.trusted.overlay.opaque",
                        "SCHILY.xattr.security.capability",
                        "SCHILY.xattr.user.x",
                        "size",
                    ]).prop_flat_map(|k| prop::collection::vec(any::<u8>(), 0..24).prop_map(move |v| (k.to_owned(), v))),
                ],
                1..3,
            ).prop_map(Part::Pax),
        1 => prop::collection::vec(any::<u8>(), 512).prop_map(Part::RawBlock),
    ]
}

/// Writes a GNU header with the raw name bytes (hostile names survive) and the given data.
fn header(
    name: &str,
    kind: tar::EntryType,
    mode: u32,
    size: u64,
    link: Option<&str>,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        let n = name.as_bytes();
        gnu.name = [0; 100];
        gnu.name[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
        if let Some(l) = link {
            let l = l.as_bytes();
            gnu.linkname = [0; 100];
            gnu.linkname[..l.len().min(100)].copy_from_slice(&l[..l.len().min(100)]);
        }
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "<len> <key>=<value>\n", where <len> counts the whole record, its own digits included.
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn archive(parts: &[Part], out: &str, flips: &[(prop::sample::Index, u8)]) -> Vec<u8> {
    let fix = |s: &str| s.replace(OUT, out.trim_start_matches('/'));
    let fix_abs = |s: &str| s.replace(OUT, out);
    let mut tar = Vec::new();
    let put = |tar: &mut Vec<u8>, h: &mut tar::Header, data: &[u8]| {
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().next_multiple_of(512), 0);
    };
    for p in parts {
        match p {
            Part::File(n, d, m) => put(
                &mut tar,
                &mut header(&fix(n), tar::EntryType::Regular, *m, d.len() as u64, None),
                d,
            ),
            Part::Dir(n, m) => put(
                &mut tar,
                &mut header(&fix(n), tar::EntryType::Directory, *m, 0, None),
                b"",
            ),
            Part::Symlink(n, t) => put(
                &mut tar,
                &mut header(
                    &fix(n),
                    tar::EntryType::Symlink,
                    0o777,
                    0,
                    Some(&fix_abs(t)),
                ),
                b"",
            ),
            Part::Hardlink(n, t) => put(
                &mut tar,
                &mut header(&fix(n), tar::EntryType::Link, 0o644, 0, Some(&fix_abs(t))),
                b"",
            ),
            Part::Device(n, char, ma, mi) => {
                let kind = if *char {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                let mut h = header(&fix(n), kind, 0o666, 0, None);
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
                put(&mut tar, &mut h, b"");
            }
            Part::Fifo(n) => put(
                &mut tar,
                &mut header(&fix(n), tar::EntryType::Fifo, 0o644, 0, None),
                b"",
            ),
            Part::Huge(n, size, actual) => {
                let mut h = header(&fix(n), tar::EntryType::Regular, 0o644, *size, None);
                h.set_cksum();
                tar.extend_from_slice(h.as_bytes());
                tar.extend(std::iter::repeat_n(b'z', *actual));
            }
            Part::Pax(records) => {
                let mut data = Vec::new();
                for (k, v) in records {
                    let v = if k == "path" || k == "linkpath" {
                        fix_abs(&String::from_utf8_lossy(v)).into_bytes()
                    } else {
                        v.clone()
                    };
                    data.extend(pax_record(k, &v));
                }
                put(
                    &mut tar,
                    &mut header(
                        "PaxHeaders/x",
                        tar::EntryType::XHeader,
                        0o644,
                        data.len() as u64,
                        None,
                    ),
                    &data,
                );
            }
            Part::RawBlock(b) => tar.extend_from_slice(b),
        }
    }
    tar.extend_from_slice(&[0; 1024]);
    for (at, byte) in flips {
        let i = at.index(tar.len());
        tar[i] = *byte;
    }
    tar
}

/// Nothing outside the root changed, and no device node is in the root.
fn check(sb: &Sandbox) -> Result<(), String> {
    sb.outside_changes()?;
    check_tree(&sb.root())
}

/// No device node in the root except 0:0 whiteouts (devices are not allowed).
fn check_tree(dir: &Path) -> Result<(), String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(()); // a directory of mode 000 is fine (we are root, but be lenient)
    };
    for e in entries {
        let e = e.unwrap();
        let meta = fs::symlink_metadata(e.path()).unwrap();
        let ft = meta.file_type();
        if (ft.is_char_device() && meta.rdev() != 0) || ft.is_block_device() {
            return Err(format!("device node {} in the root", e.path().display()));
        }
        if ft.is_dir() {
            check_tree(&e.path())?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Codec {
    None,
    Gzip,
    Zstd,
}

fn compress(codec: Codec, tar: &[u8]) -> Vec<u8> {
    match codec {
        Codec::None => tar.to_vec(),
        Codec::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(tar).unwrap();
            enc.finish().unwrap()
        }
        Codec::Zstd => zstd::encode_all(tar, 1).unwrap(),
    }
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[allow(
    clippy::disallowed_methods,
    reason = "the time bound of one extraction is what is checked"
)]
fn run(
    parts: &[Part],
    flips: &[(prop::sample::Index, u8)],
    codec: Codec,
    limits: &Limits,
) -> Result<(), TestCaseError> {
    let sb = Sandbox::on_tmpfs();
    let tar = archive(parts, &sb.outside().display().to_string(), flips);
    let blob = compress(codec, &tar);
    let expected = Expected {
        digest: Digest::of(&blob),
        size: blob.len() as u64,
        diff_id: Digest::of(&tar),
    };
    let start = Instant::now();
    let result = unpack_layer(&blob[..], &expected, &sb.root(), limits);
    let took = start.elapsed();
    prop_assert!(took < BOUND, "extraction took {took:?}");
    if let Err(e) = &result {
        // Errors print on one line and say something.
        prop_assert!(!e.to_string().is_empty());
    }
    check(&sb).map_err(|m| TestCaseError::fail(format!("{m} (unpack gave {result:?})")))?;
    Ok(())
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        3 => Just(Limits::default()),
        1 => (1u64..16, 512u64..20_000).prop_map(|(e, b)| Limits {
            max_uncompressed_bytes: b,
            max_entries: e,
            allow_devices: false,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn random_hostile_layers_write_nothing_outside_the_root(
        parts in prop::collection::vec(part(), 1..24),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..2),
        codec in prop::sample::select(vec![Codec::None, Codec::Gzip, Codec::Zstd]),
        limits in limits(),
    ) {
        run(&parts, &flips, codec, &limits)?;
    }

    #[test]
    fn symlink_then_write_through_it_stays_in_the_root(
        link in name(),
        to in target(),
        rest in prop::collection::vec(component(), 0..3),
        data in prop::collection::vec(any::<u8>(), 0..16),
        via_hardlink in any::<bool>(),
    ) {
        // The classic: a symlink, then an entry whose path goes through it (a file, a
        // directory and a file under it, or a hardlink to a name through it).
        let through = if rest.is_empty() { link.clone() } else { format!("{link}/{}", rest.join("/")) };
        let mut parts = vec![
            Part::Symlink(link.clone(), to),
            Part::File(format!("{through}/secret"), data.clone(), 0o644),
            Part::Dir(format!("{through}/d"), 0o777),
            Part::File(format!("{through}/d/f"), data, 0o644),
            Part::File(through.clone(), b"x".to_vec(), 0o644),
        ];
        if via_hardlink {
            parts.push(Part::Hardlink("h".into(), format!("{through}/secret")));
            parts.push(Part::File("h".into(), b"overwrite".to_vec(), 0o644));
        }
        run(&parts, &[], Codec::None, &Limits::default())?;
    }
}
