//! `berth events [-f]`: what happened and why, from the controller's event log; `-f` keeps
//! streaming new events. `-o json` prints one `Event` JSON object per line.

use std::process::ExitCode;

use super::Global;
use super::remote::{block_on, client};
use crate::output::Format;

/// Arguments of `berth events`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep streaming new events
    #[arg(short, long)]
    pub follow: bool,
}

/// Runs `berth events`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let client = client(global)?;
    let json = global.output == Format::Json;
    let mut failed = None;
    block_on(client.events(args.follow, |e| {
        let line = if json {
            serde_json::to_string(&e).unwrap_or_default()
        } else {
            format!(
                "{}  {:<12} {:<18} {}",
                time(e.time_ms),
                e.object,
                e.reason,
                e.message.replace('\n', "\n    ")
            )
        };
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if let Err(err) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            failed = Some(err);
            return false;
        }
        true
    }))??;
    match failed {
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Some(e) => Err(e.into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix-ms time (UTC).
fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_unix_ms_as_utc() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(1_795_000_000_000), "2026-11-18T11:06:40Z");
    }
}
