//! Running the controller: opens the store (the embedded file under the data dir, or etcd
//! with leader election), the git mirror under the data dir, loads or creates the token,
//! binds the listener, serves the API and polls the git source (on etcd: only the leader
//! syncs; followers watch the store to wake their long-polls).
//! [`Controller::start`] returns a [`ControllerHandle`] so `berth controller` and `berth up`
//! (in-process, beside the agent) run it the same way; [`ControllerHandle::shutdown`] stops
//! the poller and the server cleanly (long-polls and event streams end at once).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiState, Ha};
use crate::git::{GitError, GitSource};
use crate::leader::{self, FencedStore, Member, Role};
use crate::pki::Pki;
use crate::resolve::DigestResolver;
use crate::state::{Clock, Core, CoreError, system_clock};
use crate::store::etcd::EtcdStore;
use crate::store::redb::RedbStore;
use crate::store::{AnyStore, StoreError};

/// Where the controller keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `<data-dir>/controller/store.redb` (the default; one controller).
    Embedded,
    /// An etcd cluster shared by several controllers, one of them leading.
    Etcd {
        /// Client endpoints, `http://HOST:PORT`.
        endpoints: Vec<String>,
        /// The key prefix (default `/berth/`).
        namespace: String,
    },
}

impl StoreConfig {
    /// Parses `--store`: `embedded`, or `etcd://HOST:PORT[,HOST:PORT...]`.
    pub fn parse(text: &str) -> Result<StoreConfig, StoreError> {
        match text.trim() {
            "" | "embedded" => Ok(StoreConfig::Embedded),
            url => Ok(StoreConfig::Etcd {
                endpoints: crate::store::etcd::parse_url(url)?,
                namespace: crate::store::etcd::DEFAULT_NAMESPACE.to_string(),
            }),
        }
    }
}

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
    /// A host silent longer than this is marked down and its apps are placed elsewhere; a
    /// host back from down gets work once it has reported for this long.
    pub host_grace: Duration,
    /// The wall clock (Unix ms); [`system_clock`] outside tests.
    pub clock: Clock,
    /// Whether `GET /metrics` needs the API token (default false: scrapers usually carry
    /// none, and the text holds no secrets).
    pub metrics_token_required: bool,
    /// The store (default: embedded).
    pub store: StoreConfig,
    /// The leader lease on etcd: a dead leader is replaced within about this long.
    pub lease_ttl: Duration,
    /// The URL other controllers forward writes to (default `http://<listen address>`).
    pub advertise: Option<String>,
    /// Most connections open at once (default [`MAX_CONNECTIONS`]); past it new ones are
    /// closed at once, so a flood cannot exhaust the process's file descriptors.
    pub max_connections: usize,
    /// Most connections one IP address may hold (default [`MAX_CONNECTIONS_PER_PEER`]);
    /// past it its new ones are closed at once, so one client cannot take every slot.
    pub max_connections_per_peer: usize,
    /// Serve HTTPS with the controller's CA (made on the first start, kept in the store):
    /// client certificates are requested and identify agents (docs/security.md).
    pub tls: bool,
    /// Extra names (DNS names or IP addresses) of the serving certificate, besides
    /// `localhost`, 127.0.0.1, ::1, the listen address and the advertised host.
    pub tls_names: Vec<String>,
    /// Lifetime of the node certificates agents get (default 24 h); they renew at 2/3.
    pub node_cert_lifetime: Duration,
}

