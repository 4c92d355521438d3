//! The inner service fails — an error, a panic (turned into a 500 by tower-http's
//! `CatchPanicLayer`, outside), or the client disconnects (its response future dropped) — in
//! the middle of coalesced requests: misses coalesced by `ResponseCacheLayer` (in the process
//! and, through the fill lease, across instances), `CoalesceLayer`, `StampedeCache::
//! get_or_compute`, and a write holding a conditional claim. Every waiter gets an answer, no
//! lease or claim is left behind (its Redis key is gone, and a following request proceeds at
//! once instead of waiting out a 10 s bound), no task hangs.

#![cfg(feature = "full")]

mod common;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::Full;
use tokio::{sync::watch, task::JoinHandle};
use tower::{Layer as _, util::BoxCloneSyncService};
use tower_http::catch_panic::CatchPanicLayer;
use turret::{
    cache::{RedisStorage, ResponseCacheLayer},
    conditional::{ConditionalLayer, ValidatorStore},
    stampede::{CoalesceLayer, Error as StampedeError, LeaseLock, StampedeCache},
};
use turret_testkit::RedisServer;

use common::{BoxFut, Outcome, Svc, connect, layers::get, outcome, until};

/// Far longer than any wait these tests allow: lease wait, lock wait, claim lifetime.
const LONG_WAIT: Duration = Duration::from_secs(10);
/// Every waiter is answered within this.
const DEADLINE: Duration = Duration::from_secs(5);
/// A following request on a key whose lease or claim was released proceeds within this.
const AT_ONCE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The inner call returns an error.
    Error,
    /// The inner call panics.
    Panic,
    /// The leading request's future is dropped while the inner call runs.
    Disconnect,
}

#[derive(Debug, Clone)]
struct OriginError;

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the origin failed")
    }
}

impl std::error::Error for OriginError {}

type Body = tower_http::body::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
type Http = Svc<Body, OriginError>;

/// The origin: the first call of the faulty method waits for the gate, then fails as told
/// (with `Disconnect` it succeeds: the client is the one that goes away). Every other call
/// answers at once: 200, `ETag: "v1"`, `max-age=60`.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    faulty_calls: Arc<AtomicUsize>,
    faulty_method: Method,
    fault: Fault,
    gate: watch::Receiver<bool>,
}

impl Origin {
    fn new(fault: Fault, faulty_method: Method) -> (Self, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        let origin = Self {
            calls: Arc::default(),
            faulty_calls: Arc::default(),
            faulty_method,
            fault,
            gate: rx,
        };
        (origin, tx)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until the faulty call has started.
    async fn entered(&self) {
        let ok = until(DEADLINE, async || {
            self.faulty_calls.load(Ordering::SeqCst) >= 1
        })
        .await;
        assert!(ok.is_some(), "the inner service was not called");
    }
}

impl tower::Service<Request<()>> for Origin {
    type Response = Response<Full<Bytes>>;
    type Error = OriginError;
    type Future = BoxFut<Result<Self::Response, OriginError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), OriginError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let first = *req.method() == self.faulty_method
            && self.faulty_calls.fetch_add(1, Ordering::SeqCst) == 0;
        let (fault, mut gate) = (self.fault, self.gate.clone());
        Box::pin(async move {
            if first {
                let _ = gate.wait_for(|open| *open).await;
                match fault {
                    Fault::Error => return Err(OriginError),
                    Fault::Panic => panic!("the origin panicked (a fault test)"),
                    Fault::Disconnect => {}
                }
            }
            let mut res = Response::new(Full::from(format!("v{n}")));
            let h = res.headers_mut();
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            );
            h.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
            Ok(res)
        })
    }
}

/// `CatchPanicLayer` outside `svc` (a layer stack over the origin).
fn with_catch_panic<S, B>(svc: S) -> Http
where
    S: tower::Service<Request<()>, Response = Response<B>, Error = OriginError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    BoxCloneSyncService::new(tower::Layer::layer(&CatchPanicLayer::new(), svc))
}

fn spawn_request(svc: &Http, req: Request<()>) -> JoinHandle<Outcome> {
    let svc = svc.clone();
    tokio::spawn(async move { outcome(&svc, req).await })
}

/// The answer of a spawned request; `Hung` past the deadline.
async fn answer<T>(task: JoinHandle<T>, hung: T) -> T {
    match tokio::time::timeout(DEADLINE, task).await {
        Ok(result) => result.expect("a request task panicked"),
        Err(_) => hung,
    }
}

