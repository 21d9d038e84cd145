//! The HTTP/1.1 client to one backend: hyper's connection API with a small pool of idle
//! keep-alive connections, made for what the proxy does on every request.
//!
//! hyper-util's general client (`client::legacy`) costs more per request than the proxy can
//! afford: a pool keyed by scheme and authority behind a lock, a spawned connect task, an
//! extra task per response to watch the connection become ready again, and two socket
//! address lookups per connection for metadata nobody reads. Most backends close the
//! connection after every response (busybox httpd, anything answering HTTP/1.0 or with
//! `Connection: close`), so that cost is paid on every request; `scripts/bench-proxy`
//! measures it against nginx and HAProxy doing the same job.
//!
//! Here a request takes the most recently returned idle connection (LIFO: the warmest, and
//! the stale ones age out at the bottom), or connects ([`super::connect::connect`]) and
//! spawns the connection's task. A connection goes back to the pool only after its
//! response body has ended cleanly and only when the response allows it (HTTP/1.1, no
//! `Connection: close`, not an upgrade). A request that a pooled connection did not take
//! (closed by the backend meanwhile; hyper hands the request back unsent) goes on the next
//! one, or a fresh one: never an error for the client.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::connect::{BackendStream, connect};
use super::l7::Body;

/// An idle connection older than this is closed instead of reused.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most idle connections kept per backend.
pub(crate) const MAX_IDLE: usize = 256;

/// The client to one backend; clones share the pool.
#[derive(Clone)]
pub(crate) struct Client(Arc<Inner>);

struct Inner {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

/// Why a request got no response head.
#[derive(Debug)]
pub(crate) enum Error {
    /// No connection: refused, unreachable, timed out.
    Connect(SocketAddr, io::Error),
    /// Connected, then failed before a response head (reset, closed, malformed).
    Request(SocketAddr, hyper::Error),
}

impl Error {
    /// Nothing reached the backend.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(..))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(addr, _) => write!(f, "connecting to {addr}"),
            Self::Request(addr, _) => write!(f, "request to {addr}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(_, e) => Some(e),
            Self::Request(_, e) => Some(e),
        }
    }
}

/// Returns a connection to its pool when the response it carried has ended cleanly (see
/// [`Reuse::put_back`]); dropped otherwise, which lets hyper close the connection.
pub(crate) struct Reuse {
    tx: http1::SendRequest<Body>,
    pool: Weak<Inner>,
}

impl Reuse {
    /// Back to the pool, unless the pool is gone (backend left the rotation) or full.
    pub(crate) fn put_back(self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        if self.tx.is_closed() {
            return;
        }
        let mut idle = pool.lock_idle();
        if idle.len() >= MAX_IDLE {
            return;
        }
        idle.push(Idle {
            tx: self.tx,
            since: Instant::now(),
        });
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.0.addr)
            .field("idle", &self.0.lock_idle().len())
            .finish()
    }
}

impl Client {
    pub(crate) fn new(addr: SocketAddr, connect_timeout: Duration) -> Self {
        Self(Arc::new(Inner {
            addr,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Sends `req` (origin-form URI, `Host` set) and waits for the response head. The
    /// [`Reuse`] is there when the connection may carry another request once this
    /// response's body has ended.
    pub(crate) async fn request(
        &self,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<Reuse>), Error> {
        let addr = self.0.addr;
        while let Some(mut tx) = self.checkout() {
            // Ready at once unless it is still finishing the previous exchange, or closed.
            if tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.finish(tx, resp)),
                Err(mut e) => match e.take_message() {
                    // Not sent (the connection closed meanwhile): try the next one.
                    Some(r) => req = r,
                    None => return Err(Error::Request(addr, e.into_error())),
                },
            }
        }
        let stream = connect(addr, self.0.connect_timeout)
            .await
            .map_err(|e| Error::Connect(addr, e))?;
        let (mut tx, conn) = http1::Builder::new()
            // A request head (and a small body) goes out copied into one buffer: cheaper
            // than hyper's gathered write for what the proxy mostly sends.
            .writev(false)
            .handshake(TokioIo::new(BackendStream::new(stream)))
            .await
            .map_err(|e| Error::Request(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "backend connection ended with an error");
            }
        });
        match tx.send_request(req).await {
            Ok(resp) => Ok(self.finish(tx, resp)),
            Err(e) => Err(Error::Request(addr, e)),
        }
    }

