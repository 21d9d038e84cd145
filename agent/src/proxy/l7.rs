//! HTTP/1.1 mode: hyper's server per client connection, the request forwarded through a
//! pooled keep-alive client to the picked backend, bodies streamed frame by frame both ways,
//! `Upgrade` (websocket) tunnelled, hop-by-hop headers dropped, `X-Forwarded-For`/`-Proto`
//! added.
//!
//! Failures are answered fast and logged (app, backend, address, cause), never by a hang:
//! - a bodiless request whose connect fails, and a bodiless idempotent request (GET, HEAD,
//!   OPTIONS, …; RFC 9110 §9.2.2) that fails before the response head — reset, closed, or a
//!   vanished backend aborted by the socket's dead-peer timeout (`connect.rs`) — is retried
//!   once on another backend;
//! - otherwise 502; no response head within `Timeouts::response_head`: 504.
//!
//! Each backend has its own connection pool (`Backend::http_client`, `upstream.rs`), dropped
//! when it leaves the rotation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::balance::InFlight;
use super::server::App;
use super::upstream::Reuse;

/// The pooled client to one backend.
pub(crate) type Client = super::upstream::Client;

/// Bodies in both directions: one the proxy streams (a client's request, a backend's
/// response), or one it makes (its own error replies). An enum, not a boxed trait object:
/// no allocation per request, no dynamic call per frame.
pub(crate) enum Body {
    Empty,
    Bytes(Option<Bytes>),
    /// Streamed; `ended` (a request body's) is told when the last frame has been taken,
    /// that is, sent upstream.
    Incoming {
        inner: Incoming,
        ended: Option<tokio::sync::oneshot::Sender<()>>,
    },
}

impl Body {
    fn text(s: String) -> Self {
        Self::Bytes(Some(Bytes::from(s)))
    }

