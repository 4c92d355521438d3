//! XFetch: probabilistic early recomputation (Vattani, Chierichetti, Lowenstein, "Optimal
//! Probabilistic Cache Stampede Prevention", VLDB 2015).

use std::time::Duration;

/// The default β: optimal per the paper. β > 1 refreshes earlier, β < 1 later, 0 never early.
pub const DEFAULT_BETA: f64 = 1.0;

/// Whether a read at `now` should recompute a value that expires at `expiry` and took
/// `delta` to compute: `now − delta·β·ln(rand) ≥ expiry`, with `rand` uniform in (0, 1].
///
/// `now` and `expiry` are measured from the same origin (the cache uses the Unix epoch).
/// The probability of an early refresh is `exp(−(expiry − now) / (delta·β))`: it grows as
/// expiry nears, and values that are slow to compute refresh earlier. Out-of-range input
/// never panics: `rand` is clamped into (0, 1], a negative or NaN β counts as 0, and a
/// value at or past its expiry always refreshes.
///
/// ```
/// use std::time::Duration;
/// use turret_stampede::should_refresh_early;
///
/// let s = Duration::from_secs;
/// // 10 s before expiry, a 1 s computation: refresh only on a tiny draw (p = e^-10).
/// assert!(!should_refresh_early(s(100), s(1), 1.0, s(110), 0.5));
/// assert!(should_refresh_early(s(100), s(1), 1.0, s(110), 1e-5));
/// // Past expiry: always.
/// assert!(should_refresh_early(s(110), s(1), 1.0, s(110), 1.0));
/// ```
pub fn should_refresh_early(
    now: Duration,
    delta: Duration,
    beta: f64,
    expiry: Duration,
    rand: f64,
) -> bool {
    if now >= expiry {
        return true;
    }
    let beta = if beta.is_nan() { 0.0 } else { beta.max(0.0) };
    let rand = if rand.is_nan() {
        1.0
    } else {
        rand.clamp(f64::MIN_POSITIVE, 1.0)
    };
    let gap = (expiry - now).as_secs_f64();
    // −ln(rand) ≥ 0, so the left side only grows.
    let weight = if rand == f64::MIN_POSITIVE {
        MAX_WEIGHT
    } else {
        -rand.ln()
    };
    delta.as_secs_f64() * beta * weight >= gap
}

/// `−ln` of the smallest `rand` [`should_refresh_early`] uses (`f64::MIN_POSITIVE`, what it
/// clamps to): no draw can weigh more.
const MAX_WEIGHT: f64 = 708.3964185322641;

/// Whether some draw could make [`should_refresh_early`] true (it can be false for every
/// draw: no computation time, β = 0, or expiry too far away for `−ln(rand)` to reach).
fn could_refresh_early(now: Duration, delta: Duration, beta: f64, expiry: Duration) -> bool {
    should_refresh_early(now, delta, beta, expiry, f64::MIN_POSITIVE)
}

