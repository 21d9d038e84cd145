//! The controller's accept loop (hyper 1's HTTP/1 server under the axum router, instead of
//! `axum::serve`, which sets no timer and so no header deadline): a client must send its
//! request headers within [`Limits::header_read_timeout`] (slowloris), one peer address may
//! hold at most [`Limits::max_connections_per_peer`] connections (more are closed at once),
//! and shutdown lets every connection finish its request (long-polls and event streams end
//! at shutdown on their own). The mTLS handshake of the multi-host issue belongs here too.
//!
//! Owns the listening socket and the connections; routing and auth are `api.rs`'s.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest time to receive a request's headers (default 30 s, hyper's).
    pub header_read_timeout: Duration,
    /// Most open connections from one IP address (default 1024; a load test that runs
    /// thousands of simulated agents on one address needs more).
    pub max_connections_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            max_connections_per_peer: 1024,
        }
    }
}

/// Open connections per peer address.
type Peers = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One counted connection; uncounted on drop.
struct PeerSlot {
    peers: Peers,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(peers: &Peers, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut map = peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = map.entry(ip).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(PeerSlot {
            peers: peers.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = map.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true, then waits for the open
/// connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let peers: Peers = Arc::default();
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // out of file descriptors and the like: wait instead of spinning
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = PeerSlot::take(&peers, peer.ip(), limits.max_connections_per_peer) else {
            tracing::warn!(
                %peer,
                max = limits.max_connections_per_peer,
                "refused a connection: the peer holds the most connections allowed"
            );
            drop(stream);
            continue;
        };
        let app = app.clone();
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let mut app = app.clone();
                async move {
                    let response =
                        tower_service::Service::call(&mut app, req.map(axum::body::Body::new))
                            .await;
                    Ok::<_, Infallible>(response.unwrap_or_else(|e| match e {}))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let stopping = tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    false
                }
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopping {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}
