//! Linux capabilities by name and number, and the default set (SECURITY.md §1.1): the 14
//! capabilities Docker and containerd grant, in the bounding, permitted and effective sets;
//! inheritable and ambient stay empty.

use crate::runtime::RuntimeError;

/// Every capability the kernel headers name, by number (index = capability number).
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The default set (moby `daemon/pkg/oci/caps/defaults.go`, containerd `defaultUnixCaps`).
pub const DEFAULT: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A set of capabilities as the kernel's 64-bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct CapSet(pub u64);

impl CapSet {
    /// The empty set.
    pub const EMPTY: CapSet = CapSet(0);

    /// The default set of 14.
    pub fn default_set() -> CapSet {
        // The names are constants from `NAMES`, so parsing cannot fail; fall back to empty
        // rather than panic if that ever changes (a unit test pins the mask).
        CapSet::parse(DEFAULT).unwrap_or(CapSet::EMPTY)
    }

    /// Parses names (`CAP_X` or `X`, any case). An unknown name is an error, as the runtime
    /// spec requires (runc only warns).
    pub fn parse<I, S>(names: I) -> Result<CapSet, RuntimeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut mask = 0u64;
        for name in names {
            let bit = number(name.as_ref()).ok_or_else(|| RuntimeError::InvalidSpec {
                field: "capabilities",
                reason: format!(
                    "unknown capability {:?}: use a name such as CAP_NET_ADMIN",
                    name.as_ref()
                ),
            })?;
            mask |= 1 << bit;
        }
        Ok(CapSet(mask))
    }

    /// Whether capability number `bit` is in the set.
    pub fn has(self, bit: u32) -> bool {
        bit < 64 && self.0 & (1 << bit) != 0
    }

    /// The kernel's two 32-bit halves (low, high), as `capset(2)` takes them.
    pub fn halves(self) -> (u32, u32) {
        ((self.0 & 0xffff_ffff) as u32, (self.0 >> 32) as u32)
    }
}

/// The number of a capability name (`CAP_SYS_ADMIN`, `sys_admin`).
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES
        .iter()
        .position(|n| *n == full)
        .and_then(|i| u32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_is_the_docker_mask() {
        assert_eq!(
            format!("{:016x}", CapSet::default_set().0),
            "00000000a80425fb"
        );
    }

    #[test]
    fn unknown_capability_is_an_error() {
        let err = CapSet::parse(["CAP_NOT_A_THING"]).unwrap_err();
        assert!(err.to_string().contains("unknown capability"), "{err}");
    }

    #[test]
    fn names_parse_without_prefix_and_in_any_case() {
        assert_eq!(CapSet::parse(["net_admin"]).unwrap(), CapSet(1 << 12));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
    }
}
