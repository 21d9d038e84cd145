//! Quantities written in manifests: durations (`500ms`, `10s`, `1m30s`), byte sizes (`64Mi`,
//! `1G`, plain bytes) and cpu (fractional cores `0.5`, or millicores `500m` as in Kubernetes).
//!
//! Each type parses the written form, prints one canonical form (which is also its serde form,
//! so the revision hash does not depend on how a value was spelled), and converts to what the
//! agent needs (milliseconds, bytes, millicores). Pure: no I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a quantity did not parse. The message says what was wrong in the value itself; the
/// caller adds the field and the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Empty text.
    #[error("empty value")]
    Empty,
    /// Not of the form `<number><unit>`.
    #[error("malformed")]
    Malformed,
    /// A unit berth does not know.
    #[error("unknown unit `{0}`")]
    UnknownUnit(String),
    /// A unit that means different things in Docker and Kubernetes.
    #[error("ambiguous unit `{unit}`: write {suggestion}")]
    AmbiguousUnit {
        /// The unit as written.
        unit: String,
        /// What to write instead.
        suggestion: &'static str,
    },
    /// A number without a unit where one is required.
    #[error("a unit is required")]
    MissingUnit,
    /// Units out of order or repeated (`10s1m`).
    #[error("units must go from largest to smallest, each at most once")]
    UnitOrder,
    /// More precision than the type holds.
    #[error("too precise: {0}")]
    TooPrecise(&'static str),
    /// The value does not fit.
    #[error("too large")]
    Overflow,
    /// A negative value.
    #[error("must not be negative")]
    Negative,
}

impl UnitError {
    /// Always invalid input: the value as written is wrong.
    pub fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::InvalidInput
    }
}

/// Splits `12.5Mi` into ("12", Some("5"), "Mi"); rejects signs, exponents and empty numbers.
fn split_number(s: &str) -> Result<(&str, Option<&str>, &str), UnitError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    if s.starts_with('-') {
        return Err(UnitError::Negative);
    }
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (num, None),
    };
    if int.is_empty() || frac.is_some_and(|f| f.is_empty() || f.contains('.')) {
        return Err(UnitError::Malformed);
    }
    Ok((int, frac, unit))
}

/// `int.frac * scale` exactly, or an error if the result has a fractional part.
fn scaled(
    int: &str,
    frac: Option<&str>,
    scale: u128,
    what: &'static str,
) -> Result<u128, UnitError> {
    let mut value: u128 = 0;
    for d in int.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(d - b'0')))
            .ok_or(UnitError::Overflow)?;
        if value > u128::from(u64::MAX) {
            return Err(UnitError::Overflow);
        }
    }
    let mut total = value.checked_mul(scale).ok_or(UnitError::Overflow)?;
    if let Some(frac) = frac {
        if frac.len() > 18 {
            return Err(UnitError::TooPrecise(what));
        }
        let mut num: u128 = 0;
        let mut den: u128 = 1;
        for d in frac.bytes() {
            num = num * 10 + u128::from(d - b'0');
            den *= 10;
        }
        let part = num.checked_mul(scale).ok_or(UnitError::Overflow)?;
        if part % den != 0 {
            return Err(UnitError::TooPrecise(what));
        }
        total = total.checked_add(part / den).ok_or(UnitError::Overflow)?;
    }
    Ok(total)
}

macro_rules! serde_via_string {
    ($t:ty, $expecting:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(|e| {
                    serde::de::Error::custom(format!(concat!("expected ", $expecting, ": {}"), e))
                })
            }
        }
    };
}

/// A span of time with millisecond precision: `500ms`, `10s`, `5m`, `1h`, `1m30s`, `0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    millis: u64,
}

impl Duration {
    /// Zero.
    pub const ZERO: Self = Self { millis: 0 };

    /// From milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// From seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self {
            millis: secs.saturating_mul(1000),
        }
    }

    /// In milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// As a `std::time::Duration`.
    pub const fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }
}

const DURATION_UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)];

impl FromStr for Duration {
    type Err = UnitError;

