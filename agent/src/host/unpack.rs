//! Layer extraction: one pass from the compressed bytes a registry serves to a snapshot
//! directory, verifying the blob digest and size, the layer's diff_id, and limits on the way.
//!
//! ```text
//! raw bytes ─▶ size cap + sha256 (blob digest) ─▶ gzip | zstd | plain ─▶ byte cap + sha256
//!   (diff_id) ─▶ tar headers (tar crate) ─▶ every path resolved here, inside the root
//! ```
//!
//! The tar crate parses headers only; this module decides where each entry goes. Parent
//! directories are resolved with `openat2(RESOLVE_IN_ROOT)` relative to the snapshot's root fd,
//! so a symlink (absolute, relative, multi-hop) can only ever lead back inside the root; the
//! final name is created with `*at` calls on that parent fd and `O_EXCL`/`O_NOFOLLOW`, so no
//! write follows a symlink. Names with `..` are refused (an invalid archive), absolute names are
//! taken relative to the root (as GNU tar and containerd do), device nodes are refused unless
//! allowed, hardlink targets are resolved in the root, and whiteouts become overlayfs
//! whiteouts (a 0:0 character device) and opaque markers (`trusted.overlay.opaque=y`).
//! Only `user.*` and `security.capability` xattrs are applied: `trusted.overlay.*` from a
//! layer could redirect overlayfs lookups.
//!
//! It must not: write outside the root it is given, or decide where snapshots live (the
//! image store passes a fresh temp directory and renames it into place on success).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps, XattrFlags, makedev};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::image::{Digest, ErrorKind};

/// Limits that stop decompression bombs and hostile archives.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most uncompressed bytes one layer may expand to (tar headers and padding included).
    pub max_uncompressed_bytes: u64,
    /// Most tar entries in one layer.
    pub max_entries: u64,
    /// Whether character and block device nodes are created (otherwise the layer is refused).
    pub allow_devices: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_uncompressed_bytes: 64 << 30,
            max_entries: 2_000_000,
            allow_devices: false,
        }
    }
}

/// What a layer is expected to be: from the manifest (digest, size) and the config (diff_id).
#[derive(Debug, Clone)]
pub struct Expected {
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// The uncompressed tar's digest.
    pub diff_id: Digest,
}

/// What one unpacked layer turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Tar entries seen.
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub content_bytes: u64,
    /// Bytes of the uncompressed tar.
    pub uncompressed_bytes: u64,
}

/// Why a layer was not unpacked. The partial directory is the caller's to remove.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The blob's bytes do not hash to the digest the manifest gave.
    #[error(
        "blob {expected} failed verification: its content hashes to {actual}; nothing was stored"
    )]
    DigestMismatch {
        /// The digest from the manifest.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// The blob is longer or shorter than the manifest said.
    #[error("blob {digest} has the wrong size: the manifest says {expected} bytes, the registry sent {actual}{more}", more = if *.actual > *.expected { " or more" } else { "" })]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size from the manifest.
        expected: u64,
        /// Bytes received (stopped one past `expected` when longer).
        actual: u64,
    },
    /// The uncompressed layer does not hash to the diff_id the image config lists.
    #[error(
        "layer {digest} lies about its content: diff_id {expected} in the image config, but the tar hashes to {actual}"
    )]
    DiffIdMismatch {
        /// The blob.
        digest: Digest,
        /// The diff_id from the config.
        expected: Digest,
        /// The digest of the uncompressed bytes.
        actual: Digest,
    },
    /// An entry would escape the root or is refused by policy.
    #[error("layer entry {path:?} refused: {reason}")]
    Refused {
        /// The entry's name as in the archive.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// The layer expands past [`Limits::max_uncompressed_bytes`].
    #[error("layer expands past the limit of {limit} uncompressed bytes (a decompression bomb?)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The layer has more entries than [`Limits::max_entries`].
    #[error("layer has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// The bytes are not a valid compressed tar stream.
    #[error("layer is not a valid (gzip or zstd compressed) tar archive")]
    Malformed {
        /// The decoder's or tar parser's complaint.
        #[source]
        source: io::Error,
    },
    /// Reading the blob from the network failed.
    #[error("reading the layer from the registry failed")]
    Read {
        /// The transport error.
        #[source]
        source: io::Error,
    },
    /// A filesystem call inside the snapshot failed.
    #[error("cannot {op} {path:?} in the snapshot")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The entry's name as in the archive.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::DigestMismatch { .. }
            | Self::SizeMismatch { .. }
            | Self::DiffIdMismatch { .. } => ErrorKind::Internal,
            Self::Refused { .. } | Self::Malformed { .. } => ErrorKind::InvalidInput,
            Self::TooLarge { .. } | Self::TooManyEntries { .. } => ErrorKind::ResourceExhausted,
            Self::Read { .. } => ErrorKind::Unavailable,
            Self::Io { source, .. }
                if source.raw_os_error() == Some(Errno::NOSPC.raw_os_error()) =>
            {
                ErrorKind::ResourceExhausted
            }
            Self::Io { .. } => ErrorKind::Internal,
        }
    }
}

