//! The control plane's certificates (issue 7): the controller's CA, its serving certificate,
//! node certificates for agents and the identity a client certificate proves.
//!
//! - The CA (ECDSA P-256, 10 years) is made on the first start and kept in the store under
//!   `pki/ca` (certificate and key, PEM), so every controller sharing an etcd store signs with
//!   the same CA; it is created with a create-if-absent transaction, so controllers starting
//!   together agree on one. Each controller writes the certificate (never the key) to
//!   `<data-dir>/controller/ca.pem` for the CLI on its host.
//! - The serving certificate is made at each start for `--listen`'s address, `localhost`,
//!   127.0.0.1 and `--advertise`'s host (serverAuth; held in memory only).
//! - A node certificate is signed from the agent's CSR (its key never leaves the agent) for
//!   the host name alone (CN and DNS SAN; the CSR's own names are ignored), clientAuth, for
//!   `--node-cert-lifetime` (24 h by default). `pki/nodes/<host>` records which join token
//!   the host joined with: revoking that token revokes the host's certificates.
//! - A controller forwarding an agent's request to the leader (HA) presents a controller
//!   certificate (CN `berth controller <member>`: a space, so never a host name).
//!
//! Owns the `pki/` keys.

use std::sync::Arc;
use std::time::Duration;

use berth_manifests::wire::NodeCertificate;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::{Core, CoreError};
use crate::store::{Outcome, Store, StoreError, Txn};

/// The store key of the CA.
pub const CA_KEY: &str = "pki/ca";
/// Default lifetime of a node certificate.
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// CN prefix of controller certificates (forwarding between controllers).
pub const CONTROLLER_CN_PREFIX: &str = "berth controller ";
/// Validity of certificates starts this long before their issue, for clocks a little behind.
const CLOCK_SKEW_MS: u64 = 60_000;
/// Lifetime of the CA.
const CA_LIFETIME_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
/// Lifetime of serving and controller certificates (made again at each start).
const SERVING_LIFETIME_MS: u64 = 365 * 24 * 3600 * 1000;

/// The CA as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CaRecord {
    cert_pem: String,
    key_pem: String,
    created_ms: u64,
}

/// Which join token a host joined with (`pki/nodes/<host>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The host.
    pub host: String,
    /// The join token's id: revoking it revokes the host's certificates.
    pub token: String,
    /// When its newest certificate was issued (Unix ms).
    pub issued_ms: u64,
    /// When that certificate expires (Unix ms).
    pub not_after_ms: u64,
}

/// Who a verified client certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// An agent, for this host.
    Node(String),
    /// Another controller (member id), forwarding to the leader.
    Controller(String),
}

/// The CA and what the controller signs with it.
pub struct Pki {
    ca_pem: String,
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    node_lifetime: Duration,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::Invalid(format!("{what}: {e}"))
}

fn internal(what: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::Store(StoreError::Backend {
        backend: "pki",
        reason: format!("{what}: {e}"),
    })
}

fn time_of(ms: u64) -> Result<time::OffsetDateTime, CoreError> {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|e| internal("a time", e))
}

fn random_serial() -> Result<SerialNumber, CoreError> {
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .map_err(|e| internal("randomness for a serial number (/dev/urandom)", e))?;
    raw[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&raw))
}

/// `sha256:<hex>` of a certificate's DER: what `--ca-fingerprint` pins.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// The DER of the first certificate in `pem`.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (parsed.label == "CERTIFICATE").then_some(parsed.contents)
}

/// Who a client certificate (already verified against the CA by rustls) speaks for: its
/// subject's common name.
pub fn peer_identity(der: &[u8]) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    match cn.strip_prefix(CONTROLLER_CN_PREFIX) {
        Some(member) => Some(PeerIdentity::Controller(member.to_string())),
        None if berth_manifests::is_dns_label(cn) => Some(PeerIdentity::Node(cn.to_string())),
        None => None,
    }
}

fn ca_params(now_ms: u64) -> Result<CertificateParams, CoreError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "berth controller CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = time_of(now_ms.saturating_sub(CLOCK_SKEW_MS))?;
    params.not_after = time_of(now_ms.saturating_add(CA_LIFETIME_MS))?;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

