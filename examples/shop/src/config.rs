//! Command-line flags, each with an environment fallback (`--help` lists them).

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, ValueEnum};

/// The shop's configuration: flags first, then the environment variable named in `--help`,
/// then the default.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "shop",
    version,
    about = "An e-commerce API with turret's layers stacked: rate limit, response cache, \
             conditional requests and stampede protection",
    long_about = None
)]
pub(crate) struct Config {
    /// Address to listen on (port 0 picks a free port; the address is printed on stdout).
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:3000")]
    pub(crate) listen: SocketAddr,

    /// Redis for the whole fleet (rate-limit quota, stampede leases and values, cache
    /// invalidations): `redis://host:6379`, `rediss://…`, `redis+cluster://h1,h2`. Absent:
    /// every layer keeps its state in this process.
    #[arg(long, env = "REDIS_URL")]
    pub(crate) redis_url: Option<String>,

    /// The database: `sqlite://shop.db` (created and seeded on first start) or
    /// `postgres://user:password@host/db`. Processes given the same URL share one database.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://shop.db")]
    pub(crate) database_url: String,

    /// Requests per client IP: `COUNT/PERIOD`, e.g. `100/60s`, `10/s`, `1000/1h`; or a
    /// comma-separated list that all apply, e.g. `5/1s,20/60s` (a request must fit every
    /// one, and a refused request spends none of them).
    #[arg(long, env = "RATE_LIMIT", default_value = "100/60s")]
    pub(crate) rate_limit: turret_ratelimit::Plan,

    /// How requests are counted against `--rate-limit`. `sliding-log` is exact: at most
    /// COUNT requests in any window of PERIOD.
    #[arg(long, env = "RATE_LIMIT_ALGORITHM", value_enum, default_value_t = RateAlgorithm::SlidingLog)]
    pub(crate) rate_limit_algorithm: RateAlgorithm,

    /// Proxies whose forwarding field (`--forwarded-header`) is believed, as CIDRs or
    /// addresses separated by commas (e.g. `10.0.0.0/8,192.168.1.7`). None by default: the
    /// client is the peer address.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub(crate) trusted_proxies: Vec<String>,

    /// The field the trusted proxies append the client's address to: `x-forwarded-for`, or
    /// `forwarded` (RFC 7239 `Forwarded: for=…`). Only that one is read; the other is the
    /// client's to forge. The chain is walked from the right: the first address that is not a
    /// trusted proxy is the client.
    #[arg(long, env = "FORWARDED_HEADER", value_enum, default_value_t = ForwardedHeader::XForwardedFor)]
    pub(crate) forwarded_header: ForwardedHeader,

    /// IPv6 clients share a quota per prefix of this many bits (1–128; 128: one per address).
    /// IPv4 clients have one each; IPv4-mapped IPv6 addresses count as IPv4.
    #[arg(long, env = "IPV6_PREFIX", default_value_t = turret_ratelimit::DEFAULT_IPV6_PREFIX,
          value_parser = clap::value_parser!(u8).range(1..=128))]
    pub(crate) ipv6_prefix: u8,

    /// How long product responses stay in the response cache (`300`, `300s`, `5m`, `1h`).
    /// Categories stay 1 hour.
    #[arg(long, env = "CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub(crate) cache_ttl: Duration,

    /// Turn the response cache off.
    #[arg(long, env = "NO_CACHE")]
    pub(crate) no_cache: bool,

    /// Turn the rate limiter off.
    #[arg(long, env = "NO_RATE_LIMIT")]
    pub(crate) no_rate_limit: bool,

    /// Turn conditional requests off (no generated ETags, no 304; the handlers still refuse
    /// a stale `If-Match` with 412).
    #[arg(long, env = "NO_CONDITIONAL")]
    pub(crate) no_conditional: bool,

    /// Turn the data cache off: product rows, top-selling and the dashboard (stampede
    /// protection, two tiers with Redis) — every request queries and aggregates.
    #[arg(long, env = "NO_STAMPEDE")]
    pub(crate) no_stampede: bool,

    /// How often the product views counted by `POST /products/{id}/views` are flushed to
    /// the database, summed per product, one transaction per batch (`1s`, `500ms`).
    #[arg(long, env = "WRITE_BEHIND_FLUSH", default_value = "1s", value_parser = parse_duration)]
    pub(crate) write_behind_flush: Duration,

    /// With `--redis-url`: how long the views a dead shop left pending wait before another
    /// shop takes them over (at least twice `--write-behind-flush`).
    #[arg(long, env = "WRITE_BEHIND_CLAIM_IDLE", default_value = "30s", value_parser = parse_duration)]
    pub(crate) write_behind_claim_idle: Duration,

    /// With `--redis-url`: this shop's name in the views queue's consumer group. Give each
    /// shop of a fleet its own, stable across restarts (never two running shops with one
    /// name): a restarted shop then flushes the views it left pending at once. Default: a
    /// new random name per start.
    #[arg(long, env = "WRITE_BEHIND_CONSUMER")]
    pub(crate) write_behind_consumer: Option<String>,

    /// Mounts the response cache's purge service at `/admin/purge` for operators holding
    /// this token (`Authorization: Bearer TOKEN`, at least 16 visible characters): `POST
    /// /admin/purge?url=/products/7`, or with `Surrogate-Key: product:7` for tags;
    /// `Soft-Purge: 1` marks stale instead. Absent: no such route (404).
    #[arg(long, env = "PURGE_TOKEN", hide_env_values = true)]
    pub(crate) purge_token: Option<String>,
}

