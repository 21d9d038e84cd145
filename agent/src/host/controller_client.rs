//! The controller's agent API over HTTP (`manifests::wire`'s table): with a token in
//! `Authorization: Bearer`, or over mTLS with the host's node certificate
//! ([`HttpController::with_node_cert`]; [`node_cert`](super::node_cert) joins and renews,
//! swapping the identity in place with [`HttpController::set_identity`]). Errors are
//! classed for the agent loop's retry policy: connection failures, timeouts and 5xx are
//! `unavailable`; 401/403 `invalid input` (a wrong token does not fix itself); other 4xx
//! `invalid input`.

use std::time::Duration;

use berth_manifests::ErrorKind;
use berth_manifests::wire::{Assignment, HostReport, Registered, Registration};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::reconcile::traits::{ControllerClient, EffectError};

/// Extra time over a long-poll's `wait` before the request counts as timed out.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// Timeout of the short calls (register, report).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the bearer token comes from.
#[derive(Debug, Clone)]
enum TokenSource {
    None,
    Fixed(String),
    /// Read at every call: a controller on the same host may write it after the agent
    /// started, or rotate it.
    File(std::path::PathBuf),
}

/// A client of one controller. Clones share the connection pool and the identity.
#[derive(Debug, Clone)]
pub struct HttpController {
    base: String,
    token: TokenSource,
    client: std::sync::Arc<std::sync::RwLock<reqwest::Client>>,
    /// With mTLS: the CA (PEM) the controller must prove itself by.
    ca_pem: Option<String>,
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .user_agent(concat!("berth-agent/", env!("CARGO_PKG_VERSION")))
        // below the controller's idle limit (10 s), so a pooled connection is never
        // reused just as the controller closes it (reports every 10 s raced it)
        .pool_idle_timeout(std::time::Duration::from_secs(5))
}

/// A client builder trusting only the CA `ca_pem`.
pub fn tls_builder(ca_pem: &str) -> Result<reqwest::ClientBuilder, String> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())
        .map_err(|e| format!("the controller CA certificate is unusable: {e}"))?;
    Ok(builder().tls_certs_only([ca]))
}

/// The controller answered with an error status.
#[derive(Debug, thiserror::Error)]
#[error("controller answered {status}: {body}")]
pub struct StatusError {
    /// HTTP status.
    pub status: u16,
    /// The start of the body.
    pub body: String,
}

