//! The standalone agent's `/metrics` endpoint over real HTTP: the classic text passes
//! `promtool check metrics`, Prometheus's `Accept` gets OpenMetrics, other paths are 404.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use std::process::Command;

fn get(addr: std::net::SocketAddr, path: &str, accept: Option<&str>) -> (String, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-D", "-", "--max-time", "5"]);
    if let Some(a) = accept {
        c.args(["-H", &format!("Accept: {a}")]);
    }
    let out = c.arg(format!("http://{addr}{path}")).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_both_formats_and_promtool_accepts_the_classic_one() {
    let metrics = berth_agent::metrics::global();
    metrics.probe("metrics-server-test", true);
    metrics.reconciled("metrics-server-test", 0.002, &[]);
    let (addr, serving) = berth_agent::host::metrics_server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server = tokio::spawn(serving);

    let (head, body) = tokio::task::spawn_blocking(move || get(addr, "/metrics", None))
        .await
        .unwrap();
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(body.contains(r#"berth_probe_total{app="metrics-server-test",result="success"} 1"#));
    berth_testkit::promtool_check(&body);

    let (head, body) = tokio::task::spawn_blocking(move || {
        get(
            addr,
            "/metrics",
            Some("application/openmetrics-text; version=1.0.0"),
        )
    })
    .await
    .unwrap();
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"));

    let (head, _) = tokio::task::spawn_blocking(move || get(addr, "/other", None))
        .await
        .unwrap();
    assert!(head.starts_with("http/1.1 404"), "{head}");
    server.abort();
}
