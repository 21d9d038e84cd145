//! The reconcile's [`Traffic`] adapter over the `berth proxy` process of the data dir
//! ([`super::proxy_process`]): one listener per exposed app, ready instances in rotation,
//! stopping ones removed and drained before their stop signal.
//!
//! It keeps what it last told the proxy per app and sends only differences. When the control
//! connection fails (the proxy crashed, or was stopped), the next call starts or finds the
//! proxy again, reads its state and continues from there: `sync` puts listeners and backends
//! back. Drains use a connection of their own, since a drain blocks its connection until it
//! ends. The proxy process is started only when an app has `expose` (an agent without
//! exposed apps starts none); until then calls are no-ops. It must not: decide who is ready
//! or start instances.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_manifests::ErrorKind;

use crate::host::proxy_process;
use crate::proxy::control::{ProxyClient, ProxyEvents};
use crate::proxy::{AppConfig, MetricsSnapshot, ProxyError};
use crate::reconcile::traits::{AppLoad, EffectError, Load, Route, Traffic};

#[derive(Debug, Default)]
struct Known {
    route: Option<Route>,
    backends: BTreeMap<String, SocketAddr>,
}

#[derive(Debug, Default)]
struct Inner {
    client: Option<ProxyClient>,
    apps: BTreeMap<String, Known>,
}

/// The proxy of one data dir, as the agent drives it.
#[derive(Debug)]
pub struct ProxyTraffic {
    exe: PathBuf,
    data_dir: PathBuf,
    inner: tokio::sync::Mutex<Inner>,
    events: tokio::sync::Mutex<Option<ProxyEvents>>,
}

fn effect(op: &'static str, object: &str, e: ProxyError) -> EffectError {
    EffectError::new(op, object, e.kind(), e)
}

fn config_of(app: &str, route: &Route) -> AppConfig {
    AppConfig {
        hold: route.hold,
        mode: route.mode,
        ..AppConfig::http(app, route.listen)
    }
}

impl ProxyTraffic {
    /// Adopts `data_dir`'s proxy if one runs and reads its state: apps it serves that are not
    /// in `keep` lose their listener (they were removed while no agent ran). Starts nothing.
    pub async fn open(
        exe: &Path,
        data_dir: &Path,
        keep: &BTreeSet<String>,
    ) -> Result<Self, EffectError> {
        let this = Self {
            exe: exe.to_owned(),
            data_dir: data_dir.to_owned(),
            inner: tokio::sync::Mutex::default(),
            events: tokio::sync::Mutex::default(),
        };
        let mut inner = this.inner.lock().await;
        if !this
            .connect(&mut inner, false)
            .await
            .map_err(|e| effect("adopt proxy", &data_dir.display().to_string(), e))?
        {
            drop(inner);
            return Ok(this);
        }
        let stale: Vec<String> = inner
            .apps
            .keys()
            .filter(|a| !keep.contains(*a))
            .cloned()
            .collect();
        for app in stale {
            this.call(&mut inner, |c| {
                let app = app.clone();
                Box::pin(async move { c.call(&remove_app(&app)).await.map(|_| ()) })
            })
            .await
            .map_err(|e| effect("remove listener", &app, e))?;
            inner.apps.remove(&app);
        }
        drop(inner);
        Ok(this)
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        proxy_process::socket_path(&self.data_dir)
    }

    /// Makes sure of a connection; `spawn`: start the proxy when none runs. Whether there
    /// is a connection.
    async fn connect(&self, inner: &mut Inner, spawn: bool) -> Result<bool, ProxyError> {
        if inner.client.is_none() {
            let (mut client, started) = if spawn {
                proxy_process::ensure(&self.exe, &self.data_dir).await?
            } else {
                match ProxyClient::connect(&self.socket()).await {
                    Ok(c) => (c, false),
                    Err(_) => return Ok(false),
                }
            };
            inner.apps.clear();
            if !started {
                for app in client.state().await? {
                    let known = Known {
                        route: Some(Route {
                            listen: app.config.listen,
                            mode: app.config.mode,
                            hold: app.config.hold,
                        }),
                        backends: app
                            .backends
                            .iter()
                            .filter(|b| b.in_rotation)
                            .map(|b| (b.id.clone(), b.addr))
                            .collect(),
                    };
                    inner.apps.insert(app.config.name.clone(), known);
                }
            }
            tracing::info!(socket = %self.socket().display(), started, "proxy connected");
            inner.client = Some(client);
        }
        Ok(true)
    }

    /// One call on the shared connection; a broken connection is dropped (the next call
    /// reconnects and re-reads the proxy's state).
    async fn call<T>(
        &self,
        inner: &mut Inner,
        f: impl for<'c> FnOnce(
            &'c mut ProxyClient,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, ProxyError>> + Send + 'c>,
        >,
    ) -> Result<T, ProxyError> {
        self.connect(inner, true).await?;
        let client = inner.client.as_mut().ok_or_else(|| ProxyError::Protocol {
            reason: "no proxy connection".into(),
        })?;
        let res = f(client).await;
        if let Err(e) = &res
            && matches!(e, ProxyError::Control { .. } | ProxyError::Protocol { .. })
        {
            inner.client = None;
            inner.apps.clear();
        }
        res
    }

