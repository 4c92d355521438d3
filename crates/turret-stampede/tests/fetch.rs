//! `fetch` (scoped cache-aside) and `set` (write-through) on the memory backends.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::future::join_all;
use tokio::sync::Notify;
use turret_stampede::{FakeClock, Options, StampedeCache};

/// A "database" the computations borrow: counts its queries.
#[derive(Default)]
struct Db {
    queries: AtomicUsize,
    value: std::sync::Mutex<u64>,
}

impl Db {
    async fn load(&self, work: Duration) -> Result<u64, String> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        let v = *self.value.lock().unwrap();
        tokio::time::sleep(work).await;
        Ok(v)
    }
}

fn ttl(secs: u64) -> Options {
    Options::ttl(Duration::from_secs(secs))
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_borrowing_the_database_share_one_computation() {
    let cache = StampedeCache::new();
    let db = Db::default();
    *db.value.lock().unwrap() = 7;
    let options = ttl(60);
    let calls = (0..50).map(|_| cache.fetch("k", &options, || db.load(Duration::from_millis(100))));
    let results = join_all(calls).await;
    assert_eq!(results.len(), 50);
    assert!(results.iter().all(|r| r == &Ok(7)), "{results:?}");
    assert_eq!(db.queries.load(Ordering::SeqCst), 1);
    // A hit afterwards: no query.
    assert_eq!(
        cache.fetch("k", &options, || db.load(Duration::ZERO)).await,
        Ok(7)
    );
    assert_eq!(db.queries.load(Ordering::SeqCst), 1);
    // Another key is another computation.
    assert_eq!(
        cache
            .fetch("k2", &options, || db.load(Duration::ZERO))
            .await,
        Ok(7)
    );
    assert_eq!(db.queries.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_leaders_error_is_its_own_and_a_waiter_computes() {
    let cache = StampedeCache::new();
    let runs = AtomicUsize::new(0);
    let options = ttl(60);
    let compute = |fail: bool| {
        let runs = &runs;
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if fail { Err("db down") } else { Ok(1u32) }
        }
    };
    let leader = cache.fetch("k", &options, compute(true));
    let waiters = (0..5).map(|_| cache.fetch("k", &options, compute(false)));
    let (leader, waiters) = tokio::join!(leader, join_all(waiters));
    assert_eq!(
        leader,
        Err("db down"),
        "the leader's error goes to the leader"
    );
    assert!(waiters.iter().all(|r| r == &Ok(1)), "{waiters:?}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "one failed run, then one waiter's run"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_leader_hands_over_to_a_waiter() {
    let cache = StampedeCache::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let options = ttl(60);
    let leader = {
        let (cache, runs, options) = (cache.clone(), runs.clone(), options.clone());
        tokio::spawn(async move {
            cache
                .fetch("k", &options, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, Infallible>(0u32)
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the leader is computing");
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let (cache, runs, options) = (cache.clone(), runs.clone(), options.clone());
            tokio::spawn(async move {
                cache
                    .fetch("k", &options, || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, Infallible>(2u32)
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    leader.abort();
    for w in waiters {
        assert_eq!(w.await.unwrap(), Ok(2));
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "exactly one waiter took over"
    );
}

#[tokio::test]
async fn within_grace_one_caller_recomputes_and_the_others_get_the_stale_value_at_once() {
    let clock = FakeClock::new(Duration::from_secs(1_000_000));
    let cache = StampedeCache::new().clock(clock.clone());
    let options = ttl(10).grace(Duration::from_secs(60));
    let v: Result<u32, Infallible> = cache.fetch("k", &options, || async { Ok(1) }).await;
    assert_eq!(v, Ok(1));
    clock.advance(Duration::from_secs(20)); // stale, within grace

    let gate = Arc::new(Notify::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let refresher = {
        let (cache, gate, runs, options) =
            (cache.clone(), gate.clone(), runs.clone(), options.clone());
        tokio::spawn(async move {
            cache
                .fetch("k", &options, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    Ok::<_, Infallible>(2u32)
                })
                .await
        })
    };
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // While the refresh is held at the gate, everyone else is answered with the stale value.
    for _ in 0..10 {
        let v = cache
            .fetch("k", &options, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(3u32)
            })
            .await;
        assert_eq!(v, Ok(1));
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "only the refresher computes"
    );
    gate.notify_one();
    assert_eq!(
        refresher.await.unwrap(),
        Ok(2),
        "the refresher gets the new value"
    );
    let v: Result<u32, Infallible> = cache.fetch("k", &options, || async { Ok(9) }).await;
    assert_eq!(v, Ok(2), "stored by the refresh");
    // Past the grace window: a miss.
    clock.advance(Duration::from_secs(100));
    let v: Result<u32, Infallible> = cache.fetch("k", &options, || async { Ok(4) }).await;
    assert_eq!(v, Ok(4));
}

#[tokio::test(start_paused = true)]
async fn a_computation_that_began_before_a_write_through_cannot_overwrite_it() {
    let cache = StampedeCache::new();
    let db = Arc::new(Db::default());
    *db.value.lock().unwrap() = 1;
    let options = ttl(600);
    let slow = {
        let (cache, db, options) = (cache.clone(), db.clone(), options.clone());
        tokio::spawn(async move {
            cache
                .fetch("p", &options, || db.load(Duration::from_millis(500)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(db.queries.load(Ordering::SeqCst), 1, "it read the old row");
    // The write path: UPDATE, then write-through.
    *db.value.lock().unwrap() = 2;
    cache.set("p", &2u64, &options).await.unwrap();
    assert_eq!(slow.await.unwrap(), Ok(1), "its caller gets what it read");
    assert_eq!(
        cache.peek::<u64>("p").await,
        Some(2),
        "the older computation's write was refused"
    );
    let v = cache.fetch("p", &options, || db.load(Duration::ZERO)).await;
    assert_eq!(v, Ok(2));
    assert_eq!(db.queries.load(Ordering::SeqCst), 1, "a hit");
}

#[tokio::test]
async fn set_stores_with_the_options_ttl_and_tags() {
    let clock = FakeClock::new(Duration::from_secs(1_000_000));
    let cache = StampedeCache::new().clock(clock.clone());
    let options = ttl(10).tag("category:1");
    cache.set("a", &"x".to_owned(), &options).await.unwrap();
    cache.set("b", &"y".to_owned(), &ttl(10)).await.unwrap();
    assert_eq!(cache.peek::<String>("a").await.as_deref(), Some("x"));
    cache.invalidate_tag("category:1").await.unwrap();
    assert_eq!(cache.peek::<String>("a").await, None, "tagged: invalidated");
    assert_eq!(cache.peek::<String>("b").await.as_deref(), Some("y"));
    clock.advance(Duration::from_secs(11));
    assert_eq!(cache.peek::<String>("b").await, None, "past its TTL");
}

#[tokio::test]
async fn memory_and_redis_caches_are_one_type() {
    fn takes(_: &StampedeCache) {}
    takes(&StampedeCache::new());
    #[cfg(feature = "redis")]
    {
        let redis = turret_redis::Redis::connect_lazy(
            turret_redis::RedisConfig::from_url("redis://127.0.0.1:1").unwrap(),
        )
        .unwrap();
        takes(&StampedeCache::redis(redis));
    }
}

/// A lock that cannot fence: `set` must not leave the value stored before the database
/// write in place.
#[tokio::test]
async fn a_write_through_without_a_fence_drops_the_old_value_and_fails() {
    use turret_stampede::{
        LeaseLock, MemoryStore,
        lock::{Attempt, Lease, LockBackend, LockError, MemoryLock, ReleaseSignal},
    };
    /// A memory lock without `next_fence` (the trait's default refuses).
    struct NoFence(MemoryLock);
    impl LockBackend for NoFence {
        async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Attempt, LockError> {
            self.0.try_acquire(key, ttl).await
        }
        async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
            self.0.extend(lease, ttl).await
        }
        async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
            self.0.release(lease).await
        }
        fn release_signal(&self, key: &str) -> ReleaseSignal {
            self.0.release_signal(key)
        }
    }
    let cache = StampedeCache::with(
        MemoryStore::default(),
        LeaseLock::new(NoFence(MemoryLock::new())),
    );
    let options = ttl(600);
    let old: Result<u32, Infallible> = cache.fetch("p", &options, || async { Ok(1) }).await;
    assert_eq!(old, Ok(1));
    assert!(cache.set("p", &2u32, &options).await.is_err());
    assert_eq!(cache.peek::<u32>("p").await, None, "the old value is gone");
}
