#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]
//! The proxy against real loopback backends: swap under load, least in-flight, streaming,
//! upgrades, TCP mode, timeouts, 503 and hold, forwarded headers, counters.

mod proxy_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use berth_agent::proxy::{AppConfig, DrainOutcome, Proxy, Timeouts};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use proxy_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn http_app(proxy: &Proxy, name: &str) -> SocketAddr {
    proxy.set_app(AppConfig::http(name, local())).await.unwrap()
}

/// Runs `n` client loops against `addr` until `stop`; returns (ok, failed) counts.
fn load(
    addr: SocketAddr,
    n: usize,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
            tasks.push(tokio::spawn(async move {
                let c = client();
                let mut failed = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match get(&c, addr, path).await {
                        Ok((StatusCode::OK, _)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failed.push(format!("{other:?}")),
                    }
                }
                failed
            }));
        }
        let mut failed = Vec::new();
        for t in tasks {
            failed.extend(t.await.unwrap());
        }
        (ok.load(Ordering::Relaxed), failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_backends_with_drain_fails_no_request() {
    swap_with_drain_under_load().await;
}

/// A rollout step under load: 0 failed requests, the old backend serves nothing after drain.
async fn swap_with_drain_under_load() {
    let proxy = Proxy::new();
    let addr = http_app(&proxy, "web").await;
    let old = TestBackend::start("old").await;
    proxy.add_backend("web", "old", old.addr).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(addr, 4, "/slow?ms=5", Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A rollout step: the new instance is ready, the old one leaves rotation, drains, stops.
    let new = TestBackend::start("new").await;
    proxy.add_backend("web", "new", new.addr).unwrap();
    proxy.remove_backend("web", "old").unwrap();
    let outcome = proxy
        .drain("web", "old", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(outcome, DrainOutcome::Drained);
    let old_served = old.served.load(Ordering::Relaxed);
    old.stop();

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = clients.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert!(old_served > 0 && new.served.load(Ordering::Relaxed) > 0);
    assert_eq!(
        old.served.load(Ordering::Relaxed),
        old_served,
        "old served after drain"
    );
    let snap = proxy.snapshot()["web"].clone();
    assert_eq!(snap.by_code.get(&200).copied(), Some(ok));
    assert_eq!(snap.in_flight, 0);
    eprintln!("swap under load: {ok} requests, 0 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_in_flight_picks_the_idle_backend() {
    let proxy = Arc::new(Proxy::new());
    let addr = http_app(&proxy, "web").await;
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    proxy.add_backend("web", "a", a.addr).unwrap();
    proxy.add_backend("web", "b", b.addr).unwrap();

    let slow = tokio::spawn(async move { get(&client(), addr, "/slow?ms=1500").await.unwrap().1 });
    // Wait until the slow request is in flight on one backend.
    for _ in 0..100 {
        if proxy.snapshot()["web"].in_flight == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = proxy.state()[0]
        .backends
        .iter()
        .find(|b| b.in_flight == 1)
        .map(|b| b.id.clone())
        .expect("one backend busy");
    let c = client();
    for _ in 0..6 {
        let (_, who) = get(&c, addr, "/id").await.unwrap();
        assert_ne!(who, busy, "picked the busy backend");
    }
    assert_eq!(slow.await.unwrap(), busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_with_bounded_memory() {
    let proxy = Proxy::new();
    let addr = http_app(&proxy, "web").await;
    let be = TestBackend::start("be").await;
    proxy.add_backend("web", "be", be.addr).unwrap();
    let c = client();
    let size: u64 = 256 << 20;

    let rss_before = status_kib("VmRSS");
    reset_peak_rss();
    // Upload: the backend counts what arrives.
    let req = Request::post(format!("http://{addr}/count"))
        .body(Generated::new(size).boxed_unsync())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, size.to_string());
    // Download.
    let req = Request::get(format!("http://{addr}/big?n={size}"))
        .body(empty())
        .unwrap();
    let mut body = c.request(req).await.unwrap().into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        n += f.unwrap().into_data().map(|d| d.len() as u64).unwrap_or(0);
    }
    assert_eq!(n, size);
    // Both at once: the backend echoes while the upload goes on.
    let req = Request::post(format!("http://{addr}/echo"))
        .body(Generated::new(size / 4).boxed_unsync())
        .unwrap();
    let mut body = c.request(req).await.unwrap().into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        n += f.unwrap().into_data().map(|d| d.len() as u64).unwrap_or(0);
    }
    assert_eq!(n, size / 4);
    let peak_growth_mib = status_kib("VmHWM").saturating_sub(rss_before) / 1024;
    eprintln!("streamed 2 x 256 MiB + 64 MiB echo; peak RSS growth {peak_growth_mib} MiB");
    // Client, proxy and backend share this process: buffering any body whole would add
    // at least 256 MiB.
    assert!(peak_growth_mib < 64, "peak RSS grew {peak_growth_mib} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    websocket_tunnel().await;
}

/// A websocket upgrade tunnelled both ways, holding its backend for drain until it closes.
async fn websocket_tunnel() {
    let proxy = Proxy::new();
    let addr = http_app(&proxy, "web").await;
    let be = TestBackend::start("be").await;
    proxy.add_backend("web", "be", be.addr).unwrap();

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    for msg in [&b"ping"[..], b"hello through the tunnel"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    // The tunnel keeps the backend busy for drain.
    assert_eq!(proxy.snapshot()["web"].in_flight, 1);
    drop(s);
    proxy.remove_backend("web", "be").unwrap();
    assert_eq!(
        proxy
            .drain("web", "be", Duration::from_secs(5))
            .await
            .unwrap(),
        DrainOutcome::Drained
    );
    // The app's count follows the backend's a moment later (the request guard's drop).
    for _ in 0..100 {
        if proxy.snapshot()["web"].in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.snapshot()["web"].in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_echoes_through_the_least_busy_backend() {
    let proxy = Proxy::new();
    let addr = proxy.set_app(AppConfig::tcp("db", local())).await.unwrap();
    let (be, _t) = tcp_echo().await;
    // A backend that refuses connections: the connection is retried on the live one.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    proxy.add_backend("db", "dead", dead).unwrap();
    proxy.add_backend("db", "live", be).unwrap();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"not http at all\n").await.unwrap();
        let mut back = [0u8; 16];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"not http at all\n");
    }
    let snap = proxy.snapshot()["db"].clone();
    assert_eq!(snap.requests_total, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_client_is_cut_by_the_header_timeout() {
    let proxy = Proxy::new();
    let cfg = AppConfig {
        timeouts: Timeouts {
            header_read: Duration::from_millis(300),
            ..Timeouts::default()
        },
        ..AppConfig::http("web", local())
    };
    let addr = proxy.set_app(cfg).await.unwrap();
    let be = TestBackend::start("be").await;
    proxy.add_backend("web", "be", be.addr).unwrap();

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /id HTTP/1.1\r\nHost: w").await.unwrap();
    let t0 = tokio::time::Instant::now();
    // Trickle a byte every 100 ms: never a complete header.
    let cut = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 256];
        loop {
            if s.write_all(b"w").await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(_)) => {} // e.g. a 408 before the close
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "slow-loris connection was never closed");
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(be.served.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let proxy = Proxy::new();
    let cfg = AppConfig {
        timeouts: Timeouts {
            idle: Duration::from_millis(200),
            ..Timeouts::default()
        },
        ..AppConfig::http("web", local())
    };
    let addr = proxy.set_app(cfg).await.unwrap();
    let be = TestBackend::start("be").await;
    proxy.add_backend("web", "be", be.addr).unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /id HTTP/1.1\r\nHost: w\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_answers_503_with_retry_after_or_holds_until_one_is_added() {
    let calls = Arc::new(AtomicU64::new(0));
    let c2 = Arc::clone(&calls);
    let proxy = Arc::new(Proxy::with_no_backend_hook(Arc::new(move |app: &str| {
        assert_eq!(app, "web");
        c2.fetch_add(1, Ordering::Relaxed);
    })));
    let addr = http_app(&proxy, "web").await;
    let c = client();
    let req = Request::get(format!("http://{addr}/id"))
        .body(empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(calls.load(Ordering::Relaxed), 1);

    // With a hold, the request waits for the instance the hook would start.
    let held = AppConfig {
        hold: Duration::from_secs(5),
        ..AppConfig::http("web", addr)
    };
    let addr = proxy.set_app(held).await.unwrap();
    let be = TestBackend::start("cold").await;
    let p2 = Arc::clone(&proxy);
    let be_addr = be.addr;
    tokio::spawn(async move {
        // The held request shows as `waiting` (the autoscaler's scale-from-zero signal).
        let mut seen = false;
        for _ in 0..100 {
            if p2.snapshot()["web"].waiting == 1 {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(seen, "held request not counted as waiting");
        p2.add_backend("web", "cold", be_addr).unwrap();
    });
    let (status, who) = get(&c, addr, "/id").await.unwrap();
    assert_eq!((status, who.as_str()), (StatusCode::OK, "cold"));
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    let snap = proxy.snapshot()["web"].clone();
    assert_eq!(snap.by_code.get(&200), Some(&1));
    assert_eq!(snap.waiting, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_added_and_hop_by_hop_dropped() {
    let proxy = Proxy::new();
    let addr = http_app(&proxy, "web").await;
    let be = TestBackend::start("be").await;
    proxy.add_backend("web", "be", be.addr).unwrap();
    let c = client();
    let req = Request::get(format!("http://{addr}/headers"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .body(empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "xff=203.0.113.9, 127.0.0.1;proto=http;conn=");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_retried_elsewhere_for_bodiless_requests() {
    let proxy = Proxy::new();
    let addr = http_app(&proxy, "web").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let be = TestBackend::start("live").await;
    proxy.add_backend("web", "dead", dead).unwrap();
    proxy.add_backend("web", "live", be.addr).unwrap();
    let c = client();
    for _ in 0..6 {
        let (status, who) = get(&c, addr, "/id").await.unwrap();
        assert_eq!((status, who.as_str()), (StatusCode::OK, "live"));
    }
    // With only the dead one left: 502, counted as an upstream error.
    proxy.remove_backend("web", "live").unwrap();
    let (status, _) = get(&c, addr, "/id").await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(proxy.snapshot()["web"].upstream_errors_total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_overhead_against_direct_on_loopback() {
    // A figure for the notes, not a gate: sequential keep-alive GETs, direct vs proxied.
    let proxy = Proxy::new();
    let addr = http_app(&proxy, "web").await;
    let be = TestBackend::start("be").await;
    proxy.add_backend("web", "be", be.addr).unwrap();
    let c = client();
    let n = 2000;
    let mut times = Vec::new();
    for target in [be.addr, addr, be.addr, addr] {
        let t0 = tokio::time::Instant::now();
        for _ in 0..n {
            get(&c, target, "/id").await.unwrap();
        }
        times.push(t0.elapsed() / n);
    }
    eprintln!(
        "sequential GET: direct {:?} / {:?}, proxied {:?} / {:?} per request",
        times[0], times[2], times[1], times[3]
    );
}

/// A request body of `frames` frames of 1 KiB, one every 100 ms.
struct SlowUpload {
    frames: u32,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for SlowUpload {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        if self.frames == 0 {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(std::future::Future::poll(self.sleep.as_mut(), cx));
        self.frames -= 1;
        let next = tokio::time::Instant::now() + Duration::from_millis(100);
        self.sleep.as_mut().reset(next);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes::Bytes::from(
            vec![b'u'; 1024],
        )))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_answer_gets_504_but_a_slow_upload_is_not_cut() {
    let proxy = Proxy::new();
    let cfg = AppConfig {
        timeouts: Timeouts {
            response_head: Duration::from_millis(300),
            ..Timeouts::default()
        },
        ..AppConfig::http("web", local())
    };
    let addr = proxy.set_app(cfg).await.unwrap();
    let be = TestBackend::start("slow").await;
    proxy.add_backend("web", "slow", be.addr).unwrap();
    let c = client();
    // No response head within 300 ms: 504, fast, counted.
    let t = tokio::time::Instant::now();
    let (status, body) = get(&c, addr, "/slow?ms=3000").await.unwrap();
    let took = t.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("slow"), "names the backend: {body}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(proxy.snapshot()["web"].upstream_errors_total, 1);
    // An upload of 600 ms: the clock starts when its body has been sent.
    let upload = SlowUpload {
        frames: 6,
        sleep: Box::pin(tokio::time::sleep(Duration::from_millis(100))),
    };
    let req = Request::post(format!("http://{addr}/count"))
        .body(upload.boxed_unsync())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let n = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&n[..], b"6144");
}

/// `berth proxy` serves client connections on one single-threaded runtime per core
/// (`proxy::workers`): requests, keep-alive, a rolling swap with drain and a websocket tunnel
/// all work there as on the caller's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_served_on_the_worker_runtimes() {
    berth_agent::proxy::workers::start(2).unwrap();
    let workers = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .filter(|c| c.starts_with("proxy-worker-"))
            .count()
    };
    for _ in 0..100 {
        if workers() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(workers(), 2);
    swap_with_drain_under_load().await;
    websocket_tunnel().await;
}
