//! The image store: pulls images from registries into `<data-dir>/images`, keeps their
//! records, hands the runtime an [`Image`] (config + snapshot dirs lowest-first, ready to be
//! overlay lower dirs), tracks use marks and removes what is no longer needed.
//!
//! ```text
//! pull(ref) ─▶ manifest (index ─▶ platform choice ─▶ manifest) ─▶ config ─▶ for each layer,
//!   ≤ max_parallel at once, unless its snapshot exists:
//!     flock ingest/<chain>.lock ─▶ stream blob ─▶ unpack::unpack_layer into tmp/snap-…/fs
//!     ─▶ layer.json ─▶ rename to snapshots/<chain>/ ─▶ fsync snapshots/
//!   ─▶ record (tags move from older records) ─▶ Image
//! ```
//!
//! Crash safety: nothing is visible in `snapshots/`, `blobs/` or `records/` before it is
//! complete and verified (rename into place); a pull killed with -9 leaves only `tmp/` work,
//! which the next [`ImageStore::open`] clears when no other pull holds the store lock.
//! Concurrent pulls of one image share each layer: the second waits on the ingest lock and
//! then finds the snapshot. Compressed layer blobs are not kept (docs/images.md): snapshots
//! are the verified result, and manifests and configs stay in `blobs/`.
//!
//! It must not: mount anything (the runtime mounts `layer_dirs()`), or choose what to keep
//! (image::gc decides).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_spec::image::ImageConfiguration;
use tokio::sync::mpsc;

use super::content::{self, ContentError, ContentStore, FileLock, Layout};
use super::registry::{RegistryClient, RegistryConfig, RegistryError};
use super::unpack::{self, Expected, Limits, TransportError, UnpackError};
use crate::image::digest::chain_ids;
use crate::image::gc::{self, PrunePlan};
use crate::image::platform::{IndexEntry, select_manifest};
use crate::image::record::{ImageUse, valid_holder};
use crate::image::{
    Digest, ErrorKind, ImageRecord, LayerRecord, Platform, Reference, ReferenceError,
};

/// How a pull runs.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to choose from an index; the host's when `None`.
    pub platform: Option<Platform>,
    /// Registry access.
    pub registry: RegistryConfig,
    /// Layers fetched at once.
    pub max_parallel: usize,
    /// Extraction limits.
    pub limits: Limits,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            platform: None,
            registry: RegistryConfig::default(),
            max_parallel: 3,
            limits: Limits::default(),
        }
    }
}

/// What a pull reports as it goes (for progress bars and logs).
#[derive(Debug, Clone)]
pub enum PullEvent {
    /// The reference resolved to this manifest with these layers (digest, compressed size).
    Resolved {
        /// The manifest's digest.
        manifest: Digest,
        /// The layers, lowest first.
        layers: Vec<(Digest, u64)>,
    },
    /// A layer's snapshot already exists.
    LayerExists {
        /// The layer's blob digest.
        digest: Digest,
    },
    /// Another pull is unpacking this layer; waiting for it.
    LayerWaiting {
        /// The layer's blob digest.
        digest: Digest,
    },
    /// Bytes of a layer received so far.
    LayerProgress {
        /// The layer's blob digest.
        digest: Digest,
        /// Bytes received so far.
        bytes: u64,
        /// The layer's size.
        total: u64,
    },
    /// A layer was verified and committed.
    LayerDone {
        /// The layer's blob digest.
        digest: Digest,
    },
}

/// Receives [`PullEvent`]s. Called from several tasks at once.
pub trait PullProgress: Send + Sync {
    /// One event.
    fn event(&self, event: PullEvent);
}

/// Ignores events.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl PullProgress for NoProgress {
    fn event(&self, _: PullEvent) {}
}

/// A pulled image, as the runtime needs it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The stored record.
    pub record: ImageRecord,
    /// The parsed image config (Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts,
    /// StopSignal under `config()`).
    pub config: ImageConfiguration,
    layer_dirs: Vec<PathBuf>,
}

impl Image {
    /// The manifest digest: what a revision pins.
    pub fn digest(&self) -> &Digest {
        &self.record.manifest_digest
    }

    /// The snapshot directories, lowest layer first: overlayfs wants them reversed in
    /// `lowerdir=` (top first).
    pub fn layer_dirs(&self) -> &[PathBuf] {
        &self.layer_dirs
    }
}

/// What `rmi` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// Only the tag was removed; other tags still name the image.
    Untagged(String),
    /// The image and its now unreferenced snapshots were deleted.
    Deleted {
        /// The image.
        image: Digest,
        /// Snapshots deleted with it.
        snapshots: usize,
    },
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Images deleted.
    pub images: Vec<Digest>,
    /// Snapshots deleted.
    pub snapshots: usize,
    /// Bytes of file content freed.
    pub bytes: u64,
}