    fn streamed(inner: Incoming) -> Self {
        Self::Incoming { inner, ended: None }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Incoming { inner, ended } => {
                let r = Pin::new(&mut *inner).poll_frame(cx);
                // hyper stops polling once `is_end_stream` says so, so the end is also
                // signalled after the last frame, not only on `None`.
                if ended.is_some()
                    && (matches!(r, Poll::Ready(None)) || (r.is_ready() && inner.is_end_stream()))
                    && let Some(tx) = ended.take()
                {
                    let _ = tx.send(());
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Bytes(b) => b.is_none(),
            Self::Incoming { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Incoming { inner, .. } => inner.size_hint(),
        }
    }
}

pub(crate) async fn serve(
    app: Weak<App>,
    listener: Arc<TcpListener>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(app) = app.upgrade() else { return };
        let _ = stream.set_nodelay(true);
        match super::workers::next() {
            None => {
                tokio::spawn(serve_conn(app, stream, peer));
            }
            // Moved to the worker's reactor (deregistered here, registered there).
            Some(worker) => match stream.into_std() {
                Ok(std) => {
                    worker.spawn(async move {
                        match tokio::net::TcpStream::from_std(std) {
                            Ok(stream) => serve_conn(app, stream, peer).await,
                            Err(e) => tracing::warn!(error = %e, "proxy worker could not take a connection"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proxy could not hand a connection to a worker")
                }
            },
        }
    }
}

/// Per client connection: requests in flight and since when it has been idle.
struct ConnState {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl ConnState {
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .idle_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        }
    }

    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }
}

async fn serve_conn(app: Arc<App>, stream: tokio::net::TcpStream, peer: SocketAddr) {
    app.metrics.conn_open();
    let state = Arc::new(ConnState {
        in_flight: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
    });
    let svc = {
        let app = Arc::clone(&app);
        let state = Arc::clone(&state);
        // The client's address as a header value, made once per connection.
        let client_ip = HeaderValue::from_str(&peer.ip().to_canonical().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        service_fn(move |req| handle(Arc::clone(&app), client_ip.clone(), Arc::clone(&state), req))
    };
    let t = app.cfg.timeouts;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(t.header_read)
        .keep_alive(true)
        // One buffer, one send: most responses are a small head and body, cheaper copied
        // together than gathered by `writev` from hyper's queue of buffers.
        .writev(false);
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut tick = tokio::time::interval((t.idle / 4).max(Duration::from_millis(10)));
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            _ = conn.as_mut() => break,
            _ = tick.tick() => {
                let idle = state.idle_for();
                if !closing && idle >= t.idle {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                } else if closing && idle >= t.idle * 2 {
                    break;
                }
            }
        }
    }
    app.metrics.conn_close();
}

/// Ends a request for the counters, the backend's in-flight count and the connection's idle
/// clock, whenever the response body ends or is dropped.
struct RequestGuard {
    app: Arc<App>,
    conn: Arc<ConnState>,
    start: Instant,
    backend: Option<InFlight>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.backend.take();
        self.app.metrics.finish(self.start.elapsed());
        self.conn.end();
    }
}

/// A response body that holds its request's guard until the last frame, and returns the
/// backend connection to its pool once the body has ended cleanly.
struct Tracked {
    inner: Body,
    guard: Option<RequestGuard>,
    reuse: Option<Reuse>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        let clean_end = match &r {
            Poll::Ready(None) => true,
            // hyper stops polling once `is_end_stream` says so.
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                this.reuse.take();
                this.guard.take();
                false
            }
            Poll::Pending => false,
        };
        if clean_end {
            if let Some(reuse) = this.reuse.take() {
                reuse.put_back();
            }
            this.guard.take();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn reply(status: StatusCode, body: String, guard: RequestGuard) -> Response<Tracked> {
    guard.app.metrics.status(status.as_u16());
    let mut r = Response::new(Tracked {
        inner: Body::text(body),
        guard: Some(guard),
        reuse: None,
    });
    *r.status_mut() = status;
    r
}

async fn handle(
    app: Arc<App>,
    client_ip: HeaderValue,
    conn: Arc<ConnState>,
    mut req: Request<Incoming>,
) -> Result<Response<Tracked>, Infallible> {
    app.metrics.start();
    conn.begin();
    let mut guard = RequestGuard {
        app: Arc::clone(&app),
        conn,
        start: Instant::now(),
        backend: None,
    };
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let bodiless = body.is_end_stream();
    // Safe to send again after a failure before the response head: the backend may have
    // processed it, but an idempotent request may be repeated (RFC 9110 §9.2.2).
    let repeatable = bodiless && !upgrade && parts.method.is_idempotent();
    if forward_headers(&mut parts.headers, &client_ip, upgrade).is_none() {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            "bad X-Forwarded-For header\n".into(),
            guard,
        ));
    }
    let mut body = Some(body);
    let mut failed_on: Option<String> = None;
    let t = app.cfg.timeouts;
    loop {
        // No backend (none yet, or the one that failed has left the rotation meanwhile):
        // held for one, as a first attempt is.
        let picked = match app.pool.pick(failed_on.as_deref()) {
            Some(p) => Some(p),
            None => app.hold_for_backend().await,
        };
        let Some(picked) = picked else {
            app.metrics.no_backend();
            if let Some(id) = &failed_on {
                tracing::warn!(app = %app.cfg.name, backend = %id, method = %parts.method, "no backend left to retry on: answering 503");
            }
            let mut r = reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no ready instance of app {}\n", app.cfg.name),
                guard,
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(app.live.retry_after_secs()),
            );
            return Ok(r);
        };
        let addr = picked.backend().addr();
        let id = picked.backend().id().to_owned();
        let client = picked
            .backend()
            .http_client(|| Client::new(addr, t.connect));
        guard.backend = Some(picked);
        // The response-head clock starts once the request body has been sent (at once for
        // a bodiless request): a slow upload is not cut, only a wait after it.
        let (upstream_body, sent_rx) = match body.take() {
            Some(inner) if !bodiless => {
                let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
                let b = Body::Incoming {
                    inner,
                    ended: Some(sent_tx),
                };
                (b, Some(sent_rx))
            }
            _ => (Body::Empty, None),
        };
        // Only a bodiless request's first attempt can be followed by another.
        let last_attempt = !bodiless || failed_on.is_some();
        let out = match upstream_request(&mut parts, addr, last_attempt, upstream_body) {
            Some(r) => r,
            None => {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    "bad request target\n".into(),
                    guard,
                ));
            }
        };
        let sent = Instant::now();
        let head_deadline = async {
            // A body that is dropped unfinished fails the request itself.
            let sent = match sent_rx {
                Some(rx) => rx.await.is_ok(),
                None => true,
            };
            if sent {
                tokio::time::sleep(t.response_head).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let res = tokio::select! {
            biased;
            r = client.request(out) => Some(r),
            () = head_deadline => None,
        };
        let err = match res {
            Some(Ok((resp, reuse))) => return Ok(respond(resp, reuse, guard, client_upgrade)),
            Some(Err(e)) => e,
            None => {
                app.metrics.upstream_error();
                tracing::warn!(app = %app.cfg.name, backend = %id, %addr, method = %parts.method, path = parts.uri.path(), timeout = ?t.response_head, "no response head in time: answering 504");
                return Ok(reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "backend {id} sent no response within {:?}\n",
                        t.response_head
                    ),
                    guard,
                ));
            }
        };
        let cause = error_chain(&err);
        let after_ms = sent.elapsed().as_millis();
        if failed_on.is_none() && (repeatable || (bodiless && err.is_connect())) {
            tracing::warn!(app = %app.cfg.name, backend = %id, %addr, method = %parts.method, path = parts.uri.path(), after_ms, error = %cause, "backend failed: retrying on another backend");
            guard.backend = None;
            failed_on = Some(id);
            continue;
        }
        app.metrics.upstream_error();
        tracing::warn!(app = %app.cfg.name, backend = %id, %addr, method = %parts.method, path = parts.uri.path(), after_ms, error = %cause, "backend failed: answering 502");
        return Ok(reply(
            StatusCode::BAD_GATEWAY,
            // The cause (addresses, errors) goes to the log, not to the client.
            format!("backend {id} failed\n"),
            guard,
        ));
    }
}

