#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]
//! `berth proxy` as a real process: the agent side starts it, configures it over the control
//! socket, goes away, and a new agent side adopts it while it keeps serving.

use std::net::SocketAddr;
use std::time::Duration;

use berth_agent::proxy::AppConfig;
use berth_agent::proxy::control::connect_or_spawn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers every request with `ok` and closes.
async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    addr
}

async fn get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

struct Terminate(u32);
impl Drop for Terminate {
    fn drop(&mut self) {
        // Our own child, by pid, through kill(2); SIGTERM (15) lets it remove its socket.
        if let Ok(pid) = i32::try_from(self.0)
            && pid > 0
        {
            let _ = berth_agent::host::sys::kill(pid, 15);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_proxy_outlives_its_agent_and_is_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/proxy.sock");
    let exe = assert_cmd::cargo::cargo_bin("berth");
    let (mut agent, spawned) = connect_or_spawn(&exe, &sock, Duration::from_secs(10))
        .await
        .unwrap();
    let spawned = spawned.expect("a new proxy process");
    let _guard = Terminate(spawned.pid);
    let addr = agent
        .set_app(AppConfig::http("web", "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    agent
        .add_backend("web", "b1", backend().await)
        .await
        .unwrap();
    assert!(get(addr).await.starts_with("HTTP/1.1 200"));
    drop(agent); // the agent goes away

    let (mut agent, spawned_again) = connect_or_spawn(&exe, &sock, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(spawned_again, None, "the running proxy is adopted");
    let state = agent.state().await.unwrap();
    assert_eq!(state[0].local_addr, addr);
    assert_eq!(state[0].backends[0].id, "b1");
    let reply = get(addr).await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("ok"),
        "{reply}"
    );
    assert_eq!(
        agent.snapshot().await.unwrap()["web"].by_code.get(&200),
        Some(&2)
    );
}
