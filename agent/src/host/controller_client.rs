//! The controller's agent API over HTTP (`manifests::wire`'s table), with the shared token in
//! `Authorization: Bearer`. Plain HTTP until the multi-host issue brings mTLS. Errors are
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

/// A client of one controller.
#[derive(Debug, Clone)]
pub struct HttpController {
    base: String,
    token: TokenSource,
    client: reqwest::Client,
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
        let client = reqwest::Client::builder()
            .no_proxy()
            .user_agent(concat!("berth-agent/", env!("CARGO_PKG_VERSION")))
            // below the controller's idle limit (10 s), so a pooled connection is never
            // reused just as the controller closes it (reports every 10 s raced it)
            .pool_idle_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| EffectError::new("build http client", base, ErrorKind::Internal, e))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.map_or(TokenSource::None, TokenSource::Fixed),
            client,
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
        let client = reqwest::Client::builder()
            .no_proxy()
            .user_agent(concat!("berth-agent/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(std::time::Duration::from_secs(5))
            .local_address(local)
            .build()
            .map_err(|e| EffectError::new("build http client", base, ErrorKind::Internal, e))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.map_or(TokenSource::None, TokenSource::Fixed),
            client,
        })
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
        let mut request = self.client.request(method, &url).timeout(timeout);
        if let Some(token) = self.token() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| EffectError::new(op, url.clone(), ErrorKind::Unavailable, e))?;
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
