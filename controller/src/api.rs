//! The HTTP API under `/v1/` (axum): the agent endpoints and the CLI's. Every route checks
//! the bearer token (`Authorization: Bearer`): the controller's own (admin, constant-time
//! compare) or an API token with a role ([`access`](crate::access)); a known token without
//! the role a route needs gets 403, an unknown one 401. Over TLS, a request without a bearer
//! token may instead carry a node certificate ([`pki`](crate::pki)): it speaks for its host
//! alone, with a join token's rights, while the host's join token exists (else 403). Bodies are capped (413 beyond
//! [`MAX_BODY_BYTES`]) and requests time out, long-polls and event streams excepted (they are
//! bounded by their own `wait`, and end at shutdown).
//!
//! | method and path | answer |
//! |---|---|
//! | `POST /v1/agents/join` `NodeCertRequest` (join token) | `NodeCertificate` (TLS only) |
//! | `POST /v1/agents/{host}/certificate` `NodeCertRequest` | `NodeCertificate` (renewal) |
//! | `GET /v1/pki/ca` | the CA certificate, PEM (no token: it is public; agents pin its hash) |
//! | `POST /v1/agents/register` | `Registered` |
//! | `GET /v1/agents/{host}/assignment?after=V&wait=SECS` | `Assignment` (long-poll, `wait` ≤ 60) |
//! | `POST /v1/agents/{host}/report` | 204 |
//! | `GET /v1/status` | `ClusterStatus` |
//! | `GET /v1/apps` | `[AppStatus]` |
//! | `GET /v1/apps/{app}/revisions` | `[RevisionInfo]` |
//! | `GET /v1/apps/{app}/rollout?revision=N` | `RolloutStatus` |
//! | `POST /v1/apps/{app}/rollback` `{"to": N}` | `RevisionInfo` (now pinned) |
//! | `GET /v1/instances` | `[InstanceInfo]` |
//! | `GET /v1/placement` | `PlacementView`: instances per host and app, capacity, what did not fit |
//! | `GET /v1/events?follow=1&after=SEQ` | NDJSON `Event` lines, streamed with `follow` |
//! | `POST /v1/sync` | `SyncStatus` after fetching and applying the branch head |
//! | `GET /` (and `/dashboard.js`, `/dashboard.css`) | the dashboard (no token: static assets) |
//! | `GET /metrics` | Prometheus/OpenMetrics text (token only with `metrics_token_required`) |
//! | `GET /v1/leader` | [`LeaderStatus`]: which controller leads (HA on etcd) |
//! | `POST /v1/tokens` `{"role": R, "host": H}` | `IssuedToken` (admin) |
//! | `GET /v1/tokens` | `[TokenInfo]` (admin) |
//! | `DELETE /v1/tokens/{id}` | 204 (admin) |
//!
//! On etcd (HA), a controller that does not lead serves reads from the shared store and
//! forwards writes (every method but GET, and followed event streams) to the leader, with
//! the caller's headers and body; with no leader elected it answers 503.
//!
//! `POST /v1/sync` is also the git hosting webhook: besides the bearer token it accepts
//! GitLab's `X-Gitlab-Token` and GitHub/Gitea's HMAC-SHA256 body signatures keyed by the token.
//!
//! Errors are `{"error": "...", "kind": "..."}` with the status of their class. This module
//! holds no state of its own: it translates HTTP to [`Core`] calls. Every request is counted
//! and timed in the controller's metrics by its matched route template (docs/metrics.md).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_manifests::wire::{self, HostReport, Registration, RollbackRequest};
use serde::Deserialize;
use tokio::sync::watch;

use crate::ErrorKind;
use crate::access::{self, IssuedToken, Principal, TokenInfo, TokenRequest, TokenRole};
use crate::leader::{Member, Role};
use crate::state::{Core, CoreError};
use crate::store::Store;
use crate::token::constant_time_eq;

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Longest long-poll wait.
pub const MAX_WAIT_SECS: u64 = 60;
/// Deadline of an ordinary request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of `POST /v1/sync` (a git fetch has 120 s of its own, then validation).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(150);

