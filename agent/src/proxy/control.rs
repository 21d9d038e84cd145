//! The proxy's control socket: the agent configures a long-lived proxy process through it,
//! so restarting (or crashing) the agent never closes a client connection.
//!
//! Transport: a path-based unix stream socket, mode 0600, in a directory of mode 0700 (no
//! abstract socket: a `network: host` container must not reach it). Protocol: one JSON
//! object per line each way, request then response, in order; lines are limited to 1 MiB.
//!
//! ```text
//! → {"op":"set_app","config":{"name":"web","listen":"0.0.0.0:8000","mode":"http"}}
//! ← {"result":"bound","addr":"0.0.0.0:8000"}
//! → {"op":"add_backend","app":"web","id":"web-1","addr":"10.88.0.2:8080"}
//! ← {"result":"ok"}
//! → {"op":"remove_backend","app":"web","id":"web-1"}       (out of rotation when answered)
//! → {"op":"drain","app":"web","id":"web-1","timeout_ms":30000}
//! ← {"result":"drained","outcome":{"outcome":"drained"}}
//! → {"op":"state"}  ← {"result":"state","apps":[…]}      (a restarted agent reconciles from it)
//! → {"op":"snapshot"} ← {"result":"snapshot","apps":{…}} (counters for metrics/autoscaler)
//! → {"op":"watch"}    ← {"result":"no_backend","app":"web"} … (one line per request that
//!                        found no backend, for as long as the connection is open: the agent
//!                        starts an instance of an app scaled to zero)
//! ```
//!
//! Requests on one connection are answered in order, so a long `drain` delays the next
//! answer: the agent uses one connection per concurrent drain.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_manifests::ErrorKind;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::balance::DrainOutcome;
use super::metrics::MetricsSnapshot;
use super::server::{AppConfig, AppState, Proxy, ProxyError};

const MAX_LINE: usize = 1 << 20;

/// A control request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create or update an app (listener).
    SetApp {
        /// Its configuration.
        config: AppConfig,
    },
    /// Stop an app's listener.
    RemoveApp {
        /// The app.
        app: String,
    },
    /// Put a ready instance in rotation.
    AddBackend {
        /// The app.
        app: String,
        /// The instance.
        id: String,
        /// Where it listens.
        addr: SocketAddr,
    },
    /// Take an instance out of rotation.
    RemoveBackend {
        /// The app.
        app: String,
        /// The instance.
        id: String,
    },
    /// Wait for a removed instance's requests to end.
    Drain {
        /// The app.
        app: String,
        /// The instance.
        id: String,
        /// How long at most, ms.
        timeout_ms: u64,
    },
    /// Apps and backends.
    State,
    /// Counters.
    Snapshot,
    /// From now on, report requests that find no backend (this connection only streams).
    Watch,
}

/// A control response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Done.
    Ok,
    /// The app listens here.
    Bound {
        /// The bound address.
        addr: SocketAddr,
    },
    /// How the drain ended.
    Drained {
        /// Outcome.
        outcome: DrainOutcome,
    },
    /// Apps and backends.
    State {
        /// Every app.
        apps: Vec<AppState>,
    },
    /// Counters by app.
    Snapshot {
        /// Every app's counters.
        apps: BTreeMap<String, MetricsSnapshot>,
    },
    /// A request of `app` found no backend (after `watch`).
    NoBackend {
        /// The app.
        app: String,
    },
    /// The request failed.
    Error {
        /// Class.
        kind: ErrorKind,
        /// Message.
        message: String,
    },
}