    /// Parses a sequence of `<number><unit>` with units `h`, `m`, `s`, `ms` from largest to
    /// smallest (`1h30m`, `1.5s`). `0` alone needs no unit.
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let s = s.trim();
        if s == "0" {
            return Ok(Self::ZERO);
        }
        let mut rest = s;
        let mut total: u128 = 0;
        let mut last_rank = None;
        if rest.is_empty() {
            return Err(UnitError::Empty);
        }
        while !rest.is_empty() {
            let (int, frac, tail) = split_number(rest)?;
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let unit = &tail[..unit_len];
            if unit.is_empty() {
                return Err(UnitError::MissingUnit);
            }
            let Some(rank) = DURATION_UNITS.iter().position(|(u, _)| *u == unit) else {
                return Err(UnitError::UnknownUnit(unit.to_owned()));
            };
            if last_rank.is_some_and(|l| rank <= l) {
                return Err(UnitError::UnitOrder);
            }
            last_rank = Some(rank);
            let scale = DURATION_UNITS[rank].1;
            total = total
                .checked_add(scaled(
                    int,
                    frac,
                    u128::from(scale),
                    "durations have millisecond precision",
                )?)
                .ok_or(UnitError::Overflow)?;
            rest = &tail[unit_len..];
        }
        let millis = u64::try_from(total).map_err(|_| UnitError::Overflow)?;
        Ok(Self { millis })
    }
}

impl fmt::Display for Duration {
    /// The canonical form: `0s`, `500ms`, `1m30s`, `2h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.millis;
        for (unit, scale) in DURATION_UNITS {
            let n = rest / scale;
            if n > 0 {
                write!(f, "{n}{unit}")?;
                rest %= scale;
            }
        }
        Ok(())
    }
}

serde_via_string!(Duration, "a duration like 10s");

/// A number of bytes: plain (`1048576`), binary (`64Ki`, `128Mi`, `1Gi`, also `MiB`) or decimal
/// (`500k`, `1M`, `1G`, also `MB`) units, as Kubernetes quantities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize {
    bytes: u64,
}

const BINARY_UNITS: [(&str, u32); 6] = [
    ("Ki", 1),
    ("Mi", 2),
    ("Gi", 3),
    ("Ti", 4),
    ("Pi", 5),
    ("Ei", 6),
];
const DECIMAL_UNITS: [(&str, u32); 6] =
    [("k", 1), ("M", 2), ("G", 3), ("T", 4), ("P", 5), ("E", 6)];

impl ByteSize {
    /// From a byte count.
    pub const fn from_bytes(bytes: u64) -> Self {
        Self { bytes }
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self {
            bytes: n.saturating_mul(1 << 20),
        }
    }

    /// In bytes.
    pub const fn as_bytes(self) -> u64 {
        self.bytes
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        let (int, frac, unit) = split_number(s)?;
        let base = unit.strip_suffix('B').unwrap_or(unit);
        let scale: u128 = if unit.is_empty() || unit == "B" {
            1
        } else if let Some((_, p)) = BINARY_UNITS.iter().find(|(u, _)| *u == base) {
            1024u128.pow(*p)
        } else if let Some((_, p)) = DECIMAL_UNITS
            .iter()
            .find(|(u, _)| *u == base || (*u == "k" && base == "K"))
        {
            1000u128.pow(*p)
        } else {
            return Err(match unit {
                "m" | "g" | "t" | "mb" | "gb" | "kb" | "b" => UnitError::AmbiguousUnit {
                    unit: unit.to_owned(),
                    suggestion: "Mi/Gi for binary (1Mi = 1048576 bytes) or M/G for decimal (1M = 1000000 bytes)",
                },
                _ => UnitError::UnknownUnit(unit.to_owned()),
            });
        };
        let bytes = scaled(int, frac, scale, "sizes are whole bytes")?;
        Ok(Self {
            bytes: u64::try_from(bytes).map_err(|_| UnitError::Overflow)?,
        })
    }
}

