//! The event log: numbered [`Event`]s kept in the store (the newest [`EventLog::keep`]) and
//! broadcast to followers (`berth events -f`). It owns the `events/` keys and nothing else.

use std::sync::Arc;

use berth_manifests::wire::Event;
use tokio::sync::{Mutex, broadcast};

use crate::model::event_key;
use crate::store::{Outcome, Store, StoreError, Txn};

/// A stored event and its sequence number.
pub type Numbered = (u64, Event);

/// Appends, lists and broadcasts events.
pub struct EventLog<S: Store> {
    store: Arc<S>,
    next: Mutex<u64>,
    tx: broadcast::Sender<Numbered>,
    keep: u64,
}

impl<S: Store> EventLog<S> {
    /// Opens the log on `store`, continuing after its newest event; keeps `keep` events.
    pub async fn open(store: Arc<S>, keep: u64) -> Result<EventLog<S>, StoreError> {
        let last = Self::newest(&store).await?;
        let (tx, _) = broadcast::channel(1024);
        Ok(EventLog {
            store,
            next: Mutex::new(last + 1),
            tx,
            keep: keep.max(1),
        })
    }

    /// The newest stored sequence number (0: none).
    async fn newest(store: &S) -> Result<u64, StoreError> {
        Ok(store
            .list("events/")
            .await?
            .last()
            .and_then(|(k, _)| k.strip_prefix("events/")?.parse::<u64>().ok())
            .unwrap_or(0))
    }

    /// How many events are kept.
    pub fn keep(&self) -> u64 {
        self.keep
    }

    /// Stores `events` in order (dropping the oldest beyond the limit) and broadcasts them.
    /// Another controller on the same store (HA: the previous leader) may have appended
    /// since this log was opened: the write is conditioned on its first number being free,
    /// and on a conflict the numbering continues after the stored newest.
    pub async fn append(&self, events: Vec<Event>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut next = self.next.lock().await;
        for _ in 0..3 {
            let mut txn = Txn::new().when_version(event_key(*next), None);
            let mut numbered = Vec::with_capacity(events.len());
            for (seq, event) in (*next..).zip(&events) {
                let value = serde_json::to_vec(event).unwrap_or_default();
                txn = txn.put(event_key(seq), value);
                if seq > self.keep {
                    txn = txn.delete(event_key(seq - self.keep));
                }
                numbered.push((seq, event.clone()));
            }
            match self.store.commit(txn).await? {
                Outcome::Applied { .. } => {
                    *next += numbered.len() as u64;
                    for n in numbered {
                        let _ = self.tx.send(n);
                    }
                    return Ok(());
                }
                Outcome::Conflict => *next = Self::newest(&self.store).await? + 1,
            }
        }
        Err(StoreError::Backend {
            backend: "events",
            reason: "event numbers kept being taken by another writer; retry".into(),
        })
    }

    /// Stored events with a sequence number above `after`, oldest first.
    pub async fn list(&self, after: u64) -> Result<Vec<Numbered>, StoreError> {
        Ok(self
            .store
            .list("events/")
            .await?
            .into_iter()
            .filter_map(|(k, e)| {
                let seq = k.strip_prefix("events/")?.parse::<u64>().ok()?;
                let event = serde_json::from_slice(&e.value).ok()?;
                (seq > after).then_some((seq, event))
            })
            .collect())
    }

    /// New events as they are appended.
    pub fn subscribe(&self) -> broadcast::Receiver<Numbered> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;

    fn ev(n: u64) -> Event {
        Event {
            time_ms: n,
            object: "sync".into(),
            reason: "Test".into(),
            message: format!("event {n}"),
        }
    }

    #[tokio::test]
    async fn keeps_the_newest_events_and_continues_numbering_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Arc::new(RedbStore::open(&path).unwrap());
            let log = EventLog::open(store, 3).await.unwrap();
            let mut rx = log.subscribe();
            log.append((1..=5).map(ev).collect()).await.unwrap();
            let seqs: Vec<u64> = log.list(0).await.unwrap().iter().map(|(s, _)| *s).collect();
            assert_eq!(seqs, [3, 4, 5]);
            assert_eq!(log.list(4).await.unwrap()[0].1, ev(5));
            assert_eq!(rx.recv().await.unwrap().0, 1);
        }
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let log = EventLog::open(store, 3).await.unwrap();
        log.append(vec![ev(6)]).await.unwrap();
        let seqs: Vec<u64> = log.list(0).await.unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [4, 5, 6]);
    }

    #[tokio::test]
    async fn a_second_log_on_the_same_store_continues_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let first = EventLog::open(store.clone(), 100).await.unwrap();
        let second = EventLog::open(store.clone(), 100).await.unwrap();
        first.append(vec![ev(1), ev(2)]).await.unwrap();
        // `second` opened before those: its numbers 1 and 2 are taken, nothing is overwritten
        second.append(vec![ev(3)]).await.unwrap();
        let all = first.list(0).await.unwrap();
        assert_eq!(all, [(1, ev(1)), (2, ev(2)), (3, ev(3))]);
    }
}
