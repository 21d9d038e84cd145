//! The HA store: the real etcd (v3 API over gRPC, `etcd-client`), so several controllers
//! share one state and elect a leader ([`crate::leader`]). A berth transaction is one etcd
//! `Txn`: version conditions become `Compare`s, puts and deletes the success branch, so
//! check-and-write is atomic on the etcd cluster.
//!
//! Mapping:
//! - every key lives under a namespace (default `/berth/`), so several berth clusters or
//!   tests may share one etcd;
//! - berth's store revision is etcd's revision minus one, and an entry's version its
//!   `mod_revision` minus one (etcd starts at revision 1 with nothing written, berth at 0);
//! - `Version(key, None)` is etcd's `version(key) == 0` (absent);
//! - several ops on one key in a transaction (which etcd refuses) collapse to the last one,
//!   which is what applying them in order gives;
//! - a transaction that writes nothing (only deletes of absent keys) leaves etcd's revision
//!   unchanged; it reports the current revision.
//!
//! etcd limits a transaction to `--max-txn-ops` operations (128 by default) and a request to
//! `--max-request-bytes` (1.5 MiB): run it with larger limits for big clusters
//! (docs/controller.md). Owns nothing but its client; it never starts or stops etcd.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, TxnOp, TxnResponse,
};

use super::{Condition, Entry, Op, Outcome, Store, StoreError, Txn, check_txn};

/// The default key namespace.
pub const DEFAULT_NAMESPACE: &str = "/berth/";

/// Keys read per `list` page.
const PAGE: i64 = 1000;

/// Deadline of one store call (etcd answers in milliseconds when it has a quorum).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest gRPC message read or written (a `list` page of big values).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The etcd-backed [`Store`].
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    namespace: String,
    endpoints: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// Parses `etcd://HOST:PORT[,HOST:PORT...]` into client endpoints (`http://HOST:PORT`).
pub fn parse_url(url: &str) -> Result<Vec<String>, StoreError> {
    let bad = |reason: &'static str| StoreError::BadKey {
        key: url.to_string(),
        reason,
    };
    let rest = url
        .strip_prefix("etcd://")
        .ok_or(bad("an etcd store is etcd://HOST:PORT[,HOST:PORT...]"))?;
    let endpoints: Vec<String> = rest
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| format!("http://{}", s.trim_end_matches('/')))
        .collect();
    if endpoints.is_empty() {
        return Err(bad(
            "names no endpoint; use etcd://HOST:PORT[,HOST:PORT...]",
        ));
    }
    Ok(endpoints)
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://HOST:PORT`) and checks that it
    /// answers; keys live under `namespace`.
    pub async fn connect(endpoints: &[String], namespace: &str) -> Result<EtcdStore, StoreError> {
        let joined = endpoints.join(",");
        let unreachable = |reason: String| StoreError::Backend {
            backend: "etcd",
            reason: format!("cannot reach etcd at {joined}: {reason}; is etcd running there?"),
        };
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let store = EtcdStore {
            client,
            namespace: namespace.to_string(),
            endpoints: joined.clone(),
        };
        store
            .revision()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(store)
    }

    /// The client, for the leader election on the same cluster.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The namespace prefix of every key.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The endpoints, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// `key` under the namespace.
    pub fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn backend(&self, what: &str, err: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            backend: "etcd",
            reason: format!("{what} at {}: {err}", self.endpoints),
        }
    }

    async fn timed<T, F>(&self, what: &str, call: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.backend(what, e)),
            Err(_) => Err(self.backend(what, format!("no answer within {CALL_TIMEOUT:?}"))),
        }
    }

    /// Runs `txn` with `extra` compares (the leader's fence) added to its conditions.
    pub(crate) async fn commit_with(
        &self,
        txn: Txn,
        extra: Vec<Compare>,
    ) -> Result<Outcome, StoreError> {
        check_txn(&txn)?;
        let mut compares = extra;
        for Condition::Version(key, want) in &txn.conditions {
            let key = self.full_key(key);
            compares.push(match want {
                None => Compare::version(key, CompareOp::Equal, 0),
                Some(v) => Compare::mod_revision(key, CompareOp::Equal, to_etcd(*v)),
            });
        }
        let ops: Vec<TxnOp> = last_op_per_key(txn.ops)
            .into_iter()
            .map(|op| match op {
                Op::Put(key, value) => TxnOp::put(self.full_key(&key), Vec::from(value), None),
                Op::Delete(key) => TxnOp::delete(self.full_key(&key), None),
            })
            .collect();
        let request = etcd_client::Txn::new().when(compares).and_then(ops);
        let mut kv = self.kv();
        let response: TxnResponse = self.timed("transaction", kv.txn(request)).await?;
        if !response.succeeded() {
            return Ok(Outcome::Conflict);
        }
        let revision = response.header().map_or(0, |h| h.revision());
        Ok(Outcome::Applied {
            revision: from_etcd(revision),
        })
    }
}

/// etcd revision → berth revision.
fn from_etcd(revision: i64) -> u64 {
    u64::try_from(revision.saturating_sub(1)).unwrap_or(0)
}

