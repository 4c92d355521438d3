//! Flags of the two binaries, each with an environment fallback (`--help` lists them).

use std::{net::SocketAddr, time::Duration};

use clap::Parser;

/// The server's configuration: flags first, then the environment variable named in
/// `--help`, then the default.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "server",
    version,
    about = "A gRPC product catalogue with turret's rate limiter (per x-api-key) and stampede \
             protection on its slow ListProducts",
    long_about = None
)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free port; the address is printed on stdout).
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Redis for a fleet of servers (one quota per API key, one ListProducts computation):
    /// `redis://host:6379`, `rediss://…`, `redis+cluster://h1,h2`. Absent: memory.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Calls per API key on the free plan (every key not in `--pro-keys`): `COUNT/PERIOD`,
    /// e.g. `10/60s`, `5/s`, `1000/1h`, or a comma-separated list that all apply
    /// (`5/s,100/1h`). `Stats` is exempt.
    #[arg(long, env = "RATE_LIMIT", default_value = "10/60s", value_parser = free_plan)]
    pub rate_limit: turret_ratelimit::Plan,

    /// Calls per API key on the pro plan, in the same form.
    #[arg(long, env = "PRO_RATE_LIMIT", default_value = "100/60s", value_parser = pro_plan)]
    pub pro_rate_limit: turret_ratelimit::Plan,

    /// API keys on the pro plan, comma-separated (`key-1,key-2`); every other key is on the
    /// free plan.
    #[arg(long, env = "PRO_KEYS", value_delimiter = ',')]
    pub pro_keys: Vec<String>,

    /// How long ListProducts' read takes (`500ms`, `2s`): the expensive query being saved.
    #[arg(long, env = "SLOW_READ", default_value = "500ms", value_parser = parse_duration)]
    pub slow_read: Duration,

    /// How long a computed list is reused (`5s`, `1m`).
    #[arg(long, env = "LIST_TTL", default_value = "5s", value_parser = parse_duration)]
    pub list_ttl: Duration,
}

/// The client's configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "client",
    version,
    about = "Calls the catalogue until the rate limiter answers RESOURCE_EXHAUSTED, and shows it",
    long_about = None
)]
pub struct ClientConfig {
    /// The server's address.
    #[arg(long, env = "GRPC_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,

    /// The API key sent as `x-api-key` metadata (the rate limiter's key).
    #[arg(long, env = "API_KEY", default_value = "demo")]
    pub api_key: String,

    /// Give up after this many calls without a refusal.
    #[arg(long, default_value_t = 1000)]
    pub max_calls: u32,
}

/// `--rate-limit`: the plan named `free`.
fn free_plan(s: &str) -> Result<turret_ratelimit::Plan, String> {
    turret_ratelimit::Plan::parse("free", s).map_err(|e| e.to_string())
}

/// `--pro-rate-limit`: the plan named `pro`.
fn pro_plan(s: &str) -> Result<turret_ratelimit::Plan, String> {
    turret_ratelimit::Plan::parse("pro", s).map_err(|e| e.to_string())
}

/// Parses `300`, `300s`, `500ms`, `5m`, `5min`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration like 500ms, 5s or 1m"))?;
    let duration = match unit.trim() {
        "" | "s" | "sec" | "secs" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" | "mins" => Duration::from_secs(n.saturating_mul(60)),
        "h" | "hour" | "hours" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("`{other}`: unknown unit (use ms, s, m or h)")),
    };
    if duration.is_zero() {
        return Err(format!("`{s}`: must be more than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_specs_parse() {
        let spec: turret_ratelimit::Quota = "10/60s".parse().unwrap();
        assert_eq!((spec.count(), spec.period()), (10, Duration::from_secs(60)));
        let spec: turret_ratelimit::Quota = "5/s".parse().unwrap();
        assert_eq!((spec.count(), spec.period()), (5, Duration::from_secs(1)));
        assert!("0/60s".parse::<turret_ratelimit::Quota>().is_err());
        assert!("10".parse::<turret_ratelimit::Quota>().is_err());
        assert!("10/60y".parse::<turret_ratelimit::Quota>().is_err());
        let c = ServerConfig::try_parse_from([
            "server",
            "--rate-limit",
            "5/s,100/1h",
            "--pro-keys",
            "gold,silver",
        ])
        .unwrap();
        let names: Vec<_> = c.rate_limit.limits().iter().map(|l| l.name()).collect();
        assert_eq!(names, ["free-1s", "free-1h"]);
        assert_eq!(c.pro_keys, ["gold", "silver"]);
        assert!(ServerConfig::try_parse_from(["server", "--pro-rate-limit", "0/s"]).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0ms").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn flags_have_the_documented_defaults() {
        let c = ServerConfig::try_parse_from(["server"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.rate_limit.name(), "free");
        assert_eq!(c.rate_limit.limits()[0].quota().count(), 10);
        assert_eq!(c.pro_rate_limit.limits()[0].quota().count(), 100);
        assert!(c.pro_keys.is_empty());
        assert_eq!(c.slow_read, Duration::from_millis(500));
        let c = ClientConfig::try_parse_from(["client"]).unwrap();
        assert_eq!(c.api_key, "demo");
    }
}