impl fmt::Display for ByteSize {
    /// The canonical form: the largest binary unit that divides exactly (`128Mi`), else the
    /// largest decimal one (`1G`), else plain bytes (`1023`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = u128::from(self.bytes);
        if b == 0 {
            return f.write_str("0");
        }
        for (unit, p) in BINARY_UNITS.iter().rev() {
            let scale = 1024u128.pow(*p);
            if b % scale == 0 {
                return write!(f, "{}{unit}", b / scale);
            }
        }
        for (unit, p) in DECIMAL_UNITS.iter().rev() {
            let scale = 1000u128.pow(*p);
            if b % scale == 0 {
                return write!(f, "{}{unit}", b / scale);
            }
        }
        write!(f, "{b}")
    }
}

serde_via_string!(ByteSize, "a size like 128Mi");

/// CPU in millicores: `0.5` (cores) or `500m` (millicores), as Kubernetes writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cpu {
    millis: u64,
}

impl Cpu {
    /// From millicores.
    pub const fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// In millicores (1000 = one core).
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// In cores, for cgroup `cpu.max` quota arithmetic.
    pub fn as_cores(self) -> f64 {
        self.millis as f64 / 1000.0
    }
}

impl FromStr for Cpu {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        let (int, frac, unit) = split_number(s)?;
        let millis = match unit {
            "" => scaled(int, frac, 1000, "cpu has millicore precision (0.001)")?,
            "m" => scaled(int, frac, 1, "millicores are whole numbers")?,
            other => return Err(UnitError::UnknownUnit(other.to_owned())),
        };
        Ok(Self {
            millis: u64::try_from(millis).map_err(|_| UnitError::Overflow)?,
        })
    }
}

impl fmt::Display for Cpu {
    /// The canonical form: cores as a decimal (`0.5`, `2`, `0.125`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.millis / 1000;
        let frac = self.millis % 1000;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:03}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