impl Pki {
    /// The CA from the store, made and stored when there is none (create-if-absent: of
    /// controllers starting together, one CA wins and all use it).
    pub async fn load_or_create<S: Store>(
        store: &S,
        now_ms: u64,
        node_lifetime: Duration,
    ) -> Result<Pki, CoreError> {
        for _ in 0..3 {
            if let Some(entry) = store.get(CA_KEY).await? {
                let record: CaRecord =
                    serde_json::from_slice(&entry.value).map_err(|e| CoreError::Corrupt {
                        key: CA_KEY.into(),
                        reason: e.to_string(),
                    })?;
                return Pki::from_record(&record, node_lifetime);
            }
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| internal("generating the CA key", e))?;
            let cert = ca_params(now_ms)?
                .self_signed(&key)
                .map_err(|e| internal("signing the CA certificate", e))?;
            let record = CaRecord {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                created_ms: now_ms,
            };
            let txn = Txn::new().when_version(CA_KEY.to_string(), None).put(
                CA_KEY.to_string(),
                serde_json::to_vec(&record).unwrap_or_default(),
            );
            if let Outcome::Applied { .. } = store.commit(txn).await? {
                tracing::info!("made the controller's CA (stored under {CA_KEY})");
                return Pki::from_record(&record, node_lifetime);
            }
        }
        Err(CoreError::Conflict {
            what: format!("the CA ({CA_KEY})"),
        })
    }

    fn from_record(record: &CaRecord, node_lifetime: Duration) -> Result<Pki, CoreError> {
        let key = KeyPair::from_pem(&record.key_pem).map_err(|e| CoreError::Corrupt {
            key: CA_KEY.into(),
            reason: format!("CA key: {e}"),
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&record.cert_pem, key).map_err(|e| CoreError::Corrupt {
                key: CA_KEY.into(),
                reason: format!("CA certificate: {e}"),
            })?;
        let ca_der = pem_to_der(&record.cert_pem).ok_or_else(|| CoreError::Corrupt {
            key: CA_KEY.into(),
            reason: "CA certificate is no PEM certificate".into(),
        })?;
        Ok(Pki {
            ca_pem: record.cert_pem.clone(),
            ca_der,
            issuer,
            node_lifetime,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA's fingerprint, `sha256:<hex>` (what agents pin with `--ca-fingerprint`).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.ca_der)
    }

    /// The lifetime of node certificates.
    pub fn node_lifetime(&self) -> Duration {
        self.node_lifetime
    }

    /// A serving certificate for `names` (DNS names or IP addresses) and its key.
    fn leaf(
        &self,
        cn: &str,
        names: &[String],
        usage: ExtendedKeyUsagePurpose,
        now_ms: u64,
    ) -> Result<(rcgen::Certificate, KeyPair), CoreError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| internal("generating a key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        for name in names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|e| invalid(&format!("certificate name {name:?}"), e))?,
                ),
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.not_before = time_of(now_ms.saturating_sub(CLOCK_SKEW_MS))?;
        params.not_after = time_of(now_ms.saturating_add(SERVING_LIFETIME_MS))?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| internal("signing a certificate", e))?;
        Ok((cert, key))
    }

    /// The rustls server config: a serving certificate for `names`, client certificates
    /// requested (not required: CLI and API tokens keep working) and verified against the CA.
    pub fn server_config(
        &self,
        names: &[String],
        now_ms: u64,
    ) -> Result<Arc<rustls::ServerConfig>, CoreError> {
        let (cert, key) = self.leaf(
            "berth controller",
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            now_ms,
        )?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))
            .map_err(|e| internal("trusting the CA", e))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| internal("the client certificate verifier", e))?;
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| internal("TLS versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert.der().clone()], key_der)
            .map_err(|e| internal("the serving certificate", e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client identity (certificate and key, PEM) for controller `member`, for forwarding
    /// agents' requests to the leader.
    pub fn controller_identity(&self, member: &str, now_ms: u64) -> Result<String, CoreError> {
        let (cert, key) = self.leaf(
            &format!("{CONTROLLER_CN_PREFIX}{member}"),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            now_ms,
        )?;
        Ok(format!("{}{}", key.serialize_pem(), cert.pem()))
    }

    /// Signs `csr_pem`'s key as host `host`'s node certificate.
    pub fn sign_node(
        &self,
        host: &str,
        csr_pem: &str,
        now_ms: u64,
    ) -> Result<NodeCertificate, CoreError> {
        if !berth_manifests::is_dns_label(host) {
            return Err(CoreError::Invalid(format!(
                "host name {host:?} must be a DNS label"
            )));
        }
        if csr_pem.len() > 16 * 1024 {
            return Err(CoreError::Invalid(
                "certificate signing request larger than 16 KiB".into(),
            ));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            invalid(
                &format!("host {host}'s certificate signing request (PEM PKCS#10, self-signed)"),
                e,
            )
        })?;
        let lifetime_ms = u64::try_from(self.node_lifetime.as_millis()).unwrap_or(u64::MAX);
        let not_after_ms = now_ms.saturating_add(lifetime_ms);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(
            host.to_string()
                .try_into()
                .map_err(|e| invalid(&format!("host name {host:?}"), e))?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = time_of(now_ms.saturating_sub(CLOCK_SKEW_MS))?;
        params.not_after = time_of(not_after_ms)?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| internal(&format!("signing host {host}'s certificate"), e))?;
        Ok(NodeCertificate {
            name: host.to_string(),
            certificate: cert.pem(),
            ca: self.ca_pem.clone(),
            not_after_ms,
            lifetime_ms,
        })
    }

    /// Writes the CA certificate to `<data-dir>/controller/ca.pem` (mode 0644: it is public).
    pub fn write_ca_file(&self, data_dir: &std::path::Path) -> std::io::Result<()> {
        let path = ca_path(data_dir);
        let tmp = path.with_extension("pem.tmp");
        std::fs::write(&tmp, &self.ca_pem)?;
        std::fs::rename(&tmp, &path)
    }
}

/// `<data-dir>/controller/ca.pem`: the CA certificate the CLI on the controller's host trusts.
pub fn ca_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("controller").join("ca.pem")
}

