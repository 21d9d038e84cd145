//! The controller's state machine over a [`Store`]: sync a commit, register hosts, take their
//! reports, roll back, compute assignments, and answer status queries. Decisions come from
//! the pure modules ([`revisions`](crate::revisions), [`assign`](crate::assign)); this module
//! loads, persists (transactions with version conditions) and emits events.
//!
//! Writers of apps and hosts are serialized by one lock, reassignments (the only writer of
//! `assignments/`) by another, so ten thousand assignments being stored do not hold up
//! reports and registrations (one controller process writes: with etcd, the elected
//! leader, whose writes are fenced, see [`leader`](crate::leader)); the transactions'
//! version conditions still guard against a second writer on the same store (a conflict is
//! reported, never a lost write). Reports and registrations that arrive together are group
//! committed. The leader keeps every host record and assignment in memory once read (its
//! own writes keep them current; followers drop them when the store's revision moves). It
//! owns no sockets: [`api`](crate::api) serves it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_manifests::wire::{
    AppReport, AppStatus, Assignment, Capacity, ClusterStatus, Event, HostPlacement, HostReport,
    HostRollout, HostStatus, InstanceInfo, PlacedApp, PlacementView, Registered, Registration,
    RevisionInfo, RolloutPhase, RolloutStatus, Scale, SyncStatus,
};
use berth_manifests::{App, Source};
use tokio::sync::{Mutex, watch};

use crate::assign::{self, HostAssignment, HostInfo, HostState, Placeable, Unplaced};
use crate::events::EventLog;
use crate::git::{CommitInfo, GitError, GitSource, Snapshot, SourceFile};
use crate::metrics::{Metrics, RolloutResult, SyncResult, TargetCause};
use crate::model::{
    AppHistory, AppRecord, HostRecord, SYNC_KEY, StoredRevision, UNPLACED_KEY, app_key,
    assignment_key, host_key, revision_key,
};
use crate::resolve::{DigestResolver, digest_of};
use crate::revisions::{self, ReportOutcome, RollbackError, SyncAction};
use crate::store::{Outcome, Store, StoreError, Txn};

/// Most events one report may carry.
pub const MAX_REPORT_EVENTS: usize = 1000;

/// What went wrong in the controller's state machine.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A stored value did not decode (a bug or a newer controller's data).
    #[error("stored value at {key} is unreadable: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// serde's words.
        reason: String,
    },
    /// Another writer changed the same keys; retry.
    #[error("concurrent update of {what}; retry")]
    Conflict {
        /// What was being written.
        what: String,
    },
    /// Unknown app.
    #[error("app {app} not found; see `berth apps`")]
    NoSuchApp {
        /// The app.
        app: String,
    },
    /// Unknown host (not registered).
    #[error("host {host} is not registered; register it first (POST /v1/agents/register)")]
    NoSuchHost {
        /// The host.
        host: String,
    },
    /// Input breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// A rollback was refused.
    #[error(transparent)]
    Rollback(#[from] RollbackError),
    /// The git source failed.
    #[error(transparent)]
    Git(#[from] GitError),
}

impl CoreError {
    /// The same failure again, for each of several callers it concerns (a batch's).
    fn again(&self) -> CoreError {
        match self {
            CoreError::Conflict { what } => CoreError::Conflict { what: what.clone() },
            CoreError::NoSuchHost { host } => CoreError::NoSuchHost { host: host.clone() },
            CoreError::NoSuchApp { app } => CoreError::NoSuchApp { app: app.clone() },
            CoreError::Invalid(m) => CoreError::Invalid(m.clone()),
            CoreError::Corrupt { key, reason } => CoreError::Corrupt {
                key: key.clone(),
                reason: reason.clone(),
            },
            CoreError::Store(StoreError::NotLeader { reason }) => {
                CoreError::Store(StoreError::NotLeader {
                    reason: reason.clone(),
                })
            }
            other => CoreError::Store(StoreError::Backend {
                backend: "controller",
                reason: other.to_string(),
            }),
        }
    }

    /// The error's class.
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind as K;
        match self {
            CoreError::Store(e) => e.kind(),
            CoreError::Corrupt { .. } => K::Internal,
            CoreError::Conflict { .. } => K::Conflict,
            CoreError::NoSuchApp { .. } | CoreError::NoSuchHost { .. } => K::NotFound,
            CoreError::Invalid(_) => K::InvalidInput,
            CoreError::Rollback(e) => e.kind(),
            CoreError::Git(e) => e.kind(),
        }
    }
}

/// The wall clock in Unix milliseconds; a parameter so tests control it.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        #[allow(
            clippy::disallowed_methods,
            reason = "the controller's clock edge: event and revision times"
        )]
        let now = std::time::SystemTime::now();
        now.duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

/// The controller's state over a store.
pub struct Core<S: Store> {
    store: Arc<S>,
    events: EventLog<S>,
    resolver: Arc<dyn DigestResolver>,
    source: GitSource,
    clock: Clock,
    host_grace_ms: u64,
    write: Mutex<()>,
    /// Serializes reassignments (the only writer of `assignments/`), apart from `write`:
    /// reports and registrations that arrive while a sync computes and stores ten thousand
    /// assignments do not wait for it, nor it for them. Taken after `write` or alone, never
    /// the other way round.
    assign: Mutex<()>,
    /// The last head processed and the error lines it gave (empty: applied).
    sync_lock: Mutex<Option<(String, Vec<String>)>>,
    assignments: watch::Sender<u64>,
    /// Every host's assignment as last read or written, decoded and as JSON.
    cache: std::sync::Mutex<AssignmentCache>,
    /// Reassignments asked for by registrations ([`Core::reassign_coalesced`]).
    reassign_asked: AtomicU64,
    /// The newest ask a finished reassignment covers; its lock serializes them.
    reassign_done: Mutex<u64>,
    /// Registrations and reports waiting for the next group commit ([`Core::report`]).
    pending: std::sync::Mutex<Pending>,
    metrics: Arc<Metrics>,
    /// Hosts are not found silent before this (Unix ms): when this controller started or
    /// became the leader (hosts look silent while no controller listens).
    live_floor_ms: std::sync::atomic::AtomicU64,
    /// The host states the last placement used; the liveness check places again when
    /// they changed.
    placed_states: std::sync::Mutex<BTreeMap<String, HostState>>,
}

/// Above this many reports, a batch reads every host record in one range read.
const REPORT_BATCH_LIST: usize = 32;

/// Where the outcomes of a batch's accepted reports go.
type ReportReplies = Vec<tokio::sync::oneshot::Sender<Result<(), CoreError>>>;

/// What waits for the next group commit.
#[derive(Default)]
struct Pending {
    registrations: Vec<PendingRegistration>,
    reports: Vec<PendingReport>,
}

/// A registration waiting for its batch, and where its outcome goes.
struct PendingRegistration {
    reg: Registration,
    reply: tokio::sync::oneshot::Sender<Result<(), CoreError>>,
}

/// A report waiting for its batch, and where its outcome goes.
struct PendingReport {
    report: HostReport,
    reply: tokio::sync::oneshot::Sender<Result<(), CoreError>>,
}

/// A host's stored assignment, decoded and as the JSON bytes stored (what a long-poll
/// answers with: encoded once per change, not once per answer).
#[derive(Debug)]
pub struct CachedAssignment {
    /// The assignment (its apps shared with other hosts').
    pub assignment: HostAssignment,
    /// Its JSON.
    pub json: bytes::Bytes,
    /// The store version of its key (the condition of the next write).
    store_version: u64,
}

