//! Tag → digest resolution, once, at the controller, so every host runs the same bytes.
//!
//! [`DigestResolver`] is the narrow interface the sync uses; [`RegistryResolver`] is a small
//! real one speaking the OCI distribution API (`HEAD /v2/<repo>/manifests/<tag>`, then `GET`
//! when the registry sends no `Docker-Content-Digest`), with anonymous, basic and bearer-token
//! auth. Plain HTTP is used only for registries named insecure. [`FakeResolver`] answers from
//! a table, for tests.
//!
//! The image store's registry client (agent side) speaks the same protocol; the two can be
//! merged later behind this trait. This module never pulls blobs.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use berth_manifests::ImageRef;
use sha2::{Digest, Sha256};

/// Largest manifest body read when the registry sends no digest header.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// The media types asked for: indexes first, so a multi-platform tag resolves to its index.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Why a reference could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The registry has no such tag or repository.
    #[error("image {image} not found in its registry; check the name and tag")]
    NotFound {
        /// The reference.
        image: String,
    },
    /// The registry refused our credentials (or wants some).
    #[error(
        "registry {registry} refused access to {image}; add credentials to the docker config file"
    )]
    Unauthorized {
        /// The registry.
        registry: String,
        /// The reference.
        image: String,
    },
    /// The registry could not be reached or answered oddly.
    #[error("registry {registry} unavailable for {image}: {reason}")]
    Unavailable {
        /// The registry.
        registry: String,
        /// The reference.
        image: String,
        /// What happened.
        reason: String,
    },
}

impl ResolveError {
    /// The error's class.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            ResolveError::NotFound { .. } => crate::ErrorKind::NotFound,
            ResolveError::Unauthorized { .. } => crate::ErrorKind::InvalidInput,
            ResolveError::Unavailable { .. } => crate::ErrorKind::Unavailable,
        }
    }
}

/// A boxed future of a resolution.
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<String, ResolveError>> + Send + 'a>>;

/// Resolves an image reference to its manifest digest (`sha256:…`).
pub trait DigestResolver: Send + Sync + 'static {
    /// The digest `image` names now. Called only for references without a digest.
    fn resolve<'a>(&'a self, image: &'a ImageRef) -> ResolveFuture<'a>;
}

/// The digest of `image`: its own when it has one, else the resolver's.
pub async fn digest_of(
    resolver: &dyn DigestResolver,
    image: &ImageRef,
) -> Result<String, ResolveError> {
    match image.digest() {
        Some(d) => Ok(d.to_string()),
        None => resolver.resolve(image).await,
    }
}

/// Answers from a table keyed by the reference's text; counts calls. For tests.
#[derive(Debug, Default)]
pub struct FakeResolver {
    table: Mutex<BTreeMap<String, String>>,
    calls: Mutex<u64>,
}

impl FakeResolver {
    /// An empty table: every reference resolves to the sha256 of its text.
    pub fn new() -> FakeResolver {
        FakeResolver::default()
    }

    /// Makes `image` (as displayed) resolve to `digest`.
    pub fn set(&self, image: &str, digest: &str) {
        if let Ok(mut t) = self.table.lock() {
            t.insert(image.to_string(), digest.to_string());
        }
    }

    /// How many times `resolve` was called.
    pub fn calls(&self) -> u64 {
        self.calls.lock().map(|c| *c).unwrap_or(0)
    }
}

impl DigestResolver for FakeResolver {
    fn resolve<'a>(&'a self, image: &'a ImageRef) -> ResolveFuture<'a> {
        Box::pin(async move {
            if let Ok(mut c) = self.calls.lock() {
                *c += 1;
            }
            let key = image.to_string();
            let known = self.table.lock().ok().and_then(|t| t.get(&key).cloned());
            match known.as_deref() {
                Some("missing") => Err(ResolveError::NotFound { image: key }),
                Some(d) => Ok(d.to_string()),
                None => Ok(format!(
                    "sha256:{}",
                    hex::encode(Sha256::digest(key.as_bytes()))
                )),
            }
        })
    }
}