/// What the handlers share.
pub struct ApiState<S: Store> {
    /// The state machine.
    pub core: Arc<Core<S>>,
    /// The token every request must carry.
    pub token: String,
    /// Becomes true at shutdown: long-polls and streams end.
    pub shutdown: watch::Receiver<bool>,
    /// Whether `GET /metrics` needs the token too (default: no, like most exporters).
    pub metrics_token_required: bool,
    /// Set on etcd: this controller's election state, for forwarding writes.
    pub ha: Option<Ha>,
    /// Set when serving TLS: the CA that signs node certificates.
    pub pki: Option<Arc<crate::pki::Pki>>,
}

/// What a controller on etcd needs to forward writes to the leader.
#[derive(Debug, Clone)]
pub struct Ha {
    /// This controller.
    pub me: Member,
    /// Its election state.
    pub role: watch::Receiver<Role>,
    http: reqwest::Client,
}

impl Ha {
    /// Forwarding for `me`, following `role`. With `tls` (the CA, PEM, and this
    /// controller's client identity, key and certificate PEM) the leader is reached over
    /// HTTPS trusting only that CA, and agents' certificate-authenticated requests are
    /// vouched for by the controller certificate.
    pub fn new(me: Member, role: watch::Receiver<Role>, tls: Option<(&str, &str)>) -> Ha {
        // pooled connections are dropped after 5 s idle, under the leader's 10 s idle limit
        // (server::HEADER_READ_TIMEOUT): reusing one as the leader closes it fails a write
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(5));
        if let Some((ca, identity)) = tls {
            match (
                reqwest::Certificate::from_pem(ca.as_bytes()),
                reqwest::Identity::from_pem(identity.as_bytes()),
            ) {
                (Ok(ca), Ok(identity)) => {
                    builder = builder.tls_certs_only([ca]).identity(identity);
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "the controller's own certificate is unusable for forwarding");
                }
            }
        }
        let http = builder.build().unwrap_or_else(|_| reqwest::Client::new());
        Ha { me, role, http }
    }
}

/// `GET /v1/leader`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct LeaderStatus {
    /// This controller's member id (`None` on the embedded store).
    pub member: Option<String>,
    /// Whether this controller leads (always true on the embedded store).
    pub leading: bool,
    /// The leader as this controller knows it (`None`: none elected, or embedded).
    pub leader: Option<Member>,
}

/// Marks a request a follower forwarded (never forwarded twice).
pub const FORWARDED_HEADER: &str = "x-berth-forwarded-by";
/// The host whose node certificate a follower verified, on a request it forwards to the
/// leader; honoured only from a peer presenting a controller certificate.
pub const FORWARDED_HOST_HEADER: &str = "x-berth-forwarded-host";

/// Set by `auth` on requests authenticated by a node certificate (not a token).
#[derive(Debug, Clone)]
struct CertHost(String);

impl<S: Store> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        ApiState {
            core: self.core.clone(),
            token: self.token.clone(),
            shutdown: self.shutdown.clone(),
            metrics_token_required: self.metrics_token_required,
            ha: self.ha.clone(),
            pki: self.pki.clone(),
        }
    }
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: wire::ApiError,
}