/// Applies one request to the proxy.
pub async fn apply(proxy: &Proxy, req: Request) -> Response {
    let res = match req {
        Request::SetApp { config } => proxy
            .set_app(config)
            .await
            .map(|addr| Response::Bound { addr }),
        Request::RemoveApp { app } => {
            proxy.remove_app(&app);
            Ok(Response::Ok)
        }
        Request::AddBackend { app, id, addr } => {
            proxy.add_backend(&app, &id, addr).map(|()| Response::Ok)
        }
        Request::RemoveBackend { app, id } => {
            proxy.remove_backend(&app, &id).map(|()| Response::Ok)
        }
        Request::Drain {
            app,
            id,
            timeout_ms,
        } => proxy
            .drain(&app, &id, Duration::from_millis(timeout_ms))
            .await
            .map(|outcome| Response::Drained { outcome }),
        Request::State => Ok(Response::State {
            apps: proxy.state(),
        }),
        Request::Snapshot => Ok(Response::Snapshot {
            apps: proxy.snapshot(),
        }),
        Request::Watch => Err(ProxyError::Protocol {
            reason: "this proxy reports no events (it was started without them)".into(),
        }),
    };
    res.unwrap_or_else(|e| Response::Error {
        kind: e.kind(),
        message: e.to_string(),
    })
}

/// Binds the control socket at `path` (its directory created 0700 if missing, refused if
/// group- or world-writable; a stale socket file replaced) and serves it until the returned
/// task is aborted.
pub fn serve(proxy: Arc<Proxy>, path: &Path) -> Result<tokio::task::JoinHandle<()>, ProxyError> {
    serve_with_events(proxy, path, None)
}

/// A sender for [`serve_with_events`] and the hook that feeds it: give the hook to
/// [`Proxy::with_no_backend_hook`].
pub fn no_backend_events() -> (
    tokio::sync::broadcast::Sender<String>,
    super::server::NoBackendHook,
) {
    let (tx, _) = tokio::sync::broadcast::channel(256);
    let hook_tx = tx.clone();
    (
        tx,
        Arc::new(move |app: &str| {
            let _ = hook_tx.send(app.to_owned());
        }),
    )
}

/// Like [`serve`]; `watch` requests stream what `events` carries (see [`no_backend_events`]).
pub fn serve_with_events(
    proxy: Arc<Proxy>,
    path: &Path,
    events: Option<tokio::sync::broadcast::Sender<String>>,
) -> Result<tokio::task::JoinHandle<()>, ProxyError> {
    let err = |op| {
        let path = path.to_owned();
        move |source| ProxyError::Control { path, op, source }
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err("create directory"))?;
        }
        // Others must not be able to swap the socket file.
        let mode = std::fs::metadata(dir)
            .map_err(err("inspect directory"))?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            return Err(ProxyError::Control {
                path: path.to_owned(),
                op: "check directory",
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is writable by group or others (mode {:o}): use a 0700 directory",
                        dir.display(),
                        mode & 0o777
                    ),
                ),
            });
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(err("remove stale socket"))?
        }
        Ok(_) => {
            return Err(ProxyError::Control {
                path: path.to_owned(),
                op: "bind",
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ),
            });
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(err("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(err("chmod 0600"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            tokio::spawn(serve_conn(Arc::clone(&proxy), stream, events.clone()));
        }
    }))
}

async fn serve_conn(
    proxy: Arc<Proxy>,
    stream: UnixStream,
    events: Option<tokio::sync::broadcast::Sender<String>>,
) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        match read_line(&mut r, &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Watch) if events.is_some() => {
                if let Some(tx) = &events {
                    stream_events(tx.subscribe(), &mut w).await;
                }
                return;
            }
            Ok(req) => apply(&proxy, req).await,
            Err(e) => Response::Error {
                kind: ErrorKind::InvalidInput,
                message: format!("bad control request: {e}"),
            },
        };
        let Ok(mut out) = serde_json::to_vec(&resp) else {
            return;
        };
        out.push(b'\n');
        if w.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Writes one `no_backend` line per event until the agent hangs up. Events lost to a slow