    /// The newest idle connection still young enough; older ones are dropped (closed).
    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.0.lock_idle();
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < IDLE_TIMEOUT && !c.tx.is_closed() {
                return Some(c.tx);
            }
        }
        None
    }

    fn finish(
        &self,
        tx: http1::SendRequest<Body>,
        resp: Response<Incoming>,
    ) -> (Response<Incoming>, Option<Reuse>) {
        let reuse = reusable(&resp).then(|| Reuse {
            tx,
            pool: Arc::downgrade(&self.0),
        });
        // A response without a body (204, 304, HEAD) is over with its head: nobody would
        // poll its body to the end, so the connection goes back now.
        if resp.body().is_end_stream()
            && let Some(reuse) = reuse
        {
            reuse.put_back();
            return (resp, None);
        }
        (resp, reuse)
    }

    /// Idle connections held (tests).
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.0.lock_idle().len()
    }
}

impl Inner {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether the connection may carry another request after this response (RFC 9112 §9.3).
fn reusable(resp: &Response<Incoming>) -> bool {
    resp.version() == Version::HTTP_11
        && !resp.status().is_informational()
        && !super::l7::connection_has(resp.headers(), b"close")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn get(host: SocketAddr) -> Request<Body> {
        let mut r = Request::new(Body::Empty);
        *r.uri_mut() = "/x".parse().unwrap();
        r.headers_mut()
            .insert(header::HOST, host.to_string().parse().unwrap());
        r
    }

    /// A backend answering every request on a connection with `response`, counting
    /// connections; closes after the first response when `close_after_one`.
    async fn backend(
        response: &'static [u8],
        close_after_one: bool,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&conns);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = Vec::new();
                    loop {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        have.extend_from_slice(&buf[..n]);
                        while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                            have.drain(..end + 4);
                            if s.write_all(response).await.is_err() {
                                return;
                            }
                            if close_after_one {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    async fn roundtrip(c: &Client, addr: SocketAddr) -> Option<Reuse> {
        let (resp, reuse) = c.request(get(addr)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok\n");
        reuse
    }

    #[tokio::test]
    async fn keep_alive_connections_are_reused_after_their_body_ends() {
        let (addr, conns) =
            backend(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n", false).await;
        let c = Client::new(addr, Duration::from_secs(2));
        for _ in 0..5 {
            let reuse = roundtrip(&c, addr).await;
            reuse.expect("an HTTP/1.1 keep-alive response").put_back();
            assert_eq!(c.idle(), 1);
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_without_a_body_returns_its_connection_at_once() {
        let (addr, conns) = backend(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
        let c = Client::new(addr, Duration::from_secs(2));
        for _ in 0..3 {
            let (resp, reuse) = c.request(get(addr)).await.unwrap();
            assert_eq!(resp.status(), 204);
            assert!(reuse.is_none(), "already back in the pool");
            assert_eq!(c.idle(), 1);
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn closing_responses_are_never_pooled() {
        for resp in [
            &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nok\n"[..],
            &b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nok\n"[..],
        ] {
            let (addr, conns) = backend(resp, true).await;
            let c = Client::new(addr, Duration::from_secs(2));
            for _ in 0..3 {
                assert!(roundtrip(&c, addr).await.is_none());
            }
            assert_eq!(c.idle(), 0);
            assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 3);
        }
    }

    #[tokio::test]
    async fn a_pooled_connection_the_backend_closed_is_skipped_not_an_error() {
        // Claims keep-alive, then closes after each response anyway.
        let (addr, conns) =
            backend(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n", true).await;
        let c = Client::new(addr, Duration::from_secs(2));
        for _ in 0..4 {
            if let Some(r) = roundtrip(&c, addr).await {
                r.put_back();
            }
            // Let the connection's task see the close.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error_naming_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = Client::new(addr, Duration::from_secs(2));
        let Err(e) = c.request(get(addr)).await else {
            panic!("a request to a closed port succeeded")
        };
        assert!(e.is_connect());
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }

    #[tokio::test]
    async fn a_dropped_pool_takes_no_connection_back() {
        let (addr, _) = backend(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n", false).await;
        let c = Client::new(addr, Duration::from_secs(2));
        let reuse = roundtrip(&c, addr).await.unwrap();
        let weak = Arc::downgrade(&c.0);
        drop(c);
        reuse.put_back();
        assert!(weak.upgrade().is_none());
    }
}