impl ApiError {
    fn new(kind: ErrorKind, message: String) -> ApiError {
        let status = match kind {
            ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            body: wire::ApiError {
                error: message,
                kind,
            },
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> ApiError {
        ApiError::new(e.kind(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The router, with its middleware; serve it with `axum::serve`.
pub fn router<S: Store>(state: ApiState<S>) -> Router {
    let timed = Router::new()
        .route("/v1/agents/register", post(register::<S>))
        .route("/v1/agents/join", post(join::<S>))
        .route("/v1/agents/{host}/certificate", post(renew::<S>))
        .route("/v1/pki/ca", get(ca::<S>))
        .route("/v1/agents/{host}/report", post(report::<S>))
        .route("/v1/status", get(status::<S>))
        .route("/v1/apps", get(apps::<S>))
        .route("/v1/apps/{app}/revisions", get(revisions::<S>))
        .route("/v1/apps/{app}/rollout", get(rollout::<S>))
        .route("/v1/apps/{app}/rollback", post(rollback::<S>))
        .route("/v1/instances", get(instances::<S>))
        .route("/v1/placement", get(placement::<S>))
        .route("/v1/leader", get(leader::<S>))
        .route("/v1/tokens", post(create_token::<S>).get(tokens::<S>))
        .route("/v1/tokens/{id}", axum::routing::delete(revoke_token::<S>))
        .route("/metrics", get(metrics::<S>))
        .layer(axum::middleware::from_fn(timeout));
    // a sync may fetch a large repository: its own, longer deadline
    let syncing = Router::new()
        .route("/v1/sync", post(sync::<S>))
        .layer(axum::middleware::from_fn(sync_timeout));
    let long = Router::new()
        .route("/v1/agents/{host}/assignment", get(assignment::<S>))
        .route("/v1/events", get(events::<S>));
    timed
        .merge(syncing)
        .merge(long)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::<S>,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::<S>,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            track::<S>,
        ))
        // Merged after the auth layer: the dashboard's static assets need no token (the
        // page reads the API with one).
        .merge(crate::dashboard::routes())
        .with_state(state)
}

/// Counts and times every request by its route template (never the raw path: app and host
/// names in paths would make the label unbounded).
async fn track<S: Store>(
    State(state): State<ApiState<S>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(crate::metrics::UNMATCHED_ROUTE.to_string(), |m| {
            m.as_str().to_string()
        });
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    state.core.metrics().api_request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`: the host gauges are recomputed (readiness depends on the clock), then
/// every family is encoded, as OpenMetrics when the scraper asks for it, else in the
/// Prometheus text format 0.0.4.
async fn metrics<S: Store>(
    State(state): State<ApiState<S>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    state.core.refresh_host_metrics().await?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, text) = crate::metrics::negotiate(state.core.metrics(), accept);
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// Whether a request must reach the leader: writes, and followed event streams (events are
/// broadcast by the controller that appends them).
fn needs_leader(request: &Request) -> bool {
    if request.method() != axum::http::Method::GET && request.method() != axum::http::Method::HEAD {
        return true;
    }
    request.uri().path() == "/v1/events"
        && request.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|kv| matches!(kv, "follow=1" | "follow=true" | "follow=yes"))
        })
}

/// On a follower, sends what [`needs_leader`] to the leader and relays its answer.
async fn forward<S: Store>(
    State(state): State<ApiState<S>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(ha) = &state.ha else {
        return next.run(request).await;
    };
    if !needs_leader(&request) {
        return next.run(request).await;
    }
    let role = ha.role.borrow().clone();
    let leader = match role {
        Role::Leader { .. } => return next.run(request).await,
        Role::Follower { leader: Some(l) } if l.id != ha.me.id => l,
        Role::Follower { .. } => {
            return ApiError::new(
                ErrorKind::Unavailable,
                "no controller leads right now (an election is under way); retry in a few seconds"
                    .into(),
            )
            .into_response();
        }
    };
    if request.headers().contains_key(FORWARDED_HEADER) {
        return ApiError::new(
            ErrorKind::Unavailable,
            format!(
                "forwarded to controller {} which does not lead either (the leader just changed); retry",
                ha.me.url
            ),
        )
        .into_response();
    }
    match proxy(ha, &leader, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn proxy(ha: &Ha, leader: &Member, request: Request) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_WEBHOOK_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorKind::ResourceExhausted,
                format!("request body larger than {MAX_WEBHOOK_BYTES} bytes"),
            )
        })?;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", leader.url.trim_end_matches('/'));
    let mut headers = parts.headers.clone();
    for h in [
        header::HOST,
        header::CONTENT_LENGTH,
        header::CONNECTION,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(h);
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(&ha.me.id) {
        headers.insert(FORWARDED_HEADER, v);
    }
    headers.remove(FORWARDED_HOST_HEADER);
    if let Some(CertHost(host)) = parts.extensions.get::<CertHost>()
        && let Ok(v) = axum::http::HeaderValue::from_str(host)
    {
        headers.insert(FORWARDED_HOST_HEADER, v);
    }
    let answer = ha
        .http
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(bytes)
        .send()
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "cannot reach the leader controller at {}: {e}; retry",
                    leader.url
                ),
            )
        })?;
    let mut response = Response::builder().status(answer.status());
    for name in [header::CONTENT_TYPE, header::WWW_AUTHENTICATE] {
        if let Some(v) = answer.headers().get(&name) {
            response = response.header(name, v.clone());
        }
    }
    response
        .body(axum::body::Body::from_stream(answer.bytes_stream()))
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("relaying the leader: {e}")))
}

async fn leader<S: Store>(State(state): State<ApiState<S>>) -> Json<LeaderStatus> {
    Json(match &state.ha {
        None => LeaderStatus {
            member: None,
            leading: true,
            leader: None,
        },
        Some(ha) => {
            let role = ha.role.borrow().clone();
            match role {
                Role::Leader { .. } => LeaderStatus {
                    member: Some(ha.me.id.clone()),
                    leading: true,
                    leader: Some(ha.me.clone()),
                },
                Role::Follower { leader } => LeaderStatus {
                    member: Some(ha.me.id.clone()),
                    leading: false,
                    leader,
                },
            }
        }
    })
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "no such API route; see docs/controller.md".into(),
    )
}

/// The host of an agent route's path (`/v1/agents/{host}/…`).
fn agent_host(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/agents/")?;
    let (host, _) = rest.split_once('/')?;
    Some(host)
}

fn forbidden(message: String) -> Response {
    forbidden_error(message).into_response()
}

fn forbidden_error(message: String) -> ApiError {
    ApiError {
        status: StatusCode::FORBIDDEN,
        body: wire::ApiError {
            error: message,
            kind: ErrorKind::InvalidInput,
        },
    }
}

async fn auth<S: Store>(
    State(state): State<ApiState<S>>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim();
    let peer = request
        .extensions()
        .get::<crate::pki::PeerIdentity>()
        .cloned();
    let mut cert_host = None;
    let principal = if given.is_empty() {
        let host = match peer {
            Some(crate::pki::PeerIdentity::Node(host)) => Some(host),
            // another controller forwarding an agent's request it verified
            Some(crate::pki::PeerIdentity::Controller(_)) => headers
                .get(FORWARDED_HOST_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            None => None,
        };
        match host {
            None => None,
            Some(host) => match state.core.node_principal(&host).await {
                Ok(Ok(p)) => {
                    cert_host = Some(host);
                    Some(p)
                }
                Ok(Err(why)) => return forbidden(why),
                Err(e) => return ApiError::from(e).into_response(),
            },
        }
    } else if constant_time_eq(given.as_bytes(), state.token.as_bytes()) {
        Some(Principal::controller())
    } else {
        match state.core.principal(given).await {
            Ok(p) => p,
            Err(e) => return ApiError::from(e).into_response(),
        }
    };
    if let Some(principal) = principal {
        // an unknown route is left to the 404 fallback
        if let Some(template) = request.extensions().get::<MatchedPath>() {
            let need = access::need(
                request.method(),
                template.as_str(),
                agent_host(request.uri().path()),
            );
            if let Err(why) = access::allow(&principal, &need) {
                return forbidden(why);
            }
        }
        request.extensions_mut().insert(principal);
        if let Some(host) = cert_host {
            request.extensions_mut().insert(CertHost(host));
        }
        return next.run(request).await;
    }
    if request.method() == axum::http::Method::GET && request.uri().path() == "/v1/pki/ca" {
        return next.run(request).await;
    }
    if !state.metrics_token_required
        && request.method() == axum::http::Method::GET
        && request.uri().path() == "/metrics"
    {
        return next.run(request).await;
    }
    if request.method() == axum::http::Method::POST && request.uri().path() == "/v1/sync" {
        match webhook_auth(&state.token, &headers, request).await {
            Ok(Some(request)) => return next.run(request).await,
            Ok(None) => {}
            Err(response) => return response,
        }
    }
    let body = wire::ApiError {
        error: "missing or wrong token; pass --token or BERTH_TOKEN (the controller's \
                is in <data-dir>/controller/token)"
            .into(),
        kind: ErrorKind::InvalidInput,
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(body),
    )
        .into_response()
}

/// Largest webhook payload read to check its signature (GitHub caps them at 25 MB).
pub const MAX_WEBHOOK_BYTES: usize = 25 << 20;

/// Accepts git hosting webhooks, which cannot send our bearer header: GitLab's
/// `X-Gitlab-Token` (the token itself), GitHub's and Gitea's `X-Hub-Signature-256:
/// sha256=<hex>` and Gitea's `X-Gitea-Signature: <hex>` (HMAC-SHA256 of the body with the
/// token as secret). `Ok(None)`: not a valid webhook.
async fn webhook_auth(
    token: &str,
    headers: &HeaderMap,
    request: Request,
) -> Result<Option<Request>, Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(t) = header("x-gitlab-token") {
        return Ok(constant_time_eq(t.trim().as_bytes(), token.as_bytes()).then_some(request));
    }
    let signature = header("x-hub-signature-256")
        .and_then(|s| s.strip_prefix("sha256="))
        .or_else(|| header("x-gitea-signature"))
        .map(|s| s.trim().to_ascii_lowercase());
    let Some(signature) = signature else {
        return Ok(None);
    };
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_WEBHOOK_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return Err(ApiError::new(
                ErrorKind::ResourceExhausted,
                format!("webhook payload larger than {MAX_WEBHOOK_BYTES} bytes"),
            )
            .into_response());
        }
    };
    let expected = hex::encode(crate::token::hmac_sha256(token.as_bytes(), &bytes));
    if !constant_time_eq(signature.as_bytes(), expected.as_bytes()) {
        return Ok(None);
    }
    Ok(Some(Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    )))
}

async fn timeout(request: Request, next: Next) -> Response {
    deadline(REQUEST_TIMEOUT, request, next).await
}

async fn sync_timeout(request: Request, next: Next) -> Response {
    deadline(SYNC_TIMEOUT, request, next).await
}

async fn deadline(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(r) => r,
        Err(_) => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: wire::ApiError {
                error: format!("request took longer than {limit:?}; retry"),
                kind: ErrorKind::Unavailable,
            },
        }
        .into_response(),
    }
}

