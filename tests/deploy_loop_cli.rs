//! System tests of the deploy loop (issue 5's acceptance) with the real `berth controller`
//! and `berth agent` binaries, a real registry, real git and real containers (root).
//!
//! Everything berth runs here lives in a network namespace of the test (the harness in
//! `deploy_support`). `web` runs in private mode behind the agent's proxy on port 8000:
//! "serving" is checked with HTTP through the proxy (a client loop during the rolling update
//! sees no failed request), "ready" through `berth ps`, polled during the whole rollout, and
//! each instance with `berth exec … wget`. Most health checks are exec probes (`wget` of `/up`
//! inside the instance), to run that path too; the controller-outage test probes over HTTP.
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

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deploy_support::{Cluster, Running, Sampler};
use serde_json::Value;

/// An exec probe that passes when the instance's httpd serves `path`.
fn probe(path: &str) -> String {
    format!(
        "health: {{ exec: [wget, -q, -O, /dev/null, 'http://127.0.0.1:8080{path}'], \
         interval: 200ms, timeout: 2s, failures: 2 }}\n"
    )
}

const UPDATE: &str = "update: { max_surge: 1, max_unavailable: 0, deadline: 30s }\n";

/// The port of the agent's proxy for `web` (inside the test's namespace).
const PROXY_PORT: u16 = 8000;

/// An http probe of `/up` (private instances have an address now).
const HTTP_UP: &str = "health: { http: /up, interval: 200ms, timeout: 1s, failures: 2 }\n";

/// The `web` app: the hello image's httpd on 8080 in its own network namespace, exposed on
/// the proxy's port 8000.
fn web(c: &Cluster, tag: &str, replicas: u32, health: &str, update: &str) -> String {
    format!(
        "app: web\nimage: {}\nport: 8080\nexpose: {{ port: {PROXY_PORT} }}\n\
         replicas: {replicas}\n{health}{update}stop: {{ grace: 2s }}\n",
        c.image(tag)
    )
}

fn web_of(running: &[Running]) -> Vec<&Running> {
    running
        .iter()
        .filter(|r| r.id.starts_with("web-"))
        .collect()
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or_else(|| panic!("no {key:?} in {v}"))
}

/// A following verb (`berth events -f`, `berth logs -f`) in the background, killed on drop;
/// its stdout lines so far.
struct Follow {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Follow {
    fn start(c: &Cluster, args: &[&str]) -> Follow {
        let mut cmd = c.berth();
        cmd.args(args);
        Follow::spawn(cmd)
    }

    /// A client in the namespace requesting `GET /` through the proxy in a loop, one line
    /// per request: `<body>|<status>` (`|000` when it got no answer).
    fn load(c: &Cluster) -> Follow {
        let mut cmd = c.inside("sh");
        cmd.args([
            "-c",
            &format!(
                "while :; do printf '%s\\n' \"$(curl -s -m 3 -w '|%{{http_code}}' \
                 http://127.0.0.1:{PROXY_PORT}/ | tr -d '\\n')\"; done"
            ),
        ]);
        Follow::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Follow {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Follow { child, lines }
    }

    fn has(&self, reason: &str, text: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["reason"] == reason && v["message"].as_str().unwrap_or("").contains(text)
            })
        })
    }
}

