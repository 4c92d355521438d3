use std::{fmt, time::Duration};

use crate::Error;

/// Default key namespace prefix.
pub const DEFAULT_PREFIX: &str = "turret:";
/// Default connect timeout: 1 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default per-command timeout: 50 ms.
///
/// A middleware sits in front of every request, so Redis may add at most this much to a
/// request before the layer gives up and does its degraded behaviour. A healthy Redis on
/// the same network answers in well under a millisecond.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(50);

/// Where Redis is: one node, or a cluster given by its seed nodes. Its `Debug` output hides
/// passwords.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One Redis node (`redis://`, `rediss://`, `unix://`).
    Single(String),
    /// A Redis Cluster, reached through any of these seed node URLs.
    Cluster(Vec<String>),
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Single(url) => f.debug_tuple("Single").field(&redact(url)).finish(),
            Topology::Cluster(seeds) => f
                .debug_tuple("Cluster")
                .field(&seeds.iter().map(|s| redact(s)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// Thresholds of the circuit breaker that guards every command.
///
/// After `failure_threshold` consecutive failures (errors of the connection or timeouts,
/// not errors of a command that Redis rejected) the breaker opens: commands fail at once
/// with [`Error::Unavailable`], without network I/O. After `cool_down` one probe command is
/// let through (half-open); if it succeeds the breaker closes, otherwise it opens again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (at least 1). Default 5.
    pub failure_threshold: u32,
    /// How long the breaker stays open before a probe is let through. Default 1 s.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: Duration::from_secs(1),
        }
    }
}

/// How to reach Redis and how to behave when it misbehaves.
///
/// Built from a URL:
///
/// | form | meaning |
/// |---|---|
/// | `redis://[user:pass@]host:port[/db]` | one node |
/// | `rediss://…` | one node over TLS (feature `tls`) |
/// | `unix:///path/to/redis.sock` | one node over a Unix socket |
/// | `redis+cluster://[user:pass@]host1:port1,host2:port2,…` | a Redis Cluster, given by seed nodes |
/// | `rediss+cluster://…` | the same over TLS |
///
/// A cluster can also be given as a list of seed URLs with [`RedisConfig::cluster`].
///
/// ```
/// use std::time::Duration;
/// use turret_redis::{RedisConfig, Topology};
///
/// let config = RedisConfig::from_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")
///     .unwrap()
///     .prefix("shop:")
///     .command_timeout(Duration::from_millis(20));
/// assert_eq!(
///     config.get_topology(),
///     &Topology::Cluster(vec!["redis://10.0.0.1:7000".into(), "redis://10.0.0.2:7000".into()])
/// );
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) topology: Topology,
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) breaker: BreakerConfig,
    #[cfg(feature = "tls")]
    pub(crate) tls_root_cert: Option<Vec<u8>>,
}