/// A JSON body whose rejections (too large, malformed) answer in the API's error shape.
struct Body<T>(T);

impl<S2, T> axum::extract::FromRequest<S2> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S2: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S2) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => {
                let status = rejection.status();
                let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ErrorKind::ResourceExhausted
                } else {
                    ErrorKind::InvalidInput
                };
                let mut err = ApiError::new(kind, rejection.body_text());
                err.status = status;
                Err(err)
            }
        }
    }
}

async fn register<S: Store>(
    State(state): State<ApiState<S>>,
    principal: Option<axum::Extension<Principal>>,
    Body(reg): Body<Registration>,
) -> ApiResult<Json<wire::Registered>> {
    // a join token speaks for one host: the one it is bound to, or this one from now on
    if let Some(axum::Extension(p)) = principal
        && p.role == TokenRole::Join
        && let Err(why) = state.core.bind_token(&p.token, &reg.name).await
    {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            body: wire::ApiError {
                error: why,
                kind: ErrorKind::InvalidInput,
            },
        });
    }
    Ok(Json(state.core.register(reg).await?))
}

async fn create_token<S: Store>(
    State(state): State<ApiState<S>>,
    Body(req): Body<TokenRequest>,
) -> ApiResult<Json<IssuedToken>> {
    let mut issued = state.core.create_token(req).await?;
    issued.ca_fingerprint = state.pki.as_ref().map(|p| p.fingerprint());
    Ok(Json(issued))
}

