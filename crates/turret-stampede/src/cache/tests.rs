use std::{
    convert::Infallible,
    sync::atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;

use super::*;
use crate::{FakeClock, MemoryStore};

const TTL: Duration = Duration::from_secs(10);

fn cache() -> (StampedeCache, FakeClock) {
    let clock = FakeClock::new(Duration::from_secs(1_700_000_000));
    (StampedeCache::new().clock(clock.clone()), clock)
}

/// A computation counting its runs, taking `work` of (paused) time and of the fake clock.
fn counted(
    runs: &Arc<AtomicUsize>,
    clock: &FakeClock,
    work: Duration,
    value: &str,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<String, Infallible>> + Send>>
+ Send
+ 'static
+ use<> {
    let runs = runs.clone();
    let clock = clock.clone();
    let value = value.to_owned();
    move || {
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(work).await;
            clock.advance(work);
            Ok(value)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_misses_compute_once() {
    let (cache, clock) = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let cache = cache.clone();
        let f = counted(&runs, &clock, Duration::from_millis(200), "report");
        tasks.push(tokio::spawn(async move {
            cache.get_or_compute("k", TTL, f).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "report");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hit_does_not_compute_and_an_expired_value_is_recomputed() {
    let (cache, clock) = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let cache = cache.beta(0.0);
    let get = |v: &str| cache.get_or_compute("k", TTL, counted(&runs, &clock, Duration::ZERO, v));
    assert_eq!(get("one").await.unwrap(), "one");
    clock.advance(TTL - Duration::from_millis(1));
    assert_eq!(get("two").await.unwrap(), "one", "fresh: a hit");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        get("three").await.unwrap(),
        "three",
        "expired, no grace: a miss"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn xfetch_refreshes_early_in_the_background() {
    let (cache, clock) = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    // Δ = 1 s on the fake clock.
    let first = cache
        .get_or_compute(
            "k",
            TTL,
            counted(&runs, &clock, Duration::from_secs(1), "old"),
        )
        .await
        .unwrap();
    assert_eq!(first, "old");
    clock.advance(Duration::from_secs(5));
    // β = 0: never early.
    let never = cache.clone().beta(0.0);
    for _ in 0..100 {
        let v = never
            .get_or_compute("k", TTL, counted(&runs, &clock, Duration::ZERO, "new"))
            .await
            .unwrap();
        assert_eq!(v, "old");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // A huge β: every read refreshes early, yet returns the current value at once and the
    // refreshes share one flight.
    let eager = cache.clone().beta(1e12);
    for _ in 0..100 {
        let v = eager
            .get_or_compute(
                "k",
                TTL,
                counted(&runs, &clock, Duration::from_secs(1), "new"),
            )
            .await
            .unwrap();
        assert_eq!(v, "old", "served at once");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one refresh");
    assert_eq!(cache.peek::<String>("k").await.as_deref(), Some("new"));
}

#[tokio::test(start_paused = true)]
async fn stale_values_are_served_at_once_while_one_refresh_runs() {
    let (cache, clock) = cache();
    let cache = cache.grace(Duration::from_secs(30)).beta(0.0);
    let runs = Arc::new(AtomicUsize::new(0));
    cache
        .get_or_compute("k", TTL, counted(&runs, &clock, Duration::ZERO, "old"))
        .await
        .unwrap();
    clock.advance(TTL + Duration::from_secs(1));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let cache = cache.clone();
        let f = counted(&runs, &clock, Duration::from_secs(3), "new");
        tasks.push(tokio::spawn(async move {
            cache.get_or_compute("k", TTL, f).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "old");
    }
    assert_eq!(tokio::time::Instant::now(), start, "no reader waited");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "exactly one background refresh"
    );
    let v = cache
        .get_or_compute("k", TTL, counted(&runs, &clock, Duration::ZERO, "x"))
        .await
        .unwrap();
    assert_eq!(v, "new");
    // Past the grace window nothing stale is served.
    clock.advance(TTL + Duration::from_secs(31));
    let v = cache
        .get_or_compute("k", TTL, counted(&runs, &clock, Duration::ZERO, "newest"))
        .await
        .unwrap();
    assert_eq!(v, "newest");
}

#[tokio::test(start_paused = true)]
async fn errors_are_shared_and_not_cached() {
    let (cache, _clock) = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let failing = || {
        let runs = runs.clone();
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err::<String, _>(String::from("db down"))
        }
    };
    let (a, b) = tokio::join!(
        cache.get_or_compute("k", TTL, failing()),
        cache.get_or_compute("k", TTL, failing()),
    );
    assert_eq!(a, Err(Error::Compute(String::from("db down"))));
    assert_eq!(b, a);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let c = cache
        .get_or_compute("k", TTL, || async { Ok::<_, String>(String::from("up")) })
        .await;
    assert_eq!(c.as_deref(), Ok("up"), "the error was not cached");
}

#[tokio::test(start_paused = true)]
async fn a_panic_resolves_every_caller_and_releases_the_lease() {
    let (cache, _clock) = cache();
    let boom = || async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if true {
            panic!("report query crashed");
        }
        Ok::<String, Infallible>(String::new())
    };
    let (a, b) = tokio::join!(
        cache.get_or_compute("k", TTL, boom),
        cache.get_or_compute("k", TTL, || async {
            Ok::<_, Infallible>(String::from("x"))
        }),
    );
    assert!(a.as_ref().unwrap_err().is_panic(), "{a:?}");
    assert_eq!(b, a);
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    let c = cache
        .get_or_compute("k", TTL, || async {
            Ok::<_, Infallible>(String::from("ok"))
        })
        .await;
    assert_eq!(c.as_deref(), Ok("ok"));
    assert_eq!(
        tokio::time::Instant::now(),
        start,
        "the lease was released, not left to expire"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_caller_does_not_cancel_the_fill() {
    let (cache, clock) = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let leader = {
        let cache = cache.clone();
        let f = counted(&runs, &clock, Duration::from_secs(1), "v");
        tokio::spawn(async move { cache.get_or_compute("k", TTL, f).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let follower = {
        let cache = cache.clone();
        let f = counted(&runs, &clock, Duration::from_secs(1), "other");
        tokio::spawn(async move { cache.get_or_compute("k", TTL, f).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    leader.abort();
    assert_eq!(follower.await.unwrap().unwrap(), "v");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        cache.peek::<String>("k").await.as_deref(),
        Some("v"),
        "stored"
    );
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_stored_value_is_a_miss() {
    let (cache, clock) = cache();
    for garbage in [
        &b""[..],
        b"\x01\x02",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    ] {
        let entry = Entry {
            bytes: Bytes::from_static(garbage),
            fence: 0,
            ttl: TTL,
            tags: &[],
        };
        cache.store().put("k", entry).await.unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let v = cache
            .get_or_compute("k", TTL, counted(&runs, &clock, Duration::ZERO, "fixed"))
            .await
            .unwrap();
        assert_eq!(v, "fixed");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        cache.invalidate("k").await.unwrap();
    }
    // A value of another type under the key is a miss too.
    let runs = Arc::new(AtomicUsize::new(0));
    cache
        .get_or_compute("n", TTL, || async { Ok::<_, Infallible>(200u8) })
        .await
        .unwrap();
    let v = cache
        .get_or_compute("n", TTL, counted(&runs, &clock, Duration::ZERO, "text"))
        .await
        .unwrap();
    assert_eq!((v.as_str(), runs.load(Ordering::SeqCst)), ("text", 1));
}

#[tokio::test(start_paused = true)]
async fn invalidate_by_key_and_by_tag() {
    let (cache, clock) = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    for (key, tags) in [
        ("p1", &["products", "brand:a"][..]),
        ("p2", &["products"][..]),
        ("c1", &["categories"][..]),
    ] {
        cache
            .get_or_compute_tagged(key, TTL, tags, counted(&runs, &clock, Duration::ZERO, key))
            .await
            .unwrap();
    }
    assert!(cache.invalidate("c1").await.unwrap());
    assert!(cache.peek::<String>("c1").await.is_none());
    cache.invalidate_tag("products").await.unwrap();
    assert!(cache.peek::<String>("p1").await.is_none());
    assert!(cache.peek::<String>("p2").await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_miss_that_waits_too_long_for_the_lease_computes_unstored() {
    let (cache, clock) = cache();
    let cache = cache.lock_wait(Duration::from_secs(1));
    let _held = cache.lock().try_acquire("k").await.unwrap().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let v = cache
        .get_or_compute("k", TTL, counted(&runs, &clock, Duration::ZERO, "bypass"))
        .await
        .unwrap();
    assert_eq!(v, "bypass");
    assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(1));
    assert!(
        cache.peek::<String>("k").await.is_none(),
        "not stored without the lease"
    );
}

#[tokio::test]
async fn the_memory_store_refuses_a_write_with_an_older_fence() {
    let store = MemoryStore::default();
    let put = |bytes: &'static [u8], fence| {
        store.put(
            "k",
            Entry {
                bytes: Bytes::from_static(bytes),
                fence,
                ttl: TTL,
                tags: &[],
            },
        )
    };
    assert_eq!(put(b"a", 10).await.unwrap(), Put::Stored);
    assert_eq!(put(b"b", 5).await.unwrap(), Put::Refused);
    assert_eq!(store.get("k").await.unwrap().unwrap(), &b"a"[..]);
    assert_eq!(put(b"c", 11).await.unwrap(), Put::Stored);
    assert_eq!(
        put(b"d", 0).await.unwrap(),
        Put::Stored,
        "an unfenced write"
    );
    assert_eq!(store.get("k").await.unwrap().unwrap(), &b"d"[..]);
}