/// berth version → etcd revision.
fn to_etcd(version: u64) -> i64 {
    i64::try_from(version).map_or(i64::MAX, |v| v.saturating_add(1))
}

/// The ops of a transaction with only the last op on each key kept, in their order: etcd
/// refuses two ops on one key, and applying them in order leaves the last one's effect.
fn last_op_per_key(ops: Vec<Op>) -> Vec<Op> {
    let key = |op: &Op| match op {
        Op::Put(k, _) | Op::Delete(k) => k.clone(),
    };
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        last.insert(key(op), i);
    }
    ops.into_iter()
        .enumerate()
        .filter(|(i, op)| last.get(&key(op)) == Some(i))
        .map(|(_, op)| op)
        .collect()
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // every byte was 0xff (or no prefix): to the end of the keyspace
    vec![0]
}

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut kv = self.kv();
        let response = self.timed("get", kv.get(self.full_key(key), None)).await?;
        Ok(response.kvs().first().map(|kv| Entry {
            value: kv.value().to_vec(),
            version: from_etcd(kv.mod_revision()),
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        let full = self.full_key(prefix);
        let end = prefix_end(full.as_bytes());
        let mut start = full.into_bytes();
        let mut at = 0;
        let mut out = Vec::new();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if at > 0 {
                // later pages read the same snapshot as the first
                options = options.with_revision(at);
            }
            let mut kv = self.kv();
            let response = self
                .timed("list", kv.get(start.clone(), Some(options)))
                .await?;
            if at == 0 {
                at = response.header().map_or(0, |h| h.revision());
            }
            for item in response.kvs() {
                let key = item.key_str().map_err(|e| self.backend("list", e))?;
                let Some(key) = key.strip_prefix(self.namespace.as_str()) else {
                    continue;
                };
                out.push((
                    key.to_string(),
                    Entry {
                        value: item.value().to_vec(),
                        version: from_etcd(item.mod_revision()),
                    },
                ));
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn commit(&self, txn: Txn) -> Result<Outcome, StoreError> {
        self.commit_with(txn, Vec::new()).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let mut kv = self.kv();
        let options = GetOptions::new().with_count_only();
        let response = self
            .timed("revision", kv.get(self.full_key(""), Some(options)))
            .await?;
        Ok(from_etcd(response.header().map_or(0, |h| h.revision())))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn etcd_urls_name_every_endpoint() {
        assert_eq!(
            parse_url("etcd://127.0.0.1:2379,10.0.0.2:2379/").unwrap(),
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert!(parse_url("http://127.0.0.1:2379").is_err());
        assert!(parse_url("etcd://").is_err());
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/berth/apps/"), b"/berth/apps0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), [0]);
    }

    #[test]
    fn later_ops_on_a_key_replace_earlier_ones() {
        let ops = vec![
            Op::Put("a".into(), bytes::Bytes::from_static(b"1")),
            Op::Put("b".into(), bytes::Bytes::from_static(b"2")),
            Op::Delete("a".into()),
        ];
        assert_eq!(
            last_op_per_key(ops),
            [
                Op::Put("b".into(), bytes::Bytes::from_static(b"2")),
                Op::Delete("a".into())
            ]
        );
    }

    #[tokio::test]
    async fn etcd_store_passes_the_conformance_suite() {
        let etcd = berth_testkit::Etcd::start().unwrap();
        let store = EtcdStore::connect(&[etcd.endpoint()], DEFAULT_NAMESPACE)
            .await
            .unwrap();
        crate::store::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn lists_larger_than_a_page_come_back_whole_and_sorted() {
        let etcd = berth_testkit::Etcd::start().unwrap();
        let store = EtcdStore::connect(&[etcd.endpoint()], "/t/").await.unwrap();
        let n = usize::try_from(PAGE).unwrap() * 2 + 7;
        let mut txn = Txn::new();
        for i in 0..n {
            txn = txn.put(format!("events/{i:08}"), b"e".to_vec());
        }
        store.commit(txn).await.unwrap();
        store
            .commit(Txn::new().put("eventsx", b"other".to_vec()))
            .await
            .unwrap();
        let keys: Vec<String> = store
            .list("events/")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys.len(), n);
        assert_eq!(keys[0], "events/00000000");
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[tokio::test]
    async fn namespaces_keep_two_stores_on_one_etcd_apart() {
        let etcd = berth_testkit::Etcd::start().unwrap();
        let a = EtcdStore::connect(&[etcd.endpoint()], "/a/").await.unwrap();
        let b = EtcdStore::connect(&[etcd.endpoint()], "/b/").await.unwrap();
        a.commit(Txn::new().put("k", b"from a".to_vec()))
            .await
            .unwrap();
        assert_eq!(b.get("k").await.unwrap(), None);
        assert!(b.list("").await.unwrap().is_empty());
        assert_eq!(a.list("").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_etcd_is_named_in_the_error() {
        let port = berth_testkit::free_port().unwrap();
        let endpoint = format!("http://127.0.0.1:{port}");
        let err = EtcdStore::connect(std::slice::from_ref(&endpoint), DEFAULT_NAMESPACE)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&endpoint), "{err}");
        assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
    }
}
