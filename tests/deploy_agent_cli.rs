//! System test of the real binary: `berth controller` on a git repository and `berth agent`
//! sharing its data dir, a real registry (berth-testkit) and real containers, all in a
//! network namespace of the test (`deploy_support`). A manifest commit → the app runs and
//! answers HTTP through the agent's proxy; the agent killed with SIGKILL, the app keeps
//! answering (the proxy and the containers outlive it), and the agent started again adopts
//! the running container (same id, not restarted). Needs root, docker-registry, git and
//! curl. Everything it starts is stopped and removed on drop (`berth down` and more).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "system tests wait on real daemons in real time"
)]

mod deploy_support;
mod runtime_support;

use std::time::Duration;

use deploy_support::Cluster;

#[test]
fn a_commit_runs_and_answers_and_a_killed_agent_adopts_it() {
    let Some(mut c) = Cluster::new(&["hello"]) else {
        return;
    };
    let manifest = format!(
        "app: web\nimage: {}\nport: 8080\nexpose: {{ port: 8000 }}\nreplicas: 1\n\
         health: {{ http: /index.html, interval: 1s, timeout: 1s, failures: 2 }}\n",
        c.image("hello:latest")
    );
    c.commit(&[("web.yaml", Some(&manifest))], "add web");
    c.start_controller();
    c.start_agent();

    let body = c.wait_for("the app to answer", 60, || c.http_get(8000, "/index.html"));
    assert_eq!(body.trim(), "hello from berth");
    let before = c.running();
    assert_eq!(before.len(), 1, "{before:?}");

    // kill -9 the agent; the app keeps serving; a new agent adopts it.
    c.kill_agent();
    assert!(
        c.http_get(8000, "/index.html").is_some(),
        "serving without the agent"
    );
    c.start_agent();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        c.running(),
        before,
        "adopted: same container, not restarted"
    );
    assert!(c.http_get(8000, "/index.html").is_some());
}
