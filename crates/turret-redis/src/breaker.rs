//! The circuit breaker in front of every Redis command.

use std::sync::{
    Mutex,
    atomic::{AtomicU8, AtomicU32, Ordering},
};

use tokio::time::Instant;

use crate::BreakerConfig;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Commands go to Redis.
    Closed,
    /// Redis failed recently: commands fail at once with [`crate::Error::Unavailable`].
    Open,
    /// The cool-down has passed and one probe command is in flight.
    HalfOpen,
}

impl BreakerState {
    fn from_u8(v: u8) -> Self {
        match v {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: AtomicU8,
    failures: AtomicU32,
    opened_at: Mutex<Option<Instant>>,
}

/// Permission to send one command. Dropping it without an outcome (the caller's future was
/// cancelled) counts as a failure for a probe, so a half-open breaker never gets stuck.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
}

impl Permit<'_> {
    pub(crate) fn success(mut self) {
        self.done = true;
        self.breaker.on_success();
    }

    pub(crate) fn failure(mut self) {
        self.done = true;
        self.breaker.on_failure(self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.on_failure(true);
        }
    }
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            opened_at: Mutex::new(None),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Asks to send a command: `None` means the breaker is open (or a probe is already in
    /// flight) and the command must not be sent.
    pub(crate) fn acquire(&self) -> Option<Permit<'_>> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Some(Permit {
                breaker: self,
                probe: false,
                done: false,
            }),
            OPEN => {
                let opened_at = *self.opened_at.lock().unwrap_or_else(|e| e.into_inner());
                let cooled = opened_at.is_none_or(|t| t.elapsed() >= self.config.cool_down);
                if cooled
                    && self
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    self.transition(BreakerState::HalfOpen);
                    Some(Permit {
                        breaker: self,
                        probe: true,
                        done: false,
                    })
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    fn on_success(&self) {
        // Read before writing: every command of every thread ends here, and a write to
        // these shared lines on each one would move them between cores for nothing.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.state.load(Ordering::Acquire) != CLOSED {
            let prev = self.state.swap(CLOSED, Ordering::AcqRel);
            if prev != CLOSED {
                self.transition(BreakerState::Closed);
            }
        }
    }

    fn on_failure(&self, probe: bool) {
        if probe {
            self.open(HALF_OPEN);
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.config.failure_threshold {
            self.open(CLOSED);
        }
    }

    fn open(&self, from: u8) {
        // Record the time first, so a reader that sees OPEN also sees when it opened.
        *self.opened_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if self
            .state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.failures.store(0, Ordering::Relaxed);
            self.transition(BreakerState::Open);
        }
    }

    fn transition(&self, to: BreakerState) {
        match to {
            BreakerState::Open => tracing::warn!(
                cool_down = ?self.config.cool_down,
                "redis circuit breaker opened: commands fail fast until a probe succeeds"
            ),
            BreakerState::HalfOpen => {
                tracing::debug!("redis circuit breaker half-open: probing")
            }
            BreakerState::Closed => tracing::info!("redis circuit breaker closed: redis is back"),
        }
        metrics::counter!("turret_redis_breaker_transitions_total", "to" => to.as_str())
            .increment(1);
        metrics::gauge!("turret_redis_breaker_open").set(match to {
            BreakerState::Closed => 0.0,
            _ => 1.0,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn breaker(threshold: u32) -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: threshold,
            cool_down: Duration::from_secs(10),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures() {
        let b = breaker(3);
        b.acquire().unwrap().failure();
        b.acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_count() {
        let b = breaker(2);
        b.acquire().unwrap().failure();
        b.acquire().unwrap().success();
        b.acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn after_cool_down_exactly_one_probe_goes_through() {
        let b = breaker(1);
        b.acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(b.acquire().is_none(), "still cooling down");
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.acquire().expect("probe after cool-down");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.acquire().is_none(), "only one probe at a time");
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_for_another_cool_down() {
        let b = breaker(1);
        b.acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(10)).await;
        b.acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.acquire().is_none());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_counts_as_failure() {
        let b = breaker(1);
        b.acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(b.acquire().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
    }
}
