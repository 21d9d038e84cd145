//! The host's node certificate (issue 7): joining the controller with a join token, keeping
//! the key and certificate under `<data-dir>/agent/tls/`, and renewing before expiry.
//!
//! Join (kubeadm's discovery-token-ca-cert-hash, in small): the agent fetches the CA from
//! `GET /v1/pki/ca` without trusting it, checks its sha256 against the pinned
//! `--ca-fingerprint` (or takes `--ca FILE` as is), and only then sends the join token, over
//! a TLS connection verified against that CA, with a CSR for a key made here (the key never
//! leaves the host). From then on the agent speaks mTLS with the certificate, and renews it
//! (a new key each time) when a third of its lifetime is left.
//!
//! Files (directory 0700, files 0600): `node.json` holds everything (host, expiry, lifetime,
//! CA, certificate and key) and is the one file read back: it is replaced in one atomic
//! rename, so a crash during a renewal leaves the old identity or the new one, never a new
//! key beside an old certificate. `ca.pem`, `node.pem` and `node.key` are copies written
//! after it, for operators' tools (openssl, curl). Owns that directory.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_manifests::wire::{NodeCertRequest, NodeCertificate};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::controller_client::{HttpController, chain, tls_builder};

/// A node certificate with its key and the CA that issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    /// The host it speaks for.
    pub host: String,
    /// The controller's CA, PEM.
    pub ca_pem: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its key, PEM (PKCS#8).
    pub key_pem: String,
    /// When it expires (Unix ms).
    pub not_after_ms: u64,
    /// Its lifetime as issued (ms).
    pub lifetime_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    host: String,
    not_after_ms: u64,
    lifetime_ms: u64,
    /// The PEMs (absent in files written before they moved in here: then the PEM files are
    /// read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_pem: Option<String>,
}

impl NodeCert {
    /// Key and certificate in one PEM, as a TLS client identity.
    pub fn identity_pem(&self) -> String {
        format!("{}\n{}", self.key_pem.trim_end(), self.cert_pem)
    }

    /// When to renew: a third of the lifetime before expiry.
    pub fn renew_at_ms(&self) -> u64 {
        self.not_after_ms.saturating_sub(self.lifetime_ms / 3)
    }

    /// `Err` with what to do when the certificate has expired at `now_ms`.
    pub fn check_valid(&self, now_ms: u64, dir: &Path) -> Result<(), String> {
        if now_ms < self.not_after_ms {
            return Ok(());
        }
        Err(format!(
            "host {}'s node certificate {} expired {} s ago (it was not renewed in time: the \
             agent was stopped or the controller unreachable); join again: remove {}, then \
             berth agent --join URL --token T --name {} with the host's join token (or a new \
             one: berth token create --role join --host {})",
            self.host,
            dir.join("node.pem").display(),
            (now_ms - self.not_after_ms) / 1000,
            dir.display(),
            self.host,
            self.host,
        ))
    }
}

/// `<data-dir>/agent/tls`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent").join("tls")
}

/// The wall clock in Unix ms.
pub fn now_ms() -> u64 {
    #[allow(
        clippy::disallowed_methods,
        reason = "clock edge: certificate expiry is wall-clock time"
    )]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The node certificate stored in `dir`, if there is one.
pub fn load(dir: &Path) -> Result<Option<NodeCert>, String> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))
    };
    let meta_path = dir.join("node.json");
    let meta = match std::fs::read(&meta_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", meta_path.display())),
    };
    let meta: Meta = serde_json::from_slice(&meta)
        .map_err(|e| format!("{} is damaged: {e}", meta_path.display()))?;
    let pem = |inline: Option<String>, name: &str| match inline {
        Some(pem) => Ok(pem),
        None => read(name),
    };
    Ok(Some(NodeCert {
        host: meta.host,
        ca_pem: pem(meta.ca_pem, "ca.pem")?,
        cert_pem: pem(meta.cert_pem, "node.pem")?,
        key_pem: pem(meta.key_pem, "node.key")?,
        not_after_ms: meta.not_after_ms,
        lifetime_ms: meta.lifetime_ms,
    }))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Stores `cert` in `dir` (0700; files 0600): `node.json`, the one file read back, in one
