//! The lease lock and the cache-aside API against a real redis-server.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use turret_redis::{BreakerConfig, Event, Redis, RedisConfig, redis};
use turret_stampede::{LeaseLock, LockBackend, RedisLock, RedisStore, StampedeCache};
use turret_testkit::RedisServer;

const TTL: Duration = Duration::from_secs(60);

/// The tests' handles: a 500 ms command timeout, a breaker that opens after 2 failures.
fn configure(config: RedisConfig) -> RedisConfig {
    config
        .command_timeout(Duration::from_millis(500))
        .breaker(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_millis(200),
        })
}

async fn connect(server: &RedisServer) -> Redis {
    turret_testkit::connect!(server, configure).await
}

/// Waits until this handle's subscription to the release channel is live: the test
/// publishes probes until one comes back through the same subscriber connection.
async fn subscribed(redis: &Redis) {
    let mut probe = redis.subscribe("stampede:released").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "subscription never became live");
        let _ = redis.publish("stampede:released", b"probe").await;
        if let Ok(Some(Event::Message(_))) =
            tokio::time::timeout(Duration::from_millis(100), probe.recv()).await
        {
            return;
        }
    }
}

/// A computation counting its runs, taking `work` of real time.
fn counted(
    runs: &Arc<AtomicUsize>,
    work: Duration,
    value: &str,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<String, Infallible>> + Send>>
+ Send
+ 'static
+ use<> {
    let runs = runs.clone();
    let value = value.to_owned();
    move || {
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(work).await;
            Ok(value)
        })
    }
}

#[tokio::test]
async fn only_the_holder_releases_the_lease() {
    let server = RedisServer::start();
    let a = LeaseLock::redis(connect(&server).await);
    let b = LeaseLock::redis(connect(&server).await);
    let held = a.try_acquire("report").await.unwrap().expect("free");
    let forged = turret_stampede::lock::Lease::new(
        "report",
        held.lease().unwrap().token() ^ 1,
        held.fence(),
        Duration::from_secs(10),
    );
    assert!(
        !b.backend().release(&forged).await.unwrap(),
        "a non-holder's release is a no-op"
    );
    assert!(
        b.try_acquire("report").await.unwrap().is_none(),
        "still held"
    );
    let token: String = server.cmd(&["GET", "turret:lock:{report}"]);
    assert_eq!(token.len(), 32, "a 128-bit token in hex");
    assert!(held.release().await.unwrap());
    assert!(b.try_acquire("report").await.unwrap().is_some());
}

#[tokio::test]
async fn a_stalled_holder_s_lease_expires_and_the_next_holder_gets_a_larger_fence() {
    let server = RedisServer::start();
    let stalled = LeaseLock::redis(connect(&server).await)
        .ttl(Duration::from_millis(300))
        .watchdog(false);
    let other = LeaseLock::redis(connect(&server).await);
    let first = stalled.try_acquire("k").await.unwrap().unwrap();
    assert!(other.try_acquire("k").await.unwrap().is_none());
    let start = Instant::now();
    let second = other.acquire("k", Duration::from_secs(5)).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(first.is_lost());
    assert!(
        second.fence() > first.fence(),
        "{} > {}",
        second.fence(),
        first.fence()
    );
    assert!(
        !first.release().await.unwrap(),
        "the stalled holder cannot release the new lease"
    );
    assert!(stalled.try_acquire("k").await.unwrap().is_none());
}

#[tokio::test]
async fn the_watchdog_keeps_a_long_holder_s_lease() {
    let server = RedisServer::start();
    let lock = LeaseLock::redis(connect(&server).await).ttl(Duration::from_millis(300));
    let other = LeaseLock::redis(connect(&server).await);
    let guard = lock.try_acquire("k").await.unwrap().unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            other.try_acquire("k").await.unwrap().is_none(),
            "still held"
        );
    }
    assert!(!guard.is_lost());
    assert!(guard.release().await.unwrap());
    assert!(other.try_acquire("k").await.unwrap().is_some());
}

