//! The as-written spec ([`RawApp`]): each field typed but optional, with the line and column
//! it was written at, decoded from the YAML tree of `crate::yaml`. Decoding reports every
//! shape error (unknown key, wrong type, bad size, bad duration, …) at the offending value and
//! goes on, so one run lists all mistakes. Defaults and rules come later (`crate::normalize`,
//! `crate::validate`). Pure.

use crate::app::{Metric, NetworkMode, Protocol, RestartPolicy};
use std::collections::BTreeSet;

use crate::error::{Diagnostics, Location, ManifestError, quoted};
use crate::reference::ImageRef;
use crate::signal::Signal;
use crate::units::{ByteSize, Cpu, Duration, UnitError};
use crate::yaml::{Kind, Node};

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    /// The value.
    pub value: T,
    /// Where.
    pub location: Location,
}

/// Key-value pairs in source order, keys located.
pub type Pairs = Vec<(At<String>, At<String>)>;

/// `resources` as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawResources {
    pub cpu: Option<At<Cpu>>,
    pub memory: Option<At<ByteSize>>,
    pub pids: Option<At<u32>>,
}

/// `expose` as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawExpose {
    pub port: Option<At<u16>>,
    pub protocol: Option<At<Protocol>>,
}

/// `autoscale` as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawAutoscale {
    pub min: Option<At<u32>>,
    pub max: Option<At<u32>>,
    pub metric: Option<At<Metric>>,
    pub target: Option<At<u32>>,
    pub scale_up_window: Option<At<Duration>>,
    pub scale_down_window: Option<At<Duration>>,
}

/// `health` as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawHealth {
    pub http: Option<At<String>>,
    pub tcp: Option<At<u16>>,
    pub exec: Option<At<Vec<String>>>,
    pub interval: Option<At<Duration>>,
    pub timeout: Option<At<Duration>>,
    pub failures: Option<At<u32>>,
    pub start_period: Option<At<Duration>>,
}

/// `update` as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawUpdate {
    pub max_surge: Option<At<u32>>,
    pub max_unavailable: Option<At<u32>>,
    pub deadline: Option<At<Duration>>,
    pub auto_rollback: Option<At<bool>>,
}

/// `stop` as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawStop {
    pub signal: Option<At<Signal>>,
    pub grace: Option<At<Duration>>,
}

/// `restart` as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawRestart {
    pub policy: Option<At<RestartPolicy>>,
    pub backoff_max: Option<At<Duration>>,
}

/// One `volumes` entry as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawVolume {
    pub name: Option<At<String>>,
    pub path: Option<At<String>>,
    pub read_only: Option<At<bool>>,
}

/// `placement` as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawPlacement {
    pub labels: Option<At<Pairs>>,
    pub spread: Option<At<bool>>,
}

/// `logs` as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawLogs {
    pub max_size: Option<At<ByteSize>>,
    pub max_files: Option<At<u32>>,
}

/// One app as written: every field optional, typed, located.
#[derive(Debug, Clone, PartialEq)]
pub struct RawApp {
    /// Where the document's mapping starts.
    pub location: Location,
    /// Fields written with a value that could not be decoded (and was reported): rules about
    /// missing fields skip them, so one mistake gives one error.
    pub invalid: BTreeSet<String>,
    pub app: Option<At<String>>,
    pub image: Option<At<ImageRef>>,
    pub command: Option<At<Vec<String>>>,
    pub env: Option<At<Pairs>>,
    pub resources: Option<At<RawResources>>,
    pub port: Option<At<u16>>,
    pub expose: Option<At<RawExpose>>,
    pub replicas: Option<At<u32>>,
    pub autoscale: Option<At<RawAutoscale>>,
    pub health: Option<At<RawHealth>>,
    pub update: Option<At<RawUpdate>>,
    pub stop: Option<At<RawStop>>,
    pub restart: Option<At<RawRestart>>,
    pub volumes: Option<At<Vec<At<RawVolume>>>>,
    pub placement: Option<At<RawPlacement>>,
    pub network: Option<At<NetworkMode>>,
    pub logs: Option<At<RawLogs>>,
}