/// reader are skipped (the next one wakes the agent just as well).
async fn stream_events(
    mut rx: tokio::sync::broadcast::Receiver<String>,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let app = match rx.recv().await {
            Ok(app) => app,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        let Ok(mut out) = serde_json::to_vec(&Response::NoBackend { app }) else {
            return;
        };
        out.push(b'\n');
        if w.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut String,
) -> std::io::Result<usize> {
    let mut limited = r.take(MAX_LINE as u64);
    let n = limited.read_line(line).await?;
    if n > 0 && !line.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "control line too long or cut off",
        ));
    }
    Ok(n)
}

/// The agent's side of the control socket.
#[derive(Debug)]
pub struct ProxyClient {
    path: PathBuf,
    stream: BufReader<UnixStream>,
}

impl ProxyClient {
    /// Connects to the proxy's control socket.
    pub async fn connect(path: &Path) -> Result<Self, ProxyError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ProxyError::Control {
                path: path.to_owned(),
                op: "connect",
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            stream: BufReader::new(stream),
        })
    }

    /// Sends one request and reads its response; a remote error becomes `ProxyError::Remote`.
    pub async fn call(&mut self, req: &Request) -> Result<Response, ProxyError> {
        let io = |op| {
            let path = self.path.clone();
            move |source| ProxyError::Control { path, op, source }
        };
        let mut out = serde_json::to_vec(req).map_err(|e| ProxyError::Protocol {
            reason: e.to_string(),
        })?;
        out.push(b'\n');
        self.stream
            .get_mut()
            .write_all(&out)
            .await
            .map_err(io("write"))?;
        let mut line = String::new();
        let n = read_line(&mut self.stream, &mut line)
            .await
            .map_err(io("read"))?;
        if n == 0 {
            return Err(ProxyError::Protocol {
                reason: "the proxy closed the control connection".into(),
            });
        }
        match serde_json::from_str::<Response>(&line) {
            Ok(Response::Error { kind, message }) => Err(ProxyError::Remote { kind, message }),
            Ok(r) => Ok(r),
            Err(e) => Err(ProxyError::Protocol {
                reason: format!("bad response: {e}"),
            }),
        }
    }

    /// `set_app`; returns the bound address.
    pub async fn set_app(&mut self, config: AppConfig) -> Result<SocketAddr, ProxyError> {
        match self.call(&Request::SetApp { config }).await? {
            Response::Bound { addr } => Ok(addr),
            other => Err(unexpected(&other)),
        }
    }

    /// `add_backend`.
    pub async fn add_backend(
        &mut self,
        app: &str,
        id: &str,
        addr: SocketAddr,
    ) -> Result<(), ProxyError> {
        self.call(&Request::AddBackend {
            app: app.into(),
            id: id.into(),
            addr,
        })
        .await
        .map(|_| ())
    }

    /// `remove_backend`: returns once the instance is out of rotation.
    pub async fn remove_backend(&mut self, app: &str, id: &str) -> Result<(), ProxyError> {
        self.call(&Request::RemoveBackend {
            app: app.into(),
            id: id.into(),
        })
        .await
        .map(|_| ())
    }

    /// `drain`: waits for the removed instance's requests, at most `timeout`.
    pub async fn drain(
        &mut self,
        app: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<DrainOutcome, ProxyError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        match self
            .call(&Request::Drain {
                app: app.into(),
                id: id.into(),
                timeout_ms,
            })
            .await?
        {
            Response::Drained { outcome } => Ok(outcome),
            other => Err(unexpected(&other)),
        }
    }

    /// Apps and backends as the proxy has them.
    pub async fn state(&mut self) -> Result<Vec<AppState>, ProxyError> {
        match self.call(&Request::State).await? {
            Response::State { apps } => Ok(apps),
            other => Err(unexpected(&other)),
        }
    }

    /// Turns this connection into a stream of apps whose requests found no backend.
    pub async fn watch(mut self) -> Result<ProxyEvents, ProxyError> {
        let mut out = serde_json::to_vec(&Request::Watch).map_err(|e| ProxyError::Protocol {
            reason: e.to_string(),
        })?;
        out.push(b'\n');
        self.stream
            .get_mut()
            .write_all(&out)
            .await
            .map_err(|source| ProxyError::Control {
                path: self.path.clone(),
                op: "write",
                source,
            })?;
        Ok(ProxyEvents { client: self })
    }

    /// Counters by app.
    pub async fn snapshot(&mut self) -> Result<BTreeMap<String, MetricsSnapshot>, ProxyError> {
        match self.call(&Request::Snapshot).await? {
            Response::Snapshot { apps } => Ok(apps),
            other => Err(unexpected(&other)),
        }
    }
}

