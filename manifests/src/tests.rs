//! Tests of the whole pipeline on small sources: errors located at the offending value,
//! defaults applied, every error reported.

use super::*;

fn load_one(src: &str) -> Result<ManifestSet, Diagnostics> {
    load(&[Source {
        path: "apps/web.yaml",
        bytes: src.as_bytes(),
    }])
}

fn errors(src: &str) -> Vec<String> {
    match load_one(src) {
        Ok(_) => vec![],
        Err(d) => d.0.iter().map(ToString::to_string).collect(),
    }
}

const FULL: &str = r#"
app: web
image: registry.example/web:1.4
command: ["/bin/web", --verbose, 10]
env: { LOG_LEVEL: info, RATIO: 1.10, DEBUG: false }
resources: { cpu: 0.5, memory: 128Mi, pids: 256 }
port: 8080
expose: { port: 8000 }
autoscale: { min: 1, max: 10, metric: cpu, target: 60, scale_up_window: 0s, scale_down_window: 60s }
health: { http: /up, interval: 1s, timeout: 1s, failures: 3, start_period: 10s }
update: { max_surge: 1, max_unavailable: 0, deadline: 60s, auto_rollback: true }
stop: { signal: SIGTERM, grace: 10s }
restart: { policy: always, backoff_max: 5m }
volumes: [ { name: data, path: /var/lib/web } ]
placement: { labels: { role: web }, spread: true }
network: private
logs: { max_size: 10Mi, max_files: 5 }
"#;

#[test]
fn the_design_example_parses_into_a_normalized_app() {
    let set = load_one(FULL).unwrap();
    let app = &set.manifests[0].app;
    assert_eq!(app.app, "web");
    assert_eq!(app.image.to_string(), "registry.example/web:1.4");
    assert_eq!(
        app.command.as_deref(),
        Some(&["/bin/web".to_owned(), "--verbose".into(), "10".into()][..])
    );
    assert_eq!(
        app.env.get("RATIO").map(String::as_str),
        Some("1.10"),
        "spelling kept"
    );
    assert_eq!(app.env.get("DEBUG").map(String::as_str), Some("false"));
    assert_eq!(app.resources.cpu, Cpu::from_millis(500));
    assert_eq!(app.resources.memory, ByteSize::mib(128));
    assert_eq!(app.autoscale.as_ref().map(|a| a.max), Some(10));
    assert_eq!(app.replicas, None);
    assert_eq!(
        app.health.as_ref().map(|h| h.probe.clone()),
        Some(app::Probe::Http {
            path: "/up".into(),
            port: 8080
        })
    );
    assert_eq!(app.volumes[0].path, "/var/lib/web");
    assert_eq!(
        set.manifests[0].location,
        Location::new("apps/web.yaml", 2, 1)
    );
}

#[test]
fn omitted_fields_take_the_defaults() {
    let set = load_one("app: worker\nimage: busybox\n").unwrap();
    let app = &set.manifests[0].app;
    assert_eq!(app.image.to_string(), "docker.io/library/busybox:latest");
    assert_eq!(app.replicas, Some(defaults::REPLICAS));
    assert_eq!(app.resources.memory, defaults::MEMORY);
    assert_eq!(app.resources.cpu, defaults::CPU);
    assert_eq!(app.stop.signal, defaults::STOP_SIGNAL);
    assert_eq!(app.stop.grace, defaults::STOP_GRACE);
    assert_eq!(app.update.deadline, defaults::UPDATE_DEADLINE);
    assert_eq!(app.logs.max_files, defaults::LOGS_MAX_FILES);
    assert_eq!(app.network, defaults::NETWORK);
    assert!(app.health.is_none() && app.expose.is_none() && app.command.is_none());
}

#[test]
fn a_bad_size_is_reported_at_the_value_with_what_was_expected() {
    assert_eq!(
        errors("app: web\nimage: busybox\nresources:\n  memory: lots\n"),
        [
            r#"apps/web.yaml:4:11: resources.memory: expected a size like 128Mi, 1G or a number of bytes, got "lots""#
        ]
    );
}

#[test]
fn every_error_of_a_document_is_reported_not_just_the_first() {
    let errs = errors("app: Web\nimage: busybox\nport: 70000\nstop: { grace: soon }\nlogz: {}\n");
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(
        errs[0].starts_with("apps/web.yaml:1:6: app: \"Web\" is not a DNS label"),
        "{errs:#?}"
    );
    assert!(errs[1].starts_with(
        "apps/web.yaml:3:7: port: expected a port number from 1 to 65535, got an integer 70000"
    ));
    assert!(errs[2].starts_with("apps/web.yaml:4:16: stop.grace: expected a duration"));
    assert_eq!(
        errs[3],
        "apps/web.yaml:5:1: logz: unknown key, did you mean `logs`?; expected one of: app, image, command, env, resources, port, expose, replicas, autoscale, health, update, stop, restart, volumes, placement, network, logs"
    );
}

