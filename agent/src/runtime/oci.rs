//! OCI runtime bundles: turns a bundle's `config.json` (already parsed and type-checked by
//! the oci-spec crate, then viewed as JSON) into a [`ContainerSpec`], and builds the OCI
//! `state` document. Pure: the caller reads the file.
//!
//! Where runc deviates from the runtime spec we follow the spec: an unknown capability is an
//! error (oci-spec refuses it while parsing), a mount destination must be absolute, and
//! deleting a `created` container needs `--force` (see [`crate::runtime::state::Status`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::runtime::RuntimeError;
use crate::runtime::caps::CapSet;
use crate::runtime::spec::{ContainerSpec, Mount, RLIMIT_NAMES, Rlimit, Rootfs};

/// One hook: a host program run with the container's state on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// Absolute path of the program.
    pub path: String,
    /// argv (including argv[0]).
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<String>,
    /// Seconds before it is killed.
    pub timeout: Option<u64>,
}

/// The hooks of a bundle, by when they run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    /// After the container is created, in the runtime's namespace (also `prestart`).
    pub create_runtime: Vec<Hook>,
    /// After `start` execs the program.
    pub poststart: Vec<Hook>,
    /// After the container is deleted.
    pub poststop: Vec<Hook>,
}

fn invalid(field: &'static str, reason: String) -> RuntimeError {
    RuntimeError::InvalidSpec { field, reason }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn caps(v: &Value) -> Result<Option<CapSet>, RuntimeError> {
    match v.as_array() {
        None => Ok(None),
        Some(_) => CapSet::parse(strings(v)).map(Some),
    }
}

fn hooks(v: &Value) -> Vec<Hook> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| {
                    Some(Hook {
                        path: h["path"].as_str()?.to_string(),
                        args: strings(&h["args"]),
                        env: strings(&h["env"]),
                        timeout: h["timeout"].as_u64(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `v` is a runtime-spec version of major 1 (`1.0.2`, `1.1.0-rc.1`, `1.2.0+dev`): the
/// spec requires an error for values a runtime cannot process.
fn supported_version(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts[0] == "1"
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Converts a bundle's config (as JSON) into a spec for container `id`.
pub fn to_spec(
    id: &str,
    bundle: &Path,
    config: &Value,
) -> Result<(ContainerSpec, Hooks), RuntimeError> {
    let version = config["ociVersion"].as_str().unwrap_or_default();
    if !supported_version(version) {
        return Err(invalid(
            "ociVersion",
            format!("{version:?} is not a 1.x.y runtime-spec version berth can read"),
        ));
    }
    let root = config["root"]["path"].as_str().ok_or_else(|| {
        invalid(
            "root.path",
            "the bundle's config.json has no root.path".into(),
        )
    })?;
    let root_path = if Path::new(root).is_absolute() {
        PathBuf::from(root)
    } else {
        bundle.join(root)
    };
    let process = &config["process"];
    let args = strings(&process["args"]);
    let mut spec = ContainerSpec::new(id.to_string(), Rootfs::Dir { path: root_path }, args);
    spec.readonly_rootfs = config["root"]["readonly"].as_bool().unwrap_or(false);
    spec.env = strings(&process["env"]);
    spec.cwd = process["cwd"].as_str().unwrap_or("/").to_string();
    let uid = process["user"]["uid"].as_u64().unwrap_or(0);
    let gid = process["user"]["gid"].as_u64().unwrap_or(0);
    spec.user = format!("{uid}:{gid}");
    spec.additional_gids = process["user"]["additionalGids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| g.as_u64().and_then(|g| u32::try_from(g).ok()))
                .collect()
        })
        .unwrap_or_default();
    spec.hostname = config["hostname"].as_str().unwrap_or("").to_string();
    spec.no_new_privs = process["noNewPrivileges"].as_bool().unwrap_or(false);
    let c = &process["capabilities"];
    spec.capabilities = caps(&c["bounding"])?.unwrap_or(CapSet::EMPTY);
    spec.effective = Some(caps(&c["effective"])?.unwrap_or(CapSet::EMPTY));
    spec.permitted = Some(caps(&c["permitted"])?.unwrap_or(CapSet::EMPTY));
    spec.inheritable = caps(&c["inheritable"])?.unwrap_or(CapSet::EMPTY);
    spec.ambient = caps(&c["ambient"])?.unwrap_or(CapSet::EMPTY);
    spec.rlimits = Vec::new();
    for r in process["rlimits"].as_array().into_iter().flatten() {
        let name = r["type"].as_str().unwrap_or("").to_ascii_lowercase();
        let name = name.strip_prefix("rlimit_").unwrap_or(&name).to_string();
        let resource = RLIMIT_NAMES
            .iter()
            .position(|n| *n == name)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| invalid("process.rlimits", format!("unknown rlimit {:?}", r["type"])))?;
        spec.rlimits.push(Rlimit {
            resource,
            soft: r["soft"].as_u64().unwrap_or(0),
            hard: r["hard"].as_u64().unwrap_or(0),
        });
    }
    spec.default_mounts = false;
    spec.mounts = Vec::new();
    for m in config["mounts"].as_array().into_iter().flatten() {
        let destination = m["destination"].as_str().unwrap_or("").to_string();
        let options = strings(&m["options"]);
        let kind = m["type"].as_str().unwrap_or("").to_string();
        let kind = if kind.is_empty() || options.iter().any(|o| o == "bind" || o == "rbind") {
            "bind".to_string()
        } else {
            kind
        };
        let mut source = m["source"].as_str().unwrap_or("").to_string();
        if kind == "bind" && !Path::new(&source).is_absolute() {
            source = bundle.join(&source).display().to_string();
        }
        spec.mounts.push(Mount {
            destination,
            kind,
            source,
            options,
        });
    }
    let linux = &config["linux"];
    let ns = &mut spec.namespaces;
    ns.mount = false;
    ns.pid = false;
    ns.uts = false;
    ns.ipc = false;
    ns.net = false;
    ns.cgroup = false;
    for n in linux["namespaces"].as_array().into_iter().flatten() {
        let t = n["type"].as_str().unwrap_or("");
        if let Some(path) = n["path"].as_str() {
            if t == "pid" {
                return Err(invalid(
                    "linux.namespaces",
                    "joining an existing pid namespace is not supported".into(),
                ));
            }
            ns.join.push((t.to_string(), PathBuf::from(path)));
            continue;
        }
        match t {
            "mount" => ns.mount = true,
            "pid" => ns.pid = true,
            "uts" => ns.uts = true,
            "ipc" => ns.ipc = true,
            "network" => ns.net = true,
            "cgroup" => ns.cgroup = true,
            "user" | "time" => {
                return Err(invalid(
                    "linux.namespaces",
                    format!("{t} namespaces are not supported yet"),
                ));
            }
            other => {
                return Err(invalid(
                    "linux.namespaces",
                    format!("unknown namespace type {other:?}"),
                ));
            }
        }
    }
    if !ns.net && !ns.join.iter().any(|(t, _)| t == "network") {
        spec.network = crate::runtime::spec::Network::Host;
    }
    for d in linux["devices"].as_array().into_iter().flatten() {
        let num = |k: &str| d[k].as_u64().and_then(|v| u32::try_from(v).ok());
        let path = d["path"].as_str().unwrap_or_default().to_string();
        let kind = match d["type"].as_str() {
            Some(t @ ("c" | "u" | "b" | "p")) => t.chars().next().unwrap_or('c'),
            other => {
                return Err(invalid(
                    "linux.devices",
                    format!("device {path:?} has type {other:?}: must be c, u, b or p"),
                ));
            }
        };
        spec.devices.push(crate::runtime::spec::Device {
            path,
            kind,
            major: num("major").unwrap_or(0),
            minor: num("minor").unwrap_or(0),
            mode: num("fileMode"),
            uid: num("uid"),
            gid: num("gid"),
        });
    }
    spec.masked_paths = strings(&linux["maskedPaths"]);
    spec.readonly_paths = strings(&linux["readonlyPaths"]);
    let res = &linux["resources"];
    // The spec: unsupported values MUST be an error (a limit silently not applied would be
    // worse). An empty section is fine.
    for (key, what) in [
        ("blockIO", "block I/O limits (blkio)"),
        (
            "network",
            "network class and priorities (net_cls, net_prio)",
        ),
        ("hugepageLimits", "huge page limits (hugetlb)"),
        ("rdma", "RDMA limits"),
    ] {
        let set = match &res[key] {
            Value::Null => false,
            Value::Object(m) => m.values().any(|v| !v.is_null()),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        };
        if set {
            return Err(invalid(
                "linux.resources",
                format!("{key}: {what} are not supported by berth; remove the section"),
            ));
        }
    }
    spec.resources.memory = res["memory"]["limit"]
        .as_i64()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0);
    spec.resources.cpu_quota = res["cpu"]["quota"]
        .as_i64()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0);
    spec.resources.cpu_period = res["cpu"]["period"].as_u64().filter(|v| *v > 0);
    spec.resources.cpu_shares = res["cpu"]["shares"].as_u64().filter(|v| *v > 0);
    spec.resources.pids = res["pids"]["limit"].as_i64().filter(|v| *v > 0);
    spec.resources.memory_reservation = res["memory"]["reservation"]
        .as_i64()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0);
    spec.resources.memory_swappiness = res["memory"]["swappiness"].as_u64();
    spec.resources.memory_kernel_tcp = res["memory"]["kernelTCP"]
        .as_i64()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0);
    spec.resources.disable_oom_killer =
        res["memory"]["disableOOMKiller"].as_bool().unwrap_or(false);
    let cpuset = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(String::from);
    spec.resources.cpuset_cpus = cpuset(&res["cpu"]["cpus"]);
    spec.resources.cpuset_mems = cpuset(&res["cpu"]["mems"]);
    spec.cgroup_parent = "berth-runtime".into();
    if let Some(path) = linux["cgroupsPath"].as_str().filter(|p| !p.is_empty()) {
        // Absolute: relative to each hierarchy's mount point; relative paths are taken the
        // same way (berth has no cgroup of its own to nest under). runc's systemd form
        // `slice:prefix:name` is not supported.
        spec.cgroup_path = Some(path.trim_start_matches('/').to_string());
    }
    spec.seccomp = !linux["seccomp"].is_null();
    if let Some(map) = linux["sysctl"].as_object() {
        spec.sysctl = map
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect();
    }
    spec.oom_score_adj = process["oomScoreAdj"]
        .as_i64()
        .and_then(|v| i32::try_from(v).ok());
    let h = &config["hooks"];
    let mut hk = Hooks {
        create_runtime: hooks(&h["prestart"]),
        poststart: hooks(&h["poststart"]),
        poststop: hooks(&h["poststop"]),
    };
    hk.create_runtime.extend(hooks(&h["createRuntime"]));
    if !spec.namespaces.mount {
        return Err(invalid(
            "linux.namespaces",
            "berth needs a mount namespace: add {\"type\": \"mount\"}".into(),
        ));
    }
    spec.validate()?;
    Ok((spec, hk))
}

