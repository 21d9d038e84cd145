//! `berth logs ID [-f]`: the container's stdout and stderr from its log files (rotated files
//! first), stdout lines to stdout and stderr lines to stderr; `-f` follows until it ends.
//! `berth logs APP [-f]`: every instance of the app on this host, each line prefixed with
//! its instance id (`web-2-0 | …`, like `docker compose logs`); `-f` follows them, and the
//! instances a rollout starts later, until interrupted. An app name wins over an id prefix.

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
    /// An app (all its instances here), or a container id, unique id prefix or name
    pub id: String,
}

fn emit(line: &str, timestamps: bool) -> anyhow::Result<()> {
    emit_prefixed(line, timestamps, "")
}

fn emit_prefixed(line: &str, timestamps: bool, prefix: &str) -> anyhow::Result<()> {
    let mut parts = line.splitn(3, ' ');
    let (ts, stream, text) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let out = if timestamps {
        format!("{prefix}{ts} {text}\n")
    } else {
        format!("{prefix}{text}\n")
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
    if !instances(&store, &args.id).is_empty() {
        return app_logs(&store, &args);
    }
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

/// Ids of the containers of `app` in the data dir, sorted.
fn instances(store: &Store, app: &str) -> Vec<String> {
    let Ok((listed, _)) = store.list() else {
        return Vec::new();
    };
    let mut ids: Vec<String> = listed
        .into_iter()
        .filter(|l| l.state.spec.app == app)
        .map(|l| l.state.spec.id)
        .collect();
    ids.sort();
    ids
}

/// One instance's log being read: the open current file and the partial line read so far.
struct Tail {
    id: String,
    prefix: String,
    reader: Option<std::io::BufReader<std::fs::File>>,
}

impl Tail {
    /// Prints the rotated files and what the current file holds now.
    fn open(store: &Store, id: &str, width: usize, timestamps: bool) -> anyhow::Result<Tail> {
        let dir = store.dir(id);
        let prefix = format!("{id:<width$} | ");
        for n in (1..=9).rev() {
            if let Ok(f) = std::fs::File::open(shim::rotated_log_path(&dir, n)) {
                for line in std::io::BufReader::new(f).lines() {
                    emit_prefixed(&line?, timestamps, &prefix)?;
                }
            }
        }
        let mut tail = Tail {
            id: id.to_string(),
            prefix,
            reader: std::fs::File::open(shim::log_path(&dir))
                .ok()
                .map(std::io::BufReader::new),
        };
        tail.drain(store, timestamps, false)?;
        Ok(tail)
    }

    /// Prints the complete lines written since the last call (all of them at the end).
    fn drain(&mut self, store: &Store, timestamps: bool, last: bool) -> anyhow::Result<()> {
        let path = shim::log_path(&store.dir(&self.id));
        if self.reader.is_none() {
            self.reader = std::fs::File::open(&path).ok().map(std::io::BufReader::new);
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(());
        };
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 {
                break;
            }
            if line.ends_with('\n') || last {
                emit_prefixed(line.trim_end_matches('\n'), timestamps, &self.prefix)?;
            } else {
                reader.seek_relative(-(n as i64))?;
                break;
            }
        }
        // Rotation: the current file was renamed; read the new one from its start.
        if let (Ok(cur), Ok(open)) = (std::fs::metadata(&path), reader.get_ref().metadata()) {
            use std::os::unix::fs::MetadataExt;
            if cur.ino() != open.ino() {
                self.reader = std::fs::File::open(&path).ok().map(std::io::BufReader::new);
            }
        }
        Ok(())
    }
}

/// `berth logs APP [-f]`.
fn app_logs(store: &Store, args: &Args) -> anyhow::Result<ExitCode> {
    let mut ids = instances(store, &args.id);
    let width = ids.iter().map(String::len).max().unwrap_or(0);
    let mut tails = Vec::new();
    for id in &ids {
        tails.push(Tail::open(store, id, width, args.timestamps)?);
    }
    if !args.follow {
        for t in &mut tails {
            t.drain(store, args.timestamps, true)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut rounds = 0u32;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        for t in &mut tails {
            t.drain(store, args.timestamps, false)?;
        }
        rounds = rounds.wrapping_add(1);
        if rounds.is_multiple_of(10) {
            // Instances a rollout or restart started since: follow them from their start.
            for id in instances(store, &args.id) {
                if !ids.contains(&id) {
                    tails.push(Tail::open(
                        store,
                        &id,
                        width.max(id.len()),
                        args.timestamps,
                    )?);
                    ids.push(id);
                }
            }
        }
    }
}
