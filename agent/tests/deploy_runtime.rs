//! Privileged: the reconcile executor with the real adapters — container runtime, image store
//! and a real registry (berth-testkit), http probes over loopback — runs busybox httpd from
//! the `hello` test image (host network), rolls it to a new revision, shows a crash loop with
//! the container's own log lines, and stops everything when unassigned.
//!
//! A custom harness (`harness = false`): the runtime re-executes the current binary as its
//! shim, init and exec helper, so `main` dispatches those first, like the `berth` binary.
//! Needs root, docker-registry and busybox-static; skipped (with a message) when not root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use berth_agent::host::container::{self, Cgroups, HostCgroups, NoCgroups, Store};
use berth_agent::host::deploy_images::StoreImages;
use berth_agent::host::deploy_runtime::{ContainerRuntime, PROBE_EXEC_VERB, probe_exec_main};
use berth_agent::host::image_store::{ImageStore, NoProgress, PullOptions};
use berth_agent::host::probe::NetProber;
use berth_agent::host::registry::RegistryConfig;
use berth_agent::reconcile::exec::{Effects, Outcome, reconcile};
use berth_agent::reconcile::history::AppHistory;
use berth_agent::reconcile::traits::{NoTraffic, RunState, Runtime};
use berth_manifests::wire::{AssignedApp, InstanceState, RevisionSpec, RolloutState, Scale};
use berth_manifests::{Source, load};
use berth_testkit::Registry;

fn cgroups() -> Arc<dyn Cgroups + Send + Sync> {
    match HostCgroups::detect(std::path::Path::new("/proc/self/mountinfo")) {
        Ok(c) => Arc::new(c),
        Err(_) => Arc::new(NoCgroups),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__shim") => {
            let cg = cgroups();
            return ExitCode::from(container::shim::main(&args[2..], cg.as_ref()));
        }
        Some("__shim-exit") => {
            let cg = cgroups();
            return ExitCode::from(container::shim::exit_main(&args[2..], cg.as_ref()));
        }
        Some("__init") => return ExitCode::from(container::init::main()),
        Some("__exec") => return ExitCode::from(container::exec::main()),
        Some(PROBE_EXEC_VERB) => {
            let cg = cgroups();
            return ExitCode::from(probe_exec_main(&args[2..], cg.as_ref()));
        }
        _ => {}
    }
    // Listing for nextest: one test.
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("runs_rolls_and_stops_real_containers: test");
        }
        return ExitCode::SUCCESS;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(runs_rolls_and_stops_real_containers());
    println!("test runs_rolls_and_stops_real_containers ... ok");
    ExitCode::SUCCESS
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const HTTP: &str = "http: /index.html";
/// An exec probe inside the container (the www root is in the image).
const EXEC: &str = "exec: [/bin/busybox, test, -f, /www/index.html]";

fn revision(
    image: &str,
    digest: &str,
    number: u64,
    port: u16,
    command: &str,
    probe: &str,
) -> RevisionSpec {
    let yaml = format!(
        "app: web\nimage: {image}\ncommand: {command}\nport: {port}\nnetwork: host\n\
         health: {{ {probe}, interval: 1s, timeout: 2s, failures: 2 }}\n\
         update: {{ deadline: 20s }}\nstop: {{ grace: 2s }}\nresources: {{ memory: 64Mi }}\n"
    );
    let set = load(&[Source {
        path: "web.yaml",
        bytes: yaml.as_bytes(),
    }])
    .unwrap_or_else(|e| panic!("{e:?}\n{yaml}"));
    RevisionSpec {
        app: "web".into(),
        number,
        spec: set.manifests[0].app.clone(),
        spec_hash: format!("hash-{number}-{port}"),
        image_digest: digest.into(),
    }
}

/// Removes every container under the test's data dir and the test's (empty) parent cgroup,
/// even when the test fails.
struct Cleanup {
    store: Store,
    cgroups: Arc<dyn Cgroups + Send + Sync>,
    parent: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok((listed, _)) = self.store.list() {
            for l in listed {
                let _ =
                    container::remove(&self.store, self.cgroups.as_ref(), &l.state.spec.id, true);
            }
        }
        // Only our own parent, only when empty (rmdir refuses otherwise).
        let root = std::path::Path::new("/sys/fs/cgroup");
        let _ = std::fs::remove_dir(root.join(&self.parent));
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(e.path().join(&self.parent));
            }
        }
    }
}

type Fx = Effects<ContainerRuntime, StoreImages, NetProber, NoTraffic>;

async fn until(
    fx: &Fx,
    want: Option<&AssignedApp>,
    h: &mut AppHistory,
    what: &str,
    mut each: impl FnMut(&Outcome),
    done: impl Fn(&Outcome) -> bool,
) -> Outcome {
    for _ in 0..600 {
        #[allow(
            clippy::disallowed_methods,
            reason = "real time in a real-component test"
        )]
        let now = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        let out = reconcile(fx, "web", want, h, now).await;
        each(&out);
        if done(&out) {
            return out;
        }
        tokio::time::sleep(out.requeue_after.min(Duration::from_millis(200))).await;
    }
    panic!("{what}: not done in time");
}

fn complete(out: &Outcome) -> bool {
    out.report.as_ref().map(|r| &r.rollout) == Some(&RolloutState::Complete)
}

