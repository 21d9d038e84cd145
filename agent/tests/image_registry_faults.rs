//! The registry client against a registry that misbehaves on demand: a small HTTP/1.1 server
//! on loopback that serves one real image (a gzip layer, config, manifest) and injects the
//! faults the Distribution registry cannot be made to produce: oversized manifests, redirects
//! to link-local addresses, 5xx/429 answers, bodies cut mid-way, registries ignoring `Range`.
//! The happy paths, auth and corrupted storage are tested against the real registry in
//! image_pull.rs.

// Test helpers outside #[test] functions: clippy's allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_agent::host::image_store::{ImageError, ImageStore, NoProgress, PullOptions};
use berth_agent::host::registry::{
    MAX_MANIFEST_BYTES, RegistryClient, RegistryConfig, RegistryError, RetryPolicy,
};
use berth_agent::image::{Digest, Reference};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const REPO: &str = "berth-test/faults";

/// What the server does with one request that matches a fault's path.
#[derive(Clone, Debug)]
enum Fault {
    /// Answer with this status, headers and a small error body.
    Status(u16, Vec<(&'static str, String)>),
    /// The headers of the full answer, then only this many body bytes, then close.
    Cut(usize),
    /// 302 to this location.
    Redirect(String),
    /// A manifest of `Content-Length: N` (its body never comes).
    Declared(u64),
    /// A chunked manifest that never ends (the server stops at 1 GiB).
    Endless,
    /// The whole body with its middle byte flipped.
    Flip,
}

#[derive(Debug, Clone)]
struct Logged {
    path: String,
    range: Option<String>,
    at: Instant,
}

#[derive(Default)]
struct State {
    /// (path substring, fault), each used once, first match first.
    faults: VecDeque<(String, Fault)>,
    log: Vec<Logged>,
    /// Body bytes written by `Endless` / `Declared` answers.
    flooded: u64,
    /// Answer range requests with 200 and the whole blob, like registries without ranges.
    ignore_ranges: bool,
    /// A token registry: `/v2/` challenges with `Bearer realm=<this>`, `/token` hands out
    /// `t0k3n`, and every other path wants `Authorization: Bearer t0k3n`.
    bearer_realm: Option<String>,
}

struct FaultyRegistry {
    addr: String,
    state: Arc<Mutex<State>>,
    manifest: Vec<u8>,
    layer: Digest,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn gzip_layer() -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    // Big enough that a cut in the middle leaves a real remainder: 256 KiB of text.
    let text: Vec<u8> = (0..256 * 1024u32)
        .map(|i| b"berth\n"[(i % 6) as usize])
        .collect();
    let mut h = tar::Header::new_gnu();
    h.set_size(text.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, "hello.txt", text.as_slice())
        .unwrap();
    let raw = tar.into_inner().unwrap();
    let diff_id = Digest::of(&raw);
    // Stored (level 0) so the compressed blob stays 256 KiB and a cut lands mid-file.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    gz.write_all(&raw).unwrap();
    (gz.finish().unwrap(), diff_id)
}

impl FaultyRegistry {
    async fn start() -> Self {
        let (layer, diff_id) = gzip_layer();
        let layer_digest = Digest::of(&layer);
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        })
        .to_string()
        .into_bytes();
        let config_digest = Digest::of(&config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest.to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest.to_string(), "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let content = Arc::new(Content {
            manifest: manifest.clone(),
            blobs: vec![
                (format!("/blobs/{layer_digest}"), layer),
                (format!("/blobs/{config_digest}"), config),
            ],
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(conn, st.clone(), content.clone()));
            }
        });
        FaultyRegistry {
            addr,
            state,
            manifest,
            layer: layer_digest,
            task,
        }
    }

    fn fault(&self, path: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push_back((path.to_owned(), fault));
    }

    fn requests(&self, path: &str) -> Vec<Logged> {
        let st = self.state.lock().unwrap();
        st.log
            .iter()
            .filter(|l| l.path.contains(path))
            .cloned()
            .collect()
    }

    fn reference(&self) -> Reference {
        format!("{}/{REPO}:latest", self.addr).parse().unwrap()
    }

    fn config(&self) -> RegistryConfig {
        RegistryConfig {
            insecure: vec![self.addr.clone()],
            retry: RetryPolicy {
                attempts: 4,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(50),
            },
            ..Default::default()
        }
    }

    async fn pull(&self) -> (tempfile::TempDir, Result<(), ImageError>) {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let options = PullOptions {
            registry: self.config(),
            ..Default::default()
        };
        let result = store
            .pull(&self.reference(), &options, &NoProgress)
            .await
            .map(|image| {
                let file = image.layer_dirs()[0].join("hello.txt");
                assert_eq!(std::fs::metadata(file).unwrap().len(), 256 * 1024);
            });
        (dir, result)
    }
}

