//! Signals by name (`SIGTERM`, `TERM`, `sigterm`, or a number as Docker accepts), for
//! `stop.signal`. Canonical form `SIGTERM`. The numbers are Linux's (x86-64 and arm64 share
//! them); the agent sends them. Pure: this module never sends a signal.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Linux signal that can stop a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signal(u8);

/// (number, name without `SIG`) of the standard signals.
const SIGNALS: [(u8, &str); 31] = [
    (1, "HUP"),
    (2, "INT"),
    (3, "QUIT"),
    (4, "ILL"),
    (5, "TRAP"),
    (6, "ABRT"),
    (7, "BUS"),
    (8, "FPE"),
    (9, "KILL"),
    (10, "USR1"),
    (11, "SEGV"),
    (12, "USR2"),
    (13, "PIPE"),
    (14, "ALRM"),
    (15, "TERM"),
    (16, "STKFLT"),
    (17, "CHLD"),
    (18, "CONT"),
    (19, "STOP"),
    (20, "TSTP"),
    (21, "TTIN"),
    (22, "TTOU"),
    (23, "URG"),
    (24, "XCPU"),
    (25, "XFSZ"),
    (26, "VTALRM"),
    (27, "PROF"),
    (28, "WINCH"),
    (29, "IO"),
    (30, "PWR"),
    (31, "SYS"),
];

impl Signal {
    /// SIGTERM, the default stop signal.
    pub const TERM: Self = Self(15);
    /// SIGKILL, sent when the grace period ends.
    pub const KILL: Self = Self(9);

    /// The Linux signal number.
    pub const fn number(self) -> u8 {
        self.0
    }

    /// The name without `SIG`.
    fn short_name(self) -> &'static str {
        SIGNALS
            .iter()
            .find(|(n, _)| *n == self.0)
            .map_or("UNKNOWN", |(_, name)| name)
    }
}

/// An unknown signal name or number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signal {0:?}")]
pub struct UnknownSignal(pub String);

impl UnknownSignal {
    /// Always invalid input.
    pub fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::InvalidInput
    }
}

impl FromStr for Signal {
    type Err = UnknownSignal;

    fn from_str(s: &str) -> Result<Self, UnknownSignal> {
        let upper = s.trim().to_ascii_uppercase();
        if let Ok(n) = upper.parse::<u8>() {
            return SIGNALS
                .iter()
                .find(|(num, _)| *num == n)
                .map(|(num, _)| Self(*num))
                .ok_or_else(|| UnknownSignal(s.to_owned()));
        }
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        SIGNALS
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(num, _)| Self(*num))
            .ok_or_else(|| UnknownSignal(s.to_owned()))
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.short_name())
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_short_name_any_case_or_number() {
        for s in ["SIGTERM", "TERM", "sigterm", "term", "15"] {
            assert_eq!(s.parse::<Signal>(), Ok(Signal::TERM), "{s}");
        }
        assert_eq!("SIGQUIT".parse::<Signal>().map(Signal::number), Ok(3));
        assert_eq!(
            "SIGWINCH".parse::<Signal>().map(|s| s.to_string()),
            Ok("SIGWINCH".into())
        );
    }

    #[test]
    fn unknown_signals_are_rejected() {
        for s in ["SIGFOO", "0", "32", "", "SIG"] {
            assert!(s.parse::<Signal>().is_err(), "{s}");
        }
    }
}