/// Disk usage of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskUsage {
    /// Image records.
    pub images: usize,
    /// Images marked in use.
    pub images_in_use: usize,
    /// Snapshots (unpacked layers, shared between images).
    pub snapshots: usize,
    /// Bytes of file content in snapshots.
    pub snapshot_bytes: u64,
    /// Bytes of stored manifests and configs.
    pub blob_bytes: u64,
    /// Bytes a `prune --all` would free.
    pub reclaimable_bytes: u64,
}

/// What a snapshot directory records about its layer (`layer.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SnapshotMeta {
    chain_id: Digest,
    layer: LayerRecord,
    entries: u64,
}

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Talking to the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The content store failed.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// A layer failed to download, verify or unpack; nothing of it was kept.
    #[error("layer {digest} of {reference}: {source}")]
    Layer {
        /// The image.
        reference: String,
        /// The layer blob.
        digest: Digest,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// A manifest, index or config is not something berth can run.
    #[error("{what} {digest} of {reference} is refused: {reason}")]
    BadImage {
        /// `manifest`, `index` or `config`.
        what: &'static str,
        /// The image.
        reference: String,
        /// The blob.
        digest: Digest,
        /// Why.
        reason: String,
    },
    /// No manifest in the index matches the platform.
    #[error(
        "{reference} has no image for platform {wanted}; it has: {available}; choose one with --platform"
    )]
    NoPlatform {
        /// The image.
        reference: String,
        /// The platform asked for.
        wanted: Platform,
        /// The platforms offered.
        available: String,
    },
    /// The image is not in the store.
    #[error("image {reference} is not in the store; pull it first (berth pull {reference})")]
    NotFound {
        /// What was asked for.
        reference: String,
    },
    /// The name matches several images.
    #[error("{reference} matches several images; use a longer digest")]
    Ambiguous {
        /// What was asked for.
        reference: String,
    },
    /// The image is in use and `force` was not given.
    #[error("image {reference} is in use by {holders}; stop those first or pass -f")]
    InUse {
        /// The image.
        reference: String,
        /// Who holds it.
        holders: String,
    },
    /// A use-mark holder name is not valid.
    #[error("invalid use holder {holder:?}: letters, digits, '.', '_', '-' in '/'-separated parts")]
    Holder {
        /// The rejected holder.
        holder: String,
    },
    /// A stored record or snapshot file cannot be read.
    #[error("store file {path:?} is corrupt; remove it and pull again")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A file operation failed.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A background task died.
    #[error("a pull task failed unexpectedly")]
    Task(#[source] tokio::task::JoinError),
}

impl ImageError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Reference(_)
            | Self::BadImage { .. }
            | Self::NoPlatform { .. }
            | Self::Holder { .. } => ErrorKind::InvalidInput,
            Self::Registry(e) => e.kind(),
            Self::Content(e) => e.kind(),
            Self::Layer { source, .. } => source.kind(),
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Ambiguous { .. } => ErrorKind::InvalidInput,
            Self::InUse { .. } => ErrorKind::Conflict,
            Self::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull => {
                ErrorKind::ResourceExhausted
            }
            Self::Io { .. } => ErrorKind::Unavailable,
            Self::Corrupt { .. } | Self::Task(_) => ErrorKind::Internal,
        }
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_owned();
    move |source| ImageError::Io { op, path, source }
}

// ---- manifests as the registry serves them -------------------------------------------------

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: u32,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    urls: Vec<String>,
    platform: Option<Platform>,
}

enum Parsed {
    Index(Vec<RawDescriptor>),
    Manifest {
        config: RawDescriptor,
        layers: Vec<RawDescriptor>,
    },
}

fn parse_manifest(
    bytes: &[u8],
    reference: &Reference,
    digest: &Digest,
) -> Result<Parsed, ImageError> {
    let bad = |reason: String| ImageError::BadImage {
        what: "manifest",
        reference: reference.to_string(),
        digest: digest.clone(),
        reason,
    };
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
    if raw.schema_version != 2 {
        return Err(bad(format!(
            "schemaVersion {} (only 2 is supported)",
            raw.schema_version
        )));
    }
    let mt = raw.media_type.as_deref();
    match (raw.manifests, raw.config, raw.layers) {
        (Some(manifests), None, None) => {
            if mt.is_some_and(|m| !INDEX_TYPES.contains(&m)) {
                return Err(bad(format!(
                    "an index with media type {:?}",
                    mt.unwrap_or_default()
                )));
            }
            Ok(Parsed::Index(manifests))
        }
        (None, Some(config), Some(layers)) => {
            if mt.is_some_and(|m| !MANIFEST_TYPES.contains(&m)) {
                return Err(bad(format!(
                    "a manifest with media type {:?}",
                    mt.unwrap_or_default()
                )));
            }
            if !CONFIG_TYPES.contains(&config.media_type.as_str()) {
                return Err(bad(format!(
                    "config media type {:?} is not a container image",
                    config.media_type
                )));
            }
            for l in &layers {
                if !LAYER_TYPES.contains(&l.media_type.as_str()) {
                    return Err(bad(format!(
                        "layer {} has unsupported media type {:?} (non-distributable and foreign layers are refused)",
                        l.digest, l.media_type
                    )));
                }
                if !l.urls.is_empty() {
                    return Err(bad(format!("layer {} names foreign URLs", l.digest)));
                }
            }
            Ok(Parsed::Manifest { config, layers })
        }
        _ => Err(bad(
            "neither an image index nor an image manifest (or both at once)".into(),
        )),
    }
}