/// Marks io errors raised by our own readers, so they are told apart from decoder errors.
#[derive(Debug, Clone, Copy, thiserror::Error)]
enum StreamStop {
    #[error("uncompressed limit reached")]
    TooLarge,
    #[error("blob longer than its descriptor")]
    TooLong,
}

/// Hashes and counts what passes through; refuses to read past `cap` bytes.
struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    cap: u64,
    over_cap: StreamStop,
}

impl<R: Read> HashReader<R> {
    fn new(inner: R, cap: u64, over_cap: StreamStop) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            cap,
            over_cap,
        }
    }

    /// Reads to the end (still capped).
    fn drain(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        while self.read(&mut buf)? != 0 {}
        Ok(())
    }

    /// The digest and count of what was read, and the reader.
    fn into_parts(self) -> (Digest, u64, R) {
        (Digest::from_hasher(self.hasher), self.count, self.inner)
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Read up to one byte past the cap so that "exactly at the cap" is still fine.
        let room = self.cap.saturating_add(1).saturating_sub(self.count);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if want == 0 {
            return Err(io::Error::other(self.over_cap));
        }
        let n = self.inner.read(&mut buf[..want])?;
        self.count += n as u64;
        if self.count > self.cap {
            return Err(io::Error::other(self.over_cap));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

type Raw<R> = BufReader<HashReader<R>>;

/// gzip, zstd or plain tar, chosen by the stream's magic bytes (the media type may lie; the
/// digests are enforced either way).
#[allow(clippy::large_enum_variant)] // one per layer being unpacked: boxing buys nothing
enum Decoder<R: Read> {
    Gzip(flate2::bufread::MultiGzDecoder<Raw<R>>),
    Zstd(zstd::stream::read::Decoder<'static, Raw<R>>),
    Plain(Raw<R>),
}

impl<R: Read> Decoder<R> {
    fn new(mut raw: Raw<R>) -> io::Result<Self> {
        let head = raw.fill_buf()?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip(flate2::bufread::MultiGzDecoder::new(raw))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd(zstd::stream::read::Decoder::with_buffer(raw)?)
        } else {
            Self::Plain(raw)
        })
    }

    fn into_inner(self) -> Raw<R> {
        match self {
            Self::Gzip(d) => d.into_inner(),
            Self::Zstd(d) => d.finish(),
            Self::Plain(r) => r,
        }
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Gzip(d) => d.read(buf),
            Self::Zstd(d) => d.read(buf),
            Self::Plain(r) => r.read(buf),
        }
    }
}

