//! Quotas that can't be misread.

use std::{fmt, str::FromStr, time::Duration};

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
///
/// A quota also parses from `COUNT/PERIOD` (a flag, an environment variable), the same as
/// [`Quota::per`] with that count and period:
///
/// ```
/// use std::time::Duration;
/// use turret_ratelimit::Quota;
///
/// let q: Quota = "100/60s".parse().unwrap();
/// assert_eq!(q, Quota::per_minute(100));
/// assert_eq!("10/s".parse::<Quota>().unwrap(), Quota::per_second(10));
/// assert_eq!("20/1m".parse::<Quota>().unwrap().period(), Duration::from_secs(60));
/// assert_eq!("5/500ms".parse::<Quota>().unwrap().period(), Duration::from_millis(500));
///
/// let err = "100/60y".parse::<Quota>().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid quota \"100/60y\": unknown unit `y`; expected ms, s, m or h"
/// );
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
    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Self {
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
    pub fn algorithm(&self) -> Algorithm {
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

/// `COUNT/PERIOD`: a whole COUNT of at least 1, then a PERIOD made of a whole number and a
/// unit — `ms`; `s`, `sec`, `secs` (also a number alone); `m`, `min`, `mins`; `h`, `hour`,
/// `hours` — or a unit alone, meaning one of it (`10/s`, `5/min`). Spaces around COUNT,
/// PERIOD and the unit are allowed. Examples: `100/60s`, `10/s`, `5/1s`, `20/1m`,
/// `1000/1h`, `50/500ms`. The quota is [`Quota::per`] with them (GCRA, a burst of COUNT).
impl FromStr for Quota {
    type Err = ParseQuotaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = |kind| ParseQuotaError {
            input: clip(s),
            kind,
        };
        let (count, period) = s
            .split_once('/')
            .ok_or_else(|| error(ParseErrorKind::NoSlash))?;
        let count = count.trim();
        let count: u32 = count
            .parse()
            .map_err(|_| error(ParseErrorKind::Count(clip(count))))?;
        if count == 0 {
            return Err(error(ParseErrorKind::ZeroCount));
        }
        let period = parse_period(period.trim()).map_err(error)?;
        Ok(Self::per(period, count))
    }
}

/// A PERIOD: a whole number (absent: 1) and a unit (absent: seconds); never zero.
fn parse_period(s: &str) -> Result<Duration, ParseErrorKind> {
    if s.is_empty() {
        return Err(ParseErrorKind::NoPeriod);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    // `10/s`, `10/min`: a unit alone means one of it.
    let n: u64 = if number.is_empty() {
        1
    } else {
        number
            .parse()
            .map_err(|_| ParseErrorKind::PeriodTooLong(clip(number)))?
    };
    let period = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" | "sec" | "secs" => Duration::from_secs(n),
        "m" | "min" | "mins" => Duration::from_secs(n.saturating_mul(60)),
        "h" | "hour" | "hours" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(ParseErrorKind::Unit(clip(other))),
    };
    if period.is_zero() {
        return Err(ParseErrorKind::ZeroPeriod);
    }
    Ok(period)
}

/// At most 64 characters of untrusted input, for an error message.
fn clip(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// Why a string is not a `COUNT/PERIOD` [`Quota`]; its message names the part that is
/// wrong and what was expected instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseQuotaError {
    input: String,
    kind: ParseErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ParseErrorKind {
    NoSlash,
    Count(String),
    ZeroCount,
    NoPeriod,
    PeriodTooLong(String),
    Unit(String),
    ZeroPeriod,
}

impl fmt::Display for ParseQuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid quota {:?}: ", self.input)?;
        match &self.kind {
            ParseErrorKind::NoSlash => {
                f.write_str("no `/`; expected COUNT/PERIOD, e.g. 100/60s, 10/s or 1000/1h")
            }
            ParseErrorKind::Count(count) => write!(
                f,
                "COUNT `{count}` is not a whole number; expected 1 to {}, e.g. 100/60s",
                u32::MAX
            ),
            ParseErrorKind::ZeroCount => {
                f.write_str("COUNT is 0, which would refuse every request; expected at least 1")
            }
            ParseErrorKind::NoPeriod => f.write_str(
                "PERIOD is empty; expected a number and a unit after the `/`, e.g. 60s, 500ms, 5m, 1h, or a unit alone (10/s)",
            ),
            ParseErrorKind::PeriodTooLong(number) => write!(
                f,
                "PERIOD's number `{number}` is too large; expected at most {}",
                u64::MAX
            ),
            ParseErrorKind::Unit(unit) => {
                write!(f, "unknown unit `{unit}`; expected ms, s, m or h")
            }
            ParseErrorKind::ZeroPeriod => {
                f.write_str("PERIOD is zero; expected more than zero, e.g. 60s")
            }
        }
    }
}

impl std::error::Error for ParseQuotaError {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(s: &str) -> Result<Quota, ParseQuotaError> {
        s.parse()
    }

    /// What any input gives: a quota of at least 1 per at least 1 ms, or a message.
    fn check(s: &str) -> Result<(), TestCaseError> {
        match parse(s) {
            Ok(q) => {
                prop_assert!(q.count() >= 1);
                prop_assert!(q.period() >= Duration::from_millis(1));
            }
            Err(e) => prop_assert!(e.to_string().starts_with("invalid quota \"")),
        }
        Ok(())
    }

