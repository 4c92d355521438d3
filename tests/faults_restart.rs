//! Redis restarted empty (no persistence: scripts, leases, claims and values are gone):
//! every Lua script is reloaded on its first call (`NOSCRIPT` → `EVAL`), a waiter on a lease
//! whose key vanished gets through instead of waiting out its bound, and no waiter is stuck.

#![cfg(feature = "full")]

mod common;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{Load, Outcome, Phase, Report, blocking, connect, layers, recovery_deadline, until};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use tokio::sync::watch;
use tower::{Layer, ServiceExt, service_fn, util::BoxCloneSyncService};
use turret::{
    cache::{RedisStorage, ResponseCacheLayer},
    ratelimit::FailureMode,
    redis::{Redis, redis},
    stampede::{LeaseLock, StampedeCache},
};
use turret_testkit::RedisServer;

/// Far longer than any wait these tests allow: a waiter that waits this long is stuck.
const LONG_WAIT: Duration = Duration::from_secs(10);
/// How long a waiter on a vanished lease may take to get through.
const GET_THROUGH: Duration = Duration::from_secs(3);

/// `calls` and `failed_calls` of `command` since the server started (`INFO commandstats`).
fn command_stats(server: &RedisServer, command: &str) -> (u64, u64) {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:");
    let Some(line) = info.lines().find(|l| l.starts_with(&prefix)) else {
        return (0, 0);
    };
    let field = |name: &str| {
        line[prefix.len()..]
            .split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("calls"), field("failed_calls"))
}

/// Waits until `redis` answers again after a restart (its connection remade, its breaker
/// closed).
async fn reconnected(redis: &Redis) {
    let back = until(recovery_deadline(), async || {
        redis.query::<String>(&redis::cmd("PING")).await.is_ok()
    })
    .await;
    assert!(
        back.is_some(),
        "no reconnection within {:?}",
        recovery_deadline()
    );
}