#[tokio::test]
async fn waiters_on_another_instance_are_woken_by_the_release_message() {
    let server = RedisServer::start();
    let holder = LeaseLock::redis(connect(&server).await).ttl(Duration::from_secs(30));
    let waiter_redis = connect(&server).await;
    let waiter = LeaseLock::redis(waiter_redis.clone()).max_poll(Duration::from_secs(30));

    // The signal itself: no polling involved.
    let mut signal = waiter.backend().release_signal("k");
    subscribed(&waiter_redis).await;
    let guard = holder.try_acquire("k").await.unwrap().unwrap();
    signal.mark_seen();
    guard.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), signal.notified())
        .await
        .expect("woken by the published release");

    // A waiting acquirer: its fallback poll has backed off to seconds by the release.
    let guard = holder.try_acquire("k").await.unwrap().unwrap();
    let task = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            let g = waiter.acquire("k", Duration::from_secs(20)).await.unwrap();
            (Instant::now(), g.fence())
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let released = Instant::now();
    let fence = guard.fence();
    guard.release().await.unwrap();
    let (acquired, new_fence) = task.await.unwrap();
    assert!(
        acquired - released < Duration::from_millis(500),
        "{:?}",
        acquired - released
    );
    assert!(new_fence > fence);
}

#[tokio::test]
async fn redis_unavailable_degrades_the_lock_and_it_recovers() {
    let mut server = RedisServer::start();
    let redis = connect(&server).await;
    let lock = RedisLock::new(redis.clone());
    assert!(lock.try_acquire("k", TTL).await.is_ok());
    server.stop();
    let start = Instant::now();
    let mut errors = 0;
    for _ in 0..20 {
        match lock.try_acquire("k2", TTL).await {
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                errors += 1;
            }
            Ok(a) => panic!("acquired from a stopped server: {a:?}"),
        }
    }
    assert_eq!(errors, 20);
    assert!(lock.is_degraded());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the breaker makes failures fast"
    );
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock.try_acquire("k3", TTL).await.is_err() {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!lock.is_degraded());
}

#[tokio::test]
async fn a_thousand_concurrent_misses_in_one_process_compute_once() {
    let server = RedisServer::start();
    let cache = StampedeCache::redis(connect(&server).await);
    let runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            let f = counted(&runs, Duration::from_millis(100), "report");
            tokio::spawn(async move { cache.get_or_compute("k", TTL, f).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "report");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn fleet_run(caches: &[StampedeCache], key: &str, per: usize) -> usize {
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for cache in caches {
        for _ in 0..per {
            let cache = cache.clone();
            let key = key.to_owned();
            let f = counted(&runs, Duration::from_millis(200), "value");
            tasks.push(tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(20), cache.get_or_compute(key, TTL, f))
                    .await
            }));
        }
    }
    for t in tasks {
        let value = t.await.unwrap().expect("no caller hangs").unwrap();
        assert_eq!(value, "value");
    }
    runs.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_times_250_misses_compute_once_fleet_wide() {
    let server = RedisServer::start();
    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(StampedeCache::redis(connect(&server).await));
    }
    assert_eq!(fleet_run(&caches, "hot", 250).await, 1);
    // And again for a second key, once the first is cached.
    assert_eq!(fleet_run(&caches, "hot", 250).await, 0, "all hits");
    assert_eq!(fleet_run(&caches, "other", 250).await, 1);
}

