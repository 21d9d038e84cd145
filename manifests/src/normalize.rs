//! From the as-written spec ([`RawApp`]) to the normalized [`App`]: applies the defaults of
//! [`crate::defaults`] and checks the rules of one app (bounds, names, paths, probes, and
//! fields that need or exclude each other), reporting each broken rule at the offending value.
//! Rules across apps live in `crate::validate`. Pure.

use std::collections::BTreeMap;

use crate::app::{
    App, Autoscale, Expose, Health, Logs, Metric, NetworkMode, Placement, Probe, Protocol,
    Resources, Restart, Stop, Update, Volume,
};
use crate::defaults as d;
use crate::error::{Diagnostics, Location, ManifestError, quoted};
use crate::raw::{At, Pairs, RawApp};
use crate::units::Duration;

/// RFC 1123 label: lowercase letters, digits and `-`, starts and ends alphanumeric, ≤ 63.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= d::MAX_NAME_LEN
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// POSIX portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Label keys and values: alphanumerics with `-`, `_`, `.` (and `/` in keys) inside.
fn is_label(s: &str, max: usize, slash: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.') || slash && *c == b'/'
        })
}

/// Mount paths berth refuses: the kernel's pseudo-filesystems, set up by the runtime itself.
const RESERVED_PATHS: &[&str] = &["/proc", "/sys", "/dev"];

/// A normalized absolute path (`//` collapsed, trailing `/` removed), or why not.
pub fn normalize_path(p: &str) -> Result<String, &'static str> {
    if !p.starts_with('/') {
        return Err("must be an absolute path (start with /)");
    }
    if p.contains('\0') {
        return Err("must not contain NUL");
    }
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err("must not contain `.` or `..` components");
    }
    if parts.is_empty() {
        return Err("must not be / itself");
    }
    let path = format!("/{}", parts.join("/"));
    if RESERVED_PATHS
        .iter()
        .any(|r| path == *r || path.starts_with(&format!("{r}/")))
    {
        return Err("must not be under /proc, /sys or /dev (the runtime mounts those)");
    }
    Ok(path)
}

struct Rules<'a> {
    errors: &'a mut Diagnostics,
    /// Fields already reported as unusable: not reported again as missing.
    invalid: &'a std::collections::BTreeSet<String>,
}

impl Rules<'_> {
    fn rule(&mut self, location: &Location, field: &str, rule: impl Into<String>) {
        self.errors.push(
            location.clone(),
            ManifestError::Rule {
                field: field.to_owned(),
                rule: rule.into(),
            },
        );
    }

    fn missing(&mut self, location: &Location, field: &str, hint: &str) {
        if self.invalid.contains(field) {
            return;
        }
        self.errors.push(
            location.clone(),
            ManifestError::Missing {
                field: field.to_owned(),
                hint: hint.to_owned(),
            },
        );
    }

    fn range<T: PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        v: Option<&At<T>>,
        field: &str,
        min: T,
        max: T,
        default: T,
    ) -> T {
        let Some(v) = v else { return default };
        if v.value < min || v.value > max {
            self.rule(
                &v.location,
                field,
                format!("must be from {min} to {max}, got {}", v.value),
            );
        }
        v.value
    }

    fn duration(
        &mut self,
        v: Option<&At<Duration>>,
        field: &str,
        min: Duration,
        default: Duration,
    ) -> Duration {
        self.range(v, field, min, d::MAX_DURATION, default)
    }

    fn strings(&mut self, v: &At<Vec<String>>, field: &str, what: &str) {
        if v.value.is_empty() {
            self.rule(&v.location, field, format!("must not be empty; {what}"));
        }
        if v.value.len() > d::MAX_ENTRIES {
            self.rule(
                &v.location,
                field,
                format!("has more than {} entries", d::MAX_ENTRIES),
            );
        }
        if v.value
            .iter()
            .any(|s| s.contains('\0') || s.len() > d::MAX_STRING_LEN)
        {
            self.rule(
                &v.location,
                field,
                format!(
                    "entries must not contain NUL or be longer than {} bytes",
                    d::MAX_STRING_LEN
                ),
            );
        }
    }

    fn pairs(
        &mut self,
        v: Option<&At<Pairs>>,
        field: &str,
        key_ok: impl Fn(&str) -> bool,
        key_rule: &str,
        value_ok: impl Fn(&str) -> bool,
        value_rule: &str,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(v) = v else { return out };
        if v.value.len() > d::MAX_ENTRIES {
            self.rule(
                &v.location,
                field,
                format!("has more than {} entries", d::MAX_ENTRIES),
            );
        }
        for (k, val) in &v.value {
            let name = format!("{field}.{}", crate::error::one_line(&k.value));
            if !key_ok(&k.value) {
                self.rule(&k.location, &name, key_rule);
            }
            if !value_ok(&val.value) {
                self.rule(&val.location, &name, value_rule);
            }
            out.insert(k.value.clone(), val.value.clone());
        }
        out
    }
}

