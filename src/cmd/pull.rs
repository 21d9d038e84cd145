//! `berth pull IMAGE`: pulls an image into the local store (`<data-dir>/images`) with a
//! progress bar per layer on a terminal, plain lines otherwise. Also holds the registry flags
//! other verbs that pull (`berth run`) share: [`RegistryArgs`].

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use berth_agent::host::image_store::{ImageStore, PullEvent, PullOptions, PullProgress};
use berth_agent::host::registry::{Credentials, RegistryConfig};
use berth_agent::image::{Digest, Platform, Reference};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::UsageError;
use crate::output::Format;

/// How to reach registries: credentials and the platform to choose.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Platform to pull from a multi-platform image, os/arch[/variant] (default: this host's)
    #[arg(long)]
    pub platform: Option<String>,
    /// A docker-style config.json with registry credentials
    /// (default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json)
    #[arg(long, env = "BERTH_REGISTRY_CONFIG")]
    pub registry_config: Option<PathBuf>,
    /// Registry user name (with BERTH_REGISTRY_PASSWORD or --password-stdin)
    #[arg(long, env = "BERTH_REGISTRY_USERNAME")]
    pub username: Option<String>,
    /// Registry password; prefer --password-stdin or the environment over the command line
    #[arg(long, env = "BERTH_REGISTRY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Read the registry password from stdin
    #[arg(long)]
    pub password_stdin: bool,
}

impl RegistryArgs {
    /// The pull options these flags and the global `--insecure-registry` list give.
    pub fn pull_options(&self, global: &super::Global) -> anyhow::Result<PullOptions> {
        let platform = match &self.platform {
            Some(p) => Some(
                p.parse::<Platform>()
                    .map_err(|e| UsageError(e.to_string()))?,
            ),
            None => None,
        };
        let password = if self.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            Some(line.trim_end_matches(['\n', '\r']).to_owned())
        } else {
            self.password.clone()
        };
        let credentials = match (&self.username, password) {
            (Some(username), Some(password)) => Some(Credentials {
                username: username.clone(),
                password,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(UsageError(
                    "--username needs a password: --password-stdin or BERTH_REGISTRY_PASSWORD"
                        .into(),
                )
                .into());
            }
            (None, Some(_)) => {
                return Err(UsageError("a registry password needs --username".into()).into());
            }
        };
        let auth_file = self.registry_config.clone().or_else(|| {
            std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
                .map(|d| d.join("config.json"))
        });
        Ok(PullOptions {
            platform,
            registry: RegistryConfig {
                insecure: global.insecure_registries.clone(),
                credentials,
                auth_file,
                mirrors: global.mirrors()?,
                ..RegistryConfig::default()
            },
            ..PullOptions::default()
        })
    }
}

/// Arguments of `berth pull`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: NAME[:TAG] or NAME@sha256:DIGEST (`busybox` is docker.io/library/busybox:latest)
    pub image: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Runs `berth pull`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let reference: Reference = args
        .image
        .parse()
        .map_err(|e: berth_agent::image::ReferenceError| UsageError(e.to_string()))?;
    let options = args.registry.pull_options(global)?;
    let store = ImageStore::open(&global.data_dir)?;
    let progress = Progress::new(global.output == Format::Json);
    let image = runtime()?.block_on(store.pull(&reference, &options, &progress))?;
    progress.finish();
    match global.output {
        Format::Json => crate::output::json(&image.record)?,
        Format::Table => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "Pulled {reference}")?;
            writeln!(out, "Digest: {}", image.digest())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A tokio runtime for verbs that pull.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// How long an idle thread of the blocking pool (container starts and stops, runtime lists,
/// store writes) lives: tokio's default is 10 s, and with the pool handing work round the
/// idle threads, a burst's threads never idled that long at the daemons' background rate,
/// so the pool kept its peak size, each thread with its stack and its allocator cache
/// (agent/src/host/alloc.rs). One second lets the pool shrink after a rollout; a thread
/// costs tens of microseconds to start again.
pub const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// Pull progress: a bar per layer on a terminal, plain lines otherwise (or nothing for -o json).
pub struct Progress {
    bars: Option<MultiProgress>,
    state: Mutex<HashMap<Digest, LayerState>>,
    quiet: bool,
}

struct LayerState {
    bar: Option<ProgressBar>,
    started: bool,
}

impl Progress {
    /// Bars when stdout is a terminal, else lines; nothing when `quiet` (e.g. `-o json`).
    pub fn new(quiet: bool) -> Self {
        let terminal = std::io::stdout().is_terminal();
        Self {
            bars: (terminal && !quiet)
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout())),
            state: Mutex::new(HashMap::new()),
            quiet,
        }
    }

    fn line(&self, digest: &Digest, what: &str) {
        if !self.quiet && self.bars.is_none() {
            println!("{}: {what}", digest.short());
        }
    }

    /// Ends the display: finished bars stay on screen as one line per layer.
    pub fn finish(&self) {
        if let Ok(state) = self.state.lock() {
            for bar in state.values().filter_map(|s| s.bar.as_ref()) {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

impl PullProgress for Progress {
    fn event(&self, event: PullEvent) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match event {
            PullEvent::Resolved { layers, .. } => {
                for (digest, size) in layers {
                    let bar = self.bars.as_ref().map(|m| {
                        let bar = m.add(ProgressBar::new(size));
                        bar.set_style(
                            ProgressStyle::with_template("{prefix} {msg:<16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                        bar.set_prefix(digest.short().to_owned());
                        bar.set_message("waiting");
                        bar
                    });
                    state.insert(
                        digest,
                        LayerState {
                            bar,
                            started: false,
                        },
                    );
                }
            }
            PullEvent::LayerExists { digest } => {
                if let Some(bar) = state.get(&digest).and_then(|s| s.bar.as_ref()) {
                    bar.set_style(
                        ProgressStyle::with_template("{prefix} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.finish_with_message("already exists");
                }
                self.line(&digest, "already exists");
            }
            PullEvent::LayerWaiting { digest } => {
                if let Some(bar) = state.get(&digest).and_then(|s| s.bar.as_ref()) {
                    bar.set_message("another pull");
                }
                self.line(&digest, "waiting for another pull of this layer");
            }
            PullEvent::LayerProgress {
                digest,
                bytes,
                total,
            } => {
                if let Some(s) = state.get_mut(&digest) {
                    if let Some(bar) = &s.bar {
                        bar.set_message("pulling");
                        bar.set_position(bytes);
                    }
                    if !s.started {
                        s.started = true;
                        drop(state);
                        self.line(&digest, &format!("pulling {}", human_bytes(total)));
                    }
                }
            }
            PullEvent::LayerDone { digest } => {
                if let Some(bar) = state.get(&digest).and_then(|s| s.bar.as_ref()) {
                    bar.finish_with_message("done");
                }
                self.line(&digest, "done");
            }
        }
    }
}

/// `1.5 MB` style sizes (decimal units, as docker prints them).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_use_decimal_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_bytes(2_000_000_000), "2.0 GB");
    }
}
