#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "how long the proxy took to give up on a vanished backend is asserted"
)]
//! The proxy against backends that vanish without a FIN or RST, as an instance does when its
//! veth is removed with it (issue 6: one request of 7 677 hung in the rolling-update system
//! test). Before the fix a request on such a connection waited forever (no response) or for
//! TCP's ~15 min retransmissions (written into it), and a pooled keep-alive connection to a
//! removed instance was reused for a new instance that got the same address.
//!
//! Privileged: everything runs in network namespaces the test creates ("the host" `…-t`, with
//! the proxy, the client and a loopback backend; instances `…-b<k>` behind a veth pair), all
//! removed by a drop guard, even on failure. Traffic only to addresses inside them.

mod proxy_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_agent::host::net::run_in_netns;
use berth_agent::proxy::{AppConfig, Proxy};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use proxy_support::*;

static N: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// The test's namespaces; instance `k` is 10.79.<n>.2 behind veth `bpx<k>` of the host.
struct Net {
    host: String,
    n: u32,
    instances: std::sync::Mutex<Vec<String>>,
}

impl Net {
    fn new() -> Self {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let host = format!("berth-test-pdb-{}-{n}", std::process::id());
        ip(&["netns", "add", &host]);
        let net = Self {
            host,
            n,
            instances: std::sync::Mutex::default(),
        };
        ip(&["-n", &net.host, "link", "set", "lo", "up"]);
        net
    }

    fn path(name: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{name}"))
    }

    /// A new instance namespace reached at 10.79.<n>.2 (the address of every instance of
    /// this test: the IPAM reuses a freed address); the previous instance's link must be cut.
    fn add_instance(&self) -> (String, SocketAddr) {
        let mut instances = self.instances.lock().unwrap();
        let k = instances.len();
        let name = format!("{}-b{k}", self.host);
        ip(&["netns", "add", &name]);
        instances.push(name.clone());
        drop(instances);
        let (h, i) = (format!("bpx{k}"), format!("bpi{k}"));
        ip(&[
            "-n", &self.host, "link", "add", &h, "type", "veth", "peer", "name", &i, "netns", &name,
        ]);
        ip(&[
            "-n",
            &self.host,
            "addr",
            "add",
            &format!("10.79.{}.1/24", self.n),
            "dev",
            &h,
        ]);
        ip(&["-n", &self.host, "link", "set", &h, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("10.79.{}.2/24", self.n),
            "dev",
            &i,
        ]);
        ip(&["-n", &name, "link", "set", &i, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        (name, format!("10.79.{}.2:8080", self.n).parse().unwrap())
    }

    /// Cuts instance `k` off as removing its veth does: nothing it sends arrives any more.
    fn cut(&self, k: usize) {
        ip(&["-n", &self.host, "link", "del", &format!("bpx{k}")]);
    }

    /// Runs `f` on a current-thread runtime inside the host namespace (every socket the
    /// proxy opens is made there).
    fn run<T: Send>(&self, f: impl std::future::Future<Output = T> + Send) -> T {
        run_in_netns(&Self::path(&self.host), move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        })
        .unwrap()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        for name in instances.iter().chain([&self.host]) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// A listener on the instance's address, made inside its namespace.
fn listen_in(netns: &str, addr: SocketAddr) -> StdListener {
    run_in_netns(&Net::path(netns), move || StdListener::bind(addr))
        .unwrap()
        .unwrap()
}

/// Reads one request head (and a Content-Length body); false on EOF.
fn read_request(s: &mut std::net::TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return false,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).is_ok()
}

/// A keep-alive HTTP/1.1 backend answering every request with `name`, one thread per
/// connection; the sockets live as long as the process (a cut instance sends no FIN).
fn keep_alive_backend(listener: StdListener, name: &'static str) {
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                while read_request(&mut s) {
                    let r = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                        name.len()
                    );
                    if s.write_all(r.as_bytes()).is_err() {
                        return;
                    }
                }
                // Keep the socket open (leaked): its FIN must not be what ends the request.
                std::mem::forget(s);
            });
        }
    });
}

