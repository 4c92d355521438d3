//! The rate-limit layer: its builder.

use std::{fmt, sync::Arc};

use tower_layer::Layer;

use crate::{
    AnyBackend, Backend, HeaderMode, MemoryBackend, PeerIp, Policy, Quota,
    on_limited::{DefaultOnLimited, OnLimited},
    service::RateLimit,
    state::{FailureMode, MissingKeyAction, Shared},
};

/// Limits requests per key; refuses with `429` and the standard header fields.
///
/// The backend is a value: [`RateLimitLayer::new`] keeps state in memory, and
/// `redis` or `backend_from` move it to Redis without
/// changing the layer's type ([`AnyBackend`]), so configuration can choose at run time:
///
#[cfg_attr(feature = "redis", doc = "```no_run")]
#[cfg_attr(not(feature = "redis"), doc = "```ignore")]
/// use turret_ratelimit::{ClientIp, Quota, RateLimitLayer};
/// use turret_redis::{Redis, RedisConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = match std::env::var("REDIS_URL") {
///     Ok(url) => Some(Redis::connect(RedisConfig::from_url(&url)?).await?),
///     Err(_) => None,
/// };
/// // One type, memory or Redis.
/// let limiter: RateLimitLayer<ClientIp> = RateLimitLayer::new(Quota::per_minute(100))
///     .key(ClientIp::trusting(["10.0.0.0/8"])?)
///     .backend_from(redis);
/// # let _ = limiter; Ok(()) }
/// ```
///
/// [`backend`](Self::backend) takes a concrete backend instead and makes it part of the
/// type (no `match` per decision). See the [crate documentation](crate) for more examples.
#[derive(Clone)]
pub struct RateLimitLayer<K = PeerIp, Bk = AnyBackend, L = DefaultOnLimited> {
    shared: Shared<K, Bk, L>,
}

impl<K: fmt::Debug, Bk: fmt::Debug, L> fmt::Debug for RateLimitLayer<K, Bk, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("RateLimitLayer")
            .field("policies", &s.policies)
            .field("exempt", &s.exempt)
            .field("key", &s.key)
            .field("backend", &s.backend)
            .field("failure", &s.failure)
            .finish()
    }
}

impl RateLimitLayer {
    /// One policy, `"default"`, applying `quota` to every request, keyed by peer IP, in
    /// memory ([`AnyBackend::Memory`]).
    pub fn new(quota: Quota) -> Self {
        Self::policies([Policy::new("default", quota)])
    }

    /// These policies, tried in order; the first that matches a request applies. Requests no
    /// policy matches are not limited.
    pub fn policies(policies: impl IntoIterator<Item = Policy>) -> Self {
        Self {
            shared: Shared {
                policies: policies.into_iter().collect(),
                exempt: Vec::new(),
                allow: Vec::new(),
                key: PeerIp::new(),
                backend: AnyBackend::default(),
                on_limited: DefaultOnLimited,
                header_mode: HeaderMode::Always,
                failure: FailureMode::Open,
                fallback: None,
                missing: MissingKeyAction::Reject,
                offenders: Arc::default(),
                waiting: Arc::default(),
                degraded: Arc::default(),
            },
        }
    }
}

impl<K, Bk, L> RateLimitLayer<K, Bk, L> {
    fn map<F: FnOnce(&mut Shared<K, Bk, L>)>(mut self, f: F) -> Self {
        f(&mut self.shared);
        self
    }

    /// Adds a policy, tried before the ones already present.
    pub fn policy(self, policy: Policy) -> Self {
        self.map(|s| s.policies.insert(0, policy))
    }

    /// Never limits requests to this exact path (health checks, metrics).
    pub fn exempt(self, path: &str) -> Self {
        self.map(|s| s.exempt.push(path.to_owned()))
    }

    /// Never limits requests with this key (e.g. an internal client's address).
    pub fn allow_key(self, key: &str) -> Self {
        self.map(|s| s.allow.push(key.to_owned()))
    }

    /// Which responses carry the rate-limit fields (default: all; [`HeaderMode::Never`]
    /// leaves only `Retry-After` on refusals).
    pub fn header_mode(self, mode: HeaderMode) -> Self {
        self.map(|s| s.header_mode = mode)
    }

