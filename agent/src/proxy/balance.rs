//! Backends of one app and the choice among them: least in-flight requests, ties broken
//! round-robin. A backend is in rotation from `add` until `remove`; `remove` returns once no
//! new request can pick it, and [`drain`] then waits for the requests it still serves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

/// One instance the proxy forwards to.
#[derive(Debug)]
pub struct Backend {
    id: String,
    addr: SocketAddr,
    in_flight: AtomicUsize,
    served: AtomicU64,
    idle: Notify,
    /// HTTP mode: the pooled keep-alive client to this backend alone. One pool per backend,
    /// not one per app keyed by `ip:port`: an instance's address is reused by the IPAM once
    /// it is gone, and a pooled connection to the old instance (whose FIN may never have
    /// arrived, its veth being removed with it) must never carry a request to the new one.
    /// Dropped when the backend leaves the rotation, which closes its idle connections.
    http: Mutex<Option<crate::proxy::l7::Client>>,
    retired: AtomicBool,
}

impl Backend {
    fn new(id: &str, addr: SocketAddr) -> Self {
        Self {
            id: id.to_owned(),
            addr,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle: Notify::new(),
            http: Mutex::new(None),
            retired: AtomicBool::new(false),
        }
    }

    /// The HTTP client of this backend: its own pool, made on first use. Once the backend
    /// has left the rotation (a request that picked it just before still goes there), a
    /// fresh client that is not kept: no pooled connection of a removed backend is reused.
    pub(crate) fn http_client(
        &self,
        make: impl FnOnce() -> crate::proxy::l7::Client,
    ) -> crate::proxy::l7::Client {
        let mut slot = self
            .http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.retired.load(Ordering::Acquire) {
            return make();
        }
        slot.get_or_insert_with(make).clone()
    }

    /// Out of rotation: drops the pool (its idle connections close; requests in flight keep
    /// theirs until they end, then those close too).
    fn retire(&self) {
        let mut slot = self
            .http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.retired.store(true, Ordering::Release);
        slot.take();
    }

    /// Whether the HTTP mode holds a pool for this backend (tests).
    #[cfg(test)]
    pub(crate) fn has_pool(&self) -> bool {
        self.http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests (or TCP connections) it is serving now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Requests (or connections) it was given in all.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// A request's hold on its backend; dropping it ends the request for balancing and drain.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
}

impl InFlight {
    fn new(backend: Arc<Backend>) -> Self {
        backend.in_flight.fetch_add(1, Ordering::AcqRel);
        backend.served.fetch_add(1, Ordering::Relaxed);
        Self { backend }
    }

    /// The backend held.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.backend.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.backend.idle.notify_waiters();
        }
    }
}

/// The backends in rotation for one app.
#[derive(Debug, Default)]
pub struct Pool {
    backends: RwLock<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    added: Notify,
}

impl Pool {
    /// Puts a backend in rotation (call once it is ready). Adding an id again with the same
    /// address keeps the existing backend; with another address it replaces it.
    pub fn add(&self, id: &str, addr: SocketAddr) -> Arc<Backend> {
        let mut list = self.write();
        if let Some(b) = list.iter().find(|b| b.id == id && b.addr == addr) {
            return Arc::clone(b);
        }
        list.retain(|b| {
            let keep = b.id != id;
            if !keep {
                b.retire();
            }
            keep
        });
        let b = Arc::new(Backend::new(id, addr));
        list.push(Arc::clone(&b));
        drop(list);
        self.added.notify_waiters();
        b
    }

    /// Takes a backend out of rotation. When this returns, no new request will pick it;
    /// requests that picked it earlier go on (see [`drain`]).
    pub fn remove(&self, id: &str) -> Option<Arc<Backend>> {
        let mut list = self.write();
        let pos = list.iter().position(|b| b.id == id)?;
        let b = list.remove(pos);
        drop(list);
        b.retire();
        Some(b)
    }

    /// The backend with an id, if in rotation.
    pub fn get(&self, id: &str) -> Option<Arc<Backend>> {
        self.read().iter().find(|b| b.id == id).cloned()
    }

