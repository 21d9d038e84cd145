//! The controller's store: a small key-value interface shaped like etcd's, so the embedded
//! default ([`redb::RedbStore`], one file under the data dir) and the HA backend
//! ([`etcd::EtcdStore`], the real etcd) implement the same trait and pass the same
//! [`conformance`] suite.
//!
//! Keys are `/`-separated strings (`apps/web/revisions/00000003`); values are bytes (the
//! callers store JSON). Every write goes through [`Txn`]: conditions on the versions of keys,
//! then puts and deletes, applied all-or-nothing. Each applied transaction that writes bumps the
//! store's revision; each entry remembers the revision that last wrote it (its version), which is
//! what optimistic concurrency compares.
//!
//! The store knows nothing of apps or hosts: the layers above give keys their meaning.

pub mod etcd;
pub mod redb;

use std::future::Future;

/// A value and the store revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The bytes stored.
    pub value: Vec<u8>,
    /// The store revision of the transaction that last wrote this key (≥ 1).
    pub version: u64,
}

/// A condition a transaction checks before it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The key's version equals this one (`None`: the key does not exist).
    Version(String, Option<u64>),
}

/// A write in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets a key.
    Put(String, bytes::Bytes),
    /// Removes a key (no error if absent).
    Delete(String),
}

/// Conditions and writes applied all-or-nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Checked first; any failing condition makes the transaction a no-op.
    pub conditions: Vec<Condition>,
    /// Applied in order when every condition holds.
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Requires `key` to be at `version` (`None`: absent).
    pub fn when_version(mut self, key: impl Into<String>, version: Option<u64>) -> Txn {
        self.conditions
            .push(Condition::Version(key.into(), version));
        self
    }

    /// Sets `key` to `value`.
    pub fn put(mut self, key: impl Into<String>, value: impl Into<bytes::Bytes>) -> Txn {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }

    /// Removes `key`.
    pub fn delete(mut self, key: impl Into<String>) -> Txn {
        self.ops.push(Op::Delete(key.into()));
        self
    }
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every condition held; the writes are durable at this store revision.
    Applied {
        /// The new store revision.
        revision: u64,
    },
    /// A condition failed; nothing was written.
    Conflict,
}

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store file could not be opened or created.
    #[error("cannot open store {path}: {reason}; is another berth controller using it?")]
    Open {
        /// The store file.
        path: std::path::PathBuf,
        /// The backend's words.
        reason: String,
    },
    /// The backend failed a read or write.
    #[error("store {backend} failed: {reason}")]
    Backend {
        /// Which backend (`redb`, `etcd`).
        backend: &'static str,
        /// The backend's words.
        reason: String,
    },
    /// A write on a controller that does not lead (HA): the leader takes writes.
    #[error("write refused: {reason}; the leader controller takes writes (retry)")]
    NotLeader {
        /// Why this controller may not write.
        reason: String,
    },
    /// A key or value breaks the store's rules.
    #[error("store key {key:?}: {reason}")]
    BadKey {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
}

impl StoreError {
    /// The error's class.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            StoreError::Open { .. } => crate::ErrorKind::Unavailable,
            StoreError::Backend { .. } => crate::ErrorKind::Unavailable,
            StoreError::NotLeader { .. } => crate::ErrorKind::Unavailable,
            StoreError::BadKey { .. } => crate::ErrorKind::InvalidInput,
        }
    }
}

