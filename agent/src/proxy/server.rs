//! The proxy's registry of apps: one listener per exposed app, its backend pool, counters,
//! and the calls the agent (in-process, or through [`super::control`]) configures it with.
//!
//! Call order for one instance: `add_backend` once it is ready → … → `remove_backend` before
//! its stop signal (returns once out of rotation) → `drain` (waits for its in-flight requests
//! or the timeout) → stop the instance. All calls are idempotent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_manifests::ErrorKind;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::balance::{Backend, DrainOutcome, InFlight, Pool, drain};
use super::metrics::{AppMetrics, MetricsSnapshot};
use super::{l7, tcp};

/// Errors of the proxy and its control socket.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No app of that name is configured.
    #[error("no app {app} in the proxy: call set_app first")]
    UnknownApp {
        /// The app.
        app: String,
    },
    /// The backend is neither in rotation nor draining.
    #[error("app {app} has no backend {id}")]
    UnknownBackend {
        /// The app.
        app: String,
        /// The instance.
        id: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} for app {app}: is another program using the port?")]
    Bind {
        /// The app.
        app: String,
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The control socket failed.
    #[error("proxy control socket {path}: {op}")]
    Control {
        /// The socket path.
        path: std::path::PathBuf,
        /// What was done.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The other side of the control socket sent something unexpected.
    #[error("proxy control protocol: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// The proxy answered a control request with an error.
    #[error("proxy refused the request ({kind:?}): {message}")]
    Remote {
        /// The error's class on the proxy side.
        kind: ErrorKind,
        /// Its message.
        message: String,
    },
}

impl ProxyError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownApp { .. } | Self::UnknownBackend { .. } => ErrorKind::NotFound,
            Self::Bind { .. } => ErrorKind::Conflict,
            Self::Control { .. } => ErrorKind::Unavailable,
            Self::Protocol { .. } => ErrorKind::Internal,
            Self::Remote { kind, .. } => *kind,
        }
    }
}

/// How an app's traffic is proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// HTTP/1.1 reverse proxy.
    Http,
    /// Plain TCP: each connection goes to one backend, bytes copied both ways.
    Tcp,
}

/// Timeouts of an app's proxying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timeouts {
    /// Connecting to a backend.
    pub connect: Duration,
    /// Reading a request's headers from the client (slow-loris guard; HTTP mode).
    pub header_read: Duration,
    /// A keep-alive client connection with no request in flight is closed after this (HTTP).
    pub idle: Duration,
    /// Waiting for a backend's response head (HTTP), counted from the end of the request
    /// body (an upload may take longer): then 504. Long-polling apps need it
    /// above their longest poll. A backend that is gone is detected well before (its
    /// connection's dead-peer timeout, `connect.rs`), so this bounds only a live app that
    /// does not answer.
    pub response_head: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            response_head: Duration::from_secs(60),
        }
    }
}

/// One exposed app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppConfig {
    /// The app's name.
    pub name: String,
    /// Where the proxy listens (`0.0.0.0:<expose.port>`; tests use `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// HTTP or TCP.
    pub mode: Mode,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// With no backend in rotation, how long a request (or connection) is held waiting for
    /// one before the 503 (scale from zero). Zero answers at once.
    #[serde(default)]
    pub hold: Duration,
    /// The `Retry-After` of the 503, in seconds.
    #[serde(default = "default_retry_after")]
    pub retry_after_secs: u32,
}

fn default_retry_after() -> u32 {
    1
}

impl AppConfig {
    /// An HTTP app with default timeouts and no hold.
    pub fn http(name: &str, listen: SocketAddr) -> Self {
        Self {
            name: name.to_owned(),
            listen,
            mode: Mode::Http,
            timeouts: Timeouts::default(),
            hold: Duration::ZERO,
            retry_after_secs: 1,
        }
    }

    /// A TCP app with default timeouts and no hold.
    pub fn tcp(name: &str, listen: SocketAddr) -> Self {
        Self {
            mode: Mode::Tcp,
            ..Self::http(name, listen)
        }
    }
}