    /// Backends in rotation.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.read().clone()
    }

    /// Picks the backend with the fewest requests in flight (round-robin among equals) and
    /// counts the new request on it, or `None` when nothing is in rotation. `except` skips
    /// one backend (the one a retried request failed on) when another exists.
    pub fn pick(&self, except: Option<&str>) -> Option<InFlight> {
        let list = self.read();
        let n = list.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<&Arc<Backend>> = None;
        for i in 0..n {
            let b = &list[(start + i) % n];
            if n > 1 && except == Some(b.id.as_str()) {
                continue;
            }
            if best.is_none_or(|cur| b.in_flight() < cur.in_flight()) {
                best = Some(b);
            }
        }
        // Counted while the read lock is held: `remove` (write lock) then sees it in drain.
        best.map(|b| InFlight::new(Arc::clone(b)))
    }

    /// Waits up to `wait` for a backend to be in rotation, then picks one.
    pub async fn pick_within(&self, wait: Duration) -> Option<InFlight> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if let Some(f) = self.pick(None) {
                return Some(f);
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return None;
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Backend>>> {
        self.backends
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Backend>>> {
        self.backends
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum DrainOutcome {
    /// No request is in flight any more.
    Drained,
    /// The timeout passed with requests still in flight.
    TimedOut {
        /// How many.
        in_flight: usize,
    },
}

/// Waits until `backend` serves no request, or `timeout` passes. Call after taking it out of
/// rotation, before sending the stop signal.
pub async fn drain(backend: &Backend, timeout: Duration) -> DrainOutcome {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let idle = backend.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if backend.in_flight() == 0 {
            return DrainOutcome::Drained;
        }
        if tokio::time::timeout_at(deadline, idle).await.is_err() {
            let in_flight = backend.in_flight();
            return if in_flight == 0 {
                DrainOutcome::Drained
            } else {
                DrainOutcome::TimedOut { in_flight }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn picks_the_backend_with_fewest_in_flight() {
        let pool = Pool::default();
        pool.add("a", addr(1));
        pool.add("b", addr(2));
        let held: Vec<InFlight> = (0..3).map(|_| pool.pick(None).unwrap()).collect();
        // 3 picks over 2 idle backends: 2 and 1.
        let on_a = held.iter().filter(|f| f.backend().id() == "a").count();
        assert!(on_a == 1 || on_a == 2);
        let next = pool.pick(None).unwrap();
        let fewer = if on_a == 1 { "a" } else { "b" };
        assert_eq!(next.backend().id(), fewer);
    }

    #[test]
    fn removed_backend_is_never_picked() {
        let pool = Pool::default();
        pool.add("a", addr(1));
        pool.add("b", addr(2));
        let a = pool.remove("a").unwrap();
        for _ in 0..10 {
            assert_eq!(pool.pick(None).unwrap().backend().id(), "b");
        }
        assert_eq!(a.in_flight(), 0);
        assert!(pool.remove("a").is_none());
        pool.remove("b");
        assert!(pool.pick(None).is_none());
    }

    #[test]
    fn except_skips_a_backend_when_another_exists() {
        let pool = Pool::default();
        pool.add("a", addr(1));
        assert_eq!(pool.pick(Some("a")).unwrap().backend().id(), "a");
        pool.add("b", addr(2));
        for _ in 0..5 {
            assert_eq!(pool.pick(Some("a")).unwrap().backend().id(), "b");
        }
    }

    #[tokio::test]
    async fn a_removed_backend_keeps_no_pool() {
        let pool = Pool::default();
        let a = pool.add("a", addr(1));
        let make = || crate::proxy::l7::Client::new(addr(1), Duration::from_secs(1));
        let _c = a.http_client(make);
        assert!(a.has_pool());
        pool.remove("a").unwrap();
        assert!(!a.has_pool(), "leaving the rotation drops the pool");
        // A request that picked it before the removal gets a client that is not kept.
        let _late = a.http_client(make);
        assert!(!a.has_pool());
        // Re-added (same id and address, e.g. a reused IP): a new backend, a new pool.
        let again = pool.add("a", addr(1));
        assert!(!Arc::ptr_eq(&a, &again) && !again.has_pool());
        // Re-added with another address: the old one is retired too.
        let _c = again.http_client(make);
        let moved = pool.add("a", addr(2));
        assert!(!again.has_pool() && !moved.has_pool());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_in_flight_requests_or_times_out() {
        let pool = Pool::default();
        pool.add("a", addr(1));
        let req = pool.pick(None).unwrap();
        let a = pool.remove("a").unwrap();
        assert_eq!(
            drain(&a, Duration::from_secs(1)).await,
            DrainOutcome::TimedOut { in_flight: 1 }
        );
        let a2 = Arc::clone(&a);
        let waiter = tokio::spawn(async move { drain(&a2, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(req);
        assert_eq!(waiter.await.unwrap(), DrainOutcome::Drained);
    }

    #[tokio::test(start_paused = true)]
    async fn pick_within_waits_for_a_backend_to_be_added() {
        let pool = Arc::new(Pool::default());
        assert!(pool.pick_within(Duration::from_millis(50)).await.is_none());
        let p2 = Arc::clone(&pool);
        let t = tokio::spawn(async move {
            p2.pick_within(Duration::from_secs(5))
                .await
                .map(|f| f.backend().id().to_owned())
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        pool.add("late", addr(3));
        assert_eq!(t.await.unwrap().as_deref(), Some("late"));
    }
}
