//! Injectable time for the memory backend.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// A source of monotonic time in microseconds. The memory backend reads it inside the
/// per-key lock, so decisions on one key always see non-decreasing time.
pub trait Clock: Send + Sync + 'static {
    /// Microseconds since an arbitrary fixed origin; never decreases.
    fn now_micros(&self) -> u64;
}

/// The real monotonic clock.
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

impl Clock for MonotonicClock {
    fn now_micros(&self) -> u64 {
        // Start well above zero so that "zero" state never looks like the present.
        self.origin.elapsed().as_micros() as u64 + 1_000_000_000
    }
}

/// A clock that moves only when told to: for tests of time-dependent rules without sleeping.
///
/// ```
/// use std::time::Duration;
/// use turret_ratelimit::{Clock, FakeClock};
///
/// let clock = FakeClock::default();
/// let t0 = clock.now_micros();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now_micros() - t0, 1_500_000);
/// ```
#[derive(Debug, Clone)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
}

impl Default for FakeClock {
    fn default() -> Self {
        Self {
            now: Arc::new(AtomicU64::new(1_000_000_000)),
        }
    }
}

impl FakeClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_micros(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_micros(&self) -> u64 {
        (**self).now_micros()
    }
}
