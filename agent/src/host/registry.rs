//! The registry client: oci-client 0.18 for the distribution protocol and its auth dance
//! (anonymous, basic, bearer tokens), with berth's own rules on top: credentials from flags/env
//! or a docker-style `config.json`, plain HTTP only for registries listed as insecure,
//! manifests capped in size and accepted only in known media types, and blobs streamed.
//!
//! Never `Client::pull()`: it holds whole layers in memory. Blob streams are checked by the
//! unpacker (digest, size, diff_id); oci-client's own end-of-stream digest check is left to
//! that (see [`RegistryClient::blob_stream`]).
//!
//! It must not: write to disk, or decide which platform to pull (image::platform does).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use crate::image::{Digest, ErrorKind, Reference};

/// Most bytes a manifest, index or image config may have.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Media types of image manifests and indexes berth accepts.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A username and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <redacted> }}",
            self.username
        )
    }
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// `host[:port]` names reached over plain HTTP (`--insecure-registry`). No other registry is.
    pub insecure: Vec<String>,
    /// Credentials from flags or the environment: used for the registry of the image pulled,
    /// before anything in `auth_file`.
    pub credentials: Option<Credentials>,
    /// A docker-style `config.json` (`auths.<registry>.auth` or `username`/`password`).
    pub auth_file: Option<PathBuf>,
    /// Pull mirrors, registry → `host[:port]` (`--registry-mirror docker.io=HOST:PORT`):
    /// everything of that registry is fetched from the mirror instead, never from the
    /// registry itself. Safe because every manifest and blob is checked against its digest;
    /// credentials and `insecure` apply to the mirror's name.
    pub mirrors: std::collections::BTreeMap<String, String>,
}

impl RegistryConfig {
    /// The host actually contacted for `registry`: its mirror, else itself.
    pub fn endpoint<'a>(&'a self, registry: &'a str) -> &'a str {
        self.mirrors.get(registry).map_or(registry, String::as_str)
    }
}

/// What can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry wants credentials, or refused the ones given.
    #[error("registry {registry} refused access to {reference}: {hint}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// What was asked for.
        reference: String,
        /// What to do about it.
        hint: &'static str,
        /// The client's error.
        #[source]
        source: OciDistributionError,
    },
    /// The manifest or blob is not in the registry.
    #[error("{reference} was not found in registry {registry}")]
    NotFound {
        /// The registry host.
        registry: String,
        /// What was asked for.
        reference: String,
        /// The client's error.
        #[source]
        source: OciDistributionError,
    },
    /// The registry could not be reached or failed.
    #[error(
        "cannot fetch {reference} from registry {registry}; is it up, and does it need --insecure-registry {registry} for plain HTTP?"
    )]
    Unavailable {
        /// The registry host.
        registry: String,
        /// What was asked for.
        reference: String,
        /// The client's error.
        #[source]
        source: OciDistributionError,
    },
    /// A manifest, index or config is bigger than [`MAX_MANIFEST_BYTES`].
    #[error("{what} of {reference} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// `manifest` or `config`.
        what: &'static str,
        /// The reference.
        reference: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// The manifest's bytes do not hash to the digest asked for.
    #[error("manifest of {reference} hashes to {actual}, not to the digest asked for")]
    DigestMismatch {
        /// The reference with the digest.
        reference: String,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The docker config file cannot be read or parsed.
    #[error("cannot read registry credentials from {path:?}")]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl RegistryError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unauthorized { .. } | Self::AuthFile { .. } => ErrorKind::InvalidInput,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::TooLarge { .. } => ErrorKind::ResourceExhausted,
            Self::DigestMismatch { .. } => ErrorKind::Internal,
        }
    }
}