fn descriptor_digest(
    d: &RawDescriptor,
    reference: &Reference,
    manifest: &Digest,
) -> Result<Digest, ImageError> {
    d.digest
        .parse()
        .map_err(|e: crate::image::DigestError| ImageError::BadImage {
            what: "manifest",
            reference: reference.to_string(),
            digest: manifest.clone(),
            reason: e.to_string(),
        })
}

// ---- the store -------------------------------------------------------------------------------

/// The image store under one data dir.
#[derive(Debug, Clone)]
pub struct ImageStore {
    layout: Layout,
    content: ContentStore,
}

impl ImageStore {
    /// Opens (creating) the store under `<data_dir>/images`. When no pull is running (the
    /// store lock is free), leftovers of interrupted pulls in `tmp/` are removed.
    pub fn open(data_dir: &Path) -> Result<Self, ImageError> {
        let layout = Layout::new(data_dir);
        layout.create()?;
        let store = Self {
            content: ContentStore::new(layout.clone()),
            layout,
        };
        if let Some(_lock) = FileLock::try_acquire(&store.layout.store_lock(), true)? {
            store.clean_tmp()?;
        }
        Ok(store)
    }

    /// The store's file layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn clean_tmp(&self) -> Result<(), ImageError> {
        let tmp = self.layout.tmp();
        for entry in fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let path = entry.map_err(io_err("list", &tmp))?.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(io_err("remove", &path))?;
        }
        Ok(())
    }

    /// Pulls `reference` (by tag or digest) unless it is complete in the store already, and
    /// records it. Tags move: an older image the tag named keeps its other names, or becomes
    /// dangling (pruned by `berth image prune`).
    pub async fn pull(
        &self,
        reference: &Reference,
        options: &PullOptions,
        progress: &dyn PullProgress,
    ) -> Result<Image, ImageError> {
        let lock_path = self.layout.store_lock();
        let _shared =
            blocking(move || FileLock::acquire(&lock_path, false).map_err(ImageError::from))
                .await?;
        let client = RegistryClient::new(options.registry.clone())?;
        let wanted = options.platform.clone().unwrap_or_else(Platform::host);

        let (bytes, mut digest) = client.manifest(reference).await?;
        let mut index_digest = None;
        let mut parsed = parse_manifest(&bytes, reference, &digest)?;
        self.content.put(&digest, &bytes)?;
        if let Parsed::Index(entries) = &parsed {
            let mut candidates = Vec::new();
            for e in entries {
                if MANIFEST_TYPES.contains(&e.media_type.as_str()) {
                    candidates.push(IndexEntry {
                        digest: descriptor_digest(e, reference, &digest)?,
                        media_type: e.media_type.clone(),
                        platform: e.platform.clone(),
                    });
                }
            }
            let Some(chosen) = select_manifest(&candidates, &wanted) else {
                let available: Vec<String> = candidates
                    .iter()
                    .filter_map(|c| c.platform.as_ref().map(|p| p.to_string()))
                    .collect();
                return Err(ImageError::NoPlatform {
                    reference: reference.to_string(),
                    wanted,
                    available: if available.is_empty() {
                        "none".into()
                    } else {
                        available.join(", ")
                    },
                });
            };
            let pinned = reference.with_digest(chosen.digest.clone())?;
            let (mbytes, mdigest) = client.manifest(&pinned).await?;
            parsed = parse_manifest(&mbytes, reference, &mdigest)?;
            if let Parsed::Index(_) = parsed {
                return Err(ImageError::BadImage {
                    what: "index",
                    reference: reference.to_string(),
                    digest: mdigest,
                    reason: "an index inside an index is not supported".into(),
                });
            }
            self.content.put(&mdigest, &mbytes)?;
            index_digest = Some(std::mem::replace(&mut digest, mdigest));
        }
        let Parsed::Manifest { config, layers } = parsed else {
            return Err(ImageError::BadImage {
                what: "manifest",
                reference: reference.to_string(),
                digest,
                reason: "not an image manifest".into(),
            });
        };

        // The config: verified by the content store before it is parsed.
        let config_digest = descriptor_digest(&config, reference, &digest)?;
        let config_bytes = match self
            .content
            .get(&config_digest, super::registry::MAX_MANIFEST_BYTES as u64)
        {
            Ok(b) => b,
            Err(_) => {
                let b = client
                    .small_blob(reference, &config_digest, config.size)
                    .await?;
                self.content.put(&config_digest, &b)?;
                b
            }
        };
        let bad_config = |reason: String| ImageError::BadImage {
            what: "config",
            reference: reference.to_string(),
            digest: config_digest.clone(),
            reason,
        };
        let image_config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| bad_config(e.to_string()))?;
        if image_config.rootfs().typ() != "layers" {
            return Err(bad_config(format!(
                "rootfs type {:?} is not \"layers\"",
                image_config.rootfs().typ()
            )));
        }
        let diff_ids: Vec<Digest> = image_config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| d.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: crate::image::DigestError| bad_config(e.to_string()))?;
        if diff_ids.len() != layers.len() {
            return Err(bad_config(format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                layers.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        let mut planned = Vec::with_capacity(layers.len());
        for ((l, diff_id), chain_id) in layers.iter().zip(diff_ids).zip(chains) {
            planned.push(LayerRecord {
                digest: descriptor_digest(l, reference, &digest)?,
                media_type: l.media_type.clone(),
                size: l.size,
                diff_id,
                chain_id,
                unpacked_size: 0,
            });
        }
        progress.event(PullEvent::Resolved {
            manifest: digest.clone(),
            layers: planned.iter().map(|l| (l.digest.clone(), l.size)).collect(),
        });

        let client = Arc::new(client);
        let reference_s = reference.to_string();
        let done: Vec<LayerRecord> = futures_util::stream::iter(planned.into_iter().map(|layer| {
            let client = client.clone();
            let reference_s = reference_s.clone();
            async move {
                self.ensure_snapshot(&client, reference, layer, &options.limits, progress)
                    .await
                    .map_err(|e| match e {
                        LayerFailure::Unpack(digest, source) => ImageError::Layer {
                            reference: reference_s,
                            digest,
                            source,
                        },
                        LayerFailure::Other(e) => e,
                    })
            }
        }))
        .buffered(options.max_parallel.max(1))
        // Every layer runs to its end (committed or cleaned up) before the pull returns, so
        // a failed pull leaves no work behind in tmp/.
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;

        let record = ImageRecord {
            manifest_digest: digest.clone(),
            index_digest,
            config_digest,
            repositories: vec![reference.name()],
            tags: reference.tagged_name().into_iter().collect(),
            digest_refs: reference
                .digest()
                .map(|d| format!("{}@{d}", reference.name()))
                .into_iter()
                .collect(),
            platform: Platform {
                os: image_config.os().to_string(),
                architecture: image_config.architecture().to_string(),
                variant: image_config.variant().clone(),
            },
            created: image_config.created().clone(),
            pulled_at: unix_now(),
            layers: done,
        };
        let record = self.commit_record(record)?;
        self.image_from(record, image_config)
    }

    /// The local image when the store has it (by digest, or the tag as last pulled), else a
    /// pull: what `berth run IMAGE` does.
    pub async fn ensure(
        &self,
        reference: &Reference,
        options: &PullOptions,
        progress: &dyn PullProgress,
    ) -> Result<Image, ImageError> {
        match self.get(&reference.to_string()) {
            Err(ImageError::NotFound { .. }) => self.pull(reference, options, progress).await,
            other => other,
        }
    }

    /// Makes sure the snapshot of `layer` exists, downloading and unpacking it if not.
    async fn ensure_snapshot(
        &self,
        client: &RegistryClient,
        reference: &Reference,
        mut layer: LayerRecord,
        limits: &Limits,
        progress: &dyn PullProgress,
    ) -> Result<LayerRecord, LayerFailure> {
        if let Some(meta) = self.snapshot_meta(&layer.chain_id)? {
            progress.event(PullEvent::LayerExists {
                digest: layer.digest.clone(),
            });
            layer.unpacked_size = meta.layer.unpacked_size;
            return Ok(layer);
        }
        let lock_path = self.layout.ingest_lock(&layer.chain_id);
        let lock = match FileLock::try_acquire(&lock_path, true)? {
            Some(l) => l,
            None => {
                progress.event(PullEvent::LayerWaiting {
                    digest: layer.digest.clone(),
                });
                blocking(move || FileLock::acquire(&lock_path, true).map_err(ImageError::from))
                    .await?
            }
        };
        if let Some(meta) = self.snapshot_meta(&layer.chain_id)? {
            progress.event(PullEvent::LayerExists {
                digest: layer.digest.clone(),
            });
            layer.unpacked_size = meta.layer.unpacked_size;
            return Ok(layer);
        }

        let stream = client
            .blob_stream(reference, &layer.digest, layer.size)
            .await
            .map_err(ImageError::from)?;
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(64);
        let expected = Expected {
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: layer.diff_id.clone(),
        };
        let work = self.layout.tmp_path("snap");
        let target = self.layout.snapshot(&layer.chain_id);
        let limits = limits.clone();
        let meta_layer = layer.clone();
        let unpacker = tokio::task::spawn_blocking(move || {
            let _lock = lock; // held until the snapshot is committed or abandoned
            let result = unpack_into(
                ChannelReader::new(rx),
                &expected,
                &work,
                &target,
                &limits,
                meta_layer,
            );
            if result.is_err() {
                let _ = fs::remove_dir_all(&work);
            }
            result
        });

        // Feed the unpacker; stop early when it has given up (the channel closes).
        let mut stream = std::pin::pin!(stream);
        let mut received = 0u64;
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if let Ok(chunk) = &item {
                received += chunk.len() as u64;
                progress.event(PullEvent::LayerProgress {
                    digest: layer.digest.clone(),
                    bytes: received,
                    total: layer.size,
                });
            }
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
        drop(tx);
        match unpacker.await.map_err(ImageError::Task)? {
            Ok(unpacked_size) => {
                progress.event(PullEvent::LayerDone {
                    digest: layer.digest.clone(),
                });
                layer.unpacked_size = unpacked_size;
                Ok(layer)
            }
            Err(UnpackInto::Unpack(e)) => Err(LayerFailure::Unpack(layer.digest, e)),
            Err(UnpackInto::Store(e)) => Err(LayerFailure::Other(*e)),
        }
    }

    fn snapshot_meta(&self, chain_id: &Digest) -> Result<Option<SnapshotMeta>, ImageError> {
        let path = self.layout.snapshot(chain_id).join("layer.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| ImageError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Writes the record, merging names into an existing record of the same manifest and
    /// moving its tags off any other record. Serialised by the records lock.
    fn commit_record(&self, mut record: ImageRecord) -> Result<ImageRecord, ImageError> {
        let _lock = FileLock::acquire(&self.layout.root().join("records.lock"), true)?;
        for mut other in self.list()? {
            if other.manifest_digest == record.manifest_digest {
                for r in other.repositories {
                    if !record.repositories.contains(&r) {
                        record.repositories.push(r);
                    }
                }
                for t in other.tags {
                    if !record.tags.contains(&t) {
                        record.tags.push(t);
                    }
                }
                for d in other.digest_refs {
                    if !record.digest_refs.contains(&d) {
                        record.digest_refs.push(d);
                    }
                }
                if record.index_digest.is_none() {
                    record.index_digest = other.index_digest;
                }
                continue;
            }
            let before = other.tags.len();
            other.tags.retain(|t| !record.tags.contains(t));
            if other.tags.len() != before {
                self.write_record(&other)?;
            }
        }
        record.repositories.sort();
        record.tags.sort();
        record.digest_refs.sort();
        self.write_record(&record)?;
        Ok(record)
    }

    fn write_record(&self, record: &ImageRecord) -> Result<(), ImageError> {
        let path = self.layout.record(&record.manifest_digest);
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| ImageError::Corrupt {
            path: path.clone(),
            source,
        })?;
        content::write_atomic(&self.layout.tmp(), &path, &bytes)?;
        Ok(())
    }

    fn image_from(
        &self,
        record: ImageRecord,
        config: ImageConfiguration,
    ) -> Result<Image, ImageError> {
        let mut layer_dirs = Vec::with_capacity(record.layers.len());
        for l in &record.layers {
            let dir = self.layout.snapshot(&l.chain_id).join("fs");
            if !dir.is_dir() {
                return Err(ImageError::NotFound {
                    reference: format!(
                        "{} (snapshot {} is missing)",
                        record.manifest_digest, l.chain_id
                    ),
                });
            }
            layer_dirs.push(dir);
        }
        Ok(Image {
            record,
            config,
            layer_dirs,
        })
    }

    /// Every image record, sorted by manifest digest.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let mut out = Vec::new();
        for digest in content::list_hex_names(&self.layout.records(), ".json")? {
            let path = self.layout.record(&digest);
            match fs::read(&path) {
                Ok(bytes) => out.push(
                    serde_json::from_slice(&bytes)
                        .map_err(|source| ImageError::Corrupt { path, source })?,
                ),
                // Removed since the listing: skip.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("read", &path)(e)),
            }
        }
        Ok(out)
    }

    /// Finds a record by name (`busybox`, `reg/app:1`), `name@sha256:…`, a manifest or config
    /// digest, or a unique hex prefix of at least 12 characters.
    pub fn find(&self, what: &str) -> Result<ImageRecord, ImageError> {
        let records = self.list()?;
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        if hex.len() >= 12 && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&ImageRecord> = records
                .iter()
                .filter(|r| {
                    r.manifest_digest.hex().starts_with(hex)
                        || r.config_digest.hex().starts_with(hex)
                })
                .collect();
            return match hits.as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err(ImageError::NotFound {
                    reference: what.into(),
                }),
                _ => Err(ImageError::Ambiguous {
                    reference: what.into(),
                }),
            };
        }
        let reference: Reference = what.parse()?;
        let hit = match (reference.digest(), reference.tagged_name()) {
            (Some(d), _) => records
                .into_iter()
                .find(|r| &r.manifest_digest == d || r.index_digest.as_ref() == Some(d)),
            (None, Some(tagged)) => records.into_iter().find(|r| r.tags.contains(&tagged)),
            (None, None) => None,
        };
        hit.ok_or_else(|| ImageError::NotFound {
            reference: reference.to_string(),
        })
    }

    /// The image for a name or digest, with its config and snapshot dirs.
    pub fn get(&self, what: &str) -> Result<Image, ImageError> {
        let record = self.find(what)?;
        let bytes = self.content.get(
            &record.config_digest,
            super::registry::MAX_MANIFEST_BYTES as u64,
        )?;
        let path = self.layout.blob(&record.config_digest);
        let config = serde_json::from_slice(&bytes)
            .map_err(|source| ImageError::Corrupt { path, source })?;
        self.image_from(record, config)
    }

    /// Marks `image` as needed by `holder` (e.g. `container/<id>`, `revision/<app>/<n>`),
    /// replacing the holder's previous mark.
    pub fn mark_in_use(&self, holder: &str, image: &Digest) -> Result<(), ImageError> {
        let path = self.use_path(holder)?;
        let mark = ImageUse {
            holder: holder.into(),
            image: image.clone(),
        };
        let bytes = serde_json::to_vec(&mark).map_err(|source| ImageError::Corrupt {
            path: path.clone(),
            source,
        })?;
        content::write_atomic(&self.layout.tmp(), &path, &bytes)?;
        Ok(())
    }

    /// Drops `holder`'s mark; a missing one is fine.
    pub fn release(&self, holder: &str) -> Result<(), ImageError> {
        let path = self.use_path(holder)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    fn use_path(&self, holder: &str) -> Result<PathBuf, ImageError> {
        if !valid_holder(holder) {
            return Err(ImageError::Holder {
                holder: holder.into(),
            });
        }
        // '/' is not a file-name character; '+' is not a holder character, so this is 1:1.
        Ok(self
            .layout
            .uses()
            .join(format!("{}.json", holder.replace('/', "+"))))
    }

    /// Every use mark.
    pub fn uses(&self) -> Result<Vec<ImageUse>, ImageError> {
        let dir = self.layout.uses();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let path = entry.map_err(io_err("list", &dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match fs::read(&path) {
                Ok(bytes) => out.push(
                    serde_json::from_slice(&bytes)
                        .map_err(|source| ImageError::Corrupt { path, source })?,
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("read", &path)(e)),
            }
        }
        out.sort_by(|a: &ImageUse, b| a.holder.cmp(&b.holder));
        Ok(out)
    }

    /// `berth rmi`: removes a tag; when it was the image's last name (or a digest was given),
    /// deletes the image and the snapshots no other image uses. Refused while the image is in
    /// use unless `force`.
    pub fn remove(&self, what: &str, force: bool) -> Result<Removed, ImageError> {
        let _lock = FileLock::acquire(&self.layout.store_lock(), true)?;
        let _records = FileLock::acquire(&self.layout.root().join("records.lock"), true)?;
        let mut record = self.find(what)?;
        let tag = what
            .parse::<Reference>()
            .ok()
            .filter(|r| r.digest().is_none())
            .and_then(|r| r.tagged_name());
        if let Some(tag) = tag.filter(|t| record.tags.contains(t) && record.tags.len() > 1) {
            record.tags.retain(|t| t != &tag);
            self.write_record(&record)?;
            return Ok(Removed::Untagged(tag));
        }
        let holders: Vec<String> = self
            .uses()?
            .into_iter()
            .filter(|u| u.image == record.manifest_digest)
            .map(|u| u.holder)
            .collect();
        if !holders.is_empty() && !force {
            return Err(ImageError::InUse {
                reference: what.into(),
                holders: holders.join(", "),
            });
        }
        let others: Vec<ImageRecord> = self
            .list()?
            .into_iter()
            .filter(|r| r.manifest_digest != record.manifest_digest)
            .collect();
        let kept: Vec<&ImageRecord> = others.iter().collect();
        let mine: Vec<Digest> = record.chain_ids().cloned().collect();
        let snapshots = gc::unreferenced_snapshots(&kept, &mine);
        self.delete_image(&record, &others)?;
        for s in &snapshots {
            self.delete_snapshot(s)?;
        }
        Ok(Removed::Deleted {
            image: record.manifest_digest,
            snapshots: snapshots.len(),
        })
    }

    fn delete_image(&self, record: &ImageRecord, others: &[ImageRecord]) -> Result<(), ImageError> {
        let path = self.layout.record(&record.manifest_digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", &path)(e));
            }
            _ => {}
        }
        let shared = |d: &Digest| {
            others.iter().any(|o| {
                &o.manifest_digest == d
                    || &o.config_digest == d
                    || o.index_digest.as_ref() == Some(d)
            })
        };
        for d in [
            Some(&record.manifest_digest),
            Some(&record.config_digest),
            record.index_digest.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if !shared(d) {
                self.content.remove(d)?;
            }
        }
        Ok(())
    }

    fn delete_snapshot(&self, chain_id: &Digest) -> Result<u64, ImageError> {
        let size = self
            .snapshot_meta(chain_id)
            .ok()
            .flatten()
            .map_or(0, |m| m.layer.unpacked_size);
        let dir = self.layout.snapshot(chain_id);
        let doomed = self.layout.tmp_path("gone");
        // Rename first, so a crash never leaves a half-deleted snapshot under its name.
        match fs::rename(&dir, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("move out", &dir)(e)),
        }
        content::sync_parent(&dir)?;
        fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))?;
        Ok(size)
    }

    /// The snapshots committed on disk.
    pub fn snapshots(&self) -> Result<Vec<Digest>, ImageError> {
        Ok(content::list_hex_names(&self.layout.snapshots(), "")?)
    }

    /// What a prune would remove (see image::gc for the rule).
    pub fn prune_plan(&self, all: bool) -> Result<PrunePlan, ImageError> {
        Ok(gc::prune_plan(
            &self.list()?,
            &self.uses()?,
            &self.snapshots()?,
            all,
        ))
    }

    /// `berth image prune [--all]`: waits for running pulls, then removes what
    /// [`gc::prune_plan`] decides and the leftovers in `tmp/`.
    pub fn prune(&self, all: bool) -> Result<PruneReport, ImageError> {
        let _lock = FileLock::acquire(&self.layout.store_lock(), true)?;
        let _records = FileLock::acquire(&self.layout.root().join("records.lock"), true)?;
        let records = self.list()?;
        let plan = gc::prune_plan(&records, &self.uses()?, &self.snapshots()?, all);
        let others: Vec<ImageRecord> = records
            .iter()
            .filter(|r| !plan.images.contains(&r.manifest_digest))
            .cloned()
            .collect();
        for r in records
            .iter()
            .filter(|r| plan.images.contains(&r.manifest_digest))
        {
            self.delete_image(r, &others)?;
        }
        let mut bytes = 0;
        for s in &plan.snapshots {
            bytes += self.delete_snapshot(s)?;
        }
        self.clean_tmp()?;
        Ok(PruneReport {
            images: plan.images,
            snapshots: plan.snapshots.len(),
            bytes,
        })
    }

    /// Disk usage of records, snapshots and blobs.
    pub fn disk_usage(&self) -> Result<DiskUsage, ImageError> {
        let records = self.list()?;
        let uses = self.uses()?;
        let snapshots = self.snapshots()?;
        let mut snapshot_bytes = 0;
        let mut sizes = std::collections::HashMap::new();
        for s in &snapshots {
            let size = self.snapshot_meta(s)?.map_or(0, |m| m.layer.unpacked_size);
            snapshot_bytes += size;
            sizes.insert(s.clone(), size);
        }
        let mut blob_bytes = 0;
        for b in self.content.list()? {
            blob_bytes += fs::metadata(self.layout.blob(&b)).map_or(0, |m| m.len());
        }
        let plan = gc::prune_plan(&records, &uses, &snapshots, true);
        Ok(DiskUsage {
            images: records.len(),
            images_in_use: records
                .iter()
                .filter(|r| gc::in_use(&uses, &r.manifest_digest))
                .count(),
            snapshots: snapshots.len(),
            snapshot_bytes,
            blob_bytes,
            reclaimable_bytes: plan
                .snapshots
                .iter()
                .map(|s| sizes.get(s).copied().unwrap_or(0))
                .sum(),
        })
    }
}