/// Default cap on open API connections (each agent holds one or two).
pub const MAX_CONNECTIONS: usize = 1024;
/// Default cap on open API connections from one IP address.
pub const MAX_CONNECTIONS_PER_PEER: usize = 256;
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
            store: StoreConfig::Embedded,
            lease_ttl: Duration::from_secs(5),
            advertise: None,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_peer: MAX_CONNECTIONS_PER_PEER,
            tls: false,
            tls_names: Vec::new(),
            node_cert_lifetime: crate::pki::NODE_CERT_LIFETIME,
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
    pki: Option<Arc<crate::pki::Pki>>,
    token: String,
    core: Arc<Core<AnyStore>>,
    role: Option<watch::Receiver<Role>>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    poller: JoinHandle<()>,
    liveness: JoinHandle<()>,
    elector: Option<JoinHandle<()>>,
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
        let listener = listen(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let now = (config.clock)();
        let scheme = if config.tls { "https" } else { "http" };
        let (store, ha, elector, pki) = match &config.store {
            StoreConfig::Embedded => {
                let store_path = dir.join("store.redb");
                let store = tokio::task::spawn_blocking(move || RedbStore::open(&store_path))
                    .await
                    .map_err(|e| StoreError::Backend {
                        backend: "redb",
                        reason: e.to_string(),
                    })??;
                let pki = if config.tls {
                    Some(Arc::new(
                        Pki::load_or_create(&store, now, config.node_cert_lifetime).await?,
                    ))
                } else {
                    None
                };
                (AnyStore::Redb(store), None, None, pki)
            }
            StoreConfig::Etcd {
                endpoints,
                namespace,
            } => {
                let etcd = EtcdStore::connect(endpoints, namespace).await?;
                // the CA is shared through the store; made (create-if-absent) before this
                // controller can lead, so it is written past the leader's fence
                let pki = if config.tls {
                    Some(Arc::new(
                        Pki::load_or_create(&etcd, now, config.node_cert_lifetime).await?,
                    ))
                } else {
                    None
                };
                let me = Member {
                    id: leader::new_member_id(),
                    url: config
                        .advertise
                        .clone()
                        .unwrap_or_else(|| format!("{scheme}://{addr}")),
                };
                let (role, task) = leader::spawn(
                    etcd.clone(),
                    me.clone(),
                    config.lease_ttl,
                    shutdown_rx.clone(),
                );
                let identity = match &pki {
                    Some(p) => Some(p.controller_identity(&me.id, now)?),
                    None => None,
                };
                let tls = pki
                    .as_ref()
                    .zip(identity.as_deref())
                    .map(|(p, i)| (p.ca_pem(), i));
                let ha = Ha::new(me, role.clone(), tls);
                (
                    AnyStore::Etcd(Box::new(FencedStore::new(etcd, role))),
                    Some(ha),
                    Some(task),
                    pki,
                )
            }
        };
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
        let acceptor = match &pki {
            Some(pki) => {
                pki.write_ca_file(&config.data_dir)
                    .map_err(|source| StartError::DataDir {
                        path: crate::pki::ca_path(&config.data_dir),
                        source,
                    })?;
                let names = serving_names(&config, addr);
                Some(tokio_rustls::TlsAcceptor::from(
                    pki.server_config(&names, now)?,
                ))
            }
            None => None,
        };
        let app = api::router(ApiState {
            core: core.clone(),
            token: token.clone(),
            shutdown: shutdown_rx.clone(),
            metrics_token_required: config.metrics_token_required,
            ha: ha.clone(),
            pki: pki.clone(),
        });
        let server = tokio::spawn(serve(
            listener,
            app,
            config.max_connections.max(1),
            config.max_connections_per_peer.max(1),
            shutdown_rx.clone(),
            acceptor,
        ));
        let liveness = tokio::spawn(liveness(
            core.clone(),
            config.host_grace,
            shutdown_rx.clone(),
            ha.as_ref().map(|h| h.role.clone()),
        ));
        let poller = tokio::spawn(poll(
            core.clone(),
            watched,
            config.poll_interval,
            shutdown_rx,
            ha.as_ref().map(|h| h.role.clone()),
        ));
        tracing::info!(%addr, repo = %config.repo, branch = %config.branch, "controller listening");
        Ok(ControllerHandle {
            addr,
            pki,
            token,
            core,
            role: ha.map(|h| h.role),
            shutdown,
            server,
            poller,
            liveness,
            elector,
        })
    }
}

/// Backlog of the API listener: thousands of agents reconnect at once after a controller
/// restart or a network blip, and tokio's default (1024) overflowed in the 10,000-agent
/// benchmark (dropped handshakes, retried a second later and more). The kernel caps it at
/// `net.core.somaxconn` (4096 by default since Linux 5.4).
pub const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as std's listener does).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The serving certificate's names: loopback, the listen address (unless unspecified), the
/// advertised URL's host and `--tls-name`s.
fn serving_names(config: &Config, addr: SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    if let Some(url) = &config.advertise {
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        if !host.is_empty() {
            names.push(host.to_string());
        }
    }
    names.extend(config.tls_names.iter().cloned());
    names.dedup();
    names
}

/// Serves HTTP/1 connections until `stop`, then lets each finish its request in flight.
/// Unlike `axum::serve` it bounds what a client can hold: the request head must arrive within
/// [`HEADER_READ_TIMEOUT`] (also the idle limit between keep-alive requests), and at most
/// `max_connections` are open, newer ones being closed at once.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    max_connections: usize,
    max_per_peer: usize,
    mut stop: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let peers: Peers = Arc::default();
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
        let Some(slot) = PeerSlot::take(&peers, peer.ip(), max_per_peer) else {
            tracing::warn!(%peer, max_per_peer, "too many API connections from one address; closing the new one");
            drop(stream);
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections, "too many API connections; closing the new one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let Some(acceptor) = tls else {
                return connection(stream, None, app, stop, peer).await;
            };
            // the handshake has the same deadline as a request head
            let stream =
                match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(error)) => {
                        // an expired, foreign or revoked-CA client certificate ends here
                        tracing::warn!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|der| crate::pki::peer_identity(der));
            connection(stream, identity, app, stop, peer).await;
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection's requests, each carrying the client certificate's identity.
async fn connection<I>(
    io: I,
    identity: Option<crate::pki::PeerIdentity>,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tower = hyper_util::service::TowerToHyperService::new(app);
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .remove::<crate::pki::PeerIdentity>();
            if let Some(id) = &identity {
                request.extensions_mut().insert(id.clone());
            }
            hyper::service::Service::call(&tower, request)
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
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
}