/// User name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Reads registry credentials from a docker config file (`{"auths": {"host": {"auth":
/// base64("user:pass")}}}` or `username`/`password`). A missing file means no credentials.
pub fn credentials_from_docker_config(
    path: &Path,
) -> Result<BTreeMap<String, Credential>, std::io::Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut out = BTreeMap::new();
    let Some(auths) = value.get("auths").and_then(|a| a.as_object()) else {
        return Ok(out);
    };
    for (host, entry) in auths {
        let host = host
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let from_auth = entry
            .get("auth")
            .and_then(|a| a.as_str())
            .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|s| {
                s.split_once(':').map(|(u, p)| Credential {
                    username: u.to_string(),
                    password: p.to_string(),
                })
            });
        let from_fields = || {
            Some(Credential {
                username: entry.get("username")?.as_str()?.to_string(),
                password: entry.get("password")?.as_str()?.to_string(),
            })
        };
        if let Some(c) = from_auth.or_else(from_fields) {
            let host = if host == "index.docker.io" {
                "docker.io".to_string()
            } else {
                host
            };
            out.insert(host, c);
        }
    }
    Ok(out)
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=…`.
    Basic,
    /// `Bearer realm=…,service=…,scope=…`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter.
        service: Option<String>,
        /// `scope` parameter.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key, value.to_string());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

/// Resolves tags against real registries (OCI distribution API).
#[derive(Debug, Clone)]
pub struct RegistryResolver {
    http: reqwest::Client,
    insecure: Vec<String>,
    credentials: BTreeMap<String, Credential>,
    mirrors: BTreeMap<String, String>,
}

impl RegistryResolver {
    /// A resolver that uses plain HTTP for the `insecure` registries (`host:port`) only.
    pub fn new(
        insecure: Vec<String>,
        credentials: BTreeMap<String, Credential>,
    ) -> Result<RegistryResolver, ResolveError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| ResolveError::Unavailable {
                registry: "-".into(),
                image: "-".into(),
                reason: format!("cannot build an http client: {e}"),
            })?;
        Ok(RegistryResolver {
            http,
            insecure,
            credentials,
            mirrors: BTreeMap::new(),
        })
    }

    /// Pull mirrors, registry → `host[:port]` (`--registry-mirror docker.io=HOST:PORT`): tags
    /// of that registry are resolved at the mirror, never at the registry itself; credentials
    /// and `insecure` apply to the mirror's name.
    pub fn with_mirrors(mut self, mirrors: BTreeMap<String, String>) -> RegistryResolver {
        self.mirrors = mirrors;
        self
    }

    /// The host contacted for `registry`: its mirror, else itself.
    fn endpoint<'a>(&'a self, registry: &'a str) -> &'a str {
        self.mirrors.get(registry).map_or(registry, String::as_str)
    }

    fn base(&self, registry: &str) -> String {
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        let scheme = if self.insecure.iter().any(|r| r == registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    async fn resolve_ref(&self, image: &ImageRef) -> Result<String, ResolveError> {
        let registry = self.endpoint(image.registry()).to_string();
        let shown = image.to_string();
        let unavailable = |reason: String| ResolveError::Unavailable {
            registry: registry.clone(),
            image: shown.clone(),
            reason,
        };
        let reference = image
            .tag()
            .unwrap_or(berth_manifests::reference::DEFAULT_TAG);
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base(&registry),
            image.repository(),
            reference
        );
        let credential = self.credentials.get(&registry);
        let mut auth: Option<String> = None;
        for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut req = self
                    .http
                    .request(method.clone(), &url)
                    .header(reqwest::header::ACCEPT, ACCEPT);
                if let Some(a) = &auth {
                    req = req.header(reqwest::header::AUTHORIZATION, a);
                }
                let resp = req.send().await.map_err(|e| unavailable(e.to_string()))?;
                let status = resp.status();
                if status == reqwest::StatusCode::UNAUTHORIZED && attempt == 1 {
                    let challenge = resp
                        .headers()
                        .get(reqwest::header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_challenge);
                    auth = match challenge {
                        Some(Challenge::Basic) => credential.map(basic_header),
                        Some(Challenge::Bearer {
                            realm,
                            service,
                            scope,
                        }) => {
                            let scope = scope.unwrap_or_else(|| {
                                format!("repository:{}:pull", image.repository())
                            });
                            Some(
                                self.bearer_token(&realm, service.as_deref(), &scope, credential)
                                    .await
                                    .map_err(&unavailable)?,
                            )
                        }
                        None => None,
                    };
                    if auth.is_some() {
                        continue;
                    }
                }
                if status == reqwest::StatusCode::UNAUTHORIZED
                    || status == reqwest::StatusCode::FORBIDDEN
                {
                    return Err(ResolveError::Unauthorized {
                        registry: registry.clone(),
                        image: shown.clone(),
                    });
                }
                if status == reqwest::StatusCode::NOT_FOUND {
                    return Err(ResolveError::NotFound {
                        image: shown.clone(),
                    });
                }
                if !status.is_success() {
                    return Err(unavailable(format!("{method} manifest: status {status}")));
                }
                let header = resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .filter(|d| is_sha256_digest(d))
                    .map(str::to_string);
                if let Some(d) = header {
                    return Ok(d);
                }
                if method == reqwest::Method::HEAD {
                    break; // no digest header: GET the body and hash it
                }
                let body = read_limited(resp, MAX_MANIFEST_BYTES)
                    .await
                    .map_err(&unavailable)?;
                return Ok(format!("sha256:{}", hex::encode(Sha256::digest(&body))));
            }
        }
        Err(unavailable("no digest in the registry's answers".into()))
    }

    async fn bearer_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credential: Option<&Credential>,
    ) -> Result<String, String> {
        let mut query = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        let mut req = self.http.get(realm).query(&query);
        if let Some(c) = credential {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().await.map_err(|e| format!("token: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("token endpoint {realm}: status {}", resp.status()));
        }
        let body = read_limited(resp, 1 << 20).await?;
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("token: {e}"))?;
        let token = value
            .get("token")
            .or_else(|| value.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or("token endpoint answered without a token")?;
        Ok(format!("Bearer {token}"))
    }
}

fn basic_header(c: &Credential) -> String {
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl DigestResolver for RegistryResolver {
    fn resolve<'a>(&'a self, image: &'a ImageRef) -> ResolveFuture<'a> {
        Box::pin(self.resolve_ref(image))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn reads_docker_config_auths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("u:p:w");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"r:5000":{{"username":"a","password":"b"}}}}}}"#),
        )
        .unwrap();
        let creds = credentials_from_docker_config(&path).unwrap();
        assert_eq!(creds["docker.io"].password, "p:w");
        assert_eq!(creds["r:5000"].username, "a");
        assert!(
            credentials_from_docker_config(&dir.path().join("none"))
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_reference_with_a_digest_needs_no_call() {
        let fake = FakeResolver::new();
        let d = format!("sha256:{}", "c".repeat(64));
        let image: ImageRef = format!("busybox@{d}").parse().unwrap();
        assert_eq!(digest_of(&fake, &image).await.unwrap(), d);
        assert_eq!(fake.calls(), 0);
        let tagged: ImageRef = "busybox:1".parse().unwrap();
        digest_of(&fake, &tagged).await.unwrap();
        assert_eq!(fake.calls(), 1);
    }
}
