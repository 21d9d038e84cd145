//! The controller's API against real components: a real RedbStore under a tempdir data dir,
//! a real local bare git repository pushed to with the `git` CLI, the real HTTP server on a
//! free loopback port, driven through the typed client (and raw reqwest for auth and limits).
//! Only the digest resolver is a fake (the registry resolver has its own real-registry test).
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

use std::sync::Arc;
use std::time::Duration;

use berth_controller::client::{Client, ClientError};
use berth_controller::resolve::FakeResolver;
use berth_controller::{Config, Controller, ControllerHandle};
use berth_manifests::wire::{
    AppReport, HostReport, Registration, RevisionState, RolloutPhase, RolloutState,
};
use berth_testkit::{GitRemote, git, registration};

/// A bare "remote", a work clone that pushes to it, and a data dir; all removed on drop.
struct Fixture {
    dir: tempfile::TempDir,
    repo: GitRemote,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = GitRemote::init(dir.path());
        Fixture { dir, repo }
    }

    fn push(&self, path: &str, text: &str, message: &str) -> String {
        self.repo.push(path, text, message)
    }

    fn remove(&self, path: &str, message: &str) {
        self.repo.commit(&[(path, None)], message);
    }

    async fn start(&self, resolver: Arc<FakeResolver>) -> (ControllerHandle, Client) {
        let mut config = Config::new(
            self.dir.path().join("data"),
            self.repo.url(),
            "main".into(),
            resolver,
        );
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.poll_interval = Duration::from_secs(3600);
        let handle = Controller::start(config).await.unwrap();
        let client = Client::new(&handle.url(), handle.token()).unwrap();
        (handle, client)
    }
}

fn web(image: &str) -> String {
    format!("app: web\nimage: {image}\nreplicas: 3\n")
}