#[tokio::test]
async fn a_stalled_holder_is_taken_over_and_its_stale_write_is_refused() {
    let server = RedisServer::start();
    let stalled_redis = connect(&server).await;
    let stalled = StampedeCache::with(
        RedisStore::new(stalled_redis.clone()),
        LeaseLock::redis(stalled_redis)
            .ttl(Duration::from_millis(300))
            .watchdog(false),
    );
    let healthy = StampedeCache::redis(connect(&server).await);
    let runs = Arc::new(AtomicUsize::new(0));
    let slow = {
        let f = counted(&runs, Duration::from_millis(1500), "stale");
        tokio::spawn(async move { stalled.get_or_compute("k", TTL, f).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = healthy
        .get_or_compute("k", TTL, counted(&runs, Duration::ZERO, "fresh"))
        .await
        .unwrap();
    assert_eq!(fresh, "fresh", "took over after the stalled lease expired");
    let fence_after_takeover: u64 = server.cmd(&["HGET", "turret:val:{k}", "f"]);
    // The stalled holder finishes; its caller gets its own value, but the store keeps the
    // newer one.
    assert_eq!(slow.await.unwrap().unwrap(), "stale");
    assert_eq!(healthy.peek::<String>("k").await.as_deref(), Some("fresh"));
    let fence_now: u64 = server.cmd(&["HGET", "turret:val:{k}", "f"]);
    assert_eq!(fence_now, fence_after_takeover);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_means_local_single_flight_and_restarted_means_fleet_wide_again() {
    let mut server = RedisServer::start();
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(connect(&server).await);
    }
    let caches: Vec<_> = handles
        .iter()
        .map(|r| StampedeCache::redis(r.clone()))
        .collect();
    assert_eq!(fleet_run(&caches, "before", 100).await, 1);

    server.stop();
    let start = Instant::now();
    let runs = fleet_run(&caches, "during", 100).await;
    assert!(
        (1..=3).contains(&runs),
        "at most one computation per instance: {runs}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    for redis in &handles {
        while redis.query::<String>(&redis::cmd("PING")).await.is_err() {
            assert!(Instant::now() < deadline, "redis never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        fleet_run(&caches, "after", 100).await,
        1,
        "fleet-wide again"
    );
}

#[tokio::test]
async fn invalidate_by_key_and_tag_on_redis() {
    let server = RedisServer::start();
    let cache = StampedeCache::redis(connect(&server).await);
    let runs = Arc::new(AtomicUsize::new(0));
    for (key, tags) in [
        ("p1", &["products", "brand:a"][..]),
        ("p2", &["products"][..]),
        ("c1", &["categories"][..]),
    ] {
        cache
            .get_or_compute_tagged(key, TTL, tags, counted(&runs, Duration::ZERO, key))
            .await
            .unwrap();
    }
    assert!(cache.invalidate("c1").await.unwrap());
    assert!(cache.peek::<String>("c1").await.is_none());
    assert_eq!(cache.invalidate_tag("products").await.unwrap(), 2);
    assert!(cache.peek::<String>("p1").await.is_none());
    assert!(cache.peek::<String>("p2").await.is_none());
    let ttl: i64 = server.cmd(&["PTTL", "turret:tag:{brand%3Aa}"]);
    assert!(ttl > 0 && ttl <= 60_000, "tag sets expire: {ttl}");
    let exists: i64 = server.cmd(&["EXISTS", "turret:tag:{products}"]);
    assert_eq!(exists, 0);
}

#[tokio::test]
async fn a_corrupt_value_in_redis_is_a_miss() {
    let server = RedisServer::start();
    let cache = StampedeCache::redis(connect(&server).await);
    let _: i64 = server.cmd(&["HSET", "turret:val:{k}", "v", "\u{1}garbage", "f", "0"]);
    let runs = Arc::new(AtomicUsize::new(0));
    let v = cache
        .get_or_compute("k", TTL, counted(&runs, Duration::ZERO, "fixed"))
        .await
        .unwrap();
    assert_eq!(v, "fixed");
    assert_eq!(cache.peek::<String>("k").await.as_deref(), Some("fixed"));
    // A key of the wrong Redis type is a miss too, not an error.
    let _: String = server.cmd(&["SET", "turret:val:{w}", "plain"]);
    let v = cache
        .get_or_compute("w", TTL, counted(&runs, Duration::ZERO, "computed"))
        .await
        .unwrap();
    assert_eq!(v, "computed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_on_a_cluster_compute_once_fleet_wide() {
    let cluster = turret_testkit::RedisCluster::start(3);
    let mut caches = Vec::new();
    for _ in 0..4 {
        let redis = turret_testkit::connect!(&cluster, configure).await;
        caches.push(StampedeCache::redis(redis));
    }
    assert_eq!(fleet_run(&caches, "hot", 100).await, 1);
    assert_eq!(fleet_run(&caches, "hot", 100).await, 0, "all hits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_times_100_fetch_misses_compute_once_fleet_wide() {
    let server = RedisServer::start();
    let mut caches = Vec::new();
    for _ in 0..4 {
        let redis = connect(&server).await;
        subscribed(&redis).await;
        caches.push(StampedeCache::redis(redis));
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let options = turret_stampede::Options::ttl(TTL);
    let mut tasks = Vec::new();
    for cache in &caches {
        for _ in 0..100 {
            let (cache, runs, options) = (cache.clone(), runs.clone(), options.clone());
            tasks.push(tokio::spawn(async move {
                let db = "the database";
                tokio::time::timeout(
                    Duration::from_secs(20),
                    cache.fetch("fetched", &options, || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, Infallible>(db.len())
                    }),
                )
                .await
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("no caller hangs"), Ok(12));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Write-through against computations in flight, on one Redis from two instances: a
/// computation reads the "database", then a writer updates it and calls `set`, then the
/// computation stores what it read. Whatever the interleaving, what is stored afterwards
/// is the value written last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_computation_never_overwrites_a_later_write_through() {
    let server = RedisServer::start();
    let reader = StampedeCache::redis(connect(&server).await);
    let writer = StampedeCache::redis(connect(&server).await);
    write_through_race(&reader, &writer, 1000).await;
}

/// The same race on a Redis Cluster: the 50 keys spread over the masters' slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_slow_computation_never_overwrites_a_later_write_through() {
    let cluster = turret_testkit::RedisCluster::start(3);
    let reader = StampedeCache::redis(turret_testkit::connect!(&cluster, configure).await);
    let writer = StampedeCache::redis(turret_testkit::connect!(&cluster, configure).await);
    write_through_race(&reader, &writer, 1000).await;
}

/// `rounds` interleavings of a computation on `reader` with a write-through on `writer`.
async fn write_through_race(reader: &StampedeCache, writer: &StampedeCache, rounds: u64) {
    let options = turret_stampede::Options::ttl(TTL);
    let db = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for round in 0..rounds {
        let key = format!("race:{}", round % 50);
        writer.invalidate(&key).await.unwrap();
        let read = Arc::new(tokio::sync::Notify::new());
        let written = Arc::new(tokio::sync::Notify::new());
        let computation = {
            let (reader, db, read, written, key, options) = (
                reader.clone(),
                db.clone(),
                read.clone(),
                written.clone(),
                key.clone(),
                options.clone(),
            );
            tokio::spawn(async move {
                reader
                    .fetch(&key, &options, || async {
                        let seen = db.load(Ordering::SeqCst);
                        read.notify_one();
                        // Vary the interleaving: some computations store before the write,
                        // most after it.
                        if round % 4 != 0 {
                            written.notified().await;
                        }
                        Ok::<_, Infallible>(seen)
                    })
                    .await
            })
        };
        read.notified().await;
        let newest = round + 1;
        db.store(newest, Ordering::SeqCst);
        writer.set(&key, &newest, &options).await.unwrap();
        written.notify_one();
        let computed = computation.await.unwrap().unwrap();
        assert!(computed < newest, "the computation read before the write");
        assert_eq!(
            writer.peek::<u64>(&key).await,
            Some(newest),
            "round {round}: the last write stands"
        );
    }
}

/// The two-tier cache through the cache-aside API: B holds the value in its L1, a
/// write-through on A reaches B's readers (the L1 copy is evicted by the broadcast).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_on_one_tiered_cache_reaches_the_other_instances_reads() {
    let server = RedisServer::start();
    let (ra, rb) = (connect(&server).await, connect(&server).await);
    let a = StampedeCache::tiered(turret_stampede::TieredStore::new(ra.clone()), ra);
    let store_b = turret_stampede::TieredStore::new(rb.clone());
    let b = StampedeCache::tiered(store_b, rb);
    let options = turret_stampede::Options::ttl(TTL);
    let first: Result<u64, Infallible> = b.fetch("t", &options, || async { Ok(1) }).await;
    assert_eq!(first, Ok(1));
    let hit: Result<u64, Infallible> = b.fetch("t", &options, || async { Ok(99) }).await;
    assert_eq!(hit, Ok(1), "B's L1 (or L2) holds it");
    a.set("t", &2u64, &options).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen: Result<u64, Infallible> = b.fetch("t", &options, || async { Ok(99) }).await;
        if seen == Ok(2) {
            break;
        }
        assert_eq!(
            seen,
            Ok(1),
            "B sees the old or the new value, never a recomputation"
        );
        assert!(Instant::now() < deadline, "B never saw the write-through");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