enum LayerFailure {
    Unpack(Digest, UnpackError),
    Other(ImageError),
}

impl From<ImageError> for LayerFailure {
    fn from(e: ImageError) -> Self {
        Self::Other(e)
    }
}

impl From<ContentError> for LayerFailure {
    fn from(e: ContentError) -> Self {
        Self::Other(e.into())
    }
}

enum UnpackInto {
    Unpack(UnpackError),
    Store(Box<ImageError>),
}

/// Unpacks into `work/fs`, writes `work/layer.json`, renames `work` to `target`. Returns the
/// bytes of file content.
fn unpack_into(
    raw: impl Read,
    expected: &Expected,
    work: &Path,
    target: &Path,
    limits: &Limits,
    mut layer: LayerRecord,
) -> Result<u64, UnpackInto> {
    let store = |e: ImageError| UnpackInto::Store(Box::new(e));
    let fs_dir = work.join("fs");
    fs::create_dir(work).map_err(|e| store(io_err("create", work)(e)))?;
    fs::create_dir(&fs_dir).map_err(|e| store(io_err("create", &fs_dir)(e)))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fs_dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| store(io_err("chmod", &fs_dir)(e)))?;
    }
    let unpacked =
        unpack::unpack_layer(raw, expected, &fs_dir, limits).map_err(UnpackInto::Unpack)?;
    layer.unpacked_size = unpacked.content_bytes;
    let meta = SnapshotMeta {
        chain_id: layer.chain_id.clone(),
        layer,
        entries: unpacked.entries,
    };
    let meta_path = work.join("layer.json");
    let bytes = serde_json::to_vec_pretty(&meta).map_err(|source| {
        store(ImageError::Corrupt {
            path: meta_path.clone(),
            source,
        })
    })?;
    fs::write(&meta_path, bytes).map_err(|e| store(io_err("write", &meta_path)(e)))?;
    fs::File::open(&meta_path)
        .and_then(|f| f.sync_all())
        .map_err(|e| store(io_err("fsync", &meta_path)(e)))?;
    fs::rename(work, target).map_err(|e| store(io_err("commit the snapshot to", target)(e)))?;
    content::sync_parent(target).map_err(|e| store(e.into()))?;
    Ok(meta.layer.unpacked_size)
}

