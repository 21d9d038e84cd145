//! System test of the HA control plane: three real `berth controller` processes on one real
//! etcd (berth-testkit), following one real git repository. One leads (etcd lease) and
//! syncs; the others serve reads and forward writes. The leader is killed (SIGKILL, by pid)
//! 0-450 ms after a push, before, during or after its sync: another takes over within the
//! lease TTL (plus a poll) and the app's history has each revision exactly once. Writes sent
//! to followers (sync, registrations, tokens) are forwarded; a follower's long-poll answers
//! when the leader changes the assignment.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]
#![allow(
    clippy::disallowed_methods,
    reason = "measures the failover time, printed and bounded by the lease TTL"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_controller::access::{TokenRequest, TokenRole};
use berth_controller::client::Client;
use berth_manifests::wire::{AppReport, HostReport, RevisionState, RolloutState, Scale};
use berth_testkit::{Etcd, GitRemote, registration};

const TOKEN: &str = "ha-test-token";
const LEASE_TTL: Duration = Duration::from_secs(2);

/// A controller process, killed (by its pid) on drop.
struct Daemon {
    child: Option<Child>,
    url: String,
    log: PathBuf,
}

impl Daemon {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn alive(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_controller(etcd: &Etcd, repo: &Path, data: &Path) -> Daemon {
    std::fs::create_dir_all(data).unwrap();
    let port = berth_testkit::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let log = data.join("controller.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(assert_cmd::cargo::cargo_bin("berth"))
        .args(["controller", "--repo"])
        .arg(format!("file://{}", repo.display()))
        .args(["--branch", "main", "--listen", &listen])
        .args(["--poll-interval", "200ms", "--store", &etcd.url()])
        .args(["--lease-ttl", "2s", "--token", TOKEN, "--data-dir"])
        .arg(data)
        .env("BERTH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    Daemon {
        child: Some(child),
        url: format!("http://{listen}"),
        log,
    }
}

fn image(n: u8) -> String {
    // digests in the manifest need no registry call
    format!("busybox@sha256:{}", format!("{n:x}").repeat(64))
}

fn logs(daemons: &[Daemon]) -> String {
    daemons
        .iter()
        .map(|d| {
            format!(
                "--- {} ---\n{}",
                d.url,
                std::fs::read_to_string(&d.log).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until every live controller names the same leader, which is one of them; returns
/// its index.
async fn one_leader(daemons: &[Daemon], within: Duration) -> usize {
    let started = Instant::now();
    loop {
        let mut leading = Vec::new();
        let mut named = Vec::new();
        for (i, d) in daemons.iter().enumerate().filter(|(_, d)| d.alive()) {
            let Ok(status) = Client::new(&d.url, TOKEN).unwrap().leader().await else {
                named.push(None);
                continue;
            };
            if status.leading {
                leading.push(i);
            }
            named.push(status.leader.map(|m| m.url));
        }
        if let [i] = leading[..]
            && named
                .iter()
                .all(|n| n.as_deref() == Some(daemons[i].url.as_str()))
        {
            return i;
        }
        assert!(
            started.elapsed() < within,
            "no single leader after {within:?}: leading {leading:?}, named {named:?}\n{}",
            logs(daemons)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `berth_controller_leader` on `d`'s `/metrics` (no token needed) is `want`.
async fn leader_gauge_becomes(d: &Daemon, want: &str) {
    let addr = d.url.trim_start_matches("http://");
    let mut last = String::new();
    for _ in 0..100 {
        let text = berth_testkit::http_get(addr, "/metrics").unwrap_or_default();
        last = text
            .lines()
            .find_map(|l| l.strip_prefix("berth_controller_leader "))
            .unwrap_or_default()
            .to_string();
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "berth_controller_leader on {} is {last:?}, not {want}",
        d.url
    );
}

/// Waits until a live controller shows `want` revisions of web; returns them.
async fn revisions(daemons: &[Daemon], want: usize) -> Vec<berth_manifests::wire::RevisionInfo> {
    for _ in 0..300 {
        for d in daemons.iter().filter(|d| d.alive()) {
            if let Ok(revs) = Client::new(&d.url, TOKEN).unwrap().revisions("web").await
                && revs.len() >= want
            {
                return revs;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("web never had {want} revisions\n{}", logs(daemons));
}

fn assert_history(revs: &[berth_manifests::wire::RevisionInfo], images: &[String]) {
    let numbers: Vec<u64> = revs.iter().map(|r| r.number).collect();
    let expected: Vec<u64> = (1..=images.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "a revision was lost or made twice: {revs:#?}"
    );
    for (rev, image) in revs.iter().zip(images) {
        assert!(image.ends_with(&rev.digest), "{rev:?} is not {image}");
    }
    let last = revs.len() - 1;
    for (i, rev) in revs.iter().enumerate() {
        let want = if i == last {
            RevisionState::Active
        } else {
            RevisionState::Superseded
        };
        assert_eq!(rev.state, want, "revision {}: {revs:#?}", rev.number);
    }
}

#[test]
fn killing_the_leader_during_a_sync_loses_no_revision_and_makes_none_twice() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRemote::init(dir.path());
    let bare = repo.bare().to_path_buf();
    let push = |n: u8| {
        repo.push(
            "web.yaml",
            &format!("app: web\nimage: {}\nreplicas: 2\n", image(n)),
            &format!("web {n}"),
        );
    };
    push(1);
    let mut daemons: Vec<Daemon> = ["a", "b", "c"]
        .iter()
        .map(|n| start_controller(&etcd, &bare, &dir.path().join(n)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let first = one_leader(&daemons, Duration::from_secs(30)).await;
        let revs = revisions(&daemons, 1).await;
        assert_history(&revs, &[image(1)]);
        // the leader gauge says the same: 1 on the leader, 0 on the others
        for (i, d) in daemons.iter().enumerate() {
            let want = if i == first { "1" } else { "0" };
            leader_gauge_becomes(d, want).await;
        }

        // a write sent to a follower is forwarded to the leader and answered by it
        let follower = (first + 1) % daemons.len();
        let synced = Client::new(&daemons[follower].url, TOKEN)
            .unwrap()
            .sync()
            .await
            .unwrap();
        assert!(synced.errors.is_empty(), "{synced:?}");
        assert!(synced.commit.is_some());
        // a wrong token is refused by a follower as by the leader
        let wrong = Client::new(&daemons[follower].url, "wrong").unwrap();
        assert!(wrong.sync().await.is_err());
        // tokens live in etcd: one made through a follower (forwarded) works on every
        // controller, with its role
        let read = Client::new(&daemons[follower].url, TOKEN)
            .unwrap()
            .create_token(&TokenRequest {
                role: TokenRole::Read,
                host: None,
            })
            .await
            .unwrap();
        for d in &daemons {
            let reader = Client::new(&d.url, &read.token).unwrap();
            assert_eq!(reader.revisions("web").await.unwrap().len(), 1);
            let err = reader.sync().await.unwrap_err();
            assert!(err.to_string().contains("needs deploy"), "{err}");
        }

        // an agent long-polling a follower hears of a change the leader made: h1 registers
        // through one follower (forwarded), long-polls another, and h2's registration
        // halves h1's share of web
        let other = (first + 2) % daemons.len();
        let via_follower = Client::new(&daemons[follower].url, TOKEN).unwrap();
        let registered = via_follower.register(&registration("h1")).await.unwrap();
        let h1 = Client::new(&daemons[other].url, TOKEN).unwrap();
        let before = h1.assignment("h1", None, Duration::ZERO).await.unwrap();
        assert_eq!(before.version, registered.assignment_version);
        assert_eq!(before.apps[0].scale, Scale::Fixed { replicas: 2 });
        let poll = tokio::spawn(async move {
            h1.assignment("h1", Some(before.version), Duration::from_secs(30))
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !poll.is_finished(),
            "the long-poll answered without a change"
        );
        let started = Instant::now();
        via_follower.register(&registration("h2")).await.unwrap();
        let after = poll.await.unwrap().unwrap();
        eprintln!(
            "a follower answered its long-poll {:?} after the leader's change",
            started.elapsed()
        );
        assert!(after.version > before.version, "{after:?}");
        assert_eq!(after.apps[0].scale, Scale::Fixed { replicas: 1 });

        // the leader dies at several points after a push: before its sync noticed the push
        // (the ref watch runs every 200 ms), during it, or after it; a fresh controller
        // replaces it each time so three stay in the election
        let mut images = vec![image(1)];
        let mut leader = first;
        for (n, delay_ms) in [(2u8, 0u64), (3, 150), (4, 300), (5, 450)] {
            push(n);
            images.push(image(n));
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            daemons[leader].kill();
            let killed = Instant::now();
            let data = dir.path().join(format!("replacement-{n}"));
            daemons.push(start_controller(&etcd, &bare, &data));
            let next = one_leader(&daemons, LEASE_TTL * 2 + Duration::from_secs(4)).await;
            let took = killed.elapsed();
            eprintln!(
                "leader killed {delay_ms} ms after the push: another led after {took:?} \
                 (lease TTL {LEASE_TTL:?})"
            );
            assert_ne!(next, leader);
            leader = next;
            let revs = revisions(&daemons, images.len()).await;
            assert_history(&revs, &images);
        }
        // a rollout completes once: h1 reports revision 5 complete through a follower, the
        // leader dies, h1 retries the same report through another controller
        let complete = HostReport {
            host: "h1".into(),
            assignment_version: 0,
            instances: Vec::new(),
            apps: vec![AppReport {
                requests_total: None,
                app: "web".into(),
                target: 5,
                desired: 1,
                ready: 1,
                rollout: RolloutState::Complete,
            }],
            events: Vec::new(),
        };
        let follower = daemons
            .iter()
            .position(|d| d.alive() && d.url != daemons[leader].url)
            .unwrap();
        Client::new(&daemons[follower].url, TOKEN)
            .unwrap()
            .report(&complete)
            .await
            .unwrap();
        daemons[leader].kill();
        daemons.push(start_controller(
            &etcd,
            &bare,
            &dir.path().join("replacement-r"),
        ));
        leader = one_leader(&daemons, LEASE_TTL * 2 + Duration::from_secs(4)).await;
        let retry = daemons
            .iter()
            .position(|d| d.alive() && d.url != daemons[leader].url)
            .unwrap();
        Client::new(&daemons[retry].url, TOKEN)
            .unwrap()
            .report(&complete)
            .await
            .unwrap();
        let rollout = Client::new(&daemons[retry].url, TOKEN)
            .unwrap()
            .rollout("web", Some(5))
            .await
            .unwrap();
        assert_eq!(rollout.revision, 5, "{rollout:?}");
        let mut completions = 0;
        Client::new(&daemons[leader].url, TOKEN)
            .unwrap()
            .events(false, |e| {
                if e.reason == "RolloutComplete" && e.message.starts_with("revision 5 ") {
                    completions += 1;
                }
                true
            })
            .await
            .unwrap();
        assert_eq!(
            completions, 1,
            "the rollout of revision 5 completed {completions} times"
        );

        // the history stays as it is: no late write of a dead leader, no second revision
        tokio::time::sleep(LEASE_TTL).await;
        let revs = revisions(&daemons, images.len()).await;
        assert_history(&revs, &images);
        let status = Client::new(&daemons[leader].url, TOKEN)
            .unwrap()
            .status()
            .await
            .unwrap();
        assert_eq!(status.apps[0].revision, 5, "{status:?}");
        // no revision was announced twice (a leader killed between its write and its event
        // may leave one unannounced)
        let mut created = std::collections::BTreeMap::<String, usize>::new();
        Client::new(&daemons[leader].url, TOKEN)
            .unwrap()
            .events(false, |e| {
                if e.reason == "RevisionCreated" {
                    let number = e
                        .message
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    *created.entry(number).or_default() += 1;
                }
                true
            })
            .await
            .unwrap();
        assert!(created.values().all(|n| *n == 1), "{created:?}");
    });
}
