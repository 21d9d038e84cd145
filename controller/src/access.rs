//! Who may call what: API tokens with roles, stored hashed, and the pure rule that maps a
//! route to the role it needs.
//!
//! | role | may |
//! |---|---|
//! | `read` | every `GET` of the CLI API (status, apps, revisions, rollout, instances, events, leader) |
//! | `deploy` | `read`, plus `POST /v1/sync` and rollbacks |
//! | `admin` | everything, tokens included; the controller's own token (`--token` or `<data-dir>/controller/token`) is admin |
//! | `join` | the agent API only, and only for one host: the token is bound to the first host that registers with it (or to `--host` at creation); then it registers, reads the assignment of and reports for that host alone; over TLS it buys that host a node certificate (`POST /v1/agents/join`), which then carries the same rights while the token exists |
//!
//! A token is `bt.<id>.<secret>` (id 12 hex digits, secret 32 random bytes in hex); the store
//! keeps `tokens/<id>` with the role, the host binding and the secret's sha256, never the
//! secret itself. Secrets are random, so one unsalted hash suffices (no password stretching).
//!
//! Owns the `tokens/` keys. The HTTP side (status codes, headers) is `api.rs`'s.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::{Core, CoreError};
use crate::store::{Outcome, Store, Txn};
use crate::token::constant_time_eq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Agents joining: the agent API for one host.
    Join,
    /// Read the CLI API.
    Read,
    /// Read, sync and roll back.
    Deploy,
    /// Everything.
    Admin,
}

impl TokenRole {
    /// The role's name, as `--role` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Join => "join",
            TokenRole::Read => "read",
            TokenRole::Deploy => "deploy",
            TokenRole::Admin => "admin",
        }
    }
}

impl std::str::FromStr for TokenRole {
    type Err = String;

    fn from_str(s: &str) -> Result<TokenRole, String> {
        match s {
            "join" => Ok(TokenRole::Join),
            "read" => Ok(TokenRole::Read),
            "deploy" => Ok(TokenRole::Deploy),
            "admin" => Ok(TokenRole::Admin),
            _ => Err(format!(
                "unknown role {s:?}; roles are join, read, deploy, admin"
            )),
        }
    }
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored token: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public part of the token (`bt.<id>.…`).
    pub id: String,
    /// What it may do.
    pub role: TokenRole,
    /// For `join` tokens: the host it speaks for, once bound.
    #[serde(default)]
    pub host: Option<String>,
    /// sha256 of the secret, hex.
    pub secret_sha256: String,
    /// When it was made (Unix ms).
    pub created_ms: u64,
}

/// `POST /v1/tokens` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// The role.
    pub role: TokenRole,
    /// Bind a `join` token to this host at once.
    #[serde(default)]
    pub host: Option<String>,
}

/// `POST /v1/tokens` answer: the token, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    /// The token text to pass as `--token` / `BERTH_TOKEN` / `berth agent --token`.
    pub token: String,
    /// Its id.
    pub id: String,
    /// Its role.
    pub role: TokenRole,
    /// Its host binding.
    pub host: Option<String>,
    /// The controller CA's fingerprint (`sha256:<hex>`) when it serves TLS: what an agent
    /// joining with this token pins (`berth agent --join … --ca-fingerprint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

/// `GET /v1/tokens` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The id.
    pub id: String,
    /// The role.
    pub role: TokenRole,
    /// The host binding.
    pub host: Option<String>,
    /// When it was made (Unix ms).
    pub created_ms: u64,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `controller` for the controller's own token, else the token id.
    pub token: String,
    /// Its role.
    pub role: TokenRole,
    /// For `join` tokens: the bound host.
    pub host: Option<String>,
}