struct Content {
    manifest: Vec<u8>,
    blobs: Vec<(String, Vec<u8>)>,
}

async fn serve(conn: TcpStream, state: Arc<Mutex<State>>, content: Arc<Content>) {
    let mut conn = BufReader::new(conn);
    loop {
        // The request head.
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match conn.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_owned());
        }
        let Some(path) = head
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
        else {
            return;
        };
        let header = |name: &str| {
            head.iter().find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let range = header("range");
        let authorization = header("authorization");
        #[allow(
            clippy::disallowed_methods,
            reason = "the test server stamps requests to check Retry-After was honoured"
        )]
        let at = Instant::now();
        let (fault, ignore_ranges, realm) = {
            let mut st = state.lock().unwrap();
            st.log.push(Logged {
                path: path.clone(),
                range: range.clone(),
                at,
            });
            let i = st
                .faults
                .iter()
                .position(|(p, _)| path.contains(p.as_str()));
            (
                i.and_then(|i| st.faults.remove(i)).map(|(_, f)| f),
                st.ignore_ranges,
                st.bearer_realm.clone(),
            )
        };
        let w = conn.get_mut();
        if let Some(realm) = realm {
            let reply = if path.starts_with("/token?") {
                Some(
                    "HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{\"token\":\"t0k3n\"}".to_owned(),
                )
            } else if authorization.as_deref() != Some("Bearer t0k3n") {
                Some(format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"faulty\"\r\nContent-Length: 2\r\n\r\n{{}}"
                ))
            } else {
                None
            };
            if let Some(reply) = reply {
                if w.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
        }
        let body: Option<&[u8]> = if path == "/v2/" {
            Some(b"{}")
        } else if path.contains("/manifests/") {
            Some(&content.manifest)
        } else {
            content
                .blobs
                .iter()
                .find(|(p, _)| path.ends_with(p.as_str()))
                .map(|(_, b)| b.as_slice())
        };
        match fault {
            Some(Fault::Status(code, headers)) => {
                let mut head = format!(
                    "HTTP/1.1 {code} Fault\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n{}");
                if w.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
            }
            Some(Fault::Redirect(to)) => {
                let head =
                    format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n");
                if w.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
            }
            Some(Fault::Cut(n)) => {
                let body = body.unwrap();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = w.write_all(head.as_bytes()).await;
                let _ = w.write_all(&body[..n]).await;
                let _ = w.flush().await;
                return;
            }
            Some(Fault::Declared(len)) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {len}\r\n\r\n"
                );
                let _ = w.write_all(head.as_bytes()).await;
                flood(w, &state, len).await;
                return;
            }
            Some(Fault::Flip) => {
                let mut body = body.unwrap().to_vec();
                let mid = body.len() / 2;
                body[mid] ^= 0xff;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                if w.write_all(head.as_bytes()).await.is_err() || w.write_all(&body).await.is_err()
                {
                    return;
                }
            }
            Some(Fault::Endless) => {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\n\r\n";
                let _ = w.write_all(head.as_bytes()).await;
                let chunk = [b' '; 64 * 1024];
                let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                framed.extend_from_slice(&chunk);
                framed.extend_from_slice(b"\r\n");
                let mut sent = 0u64;
                while sent < 1 << 30 && w.write_all(&framed).await.is_ok() {
                    sent += chunk.len() as u64;
                    state.lock().unwrap().flooded = sent;
                }
                return;
            }
            None => {
                let Some(body) = body else {
                    let _ = w
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
                        .await;
                    continue;
                };
                let from = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|r| r.parse::<usize>().ok())
                    .filter(|_| !ignore_ranges);
                let head = match from {
                    Some(f) => format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {f}-{}/{}\r\n\r\n",
                        body.len() - f,
                        body.len() - 1,
                        body.len()
                    ),
                    None => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()),
                };
                let from = from.unwrap_or(0);
                if w.write_all(head.as_bytes()).await.is_err()
                    || w.write_all(&body[from..]).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Writes up to `len` (at most 1 GiB) bytes, counting them, until the client goes away.
