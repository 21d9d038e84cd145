//! What the verbs that talk to the controller share: the client (URL and token from the
//! global flags; without `--token`, the token file under `--data-dir`, as the controller
//! created it) and a small async runtime. No domain logic.

use berth_controller::client::Client;

use super::Global;

/// A client of `--controller` with the token from `--token`/`BERTH_TOKEN`, else from
/// `<data-dir>/controller/token`.
pub fn client(global: &Global) -> anyhow::Result<Client> {
    let token = match &global.token {
        Some(t) => t.clone(),
        None => berth_controller::token::read_token(&global.data_dir)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the token file under {}: {e}",
                    global.data_dir.display()
                )
            })?
            .unwrap_or_default(),
    };
    let ca = controller_ca(global)?;
    Ok(Client::with_ca(&global.controller, &token, ca.as_deref())?)
}

/// The controller CA the CLI trusts: `--ca`/`BERTH_CA`, else the data dir's
/// `controller/ca.pem` when a controller on this host wrote one (`None`: the system roots).
pub fn controller_ca(global: &Global) -> anyhow::Result<Option<String>> {
    if let Some(path) = &global.ca {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("cannot read the controller CA --ca {}: {e}", path.display())
        })?;
        return Ok(Some(pem));
    }
    let path = berth_controller::pki::ca_path(&global.data_dir);
    match std::fs::read_to_string(&path) {
        Ok(pem) => Ok(Some(pem)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "cannot read the controller CA {}: {e}",
            path.display()
        )),
    }
}

/// Whether the user named a controller (`--controller` or `BERTH_CONTROLLER`) rather than
/// leaving the default: verbs that fall back to local state when no controller answers
/// (`berth ps`) must not do so silently when one was asked for.
pub fn controller_configured() -> bool {
    std::env::var_os("BERTH_CONTROLLER").is_some()
        || std::env::args().any(|a| a == "--controller" || a.starts_with("--controller="))
}

/// Runs `future` on a single-threaded runtime.
pub fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(future))
}

/// `12s ago`-style age of a Unix-ms time relative to `now_ms`.
pub fn age(then_ms: u64, now_ms: u64) -> String {
    if then_ms == 0 {
        return "never".into();
    }
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Now in Unix ms, for ages in tables.
pub fn now_ms() -> u64 {
    #[allow(
        clippy::disallowed_methods,
        reason = "the CLI's clock edge: ages shown in tables"
    )]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
