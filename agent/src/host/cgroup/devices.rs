//! Device access rules for a container's cgroup (the devices controller).
//!
//! The default list follows moby's (SECURITY.md §1.6) plus the runtime-spec default devices
//! runc also allows: deny everything, then allow the null/zero/full/random/urandom/tty/
//! console/ptmx character devices and the pty slaves, and deny fuse explicitly. Nothing else,
//! so a container with CAP_MKNOD can create a block device node but not open it.
//!
//! On v1 the rules are lines written to `devices.deny` / `devices.allow`. On v2 the kernel
//! checks devices only through a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the
//! cgroup, which [`super::devices_bpf`] compiles from the same rules.

use std::fmt;

/// Which device nodes a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Every device, character and block (`a`).
    All,
    /// Character devices (`c`).
    Char,
    /// Block devices (`b`).
    Block,
}

/// What a rule grants or denies: read, write, mknod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAccess {
    pub read: bool,
    pub write: bool,
    pub mknod: bool,
}

impl DeviceAccess {
    /// Read, write and mknod (`rwm`).
    pub const ALL: Self = Self {
        read: true,
        write: true,
        mknod: true,
    };
}

impl fmt::Display for DeviceAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (on, letter) in [(self.read, "r"), (self.write, "w"), (self.mknod, "m")] {
            if on {
                f.write_str(letter)?;
            }
        }
        Ok(())
    }
}

/// One device rule; `None` as major or minor matches any number (`*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: DeviceAccess,
}

impl DeviceRule {
    /// Allows `rwm` on the character device `major:minor` (`None` = any minor).
    pub const fn allow_char(major: u32, minor: Option<u32>) -> Self {
        Self {
            allow: true,
            kind: DeviceKind::Char,
            major: Some(major),
            minor,
            access: DeviceAccess::ALL,
        }
    }

    /// Denies `rwm` on every device.
    pub const fn deny_all() -> Self {
        Self {
            allow: false,
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: DeviceAccess::ALL,
        }
    }

    /// The line the v1 devices controller takes, e.g. `c 1:3 rwm` or `a *:* rwm`.
    pub fn v1_line(&self) -> String {
        let kind = match self.kind {
            DeviceKind::All => "a",
            DeviceKind::Char => "c",
            DeviceKind::Block => "b",
        };
        let number = |n: Option<u32>| n.map_or_else(|| "*".to_owned(), |n| n.to_string());
        format!(
            "{kind} {}:{} {}",
            number(self.major),
            number(self.minor),
            self.access
        )
    }

    /// The v1 file the rule is written to.
    pub fn v1_file(&self) -> &'static str {
        if self.allow {
            "devices.allow"
        } else {
            "devices.deny"
        }
    }
}

/// The default rules, in the order they must be applied.
pub fn default_device_rules() -> Vec<DeviceRule> {
    let mut rules = vec![DeviceRule::deny_all()];
    rules.extend(
        [
            (1, Some(3)), // /dev/null
            (1, Some(5)), // /dev/zero
            (1, Some(7)), // /dev/full
            (1, Some(8)), // /dev/random
            (1, Some(9)), // /dev/urandom
            (5, Some(0)), // /dev/tty
            (5, Some(1)), // /dev/console
            (5, Some(2)), // /dev/ptmx
            (136, None),  // /dev/pts/*
        ]
        .into_iter()
        .map(|(major, minor)| DeviceRule::allow_char(major, minor)),
    );
    rules.push(DeviceRule {
        allow: false,
        ..DeviceRule::allow_char(10, Some(229)) // /dev/fuse
    });
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_deny_everything_first_then_allow_the_standard_devices() {
        let lines: Vec<(&str, String)> = default_device_rules()
            .iter()
            .map(|r| (r.v1_file(), r.v1_line()))
            .collect();
        assert_eq!(lines[0], ("devices.deny", "a *:* rwm".to_owned()));
        for expected in [
            "c 1:3 rwm",
            "c 1:5 rwm",
            "c 1:7 rwm",
            "c 1:8 rwm",
            "c 1:9 rwm",
            "c 5:0 rwm",
            "c 5:1 rwm",
            "c 5:2 rwm",
            "c 136:* rwm",
        ] {
            assert!(
                lines.contains(&("devices.allow", expected.to_owned())),
                "{expected} missing from {lines:?}"
            );
        }
        assert_eq!(
            lines.last(),
            Some(&("devices.deny", "c 10:229 rwm".to_owned()))
        );
        assert!(
            !lines.iter().any(|(_, l)| l.starts_with('b')),
            "no block device is allowed"
        );
    }

    #[test]
    fn access_prints_in_rwm_order() {
        let only_read = DeviceAccess {
            read: true,
            write: false,
            mknod: false,
        };
        assert_eq!(only_read.to_string(), "r");
        assert_eq!(DeviceAccess::ALL.to_string(), "rwm");
    }
}
