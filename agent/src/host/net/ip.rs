//! Runs iproute2's `ip` (and, for egress NAT, `iptables`) in a given network namespace.
//!
//! Why the CLI and not netlink from Rust: one `ip -batch` process per namespace does all the
//! work of an attach (three processes in all, ~1–2 ms each here), iproute2 is on every host
//! and its error messages are the ones operators know; `rtnetlink` would save those
//! milliseconds at the price of an async netlink stack in the build. The calls go through
//! this one module, so swapping in netlink later touches nothing else.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::net::NetError;

/// The network namespace the agent treats as "the host": where the bridge and the host ends
/// of the veths live. In production the agent's own namespace; tests pass a namespace they
/// created (`ip netns add`), so nothing is created in the machine's root namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostNetns {
    /// The agent's own network namespace.
    Current,
    /// A named namespace under `/run/netns`.
    Named(String),
}

impl HostNetns {
    fn ip_args(&self) -> Vec<&str> {
        match self {
            Self::Current => vec![],
            Self::Named(n) => vec!["-n", n.as_str()],
        }
    }
}

/// Runs `ip [-n ns] args…`; returns stdout.
pub fn ip(ns: &HostNetns, args: &[&str]) -> Result<String, NetError> {
    let mut all = ns.ip_args();
    all.extend_from_slice(args);
    run("ip", &all, None)
}

/// Runs `ip -n ns -batch -` with the given lines; stops at the first failing line.
pub fn ip_batch(ns: &str, lines: &[String]) -> Result<(), NetError> {
    let input = lines.join("\n") + "\n";
    run("ip", &["-n", ns, "-batch", "-"], Some(&input)).map(|_| ())
}

/// Runs `ip [-n ns] -batch -` in the host namespace.
pub fn ip_batch_host(ns: &HostNetns, lines: &[String]) -> Result<(), NetError> {
    let input = lines.join("\n") + "\n";
    let mut all = ns.ip_args();
    all.extend_from_slice(&["-batch", "-"]);
    run("ip", &all, Some(&input)).map(|_| ())
}

/// Runs `iptables args…` in the host namespace (through `ip netns exec` for a named one).
pub fn iptables(ns: &HostNetns, args: &[&str]) -> Result<String, NetError> {
    match ns {
        HostNetns::Current => run("iptables", args, None),
        HostNetns::Named(n) => {
            let mut all = vec!["netns", "exec", n.as_str(), "iptables"];
            all.extend_from_slice(args);
            run("ip", &all, None)
        }
    }
}

fn run(program: &'static str, args: &[&str], input: Option<&str>) -> Result<String, NetError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|source| NetError::Spawn { program, source })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A failed write shows up as the command's own error below.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NetError::Spawn { program, source })?;
    if !out.status.success() {
        let mut command = format!("{program} {}", args.join(" "));
        if let Some(input) = input {
            command.push_str(" <<< ");
            command.push_str(&input.replace('\n', "; "));
        }
        return Err(NetError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