/// Passwords never appear: URLs are shown redacted.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("topology", &self.topology)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// Parses a URL (see the table above). Fails on a scheme it does not know or a cluster
    /// URL without hosts; the rest of the URL is checked when connecting.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let url = url.trim();
        let topology = if let Some((scheme, rest)) = url.split_once("+cluster://") {
            let node_scheme = match scheme {
                "redis" => "redis",
                "rediss" => "rediss",
                other => {
                    return Err(Error::Config(format!(
                        "unknown cluster scheme `{other}+cluster://` (use redis+cluster:// or rediss+cluster://)"
                    )));
                }
            };
            let (userinfo, hosts) = match rest.rsplit_once('@') {
                Some((user, hosts)) => (Some(user), hosts),
                None => (None, rest),
            };
            let hosts = hosts.trim_end_matches('/');
            let seeds: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|host| match userinfo {
                    Some(user) => format!("{node_scheme}://{user}@{host}"),
                    None => format!("{node_scheme}://{host}"),
                })
                .collect();
            if seeds.is_empty() {
                return Err(Error::Config(format!(
                    "cluster URL `{}` names no seed node",
                    redact(url)
                )));
            }
            Topology::Cluster(seeds)
        } else if ["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|s| url.starts_with(s))
        {
            Topology::Single(url.to_owned())
        } else {
            return Err(Error::Config(format!(
                "`{}` is not a Redis URL (expected redis://, rediss://, unix:// or redis+cluster://)",
                redact(url)
            )));
        };
        Ok(Self::with_topology(topology))
    }

    /// A Redis Cluster reached through these seed node URLs (`redis://host:port` each).
    pub fn cluster<I, S>(seeds: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let seeds: Vec<String> = seeds.into_iter().map(Into::into).collect();
        if seeds.is_empty() {
            return Err(Error::Config(
                "a cluster needs at least one seed node".into(),
            ));
        }
        Ok(Self::with_topology(Topology::Cluster(seeds)))
    }

    fn with_topology(topology: Topology) -> Self {
        Self {
            topology,
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            breaker: BreakerConfig::default(),
            #[cfg(feature = "tls")]
            tls_root_cert: None,
        }
    }

    /// Trusts this root certificate (PEM) for `rediss://` connections instead of the
    /// webpki root store: for a Redis behind a private CA. Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
        self
    }

    /// A client for one node, with the configured TLS roots.
    pub(crate) fn node_client(&self, info: redis::ConnectionInfo) -> Result<redis::Client, Error> {
        #[cfg(feature = "tls")]
        if let Some(root) = &self.tls_root_cert {
            return Ok(redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root.clone()),
                },
            )?);
        }
        Ok(redis::Client::open(info)?)
    }

    /// A cluster client builder over the seeds, with the configured timeouts and TLS roots.
    pub(crate) fn cluster_builder(&self, seeds: &[String]) -> redis::cluster::ClusterClientBuilder {
        let builder = redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
            .connection_timeout(self.connect_timeout);
        #[cfg(feature = "tls")]
        if let Some(root) = &self.tls_root_cert {
            return builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root.clone()),
            });
        }
        builder
    }

    /// The connection info of a single-node URL.
    pub(crate) fn node_info(url: &str) -> Result<redis::ConnectionInfo, Error> {
        use redis::IntoConnectionInfo;
        url.into_connection_info()
            .map_err(|e| Error::Config(format!("cannot parse `{}`: {e}", redact(url))))
    }

    /// Key namespace prefix put in front of every key and channel (default `turret:`).
    /// It must not contain `{` or `}`, which would change the cluster hash slot of keys.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long establishing a connection may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one command may take before it fails with [`Error::Timeout`]
    /// (default [`DEFAULT_COMMAND_TIMEOUT`], 50 ms).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Circuit breaker thresholds (default: 5 failures, 1 s cool-down).
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    // The getters are `get_` + the setter's name (as in sqlx's connect options): the setters
    // take the plain names.

    /// Where Redis is.
    pub fn get_topology(&self) -> &Topology {
        &self.topology
    }

    /// The key namespace prefix (see [`RedisConfig::prefix`]).
    pub fn get_prefix(&self) -> &str {
        &self.prefix
    }

    /// The per-command timeout (see [`RedisConfig::command_timeout`]).
    pub fn get_command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Checks what can be checked without a connection.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.prefix.contains(['{', '}']) {
            return Err(Error::Config(format!(
                "key prefix `{}` must not contain `{{` or `}}`: they would change the cluster hash slot of every key",
                self.prefix
            )));
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::Config("timeouts must be greater than zero".into()));
        }
        if self.breaker.failure_threshold == 0 {
            return Err(Error::Config(
                "breaker failure_threshold must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A URL with its password replaced, for error messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_url_is_kept_as_is() {
        let c = RedisConfig::from_url("redis://user:pw@127.0.0.1:6379/2").unwrap();
        assert_eq!(
            c.get_topology(),
            &Topology::Single("redis://user:pw@127.0.0.1:6379/2".into())
        );
        assert_eq!(c.get_prefix(), "turret:");
        assert_eq!(c.get_command_timeout(), Duration::from_millis(50));
    }

    #[test]
    fn cluster_url_becomes_seed_list_with_credentials() {
        let c = RedisConfig::from_url("rediss+cluster://u:p@a:1,b:2/").unwrap();
        assert_eq!(
            c.get_topology(),
            &Topology::Cluster(vec!["rediss://u:p@a:1".into(), "rediss://u:p@b:2".into()])
        );
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for url in [
            "http://x",
            "",
            "redis+cluster://",
            "foo+cluster://a:1",
            "127.0.0.1:6379",
        ] {
            assert!(
                matches!(RedisConfig::from_url(url), Err(Error::Config(_))),
                "{url}"
            );
        }
        assert!(RedisConfig::cluster(Vec::<String>::new()).is_err());
    }

    #[test]
    fn prefix_with_braces_is_rejected() {
        let c = RedisConfig::from_url("redis://h").unwrap().prefix("a{b}:");
        assert!(matches!(c.validate(), Err(Error::Config(_))));
        let c = RedisConfig::from_url("redis://h").unwrap().prefix("app:");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn redact_hides_password() {
        assert_eq!(redact("redis://u:secret@h:1"), "redis://u:***@h:1");
        let config = RedisConfig::from_url("redis://u:secret@h:1").unwrap();
        assert!(!format!("{config:?}").contains("secret"));
        assert!(!format!("{:?}", config.get_topology()).contains("secret"));
        let cluster = RedisConfig::from_url("redis+cluster://u:secret@h:1,h:2").unwrap();
        assert!(!format!("{cluster:?}").contains("secret"));
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
