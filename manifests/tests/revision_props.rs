//! Property tests of revision identity, through the real YAML parser:
//! - a random valid app, written as YAML in random styles (key order, block or flow,
//!   indentation, quoting, comments, equivalent spellings, defaults written or omitted),
//!   loads back to the same `App` and the same revision;
//! - every single-field change of an app changes its revision.
//!
//! Plus a fuzz-ish property: random bytes and random YAML-ish text never panic.

// Generators and mutations live outside #[test] functions; a failed unwrap there is a test bug.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use berth_manifests::app::{
    App, Autoscale, Expose, Health, Logs, Metric, NetworkMode, Placement, Probe, Protocol,
    Resources, Restart, RestartPolicy, Stop, Update, Volume,
};
use berth_manifests::{ByteSize, Cpu, Duration, ImageRef, Signal, Source, defaults, load};
use proptest::prelude::*;

// ---- a tiny deterministic RNG for style choices (shrinking stays on the app) ---------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

// ---- a YAML tree and a randomized emitter --------------------------------------------------

enum Y {
    Plain(String),
    Str(String),
    Map(Vec<(String, Y)>),
    Seq(Vec<Y>),
}

fn is_plain_safe(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'/')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'_' | b'-' | b'.'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "nan" | "inf"
        )
}

fn scalar(s: &str, rng: &mut Rng) -> String {
    match rng.pick(3) {
        0 if is_plain_safe(s) => s.to_owned(),
        1 if !s.contains('\'') && !s.chars().any(char::is_control) => format!("'{s}'"),
        _ => serde_json::to_string(s).unwrap_or_default(),
    }
}

