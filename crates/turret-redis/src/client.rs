//! The cloneable Redis handle.

use std::{fmt, sync::Arc, time::Duration};

use redis::{
    FromRedisValue,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterConfig,
    cluster_async::ClusterConnection,
};
use tokio::time::Instant;

use crate::{
    BreakerState, Error, KeyBuilder, RedisConfig, Script, ScriptCall, Topology,
    breaker::Breaker,
    config::redact,
    error::is_infrastructure_error,
    pubsub::{Subscriber, Subscription},
};

/// A cheap-to-clone handle to Redis (one node or a cluster), shared by every layer.
///
/// It owns one multiplexed, self-reconnecting connection (`ConnectionManager` for one node,
/// the async cluster connection for a cluster): clones share it, and every command of every
/// task is pipelined over it. Each command is bounded by the per-command timeout and goes
/// through the circuit breaker, so a dead Redis costs a layer microseconds, not a timeout,
/// per request.
///
/// ```no_run
/// # async fn run() -> Result<(), turret_redis::Error> {
/// use turret_redis::{Redis, RedisConfig};
///
/// let redis = Redis::connect(RedisConfig::from_url("redis://127.0.0.1:6379")?).await?;
/// let key = redis.key("demo").part("counter").build();
/// let n: i64 = redis.query(redis::cmd("INCR").arg(&key)).await?;
/// assert!(n >= 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    config: RedisConfig,
    breaker: Breaker,
    subscriber: tokio::sync::OnceCell<Arc<Subscriber>>,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topology = match &self.inner.config.topology {
            Topology::Single(url) => redact(url),
            Topology::Cluster(seeds) => seeds
                .iter()
                .map(|s| redact(s))
                .collect::<Vec<_>>()
                .join(","),
        };
        f.debug_struct("Redis")
            .field("topology", &topology)
            .field("prefix", &self.inner.config.prefix)
            .field("breaker", &self.inner.breaker.state())
            .finish()
    }
}