async fn flood(w: &mut TcpStream, state: &Mutex<State>, len: u64) {
    let chunk = [b' '; 64 * 1024];
    let mut sent = 0u64;
    while sent < len.min(1 << 30) && w.write_all(&chunk).await.is_ok() {
        sent += chunk.len() as u64;
        state.lock().unwrap().flooded = sent;
    }
}

fn client(reg: &FaultyRegistry) -> RegistryClient {
    RegistryClient::new(reg.config()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_declaring_more_than_the_cap_is_refused_before_its_body_is_read() {
    let reg = FaultyRegistry::start().await;
    let declared = 8u64 << 30;
    reg.fault("/manifests/", Fault::Declared(declared));
    let err = client(&reg).manifest(&reg.reference()).await.unwrap_err();
    match &err {
        RegistryError::TooLarge { size, limit, .. } => {
            assert_eq!((*size, *limit), (declared, MAX_MANIFEST_BYTES));
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        reg.requests("/manifests/").len(),
        1,
        "a size refusal was retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_manifest_without_length_is_cut_off_at_the_cap() {
    let reg = FaultyRegistry::start().await;
    reg.fault("/manifests/", Fault::Endless);
    let err = client(&reg).manifest(&reg.reference()).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::TooLarge { size, .. } if size > MAX_MANIFEST_BYTES as u64),
        "{err}"
    );
    // The client stopped reading near the cap: what the server got out is the cap plus socket
    // buffers, far from the 1 GiB it would have sent to a client reading to the end.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let flooded = reg.state.lock().unwrap().flooded;
    assert!(flooded < 64 << 20, "the server wrote {flooded} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_to_link_local_addresses_are_refused() {
    for target in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[fe80::1]:5000/blob".to_owned(),
        "http://[::ffff:169.254.169.254]/x".to_owned(),
        "http://metadata.google.internal/computeMetadata/v1/".to_owned(),
    ] {
        let reg = FaultyRegistry::start().await;
        let layer = reg.layer.to_string();
        reg.fault(&layer, Fault::Redirect(target.clone()));
        let (_dir, result) = reg.pull().await;
        let err = result.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ImageError::Registry(RegistryError::Redirect { .. })),
            "{target}: {msg}"
        );
        assert!(msg.contains("refused") && msg.contains(&layer), "{msg}");
        assert_eq!(
            reg.requests(&layer).len(),
            1,
            "{target}: a refusal was retried"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_within_the_rules_are_followed() {
    let reg = FaultyRegistry::start().await;
    let layer = reg.layer.to_string();
    // To another URL of the same server (as a registry sends blobs to its storage backend).
    let to = format!("http://{}/storage/v2/{REPO}/blobs/{layer}", reg.addr);
    reg.fault(&format!("/v2/{REPO}/blobs/{layer}"), Fault::Redirect(to));
    let (_dir, result) = reg.pull().await;
    result.unwrap();
    assert_eq!(reg.requests(&layer).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_the_pull_succeeds() {
    let reg = FaultyRegistry::start().await;
    let layer = reg.layer.to_string();
    reg.fault("/manifests/", Fault::Status(503, vec![]));
    reg.fault("/manifests/", Fault::Status(502, vec![]));
    reg.fault(&layer, Fault::Status(500, vec![]));
    reg.fault(&layer, Fault::Status(408, vec![]));
    let (_dir, result) = reg.pull().await;
    result.unwrap();
    assert_eq!(reg.requests("/manifests/").len(), 3);
    assert_eq!(reg.requests(&layer).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_the_time_retry_after_asks_for() {
    let reg = FaultyRegistry::start().await;
    let layer = reg.layer.to_string();
    reg.fault(
        &layer,
        Fault::Status(429, vec![("Retry-After", "1".into())]),
    );
    let (_dir, result) = reg.pull().await;
    result.unwrap();
    let log = reg.requests(&layer);
    assert_eq!(log.len(), 2);
    // The policy's own delays are at most 50 ms here: only Retry-After explains a second.
    let gap = log[1].at - log[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_and_the_error_says_how_many_were_made() {
    let reg = FaultyRegistry::start().await;
    for _ in 0..10 {
        reg.fault("/manifests/", Fault::Status(503, vec![]));
    }
    let err = client(&reg).manifest(&reg.reference()).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Unavailable { attempts: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("4 attempts"), "{err}");
    assert_eq!(reg.requests("/manifests/").len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_cut_mid_way_resumes_with_a_range_request() {
    let reg = FaultyRegistry::start().await;
    let layer = reg.layer.to_string();
    reg.fault(&layer, Fault::Cut(100_000));
    let (_dir, result) = reg.pull().await;
    result.unwrap();
    let log = reg.requests(&layer);
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].range, None);
    assert_eq!(log[1].range.as_deref(), Some("bytes=100000-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_blob_is_fetched_again_and_skipped_to_where_it_stopped_without_ranges() {
    let reg = FaultyRegistry::start().await;
    reg.state.lock().unwrap().ignore_ranges = true;
    let layer = reg.layer.to_string();
    reg.fault(&layer, Fault::Cut(100_000));
    reg.fault(&layer, Fault::Cut(150_000));
    let (_dir, result) = reg.pull().await;
    // Verified by digest and diff_id: the skipped bytes were not handed out twice.
    result.unwrap();
    assert_eq!(reg.requests(&layer).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_are_not_retried() {
    for (status, want) in [
        (404, "not found"),
        (403, "access denied"),
        (401, "needs credentials"),
    ] {
        let reg = FaultyRegistry::start().await;
        let layer = reg.layer.to_string();
        reg.fault(&layer, Fault::Status(status, vec![]));
        let (dir, result) = reg.pull().await;
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains(want) && err.contains(&layer),
            "{status}: {err}"
        );
        assert_eq!(reg.requests(&layer).len(), 1, "{status} was retried");
        let store = ImageStore::open(dir.path()).unwrap();
        assert!(store.list().unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_fails_its_digest_is_not_fetched_again() {
    let reg = FaultyRegistry::start().await;
    let layer = reg.layer.to_string();
    reg.fault(&layer, Fault::Flip);
    let (_dir, result) = reg.pull().await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains(&layer) && err.contains("failed verification"),
        "{err}"
    );
    assert_eq!(reg.requests(&layer).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_digest_mismatch_is_not_retried() {
    let reg = FaultyRegistry::start().await;
    // The manifest pinned by a digest it does not hash to.
    let wrong = Digest::of(b"something else");
    let pinned: Reference = format!("{}/{REPO}@{wrong}", reg.addr).parse().unwrap();
    let err = client(&reg).manifest(&pinned).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert_eq!(reg.requests("/manifests/").len(), 1);
    assert_eq!(
        Digest::of(&reg.manifest),
        client(&reg).manifest(&reg.reference()).await.unwrap().1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_is_fetched_from_the_realm_and_sent_with_every_request() {
    let reg = FaultyRegistry::start().await;
    reg.state.lock().unwrap().bearer_realm = Some(format!("http://{}/token", reg.addr));
    let (_dir, result) = reg.pull().await;
    result.unwrap();
    let tokens = reg.requests("/token?");
    assert_eq!(tokens.len(), 1, "one token for the whole pull");
    assert!(
        tokens[0]
            .path
            .contains("scope=repository%3Aberth-test%2Ffaults%3Apull")
            && tokens[0].path.contains("service=faulty"),
        "{}",
        tokens[0].path
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_realm_on_a_link_local_address_is_refused() {
    let reg = FaultyRegistry::start().await;
    reg.state.lock().unwrap().bearer_realm =
        Some("http://169.254.169.254/latest/meta-data/iam".to_owned());
    let err = client(&reg).manifest(&reg.reference()).await.unwrap_err();
    assert!(
        matches!(&err, RegistryError::Redirect { target, .. } if target.contains("169.254")),
        "{err}"
    );
    assert!(reg.requests("/manifests/").is_empty());
}
