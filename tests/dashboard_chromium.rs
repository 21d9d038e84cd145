//! The dashboard as a person sees it: the real `berth controller` syncing a real git
//! repository, a host reporting through the agent API, and Debian's headless Chromium loading
//! `/#token=…`, running the page's script and dumping the DOM it built. Also: the assets'
//! security headers, the page without a token (a sign-in form, no data), and a refused token.
//!
//! `BERTH_DASHBOARD_SCREENSHOT=path.png` also writes a screenshot (docs/dashboard.png was
//! made that way).
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_controller::client::Client;
use berth_manifests::wire::{AppReport, HostReport, Registration, RolloutState};
use berth_testkit::GitRemote;

/// The controller process, stopped (by its pid) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> PathBuf {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).exists() {
            return PathBuf::from(c);
        }
    }
    panic!("chromium is not installed: run scripts/install-deps.sh");
}

/// Loads `url` in headless Chromium with `budget_ms` of virtual time for the page's
/// fetches and timers, and returns the DOM it built.
fn dump_dom(url: &str, profile: &Path, budget_ms: u32, screenshot: Option<&Path>) -> String {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--window-size=1280,900",
        &format!("--virtual-time-budget={budget_ms}"),
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(path) => {
            c.arg(format!("--screenshot={}", path.display()));
        }
        None => {
            c.arg("--dump-dom");
        }
    }
    let out = c.arg(url).stderr(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "chromium failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn image(n: u8) -> String {
    format!("busybox@sha256:{}", format!("{n:x}").repeat(64))
}

#[test]
fn the_dashboard_shows_apps_hosts_events_and_refuses_a_wrong_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let repo = GitRemote::init(dir.path());
    repo.push(
        "apps.yaml",
        &format!(
            "app: web\nimage: {}\nreplicas: 2\n---\napp: api\nimage: {}\nreplicas: 1\n",
            image(1),
            image(2)
        ),
        "web and api",
    );

    let port = berth_testkit::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let _daemon = Daemon(
        Command::new(assert_cmd::cargo::cargo_bin("berth"))
            .args(["controller", "--repo"])
            .arg(repo.url())
            .args(["--branch", "main", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--poll-interval", "200ms", "--data-dir"])
            .arg(&data)
            .env_remove("BERTH_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // The token file appears with the controller; wait for the first sync.
    let token_file = data.join("controller/token");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            let t = std::fs::read_to_string(&token_file).ok()?;
            let client = Client::new(&url, t.trim()).ok()?;
            let st = rt.block_on(client.status()).ok()?;
            (st.apps.len() == 2).then(|| t.trim().to_string())
        })
        .expect("the controller synced two apps");
    let client = Client::new(&url, &token).unwrap();
    rt.block_on(async {
        let reg = Registration {
            name: "edge-1".into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            capacity: Default::default(),
            agent_version: "test".into(),
        };
        let r = client.register(&reg).await.unwrap();
        client
            .report(&HostReport {
                host: "edge-1".into(),
                assignment_version: r.assignment_version,
                instances: Vec::new(),
                apps: vec![
                    AppReport {
                        requests_total: Some(100),
                        app: "web".into(),
                        target: 1,
                        desired: 2,
                        ready: 1,
                        rollout: RolloutState::Progressing,
                    },
                    AppReport {
                        requests_total: None,
                        app: "api".into(),
                        target: 1,
                        desired: 1,
                        ready: 1,
                        rollout: RolloutState::Complete,
                    },
                ],
                events: Vec::new(),
            })
            .await
            .unwrap();
    });

    // The proxies' request counters reach the status (the page turns them into a rate).
    let st = rt.block_on(client.status()).unwrap();
    let web = st.apps.iter().find(|a| a.name == "web").unwrap();
    assert_eq!(web.requests_total, Some(100));
    let api = st.apps.iter().find(|a| a.name == "api").unwrap();
    assert_eq!(api.requests_total, None);

    // The assets need no token and carry their security headers.
    let head = Command::new("curl")
        .args(["-sfI", &format!("{url}/")])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");
    // …while the API still does.
    let api = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{url}/v1/status"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&api.stdout), "401");

    let profile = tempfile::tempdir().unwrap();
    let dom = dump_dom(&format!("{url}/#token={token}"), profile.path(), 5000, None);
    // What a person sees: both apps with revision and ready/desired, the host, the git source.
    for needle in [
        "data-app=\"web\"",
        "data-app=\"api\"",
        ">1/2<",
        ">1/1<",
        "starting or rolling out",
        "serving",
        "data-host=\"edge-1\"",
        ">ready<",
        "zone=a",
        "main @ ",
    ] {
        assert!(dom.contains(needle), "the page lacks {needle:?}:\n{dom}");
    }
    assert!(
        !dom.contains(&token),
        "the token must not end up in the page"
    );
    // The sync events of the controller are listed.
    assert!(dom.contains("class=\"reason\""), "no events shown:\n{dom}");

    if let Some(path) = std::env::var_os("BERTH_DASHBOARD_SCREENSHOT") {
        let profile = tempfile::tempdir().unwrap();
        dump_dom(
            &format!("{url}/#token={token}"),
            profile.path(),
            5000,
            Some(Path::new(&path)),
        );
    }

    // No token: the sign-in form, no data. A wrong token: refused, still no data.
    let profile = tempfile::tempdir().unwrap();
    let dom = dump_dom(&format!("{url}/"), profile.path(), 2000, None);
    assert!(dom.contains("id=\"login\""), "{dom}");
    assert!(!dom.contains("data-app="), "{dom}");
    let profile = tempfile::tempdir().unwrap();
    let dom = dump_dom(&format!("{url}/#token=wrong"), profile.path(), 3000, None);
    assert!(dom.contains("the token was refused"), "{dom}");
    assert!(!dom.contains("data-app="), "{dom}");
}