    /// Counters of every app the proxy serves (for the autoscaler and metrics).
    pub async fn snapshot(&self) -> Result<BTreeMap<String, MetricsSnapshot>, EffectError> {
        let mut inner = self.inner.lock().await;
        if !self
            .connect(&mut inner, false)
            .await
            .map_err(|e| effect("proxy snapshot", "proxy", e))?
        {
            return Ok(BTreeMap::new());
        }
        let apps = self
            .call(&mut inner, |c| Box::pin(c.snapshot()))
            .await
            .map_err(|e| effect("proxy snapshot", "proxy", e))?;
        crate::metrics::global().proxy_snapshot(apps.clone());
        Ok(apps)
    }

    /// Refreshes the proxy's counters in the agent's metrics every `every` (the autoscaler
    /// refreshes them too, every second, when an app autoscales). Runs until dropped.
    pub async fn refresh_metrics(self: std::sync::Arc<Self>, every: std::time::Duration) {
        loop {
            if let Err(e) = self.snapshot().await {
                tracing::debug!(error = %e.chain(), "no proxy counters for the metrics");
            }
            tokio::time::sleep(every).await;
        }
    }

    /// A connection that reports requests finding no backend (scale from zero); `None`
    /// while no proxy runs.
    pub async fn watch(&self) -> Result<Option<ProxyEvents>, EffectError> {
        {
            let mut inner = self.inner.lock().await;
            if !self
                .connect(&mut inner, false)
                .await
                .map_err(|e| effect("proxy watch", "proxy", e))?
            {
                return Ok(None);
            }
        }
        let socket = self.socket();
        let client = ProxyClient::connect(&socket)
            .await
            .map_err(|e| effect("proxy watch", "proxy", e))?;
        client
            .watch()
            .await
            .map(Some)
            .map_err(|e| effect("proxy watch", "proxy", e))
    }
}

fn remove_app(app: &str) -> crate::proxy::control::Request {
    crate::proxy::control::Request::RemoveApp {
        app: app.to_owned(),
    }
}