impl Follow {
    /// Kills the process; the lines read so far stay.
    fn child_killed(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_commit_runs_and_an_image_change_rolls_with_a_ready_instance_throughout() {
    let Some(mut c) = Cluster::new(&["hello", "sleeper"]) else {
        return;
    };
    let talker = format!(
        "app: talker\nimage: {}\nreplicas: 2\nstop: {{ grace: 1s }}\n\
         command: [/bin/sh, -c, 'echo talker up; trap \"exit 0\" TERM; sleep 100000 & wait']\n",
        c.image("sleeper:latest")
    );
    c.commit(
        &[
            (
                "web.yaml",
                Some(&web(&c, "hello:latest", 2, &probe("/up"), UPDATE)),
            ),
            ("talker.yaml", Some(&talker)),
        ],
        "add web and talker",
    );
    c.start_controller();
    c.start_agent();
    c.wait_revision("web", 1);
    let (code, out) = c.rollout_wait("web", 1, "90s");
    assert_eq!(code, 0, "rollout of revision 1: {out}\n{}", c.logs());
    assert!(out.contains("rollout complete"), "{out}");

    // It runs and answers: two instances of revision 1, each serving the page.
    let running = c.running();
    let web1 = web_of(&running);
    assert_eq!(web1.len(), 2, "{running:?}");
    for r in &web1 {
        assert_eq!(r.revision, "1");
        let (code, body) = c.exec(&r.id, &["wget", "-q", "-O-", "http://127.0.0.1:8080/"]);
        assert_eq!(code, 0, "{} answers", r.id);
        assert_eq!(body.trim(), "hello from berth");
    }

    // The image changes: a rolling update, with a ready instance and never more than
    // desired + surge instances the whole time, and a client looping through the proxy
    // meanwhile sees no failed request.
    c.wait_for("the proxy to answer", 10, || c.http_get(PROXY_PORT, "/"));
    let load = Follow::load(&c);
    let events = Follow::start(&c, &["events", "-f", "-o", "json"]);
    let cli = c.cli.clone();
    let sampler = Sampler::start(Duration::from_millis(50), move || {
        // (ready, not stopping) web instances, and revisions running in the runtime
        let web: Vec<(String, String, u64)> = cli
            .instances()
            .unwrap_or_default()
            .into_iter()
            .filter(|(app, _, _)| app == "web")
            .collect();
        let ready = web.iter().filter(|(_, s, _)| s == "ready").count();
        let active = web.iter().filter(|(_, s, _)| s != "stopping").count();
        let running: Vec<String> = web_of(&cli.running())
            .iter()
            .map(|r| r.revision.clone())
            .collect();
        (ready, active, running)
    });
    c.commit(
        &[(
            "web.yaml",
            Some(&web(&c, "hello:v2", 2, &probe("/up"), UPDATE)),
        )],
        "web: v2",
    );
    c.wait_revision("web", 2);
    let (code, out) = c.rollout_wait("web", 2, "90s");
    let samples = sampler.finish();
    assert_eq!(code, 0, "rollout of revision 2: {out}\n{}", c.logs());
    assert!(samples.len() >= 3, "{samples:?}");
    for (ready, active, _) in &samples {
        assert!(
            *ready >= 1,
            "a sample without a ready web instance: {samples:?}"
        );
        // instances being stopped (SIGTERM sent, within their grace) are not counted, as in
        // Kubernetes' surge
        assert!(*active <= 3, "more than desired + surge: {samples:?}");
    }
    assert!(
        samples
            .iter()
            .any(|(_, _, r)| r.contains(&"1".to_string()) && r.contains(&"2".to_string())),
        "the samples saw the rollout: {samples:?}"
    );
    // The old instances stop within their grace (httpd as pid 1 ignores SIGTERM: SIGKILL
    // after 2 s).
    let running = c.wait_for("the old instances to stop", 15, || {
        let running = c.running();
        let web = web_of(&running);
        (web.len() == 2 && web.iter().all(|r| r.revision == "2")).then_some(running.clone())
    });
    std::thread::sleep(Duration::from_millis(300));
    let load = load.child_killed();
    let answers = load.lines.lock().unwrap().clone();
    assert!(answers.len() > 20, "{answers:?}");
    let failed: Vec<&String> = answers.iter().filter(|l| !l.ends_with("|200")).collect();
    assert!(
        failed.is_empty(),
        "failed requests during the rollout: {failed:?}"
    );
    for body in ["hello from berth|200", "hello from berth v2|200"] {
        assert!(answers.iter().any(|l| l == body), "{body} in {answers:?}");
    }
    for r in web_of(&running) {
        let (code, body) = c.exec(&r.id, &["wget", "-q", "-O-", "http://127.0.0.1:8080/"]);
        assert_eq!(code, 0, "{} answers", r.id);
        assert_eq!(body.trim(), "hello from berth v2");
    }
    c.wait_for("the rollout's events in `berth events -f`", 10, || {
        (events.has("RolloutStarted", "revision 2") && events.has("RolloutComplete", "revision 2"))
            .then_some(())
    });
    drop(events);

    // The contract's JSON shapes (DESIGN.md, contract for scripts).
    let ps = c.wait_for("ps to list the 4 instances left", 10, || {
        let ps = c.json(&["ps"]);
        (ps.as_array()?.len() == 4).then_some(ps)
    });
    let ps = ps.as_array().unwrap();
    for i in ps {
        for key in ["id", "app", "host", "revision", "state"] {
            field(i, key);
        }
        assert_eq!(i["host"], "h1");
        assert_eq!(i["state"], "ready", "{i}");
        if i["app"] == "web" {
            assert_eq!(i["revision"], 2);
        }
    }
    let revs = c.json(&["revisions", "web"]);
    let revs = revs.as_array().unwrap();
    assert_eq!(revs.len(), 2, "{revs:?}");
    for (r, (number, state, tag)) in revs
        .iter()
        .zip([(1, "superseded", "latest"), (2, "active", "v2")])
    {
        assert_eq!(*field(r, "number"), number);
        assert_eq!(*field(r, "state"), state);
        assert_eq!(*field(r, "pinned"), false);
        assert!(field(r, "image").as_str().unwrap().ends_with(tag), "{r}");
        assert!(
            field(r, "digest").as_str().unwrap().starts_with("sha256:"),
            "{r}"
        );
        assert!(
            field(r, "cause").as_str().unwrap().starts_with("commit "),
            "{r}"
        );
    }
    assert_ne!(revs[0]["digest"], revs[1]["digest"]);
    let status = c.json(&["status"]);
    let app = field(&status, "apps")
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "web")
        .cloned()
        .unwrap();
    assert_eq!(*field(&app, "revision"), 2);
    assert_eq!(*field(&app, "desired"), 2);
    assert_eq!(*field(&app, "ready"), 2);
    assert_eq!(*field(&app, "pinned"), false);
    assert!(field(&app, "last_error").is_null(), "{app}");
    let hosts = field(&status, "hosts").as_array().unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(*field(&hosts[0], "name"), "h1");
    assert_eq!(*field(&hosts[0], "ready"), true);

    // `berth logs APP`: every instance's lines, each prefixed with its id.
    let out = c.cli(&["logs", "talker"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for id in ["talker-1-0", "talker-1-1"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(id) && l.ends_with("| talker up")),
            // An instance replaced under load (seen twice in CI, not yet traced) shows here
            // with the agent's log that says why.
            "{id} in {text:?}\n{}",
            c.logs()
        );
    }
    // `-f` follows them all.
    let mut follow = Follow::start(&c, &["logs", "-f", "talker"]);
    let mut got = c.wait_for("logs -f to print both instances' lines", 10, || {
        let lines = follow.lines.lock().unwrap().clone();
        (lines.len() >= 2).then_some(lines)
    });
    assert!(
        follow.child.try_wait().unwrap().is_none(),
        "logs -f keeps following"
    );
    drop(follow);
    got.sort();
    assert!(
        got.len() == 2 && got[0].starts_with("talker-1-0") && got[1].starts_with("talker-1-1"),
        "{got:?}"
    );
}

#[test]
fn a_failing_revision_rolls_back_and_an_invalid_commit_changes_nothing() {
    let Some(mut c) = Cluster::new(&["hello"]) else {
        return;
    };
    c.commit(
        &[(
            "web.yaml",
            Some(&web(&c, "hello:latest", 1, &probe("/up"), UPDATE)),
        )],
        "add web",
    );
    c.start_controller();
    c.start_agent();
    c.wait_revision("web", 1);
    let (code, out) = c.rollout_wait("web", 1, "90s");
    assert_eq!(code, 0, "{out}\n{}", c.logs());
    let before = c.running();
    assert_eq!(web_of(&before).len(), 1);

    // Revision 2's probe fails (404): rolled back at its deadline, revision 1 serving all
    // along.
    let cli = c.cli.clone();
    let sampler = Sampler::start(Duration::from_millis(100), move || {
        cli.ready_by_app()
            .map(|m| m.get("web").copied().unwrap_or(0))
    });
    let failing = "update: { max_surge: 1, max_unavailable: 0, deadline: 3s }\n";
    c.commit(
        &[(
            "web.yaml",
            Some(&web(&c, "hello:latest", 1, &probe("/missing"), failing)),
        )],
        "web: probe a missing page",
    );
    let pushed = Instant::now();
    c.wait_revision("web", 2);
    let (code, out) = c.rollout_wait("web", 2, "60s");
    let took = pushed.elapsed();
    let samples = sampler.finish();
    assert_eq!(
        code,
        1,
        "rollout status exits 1 on rollback: {out}\n{}",
        c.logs()
    );
    assert!(
        out.contains("health check exec") && out.contains("/missing"),
        "names the failing probe: {out}"
    );
    assert!(
        took < Duration::from_secs(3 + 12),
        "rolled back {took:?} after the push; deadline 3s"
    );
    assert!(
        samples.iter().all(|s| s.is_some_and(|n| n >= 1)),
        "revision 1 kept serving: {samples:?}"
    );
    let revs = c.json(&["revisions", "web"]);
    assert_eq!(revs[0]["state"], "active", "{revs}");
    assert_eq!(revs[1]["state"], "failed", "{revs}");
    assert!(
        revs[1]["failure"].as_str().unwrap().contains("/missing"),
        "{revs}"
    );
    let status = c.json(&["status"]);
    let app = &status["apps"][0];
    assert_eq!(app["revision"], 1, "{status}");
    assert!(
        app["last_error"].as_str().unwrap().contains("/missing"),
        "{status}"
    );

    // Not retried: no instance of revision 2 comes back while the manifest stays.
    c.wait_for("revision 2's instance to be gone", 15, || {
        web_of(&c.running())
            .iter()
            .all(|r| r.revision == "1")
            .then_some(())
    });
    let settled = c.running();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let now = c.running();
        assert!(
            web_of(&now).iter().all(|r| r.revision == "1"),
            "revision 2 retried: {now:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.running(), settled, "revision 1 untouched");
    let events = c.cli(&["events", "-o", "json"]);
    let started = String::from_utf8_lossy(&events.stdout)
        .lines()
        .filter(|l| l.contains("RolloutStarted") && l.contains("revision 2"))
        .count();
    assert_eq!(started, 1, "revision 2 started once");

    // An invalid manifest: nothing changes; the error with path:line:col is in status.
    c.commit(
        &[(
            "web.yaml",
            Some(&format!(
                "{}replicas: lots\n",
                web(&c, "hello:latest", 1, &probe("/up"), UPDATE).replace("replicas: 1\n", "")
            )),
        )],
        "web: broken",
    );
    let status = c.wait_for("the invalid commit to be refused", 30, || {
        let s = c.json(&["status"]);
        (!s["sync"]["errors"].as_array()?.is_empty()).then_some(s)
    });
    let errors = status["sync"]["errors"].to_string();
    assert!(
        errors.contains("web.yaml:8:11"),
        "path:line:col in {errors}"
    );
    let app = &status["apps"][0];
    assert_eq!(app["revision"], 1, "{status}");
    assert!(
        app["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("web.yaml:8:11"),
        "the app's last_error names the file: {status}"
    );
    let table = String::from_utf8_lossy(&c.cli(&["status"]).stdout).into_owned();
    assert!(table.contains("web.yaml:8:11"), "{table}");
    assert_eq!(c.json(&["revisions", "web"]).as_array().unwrap().len(), 2);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.running(), settled, "nothing changed on the host");

    // A fixed manifest (a change): revision 3 rolls out, the errors are gone.
    c.commit(
        &[(
            "web.yaml",
            Some(&web(&c, "hello:v2", 1, &probe("/up"), UPDATE)),
        )],
        "web: fixed",
    );
    c.wait_revision("web", 3);
    assert_eq!(c.rollout_wait("web", 3, "60s").0, 0, "{}", c.logs());
    let status = c.json(&["status"]);
    assert_eq!(status["sync"]["errors"], serde_json::json!([]), "{status}");
    assert!(status["apps"][0]["last_error"].is_null(), "{status}");
}

#[test]
fn a_rollback_pins_revision_1_until_the_next_manifest_change() {
    let Some(mut c) = Cluster::new(&["hello"]) else {
        return;
    };
    c.commit(
        &[(
            "web.yaml",
            Some(&web(&c, "hello:latest", 1, &probe("/up"), UPDATE)),
        )],
        "add web",
    );
    c.start_controller();
    c.start_agent();
    c.wait_revision("web", 1);
    assert_eq!(c.rollout_wait("web", 1, "90s").0, 0, "{}", c.logs());
    c.commit(
        &[(
            "web.yaml",
            Some(&web(&c, "hello:v2", 1, &probe("/up"), UPDATE)),
        )],
        "web: v2",
    );
    c.wait_revision("web", 2);
    assert_eq!(c.rollout_wait("web", 2, "90s").0, 0, "{}", c.logs());

    let out = c.cli(&["rollback", "web", "--to", "1"]);
    assert!(out.status.success(), "{out:?}");
    let runs_1 = c.wait_for("revision 1 to run alone", 60, || {
        let running = c.running();
        let web = web_of(&running);
        (web.len() == 1 && web[0].revision == "1").then(|| web[0].clone())
    });
    let (code, body) = c.exec(&runs_1.id, &["wget", "-q", "-O-", "http://127.0.0.1:8080/"]);
    assert_eq!((code, body.trim()), (0, "hello from berth"));
    let status = c.wait_for("status to show revision 1 ready", 30, || {
        let s = c.json(&["status"]);
        (s["apps"][0]["ready"] == 1).then_some(s)
    });
    let app = &status["apps"][0];
    assert_eq!(app["revision"], 1, "{status}");
    assert_eq!(app["pinned"], true, "{status}");
    assert_eq!(app["head"], 2, "{status}");
    let table = String::from_utf8_lossy(&c.cli(&["status"]).stdout).into_owned();
    assert!(table.contains("pinned"), "{table}");
    let revs = c.json(&["revisions", "web"]);
    assert_eq!(revs[0]["pinned"], true, "{revs}");
    assert_eq!(revs[1]["pinned"], false, "{revs}");

    // The next change of the manifest unpins: revision 3 runs.
    c.commit(
        &[(
            "web.yaml",
            Some(&format!(
                "{}env: {{ RELEASE: '3' }}\n",
                web(&c, "hello:v2", 1, &probe("/up"), UPDATE)
            )),
        )],
        "web: v2 with an env",
    );
    c.wait_revision("web", 3);
    assert_eq!(c.rollout_wait("web", 3, "90s").0, 0, "{}", c.logs());
    let status = c.json(&["status"]);
    assert_eq!(status["apps"][0]["revision"], 3, "{status}");
    assert_eq!(status["apps"][0]["pinned"], false, "{status}");
    let revs = c.json(&["revisions", "web"]);
    assert!(
        revs.as_array()
            .unwrap()
            .iter()
            .all(|r| r["pinned"] == false),
        "{revs}"
    );
    c.wait_for("revision 3 to run alone", 15, || {
        let running = c.running();
        let revs: Vec<&str> = web_of(&running)
            .iter()
            .map(|r| r.revision.as_str())
            .collect();
        (revs == ["3"]).then_some(())
    });
}

#[test]
fn an_agent_killed_mid_rollout_converges_without_duplicates_or_restarts() {
    let Some(mut c) = Cluster::new(&["hello"]) else {
        return;
    };
    c.commit(
        &[(
            "web.yaml",
            Some(&web(&c, "hello:latest", 2, &probe("/up"), UPDATE)),
        )],
        "add web",
    );
    c.start_controller();
    c.start_agent();
    c.wait_revision("web", 1);
    assert_eq!(c.rollout_wait("web", 1, "90s").0, 0, "{}", c.logs());

    // Revision 2 is ready ~2 s after its start: the agent dies while it starts.
    let slow = format!(
        "{}command: [/bin/sh, -c, 'sleep 2; exec /bin/httpd -f -p 8080 -h /www']\n",
        web(&c, "hello:v2", 2, &probe("/up"), UPDATE)
    );
    let data = c.cli.clone();
    let sampler = Sampler::start(Duration::from_millis(50), move || data.running());
    c.commit(&[("web.yaml", Some(&slow))], "web: v2, slow start");
    let at_kill = c.wait_for("a revision 2 instance", 30, || {
        let running = c.running();
        web_of(&running)
            .iter()
            .any(|r| r.revision == "2")
            .then_some(running.clone())
    });
    c.kill_agent();
    std::thread::sleep(Duration::from_millis(500));
    let while_dead = c.running();
    c.start_agent();
    let (code, out) = c.rollout_wait("web", 2, "90s");
    let samples = sampler.finish();
    assert_eq!(code, 0, "{out}\n{}", c.logs());

    // The old instances leave within their grace.
    let end = c.wait_for("revision 2 to run alone", 15, || {
        let running = c.running();
        let web = web_of(&running);
        (web.len() == 2 && web.iter().all(|r| r.revision == "2")).then_some(running.clone())
    });
    let web_end = web_of(&end);
    // No duplicate: exactly two revision 2 instances were ever started (an agent that lost
    // track of the one it started before the kill would start a third).
    let mut seen: Vec<String> = samples
        .iter()
        .chain(std::iter::once(&end))
        .flat_map(|s| web_of(s).into_iter().filter(|r| r.revision == "2"))
        .map(|r| r.id.clone())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        2,
        "revision 2 instances: {seen:?}\n{}",
        c.logs()
    );
    // Healthy containers were not restarted: an instance keeps one init (pid and start
    // time) in every sample, before, during and after the agent's absence.
    let mut inits: std::collections::BTreeMap<String, (i32, u64)> = Default::default();
    for r in samples
        .iter()
        .chain([&while_dead, &end])
        .flat_map(|s| web_of(s))
    {
        let first = inits.entry(r.id.clone()).or_insert((r.pid, r.start_time));
        assert_eq!(*first, (r.pid, r.start_time), "{} restarted", r.id);
    }
    assert!(
        web_of(&while_dead).iter().any(|r| r.revision == "1"),
        "the agent died mid-rollout: {while_dead:?}"
    );
    // The revision 2 instance started before the kill was adopted, not replaced.
    let started_before: Vec<&Running> = web_of(&at_kill)
        .into_iter()
        .filter(|r| r.revision == "2")
        .collect();
    for r in started_before {
        assert!(
            web_end.iter().any(|e| **e == *r),
            "{} was replaced: {end:?}\n{}",
            r.id,
            c.logs()
        );
    }
}

#[test]
fn apps_keep_serving_while_the_controller_is_down_and_the_agent_reconnects() {
    let Some(mut c) = Cluster::new(&["hello"]) else {
        return;
    };
    let (v1, v2) = (
        web(&c, "hello:latest", 1, HTTP_UP, UPDATE),
        web(&c, "hello:v2", 1, HTTP_UP, UPDATE),
    );
    c.commit(&[("web.yaml", Some(&v1))], "add web");
    c.start_controller();
    c.start_agent();
    c.wait_revision("web", 1);
    assert_eq!(c.rollout_wait("web", 1, "90s").0, 0, "{}", c.logs());
    let body = c.wait_for("the proxy to answer", 10, || c.http_get(PROXY_PORT, "/"));
    assert_eq!(body.trim(), "hello from berth");
    let before = c.running();

    c.kill_controller();
    let until = Instant::now() + Duration::from_secs(60);
    let mut requests = 0;
    while Instant::now() < until {
        let body = c.http_get(PROXY_PORT, "/");
        assert!(
            body.as_deref()
                .is_some_and(|b| b.trim() == "hello from berth"),
            "request {requests} without the controller: {body:?}\n{}",
            c.logs()
        );
        requests += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        c.running(),
        before,
        "nothing restarted while the controller was down"
    );

    // Back: the agent reconnects (reports again) and converges on a new commit.
    c.start_controller();
    c.wait_for("the host to report again", 30, || {
        let s = c.json(&["status"]);
        (s["hosts"][0]["ready"] == true && s["apps"][0]["ready"] == 1).then_some(())
    });
    assert_eq!(c.running(), before);
    c.commit(&[("web.yaml", Some(&v2))], "web: v2");
    c.wait_revision("web", 2);
    assert_eq!(c.rollout_wait("web", 2, "60s").0, 0, "{}", c.logs());
    let body = c.wait_for("revision 2 behind the proxy", 10, || {
        c.http_get(PROXY_PORT, "/")
            .filter(|b| b.trim() == "hello from berth v2")
    });
    assert_eq!(body.trim(), "hello from berth v2");
}

#[test]
fn a_crash_looping_revision_shows_its_exit_and_log_lines_and_rolls_back() {
    let Some(mut c) = Cluster::new(&["hello"]) else {
        return;
    };
    c.commit(
        &[(
            "web.yaml",
            Some(&web(&c, "hello:latest", 1, &probe("/up"), UPDATE)),
        )],
        "add web",
    );
    c.start_controller();
    c.start_agent();
    c.wait_revision("web", 1);
    assert_eq!(c.rollout_wait("web", 1, "90s").0, 0, "{}", c.logs());
    let before = c.running();

    // Revision 2 exits 3 at once, saying why on stderr.
    let crashing = format!(
        "{}command: [/bin/sh, -c, 'echo config file missing >&2; exit 3']\n",
        web(&c, "hello:latest", 1, &probe("/up"), UPDATE)
    );
    c.commit(&[("web.yaml", Some(&crashing))], "web: crashes");
    c.wait_revision("web", 2);
    // While it loops, ps shows it restarting with its exit code and last log line.
    let seen = c.wait_for("the crashing instance in ps", 30, || {
        let ps = c.json(&["ps"]);
        ps.as_array()?
            .iter()
            .find(|i| i["revision"] == 2 && i["state"] == "restarting")
            .cloned()
    });
    let message = seen["message"].as_str().unwrap();
    assert!(
        message.contains("exit code 3") && message.contains("config file missing"),
        "{seen}"
    );
    let (code, out) = c.rollout_wait("web", 2, "60s");
    assert_eq!(code, 1, "{out}\n{}", c.logs());
    assert!(
        out.contains("crash loop") && out.contains("config file missing"),
        "names the crash loop and its log line: {out}"
    );
    let status = c.json(&["status"]);
    assert_eq!(status["apps"][0]["revision"], 1, "{status}");
    assert!(
        status["apps"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("exit code 3"),
        "{status}"
    );
    // Revision 1 was never touched.
    c.wait_for("the crashing instance to be removed", 15, || {
        (c.running() == before).then_some(())
    });
}