/// atomic replace (fsynced, then the directory), then the PEM copies.
pub fn save(dir: &Path, cert: &NodeCert) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let meta = Meta {
        host: cert.host.clone(),
        not_after_ms: cert.not_after_ms,
        lifetime_ms: cert.lifetime_ms,
        ca_pem: Some(cert.ca_pem.clone()),
        cert_pem: Some(cert.cert_pem.clone()),
        key_pem: Some(cert.key_pem.clone()),
    };
    let json = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
    write_private(&dir.join("node.json"), &json)?;
    std::fs::File::open(dir)?.sync_all()?;
    write_private(&dir.join("ca.pem"), cert.ca_pem.as_bytes())?;
    write_private(&dir.join("node.key"), cert.key_pem.as_bytes())?;
    write_private(&dir.join("node.pem"), cert.cert_pem.as_bytes())
}

/// A new key (ECDSA P-256) and a CSR for `host`, both PEM.
pub fn key_and_csr(host: &str) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("generating the node key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])
        .map_err(|e| format!("host name {host:?}: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| format!("making the certificate signing request: {e}"))?;
    Ok((key.serialize_pem(), csr))
}

/// `sha256:<hex>` of the first certificate in `pem`.
pub fn fingerprint(pem: &str) -> Result<String, String> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(&parsed.contents))
    ))
}

/// Normalises `--ca-fingerprint` (`sha256:<64 hex>`, case and colons ignored).
pub fn parse_pin(text: &str) -> Result<String, String> {
    let hex_part = text
        .trim()
        .strip_prefix("sha256:")
        .unwrap_or(text.trim())
        .replace(':', "")
        .to_ascii_lowercase();
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "--ca-fingerprint {text:?} is not sha256:<64 hex digits> (berth token create \
             --role join prints it)"
        ));
    }
    Ok(format!("sha256:{hex_part}"))
}

fn status_error(what: &str, url: &str, status: reqwest::StatusCode, body: &str) -> String {
    let message = serde_json::from_str::<berth_manifests::wire::ApiError>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| body.chars().take(300).collect());
    let hint = match status.as_u16() {
        401 => "; the join token is wrong or was revoked (berth token create --role join)",
        _ => "",
    };
    format!("{what} refused by {url} ({status}): {message}{hint}")
}

/// The controller's CA, fetched from `base` without trusting the connection, and accepted
/// only when its sha256 is `pin` (from [`parse_pin`]).
pub async fn discover_ca(base: &str, pin: &str) -> Result<String, String> {
    let url = format!("{}/v1/pki/ca", base.trim_end_matches('/'));
    // The answer is checked against the pin below; nothing secret is sent on this
    // connection (no token), so it need not be trusted.
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("building an HTTP client: {e}"))?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch the controller's CA from {url}: {}", chain(&e)))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("reading the controller's CA from {url}: {e}"))?;
    if !status.is_success() {
        return Err(status_error("fetching the CA", &url, status, &body));
    }
    let got = fingerprint(&body).map_err(|e| format!("the CA from {url}: {e}"))?;
    if got != pin {
        return Err(format!(
            "the controller at {base} presents CA {got}, not the pinned {pin}: refusing to \
             send the join token (check --ca-fingerprint against berth token create's output, \
             or whether something else answers at {base})"
        ));
    }
    Ok(body)
}

/// Joins as `host` with `token` at `base`, trusting only `ca_pem`: a new key, its CSR, the
/// node certificate back.
pub async fn join(base: &str, token: &str, host: &str, ca_pem: &str) -> Result<NodeCert, String> {
    let url = format!("{}/v1/agents/join", base.trim_end_matches('/'));
    let client = tls_builder(ca_pem)?
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("building an HTTP client: {e}"))?;
    let (key_pem, csr) = key_and_csr(host)?;
    let response = client
        .post(&url)
        .bearer_auth(token)
        .json(&NodeCertRequest {
            name: host.to_string(),
            csr,
        })
        .send()
        .await
        .map_err(|e| format!("cannot join the controller at {url}: {}", chain(&e)))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("reading the join answer from {url}: {e}"))?;
    if !status.is_success() {
        return Err(status_error(
            &format!("joining as {host}"),
            &url,
            status,
            &body,
        ));
    }
    let issued: NodeCertificate = serde_json::from_str(&body)
        .map_err(|e| format!("unexpected join answer from {url}: {e}"))?;
    accept(host, key_pem, issued)
}

fn accept(host: &str, key_pem: String, issued: NodeCertificate) -> Result<NodeCert, String> {
    if issued.name != host {
        return Err(format!(
            "the controller issued a certificate for {}, not {host}",
            issued.name
        ));
    }
    Ok(NodeCert {
        host: host.to_string(),
        ca_pem: issued.ca,
        cert_pem: issued.certificate,
        key_pem,
        not_after_ms: issued.not_after_ms,
        lifetime_ms: issued.lifetime_ms,
    })
}

