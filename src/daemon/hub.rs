//! The hub: the one reader of the engine's events, which it hands to every attached client
//! through a bounded queue of the client's own — without ever waiting. A client whose queue
//! is full is marked lagging: it misses events until it has read what it has, then gets a
//! `resync` (a fresh snapshot) instead, and the resync is counted. The engine's admission
//! therefore never depends on how fast anyone reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::engine::{Event, ViewerId};

/// Events a client may have queued before it is marked lagging.
pub const CLIENT_QUEUE: usize = 4096;

/// An attached client's end.
pub struct Attached {
    /// Its viewer ID (0 is the daemon's own).
    pub id: ViewerId,
    /// Its events.
    pub events: mpsc::Receiver<Event>,
    /// Set while events are being dropped for it: once its queue is read, it resyncs.
    pub lagging: Arc<AtomicBool>,
}

struct Client {
    events: mpsc::Sender<Event>,
    lagging: Arc<AtomicBool>,
}

/// The attached clients.
pub struct Hub {
    clients: Mutex<BTreeMap<ViewerId, Client>>,
    next_id: AtomicU64,
    capacity: usize,
    /// Times a lagging client was resynced.
    pub resyncs: AtomicU64,
}

impl Hub {
    pub fn new(capacity: usize) -> Self {
        Hub {
            clients: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            capacity,
            resyncs: AtomicU64::new(0),
        }
    }

    /// Attaches a client.
    pub fn attach(&self) -> Attached {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.capacity);
        let lagging = Arc::new(AtomicBool::new(false));
        self.lock().insert(
            id,
            Client {
                events: tx,
                lagging: lagging.clone(),
            },
        );
        Attached {
            id,
            events: rx,
            lagging,
        }
    }

    /// Detaches a client (its stream ended).
    pub fn detach(&self, id: ViewerId) {
        self.lock().remove(&id);
    }

    /// Clients attached now.
    pub fn clients(&self) -> usize {
        self.lock().len()
    }

    /// Hands `event` to every client that keeps up; never waits.
    pub fn publish(&self, event: &Event) {
        let mut clients = self.lock();
        clients.retain(|_, client| {
            if client.lagging.load(Ordering::Acquire) {
                return !client.events.is_closed();
            }
            match client.events.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    client.lagging.store(true, Ordering::Release);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// A lagging client read its queue: it is sent a fresh snapshot and gets events again.
    pub fn resynced(&self, attached: &Attached) {
        attached.lagging.store(false, Ordering::Release);
        self.resyncs.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ViewerId, Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> Event {
        Event::ConcurrencyChanged {
            limit: n,
            adaptive: false,
            decision: crate::engine::Decision::Operator,
            reason: String::new(),
        }
    }

    #[test]
    fn a_client_that_reads_nothing_never_holds_up_publishing_and_is_resynced() {
        let hub = Hub::new(4);
        let mut stalled = hub.attach();
        let mut reader = hub.attach();
        let mut read = 0;
        for n in 0..10_000 {
            hub.publish(&event(n)); // returns at once, whoever reads
            while reader.events.try_recv().is_ok() {
                read += 1;
            }
        }
        assert_eq!(read, 10_000, "a client that keeps up misses nothing");
        assert!(stalled.lagging.load(Ordering::Acquire));
        let mut queued = 0;
        while stalled.events.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 4, "what fitted its queue, then nothing");
        hub.resynced(&stalled);
        assert_eq!(hub.resyncs.load(Ordering::Relaxed), 1);
        hub.publish(&event(1));
        assert!(stalled.events.try_recv().is_ok(), "events flow again");
    }

    #[test]
    fn a_client_that_went_away_is_forgotten() {
        let hub = Hub::new(4);
        let gone = hub.attach();
        let _kept = hub.attach();
        drop(gone);
        hub.publish(&event(1));
        assert_eq!(hub.clients(), 1);
    }
}