/// Lease keys left on the server.
fn lease_keys(server: &RedisServer) -> Vec<String> {
    server.cmd(&["KEYS", "turret:lock:*"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_empty_restart_the_first_call_of_every_script_succeeds() {
    let mut server = RedisServer::start();
    let url = server.url();

    // Every layer that runs Lua scripts, two instances each (the fleet checks need both).
    let (la, lb) = (connect(&url).await, connect(&url).await);
    let limiter = layers::limiter_service(la.clone(), FailureMode::Closed, false);
    let (ca, cb) = (connect(&url).await, connect(&url).await);
    let (_, cache_a) = layers::cache_service(ca.clone(), false);
    let (_, cache_b) = layers::cache_service(cb.clone(), false);
    let (da, db) = (connect(&url).await, connect(&url).await);
    let versions = layers::Versions::default();
    let cond_a = layers::conditional_service(da.clone(), &versions);
    let cond_b = layers::conditional_service(db.clone(), &versions);
    let (qa, qb) = (connect(&url).await, connect(&url).await);
    let lease = Duration::from_secs(10);
    let conc_a = layers::concurrency_service(qa.clone(), FailureMode::Closed, lease);
    let conc_b = layers::concurrency_service(qb.clone(), FailureMode::Closed, lease);
    let (sa, sb) = (connect(&url).await, connect(&url).await);
    let (stamp_a, stamp_b) = (
        layers::stampede_cache(sa.clone()),
        layers::stampede_cache(sb.clone()),
    );

    // Before: every script has run once, so the server's script cache holds them all.
    let decided = |res: &Response<_>| {
        res.status() == StatusCode::OK && res.headers().contains_key("ratelimit")
    };
    let res = limiter
        .clone()
        .oneshot(layers::from_ip("198.51.100.1", "/"))
        .await
        .unwrap();
    assert!(decided(&res), "{res:?}");
    assert!(layers::shares_fills(&cache_a, &cache_b, "/before").await);
    let res = cond_a
        .clone()
        .oneshot(layers::put("/doc", header::IF_MATCH, "\"bogus\""))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    assert!(layers::shares_values(&stamp_a, &stamp_b, "before").await);
    assert!(layers::limits_in_flight_fleet_wide(&conc_a, &conc_b, "198.51.100.3").await);

    blocking(|| server.restart());
    for redis in [&la, &lb, &ca, &cb, &da, &db, &qa, &qb, &sa, &sb] {
        reconnected(redis).await;
    }
    assert_eq!(
        command_stats(&server, "eval"),
        (0, 0),
        "nothing ran a script yet"
    );

    // The first call of each layer after the restart does its normal, script-backed job.
    // Rate limiter (fail closed): a 503 would mean the decision script failed.
    let res = limiter
        .clone()
        .oneshot(layers::from_ip("198.51.100.2", "/"))
        .await
        .unwrap();
    assert!(decided(&res), "rate limiter after the restart: {res:?}");
    // Response cache: the put script stored what A fetched (and the fill lease's acquire and
    // release scripts ran), B reads it.
    assert!(
        layers::shares_fills(&cache_a, &cache_b, "/after").await,
        "response cache after the restart"
    );
    // Conditional: the claim script refuses an If-Match it cannot confirm (failing open
    // would let it through); then a GET records (record script) and a write with the
    // recorded tag is claimed and completed (claim and complete scripts).
    let res = cond_a
        .clone()
        .oneshot(layers::put("/doc", header::IF_MATCH, "\"bogus\""))
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::PRECONDITION_FAILED,
        "conditional after the restart"
    );
    let etag = cond_a
        .clone()
        .oneshot(layers::get("/doc2"))
        .await
        .unwrap()
        .headers()[header::ETAG]
        .clone();
    let recorded = until(Duration::from_secs(2), async || {
        let res = cond_b
            .clone()
            .oneshot(layers::put("/doc2", header::IF_MATCH, "\"bogus\""))
            .await
            .unwrap();
        res.status() == StatusCode::PRECONDITION_FAILED
            && cond_b
                .clone()
                .oneshot(layers::put(
                    "/doc2",
                    header::IF_MATCH,
                    etag.to_str().unwrap(),
                ))
                .await
                .unwrap()
                .status()
                == StatusCode::OK
    })
    .await;
    assert!(
        recorded.is_some(),
        "conditional: the recorded ETag never allowed a write"
    );
    // Stampede: the lease and fenced-write scripts ran: B reads what A computed.
    assert!(
        layers::shares_values(&stamp_a, &stamp_b, "after").await,
        "stampede cache after the restart"
    );

    // Concurrency limit (fail closed): the acquire script took A's slot, B's was refused.
    assert!(
        layers::limits_in_flight_fleet_wide(&conc_a, &conc_b, "198.51.100.4").await,
        "concurrency limit after the restart"
    );

    // The scripts came back through NOSCRIPT → EVAL, not through an explicit SCRIPT LOAD.
    let (evalsha, noscript) = command_stats(&server, "evalsha");
    let (eval, eval_failed) = command_stats(&server, "eval");
    eprintln!(
        "[faults] redis restarted empty: evalsha {evalsha} calls ({noscript} NOSCRIPT), eval {eval} calls ({eval_failed} failed)"
    );
    assert!(
        noscript > 0 && eval > 0,
        "evalsha {evalsha}/{noscript}, eval {eval}"
    );
    assert_eq!(eval_failed, 0);
}

/// An origin whose first call waits for the gate; every call counts and answers `v{n}`.
#[derive(Clone)]
struct GatedOrigin {
    calls: Arc<AtomicUsize>,
    gate: watch::Receiver<bool>,
}

impl GatedOrigin {
    fn new() -> (Self, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        (
            Self {
                calls: Arc::default(),
                gate: rx,
            },
            tx,
        )
    }

    async fn entered(&self, n: usize) {
        let ok = until(Duration::from_secs(5), async || {
            self.calls.load(Ordering::SeqCst) >= n
        })
        .await;
        assert!(ok.is_some(), "the origin was not called");
    }
}

impl tower::Service<Request<()>> for GatedOrigin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = common::BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let mut gate = self.gate.clone();
        Box::pin(async move {
            if n == 1 {
                let _ = gate.wait_for(|open| *open).await;
            }
            let mut res = Response::new(Full::from(format!("v{n}")));
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            );
            Ok(res)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_waiter_on_a_lease_that_vanished_in_a_restart_gets_through() {
    let mut server = RedisServer::start();
    let url = server.url();
    let a = StampedeCache::redis(connect(&url).await).lock_wait(LONG_WAIT);
    let b = StampedeCache::redis(connect(&url).await).lock_wait(LONG_WAIT);
    let (gate_tx, gate) = watch::channel(false);
    let entered = Arc::new(AtomicUsize::new(0));
    let holder = {
        let (entered, mut gate) = (entered.clone(), gate.clone());
        tokio::spawn(async move {
            a.get_or_compute("report", Duration::from_secs(60), move || async move {
                entered.fetch_add(1, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, Infallible>(String::from("A"))
            })
            .await
        })
    };
    assert!(
        until(Duration::from_secs(5), async || entered
            .load(Ordering::SeqCst)
            == 1)
        .await
        .is_some()
    );
    assert_eq!(lease_keys(&server).len(), 1, "A holds the lease");
    let waiter = tokio::spawn(async move {
        b.get_or_compute("report", Duration::from_secs(60), || async {
            Ok::<_, Infallible>(String::from("B"))
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "B waits for A's lease");

    blocking(|| server.restart());
    let restarted = Instant::now();
    let got = tokio::time::timeout(GET_THROUGH, waiter)
        .await
        .expect("B still waits on a lease that no longer exists")
        .unwrap();
    let through = restarted.elapsed();
    assert_eq!(got.unwrap(), "B", "B computed once the lease was gone");

    gate_tx.send(true).unwrap();
    let held = tokio::time::timeout(GET_THROUGH, holder)
        .await
        .expect("A finishes")
        .unwrap();
    assert_eq!(held.unwrap(), "A", "A's caller gets A's own value");
    let gone = until(Duration::from_secs(2), async || {
        lease_keys(&server).is_empty()
    })
    .await;
    assert!(
        gone.is_some(),
        "a lease was left behind: {:?}",
        lease_keys(&server)
    );
    drop(gate);
    eprintln!(
        "[faults] redis restarted empty: the stampede waiter got through {through:?} after the restart (lock wait {LONG_WAIT:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_miss_waiting_on_a_fill_lease_that_vanished_in_a_restart_gets_through() {
    let mut server = RedisServer::start();
    let url = server.url();
    let (origin, gate) = GatedOrigin::new();
    let instance = |redis: Redis| {
        ResponseCacheLayer::with_storage(RedisStorage::new(redis.clone()))
            .fill_lease(LeaseLock::redis(redis), LONG_WAIT)
            .layer(origin.clone())
    };
    let a = instance(connect(&url).await);
    let b = instance(connect(&url).await);
    let holder = tokio::spawn(a.oneshot(layers::get("/report")));
    origin.entered(1).await;
    assert_eq!(lease_keys(&server).len(), 1, "A holds the fill lease");
    let waiter = tokio::spawn(b.oneshot(layers::get("/report")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "B waits for A's fill");
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1);

    blocking(|| server.restart());
    let restarted = Instant::now();
    let res = tokio::time::timeout(GET_THROUGH, waiter)
        .await
        .expect("B still waits on a fill lease that no longer exists")
        .unwrap()
        .unwrap();
    let through = restarted.elapsed();
    assert_eq!(res.status(), StatusCode::OK);

    gate.send(true).unwrap();
    let res = tokio::time::timeout(GET_THROUGH, holder)
        .await
        .expect("A finishes")
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let gone = until(Duration::from_secs(2), async || {
        lease_keys(&server).is_empty()
    })
    .await;
    assert!(
        gone.is_some(),
        "a lease was left behind: {:?}",
        lease_keys(&server)
    );
    eprintln!(
        "[faults] redis restarted empty: the cache miss got through {through:?} after the restart (lease wait {LONG_WAIT:?})"
    );
}

/// Slow misses coalesced across two instances: the path changes every 500 ms, and each
/// request for it waits for one origin call of 300 ms, in this process or another.
fn slow_misses(
    svc: common::Svc<turret::cache::ResponseBody<Full<Bytes>>>,
    epoch: Instant,
) -> common::SendFn {
    common::sender(svc, move |i| {
        layers::get(&format!(
            "/slow/{}/{}",
            epoch.elapsed().as_millis() / 500,
            i % 2
        ))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_waiter_is_stuck_across_an_empty_restart_under_load() {
    let mut server = RedisServer::start();
    let url = server.url();
    let slow = service_fn(|req: Request<()>| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut res = Response::new(Full::from(req.uri().path().to_owned()));
        res.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        Ok::<_, Infallible>(res)
    });
    let cache = |redis: Redis| {
        BoxCloneSyncService::new(
            ResponseCacheLayer::with_storage(RedisStorage::new(redis.clone()))
                .fill_lease(LeaseLock::redis(redis), LONG_WAIT)
                .layer(slow),
        )
    };
    let (ca, cb) = (connect(&url).await, connect(&url).await);
    let (cache_a, cache_b) = (cache(ca), cache(cb));
    let stampede = |redis: Redis| StampedeCache::redis(redis).lock_wait(LONG_WAIT);
    let (stamp_a, stamp_b) = (stampede(connect(&url).await), stampede(connect(&url).await));
    let stamp_send = |cache: layers::Stampede, epoch: Instant| -> common::SendFn {
        Arc::new(move |_| {
            let cache = cache.clone();
            let key = format!("slow{}", epoch.elapsed().as_millis() / 500);
            Box::pin(async move {
                let res = cache
                    .get_or_compute(&key, Duration::from_secs(60), || async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, Infallible>(String::from("v"))
                    })
                    .await;
                if res.is_ok() {
                    Outcome::Status(200)
                } else {
                    Outcome::Status(500)
                }
            })
        })
    };
    let epoch = Instant::now();
    let loads = [
        (
            "cache A",
            Load::start(8, slow_misses(cache_a.clone(), epoch)),
        ),
        (
            "cache B",
            Load::start(8, slow_misses(cache_b.clone(), epoch)),
        ),
        (
            "stampede A",
            Load::start(8, stamp_send(stamp_a.clone(), epoch)),
        ),
        (
            "stampede B",
            Load::start(8, stamp_send(stamp_b.clone(), epoch)),
        ),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Restart while both fleets have a lease held and misses waiting for it.
    let held = until(Duration::from_secs(5), async || {
        let keys = lease_keys(&server);
        keys.iter().any(|k| k.contains("fill")) && keys.iter().any(|k| !k.contains("fill"))
    })
    .await;
    assert!(held.is_some(), "no lease held by both fleets at once");
    for (_, load) in &loads {
        load.set_phase(Phase::Fault);
    }
    let restart = Instant::now();
    blocking(|| server.restart());
    for (_, load) in &loads {
        load.set_phase(Phase::Restored);
    }
    let n = AtomicU64::new(0);
    let back = until(recovery_deadline(), async || {
        let i = n.fetch_add(1, Ordering::Relaxed);
        layers::shares_fills(&cache_a, &cache_b, &format!("/check/{i}")).await
            && layers::shares_values(&stamp_a, &stamp_b, &format!("check{i}")).await
    })
    .await
    .expect("the fleets share fills and values again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut slowest = Duration::ZERO;
    let mut across = 0;
    for (name, load) in loads {
        let report: Report = load.finish().await;
        across += report
            .samples
            .iter()
            .filter(|s| s.started < restart && s.ended() > restart)
            .count();
        assert_eq!(report.hung(), 0, "{name}: requests got no answer");
        let bad = Report::unexpected(report.samples.iter(), |o| o == Outcome::Status(200));
        assert!(bad.is_empty(), "{name}: {bad:?}");
        let max = report
            .samples
            .iter()
            .map(|s| s.latency)
            .max()
            .unwrap_or_default();
        assert!(
            max < GET_THROUGH,
            "{name}: a request took {max:?}: it waited on a lease that vanished (lease wait {LONG_WAIT:?})"
        );
        assert!(
            report.sent_in(Phase::Restored).count() > 0,
            "{name}: nothing answered after the restart"
        );
        slowest = slowest.max(max);
    }
    eprintln!(
        "[faults] redis restarted empty under load: {across} requests in flight across the restart; slowest request {slowest:?}; fleets back {back:?} after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_slot_held_across_an_empty_restart_under_load_is_taken_again() {
    let mut server = RedisServer::start();
    let url = server.url();
    let (ra, rb) = (connect(&url).await, connect(&url).await);
    let lease = Duration::from_millis(300);
    let a = layers::concurrency_service(ra.clone(), FailureMode::Open, lease);
    let b = layers::concurrency_service(rb.clone(), FailureMode::Open, lease);
    // Load: fresh clients through A all along.
    let load = Load::start(
        8,
        common::sender(a.clone(), |i| layers::from_ip(&layers::ip(10, i), "/")),
    );

    let client = "198.18.0.77";
    let hold = layers::Hold::default();
    let mut req = layers::from_ip(client, "/");
    req.extensions_mut().insert(hold.clone());
    let a_held = a.clone();
    let running = tokio::spawn(async move { common::outcome(&a_held, req).await });
    hold.entered.notified().await;
    assert_eq!(
        common::outcome(&b, layers::from_ip(client, "/")).await,
        Outcome::Status(429),
        "before the restart the held request counts"
    );

    load.set_phase(Phase::Fault);
    blocking(|| server.restart());
    for redis in [&ra, &rb] {
        reconnected(redis).await;
    }
    load.set_phase(Phase::Restored);
    // The restart emptied Redis; the held request's next lease extension takes its slot
    // again, so the fleet refuses a second request of the client while it runs.
    let counted_again = until(recovery_deadline(), async || {
        common::outcome(&b, layers::from_ip(client, "/")).await == Outcome::Status(429)
    })
    .await;
    assert!(
        counted_again.is_some(),
        "the running request's slot was not taken again after the restart"
    );
    // And it stays counted, past several lease times.
    for _ in 0..3 {
        tokio::time::sleep(lease).await;
        assert_eq!(
            common::outcome(&b, layers::from_ip(client, "/")).await,
            Outcome::Status(429)
        );
    }
    hold.gate.add_permits(1);
    assert_eq!(running.await.unwrap(), Outcome::Status(200));
    let report = load.finish().await;
    assert_eq!(report.hung(), 0, "a load request hung across the restart");
    let failed = report
        .samples
        .iter()
        .filter(|s| s.outcome != Outcome::Status(200))
        .count();
    eprintln!(
        "[faults] redis restarted empty: concurrency slot taken again {:?} after the reconnect; {} load requests, {failed} not 200 (fail open)",
        counted_again.unwrap(),
        report.samples.len(),
    );
    assert_eq!(failed, 0, "fail open: every load request is admitted");
}
