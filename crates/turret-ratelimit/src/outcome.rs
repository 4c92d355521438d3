//! [`Outcome`]: one request's decision over every limit of its [`Plan`](crate::Plan).

use std::time::Duration;

use smallvec::SmallVec;

use crate::Decision;

/// The decision for one request over every limit of its plan, all-or-nothing: admitted only
/// if every limit admits it; refused, it spent nothing on any of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    decisions: SmallVec<[Decision; 2]>,
    delay: Duration,
}

impl Outcome {
    /// An outcome from one decision per limit, in the plan's order, and the delay an
    /// admission waits (zero: at once). It is admitted when every decision admits.
    pub fn new(decisions: impl IntoIterator<Item = Decision>, delay: Duration) -> Self {
        Self {
            decisions: decisions.into_iter().collect(),
            delay,
        }
    }

    /// An outcome of one limit.
    pub fn single(decision: Decision) -> Self {
        Self {
            decisions: smallvec::smallvec![decision],
            delay: Duration::ZERO,
        }
    }

    /// A refusal by limit `binding` of `limits`, known without asking (the offender cache):
    /// the other limits are reported as admitting with the same decision's fields.
    pub(crate) fn refused_by(limits: usize, binding: usize, decision: Decision) -> Self {
        let admitting = Decision {
            allowed: true,
            retry_after: None,
            ..decision
        };
        Self {
            decisions: (0..limits.max(binding + 1))
                .map(|i| if i == binding { decision } else { admitting })
                .collect(),
            delay: Duration::ZERO,
        }
    }

    /// Whether every limit admits the request.
    pub fn allowed(&self) -> bool {
        !self.decisions.is_empty() && self.decisions.iter().all(|d| d.allowed)
    }

    /// How long an admitted request waits for its turn (delay mode); zero when it goes at
    /// once.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// One decision per limit, in the plan's order. On a refusal, a limit that would have
    /// admitted reports what is left without this request (nothing was spent).
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    /// When refused: the time after which every limit would admit the same request (the
    /// latest of the refusing limits' times); `None` when one never can.
    pub fn retry_after(&self) -> Option<Duration> {
        let mut latest = Duration::ZERO;
        for d in self.decisions.iter().filter(|d| !d.allowed) {
            latest = latest.max(d.retry_after?);
        }
        Some(latest)
    }

    /// The index of the limit a client needs to hear about: when refused, the refusing one
    /// it waits longest for (one that never admits first); when admitted, the one closest to
    /// exhaustion (fewest remaining; of equals, the longest until whole again).
    pub fn binding(&self) -> usize {
        let refused = self
            .decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.allowed)
            .max_by_key(|(_, d)| d.retry_after.map_or((1, Duration::ZERO), |r| (0, r)));
        if let Some((i, _)) = refused {
            return i;
        }
        self.decisions
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| {
                a.remaining
                    .cmp(&b.remaining)
                    .then(b.reset_after.cmp(&a.reset_after))
            })
            .map_or(0, |(i, _)| i)
    }

    /// The decision of [`binding`](Self::binding).
    pub fn binding_decision(&self) -> &Decision {
        &self.decisions[self.binding()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(allowed: bool, remaining: u32, reset_ms: u64, retry_ms: Option<u64>) -> Decision {
        Decision {
            allowed,
            limit: 10,
            remaining,
            reset_after: Duration::from_millis(reset_ms),
            retry_after: retry_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn retry_after_is_when_all_would_admit() {
        let o = Outcome::new(
            [
                d(false, 0, 900, Some(900)),
                d(true, 5, 100, None),
                d(false, 0, 5000, Some(4000)),
            ],
            Duration::ZERO,
        );
        assert!(!o.allowed());
        assert_eq!(o.retry_after(), Some(Duration::from_millis(4000)));
        assert_eq!(o.binding(), 2);
        let never = Outcome::new(
            [d(false, 0, 900, Some(900)), d(false, 0, 1, None)],
            Duration::ZERO,
        );
        assert_eq!(never.retry_after(), None);
        assert_eq!(never.binding(), 1);
    }

    #[test]
    fn an_admission_reports_the_limit_closest_to_exhaustion() {
        let o = Outcome::new(
            [
                d(true, 4, 1000, None),
                d(true, 2, 60_000, None),
                d(true, 2, 5_000, None),
            ],
            Duration::ZERO,
        );
        assert!(o.allowed());
        assert_eq!(o.binding(), 1);
        assert!(!Outcome::new([], Duration::ZERO).allowed());
    }
}
