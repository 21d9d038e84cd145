//! The per-peer connection bound of the real controller's listener on a loopback port: one
//! address cannot hold more than its share of connections, and is served again once it
//! gives one back. (The head timeout and the global cap have their own tests.)
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use berth_controller::resolve::FakeResolver;
use berth_controller::{Config, Controller, ControllerHandle};
use berth_testkit::GitRemote;

async fn start(dir: &std::path::Path, max_per_peer: usize) -> ControllerHandle {
    let repo = GitRemote::init(dir);
    let mut config = Config::new(
        dir.join("data"),
        repo.url(),
        "main".into(),
        Arc::new(FakeResolver::new()),
    );
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.poll_interval = Duration::from_secs(3600);
    config.max_connections_per_peer = max_per_peer;
    Controller::start(config).await.unwrap()
}

/// Reads until EOF or `within`; true when the server closed the connection.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_hold_more_than_its_connections() {
    let dir = tempfile::tempdir().unwrap();
    let handle = start(dir.path(), 3).await;
    let addr = handle.addr();
    tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // the fourth is accepted by the kernel and closed by the controller at once
        let mut fourth = TcpStream::connect(addr).unwrap();
        let _ = fourth.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(
            closed_within(&mut fourth, Duration::from_secs(5)),
            "a fourth connection from the same peer was served"
        );
        // a connection given back makes room again
        drop(held);
        let mut served = false;
        for _ in 0..50 {
            if berth_testkit::http_status(&addr.to_string(), "/metrics").is_ok_and(|s| s == 200) {
                served = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(served, "no connection was served after the others closed");
    })
    .await
    .unwrap();
    handle.shutdown().await.unwrap();
}
