//! The registry client: berth's own HTTP requests (reqwest) for the auth dance (anonymous,
//! basic, bearer tokens from the realm a `/v2/` challenge names), manifests and blobs; from
//! oci-client only its types (`RegistryAuth`, references). berth's rules:
//! credentials from flags/env or a docker-style `config.json`; plain HTTP only for registries
//! listed as insecure; manifests capped in size *while they are read* (Content-Length first,
//! then a running count), so a hostile registry cannot make the agent buffer more than the cap;
//! redirects never to link-local addresses (cloud metadata services) nor from https down to
//! plain http; transient failures (connect errors, 5xx, 408, 429 with `Retry-After`, a body
//! cut mid-way) retried with exponential backoff and jitter, a bounded number of times, a cut
//! blob resumed with a `Range` request; permanent ones (401/403/404) never retried.
//!
//! Why not oci-client's requests: `pull_manifest_raw` reads the whole body before berth can
//! look at its size, its reqwest client follows any redirect (also for the token realm, with
//! the credentials), and it does not retry.
//!
//! Blob bytes are not verified here: the consumer hashes them (digest, size, diff_id).
//!
//! It must not: write to disk, or decide which platform to pull (image::platform does).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use oci_client::secrets::RegistryAuth;

use crate::image::{Digest, ErrorKind, Reference};

/// Most bytes a manifest, index or image config may have.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// The longest `Retry-After` honoured; a registry asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 10;

/// A blob body that delivered this many bytes since its last failure resets the failure count,
/// so a long download survives a few cuts spread over its length; a registry cutting every
/// few bytes still runs out of attempts.
const PROGRESS_RESETS_FAILURES: u64 = 1 << 20;

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

/// How transient failures are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (1: never retry).
    pub attempts: u32,
    /// The delay before the first retry; it doubles with each further one.
    pub base_delay: Duration,
    /// The longest delay between two attempts (before jitter).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 250 ms doubling up to 8 s: about 2-4 s of waiting before a registry that
    /// stays down is reported.
    fn default() -> Self {
        Self {
            attempts: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry `n` (0: the first retry): `base × 2^n`, capped at `max_delay`,
    /// with "equal jitter" (half fixed, half random from `random` in [0, 1)) so clients that
    /// failed together do not come back together.
    pub fn delay(&self, n: u32, random: f64) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        let full = self.base_delay.saturating_mul(factor).min(self.max_delay);
        full.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0))
    }
}

/// A random number in [0, 1) for jitter; std's hasher keys are random per instance, which is
/// enough here (no new dependency for it).
fn jitter() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(0u8);
    (bits >> 11) as f64 / (1u64 << 53) as f64
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
    pub mirrors: BTreeMap<String, String>,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// The slowest body berth waits for.
    pub min_speed: MinSpeed,
}

/// The slowest transfer berth waits for (like curl's `--speed-limit`/`--speed-time`): until a
/// body ends, at least `bytes` must arrive in every `window`. A body that trickles slower (a
/// hostile or broken registry sending 1 byte a second) is cut and counts as a transient
/// failure: retried, and for blobs resumed, within the retry policy. Without it, a read
/// timeout never fires as long as some byte comes, and one pull could take days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinSpeed {
    /// Bytes that must arrive in each window.
    pub bytes: u64,
    /// The window.
    pub window: Duration,
}

impl Default for MinSpeed {
    /// 32 KiB in 30 s (about 1 KiB/s): any working link passes, a trickle is cut in 30 s.
    fn default() -> Self {
        Self {
            bytes: 32 << 10,
            window: Duration::from_secs(30),
        }
    }
}

/// Measures one body against [`MinSpeed`]: the deadline by which the current window's bytes
/// must have arrived.
struct SpeedMeter {
    min: MinSpeed,
    start: tokio::time::Instant,
    got: u64,
}

impl SpeedMeter {
    fn new(min: MinSpeed) -> Self {
        Self {
            min,
            start: tokio::time::Instant::now(),
            got: 0,
        }
    }

    fn deadline(&self) -> tokio::time::Instant {
        self.start + self.min.window
    }

    fn add(&mut self, n: usize) {
        self.got += n as u64;
        if self.got >= self.min.bytes {
            self.start = tokio::time::Instant::now();
            self.got = 0;
        }
    }