/// A blocking reader over chunks sent from the async download.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(io::Error::other(TransportError(e))),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ImageError::Task)?
}

#[allow(clippy::disallowed_methods)] // the record's pull time is wall-clock by definition
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(json: &str) -> Result<Parsed, ImageError> {
        let r: Reference = "reg.example/app:1".parse().unwrap();
        parse_manifest(json.as_bytes(), &r, &Digest::of(json.as_bytes()))
    }

    fn manifest(config_type: &str, layer_type: &str, extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"{config_type}","digest":"{D}","size":2}},
            "layers":[{{"mediaType":"{layer_type}","digest":"{D}","size":2{extra}}}]}}"#
        )
    }

    #[test]
    fn accepts_oci_and_docker_schema2_manifests_and_indexes() {
        let oci = manifest(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "",
        );
        assert!(matches!(parse(&oci), Ok(Parsed::Manifest { .. })));
        let docker = manifest(
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "",
        )
        .replace(
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        );
        assert!(matches!(parse(&docker), Ok(Parsed::Manifest { .. })));
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests":[{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{D}","size":1,
            "platform":{{"architecture":"arm","os":"linux","variant":"v7","os.features":[]}}}}]}}"#
        );
        match parse(&list) {
            Ok(Parsed::Index(entries)) => {
                assert_eq!(
                    entries[0].platform.as_ref().unwrap().to_string(),
                    "linux/arm/v7"
                )
            }
            _ => panic!("list not parsed"),
        }
    }

    #[test]
    fn refuses_confusing_or_foreign_manifests() {
        let cases = [
            // both an index and a manifest (CVE-2021-41190)
            format!(
                r#"{{"schemaVersion":2,"manifests":[],"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":1}},"layers":[]}}"#
            ),
            // schema 1
            r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#.to_string(),
            // an artifact, not a container image
            manifest(
                "application/vnd.cncf.helm.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar",
                "",
            ),
            // foreign / non-distributable layers
            manifest(
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                "",
            ),
            manifest(
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
                r#","urls":["http://169.254.169.254/x"]"#,
            ),
            // a manifest body under an index media type
            manifest(
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar",
                "",
            )
            .replace("image.manifest.v1+json", "image.index.v1+json"),
            "not json".to_string(),
        ];
        for c in &cases {
            let err = parse(c).err().unwrap_or_else(|| panic!("accepted: {c}"));
            assert!(matches!(err, ImageError::BadImage { .. }), "{err:?}");
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
        }
    }
}
