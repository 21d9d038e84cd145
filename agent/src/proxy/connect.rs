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
//!
//! The HTTP mode sets those four options only on a connection that has waited
//! [`ARM_AFTER`] for bytes ([`BackendStream`]): most backend connections carry one request
//! answered within milliseconds, and four system calls each were a measurable part of the
//! proxy's cost per request. The kernel's abort counts from the last byte or ACK received,
//! not from when the options were set, so a vanished peer is still given up on
//! [`DEAD_PEER_AFTER`] (plus at most a probe interval) after it fell silent.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

/// A backend connection that has waited this long for bytes gets its dead-peer options.
pub(crate) const ARM_AFTER: Duration = Duration::from_secs(1);

/// Keepalive and `TCP_USER_TIMEOUT` on a backend socket (see the module comment).
pub(crate) fn detect_dead_peer(stream: &TcpStream) -> io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(stream, true)?;
    sockopt::set_tcp_keepidle(stream, KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(stream, Duration::from_secs(1))?;
    // No TCP_KEEPCNT: with TCP_USER_TIMEOUT set, the kernel ends the connection by that
    // timeout, not by a count of probes (tcp(7); `tcp_keepalive_timer`).
    let ms = u32::try_from(DEAD_PEER_AFTER.as_millis()).unwrap_or(u32::MAX);
    sockopt::set_tcp_user_timeout(stream, ms)?;
    Ok(())
}

/// A backend socket of the HTTP mode: [`detect_dead_peer`] runs once a read has been
/// waiting [`ARM_AFTER`] (for a response, or on an idle pooled connection, which hyper
/// keeps reading to notice a close), and `TCP_NODELAY` is set before its second write.
///
/// Nagle's algorithm holds back a small segment only while sent data is unacknowledged,
/// so it never delays a connection's first write; most backend connections carry one
/// request, written at once (head and small body in one buffer), and are closed after the
/// response. From the second write on (a streamed body, the next request on a pooled
/// connection, a tunnel) the option is set, once.
#[derive(Debug)]
pub(crate) struct BackendStream {
    stream: TcpStream,
    arm: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    /// Writes that have gone out, counted up to 2.
    writes: u8,
}

impl BackendStream {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            arm: None,
            armed: false,
            writes: 0,
        }
    }

    /// One write through `write`: `TCP_NODELAY` set first if it is the second, counted if
    /// it sent something.
    fn counted_write(
        &mut self,
        write: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.writes == 1
            && let Err(e) = self.stream.set_nodelay(true)
        {
            return Poll::Ready(Err(e));
        }
        let r = write(Pin::new(&mut self.stream));
        if matches!(r, Poll::Ready(Ok(_))) && self.writes < 2 {
            self.writes += 1;
        }
        r
    }

    /// Whether the dead-peer options are set (tests).
    #[cfg(test)]
    pub(crate) fn armed(&self) -> bool {
        self.armed
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if r.is_pending() && !this.armed {
            let arm = this
                .arm
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(ARM_AFTER)));
            if arm.as_mut().poll(cx).is_ready() {
                this.armed = true;
                this.arm = None;
                if let Err(e) = detect_dead_peer(&this.stream) {
                    return Poll::Ready(Err(e));
                }
            }
        }
        r
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .counted_write(|stream| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .counted_write(|stream| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Connects to `addr` within `timeout`, racing a fresh attempt against the pending ones
/// every [`RESYN_AFTER`] (at most [`MAX_ATTEMPTS`]). Socket options are the caller's:
/// `TCP_NODELAY` and the dead-peer ones ([`detect_dead_peer`], [`BackendStream`]).
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let start = Instant::now();
    let deadline = start + timeout;
    // The first attempt runs in the caller's task; only one still pending after
    // RESYN_AFTER moves to a set of racing tasks (the common connect costs no spawn).
    let mut first = Box::pin(TcpStream::connect(addr));
    // A backend on this host has answered the SYN by the time the reactor has looked once
    // (the kernel handles a loopback or veth handshake within the connect call), so the
    // task yields once before it arms a timer: the racing timer would be the runtime's
    // earliest, and arming that wakes the runtime's driver, a system call per connect.
    for yielded in [false, true] {
        if yielded {
            tokio::task::yield_now().await;
        }
        if let Poll::Ready(r) =
            std::future::poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx))).await
        {
            return r;
        }
    }
    tokio::select! {
        r = &mut first => return r,
        () = tokio::time::sleep_until((start + RESYN_AFTER).min(deadline)) => {}
    }
    let mut attempts: JoinSet<io::Result<TcpStream>> = JoinSet::new();
    attempts.spawn(first);
    let mut started = 1;
    let mut next = start + RESYN_AFTER;
    loop {
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok(Ok(stream))) => return Ok(stream),
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

    #[tokio::test(start_paused = true)]
    async fn a_read_waiting_past_arm_after_sets_the_dead_peer_options() {
        use rustix::net::sockopt;
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = connect(addr, Duration::from_secs(2)).await.unwrap();
        let (_peer, _) = l.accept().await.unwrap();
        assert!(!sockopt::socket_keepalive(&s).unwrap());
        let mut b = BackendStream::new(s);
        let mut buf = [0u8; 1];
        // Nothing to read: the read waits, and the options come after ARM_AFTER.
        let r = tokio::time::timeout(ARM_AFTER / 2, b.read(&mut buf)).await;
        assert!(r.is_err() && !b.armed());
        let r = tokio::time::timeout(ARM_AFTER, b.read(&mut buf)).await;
        assert!(r.is_err() && b.armed());
        assert!(sockopt::socket_keepalive(&b.stream).unwrap());
        assert_eq!(sockopt::tcp_keepidle(&b.stream).unwrap(), KEEPALIVE_IDLE);
        assert_eq!(
            u128::from(sockopt::tcp_user_timeout(&b.stream).unwrap()),
            DEAD_PEER_AFTER.as_millis()
        );
    }

    #[tokio::test]
    async fn nodelay_is_set_before_the_second_write_only() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = connect(l.local_addr().unwrap(), Duration::from_secs(2))
            .await
            .unwrap();
        let (_peer, _) = l.accept().await.unwrap();
        let mut b = BackendStream::new(s);
        assert!(!b.stream.nodelay().unwrap());
        b.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(
            !b.stream.nodelay().unwrap(),
            "a first write is never held back"
        );
        b.write_all(b"x").await.unwrap();
        assert!(b.stream.nodelay().unwrap());
        let bufs = [io::IoSlice::new(b"y"), io::IoSlice::new(b"z")];
        assert!(b.write_vectored(&bufs).await.unwrap() >= 1);
        assert!(b.stream.nodelay().unwrap() && b.writes == 2);
    }

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
