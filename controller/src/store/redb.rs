//! The embedded store: one redb file under the controller's data dir. redb commits are
//! durable (fsync) and crash-safe (copy-on-write); a transaction's conditions are checked
//! inside the same write transaction, so check-and-write is atomic. Calls run on tokio's
//! blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Condition, Entry, Op, Outcome, Store, StoreError, Txn, check_txn};

/// Keys to (version, value).
const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
/// Store-wide counters: `revision`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The redb-backed [`Store`].
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        backend: "redb",
        reason: err.to_string(),
    }
}

/// The most pages redb keeps in memory (read cache and write buffer).
pub const CACHE_BYTES: usize = 32 << 20;

impl RedbStore {
    /// Opens (or creates) the store file at `path`. One process at a time may hold it.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| open_err(e.to_string()))?;
        }
        // redb caches pages in the process up to 1 GiB by default, so the controller's (and
        // `berth up`'s) memory would follow the store's size; 32 MiB holds a store of
        // thousands of apps, and a miss is a read from the kernel's page cache.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| open_err(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        txn.open_table(KV).map_err(|e| open_err(e.to_string()))?;
        txn.open_table(META).map_err(|e| open_err(e.to_string()))?;
        txn.commit().map_err(|e| open_err(e.to_string()))?;
        Ok(RedbStore {
            db: Arc::new(db),
            path: path.to_path_buf(),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(backend)?
    }
}

fn apply(db: &Database, txn: Txn) -> Result<Outcome, StoreError> {
    let write = db.begin_write().map_err(backend)?;
    let revision = {
        let mut kv = write.open_table(KV).map_err(backend)?;
        for Condition::Version(key, want) in &txn.conditions {
            let have = kv.get(key.as_str()).map_err(backend)?.map(|g| g.value().0);
            if have != *want {
                // dropping `write` without commit aborts it
                return Ok(Outcome::Conflict);
            }
        }
        let mut meta = write.open_table(META).map_err(backend)?;
        let current = meta
            .get("revision")
            .map_err(backend)?
            .map(|g| g.value())
            .unwrap_or(0);
        let revision = current + 1;
        for op in &txn.ops {
            match op {
                Op::Put(key, value) => {
                    kv.insert(key.as_str(), (revision, value.as_ref()))
                        .map_err(backend)?;
                }
                Op::Delete(key) => {
                    kv.remove(key.as_str()).map_err(backend)?;
                }
            }
        }
        meta.insert("revision", revision).map_err(backend)?;
        revision
    };
    write.commit().map_err(backend)?;
    Ok(Outcome::Applied { revision })
}

impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = key.to_string();
        self.blocking(move |db| {
            let read = db.begin_read().map_err(backend)?;
            let kv = read.open_table(KV).map_err(backend)?;
            let found = kv.get(key.as_str()).map_err(backend)?;
            Ok(found.map(|g| {
                let (version, value) = g.value();
                Entry {
                    value: value.to_vec(),
                    version,
                }
            }))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |db| {
            let read = db.begin_read().map_err(backend)?;
            let kv = read.open_table(KV).map_err(backend)?;
            let mut out = Vec::new();
            for item in kv.range(prefix.as_str()..).map_err(backend)? {
                let (key, value) = item.map_err(backend)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                let (version, value) = value.value();
                out.push((
                    key.to_string(),
                    Entry {
                        value: value.to_vec(),
                        version,
                    },
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn commit(&self, txn: Txn) -> Result<Outcome, StoreError> {
        check_txn(&txn)?;
        self.blocking(move |db| apply(db, txn)).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.blocking(|db| {
            let read = db.begin_read().map_err(backend)?;
            let meta = read.open_table(META).map_err(backend)?;
            Ok(meta
                .get("revision")
                .map_err(backend)?
                .map(|g| g.value())
                .unwrap_or(0))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn redb_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("store.redb")).unwrap();
        crate::store::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn writes_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            store
                .commit(Txn::new().put("apps/web", b"v1".to_vec()))
                .await
                .unwrap();
            store
                .commit(Txn::new().put("apps/web", b"v2".to_vec()))
                .await
                .unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let entry = store.get("apps/web").await.unwrap().unwrap();
        assert_eq!(
            entry,
            Entry {
                value: b"v2".to_vec(),
                version: 2
            }
        );
        assert_eq!(store.revision().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let _first = RedbStore::open(&path).unwrap();
        let err = RedbStore::open(&path).unwrap_err();
        assert!(err.to_string().contains("store.redb"), "{err}");
    }
}