    fn too_slow(&self, url: &str) -> FetchError {
        FetchError::TooSlow {
            url: url.to_owned(),
            bytes: self.got,
            min: self.min,
        }
    }
}

impl RegistryConfig {
    /// The host actually contacted for `registry`: its mirror, else itself.
    pub fn endpoint<'a>(&'a self, registry: &'a str) -> &'a str {
        self.mirrors.get(registry).map_or(registry, String::as_str)
    }
}

/// What one HTTP exchange with a registry ran into: the cause inside a [`RegistryError`].
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer: connect error, timeout, reset, a refused redirect.
    #[error("request to {url} failed")]
    Request {
        /// The URL asked for.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// An answer with an error status.
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        /// The URL asked for.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body (the registry's error envelope).
        body: String,
        /// What `Retry-After` asked for, if anything.
        retry_after: Option<Duration>,
    },
    /// The body ended before the size the manifest gave.
    #[error("body of {url} ended at byte {at} of {size}")]
    Truncated {
        /// The URL asked for.
        url: String,
        /// Bytes received.
        at: u64,
        /// Bytes expected.
        size: u64,
    },
    /// A range request was answered with another range.
    #[error("{url} answered a request for bytes {from}- with Content-Range {content_range:?}")]
    Range {
        /// The URL asked for.
        url: String,
        /// The first byte asked for.
        from: u64,
        /// What the registry said it sent.
        content_range: String,
    },
    /// The token service answered something that is not a token.
    #[error("the token service at {url} answered without a token")]
    Token {
        /// The realm asked.
        url: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The registry names a token realm berth does not go to.
    #[error("token realm {realm:?} refused: {reason}")]
    Realm {
        /// The realm as the registry gave it.
        realm: String,
        /// Why.
        reason: &'static str,
    },
    /// The body arrives slower than [`MinSpeed`].
    #[error("{url} sent only {bytes} bytes in {window:?}, under the minimum of {need} bytes; the registry or the network is too slow", window = .min.window, need = .min.bytes)]
    TooSlow {
        /// The URL asked for.
        url: String,
        /// Bytes received in the last window.
        bytes: u64,
        /// The speed asked for.
        min: MinSpeed,
    },
    /// The body is over the cap (manifests and configs).
    #[error("{url} is over {limit} bytes (at least {size})")]
    TooLarge {
        /// The URL asked for.
        url: String,
        /// Its size, or the bytes read when the cap was hit.
        size: u64,
        /// The cap.
        limit: usize,
    },
}

impl FetchError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Status { status: 404, .. } => ErrorKind::NotFound,
            Self::Status {
                status: 401 | 403, ..
            }
            | Self::Realm { .. } => ErrorKind::InvalidInput,
            Self::TooLarge { .. } => ErrorKind::ResourceExhausted,
            Self::Request { source, .. } if redirect_refusal(source).is_some() => {
                ErrorKind::InvalidInput
            }
            _ if self.transient() => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }

    /// Whether another attempt may succeed.
    fn transient(&self) -> bool {
        match self {
            Self::Request { source, .. } => {
                !source.is_redirect() && !source.is_builder() && redirect_refusal(source).is_none()
            }
            Self::Status { status, .. } => {
                matches!(status, 408 | 429) || (*status >= 500 && !matches!(status, 501 | 505))
            }
            Self::Truncated { .. } | Self::TooSlow { .. } => true,
            Self::Range { .. }
            | Self::Token { .. }
            | Self::Realm { .. }
            | Self::TooLarge { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A redirect berth will not follow.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redirect to {target} refused: {reason}")]
pub struct RedirectRefused {
    /// Where the registry pointed.
    pub target: String,
    /// Why not.
    pub reason: &'static str,
}

fn redirect_refusal(e: &reqwest::Error) -> Option<RedirectRefused> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<RedirectRefused>() {
            return Some(r.clone());
        }
        cause = c.source();
    }
    None
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
        /// What happened.
        #[source]
        source: Box<FetchError>,
    },
    /// The manifest or blob is not in the registry.
    #[error("{reference} was not found in registry {registry}")]
    NotFound {
        /// The registry host.
        registry: String,
        /// What was asked for.
        reference: String,
        /// What happened.
        #[source]
        source: Box<FetchError>,
    },
    /// The registry could not be reached or failed, also after retries.
    #[error(
        "cannot fetch {reference} from registry {registry} ({attempts} attempts); is it up, and does it need --insecure-registry {registry} for plain HTTP?"
    )]
    Unavailable {
        /// The registry host.
        registry: String,
        /// What was asked for.
        reference: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        #[source]
        source: Box<FetchError>,
    },
    /// The registry redirected somewhere berth does not go.
    #[error("registry {registry} redirected {reference} to {target}, refused: {reason}")]
    Redirect {
        /// The registry host.
        registry: String,
        /// What was asked for.
        reference: String,
        /// Where it pointed.
        target: String,
        /// Why that is refused.
        reason: &'static str,
    },
    /// A manifest, index or config is bigger than [`MAX_MANIFEST_BYTES`].
    #[error("{what} of {reference} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// `manifest` or `config`.
        what: &'static str,
        /// The reference.
        reference: String,
        /// Its size (or the bytes read when the limit was hit).
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
    /// The HTTP client cannot be built (TLS setup).
    #[error("cannot set up the registry HTTP client")]
    Client(#[source] reqwest::Error),
}