/// Lease keys left on the server.
fn lease_keys(server: &RedisServer) -> Vec<String> {
    server.cmd(&["KEYS", "turret:lock:*"])
}

async fn no_lease_left(server: &RedisServer) {
    let gone = until(Duration::from_secs(2), async || {
        lease_keys(server).is_empty()
    })
    .await;
    assert!(
        gone.is_some(),
        "a lease was left behind: {:?}",
        lease_keys(server)
    );
}

/// The leader's request is sent first and reaches the origin; the waiters are sent while
/// it waits there (and must not reach the origin: they are coalesced); then the fault. The
/// leader's outcome (`None` when it disconnected) and the waiters' outcomes.
async fn fault_in_the_middle(
    fault: Fault,
    origin: &Origin,
    gate: &watch::Sender<bool>,
    leader: JoinHandle<Outcome>,
    waiters: impl FnOnce() -> Vec<JoinHandle<Outcome>>,
) -> (Option<Outcome>, Vec<Outcome>) {
    origin.entered().await;
    let waiters = waiters();
    // Setup only: gives the waiters time to join the leader's call.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        origin.calls(),
        1,
        "the waiters reached the origin: not coalesced"
    );
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "a waiter did not wait"
    );
    let leader = if fault == Fault::Disconnect {
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        None
    } else {
        Some(leader)
    };
    gate.send(true).unwrap();
    let leader = match leader {
        Some(l) => Some(answer(l, Outcome::Hung).await),
        None => None,
    };
    let mut out = Vec::new();
    for w in waiters {
        out.push(answer(w, Outcome::Hung).await);
    }
    (leader, out)
}

/// What the leader gets: the error, a 500 from `CatchPanicLayer`, or nothing (it left).
fn leader_gets(fault: Fault) -> Option<Outcome> {
    match fault {
        Fault::Error => Some(Outcome::Err),
        Fault::Panic => Some(Outcome::Status(500)),
        Fault::Disconnect => None,
    }
}