/// Applies defaults and per-app rules; `None` when `app` or `image` is missing or unusable
/// (the errors are in `errors` then).
pub(crate) fn normalize(raw: &RawApp, errors: &mut Diagnostics) -> Option<App> {
    let mut r = Rules {
        errors,
        invalid: &raw.invalid,
    };
    let name = match &raw.app {
        Some(a) if is_dns_label(&a.value) => Some(a.value.clone()),
        Some(a) => {
            r.rule(&a.location, "app", format!("{} is not a DNS label: use lowercase letters, digits and `-`, start and end with a letter or digit, at most {} characters", quoted(&a.value), d::MAX_NAME_LEN));
            None
        }
        None => {
            // The value may have been written but had the wrong type: then it is reported.
            r.missing(&raw.location, "app", "; every document needs `app: <name>`");
            None
        }
    };
    if raw.image.is_none() {
        r.missing(
            &raw.location,
            "image",
            "; every document needs `image: <reference>`",
        );
    }

    if let Some(c) = &raw.command {
        r.strings(c, "command", "omit `command` to use the image's");
    }

    let env = r.pairs(
        raw.env.as_ref(),
        "env",
        is_env_name,
        "invalid variable name: use letters, digits and `_`, not starting with a digit",
        |v| !v.contains('\0') && v.len() <= d::MAX_STRING_LEN,
        "value must not contain NUL or exceed 32Ki bytes",
    );
    if let (Some(port), Some(env)) = (&raw.port, &raw.env)
        && let Some((k, _)) = env.value.iter().find(|(k, _)| k.value == "PORT")
    {
        r.rule(
            &k.location,
            "env.PORT",
            format!("is set by berth to `port` ({}); remove it here", port.value),
        );
    }

    let res = raw.resources.as_ref().map(|a| &a.value);
    let resources = Resources {
        cpu: r.range(
            res.and_then(|x| x.cpu.as_ref()),
            "resources.cpu",
            d::MIN_CPU,
            d::MAX_CPU,
            d::CPU,
        ),
        memory: r.range(
            res.and_then(|x| x.memory.as_ref()),
            "resources.memory",
            d::MIN_MEMORY,
            d::MAX_MEMORY,
            d::MEMORY,
        ),
        pids: r.range(
            res.and_then(|x| x.pids.as_ref()),
            "resources.pids",
            1,
            d::MAX_PIDS,
            d::PIDS,
        ),
    };

    let port = raw.port.as_ref().map(|p| p.value);
    let expose = match &raw.expose {
        Some(e) => match &e.value.port {
            Some(p) => {
                if port.is_none() {
                    r.rule(
                        &e.location,
                        "expose",
                        "needs `port`: the proxy forwards to the port the app listens on",
                    );
                }
                Some(Expose {
                    port: p.value,
                    protocol: e
                        .value
                        .protocol
                        .as_ref()
                        .map_or(d::EXPOSE_PROTOCOL, |x| x.value),
                })
            }
            None => {
                r.missing(
                    &e.location,
                    "expose.port",
                    "; the host port the proxy listens on",
                );
                None
            }
        },
        None => None,
    };

    let (replicas, autoscale) = match (&raw.replicas, &raw.autoscale) {
        (Some(rep), Some(auto)) => {
            r.rule(
                &auto.location,
                "autoscale",
                format!(
                    "replicas (line {}) and autoscale exclude each other: keep one",
                    rep.location.line
                ),
            );
            (None, None)
        }
        (Some(rep), None) => (
            Some(r.range(Some(rep), "replicas", 0, d::MAX_REPLICAS, d::REPLICAS)),
            None,
        ),
        (None, None) => (Some(d::REPLICAS), None),
        (None, Some(auto)) => (
            None,
            autoscale(&mut r, auto, expose.as_ref().map(|e| e.protocol)),
        ),
    };

    let health = raw.health.as_ref().and_then(|h| health(&mut r, h, port));

    let up = raw.update.as_ref().map(|a| &a.value);
    let update = Update {
        max_surge: r.range(
            up.and_then(|u| u.max_surge.as_ref()),
            "update.max_surge",
            0,
            d::MAX_REPLICAS,
            d::MAX_SURGE,
        ),
        max_unavailable: r.range(
            up.and_then(|u| u.max_unavailable.as_ref()),
            "update.max_unavailable",
            0,
            d::MAX_REPLICAS,
            d::MAX_UNAVAILABLE,
        ),
        deadline: r.duration(
            up.and_then(|u| u.deadline.as_ref()),
            "update.deadline",
            Duration::from_secs(1),
            d::UPDATE_DEADLINE,
        ),
        auto_rollback: up
            .and_then(|u| u.auto_rollback.as_ref())
            .map_or(d::AUTO_ROLLBACK, |a| a.value),
    };
    if let Some(u) = &raw.update
        && update.max_surge == 0
        && update.max_unavailable == 0
    {
        r.rule(&u.location, "update", "max_surge and max_unavailable cannot both be 0: a rollout could never start a new instance");
    }

    let st = raw.stop.as_ref().map(|a| &a.value);
    let stop = Stop {
        signal: st
            .and_then(|s| s.signal.as_ref())
            .map_or(d::STOP_SIGNAL, |s| s.value),
        grace: r.duration(
            st.and_then(|s| s.grace.as_ref()),
            "stop.grace",
            Duration::ZERO,
            d::STOP_GRACE,
        ),
    };

    let rs = raw.restart.as_ref().map(|a| &a.value);
    let restart = Restart {
        policy: rs
            .and_then(|x| x.policy.as_ref())
            .map_or(d::RESTART_POLICY, |p| p.value),
        backoff_max: r.duration(
            rs.and_then(|x| x.backoff_max.as_ref()),
            "restart.backoff_max",
            Duration::from_millis(100),
            d::RESTART_BACKOFF_MAX,
        ),
    };

    let volumes = raw
        .volumes
        .as_ref()
        .map(|v| volumes(&mut r, v))
        .unwrap_or_default();

    let pl = raw.placement.as_ref().map(|a| &a.value);
    let placement = Placement {
        labels: r.pairs(
            pl.and_then(|p| p.labels.as_ref()),
            "placement.labels",
            |k| is_label(k, 253, true),
            "invalid label key: letters, digits, `-`, `_`, `.`, `/`, starting and ending with a letter or digit",
            |v| v.is_empty() || is_label(v, 63, false),
            "invalid label value: at most 63 letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit",
        ),
        spread: pl.and_then(|p| p.spread.as_ref()).map_or(d::PLACEMENT_SPREAD, |s| s.value),
    };

    let network = raw.network.as_ref().map_or(d::NETWORK, |n| n.value);
    if let (NetworkMode::Host, Some(e), Some(p)) = (network, &raw.expose, port)
        && expose.as_ref().is_some_and(|x| x.port == p)
    {
        r.rule(
            &e.location,
            "expose.port",
            format!("is the app's own port {p} on the host network; the proxy needs another port"),
        );
    }

    let lg = raw.logs.as_ref().map(|a| &a.value);
    let logs = Logs {
        max_size: r.range(
            lg.and_then(|l| l.max_size.as_ref()),
            "logs.max_size",
            d::MIN_LOG_SIZE,
            d::MAX_LOG_SIZE,
            d::LOGS_MAX_SIZE,
        ),
        max_files: r.range(
            lg.and_then(|l| l.max_files.as_ref()),
            "logs.max_files",
            1,
            d::MAX_LOG_FILES,
            d::LOGS_MAX_FILES,
        ),
    };

    Some(App {
        app: name?,
        image: raw.image.as_ref()?.value.clone(),
        command: raw.command.as_ref().map(|c| c.value.clone()),
        env,
        resources,
        port,
        expose,
        replicas,
        autoscale,
        health,
        update,
        stop,
        restart,
        volumes,
        placement,
        network,
        logs,
    })
}