/// XFetch's decision with a fresh uniform draw — made only when some draw could refresh,
/// so most hits of a value far from its expiry pay no random number (the decision, and its
/// probability, are the same).
pub(crate) fn draw(now: Duration, delta: Duration, beta: f64, expiry: Duration) -> bool {
    could_refresh_early(now, delta, beta, expiry)
        // `random::<f64>()` is in [0, 1); 1 − it is in (0, 1].
        && should_refresh_early(now, delta, beta, expiry, 1.0 - rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn probability(gap: f64, delta: f64, beta: f64, rng: &mut StdRng, n: u32) -> f64 {
        let now = Duration::from_secs(1_000_000);
        let expiry = now + Duration::from_secs_f64(gap);
        let delta = Duration::from_secs_f64(delta);
        let hits = (0..n)
            .filter(|_| {
                // `random::<f64>()` is in [0, 1); 1 − it is in (0, 1].
                should_refresh_early(now, delta, beta, expiry, 1.0 - rng.random::<f64>())
            })
            .count();
        hits as f64 / f64::from(n)
    }

    #[test]
    fn the_refresh_probability_follows_the_formula() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let n = 200_000;
        for (gap, delta, beta) in [
            (1.0f64, 1.0f64, 1.0f64),
            (2.0, 1.0, 1.0),
            (0.5, 1.0, 1.0),
            (3.0, 2.0, 1.0),
            (1.0, 1.0, 2.0),
            (1.0, 1.0, 0.5),
            (10.0, 1.0, 1.0),
        ] {
            let expected = (-gap / (delta * beta)).exp();
            let observed = probability(gap, delta, beta, &mut rng, n);
            // 5 standard deviations of a binomial proportion, plus a little slack.
            let sd = (expected * (1.0 - expected) / f64::from(n)).sqrt();
            assert!(
                (observed - expected).abs() <= 5.0 * sd + 1e-4,
                "gap {gap} delta {delta} beta {beta}: observed {observed}, expected {expected}"
            );
        }
    }

    #[test]
    fn a_larger_beta_refreshes_earlier() {
        let mut rng = StdRng::seed_from_u64(7);
        let low = probability(2.0, 1.0, 0.5, &mut rng, 50_000);
        let one = probability(2.0, 1.0, 1.0, &mut rng, 50_000);
        let high = probability(2.0, 1.0, 3.0, &mut rng, 50_000);
        assert!(low < one && one < high, "{low} {one} {high}");
    }

    #[test]
    fn the_largest_weight_is_that_of_the_smallest_draw() {
        assert_eq!(MAX_WEIGHT, -f64::MIN_POSITIVE.ln());
        for rand in [
            f64::MIN_POSITIVE * 2.0,
            1e-300,
            1e-20,
            2f64.powi(-53),
            0.5,
            1.0,
        ] {
            assert!(-rand.ln() <= MAX_WEIGHT, "{rand}");
        }
    }

    #[test]
    fn no_draw_refreshes_when_none_could() {
        let mut rng = StdRng::seed_from_u64(11);
        let s = Duration::from_millis;
        let (mut never, mut maybe) = (0, 0);
        for _ in 0..20_000 {
            let now = s(rng.random_range(0..10_000));
            let expiry = s(rng.random_range(0..10_000));
            let delta = s(rng.random_range(0..20));
            let beta = [0.0, 0.5, 1.0, 3.0][rng.random_range(0..4)];
            if could_refresh_early(now, delta, beta, expiry) {
                maybe += 1;
                continue;
            }
            never += 1;
            for rand in [f64::MIN_POSITIVE, 0.0, 1e-300, 1e-9, 0.5, 1.0, f64::NAN] {
                assert!(
                    !should_refresh_early(now, delta, beta, expiry, rand),
                    "{now:?} {delta:?} {beta} {expiry:?} {rand}"
                );
            }
            assert!(!draw(now, delta, beta, expiry));
        }
        // Both kinds were exercised.
        assert!(never > 1000 && maybe > 1000, "{never} {maybe}");
        // Close to expiry with a slow computation, the draw still decides.
        assert!(could_refresh_early(s(100), s(1000), 1.0, s(200)));
        assert!(!could_refresh_early(s(100), Duration::ZERO, 1.0, s(200)));
    }

    #[test]
    fn edges_never_panic_and_behave() {
        let s = Duration::from_secs;
        assert!(
            !should_refresh_early(s(1), s(0), 1.0, s(2), 1e-300),
            "Δ = 0: never early"
        );
        assert!(
            !should_refresh_early(s(1), s(5), 0.0, s(2), 1e-9),
            "β = 0: never early"
        );
        assert!(!should_refresh_early(s(1), s(5), -3.0, s(2), 1e-9));
        assert!(!should_refresh_early(s(1), s(5), f64::NAN, s(2), 1e-9));
        assert!(
            should_refresh_early(s(1), s(5), 1.0, s(2), 0.0),
            "rand 0 clamps to tiny"
        );
        assert!(!should_refresh_early(s(1), s(5), 1.0, s(2), f64::NAN));
        assert!(
            !should_refresh_early(s(1), s(5), 1.0, s(2), 7.0),
            "rand > 1 clamps to 1"
        );
        assert!(should_refresh_early(s(3), s(0), 1.0, s(2), 1.0), "expired");
        assert!(should_refresh_early(
            s(0),
            Duration::MAX,
            f64::MAX,
            s(u64::MAX),
            0.5
        ));
    }
}
