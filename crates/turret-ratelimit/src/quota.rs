//! Quotas that can't be misread.

use std::{fmt, time::Duration};

/// How requests are counted against a [`Quota`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic Cell Rate Algorithm (the default): a smooth rate with a burst capacity. At most
    /// `burst` requests at once, then one every `period / count`. No boundary burst.
    #[default]
    Gcra,
    /// Fixed windows aligned to the epoch, what `INCR` + `EXPIRE` does: `count` per window.
    /// A client can spend `count` at the end of one window and `count` again at the start of
    /// the next, so up to 2 × `count` pass within one window-length around a boundary.
    FixedWindow,
    /// Sliding window log: exact, remembers the time of every admitted request in the last
    /// window (memory grows with `count` per key).
    SlidingLog,
    /// Sliding window counter: weights the previous window's count by how much of it still
    /// overlaps the sliding window. Constant memory, approximate (assumes the previous
    /// window's requests were evenly spread).
    SlidingWindow,
}

impl Algorithm {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingWindow => "sliding_window",
        }
    }
}

/// `count` requests per `period`, with an optional burst capacity and an algorithm.
///
/// `Quota::per_second(100)` means one hundred requests every second, not one request every
/// hundred seconds.
///
/// ```
/// use std::time::Duration;
/// use turret_ratelimit::Quota;
///
/// let q = Quota::per_minute(100);
/// assert_eq!(q.count(), 100);
/// assert_eq!(q.period(), Duration::from_secs(60));
/// assert_eq!(q.burst_size(), 100); // all of it may be spent at once
///
/// let smooth = Quota::per_second(10).burst(2); // 10/s, at most 2 back to back
/// assert_eq!(smooth.burst_size(), 2);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    count: u32,
    period: Duration,
    burst: u32,
    algorithm: Algorithm,
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Quota({} per {:?}, burst {}, {})",
            self.count,
            self.period,
            self.burst,
            self.algorithm.as_str()
        )
    }
}

impl Quota {
    /// `count` requests per second.
    pub fn per_second(count: u32) -> Self {
        Self::per(Duration::from_secs(1), count)
    }

    /// `count` requests per minute.
    pub fn per_minute(count: u32) -> Self {
        Self::per(Duration::from_secs(60), count)
    }

    /// `count` requests per hour.
    pub fn per_hour(count: u32) -> Self {
        Self::per(Duration::from_secs(3600), count)
    }

    /// `count` requests per `period`. A `count` of 0 refuses everything; a period under one
    /// millisecond is raised to one millisecond.
    pub fn per(period: Duration, count: u32) -> Self {
        Self {
            count,
            period: period.max(Duration::from_millis(1)),
            burst: count,
            algorithm: Algorithm::Gcra,
        }
    }

    /// The most requests admitted at once (GCRA only; default `count`).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// The counting algorithm (default [`Algorithm::Gcra`]).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Requests per period.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The burst capacity.
    pub fn burst_size(&self) -> u32 {
        match self.algorithm {
            Algorithm::Gcra => self.burst,
            _ => self.count,
        }
    }

    /// The algorithm.
    pub fn get_algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub(crate) fn period_micros(&self) -> u64 {
        self.period.as_micros().min(u128::from(u64::MAX / 4)) as u64
    }

    /// GCRA emission interval: the time one request's worth of quota takes to come back.
    /// Rounded down, so the limiter errs (by under a microsecond per request) towards
    /// admitting, never towards refusing a request within quota.
    pub(crate) fn emission_interval_micros(&self) -> u64 {
        (self.period_micros() / u64::from(self.count.max(1))).max(1)
    }

    /// GCRA tolerance: how far ahead of now the theoretical arrival time may be.
    pub(crate) fn tolerance_micros(&self) -> u64 {
        self.emission_interval_micros()
            .saturating_mul(u64::from(self.burst))
    }
}
