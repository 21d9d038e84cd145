//! Running the controller: opens the embedded store and the git mirror under the data dir,
//! loads or creates the token, binds the listener, serves the API and polls the git source.
//! [`Controller::start`] returns a [`ControllerHandle`] so `berth controller` and `berth up`
//! (in-process, beside the agent) run it the same way; [`ControllerHandle::shutdown`] stops
//! the poller and the server cleanly (long-polls and event streams end at once).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiState};
use crate::git::{GitError, GitSource};
use crate::resolve::DigestResolver;
use crate::state::{Clock, Core, CoreError, system_clock};
use crate::store::StoreError;
use crate::store::redb::RedbStore;

/// How to run a controller.
pub struct Config {
    /// The data dir; the controller keeps `controller/{store.redb,mirror,token}` in it.
    pub data_dir: PathBuf,
    /// The manifest repository (URL or local path).
    pub repo: String,
    /// Its branch.
    pub branch: String,
    /// Where to listen (default 127.0.0.1:7070; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Time between polls of the repository.
    pub poll_interval: Duration,
    /// The API token; `None`: the token file's (created when absent).
    pub token: Option<String>,
    /// Tag → digest resolution.
    pub resolver: Arc<dyn DigestResolver>,
    /// A host silent longer than this shows `ready: false`.
    pub host_grace: Duration,
    /// The wall clock (Unix ms); [`system_clock`] outside tests.
    pub clock: Clock,
    /// Whether `GET /metrics` needs the API token (default false: scrapers usually carry
    /// none, and the text holds no secrets).
    pub metrics_token_required: bool,
    /// Most connections open at once (default [`MAX_CONNECTIONS`]); past it new ones are
    /// closed at once, so a flood cannot exhaust the process's file descriptors.
    pub max_connections: usize,
}

/// Default cap on open API connections (each agent holds one or two).
pub const MAX_CONNECTIONS: usize = 1024;
/// Longest time a client may take to send a request head, and longest idle time of a
/// keep-alive connection between requests: slow-loris clients and idle floods are closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

impl Config {
    /// A config with the defaults: listen on 127.0.0.1:7070, poll every 5 s, 30 s grace.
    pub fn new(
        data_dir: PathBuf,
        repo: String,
        branch: String,
        resolver: Arc<dyn DigestResolver>,
    ) -> Config {
        Config {
            data_dir,
            repo,
            branch,
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            poll_interval: Duration::from_secs(5),
            token: None,
            resolver,
            host_grace: Duration::from_secs(30),
            clock: system_clock(),
            metrics_token_required: false,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Why the controller did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir or token file could not be prepared.
    #[error("controller data dir {path}: {source}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The git source is unusable.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The state machine did not open.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}; is another controller running there?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// The error's class.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            StartError::DataDir { .. } | StartError::Bind { .. } => crate::ErrorKind::Unavailable,
            StartError::Store(e) => e.kind(),
            StartError::Git(e) => e.kind(),
            StartError::Core(e) => e.kind(),
        }
    }
}

/// The controller (namespace for [`Controller::start`]).
pub struct Controller;

/// A running controller.
pub struct ControllerHandle {
    addr: SocketAddr,
    token: String,
    core: Arc<Core<RedbStore>>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    poller: JoinHandle<()>,
}

impl Controller {
    /// Opens the store, binds the listener and starts serving and polling. The first sync
    /// starts at once (in the background).
    pub async fn start(config: Config) -> Result<ControllerHandle, StartError> {
        let dir = config.data_dir.join("controller");
        std::fs::create_dir_all(&dir).map_err(|source| StartError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let token = match config.token.clone().filter(|t| !t.trim().is_empty()) {
            Some(t) => t.trim().to_string(),
            None => crate::token::load_or_create_token(&config.data_dir).map_err(|source| {
                StartError::DataDir {
                    path: crate::token::token_path(&config.data_dir),
                    source,
                }
            })?,
        };
        let store_path = dir.join("store.redb");
        let store = tokio::task::spawn_blocking(move || RedbStore::open(&store_path))
            .await
            .map_err(|e| StoreError::Backend {
                backend: "redb",
                reason: e.to_string(),
            })??;
        let source = GitSource::new(&config.repo, &config.branch, &dir.join("mirror"))?;
        let watched = source.clone();
        let grace = u64::try_from(config.host_grace.as_millis()).unwrap_or(u64::MAX);
        let core = Arc::new(
            Core::open(
                Arc::new(store),
                source,
                config.resolver.clone(),
                config.clock.clone(),
                grace,
            )
            .await?,
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let app = api::router(ApiState {
            core: core.clone(),
            token: token.clone(),
            shutdown: shutdown_rx.clone(),
            metrics_token_required: config.metrics_token_required,
        });
        let server = tokio::spawn(serve(
            listener,
            app,
            config.max_connections.max(1),
            shutdown_rx.clone(),
        ));
        let poller = tokio::spawn(poll(
            core.clone(),
            watched,
            config.poll_interval,
            shutdown_rx,
        ));
        tracing::info!(%addr, repo = %config.repo, branch = %config.branch, "controller listening");
        Ok(ControllerHandle {
            addr,
            token,
            core,
            shutdown,
            server,
            poller,
        })
    }
}

/// Serves HTTP/1 connections until `stop`, then lets each finish its request in flight.
/// Unlike `axum::serve` it bounds what a client can hold: the request head must arrive within
/// [`HEADER_READ_TIMEOUT`] (also the idle limit between keep-alive requests), and at most
/// `max_connections` are open, newer ones being closed at once.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // out of file descriptors (EMFILE) or a connection reset before accept:
                // pause a little instead of spinning
                tracing::warn!(%error, "accepting an API connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections, "too many API connections; closing the new one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "API connection ended");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// How often a repository on this machine has its ref files checked for pushes.
const LOCAL_WATCH: Duration = Duration::from_millis(50);

/// Syncs every `interval`, and as soon as a push moves the branch of a repository on this
/// machine (its ref files are checked every [`LOCAL_WATCH`]).
async fn poll(
    core: Arc<Core<RedbStore>>,
    source: GitSource,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut watched = source.local_head();
    loop {
        match core.sync().await {
            Ok(s) if !s.errors.is_empty() => {
                tracing::warn!(errors = ?s.errors, "sync refused the branch head");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sync failed"),
        }
        let next = tokio::time::Instant::now() + interval;
        loop {
            let tick = if watched.is_some() {
                (tokio::time::Instant::now() + LOCAL_WATCH).min(next)
            } else {
                next
            };
            tokio::select! {
                _ = tokio::time::sleep_until(tick) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if tokio::time::Instant::now() >= next {
                break;
            }
            let head = source.local_head();
            if head != watched {
                watched = head;
                break;
            }
        }
    }
}

impl ControllerHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The state machine (for in-process callers such as `berth up`).
    pub fn core(&self) -> &Arc<Core<RedbStore>> {
        &self.core
    }

    /// Stops polling and serving; returns once both ended.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        // a sync in flight (git fetch) is cancelled: its store writes are transactions
        self.poller.abort();
        let _ = self.poller.await;
        match self.server.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}