impl HttpController {
    /// A client of the controller at `base` (`http://127.0.0.1:7070`).
    pub fn new(base: &str, token: Option<String>) -> Result<Self, EffectError> {
        let client = builder()
            .build()
            .map_err(|e| EffectError::new("build http client", base, ErrorKind::Internal, e))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.map_or(TokenSource::None, TokenSource::Fixed),
            client: std::sync::Arc::new(std::sync::RwLock::new(client)),
            ca_pem: None,
        })
    }

    /// A client of the controller at `base` whose connections leave from the local address
    /// `local` (the scale harness spreads simulated agents over 127.0.0.2, 127.0.0.3, … so
    /// that neither ephemeral ports nor the controller's per-address cap run out). Clones
    /// share one connection pool.
    pub fn bound(
        base: &str,
        token: Option<String>,
        local: std::net::IpAddr,
    ) -> Result<Self, EffectError> {
        let client = builder()
            .local_address(local)
            .build()
            .map_err(|e| EffectError::new("build http client", base, ErrorKind::Internal, e))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.map_or(TokenSource::None, TokenSource::Fixed),
            client: std::sync::Arc::new(std::sync::RwLock::new(client)),
            ca_pem: None,
        })
    }

    /// A client of the controller at `base` (`https://…`) over mTLS: it trusts only the CA
    /// `ca_pem` and proves its host with `identity_pem` (the node key and certificate, PEM).
    pub fn with_node_cert(
        base: &str,
        ca_pem: &str,
        identity_pem: &str,
    ) -> Result<Self, EffectError> {
        let client = Self::tls_client(base, ca_pem, identity_pem)?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token: TokenSource::None,
            client: std::sync::Arc::new(std::sync::RwLock::new(client)),
            ca_pem: Some(ca_pem.to_string()),
        })
    }

    fn tls_client(
        base: &str,
        ca_pem: &str,
        identity_pem: &str,
    ) -> Result<reqwest::Client, EffectError> {
        let fail =
            |e: String| EffectError::new("build mTLS client", base, ErrorKind::InvalidInput, e);
        let identity = reqwest::Identity::from_pem(identity_pem.as_bytes())
            .map_err(|e| fail(format!("the node certificate or key is unusable: {e}")))?;
        tls_builder(ca_pem)
            .map_err(fail)?
            .identity(identity)
            .build()
            .map_err(|e| fail(e.to_string()))
    }

    /// Uses `identity_pem` (a renewed node key and certificate) from the next request on;
    /// every clone of this client switches.
    pub fn set_identity(&self, identity_pem: &str) -> Result<(), EffectError> {
        let Some(ca) = &self.ca_pem else {
            return Err(EffectError::new(
                "set node certificate",
                &self.base,
                ErrorKind::InvalidInput,
                "this client uses a token, not a node certificate",
            ));
        };
        let client = Self::tls_client(&self.base, ca, identity_pem)?;
        *self
            .client
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        Ok(())
    }

    /// `POST /v1/agents/{host}/certificate`: a node certificate for a new key (renewal).
    pub async fn renew(
        &self,
        request: &berth_manifests::wire::NodeCertRequest,
    ) -> Result<berth_manifests::wire::NodeCertificate, EffectError> {
        let path = format!("/v1/agents/{}/certificate", request.name);
        self.call(
            "renew node certificate",
            reqwest::Method::POST,
            &path,
            Some(request),
            CALL_TIMEOUT,
        )
        .await?
        .ok_or_else(|| Self::missing("renew node certificate", format!("{}{path}", self.base)))
    }

    /// A client whose token is the content of `path`, read at every call (a missing file
    /// means no token, and the controller answers 401 until it appears).
    pub fn with_token_file(
        base: &str,
        path: impl Into<std::path::PathBuf>,
    ) -> Result<Self, EffectError> {
        let mut c = Self::new(base, None)?;
        c.token = TokenSource::File(path.into());
        Ok(c)
    }

    fn token(&self) -> Option<String> {
        match &self.token {
            TokenSource::None => None,
            TokenSource::Fixed(t) => Some(t.clone()),
            TokenSource::File(p) => std::fs::read_to_string(p)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        }
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        op: &'static str,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Option<T>, EffectError> {
        let url = format!("{}{path}", self.base);
        let client = self
            .client
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut request = client.request(method, &url).timeout(timeout);
        if let Some(token) = self.token() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| EffectError::new(op, url.clone(), ErrorKind::Unavailable, chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let kind = if status.is_server_error() || status.as_u16() == 429 {
                ErrorKind::Unavailable
            } else if status.as_u16() == 404 {
                ErrorKind::NotFound
            } else {
                ErrorKind::InvalidInput
            };
            return Err(EffectError::new(
                op,
                url,
                kind,
                StatusError {
                    status: status.as_u16(),
                    body: text.chars().take(300).collect(),
                },
            ));
        }
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| EffectError::new(op, url.clone(), ErrorKind::Unavailable, e))?;
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| EffectError::new(op, url, ErrorKind::InvalidInput, e))
    }

    fn missing(op: &'static str, url: String) -> EffectError {
        EffectError::new(
            op,
            url,
            ErrorKind::InvalidInput,
            "the controller sent no body",
        )
    }
}

/// An error's message with its causes (a TLS failure is in the innermost one).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl ControllerClient for HttpController {
    async fn register(&self, registration: &Registration) -> Result<Registered, EffectError> {
        let path = "/v1/agents/register";
        self.call(
            "register",
            reqwest::Method::POST,
            path,
            Some(registration),
            CALL_TIMEOUT,
        )
        .await?
        .ok_or_else(|| Self::missing("register", format!("{}{path}", self.base)))
    }

    async fn assignment(
        &self,
        host: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Assignment, EffectError> {
        let path = format!(
            "/v1/agents/{host}/assignment?after={after}&wait={}",
            wait.as_secs()
        );
        self.call::<(), Assignment>(
            "get assignment",
            reqwest::Method::GET,
            &path,
            None,
            wait + POLL_SLACK,
        )
        .await?
        .ok_or_else(|| Self::missing("get assignment", format!("{}{path}", self.base)))
    }

    async fn report(&self, report: &HostReport) -> Result<(), EffectError> {
        let path = format!("/v1/agents/{}/report", report.host);
        self.call::<HostReport, serde_json::Value>(
            "report",
            reqwest::Method::POST,
            &path,
            Some(report),
            CALL_TIMEOUT,
        )
        .await
        .map(|_| ())
    }
}
