//! In-process single-flight: one computation per key at a time, shared by every caller.

use std::{
    collections::HashMap,
    convert::Infallible,
    fmt,
    hash::Hash,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::FutureExt as _;
use tokio::sync::watch;

use crate::error::{Error, panic_message};

/// What a caller does when it has waited longer than [`SingleFlight::wait_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnTimeout {
    /// Give up with [`Error::Timeout`] (the default).
    #[default]
    Fail,
    /// Run its own closure, unshared, and return that result. The caller that started the
    /// shared computation has handed its closure over, so it gets [`Error::Timeout`] instead.
    Compute,
}

type Slot<V, E> = Option<Result<V, Error<E>>>;

struct Flight<V, E> {
    id: u64,
    rx: watch::Receiver<Slot<V, E>>,
}

struct Inner<K, V, E> {
    flights: Mutex<HashMap<K, Flight<V, E>>>,
    next_id: AtomicU64,
}

impl<K: Hash + Eq, V, E> Inner<K, V, E> {
    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<K, Flight<V, E>>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remove_if(&self, key: &K, id: u64) {
        let mut flights = self.flights();
        if flights.get(key).is_some_and(|f| f.id == id) {
            flights.remove(key);
        }
    }
}

/// Concurrent calls with the same key share one computation; every caller gets a clone of
/// the same `Result<V, E>` (Go's `singleflight.Do`).
///
/// - **Detached computation.** The first caller's future is spawned on the Tokio runtime,
///   so it runs to completion even when every caller — including the one that started it —
///   is dropped or cancelled. Nobody "takes over": there is nothing to take over.
/// - **Panics** are caught: every waiter gets [`Error::Panicked`], the flight is removed,
///   and the next call starts afresh.
/// - **No caching.** Once the computation is done, the next call starts a new one (use
///   [`crate::StampedeCache`] for caching); [`SingleFlight::forget`] starts a new one even
///   while the old one runs.
/// - **Bounded wait** (optional): past [`SingleFlight::wait_timeout`] a caller gets
///   [`Error::Timeout`] or, with [`OnTimeout::Compute`], runs its own closure.
///
/// Clones share the flights.
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
/// use turret_stampede::SingleFlight;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let flights: SingleFlight<&str, u64> = SingleFlight::new();
/// let runs = Arc::new(AtomicUsize::new(0));
/// let call = || {
///     let runs = runs.clone();
///     flights.call("report", move || async move {
///         runs.fetch_add(1, Ordering::SeqCst);
///         tokio::task::yield_now().await;
///         Ok(42)
///     })
/// };
/// let (a, b, c) = tokio::join!(call(), call(), call());
/// assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (42, 42, 42));
/// assert_eq!(runs.load(Ordering::SeqCst), 1);
/// # }
/// ```
pub struct SingleFlight<K, V, E = Infallible> {
    inner: Arc<Inner<K, V, E>>,
    wait_timeout: Option<Duration>,
    on_timeout: OnTimeout,
}

impl<K, V, E> Clone for SingleFlight<K, V, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            wait_timeout: self.wait_timeout,
            on_timeout: self.on_timeout,
        }
    }
}

impl<K: Hash + Eq, V, E> fmt::Debug for SingleFlight<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleFlight")
            .field("in_flight", &self.inner.flights().len())
            .field("wait_timeout", &self.wait_timeout)
            .field("on_timeout", &self.on_timeout)
            .finish()
    }
}

impl<K, V, E> Default for SingleFlight<K, V, E> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                flights: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
            wait_timeout: None,
            on_timeout: OnTimeout::Fail,
        }
    }
}

impl<K, V, E> SingleFlight<K, V, E> {
    /// No flights, unbounded waits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bounds how long a caller waits for the shared result (default: unbounded).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = Some(timeout);
        self
    }

    /// What a caller does past its wait bound (default [`OnTimeout::Fail`]).
    pub fn on_timeout(mut self, on_timeout: OnTimeout) -> Self {
        self.on_timeout = on_timeout;
        self
    }
}

