//! Command-line flags, each with an environment fallback (`--help` lists them).

use std::{net::SocketAddr, str::FromStr, time::Duration};

use clap::Parser;
use http::{HeaderValue, Uri, uri::Authority};

/// The proxy's configuration: flags first, then the environment variable named in
/// `--help`, then the default.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "proxy",
    version,
    about = "A shared HTTP cache (RFC 9111) in front of any origin, built from turret-cache",
    long_about = None
)]
pub(crate) struct Config {
    /// Address to listen on (port 0 picks a free port; the address is printed on stdout).
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,

    /// The origin every request goes to: `http://host:port` (no path; no TLS).
    #[arg(long, env = "ORIGIN")]
    pub(crate) origin: Origin,

    /// Redis shared by a fleet of proxies: a memory L1 in front of Redis, invalidations
    /// sent to every proxy, one origin fetch per key for the fleet. `redis://host:6379`,
    /// `rediss://…`, `redis+cluster://h1,h2`. Absent: the cache is in this process only.
    #[arg(long, env = "REDIS_URL")]
    pub(crate) redis_url: Option<String>,

    /// Largest response body stored (`1MiB`, `512KiB`, `1048576`); bigger responses stream
    /// through unstored. A chunked response (size not known in advance) streams to the
    /// client as the origin sends it and is stored if it ends within this size.
    #[arg(long, env = "MAX_ENTRY_SIZE", default_value = "1MiB")]
    pub(crate) max_entry_size: ByteSize,

    /// Memory the cache may use in this process (the L1 with `--redis-url`).
    #[arg(long, env = "CACHE_SIZE", default_value = "64MiB")]
    pub(crate) cache_size: ByteSize,

    /// How long the origin may take to send a response head (`30s`, `500ms`, `2m`) before
    /// the client gets a 504; the body then streams for as long as it takes.
    #[arg(long, env = "ORIGIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub(crate) origin_timeout: Duration,

    /// Enables `PURGE` for operators holding this token (`Authorization: Bearer TOKEN`; at
    /// least 16 visible characters): `PURGE /path?query` removes that URL's stored
    /// responses, `PURGE` with `Surrogate-Key: a b` every response tagged `a` or `b`,
    /// `Soft-Purge: 1` marks them stale instead; fleet-wide with `--redis-url`. Absent:
    /// `PURGE` is refused with 405. A `PURGE` is never forwarded to the origin.
    #[arg(long, env = "PURGE_TOKEN", hide_env_values = true)]
    pub(crate) purge_token: Option<String>,
}

/// The origin: scheme `http`, an authority, nothing else.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    /// `host:port` (or `host`), used for the upstream request's target and `Host`.
    pub(crate) authority: Authority,
    /// The same as a `Host` field value.
    pub(crate) host: HeaderValue,
}

impl FromStr for Origin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s
            .parse()
            .map_err(|e| format!("`{s}`: not a URL ({e}); expected http://host:port"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "`{s}`: https origins are not supported (no TLS in this example); \
                     put the proxy next to the origin and use http"
                ));
            }
            _ => return Err(format!("`{s}`: expected http://host:port")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{s}`: no host; expected http://host:port"))?;
        if authority.as_str().contains('@') {
            return Err(format!("`{s}`: user information is not supported"));
        }
        if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
            return Err(format!(
                "`{s}`: the origin is scheme and host only; a path prefix is not supported"
            ));
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("`{s}`: the host is not a valid Host value"))?;
        Ok(Self { authority, host })
    }
}

/// A size in bytes: `1048576`, `512KiB`, `64MiB`, `1GiB` (`K`, `KB`, `M`, `MB`, `G`, `GB`
/// are read as the same binary multiples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub(crate) u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{s}`: expected a size like 1048576, 512KiB or 64MiB"))?;
        let multiple: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            other => return Err(format!("`{other}`: unknown unit (use KiB, MiB or GiB)")),
        };
        n.checked_mul(multiple)
            .map(Self)
            .ok_or_else(|| format!("`{s}`: too large"))
    }
}

/// Parses `30`, `30s`, `500ms`, `2m` (a bare number is seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration like 500ms, 30s or 2m"))?;
    let duration = match unit.trim() {
        "" | "s" | "sec" | "secs" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" | "mins" => Duration::from_secs(n.saturating_mul(60)),
        other => return Err(format!("`{other}`: unknown unit (use ms, s or m)")),
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
    fn origins_are_scheme_and_host_only() {
        let o: Origin = "http://127.0.0.1:8000".parse().unwrap();
        assert_eq!(o.authority.as_str(), "127.0.0.1:8000");
        assert_eq!(o.host, "127.0.0.1:8000");
        let o: Origin = "http://origin.internal/".parse().unwrap();
        assert_eq!(o.host, "origin.internal");
        assert!("https://example.com".parse::<Origin>().is_err());
        assert!("127.0.0.1:8000".parse::<Origin>().is_err());
        assert!("http://example.com/api".parse::<Origin>().is_err());
        assert!("http://example.com/?a=1".parse::<Origin>().is_err());
        assert!("http://user:pw@example.com".parse::<Origin>().is_err());
        assert!("not a url".parse::<Origin>().is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("1048576".parse(), Ok(ByteSize(1 << 20)));
        assert_eq!("512KiB".parse(), Ok(ByteSize(512 << 10)));
        assert_eq!("64MiB".parse(), Ok(ByteSize(64 << 20)));
        assert_eq!("2g".parse(), Ok(ByteSize(2 << 30)));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn flags_have_the_documented_defaults() {
        let c = Config::try_parse_from(["proxy", "--origin", "http://127.0.0.1:8000"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.max_entry_size, ByteSize(1 << 20));
        assert_eq!(c.cache_size, ByteSize(64 << 20));
        assert!(c.redis_url.is_none());
        assert_eq!(c.origin_timeout, Duration::from_secs(30));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1h").is_err());
    }
}