/// Unknown apps and backends are what the caller wanted anyway.
fn gone_ok(res: Result<(), ProxyError>) -> Result<(), ProxyError> {
    match res {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl Load for ProxyTraffic {
    async fn load(&self) -> BTreeMap<String, AppLoad> {
        match self.snapshot().await {
            Ok(apps) => apps
                .into_iter()
                .map(|(app, s)| {
                    let load = AppLoad {
                        requests_total: s.requests_total,
                        in_flight: s.in_flight,
                        waiting: s.waiting,
                    };
                    (app, load)
                })
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e.chain(), "no proxy counters");
                BTreeMap::new()
            }
        }
    }

    async fn woken(&self) -> Option<String> {
        let mut events = self.events.lock().await;
        loop {
            if events.is_none() {
                match self.watch().await {
                    Ok(Some(e)) => *events = Some(e),
                    // No proxy yet (nothing exposed), or it is restarting: look again soon.
                    Ok(None) | Err(_) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            let Some(stream) = events.as_mut() else {
                continue;
            };
            match stream.next().await {
                Ok(app) => return Some(app),
                Err(e) => {
                    tracing::debug!(error = %e, "proxy watch ended; reconnecting");
                    *events = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

impl Traffic for ProxyTraffic {
    async fn admit(
        &self,
        app: &str,
        id: &str,
        addr: Option<SocketAddr>,
    ) -> Result<(), EffectError> {
        let Some(addr) = addr else {
            return Ok(());
        };
        let mut inner = self.inner.lock().await;
        // Connect first: a reconnect re-reads which apps the proxy serves.
        let connected = self
            .connect(&mut inner, false)
            .await
            .map_err(|e| effect("admit", id, e))?;
        if !connected || !inner.apps.contains_key(app) {
            // Not exposed (or not yet: the pass's sync adds the listener and the backend).
            return Ok(());
        }
        let (a, i) = (app.to_owned(), id.to_owned());
        self.call(&mut inner, move |c| {
            Box::pin(async move { c.add_backend(&a, &i, addr).await })
        })
        .await
        .map_err(|e| effect("admit", id, e))?;
        if let Some(k) = inner.apps.get_mut(app) {
            k.backends.insert(id.to_owned(), addr);
        }
        Ok(())
    }

    async fn drain(&self, app: &str, id: &str, timeout: Duration) -> Result<(), EffectError> {
        {
            let mut inner = self.inner.lock().await;
            let connected = self
                .connect(&mut inner, false)
                .await
                .map_err(|e| effect("drain", id, e))?;
            if !connected || !inner.apps.contains_key(app) {
                return Ok(());
            }
            let (a, i) = (app.to_owned(), id.to_owned());
            self.call(&mut inner, move |c| {
                Box::pin(async move { gone_ok(c.remove_backend(&a, &i).await) })
            })
            .await
            .map_err(|e| effect("drain", id, e))?;
            if let Some(k) = inner.apps.get_mut(app) {
                k.backends.remove(id);
            }
        }
        // Out of rotation now; wait for its requests on a connection of our own (with a zero
        // timeout — a kill — this only makes the proxy forget it).
        let mut c = ProxyClient::connect(&self.socket())
            .await
            .map_err(|e| effect("drain", id, e))?;
        match c.drain(app, id, timeout).await {
            Ok(outcome) => {
                tracing::debug!(app, instance = id, ?outcome, "drained");
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(effect("drain", id, e)),
        }
    }

    async fn sync(
        &self,
        app: &str,
        route: Option<&Route>,
        backends: &[(String, SocketAddr)],
    ) -> Result<(), EffectError> {
        let mut inner = self.inner.lock().await;
        let connected = self
            .connect(&mut inner, route.is_some())
            .await
            .map_err(|e| effect("sync traffic", app, e))?;
        if !connected {
            return Ok(());
        }
        let Some(route) = route else {
            if inner.apps.contains_key(app) {
                let a = app.to_owned();
                self.call(&mut inner, move |c| {
                    Box::pin(async move { c.call(&remove_app(&a)).await.map(|_| ()) })
                })
                .await
                .map_err(|e| effect("remove listener", app, e))?;
                inner.apps.remove(app);
            }
            return Ok(());
        };
        if inner.apps.get(app).and_then(|k| k.route.as_ref()) != Some(route) {
            let cfg = config_of(app, route);
            self.call(&mut inner, move |c| {
                Box::pin(async move { c.set_app(cfg).await.map(|_| ()) })
            })
            .await
            .map_err(|e| effect("listen", app, e))?;
            inner.apps.entry(app.to_owned()).or_default().route = Some(route.clone());
        }
        let want: BTreeMap<&str, SocketAddr> =
            backends.iter().map(|(id, a)| (id.as_str(), *a)).collect();
        let have = inner
            .apps
            .get(app)
            .map(|k| k.backends.clone())
            .unwrap_or_default();
        for (id, addr) in &have {
            if want.get(id.as_str()) != Some(addr) {
                let (a, i) = (app.to_owned(), id.clone());
                self.call(&mut inner, move |c| {
                    Box::pin(async move { gone_ok(c.remove_backend(&a, &i).await) })
                })
                .await
                .map_err(|e| effect("sync traffic", id, e))?;
                if let Some(k) = inner.apps.get_mut(app) {
                    k.backends.remove(id);
                }
            }
        }
        for (id, addr) in want {
            if have.get(id) != Some(&addr) {
                let (a, i) = (app.to_owned(), id.to_owned());
                self.call(&mut inner, move |c| {
                    Box::pin(async move { c.add_backend(&a, &i, addr).await })
                })
                .await
                .map_err(|e| effect("sync traffic", id, e))?;
                if let Some(k) = inner.apps.get_mut(app) {
                    k.backends.insert(id.to_owned(), addr);
                }
            }
        }
        Ok(())
    }
}

/// Why [`teardown`] could not finish.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    /// Stopping the proxy failed.
    #[error("stopping the proxy of {data_dir}")]
    Proxy {
        /// The data dir.
        data_dir: PathBuf,
        /// Cause.
        #[source]
        source: ProxyError,
    },
    /// Removing the network failed.
    #[error("removing the network of {data_dir}")]
    Net {
        /// The data dir.
        data_dir: PathBuf,
        /// Cause.
        #[source]
        source: crate::net::NetError,
    },
}

impl TeardownError {
    /// The class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Proxy { source, .. } => source.kind(),
            Self::Net { source, .. } => source.kind(),
        }
    }
}

/// What [`teardown`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeardownReport {
    /// A running proxy was stopped.
    pub proxy_stopped: bool,
    /// Network objects removed.
    pub net: crate::host::net::CleanupReport,
}

/// `berth down`'s traffic half, for the data dir's agent once it has stopped and its
/// containers are removed: stops the recorded `berth proxy` (SIGTERM, SIGKILL after 5 s; a
/// reused pid is never signalled), then removes every network namespace, veth, address and
/// port record of the data dir and the bridge if this data dir created it. Run it in the
/// network namespace the agent ran in. Idempotent.
pub async fn teardown(data_dir: &Path) -> Result<TeardownReport, TeardownError> {
    let proxy_stopped = proxy_process::stop(data_dir, Duration::from_secs(5))
        .await
        .map_err(|source| TeardownError::Proxy {
            data_dir: data_dir.to_owned(),
            source,
        })?;
    let data = data_dir.to_owned();
    let net = tokio::task::spawn_blocking(move || {
        crate::host::net::teardown(&data, crate::host::net::HostNetns::Current)
    })
    .await
    .map_err(|e| TeardownError::Net {
        data_dir: data_dir.to_owned(),
        source: crate::net::NetError::State {
            path: data_dir.join("net"),
            op: "teardown",
            source: std::io::Error::other(e),
        },
    })?
    .map_err(|source| TeardownError::Net {
        data_dir: data_dir.to_owned(),
        source,
    })?;
    Ok(TeardownReport { proxy_stopped, net })
}