    #[test]
    fn the_examples_forms_parse() {
        let secs = Duration::from_secs;
        for (s, count, period) in [
            ("100/60s", 100, secs(60)),
            ("10/s", 10, secs(1)),
            ("5/1s", 5, secs(1)),
            ("20/1m", 20, secs(60)),
            ("1000/1h", 1000, secs(3600)),
            ("5/min", 5, secs(60)),
            ("10/60", 10, secs(60)),
            ("7/2sec", 7, secs(2)),
            ("7/2secs", 7, secs(2)),
            ("3/2mins", 3, secs(120)),
            ("3/hour", 3, secs(3600)),
            ("3/2hours", 3, secs(7200)),
            ("50/500ms", 50, Duration::from_millis(500)),
            (" 100 / 60 s ", 100, secs(60)),
            ("+5/s", 5, secs(1)),
        ] {
            let q = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(q, Quota::per(period, count), "{s}");
            assert_eq!(
                (q.count(), q.period(), q.burst_size()),
                (count, period, count)
            );
            assert_eq!(q.algorithm(), Algorithm::Gcra);
        }
        // Huge periods saturate rather than overflow.
        let q = parse("1/18446744073709551615h").unwrap();
        assert_eq!(q.period(), Duration::from_secs(u64::MAX));
    }

    #[test]
    fn what_is_not_a_quota_says_what_is_wrong_and_what_is_expected() {
        for (s, message) in [
            (
                "100",
                r#"invalid quota "100": no `/`; expected COUNT/PERIOD, e.g. 100/60s, 10/s or 1000/1h"#,
            ),
            (
                "x/60s",
                r#"invalid quota "x/60s": COUNT `x` is not a whole number; expected 1 to 4294967295, e.g. 100/60s"#,
            ),
            (
                "4294967296/s",
                r#"invalid quota "4294967296/s": COUNT `4294967296` is not a whole number; expected 1 to 4294967295, e.g. 100/60s"#,
            ),
            (
                "-1/s",
                r#"invalid quota "-1/s": COUNT `-1` is not a whole number; expected 1 to 4294967295, e.g. 100/60s"#,
            ),
            (
                "0/60s",
                r#"invalid quota "0/60s": COUNT is 0, which would refuse every request; expected at least 1"#,
            ),
            (
                "10/",
                r#"invalid quota "10/": PERIOD is empty; expected a number and a unit after the `/`, e.g. 60s, 500ms, 5m, 1h, or a unit alone (10/s)"#,
            ),
            (
                "10/99999999999999999999s",
                r#"invalid quota "10/99999999999999999999s": PERIOD's number `99999999999999999999` is too large; expected at most 18446744073709551615"#,
            ),
            (
                "100/60y",
                r#"invalid quota "100/60y": unknown unit `y`; expected ms, s, m or h"#,
            ),
            (
                "10/-1s",
                r#"invalid quota "10/-1s": unknown unit `-1s`; expected ms, s, m or h"#,
            ),
            (
                "10/0ms",
                r#"invalid quota "10/0ms": PERIOD is zero; expected more than zero, e.g. 60s"#,
            ),
            (
                "10/0",
                r#"invalid quota "10/0": PERIOD is zero; expected more than zero, e.g. 60s"#,
            ),
        ] {
            assert_eq!(parse(s).unwrap_err().to_string(), message, "{s}");
        }
        for s in [
            "", "/", "/s", "10/60s/2", "10/6 0s", "10/S", "1e3/s", "10/1.5s",
        ] {
            assert!(parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn a_long_input_is_clipped_in_the_message() {
        let long = format!("{}/s", "9".repeat(10_000));
        let message = parse(&long).unwrap_err().to_string();
        assert!(message.len() < 400, "{}", message.len());
        assert!(message.contains('…'));
        let wide = format!("1/{}", "é".repeat(100));
        assert!(parse(&wide).unwrap_err().to_string().contains('…'));
    }

    proptest! {
        #[test]
        fn any_string_is_a_quota_or_an_error(s in "\\PC{0,40}") {
            check(&s)?;
        }

        #[test]
        fn strings_of_quota_characters_are_a_quota_or_an_error(
            s in "[0-9 /+-]{0,12}(ms|s|sec|m|min|h|hours|y|)[0-9/]{0,3}",
        ) {
            check(&s)?;
        }

        #[test]
        fn count_and_period_parse_back(
            count in 1u32..,
            n in 1u64..1_000_000,
            unit in proptest::sample::select(vec![
                ("ms", 1u64), ("s", 1_000), ("sec", 1_000), ("secs", 1_000), ("", 1_000),
                ("m", 60_000), ("min", 60_000), ("mins", 60_000),
                ("h", 3_600_000), ("hour", 3_600_000), ("hours", 3_600_000),
            ]),
        ) {
            let q = parse(&format!("{count}/{n}{}", unit.0)).unwrap();
            prop_assert_eq!(q, Quota::per(Duration::from_millis(n * unit.1), count));
        }
    }
}
