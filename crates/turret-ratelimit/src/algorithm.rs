//! The decision maths: pure functions of (state, now, quota, cost), shared in meaning with
//! the Lua scripts of the Redis backend. Times are microseconds.

use std::{collections::VecDeque, time::Duration};

use crate::Quota;

/// The outcome of one rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests per period (the quota's count).
    pub limit: u32,
    /// Requests that would still be admitted right now, after this one.
    pub remaining: u32,
    /// Time until the quota is whole again.
    pub reset_after: Duration,
    /// When refused: the time after which the same request would be admitted
    /// (`None` when it never can be: the cost exceeds the burst capacity).
    pub retry_after: Option<Duration>,
}

impl Decision {
    pub(crate) fn from_micros(
        allowed: bool,
        limit: u32,
        remaining: u64,
        reset_us: u64,
        retry_us: Option<u64>,
    ) -> Self {
        Self {
            allowed,
            limit,
            remaining: remaining.min(u64::from(u32::MAX)) as u32,
            reset_after: Duration::from_micros(reset_us),
            retry_after: retry_us.map(Duration::from_micros),
        }
    }
}

/// GCRA. `tat` is the theoretical arrival time; returns the decision and, when admitted,
/// the new `tat` to store (nothing is written on a refusal).
pub(crate) fn gcra(
    tat: Option<u64>,
    now: u64,
    quota: &Quota,
    cost: u32,
) -> (Decision, Option<u64>) {
    let t = quota.emission_interval_micros();
    let tau = quota.tolerance_micros();
    let limit = quota.count();
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(t.saturating_mul(u64::from(cost)));
    let diff = new_tat - now;
    if diff > tau || quota.count() == 0 {
        let available = tau.saturating_sub(tat - now) / t;
        let retry = (u64::from(cost) <= u64::from(quota.burst_size()) && quota.count() > 0)
            .then(|| diff - tau);
        (
            Decision::from_micros(false, limit, available, tat - now, retry),
            None,
        )
    } else {
        let remaining = (tau - diff) / t;
        (
            Decision::from_micros(true, limit, remaining, diff, None),
            Some(new_tat),
        )
    }
}

/// Fixed window aligned to the epoch. State: (window index, count in it).
pub(crate) fn fixed_window(
    state: Option<(u64, u64)>,
    now: u64,
    quota: &Quota,
    cost: u32,
) -> (Decision, Option<(u64, u64)>) {
    let w = quota.period_micros();
    let limit = u64::from(quota.count());
    let idx = now / w;
    let count = match state {
        Some((i, c)) if i == idx => c,
        _ => 0,
    };
    let reset = (idx + 1) * w - now;
    let cost = u64::from(cost);
    if count + cost > limit {
        let retry = (cost <= limit).then_some(reset);
        (
            Decision::from_micros(
                false,
                quota.count(),
                limit.saturating_sub(count),
                reset,
                retry,
            ),
            None,
        )
    } else {
        let count = count + cost;
        (
            Decision::from_micros(true, quota.count(), limit - count, reset, None),
            Some((idx, count)),
        )
    }
}

/// Sliding window counter. State: (window index, previous window's count, this window's).
pub(crate) fn sliding_window(
    state: Option<(u64, u64, u64)>,
    now: u64,
    quota: &Quota,
    cost: u32,
) -> (Decision, Option<(u64, u64, u64)>) {
    let w = quota.period_micros();
    let limit = u64::from(quota.count());
    let idx = now / w;
    let (prev, curr) = match state {
        Some((i, p, c)) if i == idx => (p, c),
        Some((i, _, c)) if i + 1 == idx => (c, 0),
        _ => (0, 0),
    };
    let elapsed = now - idx * w;
    let left = w - elapsed;
    // Integer maths: estimate × w = prev × left + curr × w.
    let est_w = u128::from(prev) * u128::from(left) + u128::from(curr) * u128::from(w);
    let cost64 = u64::from(cost);
    let admit_w = u128::from(limit.saturating_sub(cost64)) * u128::from(w);
    if cost64 > limit || est_w > admit_w {
        let remaining = (u128::from(limit) * u128::from(w)).saturating_sub(est_w) / u128::from(w);
        let retry = (cost64 <= limit).then(|| {
            let need_w = est_w - admit_w; // estimate must fall by need_w / w
            if prev > 0 && need_w <= u128::from(prev) * u128::from(left) {
                // The previous window's weight falls by `prev` per `w` of time.
                need_w.div_ceil(u128::from(prev)) as u64
            } else {
                // Wait for the next window, where `curr` becomes the previous count.
                let cap = limit - cost64;
                let into_next = if curr > cap {
                    (u128::from(curr - cap) * u128::from(w)).div_ceil(u128::from(curr)) as u64
                } else {
                    0
                };
                left + into_next
            }
        });
        let reset = if curr > 0 { left + w } else { left };
        (
            Decision::from_micros(false, quota.count(), remaining as u64, reset, retry),
            None,
        )
    } else {
        let curr = curr + cost64;
        let est_w = est_w + u128::from(cost64) * u128::from(w);
        let remaining = (u128::from(limit) * u128::from(w) - est_w) / u128::from(w);
        (
            Decision::from_micros(true, quota.count(), remaining as u64, left + w, None),
            Some((idx, prev, curr)),
        )
    }
}