fn flow(y: &Y, rng: &mut Rng) -> String {
    match y {
        Y::Plain(s) => s.clone(),
        Y::Str(s) => scalar(s, rng),
        Y::Map(entries) => {
            let items: Vec<String> = shuffled(entries, rng)
                .iter()
                .map(|(k, v)| format!("{k}: {}", flow(v, rng)))
                .collect();
            format!("{{{}}}", items.join(if rng.coin() { ", " } else { ",  " }))
        }
        Y::Seq(items) => {
            let items: Vec<String> = items.iter().map(|v| flow(v, rng)).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

fn shuffled<'a, T>(v: &'a [T], rng: &mut Rng) -> Vec<&'a T> {
    let mut refs: Vec<&T> = v.iter().collect();
    for i in (1..refs.len()).rev() {
        let j = rng.pick(i + 1);
        refs.swap(i, j);
    }
    refs
}

fn block(entries: &[(String, Y)], indent: usize, step: usize, rng: &mut Rng, out: &mut String) {
    for (k, v) in shuffled(entries, rng) {
        let pad = " ".repeat(indent);
        if rng.pick(8) == 0 {
            out.push_str(&format!("{pad}# about {k}\n"));
        }
        match v {
            Y::Map(inner) if !inner.is_empty() && rng.coin() => {
                out.push_str(&format!("{pad}{k}:\n"));
                block(inner, indent + step, step, rng, out);
            }
            Y::Seq(items) if !items.is_empty() && rng.coin() => {
                out.push_str(&format!("{pad}{k}:\n"));
                for item in items {
                    out.push_str(&format!("{pad}{}- {}\n", " ".repeat(step), flow(item, rng)));
                }
            }
            other => out.push_str(&format!("{pad}{k}: {}\n", flow(other, rng))),
        }
    }
}

fn emit(app: &App, rng: &mut Rng) -> String {
    let y = to_yaml(app, rng);
    let Y::Map(entries) = y else {
        return String::new();
    };
    let mut out = String::new();
    if rng.coin() {
        out.push_str("---\n");
    }
    if rng.pick(4) == 0 {
        out.push_str(&flow(&Y::Map(entries), rng));
        out.push('\n');
    } else {
        let step = [2, 3, 4][rng.pick(3)];
        block(&entries, 0, step, rng, &mut out);
    }
    out
}

// ---- equivalent spellings -----------------------------------------------------------------

fn duration(d: Duration, rng: &mut Rng) -> Y {
    let ms = d.as_millis();
    match rng.pick(3) {
        0 => Y::Str(d.to_string()),
        1 => Y::Plain(format!("{ms}ms")),
        _ if ms.is_multiple_of(1000) => Y::Plain(format!("{}s", ms / 1000)),
        _ => Y::Str(d.to_string()),
    }
}

fn size(s: ByteSize, rng: &mut Rng) -> Y {
    let b = s.as_bytes();
    match rng.pick(4) {
        0 => Y::Plain(b.to_string()),
        1 => Y::Plain(format!("{b}B")),
        2 if b.is_multiple_of(1 << 20) => Y::Plain(format!("{}MiB", b >> 20)),
        _ => Y::Str(s.to_string()),
    }
}

fn cpu(c: Cpu, rng: &mut Rng) -> Y {
    match rng.pick(3) {
        0 => Y::Plain(c.to_string()),
        1 => Y::Plain(format!("{}m", c.as_millis())),
        _ => Y::Str(c.to_string()),
    }
}

fn signal(s: Signal, rng: &mut Rng) -> Y {
    let name = s.to_string();
    match rng.pick(4) {
        0 => Y::Plain(name),
        1 => Y::Plain(name.trim_start_matches("SIG").to_owned()),
        2 => Y::Plain(name.to_ascii_lowercase()),
        _ => Y::Plain(s.number().to_string()),
    }
}

fn image(r: &ImageRef, rng: &mut Rng) -> Y {
    let full = r.to_string();
    let mut short = full.clone();
    if rng.coin() && r.registry() == "docker.io" {
        short = short.trim_start_matches("docker.io/").to_owned();
        if rng.coin() {
            short = short.trim_start_matches("library/").to_owned();
            if short.contains('/') {
                short = full.clone();
            }
        }
    }
    if rng.coin() && r.tag() == Some("latest") && r.digest().is_none() {
        short = short.trim_end_matches(":latest").to_owned();
    }
    Y::Str(short)
}

fn num(n: impl ToString) -> Y {
    Y::Plain(n.to_string())
}

/// Adds `key: value` unless the value is the default and the coin says omit it.
fn put(m: &mut Vec<(String, Y)>, key: &str, value: Y, is_default: bool, rng: &mut Rng) {
    if !(is_default && rng.coin()) {
        m.push((key.to_owned(), value));
    }
}

fn to_yaml(a: &App, rng: &mut Rng) -> Y {
    let mut m = Vec::new();
    m.push(("app".to_owned(), Y::Str(a.app.clone())));
    m.push(("image".to_owned(), image(&a.image, rng)));
    if let Some(c) = &a.command {
        m.push((
            "command".to_owned(),
            Y::Seq(c.iter().map(|s| Y::Str(s.clone())).collect()),
        ));
    }
    if !a.env.is_empty() || rng.coin() {
        m.push((
            "env".to_owned(),
            Y::Map(
                a.env
                    .iter()
                    .map(|(k, v)| (k.clone(), Y::Str(v.clone())))
                    .collect(),
            ),
        ));
    }
    let mut res = Vec::new();
    put(
        &mut res,
        "cpu",
        cpu(a.resources.cpu, rng),
        a.resources.cpu == defaults::CPU,
        rng,
    );
    put(
        &mut res,
        "memory",
        size(a.resources.memory, rng),
        a.resources.memory == defaults::MEMORY,
        rng,
    );
    put(
        &mut res,
        "pids",
        num(a.resources.pids),
        a.resources.pids == defaults::PIDS,
        rng,
    );
    put(&mut m, "resources", Y::Map(res), false, rng);
    if let Some(p) = a.port {
        m.push(("port".to_owned(), num(p)));
    }
    if let Some(e) = &a.expose {
        let mut x = vec![("port".to_owned(), num(e.port))];
        put(
            &mut x,
            "protocol",
            Y::Plain(e.protocol.as_str().to_owned()),
            e.protocol == defaults::EXPOSE_PROTOCOL,
            rng,
        );
        m.push(("expose".to_owned(), Y::Map(x)));
    }
    if let Some(r) = a.replicas {
        put(&mut m, "replicas", num(r), r == defaults::REPLICAS, rng);
    }
    if let Some(s) = &a.autoscale {
        let mut x = Vec::new();
        put(
            &mut x,
            "min",
            num(s.min),
            s.min == defaults::AUTOSCALE_MIN,
            rng,
        );
        x.push(("max".to_owned(), num(s.max)));
        put(
            &mut x,
            "metric",
            Y::Plain(s.metric.as_str().to_owned()),
            s.metric == defaults::AUTOSCALE_METRIC,
            rng,
        );
        put(
            &mut x,
            "target",
            num(s.target),
            s.metric == Metric::Cpu && s.target == defaults::AUTOSCALE_CPU_TARGET,
            rng,
        );
        put(
            &mut x,
            "scale_up_window",
            duration(s.scale_up_window, rng),
            s.scale_up_window == defaults::SCALE_UP_WINDOW,
            rng,
        );
        put(
            &mut x,
            "scale_down_window",
            duration(s.scale_down_window, rng),
            s.scale_down_window == defaults::SCALE_DOWN_WINDOW,
            rng,
        );
        m.push(("autoscale".to_owned(), Y::Map(x)));
    }
    if let Some(h) = &a.health {
        let mut x = Vec::new();
        match &h.probe {
            Probe::Http { path, .. } => x.push(("http".to_owned(), Y::Str(path.clone()))),
            Probe::Tcp { port } => x.push(("tcp".to_owned(), num(port))),
            Probe::Exec { command } => x.push((
                "exec".to_owned(),
                Y::Seq(command.iter().map(|s| Y::Str(s.clone())).collect()),
            )),
        }
        put(
            &mut x,
            "interval",
            duration(h.interval, rng),
            h.interval == defaults::HEALTH_INTERVAL,
            rng,
        );
        put(
            &mut x,
            "timeout",
            duration(h.timeout, rng),
            h.timeout == defaults::HEALTH_TIMEOUT,
            rng,
        );
        put(
            &mut x,
            "failures",
            num(h.failures),
            h.failures == defaults::HEALTH_FAILURES,
            rng,
        );
        put(
            &mut x,
            "start_period",
            duration(h.start_period, rng),
            h.start_period == defaults::HEALTH_START_PERIOD,
            rng,
        );
        m.push(("health".to_owned(), Y::Map(x)));
    }
    let u = &a.update;
    let mut x = Vec::new();
    put(
        &mut x,
        "max_surge",
        num(u.max_surge),
        u.max_surge == defaults::MAX_SURGE,
        rng,
    );
    put(
        &mut x,
        "max_unavailable",
        num(u.max_unavailable),
        u.max_unavailable == defaults::MAX_UNAVAILABLE,
        rng,
    );
    put(
        &mut x,
        "deadline",
        duration(u.deadline, rng),
        u.deadline == defaults::UPDATE_DEADLINE,
        rng,
    );
    put(
        &mut x,
        "auto_rollback",
        Y::Plain(u.auto_rollback.to_string()),
        u.auto_rollback == defaults::AUTO_ROLLBACK,
        rng,
    );
    put(&mut m, "update", Y::Map(x), false, rng);
    let mut x = Vec::new();
    put(
        &mut x,
        "signal",
        signal(a.stop.signal, rng),
        a.stop.signal == defaults::STOP_SIGNAL,
        rng,
    );
    put(
        &mut x,
        "grace",
        duration(a.stop.grace, rng),
        a.stop.grace == defaults::STOP_GRACE,
        rng,
    );
    put(&mut m, "stop", Y::Map(x), false, rng);
    let mut x = Vec::new();
    put(
        &mut x,
        "policy",
        Y::Plain(a.restart.policy.as_str().to_owned()),
        a.restart.policy == defaults::RESTART_POLICY,
        rng,
    );
    put(
        &mut x,
        "backoff_max",
        duration(a.restart.backoff_max, rng),
        a.restart.backoff_max == defaults::RESTART_BACKOFF_MAX,
        rng,
    );
    put(&mut m, "restart", Y::Map(x), false, rng);
    if !a.volumes.is_empty() {
        let mut vols: Vec<Y> = a
            .volumes
            .iter()
            .map(|v| {
                let mut x = vec![
                    ("name".to_owned(), Y::Str(v.name.clone())),
                    ("path".to_owned(), Y::Str(v.path.clone())),
                ];
                put(
                    &mut x,
                    "read_only",
                    Y::Plain(v.read_only.to_string()),
                    !v.read_only,
                    rng,
                );
                Y::Map(x)
            })
            .collect();
        // Volume order does not matter: they are sorted by path.
        if rng.coin() {
            vols.reverse();
        }
        m.push(("volumes".to_owned(), Y::Seq(vols)));
    }
    let mut x = Vec::new();
    if !a.placement.labels.is_empty() {
        x.push((
            "labels".to_owned(),
            Y::Map(
                a.placement
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Y::Str(v.clone())))
                    .collect(),
            ),
        ));
    }
    put(
        &mut x,
        "spread",
        Y::Plain(a.placement.spread.to_string()),
        a.placement.spread == defaults::PLACEMENT_SPREAD,
        rng,
    );
    put(&mut m, "placement", Y::Map(x), false, rng);
    put(
        &mut m,
        "network",
        Y::Plain(a.network.as_str().to_owned()),
        a.network == defaults::NETWORK,
        rng,
    );
    let mut x = Vec::new();
    put(
        &mut x,
        "max_size",
        size(a.logs.max_size, rng),
        a.logs.max_size == defaults::LOGS_MAX_SIZE,
        rng,
    );
    put(
        &mut x,
        "max_files",
        num(a.logs.max_files),
        a.logs.max_files == defaults::LOGS_MAX_FILES,
        rng,
    );
    put(&mut m, "logs", Y::Map(x), false, rng);
    Y::Map(m)
}