/// Response cache, two instances on one Redis (storage and fill lease): on A, a leader and
/// 11 waiters coalesced in the process; on B, 6 requests waiting for A's fill lease.
async fn response_cache(fault: Fault) {
    let server = RedisServer::start();
    let (origin, gate) = Origin::new(fault, Method::GET);
    let instance = async || {
        let redis = connect(&server.url()).await;
        let layer = ResponseCacheLayer::with_storage(RedisStorage::new(redis.clone()))
            .fill_lease(LeaseLock::redis(redis), LONG_WAIT);
        (layer.clone(), with_catch_panic(layer.layer(origin.clone())))
    };
    let (_, a) = instance().await;
    let (layer_b, b) = instance().await;
    let leader = spawn_request(&a, get("/report"));
    let (lead, waiters) = fault_in_the_middle(fault, &origin, &gate, leader, || {
        let mut w: Vec<_> = (0..11).map(|_| spawn_request(&a, get("/report"))).collect();
        w.extend((0..6).map(|_| spawn_request(&b, get("/report"))));
        w
    })
    .await;
    assert_eq!(lead, leader_gets(fault), "the leader");
    assert!(
        waiters.iter().all(|o| *o == Outcome::Status(200)),
        "every waiter gets the response: {waiters:?}"
    );
    if fault == Fault::Disconnect {
        // The fill ran on without its client and served every waiter.
        assert_eq!(origin.calls(), 1);
    }
    no_lease_left(&server).await;
    // A following miss (the key invalidated first) takes the lease at once.
    layer_b
        .invalidate(&"http://shop.example/report".parse().unwrap())
        .await
        .unwrap();
    let start = Instant::now();
    let o = tokio::time::timeout(AT_ONCE, outcome(&b, get("/report")))
        .await
        .expect("the following miss waited: a lease or flight was left behind");
    assert_eq!(o, Outcome::Status(200));
    eprintln!(
        "[faults] inner {fault:?}: response cache: leader {lead:?}, {} waiters answered 200, {} origin calls; following miss in {:?}",
        waiters.len(),
        origin.calls(),
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_cache_coalesced_misses_all_get_an_answer_when_the_origin_fails() {
    response_cache(Fault::Error).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_cache_coalesced_misses_all_get_an_answer_when_the_origin_panics() {
    response_cache(Fault::Panic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_cache_coalesced_misses_all_get_an_answer_when_the_leader_disconnects() {
    response_cache(Fault::Disconnect).await;
}

/// `CoalesceLayer`: a leader and 15 followers.
async fn coalesce(fault: Fault) {
    let (origin, gate) = Origin::new(fault, Method::GET);
    let coalesce = CoalesceLayer::new().layer(origin.clone());
    let svc = with_catch_panic(coalesce.clone());
    let leader = spawn_request(&svc, get("/report"));
    let (lead, waiters) = fault_in_the_middle(fault, &origin, &gate, leader, || {
        (0..15)
            .map(|_| spawn_request(&svc, get("/report")))
            .collect()
    })
    .await;
    assert_eq!(lead, leader_gets(fault), "the leader");
    assert!(
        waiters.iter().all(|o| *o == Outcome::Status(200)),
        "every follower gets a response: {waiters:?}"
    );
    assert_eq!(coalesce.in_flight(), 0, "a flight was left behind");
    let start = Instant::now();
    let o = tokio::time::timeout(AT_ONCE, outcome(&svc, get("/report")))
        .await
        .expect("the following request waited");
    assert_eq!(o, Outcome::Status(200));
    eprintln!(
        "[faults] inner {fault:?}: coalesce layer: leader {lead:?}, {} followers answered 200, {} origin calls; following request in {:?}",
        waiters.len(),
        origin.calls(),
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesce_layer_followers_all_get_an_answer_when_the_origin_fails() {
    coalesce(Fault::Error).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesce_layer_followers_all_get_an_answer_when_the_origin_panics() {
    coalesce(Fault::Panic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesce_layer_followers_all_get_an_answer_when_the_leader_disconnects() {
    coalesce(Fault::Disconnect).await;
}

type Got = Result<String, StampedeError<OriginError>>;

/// `StampedeCache::get_or_compute` on Redis, two instances: on A, a leader and 11 callers
/// sharing its flight; on B, 6 callers waiting for A's lease.
async fn stampede(fault: Fault) {
    let server = RedisServer::start();
    let a = StampedeCache::redis(connect(&server.url()).await).lock_wait(LONG_WAIT);
    let b = StampedeCache::redis(connect(&server.url()).await).lock_wait(LONG_WAIT);
    let (gate_tx, gate) = watch::channel(false);
    let computations = Arc::new(AtomicUsize::new(0));
    let call = |cache: &StampedeCache<_, _>, value: &'static str| {
        let (cache, computations, mut gate) = (cache.clone(), computations.clone(), gate.clone());
        tokio::spawn(async move {
            cache
                .get_or_compute("report", Duration::from_secs(60), move || async move {
                    if computations.fetch_add(1, Ordering::SeqCst) == 0 {
                        let _ = gate.wait_for(|open| *open).await;
                        match fault {
                            Fault::Error => return Err(OriginError),
                            Fault::Panic => panic!("the computation panicked (a fault test)"),
                            Fault::Disconnect => {}
                        }
                    }
                    Ok(String::from(value))
                })
                .await
        })
    };
    let leader = call(&a, "A");
    assert!(
        until(DEADLINE, async || computations.load(Ordering::SeqCst) == 1)
            .await
            .is_some()
    );
    let waiters: Vec<JoinHandle<Got>> = (0..11)
        .map(|_| call(&a, "A"))
        .chain((0..6).map(|_| call(&b, "B")))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(computations.load(Ordering::SeqCst), 1, "not coalesced");
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "a caller did not wait"
    );
    let lead = if fault == Fault::Disconnect {
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        None
    } else {
        Some(leader)
    };
    gate_tx.send(true).unwrap();
    let hung = || Err(StampedeError::Abandoned);
    let lead = match lead {
        Some(l) => Some(
            tokio::time::timeout(DEADLINE, l)
                .await
                .expect("the leader hung")
                .unwrap(),
        ),
        None => None,
    };
    let mut got = Vec::new();
    for w in waiters {
        got.push(
            tokio::time::timeout(DEADLINE, w)
                .await
                .unwrap_or_else(|_| Ok(hung()))
                .expect("a caller task panicked"),
        );
    }
    let (on_a, on_b) = got.split_at(11);
    match fault {
        // The flight's error is every caller's of A; B, once the lease is released,
        // computes its own value.
        Fault::Error => {
            assert!(
                matches!(lead, Some(Err(StampedeError::Compute(OriginError)))),
                "{lead:?}"
            );
            assert!(
                on_a.iter()
                    .all(|g| matches!(g, Err(StampedeError::Compute(OriginError)))),
                "{on_a:?}"
            );
            assert!(
                on_b.iter().all(|g| matches!(g.as_deref(), Ok("B"))),
                "{on_b:?}"
            );
        }
        Fault::Panic => {
            assert!(
                matches!(lead, Some(Err(StampedeError::Panicked(_)))),
                "{lead:?}"
            );
            assert!(
                on_a.iter()
                    .all(|g| matches!(g, Err(StampedeError::Panicked(_)))),
                "{on_a:?}"
            );
            assert!(
                on_b.iter().all(|g| matches!(g.as_deref(), Ok("B"))),
                "{on_b:?}"
            );
        }
        // The flight runs on without its first caller: everyone gets A's value, B from
        // the store.
        Fault::Disconnect => {
            assert!(
                got.iter().all(|g| matches!(g.as_deref(), Ok("A"))),
                "{got:?}"
            );
            assert_eq!(computations.load(Ordering::SeqCst), 1);
        }
    }
    no_lease_left(&server).await;
    b.invalidate("report").await.unwrap();
    let start = Instant::now();
    let next = tokio::time::timeout(
        AT_ONCE,
        b.get_or_compute("report", Duration::from_secs(60), || async {
            Ok::<_, OriginError>(String::from("next"))
        }),
    )
    .await
    .expect("the following call waited: a lease or flight was left behind");
    assert_eq!(next.unwrap(), "next");
    eprintln!(
        "[faults] inner {fault:?}: stampede cache: {} callers answered, {} computations; following call in {:?}",
        got.len() + usize::from(fault != Fault::Disconnect),
        computations.load(Ordering::SeqCst),
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_cache_callers_all_get_an_answer_when_the_computation_fails() {
    stampede(Fault::Error).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_cache_callers_all_get_an_answer_when_the_computation_panics() {
    stampede(Fault::Panic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_cache_callers_all_get_an_answer_when_the_first_caller_disconnects() {
    stampede(Fault::Disconnect).await;
}

/// Conditional layer with a Redis validator store, two instances: a write through A holds
/// the claim while its handler fails; a competing write through B is refused at once (412);
/// afterwards the claim is gone and the next write with the same `If-Match` proceeds.
async fn conditional_claim(fault: Fault) {
    let server = RedisServer::start();
    let (origin, gate) = Origin::new(fault, Method::PUT);
    let store_a = ValidatorStore::redis(connect(&server.url()).await).claim_ttl(LONG_WAIT);
    let store_b = ValidatorStore::redis(connect(&server.url()).await).claim_ttl(LONG_WAIT);
    let a = with_catch_panic(
        ConditionalLayer::new()
            .validator_store(store_a.clone())
            .layer(origin.clone()),
    );
    let b = with_catch_panic(
        ConditionalLayer::new()
            .validator_store(store_b)
            .layer(origin.clone()),
    );
    let put = || {
        Request::put("/doc")
            .header(header::IF_MATCH, "\"v1\"")
            .body(())
            .unwrap()
    };
    assert_eq!(outcome(&a, get("/doc")).await, Outcome::Status(200));
    let recorded = until(DEADLINE, async || {
        store_a.get("/doc").await.ok().flatten().is_some()
    })
    .await;
    assert!(recorded.is_some(), "the GET's ETag was never recorded");
    let claims = || -> Vec<String> { server.cmd(&["KEYS", "turret:cond:*:claim"]) };

    let writer = spawn_request(&a, put());
    origin.entered().await;
    assert_eq!(claims().len(), 1, "the write holds the claim");
    let competing = outcome(&b, put()).await;
    assert_eq!(
        competing,
        Outcome::Status(412),
        "a competing write is refused at once"
    );
    let lead = if fault == Fault::Disconnect {
        writer.abort();
        assert!(writer.await.unwrap_err().is_cancelled());
        None
    } else {
        Some(writer)
    };
    gate.send(true).unwrap();
    let lead = match lead {
        Some(w) => Some(answer(w, Outcome::Hung).await),
        None => None,
    };
    assert_eq!(lead, leader_gets(fault), "the failed write");
    let gone = until(Duration::from_secs(2), async || claims().is_empty()).await;
    assert!(gone.is_some(), "the claim was left behind: {:?}", claims());
    let start = Instant::now();
    let next = tokio::time::timeout(AT_ONCE, outcome(&b, put()))
        .await
        .expect("the next write waited");
    assert_eq!(
        next,
        Outcome::Status(200),
        "the next write with the same If-Match proceeds"
    );
    eprintln!(
        "[faults] inner {fault:?}: conditional claim: failed write {lead:?}, competing write 412, claim released, next write 200 in {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_claim_is_released_when_the_write_fails() {
    conditional_claim(Fault::Error).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_claim_is_released_when_the_handler_panics() {
    conditional_claim(Fault::Panic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_claim_is_released_when_the_writer_disconnects() {
    conditional_claim(Fault::Disconnect).await;
}