fn pki<S: Store>(state: &ApiState<S>) -> ApiResult<&Arc<crate::pki::Pki>> {
    state.pki.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorKind::InvalidInput,
            "this controller serves plain HTTP: node certificates need TLS (berth controller \
             --tls, the default on a non-loopback --listen)"
                .into(),
        )
    })
}

/// `GET /v1/pki/ca`: the CA certificate (public: an agent pins its hash before trusting it).
async fn ca<S: Store>(State(state): State<ApiState<S>>) -> ApiResult<Response> {
    let pki = pki(&state)?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        pki.ca_pem().to_string(),
    )
        .into_response())
}

/// `POST /v1/agents/join`: a join token buys host `name` its node certificate. The token
/// binds to the host (as registration does); the host's certificates are honoured while
/// the token exists.
async fn join<S: Store>(
    State(state): State<ApiState<S>>,
    principal: Option<axum::Extension<Principal>>,
    Body(req): Body<wire::NodeCertRequest>,
) -> ApiResult<Json<wire::NodeCertificate>> {
    let pki = pki(&state)?.clone();
    let Some(axum::Extension(p)) = principal else {
        return Err(forbidden_error("joining needs a join token".into()));
    };
    if p.role != TokenRole::Join {
        return Err(forbidden_error(format!(
            "token {} has role {}; joining needs a join token (berth token create --role join)",
            p.token, p.role
        )));
    }
    if !berth_manifests::is_dns_label(&req.name) {
        return Err(ApiError::new(
            ErrorKind::InvalidInput,
            format!("host name {:?} must be a DNS label", req.name),
        ));
    }
    if let Err(why) = state.core.bind_token(&p.token, &req.name).await {
        return Err(forbidden_error(why));
    }
    let issued = pki.sign_node(&req.name, &req.csr, state.core.now_ms())?;
    state
        .core
        .record_node(&req.name, &p.token, issued.not_after_ms)
        .await?;
    tracing::info!(host = %req.name, token = %p.token, "host joined; node certificate issued");
    Ok(Json(issued))
}