/// The counting algorithms of `turret_ratelimit`, as flag values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RateAlgorithm {
    /// Smooth rate with a burst of COUNT (one request per PERIOD/COUNT after the burst).
    Gcra,
    /// COUNT per fixed window (up to twice COUNT around a window boundary).
    FixedWindow,
    /// Weighted previous window: constant memory, approximate.
    SlidingWindow,
    /// Exact: at most COUNT in any PERIOD.
    SlidingLog,
}

impl From<RateAlgorithm> for turret_ratelimit::Algorithm {
    fn from(a: RateAlgorithm) -> Self {
        match a {
            RateAlgorithm::Gcra => Self::Gcra,
            RateAlgorithm::FixedWindow => Self::FixedWindow,
            RateAlgorithm::SlidingWindow => Self::SlidingWindow,
            RateAlgorithm::SlidingLog => Self::SlidingLog,
        }
    }
}

/// The forwarding fields `ClientIp` can read, as flag values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1` (nginx, HAProxy, most load balancers).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl From<ForwardedHeader> for turret_ratelimit::ForwardingHeader {
    fn from(h: ForwardedHeader) -> Self {
        match h {
            ForwardedHeader::XForwardedFor => Self::XForwardedFor,
            ForwardedHeader::Forwarded => Self::Forwarded,
        }
    }
}

/// Parses `300`, `300s`, `500ms`, `5m`, `5min`, `1h` (a bare number is seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration like 300s, 5m or 1h"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" | "min" | "mins" => n.saturating_mul(60),
        "h" | "hour" | "hours" => n.saturating_mul(3600),
        other => return Err(format!("`{other}`: unknown unit (use ms, s, m or h)")),
    };
    if secs == 0 {
        return Err(format!("`{s}`: must be more than zero"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_specs_parse() {
        let spec: turret_ratelimit::Quota = "100/60s".parse().unwrap();
        assert_eq!(
            (spec.count(), spec.period()),
            (100, Duration::from_secs(60))
        );
        let spec: turret_ratelimit::Quota = "10/s".parse().unwrap();
        assert_eq!((spec.count(), spec.period()), (10, Duration::from_secs(1)));
        let spec: turret_ratelimit::Quota = "1000/1h".parse().unwrap();
        assert_eq!(spec.period(), Duration::from_secs(3600));
        let spec: turret_ratelimit::Quota = "5/min".parse().unwrap();
        assert_eq!(spec.period(), Duration::from_secs(60));
        assert!("0/60s".parse::<turret_ratelimit::Quota>().is_err());
        assert!("100".parse::<turret_ratelimit::Quota>().is_err());
        assert!("x/60s".parse::<turret_ratelimit::Quota>().is_err());
        assert!("100/60y".parse::<turret_ratelimit::Quota>().is_err());
        // A list: every quota applies.
        let c = Config::try_parse_from(["shop", "--rate-limit", "5/1s,20/60s"]).unwrap();
        let limits = c.rate_limit.limits();
        assert_eq!(limits.len(), 2);
        assert_eq!(
            (limits[0].name(), limits[0].quota().count()),
            ("default-1s", 5)
        );
        assert_eq!(
            (limits[1].name(), limits[1].quota().count()),
            ("default-60s", 20)
        );
        assert!(Config::try_parse_from(["shop", "--rate-limit", "5/1s,"]).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn flags_have_the_documented_defaults() {
        let c = Config::try_parse_from(["shop"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(c.rate_limit.limits().len(), 1);
        assert_eq!(c.rate_limit.limits()[0].quota().count(), 100);
        assert_eq!(c.cache_ttl, Duration::from_secs(300));
        assert_eq!(c.write_behind_flush, Duration::from_secs(1));
        assert_eq!(c.write_behind_claim_idle, Duration::from_secs(30));
        assert_eq!(c.write_behind_consumer, None);
        assert!(c.trusted_proxies.is_empty());
        let c =
            Config::try_parse_from(["shop", "--trusted-proxies", "10.0.0.0/8,127.0.0.1"]).unwrap();
        assert_eq!(c.trusted_proxies, ["10.0.0.0/8", "127.0.0.1"]);
        assert_eq!(c.forwarded_header, ForwardedHeader::XForwardedFor);
        assert_eq!(c.ipv6_prefix, 64);
        let c = Config::try_parse_from([
            "shop",
            "--forwarded-header",
            "forwarded",
            "--ipv6-prefix",
            "48",
        ])
        .unwrap();
        assert_eq!(c.forwarded_header, ForwardedHeader::Forwarded);
        assert_eq!(c.ipv6_prefix, 48);
    }

    #[test]
    fn bad_forwarding_flags_are_refused_with_what_is_allowed() {
        for bad in ["0", "129", "300", "x"] {
            let err = Config::try_parse_from(["shop", "--ipv6-prefix", bad]).unwrap_err();
            assert!(err.to_string().contains("--ipv6-prefix"), "{err}");
        }
        let err = Config::try_parse_from(["shop", "--ipv6-prefix", "129"]).unwrap_err();
        assert!(err.to_string().contains("1..=128"), "{err}");
        let err = Config::try_parse_from(["shop", "--forwarded-header", "x-real-ip"]).unwrap_err();
        assert!(err.to_string().contains("x-forwarded-for"), "{err}");
        assert!(err.to_string().contains("forwarded"), "{err}");
    }
}
