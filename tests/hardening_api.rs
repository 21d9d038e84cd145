//! Hostile input against the real `berth controller` binary on a free loopback port (issue 9):
//! oversized bodies, deeply nested JSON, slow-loris clients dribbling headers, floods of idle
//! connections and wrong tokens. Each must get a fast 4xx or a close, and the server must still
//! answer an ordinary request afterwards. Raw `TcpStream`s are used so the test controls every
//! byte and every pause; each check prints how long the server took.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]
#![allow(
    clippy::disallowed_methods,
    reason = "the test measures how fast the server answers"
)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::GitRemote;

const TOKEN: &str = "hardening-test-token-0123456789";

/// The controller process and its files, stopped (by its pid) and removed on drop.
struct Controller {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    /// Starts `berth controller` with `extra` arguments and waits until it answers.
    fn start(extra: &[&str]) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let repo = GitRemote::init(dir.path());
        repo.push(
            "web.yaml",
            &format!("app: web\nimage: busybox@sha256:{}\n", "a".repeat(64)),
            "web",
        );
        let port = berth_testkit::free_port().unwrap();
        let addr = format!("127.0.0.1:{port}");
        let data: PathBuf = dir.path().join("data");
        let child = Command::new(assert_cmd::cargo::cargo_bin("berth"))
            .args(["controller", "--repo"])
            .arg(repo.url())
            .args(["--branch", "main", "--listen", &addr])
            .args(["--poll-interval", "1s", "--token", TOKEN])
            .args(extra)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("BERTH_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let c = Controller {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if c.try_status().is_some_and(|s| s == 200) {
                return c;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("berth controller on {} never answered", c.addr);
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(40))).unwrap();
        s
    }

    /// `GET /v1/status` with the token on a fresh connection: the status code, or `None`
    /// when the connection failed or closed without an answer.
    fn try_status(&self) -> Option<u16> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let req = format!(
            "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).ok()?;
        status_of(&read_head(&mut s))
    }

    /// Asserts the server still answers an ordinary request, within 5 s.
    fn assert_healthy(&self, after: &str) {
        let started = Instant::now();
        let status = self.try_status();
        let took = started.elapsed();
        eprintln!("normal request after {after}: {status:?} in {took:?}");
        assert_eq!(status, Some(200), "server unhealthy after {after}");
        assert!(took < Duration::from_secs(5), "slow answer after {after}");
    }
}

/// Reads until the end of the response head (or EOF / error): the bytes read.
fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return buf,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    return buf;
                }
            }
        }
    }
}

fn status_of(head: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Sends a request head, then writes `body` from another thread (the server may answer and
/// close before taking it all); returns the status and how long the answer took.
fn send_with_body(c: &Controller, head: String, body: Vec<u8>) -> (Option<u16>, Duration) {
    let mut s = c.connect();
    let started = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for piece in body.chunks(64 << 10) {
            if w.write_all(piece).is_err() {
                return;
            }
        }
    });
    let status = status_of(&read_head(&mut s));
    let took = started.elapsed();
    // the writer ends on the reset that follows the close
    let _ = s.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    (status, took)
}

