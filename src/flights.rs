//! One flight per key: callers asking for the same key at the same time share one future's answer, and nothing is
//! kept once it lands (the opposite of a cache, for answers that must be fresh at every review, such as what a
//! tag points to now). A flight lives only while a caller waits for it: when the last one gives up (its review hit
//! the deadline, or its client went away), the flight's work is dropped with it, so a stalled request is not left
//! holding its connection, and its key is forgotten.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared, WeakShared};
use tokio::time::Instant;

type Flight<V> = Shared<BoxFuture<'static, V>>;
/// Each key's flight, held weakly, and the deadline it runs under.
type InFlight<K, V> = HashMap<K, (Instant, WeakShared<BoxFuture<'static, V>>)>;

/// Flights in progress, by key.
pub struct Flights<K, V: Clone> {
    /// The flight for each key and the deadline it runs under; a flight whose deadline passed is replaced rather
    /// than joined. The map does not keep a flight alive: its callers do.
    inflight: Mutex<InFlight<K, V>>,
}

impl<K: Hash + Eq + Clone, V: Clone + Send + Sync + 'static> Default for Flights<K, V> {
    fn default() -> Self {
        Self { inflight: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone, V: Clone + Send + Sync + 'static> Flights<K, V> {
    /// The answer for `key`: joins the flight in progress, or starts `make()` (which must finish by `deadline`).
    pub async fn run<F>(&self, key: K, deadline: Instant, make: impl FnOnce() -> F) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let flight = {
            let mut inflight = self.lock();
            let joined = inflight.get(&key).filter(|(until, _)| *until > Instant::now()).and_then(|(_, f)| f.upgrade());
            match joined {
                Some(flight) => flight,
                None => {
                    let flight = make().boxed().shared();
                    if let Some(weak) = flight.downgrade() {
                        inflight.insert(key.clone(), (deadline, weak));
                    }
                    flight
                }
            }
        };
        // The waiter is bound first so that it is dropped last: when this caller gives up, its other handle on the
        // flight is gone by the time the waiter looks whether the flight is still awaited.
        let (mut waiter, flight) = Waiter::new(self, key, flight);
        let answer = flight.clone().await;
        // Landed: later callers start a new flight, even while callers of this one are still being woken.
        let mut inflight = self.lock();
        if inflight.get(&waiter.key).and_then(|(_, f)| f.upgrade()).is_some_and(|f| f.ptr_eq(&flight)) {
            inflight.remove(&waiter.key);
        }
        drop(inflight);
        drop(flight);
        waiter.flight = None;
        answer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight<K, V>> {
        self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Flights in progress (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inflight.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One caller of a flight. Dropped before the flight lands (the caller gave up), it lets go of the flight; when it
/// was the last caller, that drops the flight's work, and the key is forgotten.
struct Waiter<'a, K: Hash + Eq + Clone, V: Clone + Send + Sync + 'static> {
    flights: &'a Flights<K, V>,
    key: K,
    flight: Option<Flight<V>>,
}

impl<'a, K: Hash + Eq + Clone, V: Clone + Send + Sync + 'static> Waiter<'a, K, V> {
    /// The waiter of `flight` under `key`, and a handle to await it by.
    fn new(flights: &'a Flights<K, V>, key: K, flight: Flight<V>) -> (Self, Flight<V>) {
        let handle = flight.clone();
        (Self { flights, key, flight: Some(flight) }, handle)
    }
}

impl<K: Hash + Eq + Clone, V: Clone + Send + Sync + 'static> Drop for Waiter<'_, K, V> {
    fn drop(&mut self) {
        if self.flight.take().is_none() {
            return;
        }
        let mut inflight = self.flights.lock();
        if inflight.get(&self.key).is_some_and(|(_, f)| f.upgrade().is_none()) {
            inflight.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_flight_and_nothing_is_kept() {
        let flights: Flights<&str, usize> = Flights::default();
        let started = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let call = || {
            let started = started.clone();
            flights.run("tag", deadline, move || async move {
                let n = started.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                n
            })
        };
        let answers = futures::future::join_all((0..8).map(|_| call())).await;
        assert_eq!(answers, vec![1; 8], "eight callers, one flight");
        assert!(flights.is_empty(), "nothing is kept once the flight lands");
        assert_eq!(call().await, 2, "a later caller starts a new flight");
    }

    /// Set when dropped: whether a flight's work was dropped.
    struct Dropped(Arc<AtomicUsize>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    // Paused time: the timers fire in their order however busy the machine is.
    #[tokio::test(start_paused = true)]
    async fn a_flight_is_dropped_with_its_last_caller_and_its_key_forgotten() {
        let flights: Flights<&str, u8> = Flights::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        let stalled = || {
            let guard = Dropped(dropped.clone());
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(60)).await;
                1
            }
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        // Two callers share a stalled flight; the first gives up, and the flight goes on for the second.
        let (first, second, between) = futures::join!(
            tokio::time::timeout(Duration::from_millis(10), flights.run("k", deadline, stalled)),
            tokio::time::timeout(Duration::from_millis(40), flights.run("k", deadline, stalled)),
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                (flights.len(), dropped.load(Ordering::SeqCst))
            },
        );
        assert!(first.is_err() && second.is_err());
        assert_eq!(between, (1, 0), "after the first gave up, the flight went on for the second");
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "its work was dropped with its last caller");
        assert!(flights.is_empty(), "and its key forgotten");
        let fresh = flights.run("k", deadline, || async { 2 }).await;
        assert_eq!(fresh, 2, "a later caller starts a new flight");
    }

    #[tokio::test]
    async fn a_flight_past_its_deadline_is_replaced() {
        let flights: Flights<&str, u8> = Flights::default();
        let past = Instant::now();
        let stale = flights.run("k", past, || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            1
        });
        let fresh = flights.run("k", Instant::now() + Duration::from_secs(5), || async { 2 });
        let (stale, fresh) = futures::join!(tokio::time::timeout(Duration::from_millis(50), stale), fresh);
        assert_eq!(fresh, 2, "the stale flight is not joined");
        assert!(stale.is_err());
    }
}