impl RegistryError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unauthorized { .. } | Self::AuthFile { .. } | Self::Redirect { .. } => {
                ErrorKind::InvalidInput
            }
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::TooLarge { .. } => ErrorKind::ResourceExhausted,
            Self::DigestMismatch { .. } | Self::Client(_) => ErrorKind::Internal,
        }
    }
}

/// Why following a redirect to `next` (after `previous`, the original request first) is
/// refused, or `None` when it may be followed. Pure; the HTTP client's redirect policy.
pub fn refuse_redirect(previous: &[reqwest::Url], next: &reqwest::Url) -> Option<&'static str> {
    if previous.len() >= MAX_REDIRECTS {
        return Some("too many redirects");
    }
    match next.scheme() {
        "https" => {}
        "http" if previous.iter().any(|u| u.scheme() == "https") => {
            return Some("it leaves https for plain http");
        }
        "http" => {}
        _ => return Some("not an http(s) URL"),
    }
    let host = next.host_str().unwrap_or("");
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if literal.parse::<IpAddr>().is_ok_and(is_link_local) {
        return Some("a link-local address (where cloud metadata services answer)");
    }
    if matches!(
        host.trim_end_matches('.').to_ascii_lowercase().as_str(),
        "metadata" | "metadata.google.internal" | "instance-data" | "instance-data.ec2.internal"
    ) {
        return Some("a cloud metadata service");
    }
    None
}

/// 169.254.0.0/16, fe80::/10, and IPv4-mapped forms of the former.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// `realm` and `service` of a `Bearer` challenge in a `WWW-Authenticate` value.
fn bearer_challenge(header: &str) -> Option<(String, Option<String>)> {
    http_auth::parser::ChallengeParser::new(header)
        .filter_map(Result::ok)
        .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))
        .and_then(|c| {
            let param = |name: &str| {
                c.params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_unescaped())
            };
            Some((param("realm")?, param("service")))
        })
}

/// Name resolution that drops link-local addresses, so no name (a redirect target or a
/// registry) leads to a metadata service; a name with nothing else is an error.
struct NoLinkLocal;

