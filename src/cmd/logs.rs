//! `berth logs ID [-f]`: the container's stdout and stderr from its log files (rotated files
//! first), stdout lines to stdout and stderr lines to stderr; `-f` follows until it ends.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use berth_agent::host::container::{Store, shim};
use berth_agent::runtime::state::Status;

/// Arguments of `berth logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep printing new lines until the container ends
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Prefix each line with its timestamp
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Container id, unique id prefix or name
    pub id: String,
}

fn emit(line: &str, timestamps: bool) -> anyhow::Result<()> {
    let mut parts = line.splitn(3, ' ');
    let (ts, stream, text) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let out = if timestamps {
        format!("{ts} {text}\n")
    } else {
        format!("{text}\n")
    };
    if stream == "stderr" {
        std::io::stderr().lock().write_all(out.as_bytes())?;
    } else {
        std::io::stdout().lock().write_all(out.as_bytes())?;
    }
    Ok(())
}

/// Runs `berth logs`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let store = Store::new(&global.data_dir);
    let id = store.find(&args.id)?;
    let dir = store.dir(&id);
    for n in (1..=9).rev() {
        if let Ok(f) = std::fs::File::open(shim::rotated_log_path(&dir, n)) {
            for line in std::io::BufReader::new(f).lines() {
                emit(&line?, args.timestamps)?;
            }
        }
    }
    let Ok(f) = std::fs::File::open(shim::log_path(&dir)) else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut reader = std::io::BufReader::new(f);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            emit(line.trim_end_matches('\n'), args.timestamps)?;
            continue;
        }
        if !args.follow {
            if n > 0 {
                emit(&line, args.timestamps)?;
            }
            break;
        }
        let stopped = store
            .get(&id)
            .map(|l| l.status == Status::Stopped)
            .unwrap_or(true);
        if stopped {
            // One more pass picks up lines written between the read and the status check.
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut reader, &mut rest)?;
            for l in format!("{line}{rest}").lines() {
                emit(l, args.timestamps)?;
            }
            break;
        }
        // Rotation: the current file was renamed; reopen it.
        if let (Ok(cur), Ok(open)) = (
            std::fs::metadata(shim::log_path(&dir)),
            reader.get_ref().metadata(),
        ) {
            use std::os::unix::fs::MetadataExt;
            if cur.ino() != open.ino() {
                reader = std::io::BufReader::new(std::fs::File::open(shim::log_path(&dir))?);
            }
        }
        // The partial line read so far is kept: seek back over it.
        if n > 0 {
            reader.seek_relative(-(n as i64))?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(ExitCode::SUCCESS)
}
