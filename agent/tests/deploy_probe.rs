//! Probes against real sockets on loopback: an HTTP server answering by path, a TCP listener,
//! a closed port and a server that never answers; through the real prober and the runner.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use berth_agent::health::runner;
use berth_agent::host::probe::NetProber;
use berth_agent::reconcile::fake::FakeRuntime;
use berth_agent::reconcile::traits::Prober;
use berth_manifests::app::{Health, Probe};

async fn server() -> SocketAddr {
    let app = Router::new()
        .route("/up", get(|| async { "ok" }))
        .route(
            "/moved",
            get(|| async { (StatusCode::FOUND, [("location", "/elsewhere")]) }),
        )
        .route(
            "/broken",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
    // dropped: nothing listens there any more
}

fn health(probe: Probe) -> Health {
    Health {
        probe,
        interval: berth_manifests::Duration::from_secs(1),
        timeout: berth_manifests::Duration::from_millis(300),
        failures: 3,
        start_period: berth_manifests::Duration::ZERO,
    }
}

#[tokio::test]
async fn http_probe_reads_the_status_without_following_redirects() {
    let addr = server().await;
    let p = NetProber::new().unwrap();
    let t = Duration::from_secs(2);
    assert_eq!(p.http_get(addr, "/up", t).await, Ok(200));
    assert_eq!(p.http_get(addr, "/moved", t).await, Ok(302));
    assert_eq!(p.http_get(addr, "/broken", t).await, Ok(500));
    assert_eq!(p.http_get(addr, "/missing", t).await, Ok(404));
}

#[tokio::test]
async fn http_probe_times_out_and_reports_refused_connections() {
    let addr = server().await;
    let p = NetProber::new().unwrap();
    assert_eq!(
        p.http_get(addr, "/slow", Duration::from_millis(200)).await,
        Err("timed out".into())
    );
    let err = p
        .http_get(closed_port().await, "/up", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(err.contains("refused"), "{err}");
}

#[tokio::test]
async fn tcp_probe_connects_to_a_listener_and_not_to_a_closed_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap();
    let p = NetProber::new().unwrap();
    assert_eq!(p.tcp_connect(open, Duration::from_secs(1)).await, Ok(()));
    let err = p
        .tcp_connect(closed_port().await, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(err.contains("refused"), "{err}");
}

#[tokio::test]
async fn the_runner_turns_answers_into_verdicts() {
    let addr = server().await;
    let p = NetProber::new().unwrap();
    let rt = FakeRuntime::new();
    let ip = Some(addr.ip());
    let http = |path: &str| {
        health(Probe::Http {
            path: path.into(),
            port: addr.port(),
        })
    };
    assert_eq!(runner::run(&*rt, &p, "x", ip, &http("/up")).await, Ok(()));
    assert_eq!(
        runner::run(&*rt, &p, "x", ip, &http("/moved")).await,
        Ok(()),
        "3xx is healthy"
    );
    assert_eq!(
        runner::run(&*rt, &p, "x", ip, &http("/broken")).await,
        Err("status 500".into())
    );
    let slow = runner::run(&*rt, &p, "x", ip, &http("/slow")).await;
    assert!(
        slow.as_ref().is_err_and(|e| e.starts_with("timed out")),
        "bounded by the 300ms timeout: {slow:?}"
    );
    let tcp = health(Probe::Tcp { port: addr.port() });
    assert_eq!(runner::run(&*rt, &p, "x", ip, &tcp).await, Ok(()));
}