/// Turns an io error from the reader stack into the error it stands for.
fn stream_error(err: io::Error, limits: &Limits, expected: &Expected) -> UnpackError {
    if let Some(stop) = err.get_ref().and_then(|e| e.downcast_ref::<StreamStop>()) {
        return match stop {
            StreamStop::TooLarge => UnpackError::TooLarge {
                limit: limits.max_uncompressed_bytes,
            },
            StreamStop::TooLong => UnpackError::SizeMismatch {
                digest: expected.digest.clone(),
                expected: expected.size,
                actual: expected.size + 1,
            },
        };
    }
    if let Some(src) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<TransportError>())
    {
        // The message keeps the whole cause chain (why the registry failed: too slow, cut,
        // an error status), which a fresh io::Error would otherwise drop.
        let mut message = src.0.to_string();
        let mut cause = src.0.get_ref().and_then(std::error::Error::source);
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            cause = c.source();
        }
        return UnpackError::Read {
            source: io::Error::new(src.0.kind(), message),
        };
    }
    UnpackError::Malformed { source: err }
}

/// Wraps errors of the byte source (the network), so they are reported as transport failures
/// rather than as a malformed archive. Readers passed to [`unpack_layer`] should wrap theirs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub io::Error);

/// Unpacks one layer blob from `raw` into the empty directory `root`, verifying size, digest
/// and diff_id, and syncs the filesystem before returning success. On error the partial
/// content stays in `root` for the caller to remove. A corrupt blob is reported as a digest
/// mismatch (the rest of the blob is read to tell), not as the decoder error it caused.
pub fn unpack_layer<R: Read>(
    raw: R,
    expected: &Expected,
    root: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let mut ex = Extractor::open(root, limits)?;
    let raw = HashReader::new(raw, expected.size, StreamStop::TooLong);
    let raw = BufReader::with_capacity(256 * 1024, raw);
    let decoder = Decoder::new(raw).map_err(|e| stream_error(e, limits, expected))?;
    let plain = HashReader::new(decoder, limits.max_uncompressed_bytes, StreamStop::TooLarge);
    let mut archive = tar::Archive::new(plain);
    let extracted = ex.extract(&mut archive);
    let mut plain = archive.into_inner();
    let streamed = match extracted {
        Ok(()) => plain.drain(),
        Err(ExtractError::Stream(e)) => Err(e),
        // An entry was refused or a write failed: that is the error, whatever the blob.
        Err(ExtractError::Fatal(e)) => return Err(e),
    };
    let (diff_id, uncompressed, decoder) = plain.into_parts();
    let mut raw = decoder.into_inner().into_inner();
    if let Err(e) = streamed {
        let err = stream_error(e, limits, expected);
        if matches!(err, UnpackError::Malformed { .. }) && raw.drain().is_ok() {
            // A flipped byte shows up as a decoder error first; name the blob instead.
            let (digest, size, _) = raw.into_parts();
            check_blob(expected, &digest, size)?;
        }
        return Err(err);
    }
    raw.drain().map_err(|e| stream_error(e, limits, expected))?;
    let (digest, size, _) = raw.into_parts();
    check_blob(expected, &digest, size)?;
    if diff_id != expected.diff_id {
        return Err(UnpackError::DiffIdMismatch {
            digest: expected.digest.clone(),
            expected: expected.diff_id.clone(),
            actual: diff_id,
        });
    }
    rustix::fs::syncfs(&ex.root).map_err(|e| io_err("sync", "", e))?;
    Ok(Unpacked {
        entries: ex.entries,
        content_bytes: ex.content_bytes,
        uncompressed_bytes: uncompressed,
    })
}

fn check_blob(expected: &Expected, digest: &Digest, size: u64) -> Result<(), UnpackError> {
    if size != expected.size {
        return Err(UnpackError::SizeMismatch {
            digest: expected.digest.clone(),
            expected: expected.size,
            actual: size,
        });
    }
    if digest != &expected.digest {
        return Err(UnpackError::DigestMismatch {
            expected: expected.digest.clone(),
            actual: digest.clone(),
        });
    }
    Ok(())
}

