//! Leader election for controllers sharing one etcd, and the fence on the leader's writes.
//!
//! ```text
//!             key `leader` absent              txn: version(leader) == 0
//!  Follower ─────────────────────> grant lease ─────────────────────────> Leader { fence }
//!     ^   (polls the key every 250 ms;              put(leader, me, lease)     │
//!     │    knows whom to forward to)                                           │
//!     └──────── keep-alive failed for 2/3 of the TTL, or the lease is gone ────┘
//!                 (etcd deletes the key when the lease expires: a killed
//!                  leader is replaced within the TTL plus one poll)
//! ```
//!
//! The fence is the `mod_revision` of the leader key when this controller wrote it. Every
//! write of the leader ([`FencedStore::commit`]) carries `mod_revision(leader) == fence` as
//! an extra etcd compare, so a controller that lost its lease (paused, partitioned) and still
//! believes it leads has its writes refused: at most one controller's writes land, and
//! nothing is written twice. The decisions that write (sync, placement, reports) run only on
//! the leader; the others serve reads from the store and forward writes (`api.rs`).
//!
//! Owns the `leader` key of the namespace and the election lease; nothing else.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::etcd::EtcdStore;
use crate::store::{Entry, Outcome, Store, StoreError, Txn};

/// The election key, under the store's namespace.
pub const LEADER_KEY: &str = "leader";

/// How often a follower looks at the leader key.
pub const POLL: Duration = Duration::from_millis(250);

/// Who a controller is, as written in the leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// A random id, new at each start.
    pub id: String,
    /// Where the others forward writes: `http://HOST:PORT`.
    pub url: String,
}

/// This controller's part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It leads: it syncs, places and takes writes, fenced by `fence`.
    Leader {
        /// The leader key's etcd `mod_revision` when this controller wrote it.
        fence: i64,
    },
    /// Another leads (`None`: nobody yet, or unknown).
    Follower {
        /// The leader, when there is one.
        leader: Option<Member>,
    },
}

impl Role {
    /// Whether this controller leads.
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }
}

/// A random member id (16 hex digits).
pub fn new_member_id() -> String {
    let mut raw = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .is_ok();
    if !ok {
        // no urandom: the pid still tells processes on one host apart
        raw[..4].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(raw)
}

/// The etcd store with the leader's fence on every write.
#[derive(Debug, Clone)]
pub struct FencedStore {
    store: EtcdStore,
    role: watch::Receiver<Role>,
}

impl FencedStore {
    /// `store`, whose writes are allowed while `role` says this controller leads.
    pub fn new(store: EtcdStore, role: watch::Receiver<Role>) -> FencedStore {
        FencedStore { store, role }
    }

    /// The unfenced store.
    pub fn inner(&self) -> &EtcdStore {
        &self.store
    }
}

impl Store for FencedStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.store.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        self.store.list(prefix).await
    }

    async fn commit(&self, txn: Txn) -> Result<Outcome, StoreError> {
        let role = self.role.borrow().clone();
        let Role::Leader { fence } = role else {
            return Err(StoreError::NotLeader {
                reason: "this controller is not the leader".into(),
            });
        };
        let key = self.store.full_key(LEADER_KEY);
        let fenced = vec![Compare::mod_revision(key, CompareOp::Equal, fence)];
        match self.store.commit_with(txn, fenced).await? {
            Outcome::Applied { revision } => Ok(Outcome::Applied { revision }),
            Outcome::Conflict => {
                // tell a lost leadership apart from an ordinary version conflict
                let mut kv = self.store.client().kv_client();
                let now = kv
                    .get(self.store.full_key(LEADER_KEY), None)
                    .await
                    .map_err(|e| StoreError::Backend {
                        backend: "etcd",
                        reason: format!("reading the leader key: {e}"),
                    })?;
                match now.kvs().first() {
                    Some(kv) if kv.mod_revision() == fence => Ok(Outcome::Conflict),
                    _ => Err(StoreError::NotLeader {
                        reason: "its lease ended and the write was fenced off".into(),
                    }),
                }
            }
        }
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.store.revision().await
    }
}

/// Runs the election for `me` on `store` with leases of `ttl` (at least 2 s, whole seconds)
/// until `shutdown`; the receiver follows this controller's [`Role`]. At shutdown a leader
/// revokes its lease, so another takes over at once.
pub fn spawn(
    store: EtcdStore,
    me: Member,
    ttl: Duration,
    shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<Role>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Role::Follower { leader: None });
    let task = tokio::spawn(run(store, me, ttl, tx, shutdown));
    (rx, task)
}