serde_via_string!(Cpu, "cpu cores like 0.5");

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Result<u64, UnitError> {
        s.parse::<Duration>().map(Duration::as_millis)
    }

    #[test]
    fn durations_parse_every_unit_and_compounds() {
        assert_eq!(d("500ms"), Ok(500));
        assert_eq!(d("10s"), Ok(10_000));
        assert_eq!(d("5m"), Ok(300_000));
        assert_eq!(d("1h"), Ok(3_600_000));
        assert_eq!(d("1m30s"), Ok(90_000));
        assert_eq!(d("1h2m3s4ms"), Ok(3_723_004));
        assert_eq!(d("1.5s"), Ok(1500));
        assert_eq!(d("0"), Ok(0));
        assert_eq!(d("0s"), Ok(0));
    }

    #[test]
    fn durations_reject_bad_forms() {
        assert_eq!(d("10"), Err(UnitError::MissingUnit));
        assert_eq!(d("10 sec"), Err(UnitError::UnknownUnit(" sec".into())));
        assert_eq!(d("10d"), Err(UnitError::UnknownUnit("d".into())));
        assert_eq!(d("10s1m"), Err(UnitError::UnitOrder));
        assert_eq!(d("1s1s"), Err(UnitError::UnitOrder));
        assert_eq!(d("-1s"), Err(UnitError::Negative));
        assert_eq!(d(""), Err(UnitError::Empty));
        assert_eq!(d("s"), Err(UnitError::Malformed));
        assert_eq!(
            d("1.0001s"),
            Err(UnitError::TooPrecise(
                "durations have millisecond precision"
            ))
        );
        assert_eq!(d("99999999999999999999h"), Err(UnitError::Overflow));
        assert_eq!(d(".5s"), Err(UnitError::Malformed));
    }

    #[test]
    fn durations_print_canonically_and_round_trip() {
        for (input, canonical) in [
            ("90s", "1m30s"),
            ("1500ms", "1s500ms"),
            ("0", "0s"),
            ("60m", "1h"),
            ("1.5h", "1h30m"),
        ] {
            let parsed: Duration = input.parse().unwrap();
            assert_eq!(parsed.to_string(), canonical);
            assert_eq!(canonical.parse::<Duration>().unwrap(), parsed);
        }
    }

    fn b(s: &str) -> Result<u64, UnitError> {
        s.parse::<ByteSize>().map(ByteSize::as_bytes)
    }

    #[test]
    fn sizes_parse_binary_decimal_and_plain_bytes() {
        assert_eq!(b("64Mi"), Ok(64 << 20));
        assert_eq!(b("64MiB"), Ok(64 << 20));
        assert_eq!(b("1G"), Ok(1_000_000_000));
        assert_eq!(b("1GB"), Ok(1_000_000_000));
        assert_eq!(b("1Gi"), Ok(1 << 30));
        assert_eq!(b("1.5Gi"), Ok(3 << 29));
        assert_eq!(b("512k"), Ok(512_000));
        assert_eq!(b("512K"), Ok(512_000));
        assert_eq!(b("4096"), Ok(4096));
        assert_eq!(b("4096B"), Ok(4096));
        assert_eq!(b("0"), Ok(0));
    }

    #[test]
    fn sizes_reject_ambiguous_and_unknown_units() {
        assert!(matches!(b("512m"), Err(UnitError::AmbiguousUnit { .. })));
        assert!(matches!(b("1g"), Err(UnitError::AmbiguousUnit { .. })));
        assert_eq!(b("lots"), Err(UnitError::Malformed));
        assert_eq!(
            b("12 apples"),
            Err(UnitError::UnknownUnit(" apples".into()))
        );
        assert_eq!(
            b("0.5"),
            Err(UnitError::TooPrecise("sizes are whole bytes"))
        );
        assert_eq!(b("16Ei"), Err(UnitError::Overflow));
        assert_eq!(b("-1Mi"), Err(UnitError::Negative));
    }

    #[test]
    fn sizes_print_canonically_and_round_trip() {
        for (input, canonical) in [
            ("1024", "1Ki"),
            ("1048576", "1Mi"),
            ("1000", "1k"),
            ("1G", "1G"),
            ("1023", "1023"),
            ("2048Mi", "2Gi"),
            ("0", "0"),
        ] {
            let parsed: ByteSize = input.parse().unwrap();
            assert_eq!(parsed.to_string(), canonical);
            assert_eq!(canonical.parse::<ByteSize>().unwrap(), parsed);
        }
    }

    fn c(s: &str) -> Result<u64, UnitError> {
        s.parse::<Cpu>().map(Cpu::as_millis)
    }

    #[test]
    fn cpu_parses_cores_and_millicores() {
        assert_eq!(c("0.5"), Ok(500));
        assert_eq!(c("2"), Ok(2000));
        assert_eq!(c("500m"), Ok(500));
        assert_eq!(c("0.125"), Ok(125));
        assert_eq!(
            c("0.0001"),
            Err(UnitError::TooPrecise("cpu has millicore precision (0.001)"))
        );
        assert_eq!(
            c("1.5m"),
            Err(UnitError::TooPrecise("millicores are whole numbers"))
        );
        assert_eq!(c("2 cores"), Err(UnitError::UnknownUnit(" cores".into())));
        assert_eq!(c("-1"), Err(UnitError::Negative));
    }

    #[test]
    fn cpu_prints_cores() {
        assert_eq!(Cpu::from_millis(500).to_string(), "0.5");
        assert_eq!(Cpu::from_millis(2000).to_string(), "2");
        assert_eq!(Cpu::from_millis(1250).to_string(), "1.25");
        assert_eq!(Cpu::from_millis(5).to_string(), "0.005");
    }

    #[test]
    fn quantities_serialize_as_canonical_strings() {
        let v = serde_json::to_string(&(
            Duration::from_millis(90_000),
            ByteSize::mib(128),
            Cpu::from_millis(500),
        ))
        .unwrap();
        assert_eq!(v, r#"["1m30s","128Mi","0.5"]"#);
        let back: (Duration, ByteSize, Cpu) = serde_json::from_str(&v).unwrap();
        assert_eq!(
            back,
            (
                Duration::from_millis(90_000),
                ByteSize::mib(128),
                Cpu::from_millis(500)
            )
        );
    }
}
