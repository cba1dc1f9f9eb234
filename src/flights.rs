//! One flight per key: callers asking for the same key at the same time share one future's answer, and nothing is
//! kept once it lands (the opposite of a cache, for answers that must be fresh at every review, such as what a
//! tag points to now).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

type Flight<V> = Shared<BoxFuture<'static, V>>;

/// Flights in progress, by key.
pub struct Flights<K, V: Clone> {
    /// The flight for each key and the deadline it runs under; a flight whose deadline passed (all its callers
    /// gave up) is replaced rather than joined.
    inflight: Mutex<HashMap<K, (Instant, Flight<V>)>>,
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
            let mut inflight = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match inflight.get(&key) {
                Some((until, flight)) if *until > Instant::now() => flight.clone(),
                _ => {
                    let flight = make().boxed().shared();
                    inflight.insert(key.clone(), (deadline, flight.clone()));
                    flight
                }
            }
        };
        let answer = flight.clone().await;
        let mut inflight = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inflight.get(&key).is_some_and(|(_, f)| f.ptr_eq(&flight)) {
            inflight.remove(&key);
        }
        answer
    }

    /// Flights in progress (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inflight.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[tokio::test]
    async fn a_flight_past_its_deadline_is_replaced() {
        let flights: Flights<&str, u8> = Flights::default();
        let past = Instant::now();
        // A caller that gives up leaves its flight behind, unfinished.
        let abandoned = flights.run("k", past, || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            1
        });
        assert!(tokio::time::timeout(Duration::from_millis(10), abandoned).await.is_err());
        assert_eq!(flights.len(), 1);
        let fresh = flights.run("k", Instant::now() + Duration::from_secs(5), || async { 2 }).await;
        assert_eq!(fresh, 2, "the stale flight is not joined");
    }
}
