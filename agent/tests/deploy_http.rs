//! The HTTP controller client, and the agent loop over real HTTP, against a tiny in-test
//! controller stub on loopback (the real controller is built on the `deploy-ctl` branch and
//! not on main yet; once it is, these run against it instead).
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_agent::daemon::{Agent, AgentConfig, Clock};
use berth_agent::host::controller_client::HttpController;
use berth_agent::reconcile::exec::Effects;
use berth_agent::reconcile::fake::{FakeImages, FakeProber, FakeRuntime, FakeState, FakeTraffic};
use berth_agent::reconcile::traits::{ControllerClient, RunState};
use berth_manifests::ErrorKind;
use berth_manifests::wire::{Assignment, HostReport, Registered, Registration};
use common::{assigned, assignment, revision};
use tokio::sync::watch;

const TOKEN: &str = "s3cret";

#[derive(Clone)]
struct Stub {
    assignment: Arc<watch::Sender<Assignment>>,
    reports: Arc<Mutex<Vec<HostReport>>>,
}

#[derive(serde::Deserialize)]
struct Poll {
    after: u64,
    wait: u64,
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

async fn start_stub(first: Assignment) -> (SocketAddr, Stub) {
    let stub = Stub {
        assignment: Arc::new(watch::Sender::new(first)),
        reports: Arc::default(),
    };
    let app = Router::new()
        .route(
            "/v1/agents/register",
            post(
                |State(s): State<Stub>, h: HeaderMap, Json(r): Json<Registration>| async move {
                    if !authorized(&h) {
                        return Err(StatusCode::UNAUTHORIZED);
                    }
                    Ok(Json(Registered {
                        name: r.name,
                        assignment_version: s.assignment.borrow().version,
                    }))
                },
            ),
        )
        .route(
            "/v1/agents/{host}/assignment",
            get(
                |State(s): State<Stub>,
                 h: HeaderMap,
                 Path(host): Path<String>,
                 Query(q): Query<Poll>| async move {
                    if !authorized(&h) {
                        return Err(StatusCode::UNAUTHORIZED);
                    }
                    if host != "h1" {
                        return Err(StatusCode::NOT_FOUND);
                    }
                    let mut rx = s.assignment.subscribe();
                    if rx.borrow_and_update().version == q.after {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(q.wait), rx.changed()).await;
                    }
                    let a = rx.borrow().clone();
                    Ok(Json(a))
                },
            ),
        )
        .route(
            "/v1/agents/{host}/report",
            post(
                |State(s): State<Stub>, h: HeaderMap, Json(r): Json<HostReport>| async move {
                    if !authorized(&h) {
                        return StatusCode::UNAUTHORIZED;
                    }
                    s.reports.lock().unwrap().push(r);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, stub)
}

#[tokio::test]
async fn client_registers_long_polls_and_reports() {
    let (addr, stub) = start_stub(assignment(3, vec![])).await;
    let c = HttpController::new(&format!("http://{addr}/"), Some(TOKEN.into())).unwrap();
    let reg = c
        .register(&Registration {
            name: "h1".into(),
            labels: Default::default(),
            capacity: Default::default(),
            agent_version: "test".into(),
        })
        .await
        .unwrap();
    assert_eq!(reg.assignment_version, 3);
    // A different version answers at once.
    assert_eq!(
        c.assignment("h1", 0, Duration::from_secs(5))
            .await
            .unwrap()
            .version,
        3
    );
    // The same version waits for a change.
    let s2 = stub.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s2.assignment.send_replace(assignment(4, vec![]));
    });
    assert_eq!(
        c.assignment("h1", 3, Duration::from_secs(5))
            .await
            .unwrap()
            .version,
        4
    );
    // Or times out with the same version.
    assert_eq!(
        c.assignment("h1", 4, Duration::from_secs(1))
            .await
            .unwrap()
            .version,
        4
    );
    c.report(&HostReport {
        host: "h1".into(),
        assignment_version: 4,
        instances: vec![],
        apps: vec![],
        events: vec![],
    })
    .await
    .unwrap();
    assert_eq!(stub.reports.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn client_errors_are_classed_for_the_retry_policy() {
    let (addr, _stub) = start_stub(assignment(1, vec![])).await;
    let wrong = HttpController::new(&format!("http://{addr}"), Some("wrong".into())).unwrap();
    let err = wrong
        .assignment("h1", 0, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "a wrong token does not fix itself"
    );
    assert!(err.chain().contains("401"), "{}", err.chain());
    let right = HttpController::new(&format!("http://{addr}"), Some(TOKEN.into())).unwrap();
    let err = right
        .assignment("h2", 0, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "unknown host: register again"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let down = HttpController::new(&format!("http://{closed}"), None).unwrap();
    let err = down
        .assignment("h1", 0, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn agent_runs_its_assignment_over_http() {
    let r1 = revision("web", 1, "");
    let (addr, stub) = start_stub(assignment(1, vec![assigned(r1.clone(), None, 2)])).await;
    let runtime = FakeRuntime::new();
    let fx = Effects {
        runtime: runtime.clone(),
        images: FakeImages::new(),
        prober: FakeProber::new(runtime.clone()),
        traffic: FakeTraffic::new(),
    };
    let mut config = AgentConfig::new("h1");
    config.poll_wait = Duration::from_secs(1);
    config.report_interval = Duration::from_millis(200);
    let controller =
        Arc::new(HttpController::new(&format!("http://{addr}"), Some(TOKEN.into())).unwrap());
    let agent = Agent::new(config, controller, FakeState::new(), fx, Clock::system()).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = stop_rx.await;
    }));
    let running = |n: u64| {
        runtime
            .instances()
            .iter()
            .filter(|i| i.revision == n && i.state == RunState::Running)
            .count()
    };
    for _ in 0..100 {
        if running(1) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running(1), 2);
    let r2 = revision("web", 2, "env: { V: '2' }\n");
    stub.assignment
        .send_replace(assignment(2, vec![assigned(r2, Some(r1), 2)]));
    for _ in 0..200 {
        if running(2) == 2 && running(1) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((running(2), running(1)), (2, 0));
    for _ in 0..50 {
        if stub
            .reports
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.assignment_version == 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stub.reports
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.assignment_version == 2)
    );
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(running(2), 2, "containers outlive the agent");
}