/// A backend that reads the request, reports it, and never answers (it is about to vanish).
fn silent_backend(listener: StdListener) -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            if read_request(&mut s) {
                let _ = tx.send(());
            }
            std::mem::forget(s);
        }
    });
    rx
}

async fn send(req: Request<BoxBody>) -> Result<(StatusCode, String), String> {
    let c = client();
    let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

fn get_req(addr: SocketAddr) -> Request<BoxBody> {
    Request::get(format!("http://{addr}/id"))
        .body(empty())
        .unwrap()
}

fn post_req(addr: SocketAddr) -> Request<BoxBody> {
    Request::post(format!("http://{addr}/id"))
        .body(full("a body: not repeatable"))
        .unwrap()
}

/// Waits for the silent backend to have the request, in a blocking thread.
async fn received(rx: std::sync::mpsc::Receiver<()>) {
    tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the backend never got the request");
}

/// The client gives up after this: the proxy must answer well before.
const CLIENT_WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_get_whose_backend_vanishes_mid_request_is_retried_on_another_backend() {
    let net = Net::new();
    let (inst, addr) = net.add_instance();
    let got = silent_backend(listen_in(&inst, addr));
    let net = &net;
    net.run(async move {
        let proxy = Proxy::new();
        let front = proxy
            .set_app(AppConfig::http("web", "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        proxy.add_backend("web", "gone", addr).unwrap();
        let t = Instant::now();
        let req = tokio::spawn(tokio::time::timeout(CLIENT_WAIT, send(get_req(front))));
        received(got).await;
        // A second instance is ready; the first one's veth goes with it, no FIN, no RST.
        let live = TestBackend::start("live").await;
        proxy.add_backend("web", "live", live.addr).unwrap();
        net.cut(0);
        let out = req.await.unwrap();
        let took = t.elapsed();
        let (status, body) = out
            .unwrap_or_else(|_| panic!("the request hung: no answer within {CLIENT_WAIT:?}"))
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("live"), "{body}");
        eprintln!("answered by the other backend after {took:?}");
        assert!(took < Duration::from_secs(8), "took {took:?}");
    });
}

#[test]
fn a_post_whose_backend_vanishes_mid_request_is_answered_502_fast() {
    let net = Net::new();
    let (inst, addr) = net.add_instance();
    let got = silent_backend(listen_in(&inst, addr));
    let net = &net;
    net.run(async move {
        let proxy = Proxy::new();
        let front = proxy
            .set_app(AppConfig::http("web", "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        proxy.add_backend("web", "gone", addr).unwrap();
        let t = Instant::now();
        let req = tokio::spawn(tokio::time::timeout(CLIENT_WAIT, send(post_req(front))));
        received(got).await;
        net.cut(0);
        let (status, body) = req
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("the request hung: no answer within {CLIENT_WAIT:?}"))
            .unwrap();
        let took = t.elapsed();
        eprintln!("{status} after {took:?}: {body}");
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains("gone"), "names the backend: {body}");
        assert!(took < Duration::from_secs(8), "took {took:?}");
    });
}

#[test]
fn a_pooled_connection_of_a_removed_instance_never_reaches_its_successor() {
    let net = Net::new();
    let (old, addr) = net.add_instance();
    keep_alive_backend(listen_in(&old, addr), "old");
    let net = &net;
    net.run(async move {
        let proxy = Proxy::new();
        let front = proxy
            .set_app(AppConfig::http("web", "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        proxy.add_backend("web", "old", addr).unwrap();
        let (status, body) = send(get_req(front)).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "old"));
        // The proxy now holds an idle keep-alive connection to 10.79.n.2:8080. The old
        // instance leaves the rotation and vanishes (no FIN); a new one gets its address.
        proxy.remove_backend("web", "old").unwrap();
        net.cut(0);
        let (new, addr2) = net.add_instance();
        assert_eq!(addr, addr2);
        keep_alive_backend(listen_in(&new, addr), "new");
        proxy.add_backend("web", "new", addr).unwrap();
        // A request with a body (never retried): it must go on a fresh connection to the
        // new instance, not into the old instance's pooled one.
        let (status, body) = send(post_req(front)).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "new"));
    });
}