/// An error and its causes, `: `-separated (hyper-util's own message is only "client error
/// (SendRequest)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The client's headers as they go to a backend, made once per request: hop-by-hop headers
/// dropped, `X-Forwarded-For` (appended to) and `X-Forwarded-Proto` set.
fn forward_headers(h: &mut HeaderMap, client_ip: &HeaderValue, upgrade: bool) -> Option<()> {
    strip_hop_by_hop(h, upgrade);
    let xff = match h.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client_ip.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&v).ok()?
        }
        None => client_ip.clone(),
    };
    h.insert(&X_FORWARDED_FOR, xff);
    h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    Some(())
}

/// The request to `addr`, with the headers [`forward_headers`] made: taken when no attempt
/// can follow this one, copied when one can.
fn upstream_request(
    parts: &mut http::request::Parts,
    addr: SocketAddr,
    last_attempt: bool,
    body: Body,
) -> Option<Request<Body>> {
    // Origin-form (`/path?query`), as HTTP/1.1 sends it to a server (RFC 9112 §3.2.1).
    let uri: Uri = match parts.uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    let mut headers = if last_attempt {
        std::mem::take(&mut parts.headers)
    } else {
        parts.headers.clone()
    };
    // The client's Host goes through; an HTTP/1.0 client may have sent none.
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, HeaderValue::from_str(&addr.to_string()).ok()?);
    }
    let mut r = Request::new(body);
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = uri;
    *r.version_mut() = Version::HTTP_11;
    *r.headers_mut() = headers;
    Some(r)
}

fn respond(
    mut resp: Response<Incoming>,
    reuse: Option<Reuse>,
    guard: RequestGuard,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Tracked> {
    guard.app.metrics.status(resp.status().as_u16());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        let (parts, _) = resp.into_parts();
        tokio::spawn(async move {
            // The guard keeps the backend busy (drain waits) while the tunnel is open.
            let guard = guard;
            if let (Ok(c), Ok(b)) = tokio::join!(client_upgrade, backend_upgrade) {
                let mut c = TokioIo::new(c);
                let mut b = TokioIo::new(b);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
            }
            drop(guard);
        });
        return Response::from_parts(
            parts,
            Tracked {
                inner: Body::Empty,
                guard: None,
                reuse: None,
            },
        );
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(
        parts,
        Tracked {
            inner: Body::streamed(body),
            guard: Some(guard),
            reuse,
        },
    )
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE) && connection_has(h, b"upgrade")
}