fn io_err(op: &'static str, path: &str, e: impl Into<io::Error>) -> UnpackError {
    UnpackError::Io {
        op,
        path: path.to_owned(),
        source: e.into(),
    }
}

fn refused(path: &str, reason: &'static str) -> UnpackError {
    UnpackError::Refused {
        path: path.to_owned(),
        reason,
    }
}

enum ExtractError {
    /// The byte stream failed (decoder, limit, transport, tar framing).
    Stream(io::Error),
    /// An entry was refused or a filesystem call failed.
    Fatal(UnpackError),
}

impl From<UnpackError> for ExtractError {
    fn from(e: UnpackError) -> Self {
        Self::Fatal(e)
    }
}

const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Writes tar entries under one root directory fd.
struct Extractor<'a> {
    root: OwnedFd,
    limits: &'a Limits,
    entries: u64,
    content_bytes: u64,
    /// The last parent directory resolved, by its cleaned components: most entries share it.
    parent_cache: Option<(Vec<Vec<u8>>, OwnedFd)>,
    /// Directory mtimes, applied at the end (creating children changes them).
    dir_times: Vec<(Vec<Vec<u8>>, u64)>,
    buf: Vec<u8>,
}

/// Splits an entry name into components, dropping `.`, empty parts and a leading `/`.
/// `..` anywhere is refused: no legitimate layer needs it.
fn clean(path: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("the name contains '..'"),
            c if c.contains(&0) => return Err("the name contains a NUL byte"),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn join(components: &[Vec<u8>]) -> PathBuf {
    let mut p = Vec::new();
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            p.push(b'/');
        }
        p.extend_from_slice(c);
    }
    if p.is_empty() {
        p.push(b'.');
    }
    PathBuf::from(OsStr::from_bytes(&p))
}

impl<'a> Extractor<'a> {
    fn open(root: &Path, limits: &'a Limits) -> Result<Self, UnpackError> {
        let root_fd = rustix::fs::open(root, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| io_err("open the snapshot root", &root.display().to_string(), e))?;
        Ok(Self {
            root: root_fd,
            limits,
            entries: 0,
            content_bytes: 0,
            parent_cache: None,
            dir_times: Vec::new(),
            buf: vec![0u8; 256 * 1024],
        })
    }