// ---- random valid apps --------------------------------------------------------------------

fn dur(min_ms: u64, max_ms: u64) -> impl Strategy<Value = Duration> {
    prop_oneof![
        (min_ms..=max_ms).prop_map(Duration::from_millis),
        ((min_ms / 1000).max(u64::from(min_ms > 0))..=(max_ms / 1000))
            .prop_map(Duration::from_secs),
    ]
}

fn image_ref() -> impl Strategy<Value = ImageRef> {
    let registry = prop_oneof![
        Just(""),
        Just("registry.example/"),
        Just("127.0.0.1:5000/"),
        Just("docker.io/")
    ];
    let repo = "[a-z][a-z0-9]{0,6}(/[a-z][a-z0-9]{0,6})?";
    let tag = proptest::option::of("[a-z0-9][a-z0-9.-]{0,6}");
    let digest = proptest::option::of("[0-9a-f]{64}");
    (registry, repo, tag, digest).prop_filter_map("valid reference", |(r, p, t, d)| {
        let mut s = format!("{r}{p}");
        if let Some(t) = t {
            s.push(':');
            s.push_str(&t);
        }
        if let Some(d) = d {
            s.push_str("@sha256:");
            s.push_str(&d);
        }
        s.parse().ok()
    })
}

prop_compose! {
    fn resources()(cpu in 10u64..=64_000, mib in 6u64..=65_536, extra in prop_oneof![Just(0u64), 0u64..1_000_000], pids in 1u32..=100_000) -> Resources {
        Resources { cpu: Cpu::from_millis(cpu), memory: ByteSize::from_bytes((mib << 20) + extra), pids }
    }
}