/// The assignments read or written, and a generation that every clear bumps (a read that
/// started before a clear must not refill the cache with what it read).
#[derive(Debug, Default)]
struct AssignmentCache {
    generation: u64,
    hosts: HashMap<String, Arc<CachedAssignment>>,
    /// Every stored assignment is in `hosts` (a full read filled it, and only this
    /// controller's writes changed the store since): a reassignment reads nothing.
    complete: bool,
    /// Every host record with its store version, once a full read filled it (`None`
    /// before): the leader's view, updated by its own writes.
    records: Option<BTreeMap<String, (Arc<HostRecord>, u64)>>,
    /// Bumped by every clear and by every host write while `records` is `None`: a full
    /// read that started before must not fill it with what it read.
    records_generation: u64,
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, CoreError> {
    serde_json::from_slice(bytes).map_err(|e| CoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn event(now: u64, object: String, reason: &str, message: String) -> Event {
    Event {
        time_ms: now,
        object,
        reason: reason.to_string(),
        message,
    }
}

/// Histories keyed by app, each with the store version of its record.
type Histories = BTreeMap<String, (AppHistory, u64)>;

impl<S: Store> Core<S> {
    /// The state machine on `store`, syncing from `source`.
    pub async fn open(
        store: Arc<S>,
        source: GitSource,
        resolver: Arc<dyn DigestResolver>,
        clock: Clock,
        host_grace_ms: u64,
    ) -> Result<Core<S>, CoreError> {
        let events = EventLog::open(store.clone(), 5000).await?;
        let (assignments, _) = watch::channel(0);
        let now = clock();
        Ok(Core {
            store,
            events,
            resolver,
            source,
            clock,
            host_grace_ms,
            write: Mutex::new(()),
            assign: Mutex::new(()),
            sync_lock: Mutex::new(None),
            assignments,
            cache: std::sync::Mutex::default(),
            reassign_asked: AtomicU64::new(0),
            reassign_done: Mutex::new(0),
            pending: std::sync::Mutex::default(),
            metrics: Arc::new(Metrics::new()),
            live_floor_ms: std::sync::atomic::AtomicU64::new(now),
            placed_states: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// The controller's metrics (updated by the calls below and by the API).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The event log.
    pub fn events(&self) -> &EventLog<S> {
        &self.events
    }

    /// Changes whenever any host's assignment changes (long-polls wait on it).
    pub fn assignment_changes(&self) -> watch::Receiver<u64> {
        self.assignments.subscribe()
    }

    /// Wakes long-polls to re-read their assignment: a follower controller calls it when
    /// the shared store changed under it (the leader wrote).
    pub fn wake_assignments(&self) {
        self.clear_assignment_cache();
        self.assignments.send_modify(|g| *g += 1);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, AssignmentCache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops the cached assignments: the store changed under this controller (another
    /// controller wrote, or a write of ours conflicted).
    fn clear_assignment_cache(&self) {
        let mut cache = self.cache();
        cache.generation += 1;
        cache.hosts.clear();
        cache.complete = false;
        cache.records = None;
        cache.records_generation += 1;
    }

    /// Caches what a read found, unless the cache was cleared since the read began
    /// (`generation`) or holds a newer write.
    fn cache_read(&self, generation: u64, host: &str, found: Arc<CachedAssignment>) {
        let mut cache = self.cache();
        if cache.generation != generation {
            return;
        }
        let newer = cache
            .hosts
            .get(host)
            .is_some_and(|c| c.store_version >= found.store_version);
        if !newer {
            cache.hosts.insert(host.to_string(), found);
        }
    }

    /// The store's revision (followers watch it to notice the leader's writes).
    pub async fn store_revision(&self) -> Result<u64, CoreError> {
        Ok(self.store.revision().await?)
    }

    /// Forgets which head the last sync processed, so the next sync decides from the store
    /// alone: a controller that becomes leader again may have missed the others' syncs.
    /// Hosts are given a full grace period from now before they count as silent (they may
    /// have reported to no one while no controller led).
    pub async fn forget_seen_head(&self) {
        *self.sync_lock.lock().await = None;
        self.clear_assignment_cache();
        self.live_floor_ms
            .store(self.now_ms(), std::sync::atomic::Ordering::SeqCst);
    }

    /// The store (for the token records of [`access`](crate::access)).
    pub(crate) fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Now, in Unix ms.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    async fn histories(&self) -> Result<Histories, CoreError> {
        self.histories_under("apps/").await
    }

    /// The histories stored under `prefix` (`apps/` for all, `apps/<app>/` for one).
    async fn histories_under(&self, prefix: &str) -> Result<Histories, CoreError> {
        let mut out: Histories = BTreeMap::new();
        let mut revisions: BTreeMap<String, Vec<StoredRevision>> = BTreeMap::new();
        for (key, entry) in self.store.list(prefix).await? {
            let mut parts = key.splitn(3, '/').skip(1);
            let (Some(app), Some(rest)) = (parts.next(), parts.next()) else {
                continue;
            };
            if rest == "current" {
                let record: AppRecord = decode(&key, &entry.value)?;
                out.insert(
                    app.to_string(),
                    (
                        AppHistory {
                            record,
                            revisions: Vec::new(),
                        },
                        entry.version,
                    ),
                );
            } else if rest.starts_with("revisions/") {
                revisions
                    .entry(app.to_string())
                    .or_default()
                    .push(decode(&key, &entry.value)?);
            }
        }
        for (app, mut revs) in revisions {
            revs.sort_by_key(|r| r.number);
            if let Some((h, _)) = out.get_mut(&app) {
                h.revisions = revs;
            }
        }
        Ok(out)
    }

    async fn history(&self, app: &str) -> Result<(AppHistory, u64), CoreError> {
        self.histories_under(&format!("apps/{app}/"))
            .await?
            .remove(app)
            .ok_or_else(|| CoreError::NoSuchApp {
                app: app.to_string(),
            })
    }

    /// Adds to `txn` the writes that turn `old` into `new`, conditioned on `version`.
    fn save(txn: Txn, old: Option<&(AppHistory, u64)>, new: &AppHistory) -> Txn {
        let name = &new.record.name;
        let mut txn = txn.when_version(app_key(name), old.map(|(_, v)| *v));
        if old.map(|(h, _)| &h.record) != Some(&new.record) {
            txn = txn.put(app_key(name), encode(&new.record));
        }
        for rev in &new.revisions {
            if old.and_then(|(h, _)| h.revision(rev.number)) != Some(rev) {
                txn = txn.put(revision_key(name, rev.number), encode(rev));
            }
        }
        txn
    }

    async fn commit(&self, txn: Txn, what: &str) -> Result<(), CoreError> {
        match self.store.commit(txn).await? {
            Outcome::Applied { .. } => Ok(()),
            Outcome::Conflict => Err(CoreError::Conflict {
                what: what.to_string(),
            }),
        }
    }

    /// Every host record, by name.
    async fn hosts(&self) -> Result<Vec<Arc<HostRecord>>, CoreError> {
        Ok(self
            .host_entries()
            .await?
            .into_values()
            .map(|(r, _)| r)
            .collect())
    }

    /// Every host record with its store version, by name: from the cache once a full read
    /// filled it (writes of this controller keep it current), else one range read.
    async fn host_entries(&self) -> Result<BTreeMap<String, (Arc<HostRecord>, u64)>, CoreError> {
        let generation = {
            let cache = self.cache();
            if let Some(records) = &cache.records {
                return Ok(records.clone());
            }
            cache.records_generation
        };
        let mut out = BTreeMap::new();
        for (key, e) in self.store.list("hosts/").await? {
            let record: HostRecord = decode(&key, &e.value)?;
            let name = key.strip_prefix("hosts/").unwrap_or(&key).to_string();
            out.insert(name, (Arc::new(record), e.version));
        }
        let mut cache = self.cache();
        if cache.records_generation == generation {
            cache.records = Some(out.clone());
        }
        Ok(out)
    }

    /// Puts host records this controller wrote (at store version `version`) into the cache.
    fn cache_hosts_written(
        &self,
        written: impl IntoIterator<Item = (String, HostRecord)>,
        version: u64,
    ) {
        let mut cache = self.cache();
        match &mut cache.records {
            Some(records) => {
                for (name, record) in written {
                    records.insert(name, (Arc::new(record), version));
                }
            }
            None => cache.records_generation += 1,
        }
    }

    /// Commits `txn` (`Conflict` names `what`); the store revision it made.
    async fn commit_at(&self, txn: Txn, what: &str) -> Result<u64, CoreError> {
        match self.store.commit(txn).await {
            Ok(Outcome::Applied { revision }) => Ok(revision),
            Ok(Outcome::Conflict) => {
                self.clear_assignment_cache();
                Err(CoreError::Conflict {
                    what: what.to_string(),
                })
            }
            Err(e) => {
                self.clear_assignment_cache();
                Err(e.into())
            }
        }
    }

    /// Every stored assignment by host: from the cache when it holds all of them (the
    /// leader's view after its first full read), else one range read that fills it.
    async fn assignments(&self) -> Result<BTreeMap<String, Arc<CachedAssignment>>, CoreError> {
        let generation = {
            let cache = self.cache();
            if cache.complete {
                return Ok(cache
                    .hosts
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect());
            }
            cache.generation
        };
        let mut out = BTreeMap::new();
        for (key, e) in self.store.list("assignments/").await? {
            let assignment: HostAssignment = decode::<Assignment>(&key, &e.value)?.into();
            out.insert(
                assignment.host.clone(),
                Arc::new(CachedAssignment {
                    assignment,
                    json: bytes::Bytes::from(e.value),
                    store_version: e.version,
                }),
            );
        }
        let mut cache = self.cache();
        if cache.generation == generation {
            for (host, found) in &out {
                let newer = cache
                    .hosts
                    .get(host)
                    .is_some_and(|c| c.store_version >= found.store_version);
                if !newer {
                    cache.hosts.insert(host.clone(), found.clone());
                }
            }
            cache.complete = true;
        }
        Ok(out)
    }

    /// Where `host` stands now: down when marked so or silent past the grace period
    /// (counted from when this controller started leading at the earliest), returning for
    /// one grace period after it came back, else ready.
    pub fn host_state(&self, host: &HostRecord, now: u64) -> HostState {
        let floor = self.live_floor_ms.load(std::sync::atomic::Ordering::SeqCst);
        if host.down_since_ms.is_some()
            || now.saturating_sub(host.last_seen_ms.max(floor)) > self.host_grace_ms
        {
            HostState::Down
        } else if host
            .returned_ms
            .is_some_and(|r| now.saturating_sub(r) < self.host_grace_ms)
        {
            HostState::Returning
        } else {
            HostState::Ready
        }
    }

    /// The placement of the stored apps on the stored hosts as they stand at `now`,
    /// keeping what the stored assignments place where it may stay.
    fn compute_placement(
        &self,
        histories: &Histories,
        hosts: &[Arc<HostRecord>],
        stored: &BTreeMap<String, Arc<CachedAssignment>>,
        now: u64,
    ) -> (assign::Placed, BTreeMap<String, HostState>) {
        let apps: Vec<Placeable> = histories
            .values()
            .filter(|(h, _)| h.record.in_git)
            .filter_map(|(h, _)| {
                Some(Placeable {
                    target: h.target()?.to_spec(),
                    fallback: revisions::fallback(h).map(StoredRevision::to_spec),
                    pinned: h.record.pinned,
                })
            })
            .collect();
        let states: BTreeMap<String, HostState> = hosts
            .iter()
            .map(|h| (h.registration.name.clone(), self.host_state(h, now)))
            .collect();
        let infos: Vec<HostInfo> = hosts
            .iter()
            .map(|h| HostInfo {
                name: h.registration.name.clone(),
                labels: h.registration.labels.clone(),
                capacity: h.registration.capacity,
                state: states
                    .get(&h.registration.name)
                    .copied()
                    .unwrap_or(HostState::Down),
            })
            .collect();
        let previous = assign::previous_of(
            stored
                .values()
                .map(|c| &c.assignment)
                .filter(|a| states.contains_key(&a.host)),
        );
        (assign::place(&apps, &infos, &previous), states)
    }

    /// The apps the last placement could not (entirely) place.
    async fn unplaced(&self) -> Result<Vec<Unplaced>, CoreError> {
        match self.store.get(UNPLACED_KEY).await? {
            Some(e) => decode(UNPLACED_KEY, &e.value),
            None => Ok(Vec::new()),
        }
    }

    /// The stored assignment of `host`.
    pub async fn assignment(&self, host: &str) -> Result<Option<Assignment>, CoreError> {
        Ok(self
            .assignment_json(host)
            .await?
            .map(|c| c.assignment.to_wire()))
    }

    /// The stored assignment of `host` with its JSON, from the cache when it holds it.
    pub async fn assignment_json(
        &self,
        host: &str,
    ) -> Result<Option<Arc<CachedAssignment>>, CoreError> {
        let generation = {
            let cache = self.cache();
            if let Some(c) = cache.hosts.get(host) {
                return Ok(Some(c.clone()));
            }
            cache.generation
        };
        let key = assignment_key(host);
        let Some(entry) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let assignment: HostAssignment = decode::<Assignment>(&key, &entry.value)?.into();
        let found = Arc::new(CachedAssignment {
            assignment,
            json: bytes::Bytes::from(entry.value),
            store_version: entry.version,
        });
        self.cache_read(generation, host, found.clone());
        Ok(Some(found))
    }

    /// [`Core::reassign`] for a registration: registrations that arrive together share one
    /// reassignment (each computes every host's placement), so a thousand agents starting at
    /// once cost a few dozen placements, not a thousand. Call without the write lock.
    async fn reassign_coalesced(&self) -> Result<(), CoreError> {
        let ticket = self.reassign_asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut done = self.reassign_done.lock().await;
        if *done >= ticket {
            return Ok(());
        }
        // every ask up to here wrote its host before asking: this run sees them all
        let covering = self.reassign_asked.load(Ordering::SeqCst);
        let _assign = self.assign.lock().await;
        self.reassign("registration").await?;
        *done = covering;
        Ok(())
    }

    /// Recomputes every host's assignment from the apps' targets and the hosts' states;
    /// writes the changed ones with version + 1 in one transaction and wakes long-polls as
    /// soon as it committed; then emits `AppUnplaced` and `AppPlaced` when what does not fit
    /// changed. `cause` names the caller in the log line (with each phase's time). Call with
    /// the assignment lock held.
    async fn reassign(&self, cause: &'static str) -> Result<(), CoreError> {
        let events = self.reassign_quiet(cause).await?;
        if !events.is_empty() {
            self.events.append(events).await?;
        }
        Ok(())
    }

    /// [`Core::reassign`] that returns its events instead of appending them (a sync appends
    /// them after its own, once the long-polls are woken).
    async fn reassign_quiet(&self, cause: &'static str) -> Result<Vec<Event>, CoreError> {
        let now = self.now_ms();
        let started = tokio::time::Instant::now();
        let histories = self.histories().await?;
        let hosts = self.hosts().await?;
        let stored = self.assignments().await?;
        let loaded = tokio::time::Instant::now();
        let (mut placed, states) = self.compute_placement(&histories, &hosts, &stored, now);
        assign::share_previous(&mut placed.hosts, stored.values().map(|c| &c.assignment));
        let place_done = tokio::time::Instant::now();
        let place_s = place_done.duration_since(loaded).as_secs_f64();
        let placements: usize = placed.hosts.values().map(Vec::len).sum();
        let app_count = histories.values().filter(|(h, _)| h.record.in_git).count();
        let mut txn = Txn::new();
        let mut written = Vec::new();
        let mut encoder = assign::AssignmentEncoder::default();
        let mut json_bytes = 0usize;
        for (host, apps) in placed.hosts {
            let key = assignment_key(&host);
            let previous = stored.get(&host);
            if let Some(next) =
                assign::next_assignment(&host, previous.map(|c| &c.assignment), apps)
            {
                let json = bytes::Bytes::from(encoder.encode(&next));
                json_bytes += json.len();
                txn = txn
                    .when_version(key.clone(), previous.map(|c| c.store_version))
                    .put(key, json.clone());
                written.push((host, next, json));
            }
        }
        drop((stored, encoder));
        let changed = written.len();
        let old_unplaced = self.unplaced().await?;
        let mut events = Vec::new();
        if old_unplaced != placed.unplaced {
            for u in &placed.unplaced {
                if !old_unplaced
                    .iter()
                    .any(|o| (&o.app, o.wanted, o.placed) == (&u.app, u.wanted, u.placed))
                {
                    events.push(event(
                        now,
                        format!("app/{}", u.app),
                        "AppUnplaced",
                        format!("app {}: {}", u.app, u.reason),
                    ));
                }
            }
            for o in &old_unplaced {
                if !placed.unplaced.iter().any(|u| u.app == o.app)
                    && histories.get(&o.app).is_some_and(|(h, _)| h.record.in_git)
                {
                    events.push(event(
                        now,
                        format!("app/{}", o.app),
                        "AppPlaced",
                        format!("every instance of app {} is placed now", o.app),
                    ));
                }
            }
            txn = txn.put(UNPLACED_KEY, encode(&placed.unplaced));
        }
        let encoded = tokio::time::Instant::now();
        let mut revision = 0;
        if !txn.ops.is_empty() {
            revision = match self.store.commit(txn).await {
                Ok(Outcome::Applied { revision }) => revision,
                Ok(Outcome::Conflict) => {
                    self.clear_assignment_cache();
                    return Err(CoreError::Conflict {
                        what: "assignments".into(),
                    });
                }
                Err(e) => {
                    self.clear_assignment_cache();
                    return Err(e.into());
                }
            };
        }
        let committed = tokio::time::Instant::now();
        // the long-polls first: everything below is bookkeeping
        let mut versions = Vec::with_capacity(written.len());
        if !written.is_empty() {
            let mut cache = self.cache();
            for (host, assignment, json) in written {
                versions.push((host.clone(), assignment.version));
                cache.hosts.insert(
                    host,
                    Arc::new(CachedAssignment {
                        assignment,
                        json,
                        store_version: revision,
                    }),
                );
            }
            drop(cache);
            self.assignments.send_modify(|g| *g += 1);
        }
        let woken = tokio::time::Instant::now();
        for (host, version) in &versions {
            self.metrics.assignment_written(host, *version, committed);
        }
        // every app's series, 0 when it fits
        let unplaced_instances = placed
            .unplaced
            .iter()
            .map(|u| u64::from(u.wanted.saturating_sub(u.placed)))
            .sum::<u64>();
        self.metrics.set_unplaced(
            &histories
                .values()
                .filter(|(h, _)| h.record.in_git)
                .map(|(h, _)| {
                    let missing = placed
                        .unplaced
                        .iter()
                        .find(|u| u.app == h.record.name)
                        .map_or(0, |u| u.wanted - u.placed);
                    (h.record.name.clone(), missing)
                })
                .collect::<Vec<_>>(),
        );
        *self
            .placed_states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = states;
        let ms = |a: tokio::time::Instant, b: tokio::time::Instant| {
            b.saturating_duration_since(a).as_secs_f64() * 1e3
        };
        let total_s = woken.duration_since(loaded).as_secs_f64();
        tracing::info!(
            cause,
            apps = app_count,
            hosts = hosts.len(),
            placements,
            unplaced = unplaced_instances,
            changed,
            json_bytes,
            load_ms = ms(started, loaded),
            place_ms = place_s * 1e3,
            diff_encode_ms = ms(place_done, encoded),
            commit_ms = ms(encoded, committed),
            wake_ms = ms(committed, woken),
            total_ms = total_s * 1e3,
            placements_per_s = if place_s > 0.0 {
                placements as f64 / place_s
            } else {
                0.0
            },
            "placed apps on hosts"
        );
        Ok(events)
    }

    /// The liveness check (the leader runs it every grace/4, at most every second): marks
    /// hosts silent past their grace period down (`HostDown`), and places again when any
    /// host's state changed since the last placement (down, back, or given work again).
    pub async fn check_hosts(&self) -> Result<(), CoreError> {
        let write = self.write.lock().await;
        let now = self.now_ms();
        let mut txn = Txn::new();
        let mut events = Vec::new();
        let mut states = BTreeMap::new();
        let mut marked = Vec::new();
        for (name, (stored, version)) in self.host_entries().await? {
            let state = self.host_state(&stored, now);
            if state == HostState::Down && stored.down_since_ms.is_none() {
                let key = host_key(&name);
                let mut record = HostRecord::clone(&stored);
                let silent = now.saturating_sub(record.last_seen_ms);
                record.down_since_ms = Some(now);
                record.returned_ms = None;
                record.converging_since_ms = None;
                txn = txn
                    .when_version(key.clone(), Some(version))
                    .put(key, encode(&record));
                marked.push((name.clone(), record));
                events.push(event(
                    now,
                    format!("host/{name}"),
                    "HostDown",
                    format!(
                        "host {name} has not reported for {:.1}s (grace {:.1}s): marked down; its apps are placed on the other matching hosts",
                        silent as f64 / 1000.0,
                        self.host_grace_ms as f64 / 1000.0
                    ),
                ));
            }
            states.insert(name, state);
        }
        if !txn.ops.is_empty() {
            let revision = self.commit_at(txn, "host liveness").await?;
            self.cache_hosts_written(marked, revision);
            self.events.append(events).await?;
        }
        let changed = *self
            .placed_states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            != states;
        drop(write);
        if changed {
            let _assign = self.assign.lock().await;
            self.reassign("liveness").await?;
        }
        self.set_host_gauges(&states);
        Ok(())
    }

    fn set_host_gauges(&self, states: &BTreeMap<String, HostState>) {
        let count = |s: HostState| {
            u64::try_from(states.values().filter(|x| **x == s).count()).unwrap_or(u64::MAX)
        };
        self.metrics.set_hosts(
            count(HostState::Ready),
            count(HostState::Returning),
            count(HostState::Down),
        );
    }

    /// `GET /v1/placement`: every host's instances per app, capacity and allocation, and the
    /// apps that did not fit.
    pub async fn placement(&self) -> Result<PlacementView, CoreError> {
        let now = self.now_ms();
        let hosts = self.hosts().await?;
        let stored = self.assignments().await?;
        let mut view = PlacementView {
            hosts: Vec::with_capacity(hosts.len()),
            unplaced: self.unplaced().await?,
        };
        for h in &hosts {
            let name = &h.registration.name;
            let assigned = stored.get(name).map(|c| &c.assignment);
            view.hosts.push(HostPlacement {
                name: name.clone(),
                state: self.host_state(h, now).as_str().to_string(),
                labels: h.registration.labels.clone(),
                capacity: h.registration.capacity,
                allocated: allocated(assigned),
                apps: assigned
                    .map(|a| {
                        a.apps
                            .iter()
                            .map(|x| PlacedApp {
                                app: x.target.app.clone(),
                                instances: assign::share(x.scale),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        view.hosts.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(view)
    }

    /// The git source's stored state.
    pub async fn sync_status(&self) -> Result<SyncStatus, CoreError> {
        match self.store.get(SYNC_KEY).await? {
            Some(e) => decode(SYNC_KEY, &e.value),
            None => Ok(SyncStatus {
                repo: self.source.url().to_string(),
                branch: self.source.branch().to_string(),
                ..SyncStatus::default()
            }),
        }
    }

    /// Fetches the branch and applies its head commit if it is new. An invalid commit changes
    /// nothing: its errors go to the sync status and a `SyncFailed` event. Counted and timed
    /// in the `berth_controller_sync_*` metrics.
    pub async fn sync(&self) -> Result<SyncStatus, CoreError> {
        let mut last_seen = self.sync_lock.lock().await;
        let started = tokio::time::Instant::now();
        let outcome = self.sync_locked(&mut last_seen).await;
        let result = match &outcome {
            Ok((_, result)) => *result,
            Err(_) => SyncResult::Error,
        };
        self.metrics
            .sync_done(result, started.elapsed().as_secs_f64(), self.now_ms());
        outcome.map(|(status, _)| status)
    }

    /// [`Core::sync`] with the sync lock held.
    async fn sync_locked(
        &self,
        last_seen: &mut Option<(String, Vec<String>)>,
    ) -> Result<(SyncStatus, SyncResult), CoreError> {
        let now = self.now_ms();
        let t_start = tokio::time::Instant::now();
        tracing::debug!("sync: fetching");
        let mut status = self.sync_status().await?;
        status.repo = self.source.url().to_string();
        status.branch = self.source.branch().to_string();
        let source = self.source.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            let head = source.fetch()?;
            Ok::<_, GitError>(head)
        })
        .await
        .map_err(|e| CoreError::Invalid(format!("git task failed: {e}")))?;
        let head = match fetched {
            Ok(head) => head,
            Err(err) => {
                let message = err.to_string();
                if status.errors.first() != Some(&message) {
                    self.events
                        .append(vec![event(
                            now,
                            "sync".into(),
                            "SyncFailed",
                            message.clone(),
                        )])
                        .await?;
                }
                status.errors = vec![message];
                status.fetched_at_ms = now;
                self.commit(Txn::new().put(SYNC_KEY, encode(&status)), "sync")
                    .await?;
                return Ok((status, SyncResult::Error));
            }
        };
        let t_fetched = tokio::time::Instant::now();
        tracing::debug!(head = %head.short(), "sync: fetched");
        status.fetched_at_ms = now;
        status.head = Some(head.to_string());
        // a head already processed: show its outcome again (a fetch error is over)
        let seen = match last_seen.as_ref() {
            Some((h, errors)) if h == head.as_str() => Some(errors.clone()),
            _ if status.commit.as_deref() == Some(head.as_str()) && status.errors.is_empty() => {
                Some(Vec::new())
            }
            _ => None,
        };
        if let Some(errors) = seen {
            status.errors = errors;
            self.commit(Txn::new().put(SYNC_KEY, encode(&status)), "sync")
                .await?;
            *last_seen = Some((head.to_string(), status.errors.clone()));
            let result = if status.errors.is_empty() {
                SyncResult::Ok
            } else {
                SyncResult::Invalid
            };
            return Ok((status, result));
        }
        let source = self.source.clone();
        let commit = head.clone();
        let snapshot = tokio::task::spawn_blocking(move || source.snapshot(&commit))
            .await
            .map_err(|e| CoreError::Invalid(format!("git task failed: {e}")))?;
        let t_read = tokio::time::Instant::now();
        tracing::debug!("sync: read the commit's manifests");
        let outcome = match &snapshot {
            Ok(snapshot) => self.apply_snapshot(snapshot).await?,
            Err(err) => Err(vec![err.to_string()]),
        };
        let result = match outcome {
            Ok(()) => {
                let ms = |a: tokio::time::Instant, b: tokio::time::Instant| {
                    b.saturating_duration_since(a).as_secs_f64() * 1e3
                };
                let t_applied = tokio::time::Instant::now();
                tracing::info!(
                    commit = %head.short(),
                    fetch_ms = ms(t_start, t_fetched),
                    read_ms = ms(t_fetched, t_read),
                    apply_ms = ms(t_read, t_applied),
                    "applied the branch head"
                );
                status.commit = Some(head.to_string());
                status.errors.clear();
                status.app_errors.clear();
                *last_seen = Some((head.to_string(), Vec::new()));
                SyncResult::Ok
            }
            Err(errors) => {
                let retry = errors.iter().any(|e| e.starts_with(RETRY_MARK));
                let errors: Vec<String> = errors
                    .into_iter()
                    .map(|e| e.trim_start_matches(RETRY_MARK).to_string())
                    .collect();
                let mut lines = vec![format!(
                    "commit {}: refused, {} error(s); the last good commit stays applied",
                    head.short(),
                    errors.len()
                )];
                status.app_errors = match &snapshot {
                    Ok(snap) => errors_by_app(&snap.files, &errors),
                    Err(_) => BTreeMap::new(),
                };
                lines.extend(errors);
                if status.errors != lines {
                    self.events
                        .append(vec![event(
                            now,
                            "sync".into(),
                            "SyncFailed",
                            lines.join("\n"),
                        )])
                        .await?;
                }
                // a registry outage is retried at the next poll; invalid manifests wait
                // for a new commit
                *last_seen = if retry {
                    None
                } else {
                    Some((head.to_string(), lines.clone()))
                };
                status.errors = lines;
                if retry {
                    SyncResult::Error
                } else {
                    SyncResult::Invalid
                }
            }
        };
        self.commit(Txn::new().put(SYNC_KEY, encode(&status)), "sync")
            .await?;
        Ok((status, result))
    }

    /// Validates a commit's manifests and applies them. `Err` holds the lines to show.
    async fn apply_snapshot(
        &self,
        snapshot: &Snapshot,
    ) -> Result<Result<(), Vec<String>>, CoreError> {
        let sources: Vec<Source<'_>> = snapshot
            .files
            .iter()
            .map(|f| Source {
                path: &f.path,
                bytes: &f.bytes,
            })
            .collect();
        let set = match berth_manifests::load(&sources) {
            Ok(set) => set,
            Err(diags) => return Ok(Err(diags.0.iter().map(ToString::to_string).collect())),
        };
        let apps: Vec<App> = set.manifests.into_iter().map(|m| m.app).collect();
        self.apply_apps(&snapshot.commit, &apps).await
    }

    /// Applies a valid set of apps from `commit`: new revisions, removals, assignments.
    pub async fn apply_apps(
        &self,
        commit: &CommitInfo,
        apps: &[App],
    ) -> Result<Result<(), Vec<String>>, CoreError> {
        // resolve new revisions' digests before taking the write lock (registries can be
        // slow); a failure refuses the whole commit
        let t_start = tokio::time::Instant::now();
        let mut digests = BTreeMap::new();
        let (early, _) = plan_of(&self.histories().await?, apps);
        let errors = self.resolve_new(&early, &mut digests).await;
        if !errors.is_empty() {
            return Ok(Err(errors));
        }
        let t_resolved = tokio::time::Instant::now();
        let write = self.write.lock().await;
        let t_locked = tokio::time::Instant::now();
        let now = self.now_ms();
        let stored = self.histories().await?;
        let (actions, removed) = plan_of(&stored, apps);
        // another writer may have changed the apps meanwhile: resolve what is still missing
        let errors = self.resolve_new(&actions, &mut digests).await;
        if !errors.is_empty() {
            return Ok(Err(errors));
        }
        let cause = format!("commit {}: {}", commit.id.short(), commit.subject);
        let mut txn = Txn::new();
        let mut events = Vec::new();
        let mut new_targets = Vec::new();
        for (app, action) in actions {
            let old = stored.get(&app.app);
            let new = match action {
                SyncAction::Unchanged => continue,
                SyncAction::Restore => match old {
                    Some((h, _)) => revisions::restore(h.clone()),
                    None => continue,
                },
                SyncAction::NewRevision { number, spec_hash } => {
                    let digest = digests
                        .get(&app.image.to_string())
                        .cloned()
                        .unwrap_or_default();
                    let was_pinned = old.is_some_and(|(h, _)| h.record.pinned);
                    let rev = StoredRevision {
                        app: app.app.clone(),
                        number,
                        spec: app.clone(),
                        spec_hash,
                        image_digest: digest.clone(),
                        commit: commit.id.to_string(),
                        cause: cause.clone(),
                        created_ms: now,
                        state: berth_manifests::wire::RevisionState::Active,
                        failure: None,
                        completed_ms: None,
                    };
                    let image = match app.image.digest() {
                        Some(_) => app.image.to_string(),
                        None => format!("{} = {digest}", app.image),
                    };
                    let mut message = format!("revision {number} ({image}) from {cause}");
                    if was_pinned {
                        message.push_str("; the manifest changed, so the pin is cleared");
                    }
                    events.push(event(
                        now,
                        format!("app/{}", app.app),
                        "RevisionCreated",
                        message,
                    ));
                    new_targets.push(app.app.clone());
                    revisions::add_revision(old.map(|(h, _)| h.clone()), rev)
                }
            };
            txn = Self::save(txn, old, &new);
        }
        for name in removed {
            let Some(old) = stored.get(&name) else {
                continue;
            };
            let new = revisions::remove(old.0.clone());
            events.push(event(
                now,
                format!("app/{name}"),
                "AppRemoved",
                format!("app {name} is no longer in the manifests ({cause}); its history is kept"),
            ));
            txn = Self::save(txn, Some(old), &new);
        }
        if !txn.ops.is_empty() {
            self.commit(txn, "apps").await?;
        }
        let t_stored = tokio::time::Instant::now();
        for app in &new_targets {
            self.metrics.target_changed(app, TargetCause::Commit);
        }
        events.push(event(
            now,
            "sync".into(),
            "Synced",
            format!("applied {cause}"),
        ));
        drop(write);
        // the sync's events after the long-polls are woken (the event log may be busy with
        // a report batch's), then placement's own, in that order
        let assign = self.assign.lock().await;
        let placed = self.reassign_quiet("sync").await;
        drop(assign);
        let t_woken = tokio::time::Instant::now();
        match placed {
            Ok(more) => {
                events.extend(more);
                self.events.append(events).await?;
            }
            Err(e) => {
                self.events.append(events).await?;
                return Err(e);
            }
        }
        let ms = |a: tokio::time::Instant, b: tokio::time::Instant| {
            b.saturating_duration_since(a).as_secs_f64() * 1e3
        };
        tracing::info!(
            apps = apps.len(),
            new_revisions = new_targets.len(),
            resolve_ms = ms(t_start, t_resolved),
            write_lock_wait_ms = ms(t_resolved, t_locked),
            revisions_store_ms = ms(t_locked, t_stored),
            reassign_ms = ms(t_stored, t_woken),
            events_ms = ms(t_woken, tokio::time::Instant::now()),
            "sync: stored revisions and assignments"
        );
        Ok(Ok(()))
    }

    /// Resolves the image digest of every new revision in `actions` not in `digests` (keyed
    /// by image reference); returns the error lines of the failures.
    async fn resolve_new(
        &self,
        actions: &[(App, SyncAction)],
        digests: &mut BTreeMap<String, String>,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        for (app, action) in actions {
            let key = app.image.to_string();
            if !matches!(action, SyncAction::NewRevision { .. }) || digests.contains_key(&key) {
                continue;
            }
            match digest_of(self.resolver.as_ref(), &app.image).await {
                Ok(d) => {
                    digests.insert(key, d);
                }
                Err(e) => {
                    let mark = if e.kind() == crate::ErrorKind::Unavailable {
                        RETRY_MARK
                    } else {
                        ""
                    };
                    errors.push(format!("{mark}app {}: {e}", app.app));
                }
            }
        }
        errors
    }

    /// Registers (or re-registers) a host; its assignment keeps its version. Registrations
    /// that arrive while another write runs are stored together (one transaction, one
    /// event append: a fleet restarting at once), and share one reassignment.
    pub async fn register(&self, reg: Registration) -> Result<Registered, CoreError> {
        if !berth_manifests::is_dns_label(&reg.name) {
            return Err(CoreError::Invalid(format!(
                "host name {:?} must be a DNS label (lowercase letters, digits, dashes)",
                reg.name
            )));
        }
        let name = reg.name.clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.pending()
            .registrations
            .push(PendingRegistration { reg, reply });
        self.drain_pending().await;
        answer.await.unwrap_or_else(|_| {
            Err(CoreError::Conflict {
                what: format!("the registration of host {name} (its batch was interrupted)"),
            })
        })?;
        self.reassign_coalesced().await?;
        let version = self
            .assignment_json(&name)
            .await?
            .map_or(0, |c| c.assignment.version);
        Ok(Registered {
            name,
            assignment_version: version,
        })
    }

    /// Stores a batch of registrations (with the write lock held) and answers each.
    async fn apply_registrations(&self, batch: Vec<PendingRegistration>) {
        let now = self.now_ms();
        let mut hosts: BTreeMap<String, (Option<HostRecord>, Option<u64>)> = BTreeMap::new();
        let wanted: std::collections::BTreeSet<&str> =
            batch.iter().map(|p| p.reg.name.as_str()).collect();
        let read = self.host_records(&wanted).await.map(|found| {
            for name in &wanted {
                hosts.insert(name.to_string(), (None, None));
            }
            for (name, (record, version)) in found {
                hosts.insert(name, (Some(HostRecord::clone(&record)), Some(version)));
            }
        });
        if let Err(e) = read {
            for p in batch {
                let _ = p.reply.send(Err(e.again()));
            }
            return;
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut new_records: BTreeMap<String, HostRecord> = BTreeMap::new();
        for PendingRegistration { reg, reply } in batch {
            // a host registering twice in one batch: the second sees the first
            let old = new_records
                .get(&reg.name)
                .cloned()
                .or_else(|| hosts.get(&reg.name).and_then(|(r, _)| r.clone()));
            let was_down = old
                .as_ref()
                .is_some_and(|o| self.host_state(o, now) == HostState::Down);
            let record = HostRecord {
                registered_ms: old.as_ref().map_or(now, |o| o.registered_ms),
                last_report: old.as_ref().and_then(|o| o.last_report.clone()),
                last_seen_ms: now,
                registration: reg.clone(),
                down_since_ms: None,
                // back from down: work once it reported for a grace period (no flapping)
                returned_ms: if was_down {
                    Some(now)
                } else {
                    old.as_ref().and_then(|o| o.returned_ms)
                },
                converging_since_ms: Some(now),
                converged_in_ms: old.as_ref().and_then(|o| o.converged_in_ms),
            };
            let verb = if old.is_some() {
                "re-registered"
            } else {
                "registered"
            };
            let back = if was_down {
                format!(
                    "; it was down, so it gets work once it has reported for {:.1}s",
                    self.host_grace_ms as f64 / 1000.0
                )
            } else {
                String::new()
            };
            events.push(event(
                now,
                format!("host/{}", reg.name),
                "HostRegistered",
                format!(
                    "host {} {verb} (agent {}, cpu {}, memory {}){back}",
                    reg.name,
                    reg.agent_version,
                    assign::show_cpu(reg.capacity.cpu_millis, reg.capacity.cpu_millis > 0),
                    assign::show_memory(reg.capacity.memory_bytes, reg.capacity.memory_bytes > 0),
                ),
            ));
            new_records.insert(reg.name.clone(), record);
            replies.push(reply);
        }
        let mut txn = Txn::new();
        for (name, record) in &new_records {
            let key = host_key(name);
            let version = hosts.get(name).and_then(|(_, v)| *v);
            txn = txn
                .when_version(key.clone(), version)
                .put(key, encode(record));
        }
        let result = async {
            let revision = self.commit_at(txn, "host").await?;
            self.cache_hosts_written(new_records, revision);
            self.events.append(events).await?;
            Ok::<(), CoreError>(())
        }
        .await;
        for reply in replies {
            let _ = reply.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(e.again()),
            });
        }
    }

    /// The stored records of `names` with their versions: one range read for many, a read
    /// each for a few.
    async fn host_records(
        &self,
        names: &std::collections::BTreeSet<&str>,
    ) -> Result<BTreeMap<String, (Arc<HostRecord>, u64)>, CoreError> {
        let mut out = BTreeMap::new();
        {
            // from the cache: only the batch's entries (not a copy of all ten thousand)
            let cache = self.cache();
            if let Some(records) = &cache.records {
                for name in names {
                    if let Some(found) = records.get(*name) {
                        out.insert(name.to_string(), found.clone());
                    }
                }
                return Ok(out);
            }
        }
        if names.len() > REPORT_BATCH_LIST {
            let all = self.host_entries().await?;
            for name in names {
                if let Some(found) = all.get(*name) {
                    out.insert(name.to_string(), found.clone());
                }
            }
        } else {
            for name in names {
                let key = host_key(name);
                if let Some(entry) = self.store.get(&key).await? {
                    let record: HostRecord = decode(&key, &entry.value)?;
                    out.insert(name.to_string(), (Arc::new(record), entry.version));
                }
            }
        }
        Ok(out)
    }

    /// Applies the registrations and reports that wait, each kind as one group commit,
    /// once no reassignment runs, under the write lock (the caller's may be among them, or
    /// already applied by another caller that held the lock first); then, when a report
    /// failed a rollout, places again under the assignment lock alone.
    async fn drain_pending(&self) {
        // while a reassignment runs, what arrives only queues: its store commit (ten
        // thousand assignments) then does not wait for a batch's behind the store's single
        // writer, and the batch after it takes everything that queued meanwhile
        drop(self.assign.lock().await);
        let write = self.write.lock().await;
        let Pending {
            registrations,
            reports,
        } = std::mem::take(&mut *self.pending());
        if !registrations.is_empty() {
            self.apply_registrations(registrations).await;
        }
        let Some((replies, mut result, retarget)) = self.apply_reports(reports).await else {
            return;
        };
        drop(write);
        if retarget && result.is_ok() {
            let _assign = self.assign.lock().await;
            result = self.reassign("report").await;
        }
        for reply in replies {
            let _ = reply.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(e.again()),
            });
        }
    }

    /// Takes a host's report: heartbeat, instances, rollout outcomes, events. Reports that
    /// arrive while another write runs are applied together, in one store transaction and
    /// one event append (a group commit: ten thousand hosts reporting every ten seconds
    /// would otherwise be a thousand synced commits a second).
    pub async fn report(&self, host: &str, report: HostReport) -> Result<(), CoreError> {
        if report.host != host {
            return Err(CoreError::Invalid(format!(
                "report names host {:?} but was sent for {host:?}",
                report.host
            )));
        }
        if report.events.len() > MAX_REPORT_EVENTS {
            return Err(CoreError::Invalid(format!(
                "a report carries at most {MAX_REPORT_EVENTS} events; send the rest in the next one"
            )));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.pending().reports.push(PendingReport { report, reply });
        self.drain_pending().await;
        answer.await.unwrap_or_else(|_| {
            Err(CoreError::Conflict {
                what: format!("the report of host {host} (its batch was interrupted)"),
            })
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a batch of reports (with the write lock held); returns the replies to send,
    /// the outcome and whether placement must run again (a rollout failed), or `None` when
    /// no report was accepted (each answered already).
    async fn apply_reports(
        &self,
        batch: Vec<PendingReport>,
    ) -> Option<(ReportReplies, Result<(), CoreError>, bool)> {
        if batch.is_empty() {
            return None;
        }
        let now = self.now_ms();
        let mut hosts: BTreeMap<String, (HostRecord, u64)> = BTreeMap::new();
        let mut original = Histories::new();
        let mut current: BTreeMap<String, AppHistory> = BTreeMap::new();
        let mut events = Vec::new();
        let mut outcomes = Vec::new();
        let mut retarget = false;
        let mut returned = false;
        let mut converged = Vec::new();
        let mut accepted = Vec::new();
        {
            // the batch's hosts at once (from the cache, or one range read for many)
            let wanted: std::collections::BTreeSet<&str> =
                batch.iter().map(|p| p.report.host.as_str()).collect();
            match self.host_records(&wanted).await {
                Ok(found) => {
                    for (name, (record, version)) in found {
                        hosts.insert(name, (HostRecord::clone(&record), version));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the hosts of a report batch"),
            }
            // the histories of the apps the batch reports: one range read for many
            let apps: std::collections::BTreeSet<&str> = batch
                .iter()
                .flat_map(|p| p.report.apps.iter().map(|a| a.app.as_str()))
                .collect();
            if apps.len() > REPORT_BATCH_LIST {
                match self.histories().await {
                    Ok(all) => original = all,
                    Err(e) => tracing::warn!(error = %e, "reading the apps of a report batch"),
                }
            }
        }
        for PendingReport { mut report, reply } in batch {
            let host = report.host.clone();
            let assigned = match self
                .load_for_report(&report, &mut hosts, &mut original)
                .await
            {
                Ok(Some(assigned)) => assigned,
                Ok(None) => {
                    let _ = reply.send(Err(CoreError::NoSuchHost { host }));
                    continue;
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            };
            let assigned: Option<HostAssignment> = assigned.map(|c| c.assignment.clone());
            events.append(&mut report.events);
            for app in &report.apps {
                // a host speaks only for the apps assigned to it
                let mine = assigned
                    .as_ref()
                    .is_some_and(|a| a.apps.iter().any(|x| x.target.app == app.app));
                if !mine {
                    continue;
                }
                let Some(old) = current
                    .get(&app.app)
                    .cloned()
                    .or_else(|| original.get(&app.app).map(|(h, _)| h.clone()))
                else {
                    continue;
                };
                let (new, outcome) = revisions::apply_report(old, app, now);
                match outcome {
                    ReportOutcome::Nothing => continue,
                    ReportOutcome::Completed { revision } => {
                        outcomes.push((app.app.clone(), RolloutResult::Complete, false));
                        events.push(event(
                            now,
                            format!("app/{}", app.app),
                            "RolloutComplete",
                            format!("revision {revision} is ready on host {host}"),
                        ));
                    }
                    ReportOutcome::Failed {
                        revision,
                        to,
                        reason,
                    } => {
                        retarget = true;
                        let result = match app.rollout {
                            berth_manifests::wire::RolloutState::RolledBack { .. } => {
                                RolloutResult::RolledBack
                            }
                            _ => RolloutResult::Failed,
                        };
                        outcomes.push((app.app.clone(), result, to.is_some()));
                        let back = match to {
                            Some(to) => format!("; back to revision {to}"),
                            None => "; there is no earlier good revision".into(),
                        };
                        events.push(event(
                            now,
                            format!("app/{}", app.app),
                            "RevisionFailed",
                            format!(
                                "revision {revision} failed on host {host}: {reason}{back}; it is not retried until the manifest changes"
                            ),
                        ));
                    }
                }
                current.insert(app.app.clone(), new);
            }
            if let Some((record, _)) = hosts.get_mut(&host) {
                if self.host_state(record, now) == HostState::Down {
                    record.down_since_ms = None;
                    record.returned_ms = Some(now);
                    returned = true;
                    events.push(event(
                        now,
                        format!("host/{host}"),
                        "HostReturned",
                        format!(
                            "host {host} reports again after being down; it gets work once it has reported for {:.1}s",
                            self.host_grace_ms as f64 / 1000.0
                        ),
                    ));
                }
                record.last_seen_ms = now;
                if let Some(since) = record.converging_since_ms
                    && converged_on(
                        assigned.as_ref(),
                        &report,
                        self.host_state(record, now) == HostState::Ready,
                    )
                {
                    let took = now.saturating_sub(since);
                    record.converging_since_ms = None;
                    record.converged_in_ms = Some(took);
                    converged.push(took);
                    let instances: u32 = assigned
                        .iter()
                        .flat_map(|a| &a.apps)
                        .map(|x| assign::share(x.scale))
                        .sum();
                    events.push(event(
                        now,
                        format!("host/{host}"),
                        "HostConverged",
                        format!(
                            "host {host} converged {:.1}s after registering: {instances} assigned instance(s) ready",
                            took as f64 / 1000.0
                        ),
                    ));
                }
                record.last_report = Some(report);
            }
            accepted.push(reply);
        }
        if accepted.is_empty() {
            return None;
        }
        let mut txn = Txn::new();
        for (host, (record, version)) in &hosts {
            let key = host_key(host);
            txn = txn
                .when_version(key.clone(), Some(*version))
                .put(key, encode(record));
        }
        for (app, new) in &current {
            txn = Self::save(txn, original.get(app), new);
        }
        let written: Vec<(String, HostRecord)> = hosts
            .into_iter()
            .map(|(name, (record, _))| (name, record))
            .collect();
        let result = async {
            let revision = self.commit_at(txn, "report").await?;
            self.cache_hosts_written(written, revision);
            for ms in converged {
                self.metrics.host_converged(ms as f64 / 1000.0);
            }
            for (app, result, moved) in outcomes {
                self.metrics.rollout(&app, result);
                if moved {
                    self.metrics.target_changed(&app, TargetCause::Failure);
                }
            }
            self.events.append(events).await?;
            // the host gauges are recomputed at every scrape; here only when a host
            // came back (cheap otherwise: a batch may hold thousands of heartbeats)
            if returned {
                self.refresh_host_metrics().await?;
            }
            Ok::<(), CoreError>(())
        }
        .await;
        Some((accepted, result, retarget))
    }

    /// Loads what `report` needs into the batch's maps: its host record (`None`: the host is
    /// not registered) and the histories of the apps it reports that are assigned to it (a
    /// host speaks only for those); returns the host's assignment.
    async fn load_for_report(
        &self,
        report: &HostReport,
        hosts: &mut BTreeMap<String, (HostRecord, u64)>,
        histories: &mut Histories,
    ) -> Result<Option<Option<Arc<CachedAssignment>>>, CoreError> {
        let host = &report.host;
        if !hosts.contains_key(host) {
            let key = host_key(host);
            let Some(entry) = self.store.get(&key).await? else {
                return Ok(None);
            };
            let record: HostRecord = decode(&key, &entry.value)?;
            hosts.insert(host.clone(), (record, entry.version));
        }
        let assigned = self.assignment_json(host).await?;
        for app in &report.apps {
            let mine = assigned
                .as_ref()
                .is_some_and(|a| a.assignment.apps.iter().any(|x| x.target.app == app.app));
            if mine && !histories.contains_key(&app.app) {
                histories.extend(self.histories_under(&format!("apps/{}/", app.app)).await?);
            }
        }
        Ok(Some(assigned))
    }

    /// Sets the `berth_controller_hosts` gauges from the stored hosts and the clock.
    pub async fn refresh_host_metrics(&self) -> Result<(), CoreError> {
        let now = self.now_ms();
        let states = self
            .hosts()
            .await?
            .iter()
            .map(|h| (h.registration.name.clone(), self.host_state(h, now)))
            .collect();
        self.set_host_gauges(&states);
        Ok(())
    }

    /// Pins `app` to revision `to` (default: the previous good one).
    pub async fn rollback(&self, app: &str, to: Option<u64>) -> Result<RevisionInfo, CoreError> {
        let write = self.write.lock().await;
        let now = self.now_ms();
        let old = self.history(app).await?;
        let from = old.0.record.target;
        let new = revisions::rollback(old.0.clone(), to)?;
        let target = new.record.target;
        self.commit(Self::save(Txn::new(), Some(&old), &new), "rollback")
            .await?;
        if target != from {
            self.metrics.target_changed(app, TargetCause::Rollback);
        }
        self.events
            .append(vec![event(
                now,
                format!("app/{app}"),
                "RolledBackByUser",
                format!(
                    "app {app} pinned to revision {target} (was {from}) until its manifest changes"
                ),
            )])
            .await?;
        drop(write);
        let _assign = self.assign.lock().await;
        self.reassign("rollback").await?;
        let info = new
            .target()
            .map(|r| r.to_info(true))
            .ok_or_else(|| CoreError::NoSuchApp {
                app: app.to_string(),
            })?;
        Ok(info)
    }

    /// Every revision of `app`, oldest first.
    pub async fn revisions(&self, app: &str) -> Result<Vec<RevisionInfo>, CoreError> {
        let (h, _) = self.history(app).await?;
        Ok(h.revisions
            .iter()
            .map(|r| r.to_info(h.record.pinned && r.number == h.record.target))
            .collect())
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<ClusterStatus, CoreError> {
        let now = self.now_ms();
        let histories = self.histories().await?;
        let hosts = self.hosts().await?;
        let mut assignments = BTreeMap::new();
        for h in &hosts {
            if let Some(a) = self.assignment_json(&h.registration.name).await? {
                assignments.insert(h.registration.name.clone(), a.assignment.clone());
            }
        }
        let sync = self.sync_status().await?;
        let unplaced = self.unplaced().await?;
        let apps = histories
            .values()
            .filter(|(h, _)| h.record.in_git)
            .map(|(h, _)| {
                let (desired, ready) = app_counts(h, h.record.target, &hosts, &assignments);
                // a refused commit that concerns the app is an error of the app too
                let refused = sync.app_errors.get(&h.record.name).map(|lines| {
                    let head = sync.head.as_deref().unwrap_or_default();
                    format!(
                        "commit {} refused: {}",
                        head.get(..12).unwrap_or(head),
                        lines.join("; ")
                    )
                });
                let requests_total = hosts
                    .iter()
                    .filter_map(|host| {
                        host.last_report
                            .as_ref()?
                            .apps
                            .iter()
                            .find(|a| a.app == h.record.name)?
                            .requests_total
                    })
                    .reduce(u64::saturating_add);
                AppStatus {
                    requests_total,
                    name: h.record.name.clone(),
                    revision: h.record.target,
                    desired,
                    ready,
                    pinned: h.record.pinned,
                    // both when both hold: the head is refused and a revision failed
                    last_error: match (refused, h.record.last_error.clone()) {
                        (Some(r), Some(e)) => Some(format!("{r}; {e}")),
                        (r, e) => r.or(e),
                    },
                    head: h.newest().map_or(0, |r| r.number),
                    unplaced: unplaced
                        .iter()
                        .find(|u| u.app == h.record.name)
                        .map(|u| u.reason.clone()),
                }
            })
            .collect();
        let hosts = hosts
            .iter()
            .map(|h| {
                let state = self.host_state(h, now);
                HostStatus {
                    name: h.registration.name.clone(),
                    ready: state == HostState::Ready,
                    labels: h.registration.labels.clone(),
                    last_seen_ms: h.last_seen_ms,
                    state: state.as_str().to_string(),
                    capacity: h.registration.capacity,
                    allocated: allocated(assignments.get(&h.registration.name)),
                    converged_in_ms: h.converged_in_ms,
                }
            })
            .collect();
        Ok(ClusterStatus { apps, hosts, sync })
    }

    /// `GET /v1/instances`: every instance from the newest reports of the hosts that are not
    /// down (a down host's instances are unknown, and its apps were placed elsewhere).
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>, CoreError> {
        let now = self.now_ms();
        let mut out = Vec::new();
        for h in self.hosts().await? {
            if self.host_state(&h, now) == HostState::Down {
                continue;
            }
            for i in h.last_report.iter().flat_map(|r| &r.instances) {
                out.push(InstanceInfo {
                    id: i.id.clone(),
                    app: i.app.clone(),
                    host: h.registration.name.clone(),
                    revision: i.revision,
                    state: i.state,
                    restarts: i.restarts,
                    message: i.message.clone(),
                });
            }
        }
        out.sort_by(|a, b| (&a.app, &a.host, &a.id).cmp(&(&b.app, &b.host, &b.id)));
        Ok(out)
    }

    /// `GET /v1/apps/{app}/rollout`: how revision `revision` (default: the pinned one while
    /// pinned, else the newest) stands.
    pub async fn rollout(
        &self,
        app: &str,
        revision: Option<u64>,
    ) -> Result<RolloutStatus, CoreError> {
        let (h, _) = self.history(app).await?;
        // default: the newest revision, or the pinned one while a rollback pins the app
        let number = revision
            .or(h.record.pinned.then_some(h.record.target))
            .or(h.newest().map(|r| r.number))
            .unwrap_or_default();
        let rev = h.revision(number).ok_or_else(|| {
            CoreError::Rollback(RollbackError::NoSuchRevision {
                app: app.to_string(),
                number,
            })
        })?;
        let hosts = self.hosts().await?;
        let mut assignments = BTreeMap::new();
        let mut per_host = Vec::new();
        for host in &hosts {
            let name = &host.registration.name;
            let Some(a) = self
                .assignment_json(name)
                .await?
                .map(|c| c.assignment.clone())
            else {
                continue;
            };
            if a.apps.iter().any(|x| x.target.app == app) {
                per_host.push(HostRollout {
                    host: name.clone(),
                    report: host
                        .last_report
                        .as_ref()
                        .and_then(|r| r.apps.iter().find(|x| x.app == app).cloned()),
                });
            }
            assignments.insert(name.clone(), a);
        }
        let (desired, ready) = app_counts(&h, number, &hosts, &assignments);
        let done = |r: &Option<AppReport>| {
            r.as_ref().is_some_and(|r| {
                r.target == number
                    && r.ready >= r.desired
                    && r.rollout == berth_manifests::wire::RolloutState::Complete
            })
        };
        let (phase, message) = if rev.state == berth_manifests::wire::RevisionState::Failed {
            (
                RolloutPhase::Failed,
                format!(
                    "revision {number} failed: {}",
                    rev.failure.as_deref().unwrap_or("unknown reason")
                ),
            )
        } else if h.record.target != number {
            (
                RolloutPhase::Superseded,
                format!(
                    "revision {number} was replaced by revision {} before completing",
                    h.record.target
                ),
            )
        } else if !h.record.in_git {
            (
                RolloutPhase::Superseded,
                format!("app {app} was removed from the manifests"),
            )
        } else if per_host.is_empty() {
            (
                RolloutPhase::Progressing,
                "no host is assigned the app yet (no registered host matches its placement)".into(),
            )
        } else if per_host.iter().all(|x| done(&x.report)) {
            (
                RolloutPhase::Complete,
                format!("revision {number}: {ready} of {desired} instances ready"),
            )
        } else {
            (
                RolloutPhase::Progressing,
                format!("revision {number}: {ready} of {desired} instances ready"),
            )
        };
        Ok(RolloutStatus {
            app: app.to_string(),
            revision: number,
            target: h.record.target,
            phase,
            desired,
            ready,
            message,
            hosts: per_host,
        })
    }
}

/// [`revisions::plan_sync`] over stored histories.
fn plan_of(stored: &Histories, apps: &[App]) -> (Vec<(App, SyncAction)>, Vec<String>) {
    let plain: BTreeMap<String, AppHistory> = stored
        .iter()
        .map(|(k, (h, _))| (k.clone(), h.clone()))
        .collect();
    revisions::plan_sync(&plain, apps)
}

/// A refused commit's error lines by the app they concern: `path:line:col: …` lines go to
/// the apps the file names (its top-level `app:` lines; the file may not parse), `app NAME: …`
/// lines (an image that did not resolve) to that app.
fn errors_by_app(files: &[SourceFile], errors: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in errors {
        if let Some(rest) = line.strip_prefix("app ")
            && let Some((name, _)) = rest.split_once(':')
            && berth_manifests::is_dns_label(name)
        {
            out.entry(name.to_string()).or_default().push(line.clone());
            continue;
        }
        let Some(file) = files
            .iter()
            .find(|f| line.starts_with(&format!("{}:", f.path)))
        else {
            continue;
        };
        for name in app_names(&file.bytes) {
            out.entry(name).or_default().push(line.clone());
        }
    }
    out
}

/// The names on top-level `app: NAME` lines of a manifest file, read leniently (the file
/// may be invalid YAML).
fn app_names(bytes: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.strip_prefix("app:"))
        .map(|v| {
            let v = v.split(" #").next().unwrap_or_default().trim();
            v.trim_matches(|c| c == '"' || c == '\'').to_string()
        })
        .filter(|v| berth_manifests::is_dns_label(v))
        .collect();
    names.dedup();
    names
}

/// What the instances of an assignment request.
fn allocated(assignment: Option<&HostAssignment>) -> Capacity {
    let mut out = Capacity::default();
    for x in assignment.iter().flat_map(|a| &a.apps) {
        let need = assign::need_of(&x.target.spec);
        let n = u64::from(assign::share(x.scale));
        out.cpu_millis = out
            .cpu_millis
            .saturating_add(need.cpu_millis.saturating_mul(n));
        out.memory_bytes = out
            .memory_bytes
            .saturating_add(need.memory_bytes.saturating_mul(n));
    }
    out
}

/// Whether `report` shows every instance of `assignment` ready: the report is about the
/// assignment's version and every assigned app reports its target with at least its share
/// (autoscale: its min) ready. An empty assignment counts only on a `ready` host (a
/// returning host gets its work later).
fn converged_on(
    assignment: Option<&HostAssignment>,
    report: &HostReport,
    ready_host: bool,
) -> bool {
    let Some(a) = assignment.filter(|a| !a.apps.is_empty()) else {
        return ready_host;
    };
    report.assignment_version >= a.version
        && a.apps.iter().all(|x| {
            let want = match x.scale {
                Scale::Fixed { replicas } => replicas,
                Scale::Auto { min, .. } => min,
            };
            report.apps.iter().any(|r| {
                r.app == x.target.app
                    && r.target == x.target.number
                    && r.ready >= want
                    && r.ready >= r.desired
            })
        })
}

/// Marks resolution errors worth retrying at the next poll (stripped before display).
const RETRY_MARK: &str = "\u{1}retry:";

/// Instances wanted and ready for revision `number` of an app, summed over the hosts that
/// are assigned it: a host's report when it is about `number`, else its assigned share.
fn app_counts(
    h: &AppHistory,
    number: u64,
    hosts: &[Arc<HostRecord>],
    assignments: &BTreeMap<String, HostAssignment>,
) -> (u32, u32) {
    let mut desired = 0u32;
    let mut ready = 0u32;
    let mut placed = false;
    for host in hosts {
        let name = &host.registration.name;
        let Some(assigned) = assignments
            .get(name)
            .and_then(|a| a.apps.iter().find(|x| x.target.app == h.record.name))
        else {
            continue;
        };
        placed = true;
        let report = host
            .last_report
            .as_ref()
            .and_then(|r| r.apps.iter().find(|x| x.app == h.record.name))
            .filter(|r| r.target == number);
        match report {
            Some(r) => {
                desired = desired.saturating_add(r.desired);
                ready = ready.saturating_add(r.ready);
            }
            None => {
                desired = desired.saturating_add(match assigned.scale {
                    Scale::Fixed { replicas } => replicas,
                    Scale::Auto { min, .. } => min,
                });
            }
        }
    }
    if !placed {
        // on no host yet: what the spec asks for, so `0/3` shows the gap
        desired = h.revision(number).map_or(0, |r| match &r.spec.autoscale {
            Some(auto) => auto.min,
            None => r.spec.replicas.unwrap_or(1),
        });
    }
    (desired, ready)
}

#[cfg(test)]
mod tests {
    use super::{SourceFile, app_names, errors_by_app};

    fn file(path: &str, text: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            bytes: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn names_apps_of_a_file_that_does_not_parse() {
        let text = "app: web\nimage: x\nreplicas: [\n---\napp: \"api\" # second\n  app: nested\n";
        assert_eq!(app_names(text.as_bytes()), ["web", "api"]);
    }

    #[test]
    fn refused_commit_errors_go_to_the_apps_they_concern() {
        let files = [
            file("apps/web.yaml", "app: web\nreplicas: lots\n"),
            file("apps/web.yaml.bak.yaml", "app: other\n"),
            file("db.yaml", "app: db\n"),
        ];
        let errors = [
            "apps/web.yaml:2:11: replicas: expected a number".to_string(),
            "app db: image not found".to_string(),
        ];
        let by = errors_by_app(&files, &errors);
        assert_eq!(by.len(), 2, "{by:?}");
        assert_eq!(by["web"], [errors[0].clone()]);
        assert_eq!(by["db"], [errors[1].clone()]);
    }
}