/// The lease TTL in etcd's whole seconds (etcd's minimum is about 2 s).
fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs().max(2)).unwrap_or(60)
}

async fn run(
    store: EtcdStore,
    me: Member,
    ttl: Duration,
    role: watch::Sender<Role>,
    mut shutdown: watch::Receiver<bool>,
) {
    let key = store.full_key(LEADER_KEY);
    let value = serde_json::to_vec(&me).unwrap_or_default();
    let mut client = store.client().clone();
    loop {
        if *shutdown.borrow() {
            return;
        }
        match client.get(key.clone(), None).await {
            Ok(found) => match found.kvs().first() {
                Some(kv) => {
                    let leader: Option<Member> = serde_json::from_slice(kv.value()).ok();
                    role.send_if_modified(|r| {
                        let next = Role::Follower { leader };
                        let changed = *r != next;
                        *r = next;
                        changed
                    });
                }
                None => {
                    if let Some((lease, fence)) = campaign(&mut client, &key, &value, ttl).await {
                        tracing::info!(member = %me.id, fence, "this controller leads");
                        let _ = role.send(Role::Leader { fence });
                        let revoked = lead(&mut client, lease, ttl, &mut shutdown).await;
                        let _ = role.send(Role::Follower { leader: None });
                        if revoked {
                            return;
                        }
                        tracing::warn!(member = %me.id, "lost the leader lease; following");
                        continue;
                    }
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, endpoints = store.endpoints(), "election: etcd unreachable");
                role.send_if_modified(|r| {
                    let was_leader = r.is_leader();
                    *r = Role::Follower { leader: None };
                    was_leader
                });
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Tries to write the leader key with a new lease; `Some((lease, fence))` when it did.
async fn campaign(
    client: &mut etcd_client::Client,
    key: &str,
    value: &[u8],
    ttl: Duration,
) -> Option<(i64, i64)> {
    let lease = client.lease_grant(ttl_secs(ttl), None).await.ok()?.id();
    let txn = etcd_client::Txn::new()
        .when(vec![Compare::version(key, CompareOp::Equal, 0)])
        .and_then(vec![TxnOp::put(
            key,
            value.to_vec(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let won = match client.txn(txn).await {
        Ok(r) if r.succeeded() => r.header().map(|h| h.revision()),
        _ => None,
    };
    match won {
        Some(fence) => Some((lease, fence)),
        None => {
            let _ = client.lease_revoke(lease).await;
            None
        }
    }
}

/// Keeps the lease alive until it is lost (false) or shutdown revokes it (true). Leadership
/// ends when no renewal succeeded for 2/3 of the TTL, while the lease still has a third left
/// on etcd's side.
async fn lead(
    client: &mut etcd_client::Client,
    lease: i64,
    ttl: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let ttl = Duration::from_secs(u64::try_from(ttl_secs(ttl)).unwrap_or(2));
    let every = ttl / 3;
    let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await else {
        return false;
    };
    let mut renewed = tokio::time::Instant::now();
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = shutdown.wait_for(|s| *s) => true,
        };
        if stopping {
            let _ = client.lease_revoke(lease).await;
            return true;
        }
        let ok = keeper.keep_alive().await.is_ok()
            && matches!(
                tokio::time::timeout(every, stream.message()).await,
                Ok(Ok(Some(r))) if r.ttl() > 0
            );
        if ok {
            renewed = tokio::time::Instant::now();
        } else if renewed.elapsed() >= every * 2 {
            return false;
        } else if let Ok(pair) = client.lease_keep_alive(lease).await {
            // the stream broke (etcd restarted or a member changed): open a new one
            (keeper, stream) = pair;
        }
    }
}

/// The current leader as the leader key names it (for `GET /v1/leader` and tests).
pub async fn current(store: &EtcdStore) -> Result<Option<Member>, StoreError> {
    let mut kv = store.client().kv_client();
    let found = kv
        .get(store.full_key(LEADER_KEY), Some(GetOptions::new()))
        .await
        .map_err(|e| StoreError::Backend {
            backend: "etcd",
            reason: format!("reading the leader key: {e}"),
        })?;
    Ok(found
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::etcd::DEFAULT_NAMESPACE;

    async fn connect(etcd: &berth_testkit::Etcd) -> EtcdStore {
        EtcdStore::connect(&[etcd.endpoint()], DEFAULT_NAMESPACE)
            .await
            .unwrap()
    }

    fn member(n: &str) -> Member {
        Member {
            id: n.into(),
            url: format!("http://{n}"),
        }
    }

    async fn wait_leader(rx: &mut watch::Receiver<Role>) -> i64 {
        let role = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(Role::is_leader))
            .await
            .unwrap()
            .unwrap()
            .clone();
        match role {
            Role::Leader { fence } => fence,
            Role::Follower { .. } => unreachable!(),
        }
    }

    #[tokio::test]
    async fn one_of_two_leads_and_the_other_takes_over_when_it_stops() {
        let etcd = berth_testkit::Etcd::start().unwrap();
        let (stop_a, a_shutdown) = watch::channel(false);
        let (_stop_b, b_shutdown) = watch::channel(false);
        let ttl = Duration::from_secs(2);
        let (mut a, a_task) = spawn(connect(&etcd).await, member("a"), ttl, a_shutdown);
        wait_leader(&mut a).await;
        let (mut b, _b_task) = spawn(connect(&etcd).await, member("b"), ttl, b_shutdown);
        tokio::time::timeout(
            Duration::from_secs(5),
            b.wait_for(|r| {
                *r == Role::Follower {
                    leader: Some(member("a")),
                }
            }),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            current(&connect(&etcd).await).await.unwrap(),
            Some(member("a"))
        );
        // a stops: its lease is revoked and b leads
        stop_a.send(true).unwrap();
        a_task.await.unwrap();
        wait_leader(&mut b).await;
        assert_eq!(
            current(&connect(&etcd).await).await.unwrap(),
            Some(member("b"))
        );
    }

    #[tokio::test]
    async fn a_leader_that_loses_etcd_steps_down_within_the_ttl() {
        let etcd = berth_testkit::Etcd::start().unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let ttl = Duration::from_secs(2);
        let (mut a, _task) = spawn(connect(&etcd).await, member("a"), ttl, shutdown);
        wait_leader(&mut a).await;
        // it stays the leader while etcd runs (renewals every TTL/3)
        tokio::time::sleep(ttl).await;
        assert!(a.borrow().is_leader(), "lost the lead with etcd up");
        // etcd goes away (killed by pid): without renewals the leader must stop leading
        // before its lease could have expired on etcd's side
        drop(etcd);
        let t = tokio::time::Instant::now();
        let stepped_down = tokio::time::timeout(ttl * 2, a.wait_for(|r| !r.is_leader())).await;
        eprintln!("stepped down {:?} after etcd died", t.elapsed());
        assert!(
            stepped_down.is_ok(),
            "still leading {:?} after etcd died",
            ttl * 2
        );
    }

    #[tokio::test]
    async fn a_fenced_off_leader_cannot_write() {
        let etcd = berth_testkit::Etcd::start().unwrap();
        let store = connect(&etcd).await;
        let (stop_a, a_shutdown) = watch::channel(false);
        let (mut a, a_task) = spawn(
            store.clone(),
            member("a"),
            Duration::from_secs(2),
            a_shutdown,
        );
        let fence = wait_leader(&mut a).await;
        // a controller that still believes it leads with a's fence
        let (_stale_tx, stale_rx) = watch::channel(Role::Leader { fence });
        let stale = FencedStore::new(store.clone(), stale_rx);
        let applied = stale
            .commit(Txn::new().put("k", b"1".to_vec()))
            .await
            .unwrap();
        assert!(matches!(applied, Outcome::Applied { .. }));
        // a version conflict is still a conflict while the fence holds
        let conflict = stale
            .commit(Txn::new().when_version("k", None).put("k", b"2".to_vec()))
            .await
            .unwrap();
        assert_eq!(conflict, Outcome::Conflict);
        // a's lease ends, b takes over: the stale leader's writes are refused
        stop_a.send(true).unwrap();
        a_task.await.unwrap();
        let (_stop_b, b_shutdown) = watch::channel(false);
        let (mut b, _b_task) = spawn(
            store.clone(),
            member("b"),
            Duration::from_secs(2),
            b_shutdown,
        );
        wait_leader(&mut b).await;
        let err = stale
            .commit(Txn::new().put("k", b"stale".to_vec()))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotLeader { .. }), "{err}");
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b"1");
        // and a follower's store refuses writes outright
        let follower = FencedStore::new(store.clone(), a.clone());
        assert!(
            follower
                .commit(Txn::new().put("k", b"f".to_vec()))
                .await
                .is_err()
        );
    }
}