    /// What to do when Redis cannot decide (default: let the request through).
    pub fn failure_mode(self, mode: FailureMode) -> Self {
        self.map(|s| s.failure = mode)
    }

    /// While Redis cannot decide, decide with an in-memory limiter of this instance instead
    /// (each instance then enforces the quota on its own).
    pub fn fallback_to_memory(self) -> Self {
        self.map(|s| s.fallback = Some(MemoryBackend::new()))
    }

    /// What to do when a request has no key (default: `500` and a log line).
    pub fn on_missing_key(self, action: MissingKeyAction) -> Self {
        self.map(|s| s.missing = action)
    }

    /// Keys requests with another extractor.
    pub fn key<K2>(self, key: K2) -> RateLimitLayer<K2, Bk, L> {
        self.rebuild(|s| (key, s.backend, s.on_limited))
    }

    /// Keeps state in another backend, which becomes part of the layer's type (e.g.
    /// `MemoryBackend::with_clock(..)`, or `RedisBackend`, feature `redis`); to choose at run
    /// time without changing the type, see `redis` and
    /// `backend_from`.
    pub fn backend<Bk2: Backend>(self, backend: Bk2) -> RateLimitLayer<K, Bk2, L> {
        self.rebuild(|s| (s.key, backend, s.on_limited))
    }

    /// Builds refusals with this hook.
    pub fn on_limited<L2: OnLimited>(self, on_limited: L2) -> RateLimitLayer<K, Bk, L2> {
        self.rebuild(|s| (s.key, s.backend, on_limited))
    }

    /// The same settings with the three generic parts swapped by `f`.
    fn rebuild<K2, Bk2, L2>(
        self,
        f: impl FnOnce(Generic<K, Bk, L>) -> (K2, Bk2, L2),
    ) -> RateLimitLayer<K2, Bk2, L2> {
        let s = self.shared;
        let (key, backend, on_limited) = f(Generic {
            key: s.key,
            backend: s.backend,
            on_limited: s.on_limited,
        });
        RateLimitLayer {
            shared: Shared {
                policies: s.policies,
                exempt: s.exempt,
                allow: s.allow,
                key,
                backend,
                on_limited,
                header_mode: s.header_mode,
                failure: s.failure,
                fallback: s.fallback,
                missing: s.missing,
                offenders: s.offenders,
                waiting: s.waiting,
                degraded: s.degraded,
            },
        }
    }
}

impl<K, L> RateLimitLayer<K, AnyBackend, L> {
    /// Keeps state on this Redis: one quota for every instance pointed at it. The same type
    /// as the memory layer's; see also [`fallback_to_memory`](Self::fallback_to_memory).
    #[cfg(feature = "redis")]
    pub fn redis(self, redis: turret_redis::Redis) -> Self {
        self.map(|s| s.backend = AnyBackend::Redis(crate::RedisBackend::new(redis)))
    }

    /// Keeps state on this Redis when there is one (`Some`), in memory otherwise: the choice
    /// a configuration makes at run time (`REDIS_URL` set or not), in one call.
    #[cfg(feature = "redis")]
    pub fn backend_from(self, redis: Option<turret_redis::Redis>) -> Self {
        self.map(|s| s.backend = AnyBackend::from(redis))
    }
}

/// The generic parts of the settings, handed to `rebuild`.
struct Generic<K, Bk, L> {
    key: K,
    backend: Bk,
    on_limited: L,
}

impl<S, K, Bk, L> RateLimit<S, K, Bk, L> {
    /// Wraps `inner` in the rate limiter configured by `layer`.
    pub fn new(inner: S, layer: &RateLimitLayer<K, Bk, L>) -> Self
    where
        K: Clone,
        Bk: Clone,
        L: Clone,
    {
        layer.layer(inner)
    }
}

impl<S, K: Clone, Bk: Clone, L: Clone> Layer<S> for RateLimitLayer<K, Bk, L> {
    type Service = RateLimit<S, K, Bk, L>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: Arc::new(self.shared.clone()),
        }
    }
}