prop_compose! {
    fn scaling()(fixed in any::<bool>(), replicas in 0u32..=1000, a in 1u32..=1000, b in 1u32..=1000,
                 metric in prop_oneof![Just(Metric::Cpu), Just(Metric::Rps), Just(Metric::Concurrency)],
                 target in 1u32..=10_000, up in dur(0, 600_000), down in dur(0, 3_600_000)) -> (Option<u32>, Option<Autoscale>) {
        if fixed {
            (Some(replicas), None)
        } else {
            (None, Some(Autoscale { min: a.min(b), max: a.max(b), metric, target, scale_up_window: up, scale_down_window: down }))
        }
    }
}

prop_compose! {
    fn health()(kind in 0u8..3, path in "/[a-z0-9/_.-]{0,12}", tcp in 1u16..=65535, cmd in prop::collection::vec("[a-z/][a-z0-9/ .-]{0,8}", 1..4),
                interval in dur(100, 3_600_000), timeout in dur(1, 60_000), failures in 1u32..=100, start in dur(0, 600_000)) -> (u8, String, u16, Vec<String>, Duration, Duration, u32, Duration) {
        (kind, path, tcp, cmd, interval, timeout, failures, start)
    }
}

prop_compose! {
    fn volumes()(v in prop::collection::btree_map("[a-z][a-z0-9-]{0,8}[a-z0-9]", ("(/[a-z][a-z0-9_.-]{0,6}){1,3}", any::<bool>()), 0..4)) -> Vec<Volume> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out: Vec<Volume> = v.into_iter()
            .filter(|(_, (p, _))| seen.insert(p.clone()) && !p.starts_with("/proc") && !p.starts_with("/sys") && !p.starts_with("/dev"))
            .filter(|(_, (p, _))| !p.split('/').any(|c| c == "." || c == ".."))
            .map(|(name, (path, read_only))| Volume { name, path, read_only })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

prop_compose! {
    fn app()(
        name in "[a-z][a-z0-9-]{0,20}[a-z0-9]",
        image in image_ref(),
        command in proptest::option::of(prop::collection::vec("[ -~]{1,10}", 1..4)),
        env in prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,8}", "[ -~]{0,12}", 0..5),
        resources in resources(),
        port in proptest::option::of(1u16..=65535),
        expose_port in proptest::option::of(1u16..=65535),
        tcp in any::<bool>(),
        scaling in scaling(),
        health in proptest::option::of(health()),
        update in (0u32..=5, 0u32..=5, dur(1000, 86_400_000), any::<bool>()),
        stop in (prop_oneof![Just("SIGTERM"), Just("SIGINT"), Just("SIGQUIT"), Just("SIGKILL"), Just("SIGUSR1")], dur(0, 3_600_000)),
        restart in (prop_oneof![Just(RestartPolicy::Always), Just(RestartPolicy::OnFailure), Just(RestartPolicy::Never)], dur(100, 3_600_000)),
        volumes in volumes(),
        placement in (prop::collection::btree_map("[a-z][a-z0-9.-]{0,8}[a-z0-9]", "([a-z0-9][a-z0-9._-]{0,8}[a-z0-9])?", 0..3), any::<bool>()),
        network in prop_oneof![Just(NetworkMode::Private), Just(NetworkMode::Host)],
        logs in (4096u64..=(1 << 30), 1u32..=100),
    ) -> App {
        let env: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| k != "PORT").collect();
        let expose = match (port, expose_port) {
            (Some(p), Some(e)) if !(network == NetworkMode::Host && p == e) => Some(Expose { port: e, protocol: Protocol::Http }),
            _ => None,
        };
        let (mut replicas, mut autoscale) = scaling;
        // `rps` needs HTTP: only apps that do not scale on it may be TCP.
        let mut expose = expose;
        if let Some(e) = &mut expose && tcp && !matches!(&autoscale, Some(a) if a.metric == Metric::Rps) {
            e.protocol = Protocol::Tcp;
        }
        if let Some(a) = &mut autoscale && a.min == 0 { a.min = 1; }
        if replicas.is_none() && autoscale.is_none() { replicas = Some(1); }
        let health = health.map(|(kind, path, tcp, cmd, interval, timeout, failures, start_period)| {
            let probe = match (kind, port) {
                (0, Some(p)) => Probe::Http { path, port: p },
                (1, _) | (0, None) => Probe::Tcp { port: tcp },
                _ => Probe::Exec { command: cmd },
            };
            Health { probe, interval, timeout, failures, start_period }
        });
        let (max_surge, max_unavailable, deadline, auto_rollback) = update;
        let max_surge = if max_surge == 0 && max_unavailable == 0 { 1 } else { max_surge };
        App {
            app: name,
            image,
            command,
            env,
            resources,
            port,
            expose,
            replicas,
            autoscale,
            health,
            update: Update { max_surge, max_unavailable, deadline, auto_rollback },
            stop: Stop { signal: stop.0.parse().unwrap(), grace: stop.1 },
            restart: Restart { policy: restart.0, backoff_max: restart.1 },
            volumes,
            placement: Placement { labels: placement.0, spread: placement.1 },
            network,
            logs: Logs { max_size: ByteSize::from_bytes(logs.0), max_files: logs.1 },
        }
    }
}