fn autoscale(
    r: &mut Rules<'_>,
    auto: &At<crate::raw::RawAutoscale>,
    exposed: Option<Protocol>,
) -> Option<Autoscale> {
    let a = &auto.value;
    let Some(max) = &a.max else {
        r.missing(&auto.location, "autoscale.max", "; the most instances");
        return None;
    };
    let max_v = r.range(Some(max), "autoscale.max", 1, d::MAX_REPLICAS, 1);
    let min = r.range(
        a.min.as_ref(),
        "autoscale.min",
        0,
        d::MAX_REPLICAS,
        d::AUTOSCALE_MIN,
    );
    if min > max_v {
        let loc = a.min.as_ref().map_or(&max.location, |m| &m.location);
        r.rule(
            loc,
            "autoscale.min",
            format!("{min} is greater than autoscale.max {max_v}"),
        );
    }
    let metric = a.metric.as_ref().map_or(d::AUTOSCALE_METRIC, |m| m.value);
    if metric == Metric::Rps && exposed == Some(Protocol::Tcp) {
        let loc = a.metric.as_ref().map_or(&auto.location, |m| &m.location);
        r.rule(loc, "autoscale.metric", "rps needs HTTP: with `expose.protocol: tcp` the proxy sees connections, not requests; use concurrency (open connections) or cpu");
    }
    let target = match (&a.target, metric) {
        (Some(t), _) => r.range(Some(t), "autoscale.target", 1, d::MAX_AUTOSCALE_TARGET, 1),
        (None, Metric::Cpu) => d::AUTOSCALE_CPU_TARGET,
        (None, m) => {
            r.missing(
                &auto.location,
                "autoscale.target",
                &format!("; metric {} has no default target", m.as_str()),
            );
            1
        }
    };
    if min == 0 {
        let loc = a.min.as_ref().map_or(&auto.location, |m| &m.location);
        if metric == Metric::Cpu {
            r.rule(loc, "autoscale.min", "0 (scale to zero) needs metric rps or concurrency: an app with no instance uses no cpu to measure");
        } else if exposed.is_none() {
            r.rule(loc, "autoscale.min", "0 (scale to zero) needs `expose`: the proxy holds the first request while an instance starts");
        }
    }
    Some(Autoscale {
        min,
        max: max_v,
        metric,
        target,
        scale_up_window: r.duration(
            a.scale_up_window.as_ref(),
            "autoscale.scale_up_window",
            Duration::ZERO,
            d::SCALE_UP_WINDOW,
        ),
        scale_down_window: r.duration(
            a.scale_down_window.as_ref(),
            "autoscale.scale_down_window",
            Duration::ZERO,
            d::SCALE_DOWN_WINDOW,
        ),
    })
}

