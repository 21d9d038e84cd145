//! What this host offers to apps, as the agent declares it at registration: the online cpus
//! and the memory (`/proc/meminfo`'s `MemTotal`), minus a reserve for the system, the agent
//! and the proxy; `berth agent --capacity cpu=2,memory=4Gi` overrides either.
//!
//! The reserve: cpu max(100m, 5 %), memory max(256Mi, 10 %) but at most 2Gi.

use berth_manifests::wire::Capacity;
use berth_manifests::{ByteSize, Cpu};

const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;

/// This host's allocatable capacity, read from `/sys/devices/system/cpu/online` (else the
/// cpus this process may use) and `/proc/meminfo`.
pub fn detect() -> std::io::Result<Capacity> {
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| online_cpus(&t))
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| u64::try_from(n.get()).unwrap_or(1))
        })
        .unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let memory = mem_total(&meminfo).ok_or_else(|| {
        std::io::Error::other("/proc/meminfo has no MemTotal line; pass --capacity memory=SIZE")
    })?;
    Ok(allocatable(cpus, memory))
}

/// `cpus` cores and `memory` bytes minus the reserve.
pub fn allocatable(cpus: u64, memory: u64) -> Capacity {
    let cpu = cpus.saturating_mul(1000);
    let cpu_reserve = (cpu / 20).max(100);
    let mem_reserve = (memory / 10).clamp(256 * MI, 2 * GI);
    Capacity {
        cpu_millis: cpu.saturating_sub(cpu_reserve).max(10),
        memory_bytes: memory.saturating_sub(mem_reserve).max(6 * MI),
    }
}

/// The number of cpus in a cpu list such as `0-3,6,8-9`.
pub fn online_cpus(text: &str) -> Option<u64> {
    let mut n = 0u64;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (u64, u64) = (lo.parse().ok()?, hi.parse().ok()?);
                hi.checked_sub(lo)? + 1
            }
            None => {
                part.parse::<u64>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// `cpu=2,memory=4Gi` (either may be left out: `detected` keeps it) over `detected`.
pub fn parse_override(spec: &str, detected: Capacity) -> Result<Capacity, String> {
    let mut out = detected;
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("--capacity {part:?} is not key=value (cpu=2,memory=4Gi)"))?;
        match key.trim() {
            "cpu" => {
                let cpu: Cpu = value
                    .trim()
                    .parse()
                    .map_err(|e| format!("--capacity cpu={value}: {e}"))?;
                out.cpu_millis = cpu.as_millis();
            }
            "memory" => {
                let mem: ByteSize = value
                    .trim()
                    .parse()
                    .map_err(|e| format!("--capacity memory={value}: {e}"))?;
                out.memory_bytes = mem.as_bytes();
            }
            other => {
                return Err(format!(
                    "--capacity: unknown resource {other:?}; use cpu and memory (cpu=2,memory=4Gi)"
                ));
            }
        }
    }
    if out.cpu_millis == 0 || out.memory_bytes == 0 {
        return Err("--capacity: cpu and memory must be above 0".into());
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(online_cpus("0-3\n"), Some(4));
        assert_eq!(online_cpus("0,2-3,8"), Some(4));
        assert_eq!(online_cpus("0"), Some(1));
        assert_eq!(online_cpus(""), None);
        assert_eq!(online_cpus("3-1"), None);
        assert_eq!(online_cpus("x"), None);
    }

    #[test]
    fn mem_total_is_read_in_kib() {
        let text = "MemTotal:        8048316 kB\nMemFree:          123 kB\n";
        assert_eq!(mem_total(text), Some(8_048_316 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn the_reserve_is_taken_off() {
        let c = allocatable(2, 4 * GI);
        assert_eq!(c.cpu_millis, 1900);
        assert_eq!(c.memory_bytes, 4 * GI - 4 * GI / 10);
        let big = allocatable(64, 256 * GI);
        assert_eq!(big.cpu_millis, 64_000 - 3_200);
        assert_eq!(big.memory_bytes, 254 * GI, "at most 2Gi reserved");
        let tiny = allocatable(1, 512 * MI);
        assert_eq!(tiny.memory_bytes, 256 * MI, "at least 256Mi reserved");
    }

    #[test]
    fn overrides_replace_what_they_name() {
        let detected = Capacity {
            cpu_millis: 1900,
            memory_bytes: GI,
        };
        let both = parse_override("cpu=2,memory=4Gi", detected).unwrap();
        assert_eq!((both.cpu_millis, both.memory_bytes), (2000, 4 * GI));
        let cpu = parse_override("cpu=500m", detected).unwrap();
        assert_eq!((cpu.cpu_millis, cpu.memory_bytes), (500, GI));
        assert!(
            parse_override("disk=1", detected)
                .unwrap_err()
                .contains("unknown resource")
        );
        assert!(
            parse_override("cpu", detected)
                .unwrap_err()
                .contains("key=value")
        );
        assert!(
            parse_override("memory=lots", detected)
                .unwrap_err()
                .contains("memory=lots")
        );
        assert!(parse_override("cpu=0", detected).is_err());
    }
}