/// Open connections per peer address.
type Peers = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One counted connection of a peer; uncounted on drop.
struct PeerSlot {
    peers: Peers,
    ip: std::net::IpAddr,
}

impl PeerSlot {
    /// A slot for `ip`, unless it holds `max` connections already.
    fn take(peers: &Peers, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut map = peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = map.entry(ip).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(PeerSlot {
            peers: peers.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = map.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Checks the hosts' liveness every quarter of the grace period (100 ms … 1 s) while this
/// controller leads: silent hosts are marked down and their apps placed elsewhere, and hosts
/// back for a grace period get work again ([`Core::check_hosts`]).
async fn liveness(
    core: Arc<Core<AnyStore>>,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
    role: Option<watch::Receiver<Role>>,
) {
    let every = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if role.as_ref().is_none_or(|r| r.borrow().is_leader())
            && let Err(error) = core.check_hosts().await
        {
            tracing::warn!(%error, "checking the hosts' liveness failed");
        }
    }
}

/// How often a repository on this machine has its ref files checked for pushes.
const LOCAL_WATCH: Duration = Duration::from_millis(50);

/// Syncs every `interval`, and as soon as a push moves the branch of a repository on this
/// machine (its ref files are checked every [`LOCAL_WATCH`]). With a `role` (etcd), only
/// the leader syncs; a follower checks the store's revision every [`LOCAL_WATCH`] and wakes
/// its long-polls when the leader wrote, and syncs at once when it becomes the leader.
async fn poll(
    core: Arc<Core<AnyStore>>,
    source: GitSource,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut role: Option<watch::Receiver<Role>>,
) {
    let mut watched = source.local_head();
    let mut seen_revision = None;
    let mut was_leader = false;
    loop {
        let leading = role.as_ref().is_none_or(|r| r.borrow().is_leader());
        core.metrics().set_leader(leading);
        if leading && !was_leader && role.is_some() {
            core.forget_seen_head().await;
        }
        was_leader = leading;
        if leading {
            match core.sync().await {
                Ok(s) if !s.errors.is_empty() => {
                    tracing::warn!(errors = ?s.errors, "sync refused the branch head");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sync failed"),
            }
        }
        let next = tokio::time::Instant::now() + interval;
        loop {
            let tick = if watched.is_some() || role.is_some() {
                (tokio::time::Instant::now() + LOCAL_WATCH).min(next)
            } else {
                next
            };
            tokio::select! {
                _ = tokio::time::sleep_until(tick) => {}
                _ = shutdown.wait_for(|s| *s) => return,
                changed = async {
                    match role.as_mut() {
                        Some(r) => r.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if !changed {
                        // the election ended (shutdown): stop syncing
                        return;
                    }
                    break;
                }
            }
            if let Some(r) = &role
                && !r.borrow().is_leader()
            {
                if let Ok(revision) = core.store_revision().await
                    && seen_revision != Some(revision)
                {
                    seen_revision = Some(revision);
                    core.wake_assignments();
                }
                continue;
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
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA certificate (PEM) when serving TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.pki.as_ref().map(|p| p.ca_pem())
    }

    /// The CA's fingerprint (`sha256:<hex>`) when serving TLS.
    pub fn ca_fingerprint(&self) -> Option<String> {
        self.pki.as_ref().map(|p| p.fingerprint())
    }

    /// The API token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The state machine (for in-process callers such as `berth up`).
    pub fn core(&self) -> &Arc<Core<AnyStore>> {
        &self.core
    }

    /// Whether this controller leads (always, on the embedded store).
    pub fn is_leader(&self) -> bool {
        self.role.as_ref().is_none_or(|r| r.borrow().is_leader())
    }

    /// Stops polling and serving; returns once both ended.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        // a sync in flight (git fetch) is cancelled: its store writes are transactions
        self.poller.abort();
        let _ = self.poller.await;
        self.liveness.abort();
        let _ = self.liveness.await;
        // a leader revokes its lease so another takes over at once
        if let Some(elector) = self.elector {
            let _ = tokio::time::timeout(Duration::from_secs(5), elector).await;
        }
        match self.server.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}