/// A new certificate for a new key, asked over mTLS with the current one.
pub async fn renew(controller: &HttpController, current: &NodeCert) -> Result<NodeCert, String> {
    let (key_pem, csr) = key_and_csr(&current.host)?;
    let issued = controller
        .renew(&NodeCertRequest {
            name: current.host.clone(),
            csr,
        })
        .await
        .map_err(|e| e.chain())?;
    accept(&current.host, key_pem, issued)
}

/// Renews `cert` at two thirds of its lifetime, forever: stores the new one in `dir` and
/// switches `controller` to it. Failures are retried (more often as expiry nears) and
/// logged; past expiry the log says to join again.
pub async fn renew_loop(controller: HttpController, dir: PathBuf, mut cert: NodeCert) {
    loop {
        let wait = cert.renew_at_ms().saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let result = match renew(&controller, &cert).await {
            Ok(new) => controller
                .set_identity(&new.identity_pem())
                .map_err(|e| e.chain())
                .map(|()| new),
            Err(e) => Err(e),
        };
        match result {
            Ok(new) => {
                if let Err(e) = save(&dir, &new) {
                    tracing::warn!(dir = %dir.display(), error = %e, "storing the renewed node certificate failed; it is used from memory");
                }
                tracing::info!(host = %new.host, not_after_ms = new.not_after_ms, "node certificate renewed");
                cert = new;
            }
            Err(error) => {
                let now = now_ms();
                match cert.check_valid(now, &dir) {
                    Ok(()) => {
                        tracing::warn!(host = %cert.host, %error, "renewing the node certificate failed; retrying")
                    }
                    Err(expired) => tracing::error!(%error, "{expired}"),
                }
                let left = cert.not_after_ms.saturating_sub(now) / 10;
                tokio::time::sleep(Duration::from_millis(left.clamp(1000, 60_000))).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_normalised_and_checked() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_pin(&format!("sha256:{hex}")).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
        assert!(parse_pin("sha256:abc").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn files_are_private_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let (key_pem, csr) = key_and_csr("h1").unwrap();
        assert!(csr.contains("CERTIFICATE REQUEST"));
        let cert = NodeCert {
            host: "h1".into(),
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem,
            not_after_ms: 9_000,
            lifetime_ms: 3_000,
        };
        assert_eq!(load(&dir).unwrap(), None);
        save(&dir, &cert).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(cert.clone()));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("node.key")), 0o600);
        assert_eq!(mode(&dir.join("node.json")), 0o600);
        assert_eq!(cert.renew_at_ms(), 8_000);
        assert!(cert.check_valid(8_999, &dir).is_ok());
        assert!(
            cert.check_valid(9_000, &dir)
                .unwrap_err()
                .contains("expired")
        );
    }

    fn sample(key: &str, cert: &str, not_after_ms: u64) -> NodeCert {
        NodeCert {
            host: "h1".into(),
            ca_pem: "ca".into(),
            cert_pem: cert.into(),
            key_pem: key.into(),
            not_after_ms,
            lifetime_ms: 3_000,
        }
    }

    #[test]
    fn a_renewal_torn_after_any_file_reads_back_old_or_new_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let old = sample("old key", "old cert", 9_000);
        let new = sample("new key", "new cert", 12_000);
        save(&dir, &old).unwrap();
        // a crash after the new key's copy but before the new certificate's (the torn pair
        // an earlier layout read back): node.json still holds the old identity whole
        write_private(&dir.join("node.key"), new.key_pem.as_bytes()).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(old.clone()));
        // a crash before the rename of node.json: the temp file is ignored
        std::fs::write(dir.join("node.tmp"), b"{half").unwrap();
        assert_eq!(load(&dir).unwrap(), Some(old));
        save(&dir, &new).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(new));
    }

    #[test]
    fn files_of_the_earlier_layout_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in [("ca.pem", "ca"), ("node.pem", "cert"), ("node.key", "key")] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        std::fs::write(
            dir.join("node.json"),
            r#"{"host":"h1","not_after_ms":9000,"lifetime_ms":3000}"#,
        )
        .unwrap();
        assert_eq!(load(&dir).unwrap(), Some(sample("key", "cert", 9_000)));
    }
}
