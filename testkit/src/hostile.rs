//! [`HostileRegistry`]: a registry that lies, for the hardening tests (issue 9). It serves one
//! small valid image (`berth-test/hostile:latest`: one uncompressed tar layer with a 64 KiB
//! file) on a 127.0.0.1 port, and misbehaves in one chosen way ([`Misbehave`]): wrong media
//! types, huge or endless manifests, lying `Content-Length`s and sizes, a corrupted blob,
//! bodies at one byte a second, redirects to link-local addresses.
//!
//! A plain HTTP/1.1 server on std threads, written by hand on purpose: hyper (like any
//! correct server) refuses to send a body that disagrees with its `Content-Length`, which is
//! one of the lies to tell. The real Distribution registry ([`crate::Registry`]) stays the
//! component for the happy paths; this one only adds what a real registry cannot be made to
//! do. Dropped, it stops its threads (they poll a flag) and closes its port.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// The repository served.
pub const HOSTILE_REPO: &str = "berth-test/hostile";

/// Most bytes any flood sends (the client is expected to stop far earlier).
const FLOOD_CAP: u64 = 1 << 30;

/// How the registry misbehaves. Everything else is served correctly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misbehave {
    /// Nothing: a valid image (proves the faults, not the fixture, make pulls fail).
    Nothing,
    /// The manifest's `Content-Type` and `mediaType` are this type.
    ManifestMediaType(String),
    /// The manifest answer declares `Content-Length: N` and streams N bytes of spaces.
    ManifestDeclared(u64),
    /// The manifest answer is chunked and never ends.
    ManifestEndless,
    /// The manifest body comes at one byte a second.
    ManifestSlow,
    /// The layer's body comes at one byte a second (its headers at once).
    BlobSlow,
    /// The layer's answer declares `Content-Length` this many bytes longer than the blob,
    /// sends the blob, and closes the connection.
    BlobContentLengthLonger(u64),
    /// The manifest gives the layer's size as one byte less than it is.
    BlobSizeSmaller,
    /// The layer is sent chunked: the blob, then endless bytes.
    BlobEndless,
    /// The layer is sent with one byte flipped (a digest mismatch).
    BlobCorrupt,
    /// Every blob request is redirected to this location.
    BlobRedirect(String),
}

struct Image {
    manifest: Vec<u8>,
    manifest_digest: String,
    layer: Vec<u8>,
    layer_digest: String,
    config: Vec<u8>,
    config_digest: String,
}