/// Sliding window log: the admission times of the last window, oldest first. Entries older
/// than the window are dropped; the log is changed only when the request is admitted.
pub(crate) fn sliding_log(log: &mut VecDeque<u64>, now: u64, quota: &Quota, cost: u32) -> Decision {
    let w = quota.period_micros();
    let limit = u64::from(quota.count());
    while log.front().is_some_and(|&t| t + w <= now) {
        log.pop_front();
    }
    let count = log.len() as u64;
    let cost64 = u64::from(cost);
    if count + cost64 > limit {
        let retry = (cost64 <= limit).then(|| {
            // The oldest `count + cost - limit` entries must leave the window.
            let i = (count + cost64 - limit - 1) as usize;
            log[i] + w - now
        });
        let reset = log.back().map_or(0, |&t| t + w - now);
        Decision::from_micros(
            false,
            quota.count(),
            limit.saturating_sub(count),
            reset,
            retry,
        )
    } else {
        for _ in 0..cost {
            log.push_back(now);
        }
        Decision::from_micros(true, quota.count(), limit - count - cost64, w, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Algorithm;

    const S: u64 = 1_000_000;

    #[test]
    fn gcra_admits_exactly_the_burst_at_once_then_the_rate() {
        let q = Quota::per_second(10); // burst 10, one every 100 ms
        let mut tat = None;
        let now = 50 * S;
        for i in 0..10 {
            let (d, new) = gcra(tat, now, &q, 1);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            tat = new;
        }
        let (d, new) = gcra(tat, now, &q, 1);
        assert!(!d.allowed);
        assert_eq!(new, None, "no write on a refusal");
        assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
        assert_eq!(d.remaining, 0);
        // 99.999 ms later: still refused; 100 ms later: exactly one more.
        assert!(!gcra(tat, now + 99_999, &q, 1).0.allowed);
        let (d, new) = gcra(tat, now + 100_000, &q, 1);
        assert!(d.allowed);
        assert!(!gcra(new, now + 100_000, &q, 1).0.allowed);
    }

    #[test]
    fn gcra_has_no_boundary_burst() {
        // However the requests are placed, no window of one period admits more than
        // burst + count (the burst is spent once, then the rate applies).
        let q = Quota::per_second(5);
        let mut tat = None;
        let mut admitted = Vec::new();
        for step in 0..400u64 {
            let now = 10 * S + step * 10_000; // every 10 ms for 4 s
            let (d, new) = gcra(tat, now, &q, 1);
            if d.allowed {
                admitted.push(now);
                tat = new;
            }
        }
        for &start in &admitted {
            let in_window = admitted
                .iter()
                .filter(|&&t| t >= start && t < start + S)
                .count();
            assert!(in_window <= 10, "{in_window} in one second");
        }
        // Long-run rate: 5 burst + 5/s × 4 s.
        assert!(admitted.len() <= 5 + 20, "{}", admitted.len());

        // And no fewer: the burst at once (the first five steps, 10 ms apart), then exactly
        // one every 200 ms (the first at 200 ms, the last at 3.8 s). A limiter that refuses
        // what the quota allows fails here.
        let ms = |t: &u64| (t - 10 * S) / 1000;
        let expected: Vec<u64> = [0, 10, 20, 30, 40]
            .into_iter()
            .chain((1..=19).map(|k| k * 200))
            .collect();
        assert_eq!(admitted.iter().map(ms).collect::<Vec<_>>(), expected);
        // The bound is reached: burst + count (10) in the second from the first request,
        // its end included (the 10th at exactly 1 s).
        let first = admitted[0];
        let reached = admitted.iter().filter(|&&t| t <= first + S).count();
        assert_eq!(reached, 5 + 5);
    }

    #[test]
    fn gcra_weighted_cost_and_impossible_cost() {
        let q = Quota::per_second(10);
        let (d, tat) = gcra(None, S, &q, 4);
        assert!(d.allowed);
        assert_eq!(d.remaining, 6);
        let (d, _) = gcra(tat, S, &q, 7);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 6);
        assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
        let (d, _) = gcra(None, S, &q, 11);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, None, "11 never fits a burst of 10");
    }

    #[test]
    fn gcra_zero_quota_refuses_everything() {
        let (d, _) = gcra(None, S, &Quota::per_second(0), 1);
        assert!(!d.allowed);
    }

    #[test]
    fn fixed_window_counts_per_aligned_window_and_bursts_at_the_boundary() {
        let q = Quota::per_second(3).with_algorithm(Algorithm::FixedWindow);
        let mut st = None;
        let end_of_window = 7 * S + 900_000;
        for _ in 0..3 {
            let (d, s) = fixed_window(st, end_of_window, &q, 1);
            assert!(d.allowed);
            st = s;
        }
        let (d, _) = fixed_window(st, end_of_window, &q, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
        // The documented weakness: 3 more right after the boundary.
        for _ in 0..3 {
            let (d, s) = fixed_window(st, 8 * S, &q, 1);
            assert!(d.allowed);
            st = s;
        }
        assert!(!fixed_window(st, 8 * S + 1, &q, 1).0.allowed);
    }

    #[test]
    fn sliding_log_is_exact() {
        let q = Quota::per_second(3).with_algorithm(Algorithm::SlidingLog);
        let mut log = VecDeque::new();
        for t in [0, 300_000, 600_000] {
            assert!(sliding_log(&mut log, 5 * S + t, &q, 1).allowed);
        }
        let d = sliding_log(&mut log, 5 * S + 900_000, &q, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
        assert!(!sliding_log(&mut log, 6 * S - 1, &q, 1).allowed);
        assert!(sliding_log(&mut log, 6 * S, &q, 1).allowed);
        assert!(!sliding_log(&mut log, 6 * S, &q, 1).allowed);
        assert_eq!(log.len(), 3, "bounded by the quota");
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let q = Quota::per_second(10).with_algorithm(Algorithm::SlidingWindow);
        let mut st = None;
        for _ in 0..10 {
            let (d, s) = sliding_window(st, 3 * S + 500_000, &q, 1);
            assert!(d.allowed);
            st = s;
        }
        // A quarter into the next window, the previous 10 weigh 7.5: 2 more fit.
        let now = 4 * S + 250_000;
        let (d, s) = sliding_window(st, now, &q, 1);
        assert!(d.allowed);
        let (d, s2) = sliding_window(s, now, &q, 1);
        assert!(d.allowed);
        let (d, _) = sliding_window(s2, now, &q, 1);
        assert!(!d.allowed);
        // 12 weighted units: est = 7.5 + 2 = 9.5, needs ≤ 9 → prev weight must lose 0.5
        // → 50 ms at 10 per second.
        assert_eq!(d.retry_after, Some(Duration::from_millis(50)));
        assert!(sliding_window(s2, now + 50_000, &q, 1).0.allowed);
        assert!(!sliding_window(s2, now + 49_000, &q, 1).0.allowed);
    }

    #[test]
    fn retry_after_is_when_the_request_would_pass() {
        // For every algorithm, waiting exactly retry_after admits the same request.
        for alg in [
            Algorithm::Gcra,
            Algorithm::FixedWindow,
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
        ] {
            let q = Quota::per(Duration::from_millis(700), 4).with_algorithm(alg);
            let mut mem = crate::backend::memory::KeyState::new(alg);
            let mut now = 9 * S + 123_457;
            let mut refusals = 0;
            for _ in 0..60 {
                let d = mem.decide(now, &q, 1);
                if !d.allowed {
                    refusals += 1;
                    let wait = d.retry_after.expect("cost fits").as_micros() as u64;
                    let mut probe = mem.clone();
                    assert!(probe.decide(now + wait, &q, 1).allowed, "{alg:?}");
                    if wait > 1 {
                        let mut probe = mem.clone();
                        assert!(
                            !probe.decide(now + wait - 2, &q, 1).allowed,
                            "{alg:?} early"
                        );
                    }
                }
                now += 37_000;
            }
            assert!(refusals > 0, "{alg:?}");
        }
    }
}