#[test]
fn missing_app_and_image_are_reported_at_the_document() {
    let errs = errors("---\nport: 80\n");
    assert_eq!(
        errs,
        [
            "apps/web.yaml:2:1: app: required field is missing; every document needs `app: <name>`",
            "apps/web.yaml:2:1: image: required field is missing; every document needs `image: <reference>`"
        ]
    );
}

#[test]
fn a_document_that_is_not_a_mapping_is_an_error() {
    assert_eq!(
        errors("- a\n- b\n"),
        [
            "apps/web.yaml:1:1: document: expected a mapping with at least `app` and `image`, got a list"
        ]
    );
}

#[test]
fn wrong_types_name_the_type_that_was_written() {
    let errs = errors(
        "app: web\nimage: busybox\nport: \"8080\"\nreplicas: [1]\nupdate: { auto_rollback: yes }\n",
    );
    assert_eq!(
        errs,
        [
            r#"apps/web.yaml:3:7: port: expected a port number from 1 to 65535, got "8080""#,
            "apps/web.yaml:4:11: replicas: expected a whole number, 0 or more, got a list",
            r#"apps/web.yaml:5:26: update.auto_rollback: expected true or false, got "yes""#,
        ]
    );
}

fn load_many(files: &[(&str, &str)]) -> Vec<String> {
    let sources: Vec<Source<'_>> = files
        .iter()
        .map(|(p, s)| Source {
            path: p,
            bytes: s.as_bytes(),
        })
        .collect();
    match load(&sources) {
        Ok(_) => vec![],
        Err(d) => d.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn duplicate_apps_across_files_are_reported_at_both_places() {
    let errs = load_many(&[
        ("a.yaml", "app: web\nimage: busybox\n"),
        (
            "b/c.yaml",
            "---\napp: other\nimage: busybox\n---\n\napp: web\nimage: nginx\n",
        ),
    ]);
    assert_eq!(
        errs,
        [
            "a.yaml:1:6: app `web` is defined twice (also at b/c.yaml:6:6); app names must be unique",
            "b/c.yaml:6:6: app `web` is defined twice (also at a.yaml:1:6); app names must be unique",
        ]
    );
}

#[test]
fn exposed_port_clashes_are_reported_at_both_apps() {
    let errs = load_many(&[
        (
            "a.yaml",
            "app: a\nimage: busybox\nport: 80\nexpose: { port: 8000 }\n",
        ),
        (
            "b.yaml",
            "app: b\nimage: busybox\nport: 80\nexpose:\n  port: 8000\n",
        ),
        (
            "c.yaml",
            "app: c\nimage: busybox\nport: 8000\nnetwork: host\n",
        ),
    ]);
    assert_eq!(
        errs,
        [
            "a.yaml:4:17: expose.port: host port 8000 is also used by app `b` (b.yaml:5:9)",
            "b.yaml:5:9: expose.port: host port 8000 is also used by app `a` (a.yaml:4:17)",
            "c.yaml:3:7: port: host port 8000 is also used by app `a` (a.yaml:4:17)",
        ]
    );
}

#[test]
fn replicas_and_autoscale_exclude_each_other() {
    let errs = errors("app: web\nimage: busybox\nreplicas: 2\nautoscale: { max: 3 }\n");
    assert_eq!(
        errs,
        [
            "apps/web.yaml:4:12: autoscale: replicas (line 3) and autoscale exclude each other: keep one"
        ]
    );
}

#[test]
fn autoscale_min_above_max_is_reported_at_min() {
    let errs = errors("app: web\nimage: busybox\nautoscale:\n  min: 5\n  max: 2\n");
    assert_eq!(
        errs,
        ["apps/web.yaml:4:8: autoscale.min: 5 is greater than autoscale.max 2"]
    );
}

#[test]
fn scale_to_zero_needs_a_request_metric_and_expose() {
    let errs = errors("app: web\nimage: busybox\nautoscale: { min: 0, max: 2 }\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].contains("needs metric rps or concurrency"),
        "{errs:?}"
    );
    let errs = errors(
        "app: web\nimage: busybox\nautoscale: { min: 0, max: 2, metric: rps, target: 10 }\n",
    );
    assert!(errs[0].contains("needs `expose`"), "{errs:?}");
    assert!(errors("app: web\nimage: busybox\nport: 80\nexpose: {port: 81}\nautoscale: { min: 0, max: 2, metric: rps, target: 10 }\n").is_empty());
}

#[test]
fn absurd_values_are_refused_naming_the_field() {
    let errs = errors(
        "app: web\nimage: busybox\nresources: { cpu: 5000, memory: 1Ei, pids: 0 }\nreplicas: 100000\n",
    );
    assert_eq!(
        errs,
        [
            "apps/web.yaml:3:19: resources.cpu: must be from 0.01 to 1024, got 5000",
            "apps/web.yaml:3:33: resources.memory: must be from 6Mi to 4Ti, got 1Ei",
            "apps/web.yaml:3:44: resources.pids: must be from 1 to 4194304, got 0",
            "apps/web.yaml:4:11: replicas: must be from 0 to 1000, got 100000",
        ]
    );
    let errs = errors("app: web\nimage: busybox\nresources: { cpu: -1, memory: -5 }\n");
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].contains("resources.cpu: expected cpu cores like 0.5 or millicores like 500m (must not be negative), got an integer -1"), "{errs:?}");
}