/// The OCI `state` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OciState {
    /// The spec version.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// creating | created | running | stopped.
    pub status: String,
    /// Host pid of the init (0 once stopped).
    pub pid: i32,
    /// The bundle directory.
    pub bundle: String,
    /// Annotations from config.json.
    pub annotations: serde_json::Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "process": {
                "args": ["sh"], "env": ["PATH=/bin"], "cwd": "/",
                "user": {"uid": 1, "gid": 2, "additionalGids": [5]},
                "noNewPrivileges": true,
                "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 5}]
            },
            "hostname": "h",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {
                "namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "network"}],
                "resources": {"memory": {"limit": 1048576}, "pids": {"limit": 10}},
                "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]
            }
        })
    }

    #[test]
    fn bundle_config_becomes_a_spec() {
        let (spec, _) = to_spec("c1", Path::new("/b"), &config()).unwrap();
        assert_eq!(
            spec.rootfs,
            Rootfs::Dir {
                path: PathBuf::from("/b/rootfs")
            }
        );
        assert!(spec.readonly_rootfs && spec.no_new_privs && !spec.default_mounts);
        assert_eq!(spec.user, "1:2");
        assert_eq!(spec.additional_gids, vec![5]);
        assert_eq!(spec.capabilities, CapSet(1 << 5));
        assert_eq!(
            spec.rlimits,
            vec![Rlimit {
                resource: 7,
                soft: 5,
                hard: 10
            }]
        );
        assert!(spec.namespaces.pid && spec.namespaces.net && !spec.namespaces.uts);
        assert_eq!(spec.resources.memory, Some(1 << 20));
        assert_eq!(spec.mounts[0].kind, "proc");
    }

    #[test]
    fn unknown_capabilities_and_relative_mounts_are_errors() {
        let mut c = config();
        c["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_BOGUS"]);
        assert!(to_spec("c1", Path::new("/b"), &c).is_err());
        let mut c = config();
        c["mounts"] =
            serde_json::json!([{"destination": "../etc", "type": "tmpfs", "source": "tmpfs"}]);
        assert!(to_spec("c1", Path::new("/b"), &c).is_err());
    }

    #[test]
    fn memory_extras_cpuset_and_devices_are_read() {
        let mut c = config();
        c["linux"]["resources"] = serde_json::json!({
            "memory": {"limit": 1048576, "reservation": 524288, "swappiness": 10,
                       "kernelTCP": 65536, "disableOOMKiller": true},
            "cpu": {"cpus": "0-1", "mems": "0"}
        });
        c["linux"]["devices"] = serde_json::json!([
            {"path": "/dev/test1", "type": "c", "major": 10, "minor": 666,
             "fileMode": 432, "uid": 1, "gid": 2},
            {"path": "/dev/fifo", "type": "p"}
        ]);
        let (spec, _) = to_spec("c1", Path::new("/b"), &c).unwrap();
        let r = &spec.resources;
        assert_eq!(r.memory_reservation, Some(524_288));
        assert_eq!(r.memory_swappiness, Some(10));
        assert_eq!(r.memory_kernel_tcp, Some(65_536));
        assert!(r.disable_oom_killer);
        assert_eq!(r.cpuset_cpus.as_deref(), Some("0-1"));
        assert_eq!(r.cpuset_mems.as_deref(), Some("0"));
        assert_eq!(spec.devices.len(), 2);
        assert_eq!(
            spec.devices[0],
            crate::runtime::spec::Device {
                path: "/dev/test1".into(),
                kind: 'c',
                major: 10,
                minor: 666,
                mode: Some(0o660),
                uid: Some(1),
                gid: Some(2),
            }
        );
        assert_eq!(spec.devices[1].kind, 'p');
    }

    #[test]
    fn only_runtime_spec_1_versions_are_read() {
        for ok in ["1.0.2", "1.1.0", "1.0.0-rc5", "1.2.0+dev", "1.0.2-dev"] {
            assert!(supported_version(ok), "{ok}");
        }
        for bad in ["invalid", "", "2.0.0", "1.0", "1..0", "v1.0.2", "1.0.x"] {
            assert!(!supported_version(bad), "{bad}");
        }
        let mut c = config();
        c["ociVersion"] = serde_json::json!("invalid");
        assert!(to_spec("c1", Path::new("/b"), &c).is_err());
    }

    #[test]
    fn unsupported_resource_sections_are_errors() {
        for (key, value) in [
            ("blockIO", serde_json::json!({"weight": 10})),
            ("network", serde_json::json!({"classID": 1})),
            (
                "hugepageLimits",
                serde_json::json!([{"pageSize": "2MB", "limit": 1}]),
            ),
        ] {
            let mut c = config();
            c["linux"]["resources"][key] = value;
            let err = to_spec("c1", Path::new("/b"), &c).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        // Empty sections are fine.
        let mut c = config();
        c["linux"]["resources"]["blockIO"] = serde_json::json!({});
        c["linux"]["resources"]["hugepageLimits"] = serde_json::json!([]);
        assert!(to_spec("c1", Path::new("/b"), &c).is_ok());
    }

    #[test]
    fn bad_devices_are_errors() {
        for dev in [
            serde_json::json!({"path": "/dev/x", "type": "q"}),
            serde_json::json!({"path": "dev/x", "type": "c"}),
            serde_json::json!({"path": "/dev/../../x", "type": "c"}),
            serde_json::json!({"path": "/proc/x", "type": "c"}),
        ] {
            let mut c = config();
            c["linux"]["devices"] = serde_json::json!([dev.clone()]);
            let r = to_spec("c1", Path::new("/b"), &c).and_then(|(s, _)| s.validate());
            assert!(r.is_err(), "{dev} accepted");
        }
    }
}