/// Largest value the store accepts (etcd's default request limit is 1.5 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Checks a key: non-empty, printable ASCII, at most 512 bytes.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let reason = if key.is_empty() {
        Some("is empty")
    } else if key.len() > 512 {
        Some("is longer than 512 bytes")
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        Some("has characters other than printable ASCII")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::BadKey {
            key: key.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_txn(txn: &Txn) -> Result<(), StoreError> {
    for cond in &txn.conditions {
        let Condition::Version(key, _) = cond;
        check_key(key)?;
    }
    for op in &txn.ops {
        match op {
            Op::Put(key, value) => {
                check_key(key)?;
                if value.len() > MAX_VALUE_BYTES {
                    return Err(StoreError::BadKey {
                        key: key.clone(),
                        reason: "value is larger than 1 MiB",
                    });
                }
            }
            Op::Delete(key) => check_key(key)?,
        }
    }
    Ok(())
}

/// The store interface: what the controller uses, nothing more.
pub trait Store: Send + Sync + 'static {
    /// The entry at `key`, if any.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Entry>, StoreError>> + Send;

    /// Every entry whose key starts with `prefix`, sorted by key.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<(String, Entry)>, StoreError>> + Send;

    /// Applies `txn` all-or-nothing; durable when it returns [`Outcome::Applied`]. Several
    /// ops on one key leave the last one's effect. A transaction that changes nothing may
    /// leave the revision where it was (etcd does).
    fn commit(&self, txn: Txn) -> impl Future<Output = Result<Outcome, StoreError>> + Send;

    /// The store's current revision (0 when nothing was ever written).
    fn revision(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The store a controller runs on, chosen at start (youki's enum-over-backends pattern):
/// the embedded file, or etcd with the leader's fence.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// The embedded default.
    Redb(redb::RedbStore),
    /// etcd, written only by the elected leader (boxed: the client is large).
    Etcd(Box<crate::leader::FencedStore>),
}

impl Store for AnyStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        match self {
            AnyStore::Redb(s) => s.get(key).await,
            AnyStore::Etcd(s) => s.get(key).await,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        match self {
            AnyStore::Redb(s) => s.list(prefix).await,
            AnyStore::Etcd(s) => s.list(prefix).await,
        }
    }

    async fn commit(&self, txn: Txn) -> Result<Outcome, StoreError> {
        match self {
            AnyStore::Redb(s) => s.commit(txn).await,
            AnyStore::Etcd(s) => s.commit(txn).await,
        }
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        match self {
            AnyStore::Redb(s) => s.revision().await,
            AnyStore::Etcd(s) => s.revision().await,
        }
    }
}

/// The behaviour every [`Store`] must have, as async checks a backend's tests call with a
/// fresh, empty store (containerd's content testsuite pattern). Panics on a failed check.
#[cfg(any(test, feature = "conformance"))]
#[allow(clippy::unwrap_used, clippy::panic)]
pub mod conformance {
    use super::*;

    /// Runs every check in order against `store`, which must start empty.
    pub async fn run_all<S: Store>(store: &S) {
        empty_store_has_revision_zero(store).await;
        put_then_get_returns_value_and_version(store).await;
        conditions_gate_writes(store).await;
        failed_condition_writes_nothing(store).await;
        list_returns_prefix_sorted(store).await;
        delete_removes_and_bumps_revision(store).await;
        the_last_op_on_a_key_wins(store).await;
        bad_keys_and_large_values_are_refused(store).await;
    }

    async fn empty_store_has_revision_zero<S: Store>(store: &S) {
        assert_eq!(store.revision().await.unwrap(), 0);
        assert_eq!(store.get("a").await.unwrap(), None);
    }

    async fn put_then_get_returns_value_and_version<S: Store>(store: &S) {
        let out = store
            .commit(Txn::new().put("a", b"1".to_vec()))
            .await
            .unwrap();
        let Outcome::Applied { revision } = out else {
            panic!("put conflicted")
        };
        assert_eq!(revision, 1);
        let entry = store.get("a").await.unwrap().unwrap();
        assert_eq!(
            entry,
            Entry {
                value: b"1".to_vec(),
                version: 1
            }
        );
        assert_eq!(store.revision().await.unwrap(), 1);
    }

    async fn conditions_gate_writes<S: Store>(store: &S) {
        // create-if-absent fails on an existing key, succeeds on a new one
        let out = store
            .commit(Txn::new().when_version("a", None).put("a", b"x".to_vec()))
            .await;
        assert_eq!(out.unwrap(), Outcome::Conflict);
        let out = store
            .commit(Txn::new().when_version("b", None).put("b", b"2".to_vec()))
            .await;
        assert_eq!(out.unwrap(), Outcome::Applied { revision: 2 });
        // compare-and-swap on the current version works; on a stale one it conflicts
        let out = store.commit(
            Txn::new()
                .when_version("a", Some(1))
                .put("a", b"3".to_vec()),
        );
        assert_eq!(out.await.unwrap(), Outcome::Applied { revision: 3 });
        let out = store.commit(
            Txn::new()
                .when_version("a", Some(1))
                .put("a", b"4".to_vec()),
        );
        assert_eq!(out.await.unwrap(), Outcome::Conflict);
        assert_eq!(store.get("a").await.unwrap().unwrap().value, b"3");
        assert_eq!(store.get("a").await.unwrap().unwrap().version, 3);
    }

    async fn failed_condition_writes_nothing<S: Store>(store: &S) {
        let before = store.revision().await.unwrap();
        let txn = Txn::new()
            .when_version("b", Some(2))
            .when_version("a", Some(999))
            .put("b", b"changed".to_vec())
            .put("c", b"new".to_vec());
        assert_eq!(store.commit(txn).await.unwrap(), Outcome::Conflict);
        assert_eq!(store.revision().await.unwrap(), before);
        assert_eq!(store.get("b").await.unwrap().unwrap().value, b"2");
        assert_eq!(store.get("c").await.unwrap(), None);
        // all writes of one transaction share its revision
        let txn = Txn::new()
            .put("multi/1", b"a".to_vec())
            .put("multi/2", b"b".to_vec());
        let Outcome::Applied { revision } = store.commit(txn).await.unwrap() else {
            panic!("conflict")
        };
        assert_eq!(revision, before + 1);
        assert_eq!(
            store.get("multi/1").await.unwrap().unwrap().version,
            revision
        );
        assert_eq!(
            store.get("multi/2").await.unwrap().unwrap().version,
            revision
        );
    }

    async fn list_returns_prefix_sorted<S: Store>(store: &S) {
        let txn = Txn::new()
            .put("apps/web/2", b"w2".to_vec())
            .put("apps/web/1", b"w1".to_vec())
            .put("apps/webx/1", b"x".to_vec())
            .put("apps/api/1", b"a".to_vec());
        store.commit(txn).await.unwrap();
        let keys: Vec<String> = store
            .list("apps/web/")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["apps/web/1", "apps/web/2"]);
        assert_eq!(store.list("apps/").await.unwrap().len(), 4);
        assert!(store.list("nothing/").await.unwrap().is_empty());
    }

    async fn delete_removes_and_bumps_revision<S: Store>(store: &S) {
        let before = store.revision().await.unwrap();
        let out = store.commit(Txn::new().delete("apps/api/1")).await.unwrap();
        assert_eq!(
            out,
            Outcome::Applied {
                revision: before + 1
            }
        );
        assert_eq!(store.get("apps/api/1").await.unwrap(), None);
        // a delete conditioned on absence of a key that exists conflicts
        let out = store.commit(
            Txn::new()
                .when_version("apps/web/1", None)
                .delete("apps/web/1"),
        );
        assert_eq!(out.await.unwrap(), Outcome::Conflict);
    }

    async fn the_last_op_on_a_key_wins<S: Store>(store: &S) {
        let txn = Txn::new()
            .put("dup/a", b"first".to_vec())
            .put("dup/a", b"second".to_vec())
            .put("dup/b", b"gone".to_vec())
            .delete("dup/b");
        assert!(matches!(
            store.commit(txn).await.unwrap(),
            Outcome::Applied { .. }
        ));
        assert_eq!(store.get("dup/a").await.unwrap().unwrap().value, b"second");
        assert_eq!(store.get("dup/b").await.unwrap(), None);
    }

    async fn bad_keys_and_large_values_are_refused<S: Store>(store: &S) {
        let before = store.revision().await.unwrap();
        assert!(
            store
                .commit(Txn::new().put("", b"x".to_vec()))
                .await
                .is_err()
        );
        assert!(
            store
                .commit(Txn::new().put("has space", b"x".to_vec()))
                .await
                .is_err()
        );
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        assert!(
            store
                .commit(Txn::new().put("ok", b"1".to_vec()).put("big", big))
                .await
                .is_err()
        );
        assert_eq!(
            store.get("ok").await.unwrap(),
            None,
            "a refused txn wrote part of itself"
        );
        assert_eq!(store.revision().await.unwrap(), before);
    }
}