    fn extract<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<(), ExtractError> {
        let entries = archive.entries().map_err(ExtractError::Stream)?;
        for entry in entries {
            let mut entry = entry.map_err(ExtractError::Stream)?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: self.limits.max_entries,
                }
                .into());
            }
            self.entry(&mut entry)?;
        }
        self.apply_dir_times()?;
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ExtractError> {
        use tar::EntryType as T;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let comps = clean(&raw_path).map_err(|r| refused(&shown, r))?;
        let header = entry.header();
        let mode = header.mode().map_err(ExtractError::Stream)? & 0o7777;
        let uid = header.uid().map_err(ExtractError::Stream)?;
        let gid = header.gid().map_err(ExtractError::Stream)?;
        let mtime = header.mtime().map_err(ExtractError::Stream)?;
        let owner = (
            u32::try_from(uid).map_err(|_| refused(&shown, "uid out of range"))?,
            u32::try_from(gid).map_err(|_| refused(&shown, "gid out of range"))?,
        );

        let Some((name, parent_comps)) = comps.split_last() else {
            // The root itself ("./"): only a directory entry makes sense; take its mode.
            if kind == T::Directory {
                rustix::fs::fchmod(&self.root, Mode::from_raw_mode(mode))
                    .map_err(|e| io_err("chmod", &shown, e))?;
                rustix::fs::fchown(&self.root, Some(uid_of(owner.0)), Some(gid_of(owner.1)))
                    .map_err(|e| io_err("chown", &shown, e))?;
                return Ok(());
            }
            return Err(refused(&shown, "a non-directory entry names the root").into());
        };
        let name = name.clone();
        let parent_comps = parent_comps.to_vec();

        // Whiteouts act on the parent directory and never create the name they carry.
        if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            let parent = self.parent(&parent_comps, &shown)?;
            if name == OPAQUE_MARKER {
                rustix::fs::fsetxattr(&parent, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                    .map_err(|e| io_err("mark opaque", &shown, e))?;
                return Ok(());
            }
            if target.starts_with(WHITEOUT_PREFIX) {
                // Other `.wh..wh.` names are aufs bookkeeping (e.g. `.wh..wh.plnk`): skipped.
                return Ok(());
            }
            if target.is_empty() || target == b"." || target == b".." {
                return Err(refused(
                    &shown,
                    "a whiteout must name one entry, not '', '.' or '..'",
                )
                .into());
            }
            let target = OsStr::from_bytes(target);
            self.remove_existing(&parent, target, &shown)?;
            rustix::fs::mknodat(
                &parent,
                target,
                FileType::CharacterDevice,
                Mode::empty(),
                makedev(0, 0),
            )
            .map_err(|e| io_err("create the whiteout for", &shown, e))?;
            return Ok(());
        }

        let name_os = OsStr::from_bytes(&name).to_owned();
        match kind {
            T::Directory => {
                let parent = self.parent(&parent_comps, &shown)?;
                let existing = self.lstat_type(&parent, &name_os, &shown)?;
                if existing != Some(FileType::Directory) {
                    if existing.is_some() {
                        self.remove_existing(&parent, &name_os, &shown)?;
                    }
                    rustix::fs::mkdirat(&parent, &name_os, Mode::from_raw_mode(0o700))
                        .map_err(|e| io_err("create directory", &shown, e))?;
                }
                let dir = rustix::fs::openat(
                    &parent,
                    &name_os,
                    DIR_FLAGS | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(|e| io_err("open directory", &shown, e))?;
                rustix::fs::fchown(&dir, Some(uid_of(owner.0)), Some(gid_of(owner.1)))
                    .map_err(|e| io_err("chown", &shown, e))?;
                rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode))
                    .map_err(|e| io_err("chmod", &shown, e))?;
                self.apply_xattrs(entry, &dir, &shown)?;
                let mut full = parent_comps;
                full.push(name);
                self.dir_times.push((full, mtime));
            }
            T::Regular | T::Continuous => {
                let parent = self.parent(&parent_comps, &shown)?;
                self.remove_existing(&parent, &name_os, &shown)?;
                let fd = rustix::fs::openat(
                    &parent,
                    &name_os,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| io_err("create file", &shown, e))?;
                let mut file = File::from(fd);
                loop {
                    let n = entry.read(&mut self.buf).map_err(ExtractError::Stream)?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&self.buf[..n])
                        .map_err(|e| io_err("write", &shown, e))?;
                    self.content_bytes += n as u64;
                }
                rustix::fs::fchown(&file, Some(uid_of(owner.0)), Some(gid_of(owner.1)))
                    .map_err(|e| io_err("chown", &shown, e))?;
                // After chown, which clears set-id bits.
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                    .map_err(|e| io_err("chmod", &shown, e))?;
                self.apply_xattrs(entry, file.as_fd(), &shown)?;
                rustix::fs::futimens(&file, &times(mtime))
                    .map_err(|e| io_err("set times of", &shown, e))?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refused(&shown, "a symlink without a target"))?
                    .into_owned();
                if target.is_empty() || target.contains(&0) {
                    return Err(
                        refused(&shown, "a symlink with an empty target or a NUL byte").into(),
                    );
                }
                let parent = self.parent(&parent_comps, &shown)?;
                self.remove_existing(&parent, &name_os, &shown)?;
                // The target is stored as is: it is only ever resolved inside the container's
                // root, or by this module with RESOLVE_IN_ROOT.
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, &name_os)
                    .map_err(|e| io_err("create symlink", &shown, e))?;
                self.parent_cache = None;
                rustix::fs::chownat(
                    &parent,
                    &name_os,
                    Some(uid_of(owner.0)),
                    Some(gid_of(owner.1)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_err("chown", &shown, e))?;
                rustix::fs::utimensat(&parent, &name_os, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err("set times of", &shown, e))?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refused(&shown, "a hardlink without a target"))?
                    .into_owned();
                let tcomps = clean(&target).map_err(|r| refused(&shown, r))?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(refused(&shown, "a hardlink to the root").into());
                };
                let tparent_fd = rustix::fs::openat2(
                    &self.root,
                    join(tparent),
                    DIR_FLAGS,
                    Mode::empty(),
                    IN_ROOT,
                )
                .map_err(|e| io_err("resolve the hardlink target of", &shown, e))?;
                let parent = self.parent(&parent_comps, &shown)?;
                if tparent == parent_comps.as_slice() && *tname == name {
                    return Ok(()); // a link to itself: nothing to do
                }
                self.remove_existing(&parent, &name_os, &shown)?;
                // Flags 0: a symlink target is linked itself, never followed.
                rustix::fs::linkat(
                    &tparent_fd,
                    OsStr::from_bytes(tname),
                    &parent,
                    &name_os,
                    AtFlags::empty(),
                )
                .map_err(|e| io_err("create hardlink", &shown, e))?;
            }
            T::Char | T::Block | T::Fifo => {
                let file_type = match kind {
                    T::Char => FileType::CharacterDevice,
                    T::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if file_type != FileType::Fifo && !self.limits.allow_devices {
                    return Err(refused(&shown, "device nodes are not allowed in layers").into());
                }
                let major = header
                    .device_major()
                    .map_err(ExtractError::Stream)?
                    .unwrap_or(0);
                let minor = header
                    .device_minor()
                    .map_err(ExtractError::Stream)?
                    .unwrap_or(0);
                let parent = self.parent(&parent_comps, &shown)?;
                self.remove_existing(&parent, &name_os, &shown)?;
                rustix::fs::mknodat(
                    &parent,
                    &name_os,
                    file_type,
                    Mode::from_raw_mode(mode),
                    makedev(major, minor),
                )
                .map_err(|e| io_err("create node", &shown, e))?;
                rustix::fs::chownat(
                    &parent,
                    &name_os,
                    Some(uid_of(owner.0)),
                    Some(gid_of(owner.1)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_err("chown", &shown, e))?;
            }
            _ => {
                return Err(refused(
                    &shown,
                    "unsupported tar entry type (sparse, multi-volume or unknown)",
                )
                .into());
            }
        }
        Ok(())
    }

    /// The directory that holds an entry, created (0755, root) where missing, resolved inside
    /// the root: symlinks on the way are followed as if the root were `/`.
    fn parent(&mut self, comps: &[Vec<u8>], shown: &str) -> Result<OwnedFd, UnpackError> {
        if let Some((cached, fd)) = &self.parent_cache
            && cached.as_slice() == comps
        {
            return fd
                .try_clone()
                .map_err(|e| io_err("reopen the parent of", shown, e));
        }
        let fd =
            match rustix::fs::openat2(&self.root, join(comps), DIR_FLAGS, Mode::empty(), IN_ROOT) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => self.create_parents(comps, shown)?,
                Err(Errno::NOTDIR) => {
                    return Err(refused(shown, "a parent of the entry is not a directory"));
                }
                Err(Errno::XDEV) => {
                    return Err(refused(shown, "a parent of the entry crosses a mount"));
                }
                Err(e) => return Err(io_err("resolve the parent of", shown, e)),
            };
        let cached = fd
            .try_clone()
            .map_err(|e| io_err("reopen the parent of", shown, e))?;
        self.parent_cache = Some((comps.to_vec(), cached));
        Ok(fd)
    }

    fn create_parents(&mut self, comps: &[Vec<u8>], shown: &str) -> Result<OwnedFd, UnpackError> {
        let mut dir = rustix::fs::openat(&self.root, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| io_err("open the snapshot root for", shown, e))?;
        for i in 0..comps.len() {
            let prefix = join(&comps[..=i]);
            dir = match rustix::fs::openat2(&self.root, &prefix, DIR_FLAGS, Mode::empty(), IN_ROOT)
            {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    let name = OsStr::from_bytes(&comps[i]);
                    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io_err("create a parent directory of", shown, e)),
                    }
                    rustix::fs::openat2(&self.root, &prefix, DIR_FLAGS, Mode::empty(), IN_ROOT)
                        .map_err(|e| match e {
                            Errno::NOENT => {
                                refused(shown, "a parent of the entry is a dangling symlink")
                            }
                            e => io_err("open a parent directory of", shown, e),
                        })?
                }
                Err(Errno::NOTDIR) => {
                    return Err(refused(shown, "a parent of the entry is not a directory"));
                }
                Err(e) => return Err(io_err("resolve a parent of", shown, e)),
            };
        }
        Ok(dir)
    }

    fn lstat_type(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        shown: &str,
    ) -> Result<Option<FileType>, UnpackError> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io_err("stat", shown, e)),
        }
    }

    /// Removes what a later entry replaces (tar semantics: the last entry of a name wins).
    /// A non-empty directory is not replaced by a non-directory.
    fn remove_existing(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        shown: &str,
    ) -> Result<(), UnpackError> {
        match self.lstat_type(parent, name, shown)? {
            None => Ok(()),
            Some(FileType::Directory) => {
                self.parent_cache = None;
                rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(|e| match e {
                    Errno::NOTEMPTY | Errno::EXIST => {
                        refused(shown, "replaces a non-empty directory")
                    }
                    e => io_err("remove the directory replaced by", shown, e),
                })
            }
            Some(_) => {
                self.parent_cache = None;
                rustix::fs::unlinkat(parent, name, AtFlags::empty())
                    .map_err(|e| io_err("remove the file replaced by", shown, e))
            }
        }
    }

    fn apply_xattrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        fd: impl AsFd,
        shown: &str,
    ) -> Result<(), ExtractError> {
        let Some(pax) = entry.pax_extensions().map_err(ExtractError::Stream)? else {
            return Ok(());
        };
        for ext in pax {
            let ext = ext.map_err(ExtractError::Stream)?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if !(name.starts_with(b"user.") || name == b"security.capability") {
                tracing::debug!(entry = shown, xattr = %String::from_utf8_lossy(name), "xattr skipped");
                continue;
            }
            rustix::fs::fsetxattr(
                fd.as_fd(),
                OsStr::from_bytes(name),
                ext.value_bytes(),
                XattrFlags::empty(),
            )
            .map_err(|e| io_err("set an xattr on", shown, e))?;
        }
        Ok(())
    }

    fn apply_dir_times(&mut self) -> Result<(), UnpackError> {
        for (comps, mtime) in std::mem::take(&mut self.dir_times) {
            let shown = join(&comps).display().to_string();
            // NO_SYMLINKS: a directory later replaced by a symlink is simply skipped.
            let resolve = IN_ROOT | ResolveFlags::NO_SYMLINKS;
            match rustix::fs::openat2(&self.root, join(&comps), DIR_FLAGS, Mode::empty(), resolve) {
                Ok(fd) => rustix::fs::futimens(&fd, &times(mtime))
                    .map_err(|e| io_err("set times of", &shown, e))?,
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {}
                Err(e) => return Err(io_err("reopen", &shown, e)),
            }
        }
        Ok(())
    }
}

fn uid_of(raw: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(raw)
}

fn gid_of(raw: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(raw)
}

fn times(mtime: u64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}