fn load_yaml(yaml: &str) -> Result<App, String> {
    match load(&[Source {
        path: "p.yaml",
        bytes: yaml.as_bytes(),
    }]) {
        Ok(mut set) if set.manifests.len() == 1 => Ok(set.manifests.remove(0).app),
        Ok(set) => Err(format!("{} apps", set.manifests.len())),
        Err(d) => Err(d
            .0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")),
    }
}

/// Single-field changes; each returns false when it does not apply to this app.
type Mutation = (&'static str, fn(&mut App) -> bool);

const MUTATIONS: &[Mutation] = &[
    ("app", |a| {
        a.app.push('x');
        a.app.len() <= 63
    }),
    ("image", |a| {
        a.image = format!("{}/{}:changed", a.image.registry(), a.image.repository())
            .parse()
            .unwrap();
        true
    }),
    ("command", |a| {
        a.command = match a.command.take() {
            Some(mut c) => {
                c.push("x".into());
                Some(c)
            }
            None => Some(vec!["x".into()]),
        };
        true
    }),
    ("env", |a| {
        a.env.insert("ADDED_KEY".into(), "v".into());
        true
    }),
    ("env value", |a| match a.env.values_mut().next() {
        Some(v) => {
            v.push('!');
            true
        }
        None => false,
    }),
    ("resources.cpu", |a| {
        a.resources.cpu = Cpu::from_millis(if a.resources.cpu.as_millis() == 10 {
            11
        } else {
            a.resources.cpu.as_millis() - 1
        });
        true
    }),
    ("resources.memory", |a| {
        a.resources.memory = ByteSize::from_bytes(a.resources.memory.as_bytes() + 1);
        true
    }),
    ("resources.pids", |a| {
        a.resources.pids = if a.resources.pids == 1 {
            2
        } else {
            a.resources.pids - 1
        };
        true
    }),
    ("port", |a| match a.port {
        Some(p)
            if a.expose.is_none()
                && !matches!(
                    a.health,
                    Some(Health {
                        probe: Probe::Http { .. },
                        ..
                    })
                ) =>
        {
            a.port = Some(if p == 1 { 2 } else { p - 1 });
            true
        }
        _ => false,
    }),
    ("expose.port", |a| match &mut a.expose {
        Some(e) => {
            e.port = if e.port == 1 { 2 } else { e.port - 1 };
            Some(e.port) != a.port || a.network == NetworkMode::Private
        }
        None => false,
    }),
    ("expose.protocol", |a| {
        let rps = matches!(&a.autoscale, Some(s) if s.metric == Metric::Rps);
        match &mut a.expose {
            Some(e) if !rps => {
                e.protocol = match e.protocol {
                    Protocol::Http => Protocol::Tcp,
                    Protocol::Tcp => Protocol::Http,
                };
                true
            }
            _ => false,
        }
    }),
    ("replicas", |a| match &mut a.replicas {
        Some(r) => {
            *r = if *r == 0 { 1 } else { *r - 1 };
            true
        }
        None => false,
    }),
    ("autoscale.max", |a| match &mut a.autoscale {
        Some(s) if s.max < 1000 => {
            s.max += 1;
            true
        }
        _ => false,
    }),
    ("autoscale.min", |a| match &mut a.autoscale {
        Some(s) if s.min < s.max => {
            s.min += 1;
            true
        }
        _ => false,
    }),
    ("autoscale.metric", |a| match &mut a.autoscale {
        Some(s) => {
            let tcp = a
                .expose
                .as_ref()
                .is_some_and(|e| e.protocol == Protocol::Tcp);
            s.metric = match s.metric {
                Metric::Rps => Metric::Concurrency,
                Metric::Concurrency if tcp => Metric::Cpu,
                _ if tcp => Metric::Concurrency,
                _ => Metric::Rps,
            };
            true
        }
        None => false,
    }),
    ("autoscale.target", |a| match &mut a.autoscale {
        Some(s) => {
            s.target += 1;
            true
        }
        None => false,
    }),
    ("autoscale.scale_up_window", |a| match &mut a.autoscale {
        Some(s) => {
            s.scale_up_window = Duration::from_millis(s.scale_up_window.as_millis() + 1);
            true
        }
        None => false,
    }),
    ("autoscale.scale_down_window", |a| match &mut a.autoscale {
        Some(s) => {
            s.scale_down_window = Duration::from_millis(s.scale_down_window.as_millis() + 1);
            true
        }
        None => false,
    }),
    ("replicas -> autoscale", |a| {
        if a.replicas.is_some() {
            a.replicas = None;
            a.autoscale = Some(Autoscale {
                min: 1,
                max: 2,
                metric: Metric::Cpu,
                target: 60,
                scale_up_window: Duration::ZERO,
                scale_down_window: Duration::from_secs(60),
            });
            true
        } else {
            false
        }
    }),
    ("health", |a| {
        if a.health.is_some() {
            a.health = None
        } else {
            a.health = Some(Health {
                probe: Probe::Tcp { port: 1 },
                interval: defaults::HEALTH_INTERVAL,
                timeout: defaults::HEALTH_TIMEOUT,
                failures: 3,
                start_period: Duration::ZERO,
            })
        }
        true
    }),
    ("health.probe", |a| match &mut a.health {
        Some(h) => {
            h.probe = match &h.probe {
                Probe::Exec { command } => Probe::Exec {
                    command: [command.clone(), vec!["y".into()]].concat(),
                },
                _ => Probe::Exec {
                    command: vec!["check".into()],
                },
            };
            true
        }
        None => false,
    }),
    ("health.interval", |a| match &mut a.health {
        Some(h) => {
            h.interval = Duration::from_millis(h.interval.as_millis() + 1);
            true
        }
        None => false,
    }),
    ("health.timeout", |a| match &mut a.health {
        Some(h) => {
            h.timeout = Duration::from_millis(h.timeout.as_millis() + 1);
            true
        }
        None => false,
    }),
    ("health.failures", |a| match &mut a.health {
        Some(h) => {
            h.failures = if h.failures == 100 {
                99
            } else {
                h.failures + 1
            };
            true
        }
        None => false,
    }),
    ("health.start_period", |a| match &mut a.health {
        Some(h) => {
            h.start_period = Duration::from_millis(h.start_period.as_millis() + 1);
            true
        }
        None => false,
    }),
    ("update.max_surge", |a| {
        a.update.max_surge += 1;
        true
    }),
    ("update.max_unavailable", |a| {
        a.update.max_unavailable += 1;
        true
    }),
    ("update.deadline", |a| {
        a.update.deadline = Duration::from_millis(a.update.deadline.as_millis() + 1);
        a.update.deadline <= defaults::MAX_DURATION
    }),
    ("update.auto_rollback", |a| {
        a.update.auto_rollback = !a.update.auto_rollback;
        true
    }),
    ("stop.signal", |a| {
        a.stop.signal = if a.stop.signal == Signal::TERM {
            Signal::KILL
        } else {
            Signal::TERM
        };
        true
    }),
    ("stop.grace", |a| {
        a.stop.grace = Duration::from_millis(a.stop.grace.as_millis() + 1);
        true
    }),
    ("restart.policy", |a| {
        a.restart.policy = if a.restart.policy == RestartPolicy::Never {
            RestartPolicy::Always
        } else {
            RestartPolicy::Never
        };
        true
    }),
    ("restart.backoff_max", |a| {
        a.restart.backoff_max = Duration::from_millis(a.restart.backoff_max.as_millis() + 1);
        true
    }),
    ("volumes", |a| {
        if a.volumes.iter().any(|v| v.path == "/zz-added") {
            return false;
        }
        a.volumes.push(Volume {
            name: "zz-added".into(),
            path: "/zz-added".into(),
            read_only: false,
        });
        a.volumes.sort_by(|x, y| x.path.cmp(&y.path));
        a.volumes
            .iter()
            .filter(|v| v.name == "zz-added")
            .nth(1)
            .is_none()
    }),
    ("volumes[].read_only", |a| match a.volumes.first_mut() {
        Some(v) => {
            v.read_only = !v.read_only;
            true
        }
        None => false,
    }),
    ("placement.labels", |a| {
        a.placement.labels.insert("added".into(), "yes".into());
        true
    }),
    ("placement.spread", |a| {
        a.placement.spread = !a.placement.spread;
        true
    }),
    ("network", |a| {
        a.network = if a.network == NetworkMode::Host {
            NetworkMode::Private
        } else {
            NetworkMode::Host
        };
        !(a.network == NetworkMode::Host
            && a.expose.as_ref().map(|e| e.port) == a.port
            && a.port.is_some())
    }),
    ("logs.max_size", |a| {
        a.logs.max_size = ByteSize::from_bytes(a.logs.max_size.as_bytes() + 1);
        a.logs.max_size.as_bytes() <= 1 << 30
    }),
    ("logs.max_files", |a| {
        a.logs.max_files = if a.logs.max_files == 100 {
            99
        } else {
            a.logs.max_files + 1
        };
        true
    }),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn revision_is_invariant_under_key_order_style_and_spelling(app in app(), seed1 in 1u64.., seed2 in 1u64..) {
        let y1 = emit(&app, &mut Rng(seed1));
        let y2 = emit(&app, &mut Rng(seed2));
        let a1 = load_yaml(&y1).map_err(|e| TestCaseError::fail(format!("{e}\n---\n{y1}")))?;
        let a2 = load_yaml(&y2).map_err(|e| TestCaseError::fail(format!("{e}\n---\n{y2}")))?;
        prop_assert_eq!(&a1, &app, "{}", y1);
        prop_assert_eq!(&a2, &app, "{}", y2);
        prop_assert_eq!(a1.revision(), a2.revision());
        // The wire form (JSON) round-trips to the same app and revision.
        let wire: App = serde_json::from_str(&serde_json::to_string(&app).unwrap()).unwrap();
        prop_assert_eq!(wire.revision(), app.revision());
        prop_assert_eq!(wire, app);
    }

    #[test]
    fn every_single_field_change_changes_the_revision(app in app(), seed in 1u64..) {
        let before = app.revision();
        for (field, mutate) in MUTATIONS {
            let mut changed = app.clone();
            if !mutate(&mut changed) || changed == app {
                continue;
            }
            prop_assert_ne!(&changed.revision(), &before, "{} did not change the revision", field);
            // The changed app is valid and reads back the same through YAML.
            let yaml = emit(&changed, &mut Rng(seed));
            let loaded = load_yaml(&yaml).map_err(|e| TestCaseError::fail(format!("{field}: {e}\n---\n{yaml}")))?;
            prop_assert_eq!(loaded.revision(), changed.revision(), "{}", field);
        }
    }

    #[test]
    fn damaged_manifests_never_panic(app in app(), seed in 1u64.., edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8)) {
        let mut bytes = emit(&app, &mut Rng(seed)).into_bytes();
        for (at, op, byte) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, b"-:[]{}&*!|>'\"#\n\t ,?"[usize::from(byte) % 17]),
                _ => { bytes.remove(i); }
            }
        }
        let _ = load(&[Source { path: "f.yaml", bytes: &bytes }]);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = load(&[Source { path: "f.yaml", bytes: &bytes }]);
    }

    #[test]
    fn random_yaml_like_text_never_panics(text in "([a-z_]{1,6}: ?|- |[\\[\\]{},:&*!|>'\"#%@`-]|[0-9.]{1,4}|\n {0,4}| ){0,80}") {
        let _ = load(&[Source { path: "f.yaml", bytes: text.as_bytes() }]);
    }
}

#[test]
fn every_mutation_applies_to_some_generated_app() {
    // Guards the property above against mutations that never apply.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut applied = vec![false; MUTATIONS.len()];
    for _ in 0..300 {
        let app = app().new_tree(&mut runner).unwrap().current();
        for (i, (_, m)) in MUTATIONS.iter().enumerate() {
            let mut c = app.clone();
            if m(&mut c) && c != app {
                applied[i] = true;
            }
        }
    }
    let never: Vec<&str> = MUTATIONS
        .iter()
        .zip(&applied)
        .filter(|(_, a)| !**a)
        .map(|((n, _), _)| *n)
        .collect();
    assert!(never.is_empty(), "never applied: {never:?}");
}