impl Redis {
    /// Connects and checks the connection with a `PING`. Fails if Redis cannot be reached
    /// within the connect timeout; use [`Redis::connect_lazy`] to start without Redis.
    pub async fn connect(config: RedisConfig) -> Result<Self, Error> {
        let redis = Self::connect_lazy(config)?;
        let timeout = redis.inner.config.connect_timeout + redis.inner.config.command_timeout;
        let mut conn = redis.inner.conn.clone();
        match tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn))
            .await
        {
            Ok(Ok(_)) => Ok(redis),
            Ok(Err(e)) => Err(Error::Redis(e)),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Builds the handle without any network I/O: the connection is made on first use and
    /// remade whenever it breaks. A service can start while Redis is down; its layers
    /// degrade until Redis is reachable. Must be called inside a Tokio runtime.
    pub fn connect_lazy(config: RedisConfig) -> Result<Self, Error> {
        config.validate()?;
        #[cfg(feature = "tls")]
        install_crypto_provider();
        let conn = match &config.topology {
            Topology::Single(url) => {
                let info = RedisConfig::node_info(url)?;
                let client = config.node_client(info)?;
                let mgr_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(None)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(500))
                    .set_number_of_retries(2);
                Conn::Single(ConnectionManager::new_lazy_with_config(client, mgr_config)?)
            }
            Topology::Cluster(seeds) => {
                let client = config
                    .cluster_builder(seeds)
                    .response_timeout(config.connect_timeout.max(config.command_timeout))
                    .retries(2)
                    .build()?;
                let cluster_config = ClusterConfig::new()
                    .set_connection_timeout(config.connect_timeout)
                    .set_response_timeout(config.connect_timeout.max(config.command_timeout));
                Conn::Cluster(client.get_pending_async_connection_with_config(cluster_config))
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                breaker: Breaker::new(config.breaker),
                config,
                subscriber: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// The configuration this handle was built from.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// Whether this handle talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.conn, Conn::Cluster(_))
    }

    /// The key namespace prefix (default `turret:`).
    pub fn prefix(&self) -> &str {
        &self.inner.config.prefix
    }

    /// Starts a key in this handle's namespace for a `kind` of data (see [`KeyBuilder`]).
    pub fn key(&self, kind: &str) -> KeyBuilder {
        KeyBuilder::new(&self.inner.config.prefix, kind)
    }

    /// The full name of a pub/sub channel in this handle's namespace.
    pub fn channel(&self, name: &str) -> String {
        let mut c = String::with_capacity(self.prefix().len() + name.len());
        c.push_str(self.prefix());
        c.push_str(name);
        c
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// Sends one command, bounded by the per-command timeout, through the circuit breaker.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        let value = self
            .send(|mut conn| async move { conn.req_packed_command(cmd).await })
            .await?;
        Ok(redis::from_redis_value(value)?)
    }

    /// Sends a pipeline in one round trip (on a cluster, all its keys must share a slot).
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, Error> {
        let value = self
            .send(|mut conn| async move { pipe.query_async::<redis::Value>(&mut conn).await })
            .await?;
        Ok(redis::from_redis_value(value)?)
    }

    /// Runs a script call (see [`Script`]): `EVALSHA`, then `EVAL` on `NOSCRIPT`.
    pub async fn run_script<T: FromRedisValue>(&self, call: &ScriptCall<'_>) -> Result<T, Error> {
        let evalsha = call.command(true);
        let value = self
            .send(|mut conn| async move {
                match conn.req_packed_command(&evalsha).await.and_then(redis::Value::extract_error) {
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        tracing::debug!(script = call.script().name(), "NOSCRIPT: sending the script body");
                        metrics::counter!("turret_redis_script_reloads_total", "script" => call.script().name())
                            .increment(1);
                        conn.req_packed_command(&call.command(false)).await
                    }
                    other => other,
                }
            })
            .await?;
        Ok(redis::from_redis_value(value)?)
    }

    /// Loads scripts on every node (every master of a cluster) ahead of their first call.
    /// Optional: a call recovers from `NOSCRIPT` by itself.
    pub async fn preload(&self, scripts: &[&Script]) -> Result<(), Error> {
        for script in scripts {
            let mut cmd = redis::cmd("SCRIPT");
            cmd.arg("LOAD").arg(script.source());
            let cmd = &cmd;
            self.send(|conn| async move {
                match conn {
                    Conn::Single(mut c) => c.req_packed_command(cmd).await,
                    Conn::Cluster(mut c) => {
                        use redis::cluster_routing::{
                            MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo,
                        };
                        c.route_command(
                            cmd.clone(),
                            RoutingInfo::MultiNode((
                                MultipleNodeRoutingInfo::AllMasters,
                                Some(ResponsePolicy::AllSucceeded),
                            )),
                        )
                        .await
                    }
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Publishes a message on a channel of this namespace (see [`Redis::channel`]); returns
    /// how many subscribers received it (on a cluster: those connected to the answering node).
    pub async fn publish(&self, channel: &str, message: &[u8]) -> Result<usize, Error> {
        self.query(
            redis::cmd("PUBLISH")
                .arg(self.channel(channel))
                .arg(message),
        )
        .await
    }

    /// Subscribes to a channel of this namespace (see [`Redis::channel`]).
    ///
    /// All subscriptions of a handle share one dedicated RESP3 connection, made on the
    /// first call. The subscription survives reconnects: the connection re-subscribes by
    /// itself, and each subscription receives [`crate::Event::Gap`] when messages may have
    /// been missed (a disconnect, or a reader that fell behind). This never fails because
    /// Redis is down: the subscription is retried in the background until it succeeds.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, Error> {
        let subscriber = self
            .inner
            .subscriber
            .get_or_try_init(|| async { Subscriber::new(&self.inner.config) })
            .await?;
        Ok(subscriber.subscribe(self.channel(channel)))
    }

    async fn send<'a, F, Fut>(&'a self, f: F) -> Result<redis::Value, Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<redis::Value>> + 'a,
    {
        let Some(permit) = self.inner.breaker.acquire() else {
            metrics::counter!("turret_redis_command_errors_total", "kind" => "unavailable")
                .increment(1);
            return Err(Error::Unavailable);
        };
        let timeout = self.inner.config.command_timeout;
        let start = Instant::now();
        let result = tokio::time::timeout(timeout, f(self.inner.conn.clone()))
            .await
            .map(|r| r.and_then(redis::Value::extract_error));
        metrics::histogram!("turret_redis_command_seconds").record(start.elapsed().as_secs_f64());
        match result {
            Ok(Ok(value)) => {
                permit.success();
                Ok(value)
            }
            Ok(Err(e)) => {
                if is_infrastructure_error(&e) {
                    permit.failure();
                    metrics::counter!("turret_redis_command_errors_total", "kind" => "connection")
                        .increment(1);
                } else {
                    // Redis answered: it is alive, even if it rejected the command.
                    permit.success();
                    metrics::counter!("turret_redis_command_errors_total", "kind" => "command")
                        .increment(1);
                }
                Err(Error::Redis(e))
            }
            Err(_) => {
                permit.failure();
                metrics::counter!("turret_redis_command_errors_total", "kind" => "timeout")
                    .increment(1);
                Err(Error::Timeout(timeout))
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(feature = "tls")]
fn install_crypto_provider() {
    // rustls needs a process-wide crypto provider; install ring unless the application
    // already chose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