/// Whether a `Connection` header of `h` lists `option` (case-insensitive).
pub(crate) fn connection_has(h: &HeaderMap, option: &[u8]) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(option))
    })
}

/// The headers that belong to one connection, not to the message (RFC 9110 §7.6.1),
/// besides those a `Connection` header names.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Where `name` is in [`HOP_BY_HOP`] (a match on the name's text: cheaper than comparing
/// it with each).
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "upgrade" => 1,
        "te" => 2,
        "trailer" => 3,
        "transfer-encoding" => 4,
        "keep-alive" => 5,
        "proxy-connection" => 6,
        _ => return None,
    })
}

/// Removes the hop-by-hop headers and those the Connection header names; keeps
/// `Connection: upgrade` + `Upgrade` when tunnelling.
///
/// Runs on every request and response, so it looks before it removes: one pass over the
/// names finds which of [`HOP_BY_HOP`] are there (most messages carry none, or only
/// `Connection`), and only those are looked up again.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let mut present = 0u8;
    for name in h.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0 {
        // Options of the Connection header that name other headers (`close` and
        // `keep-alive` are options, not names); rare, so nothing is allocated without one.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(header::CONNECTION) {
            for t in v.as_bytes().split(|&b| b == b',') {
                let t = t.trim_ascii();
                let option = t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"keep-alive")
                    || (keep_upgrade && t.eq_ignore_ascii_case(b"upgrade"));
                if !option && let Ok(name) = HeaderName::from_bytes(t) {
                    named.push(name);
                }
            }
        }
        for name in named {
            h.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        let keep = keep_upgrade && *name == header::UPGRADE;
        if present & (1 << i) != 0 && !keep {
            h.remove(name);
        }
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_and_upgrade_kept_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret, Upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        assert!(is_upgrade(&h));
        let mut up = h.clone();
        strip_hop_by_hop(&mut up, true);
        assert_eq!(up.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(up.get(header::UPGRADE).unwrap(), "websocket");
        assert!(up.get("x-secret").is_none() && up.get("keep-alive").is_none());
        strip_hop_by_hop(&mut h, false);
        assert!(h.get(header::CONNECTION).is_none() && h.get(header::UPGRADE).is_none());
        assert_eq!(h.get("x-app").unwrap(), "kept");
    }

    #[test]
    fn every_hop_by_hop_header_is_removed_with_the_ones_connection_names_in_any_case() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" X-Trace-Hop ,, TE"),
        );
        h.insert("x-trace-hop", HeaderValue::from_static("1"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRAILER, HeaderValue::from_static("x-sum"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert(header::ETAG, HeaderValue::from_static("\"x\""));
        assert!(!is_upgrade(&h), "no `upgrade` option: not an upgrade");
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "etag"]);
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app.example"));
        h.append("x-many", HeaderValue::from_static("1"));
        h.append("x-many", HeaderValue::from_static("2"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn the_hop_by_hop_index_matches_the_table() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::HOST), None);
        assert_eq!(hop_by_hop_index(&HeaderName::from_static("x-te")), None);
    }

    #[test]
    fn connection_options_are_matched_as_whole_tokens() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Close"),
        );
        assert!(connection_has(&h, b"close"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("closed, x-close"),
        );
        assert!(!connection_has(&h, b"close"));
        assert!(!connection_has(&HeaderMap::new(), b"close"));
    }

    #[tokio::test]
    async fn a_made_body_is_one_frame_and_its_exact_size() {
        use http_body_util::BodyExt;
        let b = Body::text("no ready instance\n".into());
        assert_eq!(b.size_hint().exact(), Some(18));
        assert!(!b.is_end_stream());
        let got = b.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"no ready instance\n");
        let e = Body::Empty;
        assert!(e.is_end_stream());
        assert_eq!(e.size_hint().exact(), Some(0));
        assert!(e.collect().await.unwrap().to_bytes().is_empty());
    }
}
