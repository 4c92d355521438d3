//! Injectable time for the memory backend: a monotonic clock counting microseconds.
//!
//! Not to be confused with turret-stampede's `Clock` (wall-clock milliseconds, for ages and
//! expiry): a rate limiter needs time that never goes back, not the time of day.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// A monotonic clock counting microseconds. The memory backend reads it inside the per-key
/// lock, so decisions on one key always see non-decreasing time.
pub trait MicrosClock: Send + Sync + 'static {
    /// Microseconds since an arbitrary fixed origin; never decreases.
    fn now_micros(&self) -> u64;
}

/// The real [`MicrosClock`]: microseconds of [`Instant`] since the clock was made.
#[derive(Clone)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl fmt::Debug for MonotonicClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MonotonicClock")
    }
}

impl MicrosClock for MonotonicClock {
    fn now_micros(&self) -> u64 {
        // Start well above zero so that "zero" state never looks like the present.
        self.origin.elapsed().as_micros() as u64 + 1_000_000_000
    }
}

/// A [`MicrosClock`] that moves only when told to: for tests of time-dependent rules without
/// sleeping.
///
/// ```
/// use std::time::Duration;
/// use turret_ratelimit::{MicrosClock, FakeMicrosClock};
///
/// let clock = FakeMicrosClock::default();
/// let t0 = clock.now_micros();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now_micros() - t0, 1_500_000);
/// ```
#[derive(Debug, Clone)]
pub struct FakeMicrosClock {
    now: Arc<AtomicU64>,
}

impl Default for FakeMicrosClock {
    fn default() -> Self {
        Self {
            now: Arc::new(AtomicU64::new(1_000_000_000)),
        }
    }
}

impl FakeMicrosClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }
}

impl MicrosClock for FakeMicrosClock {
    fn now_micros(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

impl<C: MicrosClock + ?Sized> MicrosClock for Arc<C> {
    fn now_micros(&self) -> u64 {
        (**self).now_micros()
    }
}