impl Principal {
    /// The controller's own token.
    pub fn controller() -> Principal {
        Principal {
            token: "controller".into(),
            role: TokenRole::Admin,
            host: None,
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// A role at least this high among read < deploy < admin.
    Role(TokenRole),
    /// The agent API; `Some(host)`: for that host.
    Agent(Option<String>),
}

/// The need of `method` on the matched route `template` (`/v1/agents/{host}/report`) with
/// the path's `host` parameter, if any.
pub fn need(method: &axum::http::Method, template: &str, host: Option<&str>) -> Need {
    use axum::http::Method;
    match template {
        "/v1/agents/register" | "/v1/agents/join" => Need::Agent(None),
        "/v1/agents/{host}/assignment"
        | "/v1/agents/{host}/report"
        | "/v1/agents/{host}/certificate" => Need::Agent(host.map(str::to_string)),
        t if t.starts_with("/v1/tokens") => Need::Role(TokenRole::Admin),
        "/v1/sync" | "/v1/apps/{app}/rollback" => Need::Role(TokenRole::Deploy),
        _ if *method == Method::GET || *method == Method::HEAD => Need::Role(TokenRole::Read),
        _ => Need::Role(TokenRole::Admin),
    }
}

/// Whether `who` may do what `need` asks; `Err` says why not, for a 403.
pub fn allow(who: &Principal, need: &Need) -> Result<(), String> {
    if who.role == TokenRole::Admin {
        return Ok(());
    }
    match (need, who.role) {
        (Need::Role(want), TokenRole::Read | TokenRole::Deploy) if who.role >= *want => Ok(()),
        (Need::Role(want), _) => Err(format!(
            "token {} has role {}; this needs {want} (berth token create --role {want})",
            who.token, who.role
        )),
        (Need::Agent(_), TokenRole::Read | TokenRole::Deploy) => Err(format!(
            "token {} has role {}; the agent API needs a join token (berth token create --role join)",
            who.token, who.role
        )),
        (Need::Agent(None), _) => Ok(()),
        (Need::Agent(Some(host)), _) => match &who.host {
            Some(mine) if mine == host => Ok(()),
            Some(mine) => Err(format!(
                "token {} speaks for host {mine}, not {host}",
                who.token
            )),
            None => Err(format!(
                "token {} is bound to no host yet; register first (POST /v1/agents/register)",
                who.token
            )),
        },
    }
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn token_key(id: &str) -> String {
    format!("tokens/{id}")
}

/// Splits `bt.<id>.<secret>`.
fn parse(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix("bt.")?;
    let (id, secret) = rest.split_once('.')?;
    let ok = id.len() == 12
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && !secret.is_empty()
        && secret.len() <= 128;
    ok.then_some((id, secret))
}

fn random_hex(bytes: usize) -> Result<String, CoreError> {
    let mut raw = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .map_err(|e| {
            CoreError::Invalid(format!("no randomness for a token (/dev/urandom): {e}"))
        })?;
    Ok(hex::encode(raw))
}

fn decode(key: &str, bytes: &[u8]) -> Result<TokenRecord, CoreError> {
    serde_json::from_slice(bytes).map_err(|e| CoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

impl<S: Store> Core<S> {
    /// Makes a token with `role` (and for `join`, optionally bound to `host`); the text is
    /// returned once and only its hash is stored.
    pub async fn create_token(&self, req: TokenRequest) -> Result<IssuedToken, CoreError> {
        if let Some(host) = &req.host {
            if req.role != TokenRole::Join {
                return Err(CoreError::Invalid(
                    "only join tokens are bound to a host".into(),
                ));
            }
            if !berth_manifests::is_dns_label(host) {
                return Err(CoreError::Invalid(format!(
                    "host name {host:?} must be a DNS label"
                )));
            }
        }
        let id = random_hex(6)?;
        let secret = random_hex(32)?;
        let record = TokenRecord {
            id: id.clone(),
            role: req.role,
            host: req.host.clone(),
            secret_sha256: sha256_hex(&secret),
            created_ms: self.now_ms(),
        };
        let key = token_key(&id);
        let txn = Txn::new()
            .when_version(key.clone(), None)
            .put(key, serde_json::to_vec(&record).unwrap_or_default());
        match self.store().commit(txn).await? {
            Outcome::Applied { .. } => Ok(IssuedToken {
                token: format!("bt.{id}.{secret}"),
                id,
                role: req.role,
                host: req.host,
                ca_fingerprint: None,
            }),
            Outcome::Conflict => Err(CoreError::Conflict {
                what: format!("token {id}"),
            }),
        }
    }

    /// Every token, without secrets.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, CoreError> {
        let mut out = Vec::new();
        for (key, entry) in self.store().list("tokens/").await? {
            let r = decode(&key, &entry.value)?;
            out.push(TokenInfo {
                id: r.id,
                role: r.role,
                host: r.host,
                created_ms: r.created_ms,
            });
        }
        Ok(out)
    }

    /// Deletes token `id`.
    pub async fn revoke_token(&self, id: &str) -> Result<(), CoreError> {
        let key = token_key(id);
        let Some(entry) = self.store().get(&key).await? else {
            return Err(CoreError::Invalid(format!(
                "no token {id}; see berth token list"
            )));
        };
        let txn = Txn::new()
            .when_version(key.clone(), Some(entry.version))
            .delete(key);
        match self.store().commit(txn).await? {
            Outcome::Applied { .. } => Ok(()),
            Outcome::Conflict => Err(CoreError::Conflict {
                what: format!("token {id}"),
            }),
        }
    }

    /// Whether token `id` exists (was not revoked).
    pub async fn token_exists(&self, id: &str) -> Result<bool, CoreError> {
        Ok(self.store().get(&token_key(id)).await?.is_some())
    }

    /// The principal of a stored token's text, if it is one.
    pub async fn principal(&self, text: &str) -> Result<Option<Principal>, CoreError> {
        let Some((id, secret)) = parse(text) else {
            return Ok(None);
        };
        let key = token_key(id);
        let Some(entry) = self.store().get(&key).await? else {
            return Ok(None);
        };
        let record = decode(&key, &entry.value)?;
        if !constant_time_eq(
            sha256_hex(secret).as_bytes(),
            record.secret_sha256.as_bytes(),
        ) {
            return Ok(None);
        }
        Ok(Some(Principal {
            token: record.id,
            role: record.role,
            host: record.host,
        }))
    }

    /// Binds join token `id` to `host` when it is not bound yet; `Err` when it is bound to
    /// another host (or another registration bound it first).
    pub async fn bind_token(&self, id: &str, host: &str) -> Result<(), String> {
        let key = token_key(id);
        let entry = match self.store().get(&key).await {
            Ok(Some(e)) => e,
            Ok(None) => return Err(format!("token {id} was revoked")),
            Err(e) => return Err(e.to_string()),
        };
        let mut record = decode(&key, &entry.value).map_err(|e| e.to_string())?;
        match &record.host {
            Some(bound) if bound == host => return Ok(()),
            Some(bound) => {
                return Err(format!("token {id} speaks for host {bound}, not {host}"));
            }
            None => {}
        }
        record.host = Some(host.to_string());
        let txn = Txn::new()
            .when_version(key.clone(), Some(entry.version))
            .put(key, serde_json::to_vec(&record).unwrap_or_default());
        match self.store().commit(txn).await {
            Ok(Outcome::Applied { .. }) => Ok(()),
            Ok(Outcome::Conflict) => Err(format!(
                "token {id} was bound by another registration at the same time"
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::Method;

    fn who(role: TokenRole, host: Option<&str>) -> Principal {
        Principal {
            token: "t".into(),
            role,
            host: host.map(str::to_string),
        }
    }

    #[test]
    fn roles_grant_what_the_table_says() {
        let status = need(&Method::GET, "/v1/status", None);
        let sync = need(&Method::POST, "/v1/sync", None);
        let tokens = need(&Method::POST, "/v1/tokens", None);
        let report = need(&Method::POST, "/v1/agents/{host}/report", Some("h1"));
        let register = need(&Method::POST, "/v1/agents/register", None);
        let read = who(TokenRole::Read, None);
        let deploy = who(TokenRole::Deploy, None);
        let admin = who(TokenRole::Admin, None);
        let h1 = who(TokenRole::Join, Some("h1"));
        let h2 = who(TokenRole::Join, Some("h2"));
        let unbound = who(TokenRole::Join, None);
        assert!(allow(&read, &status).is_ok());
        assert!(allow(&read, &sync).unwrap_err().contains("needs deploy"));
        assert!(allow(&deploy, &sync).is_ok());
        assert!(allow(&deploy, &tokens).is_err());
        assert!(allow(&admin, &tokens).is_ok());
        assert!(allow(&admin, &report).is_ok());
        assert!(allow(&h1, &report).is_ok());
        assert!(allow(&h2, &report).unwrap_err().contains("not h1"));
        assert!(allow(&unbound, &report).is_err());
        assert!(allow(&unbound, &register).is_ok());
        assert!(allow(&h1, &status).is_err());
        assert!(allow(&read, &register).is_err());
    }

    #[test]
    fn token_text_has_a_fixed_shape() {
        assert_eq!(parse("bt.0123456789ab.ff"), Some(("0123456789ab", "ff")));
        assert_eq!(parse("bt.0123456789ab."), None);
        assert_eq!(parse("bt.short.ff"), None);
        assert_eq!(parse("0123456789ab.ff"), None);
    }

    #[test]
    fn roles_parse_from_their_names() {
        for role in [
            TokenRole::Join,
            TokenRole::Read,
            TokenRole::Deploy,
            TokenRole::Admin,
        ] {
            assert_eq!(role.as_str().parse::<TokenRole>().unwrap(), role);
        }
        assert!("root".parse::<TokenRole>().is_err());
    }
}