/// The stream of a `watch` connection.
#[derive(Debug)]
pub struct ProxyEvents {
    client: ProxyClient,
}

impl ProxyEvents {
    /// The next app whose request found no backend; an error when the proxy went away.
    pub async fn next(&mut self) -> Result<String, ProxyError> {
        let mut line = String::new();
        let n = read_line(&mut self.client.stream, &mut line)
            .await
            .map_err(|source| ProxyError::Control {
                path: self.client.path.clone(),
                op: "read",
                source,
            })?;
        if n == 0 {
            return Err(ProxyError::Protocol {
                reason: "the proxy closed the watch connection".into(),
            });
        }
        match serde_json::from_str::<Response>(&line) {
            Ok(Response::NoBackend { app }) => Ok(app),
            Ok(Response::Error { kind, message }) => Err(ProxyError::Remote { kind, message }),
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(ProxyError::Protocol {
                reason: format!("bad event: {e}"),
            }),
        }
    }
}

fn unexpected(r: &Response) -> ProxyError {
    ProxyError::Protocol {
        reason: format!("unexpected response {r:?}"),
    }
}

/// A proxy log larger than this is started afresh when the next proxy process starts.
pub const LOG_KEEP_BYTES: u64 = 8 << 20;

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let big = std::fs::metadata(path).is_ok_and(|m| m.len() > LOG_KEEP_BYTES);
    std::fs::OpenOptions::new()
        .create(true)
        .append(!big)
        .write(true)
        .truncate(big)
        .mode(0o600)
        .open(path)
}

/// The proxy process this agent started (see [`connect_or_spawn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// Its pid.
    pub pid: u32,
}

/// Connects to the proxy at `socket`; when nothing answers, first starts
/// `<exe> proxy --socket <socket>` in its own process group (so a signal to the agent's group
/// does not reach it) and waits up to `wait` for its socket. A proxy left by a previous agent
/// is adopted as it is (then `None` is returned with the client). While this agent lives, a
/// task reaps the child if it exits; after the agent is gone the proxy is re-parented.
/// The proxy's log (its failures: every 502/503/504 it answers, with the backend and the
/// cause, and retried requests) goes to `proxy.log` beside the socket (0600; started afresh
/// when it has grown past [`LOG_KEEP_BYTES`]).
pub async fn connect_or_spawn(
    exe: &Path,
    socket: &Path,
    wait: Duration,
) -> Result<(ProxyClient, Option<Spawned>), ProxyError> {
    if let Ok(c) = ProxyClient::connect(socket).await {
        return Ok((c, None));
    }
    let spawn_err = |source| ProxyError::Control {
        path: socket.to_owned(),
        op: "start berth proxy",
        source,
    };
    let log = match open_log(&socket.with_file_name("proxy.log")) {
        Ok(f) => std::process::Stdio::from(f),
        Err(e) => {
            tracing::warn!(socket = %socket.display(), error = %e, "cannot open the proxy's log: it logs nowhere");
            std::process::Stdio::null()
        }
    };
    let mut child = tokio::process::Command::new(exe)
        .arg("proxy")
        .arg("--socket")
        .arg(socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(spawn_err)?;
    let pid = child.id().unwrap_or(0);
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match ProxyClient::connect(socket).await {
            Ok(c) => return Ok((c, Some(Spawned { pid }))),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