impl<K, V, E> SingleFlight<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// Runs `f` unless a computation for `key` is already in flight, and returns the shared
    /// result. `f` is called (to make the future) only by the caller that starts the flight;
    /// its future is spawned, so it must be `Send + 'static`. Must be called inside a Tokio
    /// runtime.
    pub async fn call<F, Fut>(&self, key: K, f: F) -> Result<V, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let existing = self
            .inner
            .flights()
            .get(&key)
            .map(|flight| flight.rx.clone());
        let (rx, own) = match existing {
            Some(rx) => {
                metrics::counter!("turret_stampede_singleflight_shared_total").increment(1);
                (rx, Some(f))
            }
            None => (self.start(key, f), None),
        };
        match self.wait_timeout {
            None => wait(rx).await,
            Some(bound) => match tokio::time::timeout(bound, wait(rx)).await {
                Ok(result) => result,
                Err(_) => {
                    metrics::counter!("turret_stampede_singleflight_timeouts_total").increment(1);
                    match (self.on_timeout, own) {
                        (OnTimeout::Compute, Some(f)) => f().await.map_err(Error::Compute),
                        _ => Err(Error::Timeout(bound)),
                    }
                }
            },
        }
    }

    /// Starts a flight for `key`, or joins the one a racing caller started since the look-up.
    fn start<F, Fut>(&self, key: K, f: F) -> watch::Receiver<Slot<V, E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let (tx, rx) = watch::channel(None);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut flights = self.inner.flights();
            if let Some(flight) = flights.get(&key) {
                // Another caller started one between our look-up and now: share it.
                return flight.rx.clone();
            }
            flights.insert(key.clone(), Flight { id, rx: rx.clone() });
        }
        // From here on the guard removes the flight and resolves the waiters whatever
        // happens: a panic in `f` itself, in the future, or a cancelled task.
        let guard = FlightGuard {
            inner: self.inner.clone(),
            key,
            id,
            tx: Some(tx),
        };
        let fut = f();
        tokio::spawn(async move {
            let mut guard = guard;
            let result = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(Error::Compute(e)),
                Err(payload) => {
                    let message = panic_message(&*payload);
                    tracing::error!(%message, "single-flight computation panicked");
                    metrics::counter!("turret_stampede_singleflight_panics_total").increment(1);
                    Err(Error::Panicked(message))
                }
            };
            guard.complete(result);
        });
        rx
    }

    /// Makes the next call for `key` start a new computation, even while one is in flight
    /// (its waiters still get its result).
    pub fn forget(&self, key: &K) {
        self.inner.flights().remove(key);
    }

    /// Whether a computation for `key` is in flight.
    pub fn is_in_flight(&self, key: &K) -> bool {
        self.inner.flights().contains_key(key)
    }

    /// How many keys have a computation in flight.
    pub fn in_flight(&self) -> usize {
        self.inner.flights().len()
    }
}

async fn wait<V: Clone, E: Clone>(mut rx: watch::Receiver<Slot<V, E>>) -> Result<V, Error<E>> {
    match rx.wait_for(Option::is_some).await {
        Ok(slot) => slot.clone().unwrap_or(Err(Error::Abandoned)),
        Err(_) => Err(Error::Abandoned),
    }
}

struct FlightGuard<K: Hash + Eq, V, E> {
    inner: Arc<Inner<K, V, E>>,
    key: K,
    id: u64,
    tx: Option<watch::Sender<Slot<V, E>>>,
}

impl<K: Hash + Eq, V, E> FlightGuard<K, V, E> {
    fn complete(&mut self, result: Result<V, Error<E>>) {
        // Remove first: a caller arriving after this point starts a fresh computation
        // instead of reusing a finished one.
        self.inner.remove_if(&self.key, self.id);
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(result));
        }
    }
}

