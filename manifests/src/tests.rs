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
