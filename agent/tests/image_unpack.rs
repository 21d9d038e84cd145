//! Layer extraction against hand-built tar layers: normal content, whiteouts, verification
//! (digest, size, diff_id), limits, and a matrix of hostile layers (containerd's breakout
//! cases and SECURITY.md §C 25-32). Every hostile case asserts that nothing outside the root
//! changed. Needs root (chown, mknod, trusted.* xattrs), as CI runs it.

// Test helpers outside #[test] functions: clippy's allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use berth_agent::host::unpack::{Expected, Limits, UnpackError, Unpacked, unpack_layer};
use berth_agent::image::Digest;

mod unpack_support;
use unpack_support::Sandbox;

/// One tar entry, written with raw header bytes so hostile names survive the builder.
enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Block(&'a str, u32, u32),
}

fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, kind, data, mode, link): (&str, tar::EntryType, &[u8], u32, Option<&str>) =
            match e {
                E::File(n, d, m) => (n, tar::EntryType::Regular, d, *m, None),
                E::Dir(n, m) => (n, tar::EntryType::Directory, b"", *m, None),
                E::Symlink(n, t) => (n, tar::EntryType::Symlink, b"", 0o777, Some(t)),
                E::Hardlink(n, t) => (n, tar::EntryType::Link, b"", 0o644, Some(t)),
                E::Char(n, ..) => (n, tar::EntryType::Char, b"", 0o600, None),
                E::Block(n, ..) => (n, tar::EntryType::Block, b"", 0o600, None),
            };
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name = [0; 100];
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                gnu.linkname = [0; 100];
                gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        if let E::Char(_, maj, min) | E::Block(_, maj, min) = e {
            h.set_device_major(*maj).unwrap();
            h.set_device_minor(*min).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn expected_for(blob: &[u8], tar: &[u8]) -> Expected {
    Expected {
        digest: Digest::of(blob),
        size: blob.len() as u64,
        diff_id: Digest::of(tar),
    }
}

/// Unpacking into the sandbox's root, and its checks.
trait Unpack {
    fn unpack_with(&self, entries: &[E<'_>], limits: &Limits) -> Result<Unpacked, UnpackError>;
    fn unpack(&self, entries: &[E<'_>]) -> Result<Unpacked, UnpackError>;
    fn assert_outside_untouched(&self);
    fn abs_outside(&self) -> String;
}

impl Unpack for Sandbox {
    fn unpack_with(&self, entries: &[E<'_>], limits: &Limits) -> Result<Unpacked, UnpackError> {
        let tar = tar_of(entries);
        let blob = gzip(&tar);
        unpack_layer(&blob[..], &expected_for(&blob, &tar), &self.root(), limits)
    }

    fn unpack(&self, entries: &[E<'_>]) -> Result<Unpacked, UnpackError> {
        self.unpack_with(entries, &Limits::default())
    }

    /// Nothing outside the root changed: same entries, same secret, same modes, one link.
    fn assert_outside_untouched(&self) {
        if let Err(what) = self.outside_changes() {
            panic!("something was written outside the root: {what}");
        }
    }

    fn abs_outside(&self) -> String {
        self.outside().display().to_string()
    }
}

fn refused(r: Result<Unpacked, UnpackError>) -> String {
    match r {
        Err(e @ UnpackError::Refused { .. }) => e.to_string(),
        Err(e @ UnpackError::Io { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ---- ordinary layers -------------------------------------------------------------------------

#[test]
fn unpacks_files_dirs_symlinks_and_hardlinks_with_modes_and_owners() {
    let sb = Sandbox::new();
    let out = sb
        .unpack(&[
            E::Dir("bin/", 0o755),
            E::File("bin/tool", b"#!/bin/sh\necho hi\n", 0o4755),
            E::Symlink("bin/sh", "/bin/busybox"),
            E::Hardlink("bin/tool2", "bin/tool"),
            E::File("etc/deep/conf", b"x=1", 0o640),
        ])
        .unwrap();
    let root = sb.root();
    assert_eq!(
        fs::read(root.join("bin/tool")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        fs::metadata(root.join("bin/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        fs::metadata(root.join("bin/tool")).unwrap().ino(),
        fs::metadata(root.join("bin/tool2")).unwrap().ino()
    );
    assert_eq!(
        fs::metadata(root.join("etc/deep"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        fs::metadata(root.join("bin/tool")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(out.entries, 5);
    assert_eq!(out.content_bytes, 18 + 3);
}

#[test]
fn a_later_entry_of_the_same_name_wins() {
    let sb = Sandbox::new();
    sb.unpack(&[
        E::File("a", b"one", 0o644),
        E::File("a", b"two", 0o644),
        E::Symlink("b", "x"),
        E::File("b", b"file", 0o644),
    ])
    .unwrap();
    assert_eq!(fs::read(sb.root().join("a")).unwrap(), b"two");
    assert_eq!(fs::read(sb.root().join("b")).unwrap(), b"file");
}

#[test]
fn whiteouts_become_overlay_whiteouts_and_opaque_markers() {
    let sb = Sandbox::new();
    sb.unpack(&[
        E::Dir("etc/", 0o755),
        E::File("etc/.wh.passwd", b"", 0o644),
        E::Dir("opt/", 0o755),
        E::File("opt/.wh..wh..opq", b"", 0o644),
        E::File("opt/new", b"n", 0o644),
    ])
    .unwrap();
    let wh = fs::symlink_metadata(sb.root().join("etc/passwd")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(
        wh.file_type().is_char_device(),
        "whiteout is not a char device"
    );
    assert_eq!(wh.rdev(), 0, "whiteout is not 0:0");
    assert!(!sb.root().join("etc/.wh.passwd").exists());
    assert!(!sb.root().join("opt/.wh..wh..opq").exists());
    let mut value = [0u8; 8];
    let n =
        rustix::fs::getxattr(sb.root().join("opt"), "trusted.overlay.opaque", &mut value).unwrap();
    assert_eq!(&value[..n], b"y");
    assert_eq!(fs::read(sb.root().join("opt/new")).unwrap(), b"n");
}

#[test]
fn zstd_and_uncompressed_layers_are_unpacked_too() {
    let tar = tar_of(&[E::File("z", b"zstd!", 0o644)]);
    for blob in [zstd::encode_all(&tar[..], 3).unwrap(), tar.clone()] {
        let sb = Sandbox::new();
        unpack_layer(
            &blob[..],
            &expected_for(&blob, &tar),
            &sb.root(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(fs::read(sb.root().join("z")).unwrap(), b"zstd!");
    }
}

// ---- verification ----------------------------------------------------------------------------

#[test]
fn a_flipped_byte_is_reported_as_a_digest_mismatch_naming_the_blob() {
    let sb = Sandbox::new();
    let tar = tar_of(&[E::File("f", &[7u8; 10000], 0o644)]);
    let blob = gzip(&tar);
    let expected = expected_for(&blob, &tar);
    let mut bad = blob.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    let err = unpack_layer(&bad[..], &expected, &sb.root(), &Limits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::DigestMismatch { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&expected.digest.to_string()),
        "{err}"
    );
}

#[test]
fn a_truncated_or_extended_blob_is_a_size_mismatch() {
    let tar = tar_of(&[E::File("f", b"data", 0o644)]);
    let blob = gzip(&tar);
    let expected = expected_for(&blob, &tar);
    let sb = Sandbox::new();
    let err = unpack_layer(
        &blob[..blob.len() - 3],
        &expected,
        &sb.root(),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::SizeMismatch { .. }
                | UnpackError::DigestMismatch { .. }
                | UnpackError::Malformed { .. }
        ),
        "{err:?}"
    );
    let mut longer = blob.clone();
    longer.extend_from_slice(b"trailing");
    let sb = Sandbox::new();
    let err = unpack_layer(&longer[..], &expected, &sb.root(), &Limits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::SizeMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&expected.digest.to_string()));
}

#[test]
fn a_lying_diff_id_is_refused() {
    let sb = Sandbox::new();
    let tar = tar_of(&[E::File("f", b"data", 0o644)]);
    let blob = gzip(&tar);
    let mut expected = expected_for(&blob, &tar);
    expected.diff_id = Digest::of(b"something else");
    let err = unpack_layer(&blob[..], &expected, &sb.root(), &Limits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("lies"), "{err}");
}

// ---- limits ----------------------------------------------------------------------------------

#[test]
fn a_decompression_bomb_stops_at_the_byte_limit() {
    let sb = Sandbox::new();
    // 64 MiB of zeros compress to ~64 KiB.
    let zeros = vec![0u8; 64 << 20];
    let tar = tar_of(&[E::File("bomb", &zeros, 0o644)]);
    let blob = gzip(&tar);
    let limits = Limits {
        max_uncompressed_bytes: 1 << 20,
        ..Limits::default()
    };
    let err = unpack_layer(&blob[..], &expected_for(&blob, &tar), &sb.root(), &limits).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err:?}");
}

#[test]
fn too_many_entries_stop_at_the_entry_limit() {
    let sb = Sandbox::new();
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, b"", 0o644)).collect();
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let err = sb.unpack_with(&entries, &limits).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 10 }),
        "{err:?}"
    );
}

// ---- hostile layers (containerd TestBreakouts, SECURITY.md §C) --------------------------------

#[test]
fn dot_dot_names_are_refused() {
    for name in ["../pwn", "../../outside/secret", "a/../../pwn", "./../pwn"] {
        let sb = Sandbox::new();
        let msg = refused(sb.unpack(&[E::File(name, b"pwned", 0o644)]));
        assert!(msg.contains(".."), "{name}: {msg}");
        sb.assert_outside_untouched();
    }
}

#[test]
fn absolute_names_land_inside_the_root() {
    let sb = Sandbox::new();
    let abs = format!("{}/secret", sb.abs_outside());
    sb.unpack(&[
        E::File(&abs, b"pwned", 0o644),
        E::File("/etc/passwd-berth-test", b"x", 0o644),
    ])
    .unwrap();
    sb.assert_outside_untouched();
    assert_eq!(
        fs::read(sb.root().join(abs.trim_start_matches('/'))).unwrap(),
        b"pwned"
    );
    assert!(sb.root().join("etc/passwd-berth-test").exists());
    assert!(!Path::new("/etc/passwd-berth-test").exists());
}

#[test]
fn writes_through_symlinked_parents_stay_inside_the_root() {
    let sb = Sandbox::new();
    let abs = sb.abs_outside();
    let cases: Vec<Vec<E<'_>>> = vec![
        // absolute symlink to the outside dir, then a file under it
        vec![E::Symlink("l", &abs), E::File("l/pwn", b"x", 0o644)],
        // relative climbing symlink
        vec![E::Symlink("l", "../outside"), E::File("l/pwn", b"x", 0o644)],
        // multi-hop chain
        vec![
            E::Symlink("a", "b"),
            E::Symlink("b", "../../outside"),
            E::File("a/pwn", b"x", 0o644),
        ],
        // "/." variants (umoci CVE-2021-29136)
        vec![
            E::Symlink("l", "/."),
            E::Symlink("m", "l/../../outside"),
            E::File("m/pwn", b"x", 0o644),
        ],
        // a symlinked dir nested in a real one
        vec![
            E::Dir("d/", 0o755),
            E::Symlink("d/l", "../../outside"),
            E::File("d/l/pwn", b"x", 0o644),
        ],
    ];
    for entries in cases {
        let sb2 = Sandbox::new();
        // Each case is either contained (written inside the root) or refused.
        let _ = sb2.unpack(&entries);
        sb2.assert_outside_untouched();
    }
    sb.assert_outside_untouched();
}

#[test]
fn a_symlink_in_root_resolves_inside_it() {
    let sb = Sandbox::new();
    sb.unpack(&[
        E::Dir("real/", 0o755),
        E::Symlink("l", "/real"),
        E::File("l/f", b"in", 0o644),
    ])
    .unwrap();
    assert_eq!(fs::read(sb.root().join("real/f")).unwrap(), b"in");
}

#[test]
fn a_file_entry_replaces_a_symlink_instead_of_writing_through_it() {
    let sb = Sandbox::new();
    let target = format!("{}/secret", sb.abs_outside());
    sb.unpack(&[E::Symlink("s", &target), E::File("s", b"pwned", 0o666)])
        .unwrap();
    sb.assert_outside_untouched();
    assert_eq!(fs::read(sb.root().join("s")).unwrap(), b"pwned");
    let sb = Sandbox::new();
    sb.unpack(&[
        E::Symlink("s", "../outside/secret"),
        E::File("s", b"pwned", 0o666),
    ])
    .unwrap();
    sb.assert_outside_untouched();
}

#[test]
fn a_directory_entry_over_a_symlink_never_chmods_the_target() {
    // tar CVE-2026-33056 pattern: symlink to an outside dir, then a dir entry of that name.
    let sb = Sandbox::new();
    sb.unpack(&[E::Symlink("d", &sb.abs_outside()), E::Dir("d", 0o777)])
        .unwrap();
    sb.assert_outside_untouched();
    assert!(fs::symlink_metadata(sb.root().join("d")).unwrap().is_dir());
}

#[test]
fn hardlinks_to_outside_files_are_refused_or_contained() {
    let abs_secret = |sb: &Sandbox| format!("{}/secret", sb.abs_outside());
    // ".." in the target
    let sb = Sandbox::new();
    refused(sb.unpack(&[E::Hardlink("h", "../outside/secret")]));
    sb.assert_outside_untouched();
    // absolute target: resolved in the root, where it does not exist
    let sb = Sandbox::new();
    let t = abs_secret(&sb);
    refused(sb.unpack(&[E::Hardlink("h", &t)]));
    sb.assert_outside_untouched();
    // through a symlinked parent
    let sb = Sandbox::new();
    let abs = sb.abs_outside();
    refused(sb.unpack(&[E::Symlink("l", &abs), E::Hardlink("h", "l/secret")]));
    sb.assert_outside_untouched();
}

#[test]
fn a_hardlink_to_a_symlink_then_chmod_does_not_follow_it() {
    // containerd CVE-2021-32760 (HardlinkSymlinkChmod).
    let sb = Sandbox::new();
    let target = format!("{}/secret", sb.abs_outside());
    let _ = sb.unpack(&[
        E::Symlink("s", &target),
        E::Hardlink("h", "s"),
        E::File("h", b"x", 0o777),
        E::Dir("s", 0o777),
    ]);
    sb.assert_outside_untouched();
}

#[test]
fn hostile_whiteouts_are_refused() {
    for name in [".wh..", ".wh...", "etc/.wh..", ".wh."] {
        let sb = Sandbox::new();
        let msg = refused(sb.unpack(&[E::File(name, b"", 0o644)]));
        assert!(
            msg.contains("whiteout") || msg.contains(".."),
            "{name}: {msg}"
        );
        sb.assert_outside_untouched();
    }
}

#[test]
fn whiteouts_through_a_symlinked_parent_stay_inside() {
    let sb = Sandbox::new();
    let _ = sb.unpack(&[
        E::Symlink("l", "../outside"),
        E::File("l/.wh.secret", b"", 0o644),
    ]);
    sb.assert_outside_untouched();
    let sb = Sandbox::new();
    let abs = sb.abs_outside();
    let _ = sb.unpack(&[E::Symlink("l", &abs), E::File("l/.wh..wh..opq", b"", 0o644)]);
    sb.assert_outside_untouched();
    assert!(rustix::fs::getxattr(sb.outside(), "trusted.overlay.opaque", &mut [0u8; 8]).is_err());
}

#[test]
fn device_nodes_are_refused_unless_allowed() {
    let sb = Sandbox::new();
    let msg = refused(sb.unpack(&[E::Char("dev/mem", 1, 1)]));
    assert!(msg.contains("device"), "{msg}");
    let sb = Sandbox::new();
    refused(sb.unpack(&[E::Block("dev/sda", 8, 0)]));
    let sb = Sandbox::new();
    let limits = Limits {
        allow_devices: true,
        ..Limits::default()
    };
    sb.unpack_with(&[E::Char("dev/null", 1, 3)], &limits)
        .unwrap();
    assert_eq!(
        fs::symlink_metadata(sb.root().join("dev/null"))
            .unwrap()
            .rdev(),
        rustix::fs::makedev(1, 3)
    );
}

#[test]
fn a_file_cannot_replace_a_non_empty_directory() {
    let sb = Sandbox::new();
    let msg = refused(sb.unpack(&[E::File("d/f", b"x", 0o644), E::File("d", b"x", 0o644)]));
    assert!(msg.contains("non-empty"), "{msg}");
}