impl<K: Hash + Eq, V, E> Drop for FlightGuard<K, V, E> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            let panicking = std::thread::panicking();
            self.complete(Err(if panicking {
                Error::Panicked(Arc::from("the closure panicked before its future was made"))
            } else {
                Error::Abandoned
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_thousand_concurrent_calls_run_one_computation() {
        let flights: SingleFlight<u32, Arc<String>> = SingleFlight::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = oneshot::channel::<()>();
        let released = released.shared();
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let flights = flights.clone();
            let runs = runs.clone();
            let released = released.clone();
            tasks.push(tokio::spawn(async move {
                flights
                    .call(7, move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let _ = released.await;
                        Ok(Arc::new(String::from("report")))
                    })
                    .await
            }));
        }
        // The paused clock advances only once every task is idle, i.e. every caller waits.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(flights.in_flight(), 1);
        release.send(()).unwrap();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().as_str(), "report");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn waiters_share_the_same_error() {
        let flights: SingleFlight<&str, u8, String> = SingleFlight::new();
        let (a, b) = tokio::join!(
            flights.call("k", || async {
                tokio::task::yield_now().await;
                Err(String::from("db down"))
            }),
            flights.call("k", || async { Ok(1) }),
        );
        assert_eq!(a, Err(Error::Compute(String::from("db down"))));
        assert_eq!(b, a);
    }

    #[tokio::test]
    async fn different_keys_run_separately() {
        let flights: SingleFlight<u8, u8> = SingleFlight::new();
        let (a, b) = tokio::join!(
            flights.call(1, || async { Ok(1) }),
            flights.call(2, || async { Ok(2) })
        );
        assert_eq!((a, b), (Ok(1), Ok(2)));
    }

    #[tokio::test]
    async fn a_dropped_leader_does_not_cancel_the_computation() {
        let flights: SingleFlight<&str, u32> = SingleFlight::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = oneshot::channel::<()>();
        let leader = {
            let flights = flights.clone();
            let runs = runs.clone();
            tokio::spawn(async move {
                flights
                    .call("k", move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let _ = released.await;
                        Ok(5)
                    })
                    .await
            })
        };
        while flights.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let follower = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.call("k", || async { Ok(0) }).await })
        };
        tokio::task::yield_now().await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        release.send(()).unwrap();
        assert_eq!(
            follower.await.unwrap(),
            Ok(5),
            "the follower gets the value"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panic_resolves_every_waiter_and_the_next_call_starts_afresh() {
        let flights: SingleFlight<&str, u32> = SingleFlight::new();
        let (a, b) = tokio::join!(
            flights.call("k", || async {
                tokio::task::yield_now().await;
                panic!("boom");
            }),
            flights.call("k", || async { Ok(1) }),
        );
        assert_eq!(a, Err(Error::Panicked(Arc::from("boom"))));
        assert_eq!(b, a);
        assert_eq!(flights.in_flight(), 0);
        assert_eq!(flights.call("k", || async { Ok(9) }).await, Ok(9));
    }

    #[tokio::test]
    async fn a_panic_while_making_the_future_leaves_no_stuck_flight() {
        let flights: SingleFlight<&str, u32> = SingleFlight::new();
        let f2 = flights.clone();
        let task = tokio::spawn(async move {
            f2.call("k", || -> std::future::Ready<Result<u32, Infallible>> {
                panic!("before the future")
            })
            .await
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(flights.in_flight(), 0);
        assert_eq!(flights.call("k", || async { Ok(3) }).await, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_past_its_bound_gets_a_timeout_and_the_others_still_get_the_value() {
        let flights: SingleFlight<&str, u32> = SingleFlight::new();
        let patient = flights.clone();
        let impatient = flights.clone().wait_timeout(Duration::from_secs(1));
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(7)
        };
        let (a, b) = tokio::join!(
            patient.call("k", slow),
            impatient.call("k", || async { Ok(1) })
        );
        assert_eq!(a, Ok(7));
        assert_eq!(b, Err(Error::Timeout(Duration::from_secs(1))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_past_its_bound_may_compute_itself() {
        let flights: SingleFlight<&str, u32> = SingleFlight::new();
        let bounded = flights
            .clone()
            .wait_timeout(Duration::from_secs(1))
            .on_timeout(OnTimeout::Compute);
        let (a, b) = tokio::join!(
            flights.call("k", || async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(7)
            }),
            bounded.call("k", || async { Ok(1) })
        );
        assert_eq!((a, b), (Ok(7), Ok(1)));
        // The leader's own bound cannot fall back: its closure is in flight.
        let (c,) = tokio::join!(bounded.call("slow", || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(2)
        }));
        assert_eq!(c, Err(Error::Timeout(Duration::from_secs(1))));
    }

    #[tokio::test]
    async fn forget_starts_a_new_flight_while_the_old_one_runs() {
        let flights: SingleFlight<&str, u32> = SingleFlight::new();
        let (release, released) = oneshot::channel::<()>();
        let old = {
            let flights = flights.clone();
            tokio::spawn(async move {
                flights
                    .call("k", move || async move {
                        let _ = released.await;
                        Ok(1)
                    })
                    .await
            })
        };
        while flights.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        flights.forget(&"k");
        assert_eq!(flights.call("k", || async { Ok(2) }).await, Ok(2));
        release.send(()).unwrap();
        assert_eq!(old.await.unwrap(), Ok(1));
    }
}