/// `POST /v1/agents/{host}/certificate`: a new node certificate for a host that holds a
/// valid one (or its join token), for a new key.
async fn renew<S: Store>(
    State(state): State<ApiState<S>>,
    Path(host): Path<String>,
    principal: Option<axum::Extension<Principal>>,
    Body(req): Body<wire::NodeCertRequest>,
) -> ApiResult<Json<wire::NodeCertificate>> {
    let pki = pki(&state)?.clone();
    if req.name != host {
        return Err(ApiError::new(
            ErrorKind::InvalidInput,
            format!("the request names host {}, the path {host}", req.name),
        ));
    }
    let token = match principal {
        Some(axum::Extension(p)) if p.role == TokenRole::Join => p.token,
        _ => {
            return Err(forbidden_error(format!(
                "renewing host {host}'s certificate needs its node certificate or join token"
            )));
        }
    };
    let issued = pki.sign_node(&host, &req.csr, state.core.now_ms())?;
    state
        .core
        .record_node(&host, &token, issued.not_after_ms)
        .await?;
    tracing::debug!(%host, not_after_ms = issued.not_after_ms, "node certificate renewed");
    Ok(Json(issued))
}

async fn tokens<S: Store>(State(state): State<ApiState<S>>) -> ApiResult<Json<Vec<TokenInfo>>> {
    Ok(Json(state.core.tokens().await?))
}

async fn revoke_token<S: Store>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.core.revoke_token(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct AssignmentQuery {
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    wait: Option<u64>,
}

async fn assignment<S: Store>(
    State(state): State<ApiState<S>>,
    Path(host): Path<String>,
    Query(q): Query<AssignmentQuery>,
) -> ApiResult<Response> {
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let mut changes = state.core.assignment_changes();
    let mut shutdown = state.shutdown.clone();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        changes.borrow_and_update();
        // from the cache: a change wakes every long-poll, and most find their version as it
        // was (no store read, no decoding, no encoding)
        let current = state.core.assignment_json(&host).await?;
        let Some(current) = current else {
            return Err(CoreError::NoSuchHost { host }.into());
        };
        if q.after != Some(current.assignment.version) || *shutdown.borrow() {
            return Ok(answered(&state, &host, &current));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(answered(&state, &host, &current)),
            r = changes.changed() => if r.is_err() { return Ok(answered(&state, &host, &current)) },
            _ = shutdown.changed() => return Ok(answered(&state, &host, &current)),
        }
    }
}