/// Told the app's name when a request finds no backend in rotation (before the hold): the
/// agent starts an instance (scale from zero). Must not block.
pub type NoBackendHook = Arc<dyn Fn(&str) + Send + Sync>;

/// A running app: config, listener task, pool, counters.
pub(crate) struct App {
    pub(crate) cfg: AppConfig,
    // Shared with the app's next config, so connections accepted under an old config see
    // the same backends, and counters go on.
    pub(crate) pool: Arc<Pool>,
    pub(crate) draining: Arc<Mutex<BTreeMap<String, Arc<Backend>>>>,
    pub(crate) metrics: Arc<AppMetrics>,
    /// The hold and Retry-After of the current config (old connections follow changes).
    pub(crate) live: Arc<Live>,
    pub(crate) hook: Option<NoBackendHook>,
    listener: Arc<tokio::net::TcpListener>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

/// Settings that connections accepted under an older config still follow.
#[derive(Debug, Default)]
pub(crate) struct Live {
    hold_ms: AtomicU64,
    retry_after_secs: AtomicU32,
}

impl Live {
    fn set(&self, cfg: &AppConfig) {
        let ms = u64::try_from(cfg.hold.as_millis()).unwrap_or(u64::MAX);
        self.hold_ms.store(ms, Ordering::Relaxed);
        self.retry_after_secs
            .store(cfg.retry_after_secs, Ordering::Relaxed);
    }