/// A running hostile registry owned by the test.
pub struct HostileRegistry {
    addr: String,
    image: Arc<Image>,
    stop: Arc<AtomicBool>,
    flooded: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
    accept: Option<JoinHandle<()>>,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A one-file ustar archive: `hello.txt`, 64 KiB of text.
fn layer_tar() -> Vec<u8> {
    let content: Vec<u8> = (0..64 * 1024u32)
        .map(|i| b"hostile\n"[(i % 8) as usize])
        .collect();
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
    put(&mut h, 0, b"hello.txt");
    put(&mut h, 100, b"0000644\0");
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{:011o}\0", content.len()).as_bytes());
    put(&mut h, 136, b"00000000000\0");
    put(&mut h, 148, b"        ");
    h[156] = b'0';
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut tar = h.to_vec();
    tar.extend_from_slice(&content);
    tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
    tar
}

fn image(misbehave: &Misbehave) -> Image {
    let layer = layer_tar();
    let layer_digest = sha256(&layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
    .to_string()
    .into_bytes();
    let config_digest = sha256(&config);
    let media_type = match misbehave {
        Misbehave::ManifestMediaType(t) => t.clone(),
        _ => "application/vnd.oci.image.manifest.v1+json".to_owned(),
    };
    let layer_size = match misbehave {
        Misbehave::BlobSizeSmaller => layer.len() - 1,
        _ => layer.len(),
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    })
    .to_string()
    .into_bytes();
    Image {
        manifest_digest: sha256(&manifest),
        manifest,
        layer,
        layer_digest,
        config,
        config_digest,
    }
}

impl HostileRegistry {
    /// Starts the registry on a free 127.0.0.1 port.
    pub fn start(misbehave: Misbehave) -> std::io::Result<HostileRegistry> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let image = Arc::new(image(&misbehave));
        let stop = Arc::new(AtomicBool::new(false));
        let flooded = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            image: image.clone(),
            misbehave,
            stop: stop.clone(),
            flooded: flooded.clone(),
            requests: requests.clone(),
        };
        let accept = std::thread::spawn(move || {
            let shared = Arc::new(shared);
            while !shared.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let shared = shared.clone();
                        std::thread::spawn(move || {
                            let _ = serve(conn, &shared);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(HostileRegistry {
            addr,
            image,
            stop,
            flooded,
            requests,
            accept: Some(accept),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `ADDR/berth-test/hostile:latest`.
    pub fn reference(&self) -> String {
        format!("{}/{HOSTILE_REPO}:latest", self.addr)
    }

    /// The manifest's digest (`sha256:…`) as served.
    pub fn manifest_digest(&self) -> &str {
        &self.image.manifest_digest
    }

    /// The layer's digest (`sha256:…`).
    pub fn layer_digest(&self) -> &str {
        &self.image.layer_digest
    }

    /// Bytes sent by floods (declared, endless and slow bodies) so far.
    pub fn flooded(&self) -> u64 {
        self.flooded.load(Ordering::Relaxed)
    }

    /// The paths requested so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

struct Shared {
    image: Arc<Image>,
    misbehave: Misbehave,
    stop: Arc<AtomicBool>,
    flooded: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Writes `bytes` repeatedly (up to `total` bytes or [`FLOOD_CAP`]) until the client goes.
    fn flood(&self, w: &mut TcpStream, total: u64, chunked: bool) {
        let chunk = [b' '; 64 * 1024];
        let mut sent = 0u64;
        while sent < total.min(FLOOD_CAP) && !self.stopped() {
            let n = (total - sent).min(chunk.len() as u64) as usize;
            let ok = if chunked {
                write!(w, "{n:x}\r\n")
                    .and_then(|()| w.write_all(&chunk[..n]))
                    .and_then(|()| w.write_all(b"\r\n"))
            } else {
                w.write_all(&chunk[..n])
            };
            if ok.is_err() {
                return;
            }
            sent += n as u64;
            self.flooded.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Writes `body` one byte a second until done or the client goes.
    fn trickle(&self, w: &mut TcpStream, body: &[u8]) {
        for b in body {
            if self.stopped() || w.write_all(&[*b]).and_then(|()| w.flush()).is_err() {
                return;
            }
            self.flooded.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

fn serve(conn: TcpStream, s: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push(line.trim_end().to_owned()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if s.stopped() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let path = head
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("")
            .to_owned();
        if let Ok(mut log) = s.requests.lock() {
            log.push(path.clone());
        }
        let img = &s.image;
        let manifest_type = match &s.misbehave {
            Misbehave::ManifestMediaType(t) => t.as_str(),
            _ => "application/vnd.oci.image.manifest.v1+json",
        };
        if path == "/v2/" {
            w.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            )?;
        } else if path.contains("/manifests/") {
            match &s.misbehave {
                Misbehave::ManifestDeclared(n) => {
                    write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Type: {manifest_type}\r\nDocker-Content-Digest: {}\r\nContent-Length: {n}\r\n\r\n",
                        img.manifest_digest
                    )?;
                    s.flood(&mut w, *n, false);
                    return Ok(());
                }
                Misbehave::ManifestEndless => {
                    write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Type: {manifest_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
                    )?;
                    s.flood(&mut w, u64::MAX, true);
                    return Ok(());
                }
                Misbehave::ManifestSlow => {
                    write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Type: {manifest_type}\r\nContent-Length: {}\r\n\r\n",
                        img.manifest.len()
                    )?;
                    w.flush()?;
                    s.trickle(&mut w, &img.manifest);
                    return Ok(());
                }
                _ => {
                    write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Type: {manifest_type}\r\nDocker-Content-Digest: {}\r\nContent-Length: {}\r\n\r\n",
                        img.manifest_digest,
                        img.manifest.len()
                    )?;
                    w.write_all(&img.manifest)?;
                }
            }
        } else if let Some(digest) = path.split("/blobs/").nth(1) {
            if let Misbehave::BlobRedirect(to) = &s.misbehave {
                write!(
                    w,
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
                )?;
                continue;
            }
            let (blob, is_layer) = if digest == img.layer_digest {
                (&img.layer, true)
            } else if digest == img.config_digest {
                (&img.config, false)
            } else {
                w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")?;
                continue;
            };
            let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream";
            match &s.misbehave {
                Misbehave::BlobSlow if is_layer => {
                    write!(w, "{ok}\r\nContent-Length: {}\r\n\r\n", blob.len())?;
                    w.flush()?;
                    s.trickle(&mut w, blob);
                    return Ok(());
                }
                Misbehave::BlobContentLengthLonger(extra) if is_layer => {
                    write!(
                        w,
                        "{ok}\r\nContent-Length: {}\r\n\r\n",
                        blob.len() as u64 + extra
                    )?;
                    w.write_all(blob)?;
                    return Ok(());
                }
                Misbehave::BlobEndless if is_layer => {
                    write!(w, "{ok}\r\nTransfer-Encoding: chunked\r\n\r\n")?;
                    write!(w, "{:x}\r\n", blob.len())?;
                    w.write_all(blob)?;
                    w.write_all(b"\r\n")?;
                    s.flood(&mut w, u64::MAX, true);
                    return Ok(());
                }
                Misbehave::BlobCorrupt if is_layer => {
                    let mut bad = blob.clone();
                    let mid = bad.len() / 2;
                    bad[mid] ^= 0xff;
                    write!(w, "{ok}\r\nContent-Length: {}\r\n\r\n", bad.len())?;
                    w.write_all(&bad)?;
                }
                _ => {
                    write!(w, "{ok}\r\nContent-Length: {}\r\n\r\n", blob.len())?;
                    w.write_all(blob)?;
                }
            }
        } else {
            w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        }
        w.flush()?;
    }
}