/// An assignment answer leaves for `host`: it delivers its version (assignment latency).
/// The body is the stored JSON, encoded once when the assignment was written.
fn answered<S: Store>(
    state: &ApiState<S>,
    host: &str,
    current: &crate::state::CachedAssignment,
) -> Response {
    state.core.metrics().assignment_answered(
        host,
        current.assignment.version,
        tokio::time::Instant::now(),
    );
    (
        [(header::CONTENT_TYPE, "application/json")],
        current.json.clone(),
    )
        .into_response()
}

async fn report<S: Store>(
    State(state): State<ApiState<S>>,
    Path(host): Path<String>,
    Body(report): Body<HostReport>,
) -> ApiResult<StatusCode> {
    state.core.report(&host, report).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn status<S: Store>(
    State(state): State<ApiState<S>>,
) -> ApiResult<Json<wire::ClusterStatus>> {
    Ok(Json(state.core.status().await?))
}

async fn apps<S: Store>(State(state): State<ApiState<S>>) -> ApiResult<Json<Vec<wire::AppStatus>>> {
    Ok(Json(state.core.status().await?.apps))
}

async fn revisions<S: Store>(
    State(state): State<ApiState<S>>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<wire::RevisionInfo>>> {
    Ok(Json(state.core.revisions(&app).await?))
}

#[derive(Debug, Deserialize)]
struct RolloutQuery {
    #[serde(default)]
    revision: Option<u64>,
}

async fn rollout<S: Store>(
    State(state): State<ApiState<S>>,
    Path(app): Path<String>,
    Query(q): Query<RolloutQuery>,
) -> ApiResult<Json<wire::RolloutStatus>> {
    Ok(Json(state.core.rollout(&app, q.revision).await?))
}

async fn rollback<S: Store>(
    State(state): State<ApiState<S>>,
    Path(app): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<wire::RevisionInfo>> {
    let req: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(ErrorKind::InvalidInput, format!("rollback body: {e}")))?
    };
    Ok(Json(state.core.rollback(&app, req.to).await?))
}

async fn instances<S: Store>(
    State(state): State<ApiState<S>>,
) -> ApiResult<Json<Vec<wire::InstanceInfo>>> {
    Ok(Json(state.core.instances().await?))
}

async fn placement<S: Store>(
    State(state): State<ApiState<S>>,
) -> ApiResult<Json<wire::PlacementView>> {
    Ok(Json(state.core.placement().await?))
}

async fn sync<S: Store>(State(state): State<ApiState<S>>) -> ApiResult<Json<wire::SyncStatus>> {
    Ok(Json(state.core.sync().await?))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    after: Option<u64>,
}

async fn events<S: Store>(
    State(state): State<ApiState<S>>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    let follow = matches!(q.follow.as_deref(), Some("1" | "true" | "yes"));
    let rx = state.core.events().subscribe();
    let stored = state
        .core
        .events()
        .list(q.after.unwrap_or(0))
        .await
        .map_err(CoreError::from)?;
    let last = stored.last().map_or(q.after.unwrap_or(0), |(s, _)| *s);
    let lines: std::collections::VecDeque<bytes_line::Line> = stored
        .into_iter()
        .map(|(_, e)| bytes_line::line(&e))
        .collect();
    let stream = futures_util::stream::unfold(
        (lines, Some(rx), last, state.shutdown.clone(), follow),
        |(mut lines, mut rx, mut last, mut shutdown, follow)| async move {
            loop {
                if let Some(line) = lines.pop_front() {
                    return Some((
                        Ok::<_, std::io::Error>(line),
                        (lines, rx, last, shutdown, follow),
                    ));
                }
                if !follow || *shutdown.borrow() {
                    return None;
                }
                let receiver = rx.as_mut()?;
                tokio::select! {
                    got = receiver.recv() => match got {
                        Ok((seq, e)) if seq > last => {
                            last = seq;
                            lines.push_back(bytes_line::line(&e));
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => rx = None,
                    },
                    _ = shutdown.changed() => return None,
                }
            }
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

mod bytes_line {
    //! One NDJSON line.
    pub type Line = Vec<u8>;

    pub fn line(e: &berth_manifests::wire::Event) -> Line {
        let mut v = serde_json::to_vec(e).unwrap_or_default();
        v.push(b'\n');
        v
    }
}
