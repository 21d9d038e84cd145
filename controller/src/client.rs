//! A typed client of the controller's API (reqwest), for the CLI verbs and agents. It speaks
//! the routes of [`api`](crate::api) with the shared token and maps error answers to
//! [`ClientError`]. It holds no state besides the connection pool.

use std::time::Duration;

use berth_manifests::wire::{
    AppStatus, Assignment, ClusterStatus, Event, HostReport, InstanceInfo, Registered,
    Registration, RevisionInfo, RollbackRequest, RolloutStatus, SyncStatus,
};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

/// What went wrong talking to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller could not be reached.
    #[error(
        "cannot reach the controller at {url}: {reason}; is it running (berth controller / berth up)?"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The controller answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Its class.
        kind: crate::ErrorKind,
        /// Its words.
        message: String,
    },
    /// The answer did not decode.
    #[error("unexpected answer from {url}: {reason}")]
    Decode {
        /// The URL.
        url: String,
        /// serde's words.
        reason: String,
    },
}

impl ClientError {
    /// The error's class.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            ClientError::Unreachable { .. } => crate::ErrorKind::Unavailable,
            ClientError::Api { kind, .. } => *kind,
            ClientError::Decode { .. } => crate::ErrorKind::Internal,
        }
    }
}

/// A controller client.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the controller at `base` (`http://127.0.0.1:7070`) using `token`.
    pub fn new(base: &str, token: &str) -> Result<Client, ClientError> {
        Client::with_ca(base, token, None)
    }

    /// A client that trusts only the CA `ca_pem` (the controller's, for `https://` URLs;
    /// `None`: the system's roots).
    pub fn with_ca(base: &str, token: &str, ca_pem: Option<&str>) -> Result<Client, ClientError> {
        let unusable = |reason: String| ClientError::Unreachable {
            url: base.to_string(),
            reason,
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // below the server's idle limit (server::HEADER_READ_TIMEOUT, 10 s), so a pooled
            // connection is never reused just as the server closes it
            .pool_idle_timeout(Duration::from_secs(5));
        if let Some(pem) = ca_pem {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| unusable(format!("the controller CA certificate: {e}")))?;
            builder = builder.tls_certs_only([ca]);
        }
        let http = builder.build().map_err(|e| unusable(e.to_string()))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ClientError> {
        let resp = self.checked(req, url).await?;
        resp.json().await.map_err(|e| ClientError::Decode {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }

    async fn checked(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let resp =
            req.bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        let (kind, message) = match serde_json::from_slice::<berth_manifests::wire::ApiError>(&body)
        {
            Ok(e) => (e.kind, e.error),
            Err(_) => (
                crate::ErrorKind::Internal,
                format!("{url}: status {status}: {}", String::from_utf8_lossy(&body)),
            ),
        };
        Err(ClientError::Api {
            status: status.as_u16(),
            kind,
            message,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        self.send(self.http.get(&url).timeout(Duration::from_secs(60)), &url)
            .await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.get("/v1/status").await
    }

    /// `POST /v1/tokens`: a new token (admin).
    pub async fn create_token(
        &self,
        req: &crate::access::TokenRequest,
    ) -> Result<crate::access::IssuedToken, ClientError> {
        let url = self.url("/v1/tokens");
        self.send(self.http.post(&url).json(req), &url).await
    }

    /// `GET /v1/tokens` (admin).
    pub async fn tokens(&self) -> Result<Vec<crate::access::TokenInfo>, ClientError> {
        self.get("/v1/tokens").await
    }

    /// `DELETE /v1/tokens/{id}` (admin).
    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/tokens/{id}"));
        self.checked(self.http.delete(&url), &url).await.map(|_| ())
    }

    /// `GET /v1/leader`: which controller leads (HA on etcd).
    pub async fn leader(&self) -> Result<crate::api::LeaderStatus, ClientError> {
        self.get("/v1/leader").await
    }

    /// `GET /v1/apps`.
    pub async fn apps(&self) -> Result<Vec<AppStatus>, ClientError> {
        self.get("/v1/apps").await
    }

    /// `GET /v1/apps/{app}/revisions`.
    pub async fn revisions(&self, app: &str) -> Result<Vec<RevisionInfo>, ClientError> {
        self.get(&format!("/v1/apps/{app}/revisions")).await
    }

    /// `GET /v1/apps/{app}/rollout`.
    pub async fn rollout(
        &self,
        app: &str,
        revision: Option<u64>,
    ) -> Result<RolloutStatus, ClientError> {
        match revision {
            Some(n) => {
                self.get(&format!("/v1/apps/{app}/rollout?revision={n}"))
                    .await
            }
            None => self.get(&format!("/v1/apps/{app}/rollout")).await,
        }
    }

    /// `POST /v1/apps/{app}/rollback`.
    pub async fn rollback(&self, app: &str, to: Option<u64>) -> Result<RevisionInfo, ClientError> {
        let url = self.url(&format!("/v1/apps/{app}/rollback"));
        let req = self
            .http
            .post(&url)
            .timeout(Duration::from_secs(60))
            .json(&RollbackRequest { to });
        self.send(req, &url).await
    }

    /// `GET /v1/instances`.
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>, ClientError> {
        self.get("/v1/instances").await
    }

    /// `GET /v1/placement`.
    pub async fn placement(&self) -> Result<berth_manifests::wire::PlacementView, ClientError> {
        self.get("/v1/placement").await
    }

    /// `POST /v1/sync`.
    pub async fn sync(&self) -> Result<SyncStatus, ClientError> {
        let url = self.url("/v1/sync");
        self.send(self.http.post(&url).timeout(Duration::from_secs(300)), &url)
            .await
    }

    /// `POST /v1/agents/register`.
    pub async fn register(&self, reg: &Registration) -> Result<Registered, ClientError> {
        let url = self.url("/v1/agents/register");
        let req = self
            .http
            .post(&url)
            .timeout(Duration::from_secs(30))
            .json(reg);
        self.send(req, &url).await
    }

    /// `GET /v1/agents/{host}/assignment?after=V&wait=SECS` (long-poll).
    pub async fn assignment(
        &self,
        host: &str,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<Assignment, ClientError> {
        let mut url = self.url(&format!(
            "/v1/agents/{host}/assignment?wait={}",
            wait.as_secs()
        ));
        if let Some(v) = after {
            url.push_str(&format!("&after={v}"));
        }
        let req = self.http.get(&url).timeout(wait + Duration::from_secs(15));
        self.send(req, &url).await
    }

    /// `POST /v1/agents/{host}/report`.
    pub async fn report(&self, report: &HostReport) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/agents/{}/report", report.host));
        let req = self
            .http
            .post(&url)
            .timeout(Duration::from_secs(30))
            .json(report);
        self.checked(req, &url).await.map(|_| ())
    }

    /// `GET /v1/events`: the stored events, then (with `follow`) new ones as they happen,
    /// each passed to `on_event`; returns when the stream ends or `on_event` says stop.
    pub async fn events(
        &self,
        follow: bool,
        mut on_event: impl FnMut(Event) -> bool,
    ) -> Result<(), ClientError> {
        let url = self.url(if follow {
            "/v1/events?follow=1"
        } else {
            "/v1/events"
        });
        let mut req = self.http.get(&url);
        if !follow {
            req = req.timeout(Duration::from_secs(60));
        }
        let resp = self.checked(req, &url).await?;
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let event: Event =
                    serde_json::from_slice(&line).map_err(|e| ClientError::Decode {
                        url: url.clone(),
                        reason: e.to_string(),
                    })?;
                if !on_event(event) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
