//! The concurrency-limit layer: its builder.

use std::sync::Arc;

use http::HeaderValue;
use tower_layer::Layer;

use super::{
    backend::{AnyConcurrency, ConcurrencyBackend},
    service::{ConcurrencyLimit, Shared},
};
use crate::{FailureMode, MissingKeyAction, PeerIp};

/// Limits how many requests of one key are in flight at once; the slot is given back when
/// the response body ends or is dropped, or when the request is cancelled.
///
/// A refusal is `429` with `Retry-After: 1` and `RateLimit-Policy: "name";q=N;qu="concurrent-requests"`.
///
/// ```
/// use std::{net::SocketAddr, time::Duration};
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use turret_ratelimit::ConcurrencyLimitLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (release, wait) = tokio::sync::oneshot::channel::<()>();
/// let wait = std::sync::Arc::new(tokio::sync::Mutex::new(Some(wait)));
/// let svc = ServiceBuilder::new()
///     .layer(ConcurrencyLimitLayer::new("exports", 1))
///     .service(service_fn(move |_req: Request<String>| {
///         let wait = wait.clone();
///         async move {
///             if let Some(w) = wait.lock().await.take() { let _ = w.await; }
///             Ok::<_, std::convert::Infallible>(Response::new(String::from("done")))
///         }
///     }));
/// let req = || {
///     let mut r = Request::new(String::new());
///     r.extensions_mut().insert("192.0.2.1:1".parse::<SocketAddr>().unwrap());
///     r
/// };
/// let slow = tokio::spawn(svc.clone().oneshot(req()));
/// tokio::task::yield_now().await;
/// let second = svc.clone().oneshot(req()).await.unwrap();
/// assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
/// release.send(()).unwrap();
/// assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
/// # }
/// ```
///
/// The backend is a value: memory by default, Redis with `redis` or
/// `backend_from`, the same type either way ([`AnyConcurrency`]);
/// [`backend`](Self::backend) makes a concrete backend part of the type.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer<K = PeerIp, Bk = AnyConcurrency> {
    shared: Arc<Shared<K, Bk>>,
}

impl ConcurrencyLimitLayer {
    /// At most `max` requests in flight per peer IP, in memory, under the policy `name`.
    pub fn new(name: &str, max: u32) -> Self {
        let name = crate::policy::sanitize_name(name);
        let policy_header =
            HeaderValue::from_str(&format!("\"{name}\";q={max};qu=\"concurrent-requests\""))
                .unwrap_or_else(|_| HeaderValue::from_static("\"concurrency\""));
        Self {
            shared: Arc::new(Shared {
                name: name.into(),
                max,
                key: PeerIp::new(),
                backend: AnyConcurrency::default(),
                exempt: Vec::new(),
                failure: FailureMode::Open,
                missing: MissingKeyAction::Reject,
                policy_header,
            }),
        }
    }
}

impl<K: Clone, Bk: Clone> ConcurrencyLimitLayer<K, Bk> {
    fn with<K2, Bk2>(self, key: K2, backend: Bk2) -> ConcurrencyLimitLayer<K2, Bk2> {
        let s = Arc::unwrap_or_clone(self.shared);
        ConcurrencyLimitLayer {
            shared: Arc::new(Shared {
                name: s.name,
                max: s.max,
                key,
                backend,
                exempt: s.exempt,
                failure: s.failure,
                missing: s.missing,
                policy_header: s.policy_header,
            }),
        }
    }

    fn map(self, f: impl FnOnce(&mut Shared<K, Bk>)) -> Self {
        let mut s = Arc::unwrap_or_clone(self.shared);
        f(&mut s);
        Self {
            shared: Arc::new(s),
        }
    }

    /// Keys requests with another extractor.
    pub fn key<K2>(self, key: K2) -> ConcurrencyLimitLayer<K2, Bk> {
        let backend = self.shared.backend.clone();
        self.with(key, backend)
    }

    /// Keeps in-flight counts in another backend, which becomes part of the type (e.g.
    /// `RedisConcurrency` for a fleet); `redis` and
    /// `backend_from` choose at run time without changing it.
    pub fn backend<Bk2: ConcurrencyBackend>(self, backend: Bk2) -> ConcurrencyLimitLayer<K, Bk2> {
        let key = self.shared.key.clone();
        self.with(key, backend)
    }

    /// Never limits requests to this exact path.
    pub fn exempt(self, path: &str) -> Self {
        self.map(|s| s.exempt.push(path.to_owned()))
    }

    /// What to do when Redis cannot decide (default: let the request through).
    pub fn failure_mode(self, mode: FailureMode) -> Self {
        self.map(|s| s.failure = mode)
    }

    /// What to do when a request has no key (default: `500`).
    pub fn on_missing_key(self, action: MissingKeyAction) -> Self {
        self.map(|s| s.missing = action)
    }
}

impl<K: Clone> ConcurrencyLimitLayer<K, AnyConcurrency> {
    /// Keeps in-flight counts on this Redis (leases shared by the fleet); the same type as
    /// the memory layer's.
    #[cfg(feature = "redis")]
    pub fn redis(self, redis: turret_redis::Redis) -> Self {
        self.map(|s| s.backend = AnyConcurrency::Redis(crate::RedisConcurrency::new(redis)))
    }

    /// Keeps in-flight counts on this Redis when there is one (`Some`), in memory otherwise.
    #[cfg(feature = "redis")]
    pub fn backend_from(self, redis: Option<turret_redis::Redis>) -> Self {
        self.map(|s| s.backend = AnyConcurrency::from(redis))
    }
}

impl<S, K, Bk> Layer<S> for ConcurrencyLimitLayer<K, Bk> {
    type Service = ConcurrencyLimit<S, K, Bk>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}