#[test]
fn twenty_megabyte_bodies_are_refused_fast_and_the_server_keeps_answering() {
    let c = Controller::start(&[]);
    let size = 20 << 20;
    let body = vec![b'x'; size];
    // with a length announced: refused from the header, before the body is read
    let (status, took) = send_with_body(
        &c,
        format!(
            "POST /v1/agents/register HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        ),
        body.clone(),
    );
    eprintln!("20 MB body with Content-Length: {status:?} in {took:?}");
    assert_eq!(status, Some(413));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // chunked, no length: refused once the cap is passed
    let mut chunked = Vec::with_capacity(size + 4096);
    for piece in body.chunks(64 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, took) = send_with_body(
        &c,
        format!(
            "POST /v1/agents/register HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        chunked,
    );
    eprintln!("20 MB chunked body: {status:?} in {took:?}");
    assert_eq!(status, Some(413));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // without the token: refused before any of the body is read
    let (status, took) = send_with_body(
        &c,
        format!(
            "POST /v1/agents/register HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        ),
        body,
    );
    eprintln!("20 MB body without token: {status:?} in {took:?}");
    assert_eq!(status, Some(401));
    assert!(took < Duration::from_secs(5), "{took:?}");
    c.assert_healthy("20 MB bodies");
}

#[test]
fn deeply_nested_json_is_refused_without_a_crash() {
    let c = Controller::start(&[]);
    for (what, body) in [
        ("100k [", "[".repeat(100_000)),
        ("100k {\"a\":", "{\"a\":".repeat(100_000)),
        (
            "closed 100k []",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        ),
    ] {
        for route in ["/v1/agents/register", "/v1/agents/h1/report"] {
            let (status, took) = send_with_body(
                &c,
                format!(
                    "POST {route} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                ),
                body.clone().into_bytes(),
            );
            eprintln!("{what} to {route}: {status:?} in {took:?}");
            let status = status.unwrap_or_else(|| panic!("no answer to {what} on {route}"));
            assert!((400..500).contains(&status), "{what} on {route}: {status}");
            assert!(took < Duration::from_secs(5), "{took:?}");
        }
    }
    c.assert_healthy("nested JSON");
    // the process is alive (a stack overflow would have aborted it)
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.child.id())).unwrap();
    assert!(!stat.contains(") Z "), "the controller died: {stat}");
}

#[test]
fn slow_loris_clients_are_cut_off_and_others_are_served() {
    let c = Controller::start(&[]);
    // a few clients dribble one header line every 500 ms, never finishing the head
    let loris: Vec<_> = (0..8)
        .map(|i| {
            let mut s = c.connect();
            std::thread::spawn(move || {
                let started = Instant::now();
                let _ = s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n");
                let mut n = 0;
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    if s.write_all(format!("X-Slow-{i}-{n}: y\r\n").as_bytes())
                        .is_err()
                    {
                        break;
                    }
                    n += 1;
                    // a closed connection shows as EOF on a short, non-blocking read
                    s.set_nonblocking(true).unwrap();
                    let mut b = [0u8; 512];
                    let r = s.read(&mut b);
                    s.set_nonblocking(false).unwrap();
                    match r {
                        Ok(_) => break,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                    if started.elapsed() > Duration::from_secs(45) {
                        break;
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    // meanwhile ordinary clients are served
    std::thread::sleep(Duration::from_secs(1));
    c.assert_healthy("slow-loris clients connected");
    for l in loris {
        let held = l.join().unwrap();
        eprintln!("slow-loris connection closed by the server after {held:?}");
        assert!(
            held < Duration::from_secs(20),
            "a client dribbling headers held its connection for {held:?}"
        );
    }
    c.assert_healthy("slow-loris clients");
}

#[test]
fn floods_of_idle_connections_are_bounded_and_closed() {
    // a small cap so the test needs few file descriptors of its own
    let c = Controller::start(&["--max-connections", "64"]);
    // the readiness check's connection must be gone, or its permit frees up mid-test
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let idle: Vec<TcpStream> = (0..96).map(|_| c.connect()).collect();
    eprintln!("opened {} idle connections", idle.len());
    // past the cap, new connections are closed at once instead of queueing forever
    let refused_at = Instant::now();
    let status = c.try_status();
    eprintln!(
        "request at the cap: {status:?} in {:?}",
        refused_at.elapsed()
    );
    assert_eq!(status, None, "a connection past the cap was served");
    assert!(refused_at.elapsed() < Duration::from_secs(5));
    // the idle ones are closed after the head timeout, freeing the server
    let mut closed_after = Vec::new();
    for mut s in idle {
        let mut b = [0u8; 64];
        let r = s.read(&mut b);
        assert!(
            matches!(r, Ok(0)) || r.is_err(),
            "an idle connection got data: {r:?}"
        );
        closed_after.push(started.elapsed());
    }
    let last = closed_after.iter().max().copied().unwrap_or_default();
    eprintln!("all idle connections closed by {last:?}");
    assert!(
        last < Duration::from_secs(20),
        "idle connections held {last:?}"
    );
    c.assert_healthy("96 idle connections");
}

#[test]
fn wrong_tokens_are_refused_on_every_route_fast() {
    let c = Controller::start(&[]);
    let routes = [
        ("GET", "/v1/status"),
        ("GET", "/v1/apps"),
        ("GET", "/v1/apps/web/revisions"),
        ("GET", "/v1/instances"),
        ("GET", "/v1/events"),
        ("GET", "/v1/agents/h1/assignment?wait=30"),
        ("POST", "/v1/agents/register"),
        ("POST", "/v1/agents/h1/report"),
        ("POST", "/v1/apps/web/rollback"),
        ("POST", "/v1/sync"),
    ];
    let wrong = [
        String::new(),
        "Authorization: Bearer \r\n".into(),
        "Authorization: Bearer wrong\r\n".into(),
        format!("Authorization: Bearer {TOKEN}x\r\n"),
        format!("Authorization: Bearer {}\r\n", &TOKEN[..TOKEN.len() - 1]),
        format!("Authorization: Basic {TOKEN}\r\n"),
        format!("Authorization: bearer{TOKEN}\r\n"),
        // webhook headers with a wrong secret or signature
        "X-Gitlab-Token: wrong\r\n".into(),
        format!("X-Hub-Signature-256: sha256={}\r\n", "0".repeat(64)),
    ];
    let mut slowest = Duration::ZERO;
    for (method, route) in routes {
        for auth in &wrong {
            let body = "{}";
            let (status, took) = send_with_body(
                &c,
                format!(
                    "{method} {route} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: \
                     application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                ),
                body.as_bytes().to_vec(),
            );
            assert_eq!(status, Some(401), "{method} {route} with {auth:?}");
            slowest = slowest.max(took);
        }
    }
    eprintln!(
        "slowest 401 over {} requests: {slowest:?}",
        routes.len() * wrong.len()
    );
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    c.assert_healthy("wrong tokens");
}