#[test]
fn probes_are_checked() {
    let errs = errors("app: web\nimage: busybox\nport: 80\nhealth: { http: up }\n");
    assert_eq!(
        errs,
        [r#"apps/web.yaml:4:17: health.http: "up" must be a request path starting with /"#]
    );
    let errs = errors("app: web\nimage: busybox\nhealth: { http: /up }\n");
    assert_eq!(
        errs,
        [
            "apps/web.yaml:3:17: health.http: needs `port`: the probe requests the port the app listens on"
        ]
    );
    let errs = errors("app: web\nimage: busybox\nhealth: { tcp: 0 }\n");
    assert_eq!(
        errs,
        [
            "apps/web.yaml:3:16: health.tcp: expected a port number from 1 to 65535, got an integer 0"
        ]
    );
    let errs = errors("app: web\nimage: busybox\nhealth: { exec: [] }\n");
    assert_eq!(
        errs,
        [
            "apps/web.yaml:3:17: health.exec: must not be empty; give the command to run, like [\"/bin/check\"]"
        ]
    );
    let errs = errors("app: web\nimage: busybox\nhealth: { exec: [x], tcp: 80 }\n");
    assert_eq!(
        errs,
        ["apps/web.yaml:3:27: health: has more than one probe: keep one of http, tcp, exec"]
    );
    let errs = errors("app: web\nimage: busybox\nhealth: { interval: 1s }\n");
    assert_eq!(
        errs,
        [
            "apps/web.yaml:3:9: health: needs a probe: one of http (a path), tcp (a port) or exec (a command)"
        ]
    );
}

#[test]
fn volumes_need_absolute_paths_without_dot_dot_and_unique_names() {
    let errs = errors(
        "app: web\nimage: busybox\nvolumes:\n  - { name: data, path: var/lib }\n  - { name: data, path: /a/../etc }\n  - { name: Logs, path: /logs }\n",
    );
    assert_eq!(
        errs,
        [
            r#"apps/web.yaml:4:25: volumes[0].path: "var/lib" must be an absolute path (start with /)"#,
            r#"apps/web.yaml:5:13: volumes[1].name: volume "data" is already defined on line 4"#,
            r#"apps/web.yaml:5:25: volumes[1].path: "/a/../etc" must not contain `.` or `..` components"#,
            r#"apps/web.yaml:6:13: volumes[2].name: "Logs" is not a DNS label (lowercase letters, digits, `-`)"#,
        ]
    );
}

#[test]
fn env_keys_must_be_valid_names_and_port_is_reserved() {
    let errs =
        errors("app: web\nimage: busybox\nport: 80\nenv:\n  1BAD: x\n  PORT: \"81\"\n  EMPTY:\n");
    assert_eq!(
        errs,
        [
            "apps/web.yaml:5:3: env.1BAD: invalid variable name: use letters, digits and `_`, not starting with a digit",
            "apps/web.yaml:6:3: env.PORT: is set by berth to `port` (80); remove it here",
            "apps/web.yaml:7:8: env.EMPTY: expected a string (write \"\" for an empty value), got nothing (null)",
        ]
    );
}

#[test]
fn bad_image_references_say_why() {
    let errs = errors("app: web\nimage: \"Web:latest\"\n");
    assert_eq!(
        errs,
        [
            r#"apps/web.yaml:2:8: image: expected an image reference like registry.example/web:1.4 (repository `Web` must be lowercase), got "Web:latest""#
        ]
    );
}

#[test]
fn expose_needs_port_and_update_needs_room_to_roll() {
    let errs = errors("app: web\nimage: busybox\nexpose: { port: 80 }\nupdate: { max_surge: 0 }\n");
    assert_eq!(
        errs,
        [
            "apps/web.yaml:3:9: expose: needs `port`: the proxy forwards to the port the app listens on",
            "apps/web.yaml:4:9: update: max_surge and max_unavailable cannot both be 0: a rollout could never start a new instance",
        ]
    );
}

#[test]
fn docs_mirror_the_defaults() {
    let docs = include_str!("../../docs/manifest.md");
    let d = |v: &dyn std::fmt::Display| v.to_string();
    let expected: Vec<(&str, String)> = vec![
        ("resources.cpu", d(&defaults::CPU)),
        ("resources.memory", d(&defaults::MEMORY)),
        ("resources.pids", d(&defaults::PIDS)),
        ("replicas", d(&defaults::REPLICAS)),
        ("autoscale.min", d(&defaults::AUTOSCALE_MIN)),
        (
            "autoscale.metric",
            defaults::AUTOSCALE_METRIC.as_str().to_owned(),
        ),
        ("autoscale.target", d(&defaults::AUTOSCALE_CPU_TARGET)),
        ("autoscale.scale_up_window", d(&defaults::SCALE_UP_WINDOW)),
        (
            "autoscale.scale_down_window",
            d(&defaults::SCALE_DOWN_WINDOW),
        ),
        ("health.interval", d(&defaults::HEALTH_INTERVAL)),
        ("health.timeout", d(&defaults::HEALTH_TIMEOUT)),
        ("health.failures", d(&defaults::HEALTH_FAILURES)),
        ("health.start_period", d(&defaults::HEALTH_START_PERIOD)),
        ("update.max_surge", d(&defaults::MAX_SURGE)),
        ("update.max_unavailable", d(&defaults::MAX_UNAVAILABLE)),
        ("update.deadline", d(&defaults::UPDATE_DEADLINE)),
        ("update.auto_rollback", d(&defaults::AUTO_ROLLBACK)),
        ("stop.signal", d(&defaults::STOP_SIGNAL)),
        ("stop.grace", d(&defaults::STOP_GRACE)),
        (
            "restart.policy",
            defaults::RESTART_POLICY.as_str().to_owned(),
        ),
        ("restart.backoff_max", d(&defaults::RESTART_BACKOFF_MAX)),
        ("volumes[].read_only", d(&defaults::VOLUME_READ_ONLY)),
        ("placement.spread", d(&defaults::PLACEMENT_SPREAD)),
        ("network", defaults::NETWORK.as_str().to_owned()),
        (
            "expose.protocol",
            defaults::EXPOSE_PROTOCOL.as_str().to_owned(),
        ),
        ("logs.max_size", d(&defaults::LOGS_MAX_SIZE)),
        ("logs.max_files", d(&defaults::LOGS_MAX_FILES)),
    ];
    for (field, default) in expected {
        let row = docs
            .lines()
            .find(|l| l.starts_with(&format!("| `{field}` |")))
            .unwrap_or_else(|| panic!("docs/manifest.md has no row for {field}"));
        let cells: Vec<&str> = row.split(" | ").collect();
        assert!(
            cells[2].starts_with(&format!("`{default}`")),
            "docs/manifest.md: {field} default is `{default}` in defaults.rs, row says: {row}"
        );
    }
    for (limit, value) in [
        (
            "file size",
            format!(
                "{} ({} bytes)",
                ByteSize::from_bytes(defaults::MAX_FILE_BYTES as u64),
                defaults::MAX_FILE_BYTES
            ),
        ),
        ("documents per file", defaults::MAX_DOCUMENTS.to_string()),
        (
            "nesting depth (block and flow)",
            defaults::MAX_DEPTH.to_string(),
        ),
        (
            "YAML nodes, aliases expanded",
            defaults::MAX_NODES.to_string(),
        ),
        ("alias uses", defaults::MAX_ALIASES.to_string()),
        (
            "events replayed from aliases",
            defaults::MAX_ALIAS_REPLAYED_EVENTS.to_string(),
        ),
    ] {
        assert!(
            docs.contains(&format!("| {limit} | {value} |")),
            "docs/manifest.md: limit {limit} should be {value}"
        );
    }
}

#[test]
fn apps_round_trip_through_json_for_the_wire() {
    let set = load_one(FULL).unwrap();
    let app = &set.manifests[0].app;
    let json = serde_json::to_string(app).unwrap();
    let back: App = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, app);
    assert_eq!(back.revision(), app.revision());
    assert!(
        json.contains(r#""memory":"128Mi""#)
            && json.contains(r#""image":"registry.example/web:1.4""#),
        "{json}"
    );
}

#[test]
fn anchors_merge_keys_and_extension_keys_work_within_a_document() {
    let set = load_one("x-limits: &limits { memory: 64Mi, cpu: 0.25 }\napp: a\nimage: busybox\nresources:\n  <<: *limits\n  pids: 10\n").unwrap();
    let r = &set.manifests[0].app.resources;
    assert_eq!(
        (r.memory, r.cpu, r.pids),
        (ByteSize::mib(64), Cpu::from_millis(250), 10)
    );
    let errs = errors("app: a\nimage: busybox\nresources:\n  x-note: hi\n");
    assert_eq!(errs.len(), 1, "x- keys are only free at the top: {errs:?}");
}

#[test]
fn unknown_yaml_tags_are_refused() {
    let errs = errors("app: web\nimage: !include other.yaml\n");
    assert_eq!(
        errs,
        ["apps/web.yaml:2:17: yaml syntax: unsupported tag `!include`"]
    );
    assert!(errors("app: web\nimage: !!str busybox\nreplicas: !!int 2\n").is_empty());
}

#[test]
fn the_revision_of_a_known_spec_is_stable_across_berth_versions() {
    // A changed value here means every deployed app gets a new revision (and a rollout) when
    // berth is upgraded. Change the canonical form only on purpose, with the schema tag in
    // revision.rs bumped and a note in docs/manifest.md.
    let set = load_one(FULL).unwrap();
    assert_eq!(
        set.manifests[0].revision.as_str(),
        "sha256:58e78fca08843b11fdc52f7bb8ef9a613ff4282a3a51cfb3b7602c8b1546003f"
    );
}

#[test]
fn expose_protocol_defaults_to_http_and_keeps_old_revisions() {
    let http = load_one("app: web\nimage: busybox\nport: 80\nexpose: { port: 8000 }\n").unwrap();
    let explicit =
        load_one("app: web\nimage: busybox\nport: 80\nexpose: { port: 8000, protocol: http }\n")
            .unwrap();
    let tcp =
        load_one("app: web\nimage: busybox\nport: 80\nexpose: { port: 8000, protocol: tcp }\n")
            .unwrap();
    let e = http.manifests[0].app.expose.as_ref().unwrap();
    assert_eq!(e.protocol, crate::app::Protocol::Http);
    // The default is not serialized: manifests written before the field keep their hash.
    let json = serde_json::to_string(&http.manifests[0].app).unwrap();
    assert!(json.contains(r#""expose":{"port":8000}"#), "{json}");
    assert_eq!(http.manifests[0].revision, explicit.manifests[0].revision);
    assert_ne!(http.manifests[0].revision, tcp.manifests[0].revision);
    let t = tcp.manifests[0].app.expose.as_ref().unwrap();
    assert_eq!(t.protocol, crate::app::Protocol::Tcp);
    let back: App =
        serde_json::from_str(&serde_json::to_string(&tcp.manifests[0].app).unwrap()).unwrap();
    assert_eq!(&back, &tcp.manifests[0].app);
}

#[test]
fn a_bad_expose_protocol_and_rps_over_tcp_are_refused_where_written() {
    assert_eq!(
        errors("app: web\nimage: busybox\nport: 80\nexpose: { port: 8000, protocol: udp }\n"),
        ["apps/web.yaml:4:33: expose.protocol: expected one of http, tcp, got \"udp\""]
    );
    assert_eq!(
        errors(
            "app: web\nimage: busybox\nport: 80\nexpose: { port: 8000, protocol: tcp }\n\
             autoscale: { max: 3, metric: rps, target: 10 }\n"
        ),
        [
            "apps/web.yaml:5:30: autoscale.metric: rps needs HTTP: with `expose.protocol: tcp` the proxy sees connections, not requests; use concurrency (open connections) or cpu"
        ]
    );
    assert!(
        errors(
            "app: web\nimage: busybox\nport: 80\nexpose: { port: 8000, protocol: tcp }\n\
             autoscale: { min: 0, max: 3, metric: concurrency, target: 10 }\n"
        )
        .is_empty()
    );
}