fn report(host: &str, version: u64, target: u64, rollout: RolloutState) -> HostReport {
    HostReport {
        host: host.into(),
        assignment_version: version,
        instances: Vec::new(),
        apps: vec![AppReport {
            requests_total: None,
            app: "web".into(),
            target,
            desired: 2,
            ready: 2,
            rollout,
        }],
        events: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_loop_through_the_api() {
    let fx = Fixture::new();
    fx.push("apps/web.yaml", &web("busybox:1"), "add web");
    let resolver = Arc::new(FakeResolver::new());
    let (handle, client) = fx.start(resolver.clone()).await;

    // a valid commit makes revision 1 with a resolved digest and the commit as cause
    let sync = client.sync().await.unwrap();
    assert!(sync.errors.is_empty(), "{:?}", sync.errors);
    let revs = client.revisions("web").await.unwrap();
    assert_eq!(revs.len(), 1);
    assert_eq!(revs[0].number, 1);
    assert_eq!(revs[0].state, RevisionState::Active);
    assert!(revs[0].digest.starts_with("sha256:"));
    assert!(revs[0].cause.ends_with(": add web"), "{}", revs[0].cause);

    // two hosts register; 3 replicas are divided 2 + 1: h2 came first and keeps its even
    // share, h1 takes the excess
    let r = client.register(&registration("h2")).await.unwrap();
    assert!(r.assignment_version >= 1);
    client.register(&registration("h1")).await.unwrap();
    let a1 = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    let a2 = client.assignment("h2", None, Duration::ZERO).await.unwrap();
    assert_eq!(a1.apps[0].target.number, 1);
    assert_eq!(
        a1.apps[0].scale,
        berth_manifests::wire::Scale::Fixed { replicas: 1 }
    );
    assert_eq!(
        a2.apps[0].scale,
        berth_manifests::wire::Scale::Fixed { replicas: 2 }
    );
    assert_eq!(a1.apps[0].fallback, None);

    // a long-poll with the current version waits; a pushed change answers it promptly
    let v = a1.version;
    let poller = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .assignment("h1", Some(v), Duration::from_secs(50))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poller.is_finished(), "long-poll answered without a change");
    fx.push("apps/web.yaml", &web("busybox:2"), "bump web to 2");
    #[allow(
        clippy::disallowed_methods,
        reason = "measures the long-poll's latency for the report; not asserted"
    )]
    let started = std::time::Instant::now();
    client.sync().await.unwrap();
    let a = tokio::time::timeout(Duration::from_secs(10), poller)
        .await
        .expect("long-poll did not return after the change")
        .unwrap()
        .unwrap();
    let waited = started.elapsed();
    assert!(a.version > v);
    assert_eq!(a.apps[0].target.number, 2);
    assert_eq!(a.apps[0].fallback.as_ref().unwrap().number, 1);
    eprintln!("long-poll answered {waited:?} after the sync request started");

    // an invalid commit changes nothing and shows path:line:col in status and events
    fx.push(
        "apps/web.yaml",
        "app: web\nimage: busybox:3\nreplicas: lots\n",
        "break web",
    );
    let sync = client.sync().await.unwrap();
    assert!(sync.errors.len() >= 2, "{:?}", sync.errors);
    assert!(sync.errors[0].contains("refused"), "{:?}", sync.errors);
    assert!(
        sync.errors[1].starts_with("apps/web.yaml:3:"),
        "{:?}",
        sync.errors
    );
    let status = client.status().await.unwrap();
    assert_eq!(status.apps[0].revision, 2);
    assert_eq!(status.sync.errors, sync.errors);
    assert_eq!(client.revisions("web").await.unwrap().len(), 2);
    let after = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    assert_eq!(
        after.version, a.version,
        "invalid commit changed the assignment"
    );
    let mut reasons = Vec::new();
    client
        .events(false, |e| {
            reasons.push(e.reason);
            true
        })
        .await
        .unwrap();
    assert!(reasons.contains(&"SyncFailed".to_string()), "{reasons:?}");

    // a host reports revision 2 rolled back: it is failed, the target returns to 1
    client
        .report(&report(
            "h1",
            a.version,
            2,
            RolloutState::RolledBack {
                to: 1,
                reason: "health check GET /up failed 3 times: status 500".into(),
            },
        ))
        .await
        .unwrap();
    let revs = client.revisions("web").await.unwrap();
    assert_eq!(revs[1].state, RevisionState::Failed);
    assert!(revs[1].failure.as_deref().unwrap().contains("status 500"));
    assert_eq!(revs[0].state, RevisionState::Active);
    let status = client.status().await.unwrap();
    assert_eq!(status.apps[0].revision, 1);
    assert_eq!(status.apps[0].head, 2);
    assert!(
        status.apps[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("status 500")
    );
    let back = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    assert!(back.version > a.version);
    assert_eq!(back.apps[0].target.number, 1);
    let rollout = client.rollout("web", Some(2)).await.unwrap();
    assert_eq!(rollout.phase, RolloutPhase::Failed);
    assert!(rollout.message.contains("GET /up"), "{}", rollout.message);

    // the failed spec is not retried by an unrelated commit
    fx.push("README.md", "docs\n", "docs only");
    fx.push("apps/web.yaml", &web("busybox:2"), "restore web 2 spec");
    client.sync().await.unwrap();
    assert_eq!(client.revisions("web").await.unwrap().len(), 2);

    // a new spec makes revision 3; rollback --to 1 pins; the next spec change unpins
    fx.push("apps/web.yaml", &web("busybox:3"), "web 3");
    client.sync().await.unwrap();
    assert_eq!(client.status().await.unwrap().apps[0].revision, 3);
    let pinned = client.rollback("web", Some(1)).await.unwrap();
    assert!(pinned.pinned);
    assert_eq!(pinned.number, 1);
    let status = client.status().await.unwrap();
    assert!(status.apps[0].pinned);
    assert_eq!(status.apps[0].revision, 1);
    let revs = client.revisions("web").await.unwrap();
    assert!(revs[0].pinned && !revs[2].pinned);
    let a = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    assert!(a.apps[0].pinned);
    assert_eq!(a.apps[0].target.number, 1);
    // while pinned, rollout status follows the pinned revision
    assert_eq!(client.rollout("web", None).await.unwrap().revision, 1);
    assert_eq!(
        client.rollout("web", Some(3)).await.unwrap().phase,
        RolloutPhase::Superseded
    );
    // rollback to a failed revision is refused with a conflict
    let err = client.rollback("web", Some(2)).await.unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 409, .. }), "{err}");
    // an unrelated commit keeps the pin
    fx.push("other.yaml", "app: api\nimage: busybox:1\n", "add api");
    client.sync().await.unwrap();
    assert!(client.status().await.unwrap().apps.iter().any(|a| a.pinned));
    fx.push("apps/web.yaml", &web("busybox:4"), "web 4");
    client.sync().await.unwrap();
    let status = client.status().await.unwrap();
    let w = status.apps.iter().find(|a| a.name == "web").unwrap();
    assert!(!w.pinned);
    assert_eq!(w.revision, 4);

    // complete reports make the rollout complete
    let a1 = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    let a2 = client.assignment("h2", None, Duration::ZERO).await.unwrap();
    let mut r1 = report("h1", a1.version, 4, RolloutState::Complete);
    r1.apps[0].desired = 2;
    r1.instances.push(berth_manifests::wire::InstanceReport {
        id: "web-4-ab12".into(),
        app: "web".into(),
        revision: 4,
        state: berth_manifests::wire::InstanceState::Ready,
        restarts: 1,
        last_exit_code: Some(137),
        message: String::new(),
        started_at_ms: 5,
    });
    client.report(&r1).await.unwrap();
    assert_eq!(
        client.rollout("web", None).await.unwrap().phase,
        RolloutPhase::Progressing
    );
    let mut r2 = report("h2", a2.version, 4, RolloutState::Complete);
    r2.apps[0].desired = 1;
    r2.apps[0].ready = 1;
    client.report(&r2).await.unwrap();
    let rollout = client.rollout("web", None).await.unwrap();
    assert_eq!(rollout.phase, RolloutPhase::Complete, "{rollout:?}");
    let instances = client.instances().await.unwrap();
    assert_eq!(instances.len(), 1);
    assert_eq!(
        (instances[0].host.as_str(), instances[0].revision),
        ("h1", 4)
    );
    assert_eq!(instances[0].restarts, 1);
    assert_eq!((rollout.desired, rollout.ready), (3, 3));

    // removing the app from git removes it from assignments but keeps its history
    fx.remove("apps/web.yaml", "drop web");
    client.sync().await.unwrap();
    let a = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    assert!(a.apps.iter().all(|x| x.target.app != "web"));
    assert_eq!(client.revisions("web").await.unwrap().len(), 4);

    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_401_and_oversized_body_is_413() {
    let fx = Fixture::new();
    fx.push("web.yaml", &web("busybox:1"), "add web");
    let (handle, client) = fx.start(Arc::new(FakeResolver::new())).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/status", handle.url());
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http
        .get(&url)
        .bearer_auth(handle.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let big = vec![b' '; 2 << 20];
    let resp = http
        .post(format!("{}/v1/agents/register", handle.url()))
        .bearer_auth(handle.token())
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // a report for an unregistered host is 404, a bad host name 400
    let err = client
        .report(&report("nobody", 1, 1, RolloutState::Progressing))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 404, .. }), "{err}");
    let err = client
        .register(&registration("Not_A_Label"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 400, .. }), "{err}");
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_controller_restart_and_shutdown_ends_long_polls() {
    let fx = Fixture::new();
    fx.push("web.yaml", &web("busybox:1"), "add web");
    let resolver = Arc::new(FakeResolver::new());
    let (handle, client) = fx.start(resolver.clone()).await;
    client.sync().await.unwrap();
    client.register(&registration("h1")).await.unwrap();
    let a = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    let token = handle.token().to_string();
    let poller = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .assignment("h1", Some(a.version), Duration::from_secs(50))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(10), handle.shutdown())
        .await
        .expect("shutdown hung on a long-poll")
        .unwrap();
    let answered = poller.await.unwrap().unwrap();
    assert_eq!(answered.version, a.version);

    // same data dir: same token, same revisions and assignment version; one resolve only
    let calls = resolver.calls();
    let (handle, client) = fx.start(resolver.clone()).await;
    assert_eq!(handle.token(), token);
    client.sync().await.unwrap();
    assert_eq!(client.revisions("web").await.unwrap().len(), 1);
    let again = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    assert_eq!(again.version, a.version);
    assert_eq!(
        resolver.calls(),
        calls,
        "an unchanged spec was resolved again"
    );
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_is_marked_down_its_apps_move_and_it_gets_work_back_after_a_grace_period() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let fx = Fixture::new();
    fx.push("web.yaml", &web("busybox:1"), "add web");
    let now = Arc::new(AtomicU64::new(1_000_000));
    let mut config = Config::new(
        fx.dir.path().join("data"),
        fx.repo.url(),
        "main".into(),
        Arc::new(FakeResolver::new()),
    );
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.poll_interval = Duration::from_secs(3600);
    config.host_grace = Duration::from_secs(30);
    let clock = now.clone();
    config.clock = Arc::new(move || clock.load(Ordering::SeqCst));
    let handle = Controller::start(config).await.unwrap();
    let client = Client::new(&handle.url(), handle.token()).unwrap();
    client.sync().await.unwrap();
    client.register(&registration("h1")).await.unwrap();
    client.register(&registration("h2")).await.unwrap();
    let share = |a: &berth_manifests::wire::Assignment| {
        a.apps
            .iter()
            .map(|x| berth_controller::assign::share(x.scale))
            .sum::<u32>()
    };
    let h1 = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    assert_eq!(share(&h1), 2, "{h1:?}");
    // h2 keeps reporting, h1 falls silent past its grace period
    now.fetch_add(20_000, Ordering::SeqCst);
    client
        .report(&report("h2", 0, 1, RolloutState::Progressing))
        .await
        .unwrap();
    now.fetch_add(11_000, Ordering::SeqCst);
    handle.core().check_hosts().await.unwrap();
    let status = client.status().await.unwrap();
    let state = |s: &berth_manifests::wire::ClusterStatus, h: &str| {
        s.hosts.iter().find(|x| x.name == h).unwrap().state.clone()
    };
    assert_eq!(state(&status, "h1"), "down");
    assert!(!status.hosts[0].ready);
    assert_eq!(state(&status, "h2"), "ready");
    let down = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    assert!(
        down.apps.is_empty(),
        "a down host is assigned nothing: {down:?}"
    );
    let h2 = client.assignment("h2", None, Duration::ZERO).await.unwrap();
    assert_eq!(share(&h2), 3, "h2 runs all of web now: {h2:?}");
    let mut events = Vec::new();
    client
        .events(false, |e| {
            events.push(e);
            true
        })
        .await
        .unwrap();
    let marked = events.iter().find(|e| e.reason == "HostDown").unwrap();
    assert!(
        marked
            .message
            .contains("host h1 has not reported for 31.0s (grace 30.0s)"),
        "{}",
        marked.message
    );

    // h1 reports again: returning, no work for a grace period (no flapping), then its share
    client
        .report(&report("h1", down.version, 1, RolloutState::Progressing))
        .await
        .unwrap();
    client
        .report(&report("h2", h2.version, 1, RolloutState::Progressing))
        .await
        .unwrap();
    handle.core().check_hosts().await.unwrap();
    assert_eq!(state(&client.status().await.unwrap(), "h1"), "returning");
    assert!(
        client
            .assignment("h1", None, Duration::ZERO)
            .await
            .unwrap()
            .apps
            .is_empty()
    );
    now.fetch_add(29_000, Ordering::SeqCst);
    client
        .report(&report("h1", down.version, 1, RolloutState::Progressing))
        .await
        .unwrap();
    client
        .report(&report("h2", h2.version, 1, RolloutState::Progressing))
        .await
        .unwrap();
    handle.core().check_hosts().await.unwrap();
    assert!(
        client
            .assignment("h1", None, Duration::ZERO)
            .await
            .unwrap()
            .apps
            .is_empty()
    );
    now.fetch_add(2_000, Ordering::SeqCst);
    handle.core().check_hosts().await.unwrap();
    assert_eq!(state(&client.status().await.unwrap(), "h1"), "ready");
    let back = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    assert_eq!(
        share(&back),
        1,
        "h1 takes back the excess over h2's even share: {back:?}"
    );
    let h2 = client.assignment("h2", None, Duration::ZERO).await.unwrap();
    assert_eq!(share(&h2), 2);
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_that_do_not_fit_are_reported_and_what_runs_stays() {
    let fx = Fixture::new();
    fx.push(
        "web.yaml",
        "app: web\nimage: busybox:1\nreplicas: 3\nresources: { cpu: 1, memory: 1Gi }\n",
        "add web",
    );
    let (handle, client) = fx.start(Arc::new(FakeResolver::new())).await;
    client.sync().await.unwrap();
    let mut small = registration("h1");
    small.capacity = berth_manifests::wire::Capacity {
        cpu_millis: 2000,
        memory_bytes: 8 << 30,
    };
    client.register(&small).await.unwrap();
    let a = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    assert_eq!(
        a.apps[0].scale,
        berth_manifests::wire::Scale::Fixed { replicas: 2 }
    );
    let status = client.status().await.unwrap();
    let unplaced = status.apps[0].unplaced.clone().unwrap();
    assert_eq!(
        unplaced,
        "1 of 3 instance(s) not placed: each needs cpu 1, memory 1Gi; free on the matching hosts: h1 cpu 0, memory 6Gi"
    );
    assert_eq!(status.hosts[0].allocated.cpu_millis, 2000);
    let view = client.placement().await.unwrap();
    assert_eq!(view.unplaced[0].app, "web");
    assert_eq!((view.unplaced[0].wanted, view.unplaced[0].placed), (3, 2));
    assert_eq!(view.hosts[0].apps[0].instances, 2);
    // a second host with room takes the third; h1 keeps its two
    let mut big = registration("h2");
    big.capacity = berth_manifests::wire::Capacity {
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
    };
    client.register(&big).await.unwrap();
    let a2 = client.assignment("h2", None, Duration::ZERO).await.unwrap();
    assert_eq!(
        a2.apps[0].scale,
        berth_manifests::wire::Scale::Fixed { replicas: 1 }
    );
    let a1 = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    assert_eq!(
        a1.apps[0].scale,
        berth_manifests::wire::Scale::Fixed { replicas: 2 }
    );
    assert!(client.status().await.unwrap().apps[0].unplaced.is_none());
    let mut events = Vec::new();
    client
        .events(false, |e| {
            events.push(e);
            true
        })
        .await
        .unwrap();
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    assert!(
        reasons.contains(&"AppUnplaced") && reasons.contains(&"AppPlaced"),
        "{reasons:?}"
    );
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_streams_new_events_as_they_happen() {
    let fx = Fixture::new();
    fx.push("web.yaml", &web("busybox:1"), "add web");
    let (handle, client) = fx.start(Arc::new(FakeResolver::new())).await;
    client.sync().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = {
        let client = client.clone();
        tokio::spawn(async move { client.events(true, |e| tx.send(e).is_ok()).await })
    };
    // the stored history comes first
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.reason, "RevisionCreated");
    fx.push("web.yaml", &web("busybox:2"), "web 2");
    client.sync().await.unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains("revision 2")) {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the followed stream did not deliver the new revision")
            .unwrap();
        seen.push(e.message);
    }
    // shutdown ends the stream
    tokio::time::timeout(Duration::from_secs(10), handle.shutdown())
        .await
        .expect("shutdown hung on an event stream")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the follower did not end")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_webhook_accepts_signed_payloads_and_refuses_bad_signatures() {
    let fx = Fixture::new();
    fx.push("web.yaml", &web("busybox:1"), "add web");
    let (handle, client) = fx.start(Arc::new(FakeResolver::new())).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/sync", handle.url());
    let payload = br#"{"ref":"refs/heads/main"}"#.to_vec();
    let mac = berth_controller::token::hmac_sha256(handle.token().as_bytes(), &payload);
    let resp = http
        .post(&url)
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hex_encode(&mac)),
        )
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(client.revisions("web").await.unwrap().len(), 1);
    let resp = http
        .post(&url)
        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http
        .post(&url)
        .header("x-gitlab-token", handle.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // the webhook headers open only the sync route
    let resp = http
        .get(format!("{}/v1/status", handle.url()))
        .header("x-gitlab-token", handle.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    handle.shutdown().await.unwrap();
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_image_refuses_the_whole_commit() {
    let fx = Fixture::new();
    fx.push("web.yaml", &web("busybox:1"), "add web");
    let resolver = Arc::new(FakeResolver::new());
    resolver.set("docker.io/library/busybox:9", "missing");
    let (handle, client) = fx.start(resolver).await;
    client.sync().await.unwrap();
    // one commit adds api and moves web to a tag that does not exist
    std::fs::write(
        fx.repo.work().join("api.yaml"),
        "app: api\nimage: busybox:2\n",
    )
    .unwrap();
    fx.push(
        "web.yaml",
        &web("busybox:9"),
        "add api; web to a missing tag",
    );
    let sync = client.sync().await.unwrap();
    assert!(
        sync.errors
            .iter()
            .any(|e| e.contains("app web") && e.contains("not found")),
        "{:?}",
        sync.errors
    );
    let status = client.status().await.unwrap();
    assert_eq!(
        status.apps.len(),
        1,
        "api was applied from a refused commit"
    );
    assert_eq!(client.revisions("web").await.unwrap().len(), 1);
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_local_repository_is_applied_without_poll_or_webhook() {
    let fx = Fixture::new();
    fx.push("web.yaml", &web("busybox:1"), "add web");
    // poll interval 1h: only the ref watch can notice the push
    let (handle, client) = fx.start(Arc::new(FakeResolver::new())).await;
    let mut applied = false;
    for _ in 0..100 {
        if client.status().await.unwrap().apps.len() == 1 {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied, "the first sync at start did not apply the head");
    // packed refs are read too
    git(fx.repo.bare(), &["pack-refs", "--all"]);
    fx.push("web.yaml", &web("busybox:2"), "web 2");
    let mut revision = 0;
    for _ in 0..100 {
        revision = client.status().await.unwrap().apps[0].revision;
        if revision == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(revision, 2, "the push was not noticed");
    let source = berth_controller::git::GitSource::new(
        fx.repo.bare().to_str().unwrap(),
        "main",
        &fx.dir.path().join("unused-mirror"),
    )
    .unwrap();
    let head = git(fx.repo.work(), &["rev-parse", "HEAD"]);
    assert_eq!(source.local_head().as_deref(), Some(head.trim()));
    git(fx.repo.bare(), &["pack-refs", "--all", "--prune"]);
    assert_eq!(source.local_head().as_deref(), Some(head.trim()));
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cannot_fail_a_revision_of_an_app_it_does_not_run() {
    let fx = Fixture::new();
    let placed =
        |image: &str| format!("app: web\nimage: {image}\nplacement:\n  labels:\n    role: web\n");
    fx.push("web.yaml", &placed("busybox:1"), "add web");
    let (handle, client) = fx.start(Arc::new(FakeResolver::new())).await;
    client.sync().await.unwrap();
    let labelled = |name: &str, role: &str| Registration {
        labels: [("role".to_string(), role.to_string())].into(),
        ..registration(name)
    };
    client.register(&labelled("db1", "db")).await.unwrap();
    client.register(&labelled("web1", "web")).await.unwrap();
    assert!(
        client
            .assignment("db1", None, Duration::ZERO)
            .await
            .unwrap()
            .apps
            .is_empty()
    );
    fx.push("web.yaml", &placed("busybox:2"), "web 2");
    client.sync().await.unwrap();
    let failed = |host: &str| {
        report(
            host,
            1,
            2,
            RolloutState::RolledBack {
                to: 1,
                reason: format!("reported by {host}"),
            },
        )
    };
    client.report(&failed("db1")).await.unwrap();
    let revs = client.revisions("web").await.unwrap();
    assert_eq!(
        revs[1].state,
        RevisionState::Active,
        "db1 failed web's revision"
    );
    client.report(&failed("web1")).await.unwrap();
    let revs = client.revisions("web").await.unwrap();
    assert_eq!(revs[1].state, RevisionState::Failed);
    assert_eq!(revs[1].failure.as_deref(), Some("reported by web1"));
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_repository_shows_in_status_until_it_is_back() {
    let fx = Fixture::new();
    fx.push("web.yaml", &web("busybox:1"), "add web");
    let (handle, client) = fx.start(Arc::new(FakeResolver::new())).await;
    assert!(client.sync().await.unwrap().errors.is_empty());
    let moved = fx.dir.path().join("moved.git");
    std::fs::rename(fx.repo.bare(), &moved).unwrap();
    let sync = client.sync().await.unwrap();
    assert_eq!(sync.errors.len(), 1, "{:?}", sync.errors);
    assert!(
        sync.errors[0].contains("git fetch failed"),
        "{:?}",
        sync.errors
    );
    assert_eq!(
        client.status().await.unwrap().apps[0].revision,
        1,
        "apps kept"
    );
    std::fs::rename(&moved, fx.repo.bare()).unwrap();
    let sync = client.sync().await.unwrap();
    assert!(sync.errors.is_empty(), "stale error: {:?}", sync.errors);
    handle.shutdown().await.unwrap();
}