    pub(crate) fn hold(&self) -> Duration {
        Duration::from_millis(self.hold_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn retry_after_secs(&self) -> u32 {
        self.retry_after_secs.load(Ordering::Relaxed)
    }
}

impl App {
    /// No backend is in rotation: tell the hook, then wait up to the hold for one, counted
    /// in `waiting` meanwhile (the autoscaler's scale-from-zero signal).
    pub(crate) async fn hold_for_backend(&self) -> Option<InFlight> {
        if let Some(h) = &self.hook {
            h(&self.cfg.name);
        }
        let _waiting = self.metrics.wait();
        self.pool.pick_within(self.live.hold()).await
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A backend as reported by [`Proxy::state`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendState {
    /// Instance id.
    pub id: String,
    /// Address.
    pub addr: SocketAddr,
    /// Requests in flight.
    pub in_flight: usize,
    /// In rotation (false: draining).
    pub in_rotation: bool,
}

/// An app as reported by [`Proxy::state`]: what a restarted agent compares with its own view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// Its configuration.
    pub config: AppConfig,
    /// The bound address (differs from `config.listen` for port 0).
    pub local_addr: SocketAddr,
    /// Backends in rotation and draining.
    pub backends: Vec<BackendState>,
}

/// All apps of this host's proxy.
#[derive(Default)]
pub struct Proxy {
    apps: Mutex<BTreeMap<String, Arc<App>>>,
    hook: Option<NoBackendHook>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

impl Proxy {
    /// An empty proxy.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty proxy that calls `hook` when a request finds no backend.
    pub fn with_no_backend_hook(hook: NoBackendHook) -> Self {
        Self {
            apps: Mutex::default(),
            hook: Some(hook),
        }
    }

    fn apps(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<App>>> {
        self.apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn app(&self, name: &str) -> Result<Arc<App>, ProxyError> {
        self.apps()
            .get(name)
            .cloned()
            .ok_or_else(|| ProxyError::UnknownApp {
                app: name.to_owned(),
            })
    }

    /// Creates or updates an app and returns its bound address. The same config again is a
    /// no-op. A changed one keeps the backends, drains and counters (shared with connections
    /// accepted under the old config, which keep its timeouts until they close) and the bound
    /// socket when the address is unchanged, else binds the new address and stops accepting
    /// on the old one. Call inside a tokio runtime.
    pub async fn set_app(&self, cfg: AppConfig) -> Result<SocketAddr, ProxyError> {
        let old = self.apps().get(&cfg.name).cloned();
        if let Some(old) = &old
            && old.cfg == cfg
        {
            return Ok(old.local_addr);
        }
        let bind_err = |source| ProxyError::Bind {
            app: cfg.name.clone(),
            addr: cfg.listen,
            source,
        };
        // Same address: the new config takes over the bound socket, so accepting never stops.
        let listener = match &old {
            Some(old) if old.cfg.listen == cfg.listen || old.local_addr == cfg.listen => {
                Arc::clone(&old.listener)
            }
            _ => Arc::new(bind(cfg.listen).map_err(bind_err)?),
        };
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let (stop, stop_rx) = watch::channel(false);
        let (pool, draining, metrics, live) = match &old {
            Some(old) => (
                Arc::clone(&old.pool),
                Arc::clone(&old.draining),
                Arc::clone(&old.metrics),
                Arc::clone(&old.live),
            ),
            None => Default::default(),
        };
        live.set(&cfg);
        let app = Arc::new(App {
            listener: Arc::clone(&listener),
            cfg,
            pool,
            draining,
            metrics,
            live,
            hook: self.hook.clone(),
            local_addr,
            stop,
        });
        let weak = Arc::downgrade(&app);
        match app.cfg.mode {
            Mode::Http => tokio::spawn(l7::serve(weak, listener, stop_rx)),
            Mode::Tcp => tokio::spawn(tcp::serve(weak, listener, stop_rx)),
        };
        if let Some(old) = self.apps().insert(app.cfg.name.clone(), Arc::clone(&app)) {
            let _ = old.stop.send(true);
        }
        Ok(local_addr)
    }

    /// Stops an app's listener; its open connections finish. Returns whether it existed.
    pub fn remove_app(&self, name: &str) -> bool {
        let removed = self.apps().remove(name);
        if let Some(app) = &removed {
            let _ = app.stop.send(true);
        }
        removed.is_some()
    }

    /// Puts a ready instance in rotation.
    pub fn add_backend(&self, app: &str, id: &str, addr: SocketAddr) -> Result<(), ProxyError> {
        let app = self.app(app)?;
        app.pool.add(id, addr);
        Ok(())
    }

    /// Takes an instance out of rotation; returns once no new request can reach it (it then
    /// counts as draining until [`Proxy::drain`] ends). Idempotent: an unknown id is fine.
    pub fn remove_backend(&self, app: &str, id: &str) -> Result<(), ProxyError> {
        let app = self.app(app)?;
        if let Some(b) = app.pool.remove(id) {
            app.draining
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id.to_owned(), b);
        }
        Ok(())
    }

    /// Waits until the removed instance `id` serves no request, or `timeout` passes; then
    /// forgets it. A backend that is not draining (never added, or already drained) is
    /// reported drained.
    pub async fn drain(
        &self,
        app: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<DrainOutcome, ProxyError> {
        let app = self.app(app)?;
        let draining = app
            .draining
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned();
        let Some(b) = draining else {
            if app.pool.get(id).is_some() {
                return Err(ProxyError::UnknownBackend {
                    app: app.cfg.name.clone(),
                    id: format!("{id} (still in rotation: remove_backend first)"),
                });
            }
            return Ok(DrainOutcome::Drained);
        };
        let outcome = drain(&b, timeout).await;
        app.draining
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        Ok(outcome)
    }

    /// Counters of every app.
    pub fn snapshot(&self) -> BTreeMap<String, MetricsSnapshot> {
        self.apps()
            .iter()
            .map(|(k, a)| (k.clone(), a.metrics.snapshot()))
            .collect()
    }

    /// Configuration and backends of every app.
    pub fn state(&self) -> Vec<AppState> {
        self.apps()
            .values()
            .map(|a| {
                let mut backends: Vec<BackendState> = a
                    .pool
                    .backends()
                    .iter()
                    .map(|b| BackendState {
                        id: b.id().to_owned(),
                        addr: b.addr(),
                        in_flight: b.in_flight(),
                        in_rotation: true,
                    })
                    .collect();
                let draining = a
                    .draining
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                backends.extend(draining.values().map(|b| BackendState {
                    id: b.id().to_owned(),
                    addr: b.addr(),
                    in_flight: b.in_flight(),
                    in_rotation: false,
                }));
                AppState {
                    config: a.cfg.clone(),
                    local_addr: a.local_addr,
                    backends,
                }
            })
            .collect()
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}