fn node_key(host: &str) -> String {
    format!("pki/nodes/{host}")
}

impl<S: Store> Core<S> {
    /// Records that `host` holds a certificate issued under join token `token` until
    /// `not_after_ms`.
    pub async fn record_node(
        &self,
        host: &str,
        token: &str,
        not_after_ms: u64,
    ) -> Result<(), CoreError> {
        let record = NodeRecord {
            host: host.to_string(),
            token: token.to_string(),
            issued_ms: self.now_ms(),
            not_after_ms,
        };
        let key = node_key(host);
        let txn = Txn::new().put(key, serde_json::to_vec(&record).unwrap_or_default());
        self.store().commit(txn).await?;
        Ok(())
    }

    /// The record of a joined host.
    pub async fn node(&self, host: &str) -> Result<Option<NodeRecord>, CoreError> {
        let key = node_key(host);
        let Some(entry) = self.store().get(&key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&entry.value)
            .map(Some)
            .map_err(|e| CoreError::Corrupt {
                key,
                reason: e.to_string(),
            })
    }

    /// The principal a node certificate for `host` stands for; `Err` with the reason when
    /// the host is unknown or its join token was revoked.
    pub async fn node_principal(
        &self,
        host: &str,
    ) -> Result<Result<crate::access::Principal, String>, CoreError> {
        let Some(node) = self.node(host).await? else {
            return Ok(Err(format!(
                "host {host} has a certificate from this controller's CA but never joined \
                 this cluster; join it with a join token (berth token create --role join)"
            )));
        };
        if !self.token_exists(&node.token).await? {
            return Ok(Err(format!(
                "host {host}'s join token {} was revoked, and with it the host's \
                 certificates; join it again with a new join token",
                node.token
            )));
        }
        Ok(Ok(crate::access::Principal {
            token: node.token,
            role: crate::access::TokenRole::Join,
            host: Some(host.to_string()),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;

    const NOW: u64 = 1_800_000_000_000;

    #[tokio::test]
    async fn the_ca_is_made_once_and_signs_only_the_host_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let pki = Pki::load_or_create(&store, NOW, NODE_CERT_LIFETIME)
            .await
            .unwrap();
        let again = Pki::load_or_create(&store, NOW + 5, NODE_CERT_LIFETIME)
            .await
            .unwrap();
        assert_eq!(pki.fingerprint(), again.fingerprint());
        assert!(pki.fingerprint().starts_with("sha256:"));

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["evil".to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "evil");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let issued = again.sign_node("h1", &csr, NOW).unwrap();
        assert_eq!(issued.not_after_ms, NOW + 24 * 3600 * 1000);
        let der = pem_to_der(&issued.certificate).unwrap();
        assert_eq!(peer_identity(&der), Some(PeerIdentity::Node("h1".into())));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(sans.value.general_names.len(), 1, "{:?}", sans.value);
        assert!(format!("{:?}", sans.value).contains("h1"));

        assert!(again.sign_node("Not A Label", &csr, NOW).is_err());
        assert!(again.sign_node("h1", "not a csr", NOW).is_err());
        let ident = again.controller_identity("m1", NOW).unwrap();
        let der = pem_to_der(&ident[ident.find("-----BEGIN CERTIFICATE").unwrap()..]).unwrap();
        assert_eq!(
            peer_identity(&der),
            Some(PeerIdentity::Controller("m1".into()))
        );
    }
}