/// The top-level keys of an app.
pub const APP_KEYS: &[&str] = &[
    "app",
    "image",
    "command",
    "env",
    "resources",
    "port",
    "expose",
    "replicas",
    "autoscale",
    "health",
    "update",
    "stop",
    "restart",
    "volumes",
    "placement",
    "network",
    "logs",
];

/// Decoding state for one source: where errors go.
pub(crate) struct Decoder<'a> {
    pub path: &'a str,
    pub source: &'a str,
    pub errors: &'a mut Diagnostics,
    /// Fields of the current document written with an unusable value (already reported).
    pub invalid: BTreeSet<String>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Entries of a mapping whose keys were all checked against the schema.
struct Fields<'n>(Vec<(&'n str, &'n Node)>);

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

impl Decoder<'_> {
    pub fn loc(&self, n: &Node) -> Location {
        Location::new(self.path, n.line, n.column)
    }

    fn at<T>(&self, n: &Node, value: T) -> At<T> {
        At {
            value,
            location: self.loc(n),
        }
    }

    fn error(&mut self, n: &Node, error: ManifestError) {
        self.errors.push(self.loc(n), error);
    }

    /// What was written, for "got …": quoted strings, typed other scalars.
    fn got(&self, n: &Node) -> String {
        match &n.kind {
            Kind::Str(s) => quoted(s),
            Kind::Null | Kind::Seq(_) | Kind::Map(_) => n.type_name().to_owned(),
            _ => format!(
                "{} {}",
                n.type_name(),
                n.raw(self.source).map_or_else(String::new, quoted_raw)
            ),
        }
    }

    fn invalid(&mut self, n: &Node, field: &str, expected: impl Into<String>) {
        self.invalid.insert(field.to_owned());
        let got = self.got(n);
        self.error(
            n,
            ManifestError::Invalid {
                field: if field.is_empty() {
                    "document".to_owned()
                } else {
                    field.to_owned()
                },
                expected: expected.into(),
                got,
            },
        );
    }

    /// A mapping whose keys must be among `keys`; unknown keys are reported at the key.
    fn fields<'n>(
        &mut self,
        n: &'n Node,
        field: &str,
        keys: &[&str],
        expected: &str,
    ) -> Option<Fields<'n>> {
        let Kind::Map(entries) = &n.kind else {
            self.invalid(n, field, expected);
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            match &k.kind {
                Kind::Str(key) if keys.contains(&key.as_str()) => out.push((key.as_str(), v)),
                // Extension keys at the top (as in Docker Compose): a place for YAML anchors
                // that berth ignores.
                Kind::Str(key) if field.is_empty() && key.starts_with("x-") => {}
                _ => {
                    let name = match &k.kind {
                        Kind::Str(s) => s.clone(),
                        _ => k.raw(self.source).unwrap_or("?").to_owned(),
                    };
                    let suggestion = keys
                        .iter()
                        .map(|c| (distance(&name, c), *c))
                        .filter(|(d, c)| *d <= 2 && *d < c.len())
                        .min()
                        .map(|(_, c)| format!(", did you mean `{c}`?"))
                        .unwrap_or_default();
                    self.error(
                        k,
                        ManifestError::UnknownKey {
                            field: join(field, &crate::error::one_line(&name)),
                            suggestion,
                            expected: keys.join(", "),
                        },
                    );
                }
            }
        }
        Some(Fields(out))
    }

    /// A string written as a string (`app`, `image`, paths, names).
    fn string(&mut self, n: &Node, field: &str, expected: &str) -> Option<At<String>> {
        match &n.kind {
            Kind::Str(s) => Some(self.at(n, s.clone())),
            _ => {
                self.invalid(n, field, expected);
                None
            }
        }
    }

    /// Any scalar as text, spelled as written (`1.10` stays `1.10`): env values, arguments.
    fn text(&mut self, n: &Node, field: &str) -> Option<At<String>> {
        match &n.kind {
            Kind::Str(s) => Some(self.at(n, s.clone())),
            Kind::Int(_) | Kind::Float(_) | Kind::Bool(_) => {
                let raw = n.raw(self.source).map(str::to_owned);
                match raw {
                    Some(r) => Some(self.at(n, r)),
                    None => {
                        self.invalid(n, field, "a string");
                        None
                    }
                }
            }
            _ => {
                self.invalid(n, field, "a string (write \"\" for an empty value)");
                None
            }
        }
    }

    fn uint<T: TryFrom<i128>>(&mut self, n: &Node, field: &str, expected: &str) -> Option<At<T>> {
        match &n.kind {
            Kind::Int(i) => match T::try_from(*i) {
                Ok(v) => Some(self.at(n, v)),
                Err(_) => {
                    self.invalid(n, field, expected);
                    None
                }
            },
            _ => {
                self.invalid(n, field, expected);
                None
            }
        }
    }

    fn port(&mut self, n: &Node, field: &str) -> Option<At<u16>> {
        const EXPECTED: &str = "a port number from 1 to 65535";
        let p = self.uint::<u16>(n, field, EXPECTED)?;
        if p.value == 0 {
            self.invalid(n, field, EXPECTED);
            return None;
        }
        Some(p)
    }

    fn count(&mut self, n: &Node, field: &str) -> Option<At<u32>> {
        self.uint::<u32>(n, field, "a whole number, 0 or more")
    }

    fn bool(&mut self, n: &Node, field: &str) -> Option<At<bool>> {
        match n.kind {
            Kind::Bool(b) => Some(self.at(n, b)),
            _ => {
                self.invalid(n, field, "true or false");
                None
            }
        }
    }

    fn unit<T: std::str::FromStr<Err = UnitError>>(
        &mut self,
        n: &Node,
        field: &str,
        expected: &str,
        text: Option<String>,
    ) -> Option<At<T>> {
        let Some(text) = text else {
            self.invalid(n, field, expected);
            return None;
        };
        match text.parse::<T>() {
            Ok(v) => Some(self.at(n, v)),
            Err(e) => {
                let detail = match e {
                    UnitError::AmbiguousUnit { .. }
                    | UnitError::TooPrecise(_)
                    | UnitError::UnitOrder
                    | UnitError::Overflow
                    | UnitError::Negative
                    | UnitError::MissingUnit => format!(" ({e})"),
                    _ => String::new(),
                };
                self.invalid(n, field, format!("{expected}{detail}"));
                None
            }
        }
    }

    fn duration(&mut self, n: &Node, field: &str) -> Option<At<Duration>> {
        let text = match &n.kind {
            Kind::Str(s) => Some(s.clone()),
            Kind::Int(0) => Some("0".to_owned()),
            Kind::Int(_) => n.raw(self.source).map(str::to_owned),
            _ => None,
        };
        self.unit(n, field, "a duration like 10s, 500ms or 1m30s", text)
    }

    fn size(&mut self, n: &Node, field: &str) -> Option<At<ByteSize>> {
        let text = match &n.kind {
            Kind::Str(s) => Some(s.clone()),
            Kind::Int(i) if *i >= 0 => Some(i.to_string()),
            Kind::Int(_) | Kind::Float(_) => n.raw(self.source).map(str::to_owned),
            _ => None,
        };
        self.unit(n, field, "a size like 128Mi, 1G or a number of bytes", text)
    }

    fn cpu(&mut self, n: &Node, field: &str) -> Option<At<Cpu>> {
        let text = match &n.kind {
            Kind::Str(s) => Some(s.clone()),
            Kind::Int(_) | Kind::Float(_) => n.raw(self.source).map(str::to_owned),
            _ => None,
        };
        self.unit(n, field, "cpu cores like 0.5 or millicores like 500m", text)
    }

    fn choice<T: Copy>(&mut self, n: &Node, field: &str, options: &[(&str, T)]) -> Option<At<T>> {
        let expected = format!(
            "one of {}",
            options
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>()
                .join(", ")
        );
        match &n.kind {
            Kind::Str(s) => match options.iter().find(|(name, _)| name == s) {
                Some((_, v)) => Some(self.at(n, *v)),
                None => {
                    self.invalid(n, field, expected);
                    None
                }
            },
            _ => {
                self.invalid(n, field, expected);
                None
            }
        }
    }

    fn signal(&mut self, n: &Node, field: &str) -> Option<At<Signal>> {
        let text = match &n.kind {
            Kind::Str(s) => Some(s.clone()),
            Kind::Int(i) => Some(i.to_string()),
            _ => None,
        };
        match text.map(|t| t.parse::<Signal>()) {
            Some(Ok(s)) => Some(self.at(n, s)),
            _ => {
                self.invalid(n, field, "a signal name like SIGTERM");
                None
            }
        }
    }

    fn image(&mut self, n: &Node, field: &str) -> Option<At<ImageRef>> {
        let s = self.string(n, field, "an image reference like registry.example/web:1.4")?;
        match s.value.parse::<ImageRef>() {
            Ok(r) => Some(At {
                value: r,
                location: s.location,
            }),
            Err(e) => {
                self.invalid.insert(field.to_owned());
                let got = quoted(&s.value);
                self.error(
                    n,
                    ManifestError::Invalid {
                        field: field.to_owned(),
                        expected: format!("an image reference like registry.example/web:1.4 ({e})"),
                        got,
                    },
                );
                None
            }
        }
    }

    /// A list of scalars as text (`command`, `health.exec`).
    fn args(&mut self, n: &Node, field: &str) -> Option<At<Vec<String>>> {
        let Kind::Seq(items) = &n.kind else {
            self.invalid(
                n,
                field,
                "a list of strings like [\"/bin/web\", \"--flag\"]",
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.text(item, &format!("{field}[{i}]")) {
                Some(t) => out.push(t.value),
                None => ok = false,
            }
        }
        ok.then(|| self.at(n, out))
    }

    /// A mapping of string keys to scalar values (`env`, `placement.labels`).
    fn pairs(&mut self, n: &Node, field: &str) -> Option<At<Pairs>> {
        let Kind::Map(entries) = &n.kind else {
            self.invalid(
                n,
                field,
                "a mapping of names to values like { NAME: value }",
            );
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let key = match &k.kind {
                Kind::Str(s) => Some(self.at(k, s.clone())),
                _ => self.text(k, field),
            };
            let Some(key) = key else { continue };
            let value = self.text(v, &join(field, &crate::error::one_line(&key.value)));
            if let Some(value) = value {
                out.push((key, value));
            }
        }
        Some(self.at(n, out))
    }

    /// Decodes one document into a [`RawApp`]; `None` when the root is not a mapping.
    pub fn app(&mut self, root: &Node) -> Option<RawApp> {
        let f = self.fields(
            root,
            "",
            APP_KEYS,
            "a mapping with at least `app` and `image`",
        )?;
        self.invalid.clear();
        let mut raw = RawApp {
            location: self.loc(root),
            invalid: BTreeSet::new(),
            app: None,
            image: None,
            command: None,
            env: None,
            resources: None,
            port: None,
            expose: None,
            replicas: None,
            autoscale: None,
            health: None,
            update: None,
            stop: None,
            restart: None,
            volumes: None,
            placement: None,
            network: None,
            logs: None,
        };
        for (key, v) in f.0 {
            match key {
                "app" => raw.app = self.string(v, "app", "an app name (a DNS label like web-1)"),
                "image" => raw.image = self.image(v, "image"),
                "command" => raw.command = self.args(v, "command"),
                "env" => raw.env = self.pairs(v, "env"),
                "resources" => raw.resources = self.resources(v),
                "port" => raw.port = self.port(v, "port"),
                "expose" => raw.expose = self.expose(v),
                "replicas" => raw.replicas = self.count(v, "replicas"),
                "autoscale" => raw.autoscale = self.autoscale(v),
                "health" => raw.health = self.health(v),
                "update" => raw.update = self.update(v),
                "stop" => raw.stop = self.stop(v),
                "restart" => raw.restart = self.restart(v),
                "volumes" => raw.volumes = self.volumes(v),
                "placement" => raw.placement = self.placement(v),
                "network" => {
                    raw.network = self.choice(
                        v,
                        "network",
                        &[
                            ("private", NetworkMode::Private),
                            ("host", NetworkMode::Host),
                        ],
                    );
                }
                "logs" => raw.logs = self.logs(v),
                _ => {}
            }
        }
        raw.invalid = std::mem::take(&mut self.invalid);
        Some(raw)
    }

    fn resources(&mut self, n: &Node) -> Option<At<RawResources>> {
        let f = self.fields(
            n,
            "resources",
            &["cpu", "memory", "pids"],
            "a mapping like { cpu: 0.5, memory: 128Mi }",
        )?;
        let r = RawResources {
            cpu: f.get("cpu").and_then(|v| self.cpu(v, "resources.cpu")),
            memory: f
                .get("memory")
                .and_then(|v| self.size(v, "resources.memory")),
            pids: f.get("pids").and_then(|v| self.count(v, "resources.pids")),
        };
        Some(self.at(n, r))
    }

    fn expose(&mut self, n: &Node) -> Option<At<RawExpose>> {
        let f = self.fields(
            n,
            "expose",
            &["port", "protocol"],
            "a mapping like { port: 8000 }",
        )?;
        let protocols = [("http", Protocol::Http), ("tcp", Protocol::Tcp)];
        let r = RawExpose {
            port: f.get("port").and_then(|v| self.port(v, "expose.port")),
            protocol: f
                .get("protocol")
                .and_then(|v| self.choice(v, "expose.protocol", &protocols)),
        };
        Some(self.at(n, r))
    }

    fn autoscale(&mut self, n: &Node) -> Option<At<RawAutoscale>> {
        let keys = [
            "min",
            "max",
            "metric",
            "target",
            "scale_up_window",
            "scale_down_window",
        ];
        let f = self.fields(n, "autoscale", &keys, "a mapping like { min: 1, max: 10 }")?;
        let metrics = [
            ("cpu", Metric::Cpu),
            ("rps", Metric::Rps),
            ("concurrency", Metric::Concurrency),
        ];
        let r = RawAutoscale {
            min: f.get("min").and_then(|v| self.count(v, "autoscale.min")),
            max: f.get("max").and_then(|v| self.count(v, "autoscale.max")),
            metric: f
                .get("metric")
                .and_then(|v| self.choice(v, "autoscale.metric", &metrics)),
            target: f
                .get("target")
                .and_then(|v| self.count(v, "autoscale.target")),
            scale_up_window: f
                .get("scale_up_window")
                .and_then(|v| self.duration(v, "autoscale.scale_up_window")),
            scale_down_window: f
                .get("scale_down_window")
                .and_then(|v| self.duration(v, "autoscale.scale_down_window")),
        };
        Some(self.at(n, r))
    }

    fn health(&mut self, n: &Node) -> Option<At<RawHealth>> {
        let keys = [
            "http",
            "tcp",
            "exec",
            "interval",
            "timeout",
            "failures",
            "start_period",
        ];
        let f = self.fields(n, "health", &keys, "a mapping like { http: /up }")?;
        let r = RawHealth {
            http: f
                .get("http")
                .and_then(|v| self.string(v, "health.http", "a request path like /up")),
            tcp: f.get("tcp").and_then(|v| self.port(v, "health.tcp")),
            exec: f.get("exec").and_then(|v| self.args(v, "health.exec")),
            interval: f
                .get("interval")
                .and_then(|v| self.duration(v, "health.interval")),
            timeout: f
                .get("timeout")
                .and_then(|v| self.duration(v, "health.timeout")),
            failures: f
                .get("failures")
                .and_then(|v| self.count(v, "health.failures")),
            start_period: f
                .get("start_period")
                .and_then(|v| self.duration(v, "health.start_period")),
        };
        Some(self.at(n, r))
    }

    fn update(&mut self, n: &Node) -> Option<At<RawUpdate>> {
        let keys = ["max_surge", "max_unavailable", "deadline", "auto_rollback"];
        let f = self.fields(
            n,
            "update",
            &keys,
            "a mapping like { max_surge: 1, deadline: 60s }",
        )?;
        let r = RawUpdate {
            max_surge: f
                .get("max_surge")
                .and_then(|v| self.count(v, "update.max_surge")),
            max_unavailable: f
                .get("max_unavailable")
                .and_then(|v| self.count(v, "update.max_unavailable")),
            deadline: f
                .get("deadline")
                .and_then(|v| self.duration(v, "update.deadline")),
            auto_rollback: f
                .get("auto_rollback")
                .and_then(|v| self.bool(v, "update.auto_rollback")),
        };
        Some(self.at(n, r))
    }

    fn stop(&mut self, n: &Node) -> Option<At<RawStop>> {
        let f = self.fields(
            n,
            "stop",
            &["signal", "grace"],
            "a mapping like { signal: SIGTERM, grace: 10s }",
        )?;
        let r = RawStop {
            signal: f.get("signal").and_then(|v| self.signal(v, "stop.signal")),
            grace: f.get("grace").and_then(|v| self.duration(v, "stop.grace")),
        };
        Some(self.at(n, r))
    }

    fn restart(&mut self, n: &Node) -> Option<At<RawRestart>> {
        let f = self.fields(
            n,
            "restart",
            &["policy", "backoff_max"],
            "a mapping like { policy: always }",
        )?;
        let policies = [
            ("always", RestartPolicy::Always),
            ("on-failure", RestartPolicy::OnFailure),
            ("never", RestartPolicy::Never),
        ];
        let r = RawRestart {
            policy: f
                .get("policy")
                .and_then(|v| self.choice(v, "restart.policy", &policies)),
            backoff_max: f
                .get("backoff_max")
                .and_then(|v| self.duration(v, "restart.backoff_max")),
        };
        Some(self.at(n, r))
    }

    fn volumes(&mut self, n: &Node) -> Option<At<Vec<At<RawVolume>>>> {
        let Kind::Seq(items) = &n.kind else {
            self.invalid(
                n,
                "volumes",
                "a list like [ { name: data, path: /var/lib/web } ]",
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("volumes[{i}]");
            let Some(f) = self.fields(
                item,
                &field,
                &["name", "path", "read_only"],
                "a mapping like { name: data, path: /data }",
            ) else {
                continue;
            };
            let v = RawVolume {
                name: f.get("name").and_then(|v| {
                    self.string(v, &format!("{field}.name"), "a volume name (a DNS label)")
                }),
                path: f.get("path").and_then(|v| {
                    self.string(v, &format!("{field}.path"), "an absolute path like /data")
                }),
                read_only: f
                    .get("read_only")
                    .and_then(|v| self.bool(v, &format!("{field}.read_only"))),
            };
            out.push(self.at(item, v));
        }
        Some(self.at(n, out))
    }

    fn placement(&mut self, n: &Node) -> Option<At<RawPlacement>> {
        let f = self.fields(
            n,
            "placement",
            &["labels", "spread"],
            "a mapping like { labels: { role: web } }",
        )?;
        let r = RawPlacement {
            labels: f
                .get("labels")
                .and_then(|v| self.pairs(v, "placement.labels")),
            spread: f
                .get("spread")
                .and_then(|v| self.bool(v, "placement.spread")),
        };
        Some(self.at(n, r))
    }

    fn logs(&mut self, n: &Node) -> Option<At<RawLogs>> {
        let f = self.fields(
            n,
            "logs",
            &["max_size", "max_files"],
            "a mapping like { max_size: 10Mi, max_files: 5 }",
        )?;
        let r = RawLogs {
            max_size: f
                .get("max_size")
                .and_then(|v| self.size(v, "logs.max_size")),
            max_files: f
                .get("max_files")
                .and_then(|v| self.count(v, "logs.max_files")),
        };
        Some(self.at(n, r))
    }
}

fn quoted_raw(s: &str) -> String {
    crate::error::one_line(s)
}