/// A talked-to registry client. Cheap to clone the underlying client.
pub struct RegistryClient {
    client: oci_client::Client,
    config: RegistryConfig,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn oci_reference(config: &RegistryConfig, r: &Reference) -> oci_client::Reference {
    let mut oci = match (r.digest(), r.tag()) {
        (Some(d), _) => oci_client::Reference::with_digest(
            r.registry().into(),
            r.repository().into(),
            d.to_string(),
        ),
        (None, tag) => oci_client::Reference::with_tag(
            r.registry().into(),
            r.repository().into(),
            tag.unwrap_or(crate::image::reference::DEFAULT_TAG).into(),
        ),
    };
    if let Some(mirror) = config.mirrors.get(r.registry()) {
        oci.set_mirror_registry(mirror.clone());
    }
    oci
}

impl RegistryClient {
    /// A client; plain HTTP only for `config.insecure`.
    pub fn new(config: RegistryConfig) -> Self {
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(config.insecure.clone()),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        });
        Self { client, config }
    }

    /// The credentials for `registry`: flags/env first, then the auth file, else anonymous.
    pub fn auth_for(&self, registry: &str) -> Result<RegistryAuth, RegistryError> {
        if let Some(c) = &self.config.credentials {
            return Ok(RegistryAuth::Basic(c.username.clone(), c.password.clone()));
        }
        if let Some(path) = &self.config.auth_file
            && let Some(auth) = auth_from_docker_config(path, registry)?
        {
            return Ok(auth);
        }
        Ok(RegistryAuth::Anonymous)
    }

    fn map_err(
        &self,
        reference: &Reference,
        what: String,
        e: OciDistributionError,
    ) -> RegistryError {
        let registry = self.config.endpoint(reference.registry()).to_owned();
        let had_credentials = !matches!(self.auth_for(&registry), Ok(RegistryAuth::Anonymous));
        let not_found = |c: &OciErrorCode| {
            matches!(
                c,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound
            )
        };
        match &e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => RegistryError::Unauthorized {
                registry,
                reference: what,
                hint: if had_credentials {
                    "the credentials given were refused"
                } else {
                    "it needs credentials: pass --registry-config FILE (docker config.json) or set BERTH_REGISTRY_USERNAME and BERTH_REGISTRY_PASSWORD"
                },
                source: e,
            },
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| not_found(&x.code)) =>
            {
                RegistryError::NotFound {
                    registry,
                    reference: what,
                    source: e,
                }
            }
            OciDistributionError::ImageManifestNotFoundError(_) => RegistryError::NotFound {
                registry,
                reference: what,
                source: e,
            },
            OciDistributionError::ServerError { code: 404, .. } => RegistryError::NotFound {
                registry,
                reference: what,
                source: e,
            },
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => RegistryError::Unauthorized {
                registry,
                reference: what,
                hint: "access denied",
                source: e,
            },
            _ => RegistryError::Unavailable {
                registry,
                reference: what,
                source: e,
            },
        }
    }

    async fn authenticate(&self, reference: &Reference) -> Result<RegistryAuth, RegistryError> {
        let auth = self.auth_for(self.config.endpoint(reference.registry()))?;
        let oci_ref = oci_reference(&self.config, reference);
        self.client
            .store_auth_if_needed(oci_ref.resolve_registry(), &auth)
            .await;
        Ok(auth)
    }

    /// Fetches a manifest or index by tag or digest: the bytes and the digest they hash to.
    /// When the reference pins a digest, the bytes must hash to it. Capped at
    /// [`MAX_MANIFEST_BYTES`] (checked once received: oci-client reads the body whole).
    pub async fn manifest(&self, reference: &Reference) -> Result<(Bytes, Digest), RegistryError> {
        let auth = self.authenticate(reference).await?;
        let oci_ref = oci_reference(&self.config, reference);
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&oci_ref, &auth, MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| self.map_err(reference, reference.to_string(), e))?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::TooLarge {
                what: "manifest",
                reference: reference.to_string(),
                size: bytes.len() as u64,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let digest = Digest::of(&bytes);
        if let Some(want) = reference.digest()
            && want != &digest
        {
            return Err(RegistryError::DigestMismatch {
                reference: reference.to_string(),
                actual: digest,
            });
        }
        Ok((bytes, digest))
    }

    /// A small blob (an image config) read whole, refused when its descriptor says it is over
    /// [`MAX_MANIFEST_BYTES`]. The caller verifies the digest before using it.
    pub async fn small_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        if size > MAX_MANIFEST_BYTES as u64 {
            return Err(RegistryError::TooLarge {
                what: "config",
                reference: reference.to_string(),
                size,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let stream = self.blob_stream(reference, digest, size).await?;
        let mut stream = std::pin::pin!(stream);
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                self.map_err(
                    reference,
                    digest.to_string(),
                    OciDistributionError::IoError(e),
                )
            })?;
            if out.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(RegistryError::TooLarge {
                    what: "config",
                    reference: reference.to_string(),
                    size: (out.len() + chunk.len()) as u64,
                    limit: MAX_MANIFEST_BYTES,
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// A blob as a stream of chunks (redirects followed). The bytes are not verified here:
    /// the consumer hashes them. oci-client's end-of-stream digest error is turned into a
    /// plain end of stream, so the consumer's own check reports the mismatch with its context.
    pub async fn blob_stream(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static + use<>, RegistryError> {
        self.authenticate(reference).await?;
        let oci_ref = oci_reference(&self.config, reference);
        let desc = oci_client::manifest::OciDescriptor {
            digest: digest.to_string(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        // `Range: bytes=0-`: a registry that honours it answers 206, which oci-client streams
        // without hashing (the unpacker hashes anyway: one sha256 pass instead of two); one
        // that ignores it answers 200, which oci-client verifies at the end.
        let sized = match self
            .client
            .pull_blob_stream_partial(&oci_ref, &desc, 0, None)
            .await
            .map_err(|e| self.map_err(reference, format!("blob {digest}"), e))?
        {
            oci_client::client::BlobResponse::Full(s)
            | oci_client::client::BlobResponse::Partial(s) => s,
        };
        // take_while, not filter_map: the stream must end at that error, as polling oci-client's
        // verifying stream again after it never returns.
        Ok(sized.stream.take_while(|item| {
            let digest_error = matches!(item, Err(e) if e.get_ref().is_some_and(|inner| inner.is::<oci_client::errors::DigestError>()));
            std::future::ready(!digest_error)
        }))
    }
}

/// Looks `registry` up in a docker-style config file. Docker Hub is stored under
/// `https://index.docker.io/v1/`; other keys may carry a scheme or a path. Credential helpers
/// (`credsStore`, `credHelpers`) and `identitytoken` are not supported (docs/images.md).
pub fn auth_from_docker_config(
    path: &Path,
    registry: &str,
) -> Result<Option<RegistryAuth>, RegistryError> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
        registrytoken: Option<String>,
    }
    let file_err = |source: io::Error| RegistryError::AuthFile {
        path: path.to_owned(),
        source,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_err(e)),
    };
    let file: File = serde_json::from_slice(&bytes)
        .map_err(|e| file_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    let host_of = |key: &str| -> String {
        let k = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let host = k.split('/').next().unwrap_or(k);
        match host {
            "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
            h => h.to_owned(),
        }
    };
    let Some(entry) = file
        .auths
        .iter()
        .find(|(k, _)| host_of(k) == registry)
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    if let Some(token) = &entry.registrytoken {
        return Ok(Some(RegistryAuth::Bearer(token.clone())));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(RegistryAuth::Basic(u.clone(), p.clone())));
    }
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| file_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let text = String::from_utf8(decoded)
            .map_err(|e| file_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let Some((u, p)) = text.split_once(':') else {
            return Err(file_err(io::Error::new(
                io::ErrorKind::InvalidData,
                "auth is not base64 of user:password",
            )));
        };
        return Ok(Some(RegistryAuth::Basic(u.to_owned(), p.to_owned())));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        (dir, path)
    }

    #[test]
    fn docker_config_auth_is_base64_user_colon_password() {
        let (_d, path) = config(r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYTpzcw=="}}}"#);
        match auth_from_docker_config(&path, "127.0.0.1:5000").unwrap() {
            Some(RegistryAuth::Basic(u, p)) => {
                assert_eq!((u.as_str(), p.as_str()), ("user", "pa:ss"))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            auth_from_docker_config(&path, "other:5000")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn docker_hub_is_found_under_its_v1_url_key() {
        let (_d, path) =
            config(r#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"}}}"#);
        assert!(matches!(
            auth_from_docker_config(&path, "docker.io").unwrap(),
            Some(RegistryAuth::Basic(..))
        ));
    }

    #[test]
    fn a_missing_file_means_anonymous_and_a_broken_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            auth_from_docker_config(&dir.path().join("nope.json"), "r")
                .unwrap()
                .is_none()
        );
        let (_d, path) = config("{not json");
        let err = auth_from_docker_config(&path, "r").unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
    }

    #[test]
    fn credentials_do_not_print_the_password() {
        let c = Credentials {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
