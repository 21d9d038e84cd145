//! Connecting to a backend, for both modes.
//!
//! Backends are on this host (an instance's address on the bridge, or a loopback port), so
//! a connect completes within a millisecond — unless its SYN was dropped because the app's
//! accept queue was full (busybox httpd listens with a backlog of 9; any app that is slow
//! to accept under a burst of new connections). The kernel retransmits a dropped SYN only
//! after TCP's initial RTO, 1 s (then 3 s): every such request would wait a second. That
//! was the proxied latency tail (p99 ≈ 1 s) of `scripts/bench-proxy`; a client connecting
//! straight to the app waits the same second, but in its own connect, which wrk does not
//! count as latency.
//!
//! So an attempt still pending after [`RESYN_AFTER`] is raced by a fresh one (a new SYN at
//! once), and again every [`RESYN_AFTER`], up to [`MAX_ATTEMPTS`] in all (then the pending
//! ones' own retransmits go on until the connect timeout); the first attempt to connect wins
//! and the others are dropped (closed; the app may see a connection that closes without a
//! request). A constant interval, not a doubling one: under a full queue, the slot that
//! frees goes to whichever SYN arrives next, so a request that has waited longest keeps the
//! same chance as a new one instead of falling behind (the tail is what this is about). An
//! attempt that fails (refused, unreachable) ends the connect with its error at once, so the
//! caller can try another backend.
//!
//! A connected backend socket never waits silently on a peer that is gone. An instance's
//! network namespace and veth are removed with it; a FIN or RST it sent while that happened
//! can be lost, and then the proxy's side of the connection stays ESTABLISHED: a request
//! written into it is retransmitted for ~15 minutes (`tcp_retries2`), and a request whose
//! response is awaited waits forever. So every backend socket gets TCP keepalive (first probe
//! after [`KEEPALIVE_IDLE`] of silence, then every second) and `TCP_USER_TIMEOUT`
//! ([`DEAD_PEER_AFTER`]): the kernel aborts the connection (`ETIMEDOUT`) once sent data or
//! keepalive probes stay unacknowledged that long. A live backend's kernel acknowledges at
//! once (it is on this host), however slow the app itself is, so this never cuts a slow
//! response; it only bounds how long a vanished peer can hold a request.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A connect attempt still pending after this is raced by another, and so on.
pub(crate) const RESYN_AFTER: Duration = Duration::from_millis(100);

/// Most connect attempts (sockets) one connect makes: bounds the SYN_SENT sockets a backend
/// that never answers costs while its connect timeout runs.
pub(crate) const MAX_ATTEMPTS: u32 = 8;

/// Silence on a backend connection after which the kernel sends keepalive probes.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(1);

/// Unacknowledged data or keepalive probes for this long abort a backend connection.
pub(crate) const DEAD_PEER_AFTER: Duration = Duration::from_secs(3);

/// Keepalive and `TCP_USER_TIMEOUT` on a backend socket (see the module comment).
fn detect_dead_peer(stream: &TcpStream) -> io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(stream, true)?;
    sockopt::set_tcp_keepidle(stream, KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(stream, Duration::from_secs(1))?;
    sockopt::set_tcp_keepcnt(stream, 3)?;
    let ms = u32::try_from(DEAD_PEER_AFTER.as_millis()).unwrap_or(u32::MAX);
    sockopt::set_tcp_user_timeout(stream, ms)?;
    Ok(())
}

/// A connected backend socket with its options set.
fn ready(stream: TcpStream) -> io::Result<TcpStream> {
    stream.set_nodelay(true)?;
    detect_dead_peer(&stream)?;
    Ok(stream)
}

/// Connects to `addr` within `timeout`, racing a fresh attempt against the pending ones
/// every [`RESYN_AFTER`] (at most [`MAX_ATTEMPTS`]). `TCP_NODELAY`, keepalive and
/// `TCP_USER_TIMEOUT` are set on the result.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let start = Instant::now();
    let deadline = start + timeout;
    // The first attempt runs in the caller's task; only one still pending after
    // RESYN_AFTER moves to a set of racing tasks (the common connect costs no spawn).
    let mut first = Box::pin(TcpStream::connect(addr));
    tokio::select! {
        r = &mut first => return ready(r?),
        () = tokio::time::sleep_until((start + RESYN_AFTER).min(deadline)) => {}
    }
    let mut attempts: JoinSet<io::Result<TcpStream>> = JoinSet::new();
    attempts.spawn(first);
    let mut started = 1;
    let mut next = start + RESYN_AFTER;
    loop {
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok(Ok(stream))) => return ready(stream),
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(io::Error::other(e)),
                // Not reached: the set is never empty here.
                None => return Err(io::Error::other("no connect attempt")),
            },
            () = tokio::time::sleep_until(next), if next < deadline && started < MAX_ATTEMPTS => {
                tracing::debug!(%addr, after_ms = (next - start).as_millis(), "connect pending: racing a fresh attempt");
                attempts.spawn(TcpStream::connect(addr));
                started += 1;
                next += RESYN_AFTER;
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out after {timeout:?}"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connect_fails_at_once() {
        // A port nobody listens on: bind, note the port, close.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let t = Instant::now();
        let e = connect(addr, Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn a_full_accept_queue_costs_far_less_than_the_syn_retransmit() {
        // A listener with a backlog of 1 that accepts nothing: further SYNs are dropped
        // once its queue is full, as with a busy busybox httpd.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = sock.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        // Fill the queue (its connects complete in the kernel without an accept).
        let mut held = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(50), TcpStream::connect(addr)).await
            {
                held.push(s);
            }
        }
        // Accept after 150 ms, making room: a plain connect would wait for the retransmitted
        // SYN at ~1 s; the racing one gets in with the next fresh attempt (at 200 ms).
        let accepter = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let mut kept = Vec::new();
            while let Ok(Ok((s, _))) =
                tokio::time::timeout(Duration::from_millis(300), listener.accept()).await
            {
                kept.push(s);
            }
            kept
        });
        let t = Instant::now();
        let s = connect(addr, Duration::from_secs(2)).await;
        let took = t.elapsed();
        assert!(s.is_ok(), "{s:?}");
        assert!(took < Duration::from_millis(800), "took {took:?}");
        drop(held);
        let _ = accepter.await;
    }
}