fn health(r: &mut Rules<'_>, h: &At<crate::raw::RawHealth>, port: Option<u16>) -> Option<Health> {
    let v = &h.value;
    let written: Vec<&Location> = [
        v.http.as_ref().map(|x| &x.location),
        v.tcp.as_ref().map(|x| &x.location),
        v.exec.as_ref().map(|x| &x.location),
    ]
    .into_iter()
    .flatten()
    .collect();
    if written.len() > 1 {
        let mut sorted = written.clone();
        sorted.sort();
        r.rule(
            sorted[1],
            "health",
            "has more than one probe: keep one of http, tcp, exec",
        );
    }
    let probe = if let Some(http) = &v.http {
        let p = &http.value;
        if !p.starts_with('/') {
            r.rule(
                &http.location,
                "health.http",
                format!("{} must be a request path starting with /", quoted(p)),
            );
        } else if p.len() > d::MAX_HTTP_PATH_LEN
            || p.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            r.rule(
                &http.location,
                "health.http",
                format!(
                    "{} must be at most {} characters without spaces",
                    quoted(p),
                    d::MAX_HTTP_PATH_LEN
                ),
            );
        }
        match port {
            Some(port) => Some(Probe::Http {
                path: p.clone(),
                port,
            }),
            None => {
                r.rule(
                    &http.location,
                    "health.http",
                    "needs `port`: the probe requests the port the app listens on",
                );
                None
            }
        }
    } else if let Some(tcp) = &v.tcp {
        Some(Probe::Tcp { port: tcp.value })
    } else if let Some(exec) = &v.exec {
        r.strings(
            exec,
            "health.exec",
            "give the command to run, like [\"/bin/check\"]",
        );
        Some(Probe::Exec {
            command: exec.value.clone(),
        })
    } else if ["health.http", "health.tcp", "health.exec"]
        .iter()
        .any(|f| r.invalid.contains(*f))
    {
        None
    } else {
        r.rule(
            &h.location,
            "health",
            "needs a probe: one of http (a path), tcp (a port) or exec (a command)",
        );
        None
    };
    let interval = r.duration(
        v.interval.as_ref(),
        "health.interval",
        d::MIN_HEALTH_INTERVAL,
        d::HEALTH_INTERVAL,
    );
    let timeout = r.duration(
        v.timeout.as_ref(),
        "health.timeout",
        Duration::from_millis(1),
        d::HEALTH_TIMEOUT,
    );
    let failures = r.range(
        v.failures.as_ref(),
        "health.failures",
        1,
        d::MAX_HEALTH_FAILURES,
        d::HEALTH_FAILURES,
    );
    let start_period = r.duration(
        v.start_period.as_ref(),
        "health.start_period",
        Duration::ZERO,
        d::HEALTH_START_PERIOD,
    );
    Some(Health {
        probe: probe?,
        interval,
        timeout,
        failures,
        start_period,
    })
}

