//! `berth proxy`: the long-lived per-host proxy process. The agent starts it (or finds it
//! running) and configures it over the control socket; it outlives agent restarts so no
//! client connection is dropped. See docs/proxy.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Arguments of `berth proxy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The control socket (created 0600; its directory 0700). Default: <data-dir>/run/proxy.sock
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Runs the proxy until SIGTERM or SIGINT.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let socket = args
        .socket
        .unwrap_or_else(|| global.data_dir.join("run/proxy.sock"));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    berth_agent::proxy::workers::start(cores)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (events, hook) = berth_agent::proxy::control::no_backend_events();
        let proxy = Arc::new(berth_agent::proxy::Proxy::with_no_backend_hook(hook));
        let server = berth_agent::proxy::control::serve_with_events(proxy, &socket, Some(events))?;
        tracing::info!(socket = %socket.display(), "proxy control socket ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        server.abort();
        let _ = std::fs::remove_file(&socket);
        Ok(ExitCode::SUCCESS)
    })
}