async fn get(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

async fn runs_rolls_and_stops_real_containers() {
    let reg = Registry::start().expect("start docker-registry");
    reg.push_test_images(&["hello"]).expect("push test images");
    let options = PullOptions {
        registry: RegistryConfig {
            insecure: vec![reg.addr().to_owned()],
            ..Default::default()
        },
        ..Default::default()
    };
    let data = tempfile::tempdir().unwrap();
    let images = ImageStore::open(data.path()).unwrap();
    let name = format!("{}/berth-test/hello", reg.addr());
    let digest = images
        .pull(&name.parse().unwrap(), &options, &NoProgress)
        .await
        .unwrap()
        .digest()
        .to_string();
    let cg = cgroups();
    let parent = format!("berth-test-{}-deploy", std::process::id());
    let _cleanup = Cleanup {
        store: Store::new(data.path()),
        cgroups: cg.clone(),
        parent: parent.clone(),
    };
    let runtime = ContainerRuntime::new(data.path(), images.clone(), cg)
        .unwrap()
        .with_cgroup_parent(parent);
    let fx: Fx = Effects {
        runtime: Arc::new(runtime),
        images: Arc::new(StoreImages::new(images, options)),
        prober: Arc::new(NetProber::new().unwrap()),
        traffic: Arc::new(NoTraffic),
    };
    let image = format!("{name}:latest");
    let httpd = |port: u16| format!("[/bin/busybox, httpd, -f, -p, '127.0.0.1:{port}', -h, /www]");
    let (p1, p2) = (free_port(), free_port());
    let r1 = revision(&image, &digest, 1, p1, &httpd(p1), HTTP);
    let r2 = revision(&image, &digest, 2, p2, &httpd(p2), EXEC);
    let one = |target: RevisionSpec, fallback: Option<RevisionSpec>| AssignedApp {
        target,
        fallback,
        scale: Scale::Fixed { replicas: 1 },
        pinned: false,
    };
    let mut h = AppHistory::default();

    // Revision 1 runs and answers; its probe made it ready.
    let want1 = one(r1.clone(), None);
    until(&fx, Some(&want1), &mut h, "revision 1", |_| {}, complete).await;
    let body = get(p1).await.expect("revision 1 answers");
    assert!(body.contains("hello from berth"), "{body}");

    // A rolling update to revision 2 (exec probe inside the container): revision 1 serves
    // until revision 2 is ready.
    let want2 = one(r2.clone(), Some(r1.clone()));
    until(
        &fx,
        Some(&want2),
        &mut h,
        "revision 2",
        |out| {
            let ready = out
                .instances
                .iter()
                .filter(|i| i.state == InstanceState::Ready)
                .count();
            assert!(
                ready >= 1,
                "one ready instance throughout: {:?}",
                out.instances
            );
        },
        |out| complete(out) && out.instances.len() == 1,
    )
    .await;
    assert!(get(p2).await.unwrap().contains("hello from berth"));
    assert!(get(p1).await.is_none(), "revision 1 stopped");
    let id = fx.runtime.list().await.unwrap()[0].id.clone();
    let run = |cmd: &[&str]| cmd.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    let t = Duration::from_secs(5);
    assert_eq!(
        fx.runtime
            .exec(&id, &run(&["/bin/busybox", "true"]), t)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        fx.runtime
            .exec(&id, &run(&["/bin/busybox", "false"]), t)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        fx.runtime
            .exec(&id, &run(&["/bin/sh", "-c", "exit 7"]), t)
            .await
            .unwrap(),
        7
    );

    // An agent restart (new adapter, history lost): the running container is adopted as it
    // is, not restarted or duplicated.
    let before = fx.runtime.list().await.unwrap();
    let restarted: Fx = Effects {
        runtime: Arc::new(
            ContainerRuntime::new(
                data.path(),
                ImageStore::open(data.path()).unwrap(),
                cgroups(),
            )
            .unwrap()
            .with_cgroup_parent(format!("berth-test-{}-deploy", std::process::id())),
        ),
        images: fx.images.clone(),
        prober: fx.prober.clone(),
        traffic: fx.traffic.clone(),
    };
    let mut fresh = AppHistory::default();
    until(
        &restarted,
        Some(&want2),
        &mut fresh,
        "adopt",
        |_| {},
        complete,
    )
    .await;
    for _ in 0..3 {
        until(
            &restarted,
            Some(&want2),
            &mut fresh,
            "steady",
            |_| {},
            complete,
        )
        .await;
    }
    assert_eq!(
        restarted.runtime.list().await.unwrap(),
        before,
        "adopted untouched"
    );

    // A crash loop shows the container's own last log lines and exit code.
    let crash = revision(
        &image,
        &digest,
        3,
        p1,
        "[/bin/sh, -c, 'echo config missing; exit 3']",
        HTTP,
    );
    let want3 = one(crash, Some(r2.clone()));
    let mut seen = None;
    until(
        &fx,
        Some(&want3),
        &mut h,
        "crash loop",
        |out| {
            if let Some(i) = out
                .instances
                .iter()
                .find(|i| i.state == InstanceState::Restarting)
            {
                seen = Some(i.clone());
            }
        },
        |out| {
            matches!(
                out.report.as_ref().map(|r| &r.rollout),
                Some(RolloutState::RolledBack { .. })
            )
        },
    )
    .await;
    let restarting = seen.expect("a restarting instance");
    assert_eq!(restarting.last_exit_code, Some(3));
    assert!(
        restarting.message.contains("config missing"),
        "{}",
        restarting.message
    );
    assert!(get(p2).await.is_some(), "revision 2 kept serving");

    // Unassigned: everything stops and is removed.
    until(
        &fx,
        None,
        &mut h,
        "stop",
        |_| {},
        |out| out.instances.is_empty(),
    )
    .await;
    assert!(
        fx.runtime
            .list()
            .await
            .unwrap()
            .iter()
            .all(|i| i.state != RunState::Running)
    );
    assert!(fx.runtime.list().await.unwrap().is_empty());
}