fn volumes(r: &mut Rules<'_>, list: &At<Vec<At<crate::raw::RawVolume>>>) -> Vec<Volume> {
    if list.value.len() > d::MAX_ENTRIES {
        r.rule(
            &list.location,
            "volumes",
            format!("has more than {} entries", d::MAX_ENTRIES),
        );
    }
    let mut out: Vec<Volume> = Vec::new();
    let mut seen_names: BTreeMap<String, u32> = BTreeMap::new();
    let mut seen_paths: BTreeMap<String, u32> = BTreeMap::new();
    for (i, v) in list.value.iter().enumerate() {
        let field = format!("volumes[{i}]");
        let name = match &v.value.name {
            Some(n) if is_dns_label(&n.value) => {
                if let Some(line) = seen_names.insert(n.value.clone(), n.location.line) {
                    r.rule(
                        &n.location,
                        &format!("{field}.name"),
                        format!(
                            "volume {} is already defined on line {line}",
                            quoted(&n.value)
                        ),
                    );
                }
                Some(n.value.clone())
            }
            Some(n) => {
                r.rule(
                    &n.location,
                    &format!("{field}.name"),
                    format!(
                        "{} is not a DNS label (lowercase letters, digits, `-`)",
                        quoted(&n.value)
                    ),
                );
                None
            }
            None => {
                r.missing(&v.location, &format!("{field}.name"), "");
                None
            }
        };
        let path = match &v.value.path {
            Some(p) => match normalize_path(&p.value) {
                Ok(path) => {
                    if let Some(line) = seen_paths.insert(path.clone(), p.location.line) {
                        r.rule(
                            &p.location,
                            &format!("{field}.path"),
                            format!("{} is already mounted on line {line}", quoted(&path)),
                        );
                    }
                    Some(path)
                }
                Err(why) => {
                    r.rule(
                        &p.location,
                        &format!("{field}.path"),
                        format!("{} {why}", quoted(&p.value)),
                    );
                    None
                }
            },
            None => {
                r.missing(
                    &v.location,
                    &format!("{field}.path"),
                    "; the absolute mount path inside the container",
                );
                None
            }
        };
        if let (Some(name), Some(path)) = (name, path) {
            out.push(Volume {
                name,
                path,
                read_only: v
                    .value
                    .read_only
                    .as_ref()
                    .map_or(d::VOLUME_READ_ONLY, |x| x.value),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_follow_rfc_1123() {
        for ok in ["web", "web-1", "1web", "a", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "Web", "-web", "web-", "we_b", "web.1", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn env_names_are_portable_identifiers() {
        assert!(is_env_name("LOG_LEVEL") && is_env_name("_x1"));
        assert!(
            !is_env_name("1X") && !is_env_name("A-B") && !is_env_name("") && !is_env_name("A=B")
        );
    }

    #[test]
    fn paths_are_absolute_without_dot_dot_and_normalized() {
        assert_eq!(normalize_path("/var//lib/web/"), Ok("/var/lib/web".into()));
        assert!(normalize_path("data").is_err());
        assert!(normalize_path("/a/../etc").is_err());
        assert!(normalize_path("/a/./b").is_err());
        assert!(normalize_path("/").is_err());
        assert!(normalize_path("/proc/sys/x").is_err());
        assert!(normalize_path("/dev").is_err());
        assert_eq!(normalize_path("/device"), Ok("/device".into()));
    }
}
