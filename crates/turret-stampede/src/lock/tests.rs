use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;

fn lock() -> LeaseLock<MemoryLock> {
    LeaseLock::memory().ttl(Duration::from_secs(3))
}

#[tokio::test(start_paused = true)]
async fn only_the_holder_releases() {
    let lock = lock();
    let guard = lock.try_acquire("k").await.unwrap().unwrap();
    let forged = Lease::new(
        "k",
        guard.lease().unwrap().token() ^ 1,
        0,
        Duration::from_secs(3),
    );
    assert!(
        !lock.backend().release(&forged).await.unwrap(),
        "non-holder release is a no-op"
    );
    assert!(lock.try_acquire("k").await.unwrap().is_none(), "still held");
    assert!(guard.release().await.unwrap());
    assert!(lock.try_acquire("k").await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_stalled_lease_expires_and_the_next_holder_gets_a_larger_fence() {
    let lock = lock().watchdog(false);
    let first = lock.try_acquire("k").await.unwrap().unwrap();
    assert!(!first.is_lost());
    advance(Duration::from_millis(2999)).await;
    assert!(lock.try_acquire("k").await.unwrap().is_none());
    advance(Duration::from_millis(2)).await;
    assert!(first.is_lost());
    let second = lock.try_acquire("k").await.unwrap().unwrap();
    assert!(second.fence() > first.fence());
    assert!(
        !first.release().await.unwrap(),
        "the old holder cannot release the new lease"
    );
    assert!(lock.try_acquire("k").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_keeps_a_long_holder_s_lease() {
    let lock = lock();
    let guard = lock.try_acquire("k").await.unwrap().unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(lock.try_acquire("k").await.unwrap().is_none());
        assert!(!guard.is_lost());
    }
    drop(guard);
    // The drop releases in a spawned task.
    tokio::task::yield_now().await;
    assert!(lock.try_acquire("k").await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_notices_a_lost_lease() {
    let lock = lock();
    let guard = lock.try_acquire("k").await.unwrap().unwrap();
    // Someone (an operator, a failover) removed the lease and another took it.
    lock.backend()
        .release(guard.lease().unwrap())
        .await
        .unwrap();
    let other = lock.try_acquire("k").await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(guard.is_lost());
    assert!(other.fence() > guard.fence());
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_woken_by_the_release_not_by_polling() {
    let lock = lock().max_poll(Duration::from_secs(60));
    let guard = lock.try_acquire("k").await.unwrap().unwrap();
    let waiting = {
        let lock = lock.clone();
        tokio::spawn(async move {
            let g = lock.acquire("k", Duration::from_secs(600)).await.unwrap();
            (Instant::now(), g.fence())
        })
    };
    // Let the waiter's fallback backoff grow, then release at a known instant.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let released_at = Instant::now();
    let fence = guard.fence();
    guard.release().await.unwrap();
    let (woken_at, new_fence) = waiting.await.unwrap();
    assert_eq!(woken_at, released_at, "woken at once by the release signal");
    assert!(new_fence > fence);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gives_up_at_its_deadline() {
    let lock = lock();
    let _guard = lock.try_acquire("k").await.unwrap().unwrap();
    let start = Instant::now();
    let err = lock.acquire("k", Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(err, AcquireError::Timeout(_)), "{err}");
    assert_eq!(Instant::now() - start, Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_crashed_holder_s_waiters_retry_when_its_lease_expires() {
    let lock = lock().max_poll(Duration::from_secs(60));
    // A crash: the lease is neither extended (no watchdog) nor released.
    let guard = lock
        .clone()
        .watchdog(false)
        .try_acquire("k")
        .await
        .unwrap()
        .unwrap();
    std::mem::forget(guard);
    let start = Instant::now();
    let _g = lock.acquire("k", Duration::from_secs(600)).await.unwrap();
    let waited = Instant::now() - start;
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[tokio::test]
async fn release_signals_are_dropped_with_their_waiters() {
    let waiters = ReleaseWaiters::new();
    let a = waiters.signal("k");
    let b = waiters.signal("k");
    assert_eq!(waiters.len(), 1);
    drop(a);
    assert_eq!(waiters.len(), 1);
    drop(b);
    assert!(waiters.is_empty());
}