impl reqwest::dns::Resolve for NoLinkLocal {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> =
                all.into_iter().filter(|a| !is_link_local(a.ip())).collect();
            if kept.is_empty() {
                return Err(Box::new(RedirectRefused {
                    target: host,
                    reason: "the name resolves only to link-local addresses",
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The `Authorization` to send.
#[derive(Clone)]
enum Authorization {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

impl Authorization {
    fn apply(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Self::Anonymous => rb,
            Self::Basic(u, p) => rb.basic_auth(u, Some(p)),
            Self::Bearer(t) => rb.bearer_auth(t),
        }
    }
}

/// Counts failures of one request and sleeps between attempts.
struct Backoff {
    policy: RetryPolicy,
    failures: u32,
}

impl Backoff {
    fn new(policy: &RetryPolicy) -> Self {
        Self {
            policy: policy.clone(),
            failures: 0,
        }
    }

    /// Records a failure; sleeps and returns true when another attempt is due.
    async fn retry(&mut self, error: &FetchError) -> bool {
        self.failures += 1;
        if !error.transient() || self.failures >= self.policy.attempts.max(1) {
            return false;
        }
        let delay = match error.retry_after() {
            Some(d) => d.min(MAX_RETRY_AFTER),
            None => self.policy.delay(self.failures - 1, jitter()),
        };
        tracing::warn!(error = %error, attempt = self.failures, ?delay, "registry request failed; retrying");
        tokio::time::sleep(delay).await;
        true
    }

    fn attempts(&self) -> u32 {
        self.failures.max(1)
    }
}

/// Who is asked for what: the context of errors.
#[derive(Clone)]
struct Ctx {
    registry: String,
    what: String,
    had_credentials: bool,
}

impl Ctx {
    fn error(&self, e: FetchError, attempts: u32) -> RegistryError {
        let registry = self.registry.clone();
        let reference = self.what.clone();
        if let FetchError::Request { source, .. } = &e
            && let Some(r) = redirect_refusal(source)
        {
            return RegistryError::Redirect {
                registry,
                reference,
                target: r.target,
                reason: r.reason,
            };
        }
        match &e {
            FetchError::Realm { realm, reason } => RegistryError::Redirect {
                registry,
                reference,
                target: realm.clone(),
                reason,
            },
            FetchError::TooLarge { size, limit, .. } => RegistryError::TooLarge {
                what: "manifest",
                reference,
                size: *size,
                limit: *limit,
            },
            FetchError::Status { status: 401, .. } => RegistryError::Unauthorized {
                registry,
                reference,
                hint: if self.had_credentials {
                    "the credentials given were refused"
                } else {
                    "it needs credentials: pass --registry-config FILE (docker config.json) or set BERTH_REGISTRY_USERNAME and BERTH_REGISTRY_PASSWORD"
                },
                source: Box::new(e),
            },
            FetchError::Status { status: 403, .. } => RegistryError::Unauthorized {
                registry,
                reference,
                hint: "access denied",
                source: Box::new(e),
            },
            FetchError::Status { status: 404, .. } => RegistryError::NotFound {
                registry,
                reference,
                source: Box::new(e),
            },
            _ => RegistryError::Unavailable {
                registry,
                reference,
                attempts,
                source: Box::new(e),
            },
        }
    }
}

/// The shared part of a client: what a blob stream keeps after `blob_stream` returned.
struct Inner {
    http: reqwest::Client,
    config: RegistryConfig,
    /// Authorization per `registry/repository`, found once per client.
    tokens: tokio::sync::Mutex<HashMap<String, Authorization>>,
}

/// A registry client for one pull (tokens are cached per client).
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.inner.config)
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

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

impl RegistryClient {
    /// A client; plain HTTP only for `config.insecure`.
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::custom(
                |attempt| match refuse_redirect(attempt.previous(), attempt.url()) {
                    Some(reason) => {
                        let target = attempt.url().to_string();
                        attempt.error(RedirectRefused { target, reason })
                    }
                    None => attempt.follow(),
                },
            ))
            .dns_resolver(NoLinkLocal)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(RegistryError::Client)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                config,
                tokens: tokio::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The credentials for `registry`: flags/env first, then the auth file, else anonymous.
    pub fn auth_for(&self, registry: &str) -> Result<RegistryAuth, RegistryError> {
        self.inner.auth_for(registry)
    }

    /// Fetches a manifest or index by tag or digest: the bytes and the digest they hash to.
    /// When the reference pins a digest, the bytes must hash to it. Capped at
    /// [`MAX_MANIFEST_BYTES`] while reading: a larger Content-Length is refused before the
    /// body is read, and a body without one is cut off at the cap.
    pub async fn manifest(&self, reference: &Reference) -> Result<(Bytes, Digest), RegistryError> {
        let inner = &self.inner;
        let oci_ref = oci_reference(&inner.config, reference);
        let ctx = inner.ctx(reference, reference.to_string())?;
        let tag_or_digest = oci_ref.digest().or(oci_ref.tag()).unwrap_or("latest");
        let url = format!("{}/manifests/{tag_or_digest}", inner.repo_url(&oci_ref));
        let accept = MANIFEST_MEDIA_TYPES.join(", ");
        let mut backoff = Backoff::new(&inner.config.retry);
        let mut refreshed = false;
        let bytes = loop {
            let attempt = async {
                let auth = inner.authorization(&oci_ref).await?;
                let resp = inner.get(&url, &auth, Some(&accept), 0).await?;
                read_capped(resp, &url, MAX_MANIFEST_BYTES, inner.config.min_speed).await
            };
            let e = match attempt.await {
                Ok(b) => break b,
                Err(e) => e,
            };
            // A 401 with a cached bearer token: it may have expired; one fresh dance.
            if !refreshed && e.status() == Some(401) && inner.forget(&oci_ref).await {
                refreshed = true;
            } else if !backoff.retry(&e).await {
                return Err(ctx.error(e, backoff.attempts()));
            }
        };
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
                // The stream's errors are RegistryErrors (see BlobReader::next).
                match e.into_inner().map(|b| b.downcast::<RegistryError>()) {
                    Some(Ok(r)) => *r,
                    _ => RegistryError::Unavailable {
                        registry: self.inner.config.endpoint(reference.registry()).to_owned(),
                        reference: format!("blob {digest}"),
                        attempts: self.inner.config.retry.attempts,
                        source: Box::new(FetchError::Truncated {
                            url: format!("blob {digest}"),
                            at: out.len() as u64,
                            size,
                        }),
                    },
                }
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

    /// A blob as a stream of chunks (redirects followed within the rules above). The first
    /// request is made here, so a missing blob or refused access is a [`RegistryError`]; after
    /// that, a body cut mid-way is resumed from where it stopped (`Range`, or the start
    /// skipped when the registry ignores ranges), within the retry policy; what cannot be
    /// recovered ends the stream with an `io::Error` that says why. The bytes are not verified
    /// here: the consumer hashes them.
    pub async fn blob_stream(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static + use<>, RegistryError> {
        let inner = self.inner.clone();
        let inner_min_speed = inner.config.min_speed;
        let oci_ref = oci_reference(&inner.config, reference);
        let url = format!("{}/blobs/{digest}", inner.repo_url(&oci_ref));
        let ctx = inner.ctx(reference, format!("blob {digest}"))?;
        let mut reader = BlobReader {
            backoff: Backoff::new(&inner.config.retry),
            inner,
            oci_ref,
            ctx,
            url,
            size,
            offset: 0,
            since_failure: 0,
            body: None,
            meter: SpeedMeter::new(inner_min_speed),
            done: false,
        };
        reader.body = Some(reader.open().await?);
        reader.meter = SpeedMeter::new(inner_min_speed);
        Ok(futures_util::stream::unfold(reader, |mut r| async move {
            r.next().await.map(|item| (item, r))
        }))
    }
}

impl Inner {
    fn auth_for(&self, registry: &str) -> Result<RegistryAuth, RegistryError> {
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

    fn ctx(&self, reference: &Reference, what: String) -> Result<Ctx, RegistryError> {
        let registry = self.config.endpoint(reference.registry()).to_owned();
        let had_credentials = !matches!(self.auth_for(&registry)?, RegistryAuth::Anonymous);
        Ok(Ctx {
            registry,
            what,
            had_credentials,
        })
    }

    /// `scheme://host/v2/<repository>` of the registry (or its mirror) actually contacted.
    fn repo_url(&self, oci_ref: &oci_client::Reference) -> String {
        let host = oci_ref.resolve_registry();
        let scheme = if self.config.insecure.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}/v2/{}", oci_ref.repository())
    }

    fn token_key(oci_ref: &oci_client::Reference) -> String {
        format!("{}/{}", oci_ref.resolve_registry(), oci_ref.repository())
    }

    /// The authorization for the repository: the auth dance once per client. `GET /v2/`; a
    /// 401 with a Bearer challenge sends berth to the challenge's realm for a pull token (with
    /// the basic credentials, when there are any); a Basic challenge or none means the
    /// credentials, if any, go with every request. The realm is held to the redirect rules.
    async fn authorization(
        &self,
        oci_ref: &oci_client::Reference,
    ) -> Result<Authorization, FetchError> {
        let key = Self::token_key(oci_ref);
        let mut tokens = self.tokens.lock().await;
        if let Some(a) = tokens.get(&key) {
            return Ok(a.clone());
        }
        let auth = match self.auth_for(self.config.endpoint(oci_ref.registry())) {
            Ok(a) => a,
            // Reported with its path by ctx() before any request; anonymous here.
            Err(_) => RegistryAuth::Anonymous,
        };
        let plain = match &auth {
            RegistryAuth::Bearer(t) => Authorization::Bearer(t.clone()),
            RegistryAuth::Basic(u, p) => Authorization::Basic(u.clone(), p.clone()),
            RegistryAuth::Anonymous => Authorization::Anonymous,
        };
        let authorization = match (&auth, self.challenge(oci_ref).await?) {
            (RegistryAuth::Bearer(_), _) | (_, None) => plain,
            (_, Some((realm, service))) => {
                let token = self
                    .token(oci_ref, &plain, &realm, service.as_deref())
                    .await?;
                Authorization::Bearer(token)
            }
        };
        tokens.insert(key, authorization.clone());
        Ok(authorization)
    }

    /// The realm and service of the registry's Bearer challenge, if it makes one.
    async fn challenge(
        &self,
        oci_ref: &oci_client::Reference,
    ) -> Result<Option<(reqwest::Url, Option<String>)>, FetchError> {
        let base = self.repo_url(oci_ref);
        let url = format!("{}/v2/", base.split("/v2/").next().unwrap_or(&base));
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| FetchError::Request {
                url: url.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        if status != 401 {
            if status >= 500 || status == 429 || status == 408 {
                return Err(FetchError::Status {
                    url,
                    status,
                    body: error_body(resp).await,
                    retry_after: None,
                });
            }
            return Ok(None);
        }
        let Some((realm, service)) = resp
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(bearer_challenge)
        else {
            return Ok(None);
        };
        let refused = |reason| FetchError::Realm {
            realm: realm.clone(),
            reason,
        };
        let realm_url: reqwest::Url = realm.parse().map_err(|_| refused("not a URL"))?;
        let from: reqwest::Url = url.parse().map_err(|_| refused("not a URL"))?;
        if let Some(reason) = refuse_redirect(&[from], &realm_url) {
            return Err(refused(reason));
        }
        Ok(Some((realm_url, service)))
    }

    /// A pull token for the repository from `realm`.
    async fn token(
        &self,
        oci_ref: &oci_client::Reference,
        credentials: &Authorization,
        realm: &reqwest::Url,
        service: Option<&str>,
    ) -> Result<String, FetchError> {
        let mut url = realm.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair(
                "scope",
                &format!("repository:{}:pull", oci_ref.repository()),
            );
            if let Some(s) = service {
                q.append_pair("service", s);
            }
        }
        let resp = self.get(url.as_str(), credentials, None, 0).await?;
        let body = read_capped(
            resp,
            url.as_str(),
            MAX_MANIFEST_BYTES,
            self.config.min_speed,
        )
        .await?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body).map_err(|source| FetchError::Token {
            url: realm.to_string(),
            source,
        })?;
        t.token.or(t.access_token).ok_or_else(|| FetchError::Token {
            url: realm.to_string(),
            source: <serde_json::Error as serde::de::Error>::missing_field("token"),
        })
    }

    /// Drops a cached bearer token (it may have expired); true when there was one.
    async fn forget(&self, oci_ref: &oci_client::Reference) -> bool {
        let mut tokens = self.tokens.lock().await;
        match tokens.get(&Self::token_key(oci_ref)) {
            Some(Authorization::Bearer(_)) => {
                tokens.remove(&Self::token_key(oci_ref));
                true
            }
            _ => false,
        }
    }

    /// One GET: a success status, or the failure with the start of the error body.
    async fn get(
        &self,
        url: &str,
        auth: &Authorization,
        accept: Option<&str>,
        from: u64,
    ) -> Result<reqwest::Response, FetchError> {
        let mut rb = auth.apply(self.http.get(url));
        if let Some(a) = accept {
            rb = rb.header(reqwest::header::ACCEPT, a);
        }
        if from > 0 {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let resp = rb.send().await.map_err(|source| FetchError::Request {
            url: url.to_owned(),
            source,
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // A redirect that reached here was not followed (a scheme other than http(s)): say
        // where it pointed rather than showing an empty body.
        let location = status
            .is_redirection()
            .then(|| resp.headers().get(reqwest::header::LOCATION))
            .flatten()
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
        let body = match location {
            Some(l) => format!("a redirect to {l:?}, not followed (only http and https are)"),
            None => error_body(resp).await,
        };
        Err(FetchError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
            body,
            retry_after,
        })
    }
}

/// The first KiB of an error answer, as text on one line.
async fn error_body(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    // Only a glance at the error envelope: what arrives within 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while buf.len() < 1024 {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    buf.truncate(1024);
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads a body of at most `limit` bytes: a larger Content-Length is refused unread, and the
/// count is checked chunk by chunk for bodies without one (or lying about it).
async fn read_capped(
    mut resp: reqwest::Response,
    url: &str,
    limit: usize,
    min_speed: MinSpeed,
) -> Result<Bytes, FetchError> {
    let too_large = |size: u64| FetchError::TooLarge {
        url: url.to_owned(),
        size,
        limit,
    };
    if let Some(len) = resp.content_length()
        && len > limit as u64
    {
        return Err(too_large(len));
    }
    let mut out = Vec::with_capacity(resp.content_length().map_or(0, |l| l as usize));
    let mut meter = SpeedMeter::new(min_speed);
    loop {
        let Ok(chunk) = tokio::time::timeout_at(meter.deadline(), resp.chunk()).await else {
            return Err(meter.too_slow(url));
        };
        match chunk {
            Ok(Some(c)) => {
                if out.len() + c.len() > limit {
                    return Err(too_large((out.len() + c.len()) as u64));
                }
                meter.add(c.len());
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out.into()),
            Err(source) => {
                return Err(FetchError::Request {
                    url: url.to_owned(),
                    source,
                });
            }
        }
    }
}

/// One blob download, resumed after cuts.
struct BlobReader {
    inner: Arc<Inner>,
    oci_ref: oci_client::Reference,
    ctx: Ctx,
    url: String,
    size: u64,
    /// Bytes handed out so far.
    offset: u64,
    /// Bytes handed out since the last failure.
    since_failure: u64,
    backoff: Backoff,
    body: Option<(Body, u64)>,
    /// The speed of the current body.
    meter: SpeedMeter,
    done: bool,
}

impl BlobReader {
    /// Requests the blob from `offset` on (with retries): the body and how many of its first
    /// bytes to skip (all of `offset` when the registry ignored the range).
    async fn open(&mut self) -> Result<(Body, u64), RegistryError> {
        let mut refreshed = false;
        loop {
            let e = match Self::open_once(&self.inner, &self.oci_ref, &self.url, self.offset).await
            {
                Ok(b) => return Ok(b),
                Err(e) => e,
            };
            if !refreshed && e.status() == Some(401) && self.inner.forget(&self.oci_ref).await {
                refreshed = true;
            } else if !self.backoff.retry(&e).await {
                return Err(self.ctx.error(e, self.backoff.attempts()));
            }
        }
    }

    async fn open_once(
        inner: &Inner,
        oci_ref: &oci_client::Reference,
        url: &str,
        offset: u64,
    ) -> Result<(Body, u64), FetchError> {
        let auth = inner.authorization(oci_ref).await?;
        let resp = inner.get(url, &auth, None, offset).await?;
        let skip = match resp.status().as_u16() {
            206 if offset > 0 => {
                let range = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                if !range.starts_with(&format!("bytes {}-", offset)) {
                    return Err(FetchError::Range {
                        url: url.to_owned(),
                        from: offset,
                        content_range: range,
                    });
                }
                0
            }
            _ => offset,
        };
        Ok((Box::pin(resp.bytes_stream()), skip))
    }

    /// Records a failure mid-body and waits before the next attempt; the error to report
    /// when the attempts are used up or the failure is permanent.
    async fn body_failed(&mut self, e: FetchError) -> Result<(), RegistryError> {
        self.body = None;
        if self.since_failure >= PROGRESS_RESETS_FAILURES {
            self.backoff.failures = 0;
        }
        self.since_failure = 0;
        if self.backoff.retry(&e).await {
            Ok(())
        } else {
            Err(self.ctx.error(e, self.backoff.attempts()))
        }
    }

    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.done {
                return None;
            }
            if self.body.is_none() {
                match self.open().await {
                    Ok(b) => {
                        self.body = Some(b);
                        self.meter = SpeedMeter::new(self.inner.config.min_speed);
                    }
                    Err(RegistryError::Unavailable { source, .. })
                        if source.status() == Some(416) =>
                    {
                        // Nothing more from `offset` on: the blob is shorter than its
                        // descriptor says, which the consumer's size check reports.
                        self.done = true;
                        return None;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(io::Error::other(e)));
                    }
                }
            }
            let Some((body, skip)) = self.body.as_mut() else {
                continue;
            };
            let Ok(next) = tokio::time::timeout_at(self.meter.deadline(), body.next()).await else {
                let e = self.meter.too_slow(&self.url);
                if let Err(e) = self.body_failed(e).await {
                    self.done = true;
                    return Some(Err(io::Error::other(e)));
                }
                continue;
            };
            let failure = match next {
                Some(Ok(mut chunk)) => {
                    self.meter.add(chunk.len());
                    if *skip > 0 {
                        let n = (*skip).min(chunk.len() as u64);
                        *skip -= n;
                        let _ = chunk.split_to(n as usize);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    self.offset += chunk.len() as u64;
                    self.since_failure += chunk.len() as u64;
                    return Some(Ok(chunk));
                }
                None if self.offset >= self.size => {
                    self.done = true;
                    return None;
                }
                None => FetchError::Truncated {
                    url: self.url.clone(),
                    at: self.offset,
                    size: self.size,
                },
                Some(Err(source)) => FetchError::Request {
                    url: self.url.clone(),
                    source,
                },
            };
            if let Err(e) = self.body_failed(failure).await {
                self.done = true;
                return Some(Err(io::Error::other(e)));
            }
        }
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

    fn url(s: &str) -> reqwest::Url {
        s.parse().unwrap()
    }

    #[test]
    fn redirects_from_https_to_plain_http_are_refused() {
        let from = [url("https://registry.example/v2/a/blobs/sha256:1")];
        assert_eq!(refuse_redirect(&from, &url("https://cdn.example/x")), None);
        assert!(
            refuse_redirect(&from, &url("http://cdn.example/x"))
                .unwrap()
                .contains("plain http")
        );
        // Also after an https hop in the middle of a chain that started on http.
        let chain = [url("http://r.example/v2/"), url("https://cdn.example/a")];
        assert!(refuse_redirect(&chain, &url("http://cdn.example/b")).is_some());
        // An insecure (plain-HTTP) registry may redirect to plain HTTP.
        let plain = [url("http://127.0.0.1:5000/v2/a/blobs/sha256:1")];
        assert_eq!(
            refuse_redirect(&plain, &url("http://127.0.0.1:5000/s")),
            None
        );
    }

    #[test]
    fn redirects_to_link_local_and_metadata_hosts_are_refused() {
        let from = [url("http://127.0.0.1:5000/v2/a/blobs/sha256:1")];
        for to in [
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.0.1/",
            "http://[fe80::1]/",
            "http://[febf::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://metadata.google.internal./",
            "file:///etc/passwd",
        ] {
            assert!(refuse_redirect(&from, &url(to)).is_some(), "{to}");
        }
        for to in [
            "http://169.253.0.1/",
            "http://[fec0::1]/",
            "http://10.0.0.1/",
        ] {
            assert_eq!(refuse_redirect(&from, &url(to)), None, "{to}");
        }
        let many: Vec<_> = (0..MAX_REDIRECTS)
            .map(|i| url(&format!("http://h{i}/")))
            .collect();
        assert!(refuse_redirect(&many, &url("http://last/")).is_some());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_half_of_it_jittered() {
        let p = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(p.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(p.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, 1.0), Duration::from_millis(400));
        assert_eq!(p.delay(5, 1.0), Duration::from_secs(1));
        assert_eq!(p.delay(40, 0.0), Duration::from_millis(500));
        for _ in 0..100 {
            let r = jitter();
            assert!((0.0..1.0).contains(&r), "{r}");
        }
    }

    #[test]
    fn transient_and_permanent_statuses_are_told_apart() {
        let status = |status: u16| FetchError::Status {
            url: "u".into(),
            status,
            body: String::new(),
            retry_after: None,
        };
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(status(s).transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 416, 501, 505] {
            assert!(!status(s).transient(), "{s}");
        }
        assert_eq!(status(503).kind(), ErrorKind::Unavailable);
        assert_eq!(status(404).kind(), ErrorKind::NotFound);
        assert_eq!(status(401).kind(), ErrorKind::InvalidInput);
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
