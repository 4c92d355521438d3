//! A limit on requests in flight per key (`qu="concurrent-requests"` in the IETF draft).

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{BackendError, FailureMode, KeyExtractor, MissingKeyAction, PeerIp, ResponseBody};

/// Proof that a request holds one of its key's in-flight slots; dropping it gives the slot
/// back (on Redis: removes the lease, which otherwise expires by itself).
pub struct Permit {
    in_flight: u32,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Permit {
    /// A permit; `release` runs once when it is dropped.
    pub fn new(in_flight: u32, release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            in_flight,
            release: Some(Box::new(release)),
        }
    }

    /// Requests of this key in flight, this one included, when it was granted.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// A boxed acquisition.
pub type AcquireFuture = Pin<Box<dyn Future<Output = Result<Option<Permit>, BackendError>> + Send>>;

/// An acquisition: decided at once (memory) or on its way (Redis). `None` means the key
/// already has `max` requests in flight.
pub enum Acquire {
    /// Decided without waiting.
    Ready(Result<Option<Permit>, BackendError>),
    /// Being decided.
    Pending(AcquireFuture),
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Acquire::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Acquire::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Where in-flight counts live.
pub trait ConcurrencyBackend: Clone + Send + Sync + 'static {
    /// Takes one of `max` slots of `key` under `policy`, if one is free.
    fn acquire(&self, policy: &str, key: &str, max: u32) -> Acquire;
}

/// In-flight counts in this process. Only keys with requests in flight are kept, so the
/// map is bounded by the number of requests in flight.
#[derive(Debug, Clone, Default)]
pub struct MemoryConcurrency {
    counts: Arc<Counts>,
}

type Counts = Mutex<HashMap<(Arc<str>, Arc<str>), u32>>;

impl MemoryConcurrency {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys with requests in flight.
    pub fn len(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ConcurrencyBackend for MemoryConcurrency {
    fn acquire(&self, policy: &str, key: &str, max: u32) -> Acquire {
        let id: (Arc<str>, Arc<str>) = (policy.into(), key.into());
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.get(&id).copied().unwrap_or(0);
        if n >= max {
            return Acquire::Ready(Ok(None));
        }
        counts.insert(id.clone(), n + 1);
        let table = self.counts.clone();
        Acquire::Ready(Ok(Some(Permit::new(n + 1, move || {
            let mut counts = table.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&id);
                }
            }
        }))))
    }
}

#[cfg(feature = "redis")]
pub use self::redis_backend::RedisConcurrency;

#[cfg(feature = "redis")]
mod redis_backend {
    use std::{sync::LazyLock, time::Duration};

    use turret_redis::{Redis, Script};

    use super::{Acquire, ConcurrencyBackend, Permit};
    use crate::BackendError;

    /// KEYS[1] = sorted set of leases scored by expiry (µs, Redis time).
    /// ARGV = max, lease id, lease ttl µs. Returns {granted, in flight}.
    static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
        Script::new(
            "ratelimit_concurrency_acquire",
            "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then return {0, n} end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1)
return {1, n + 1}",
        )
    });

    /// In-flight counts on Redis, shared by the fleet. Each permit is a lease in a sorted
    /// set that expires after the lease time if its instance dies without releasing it; a
    /// request running longer than the lease time stops counting against its key.
    #[derive(Debug, Clone)]
    pub struct RedisConcurrency {
        redis: Redis,
        lease: Duration,
    }

    impl RedisConcurrency {
        /// Leases of 60 s.
        pub fn new(redis: Redis) -> Self {
            Self {
                redis,
                lease: Duration::from_secs(60),
            }
        }

        /// How long a lease outlives an instance that died holding it.
        pub fn lease(mut self, lease: Duration) -> Self {
            self.lease = lease.max(Duration::from_millis(1));
            self
        }

        /// The Redis key of `key` under `policy`.
        pub fn redis_key(&self, policy: &str, key: &str) -> String {
            let mut tag = Vec::with_capacity(policy.len() + key.len() + 1);
            tag.extend_from_slice(policy.as_bytes());
            tag.push(b'/');
            tag.extend_from_slice(key.as_bytes());
            self.redis.key("cc").tag(tag).build()
        }
    }

    impl ConcurrencyBackend for RedisConcurrency {
        fn acquire(&self, policy: &str, key: &str, max: u32) -> Acquire {
            let redis = self.redis.clone();
            let rkey = self.redis_key(policy, key);
            let lease = self.lease.as_micros() as u64;
            Acquire::Pending(Box::pin(async move {
                let id = format!("{:032x}", rand::random::<u128>());
                let reply: Vec<i64> = ACQUIRE
                    .key(&rkey)
                    .arg(max)
                    .arg(&id)
                    .arg(lease)
                    .invoke(&redis)
                    .await
                    .map_err(|e| BackendError::new(e.to_string(), e.is_unavailable()))?;
                let [granted, in_flight] = reply[..] else {
                    return Err(BackendError::new(
                        format!("unexpected reply {reply:?}"),
                        false,
                    ));
                };
                if granted != 1 {
                    return Ok(None);
                }
                Ok(Some(Permit::new(in_flight.max(0) as u32, move || {
                    // Give the slot back without making anyone wait; if this fails, the lease
                    // expires by itself.
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move {
                            let _ = redis
                                .query::<i64>(redis::cmd("ZREM").arg(&rkey).arg(&id))
                                .await;
                        });
                    }
                })))
            }))
        }
    }

    use turret_redis::redis;
}

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
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer<K = PeerIp, Bk = MemoryConcurrency> {
    shared: Arc<ConcurrencyShared<K, Bk>>,
}

#[derive(Debug)]
struct ConcurrencyShared<K, Bk> {
    name: Arc<str>,
    max: u32,
    key: K,
    backend: Bk,
    exempt: Vec<String>,
    failure: FailureMode,
    missing: MissingKeyAction,
    policy_header: HeaderValue,
}

impl ConcurrencyLimitLayer {
    /// At most `max` requests in flight per peer IP, in memory, under the policy `name`.
    pub fn new(name: &str, max: u32) -> Self {
        let name = crate::policy::sanitize_name(name);
        let policy_header =
            HeaderValue::from_str(&format!("\"{name}\";q={max};qu=\"concurrent-requests\""))
                .unwrap_or_else(|_| HeaderValue::from_static("\"concurrency\""));
        Self {
            shared: Arc::new(ConcurrencyShared {
                name: name.into(),
                max,
                key: PeerIp,
                backend: MemoryConcurrency::new(),
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
            shared: Arc::new(ConcurrencyShared {
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

    fn map(self, f: impl FnOnce(&mut ConcurrencyShared<K, Bk>)) -> Self {
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

    /// Keeps in-flight counts in another backend (e.g. `RedisConcurrency` for a fleet).
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

impl<K: Clone, Bk: Clone> Clone for ConcurrencyShared<K, Bk> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            max: self.max,
            key: self.key.clone(),
            backend: self.backend.clone(),
            exempt: self.exempt.clone(),
            failure: self.failure,
            missing: self.missing,
            policy_header: self.policy_header.clone(),
        }
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

/// The concurrency-limit middleware: see [`ConcurrencyLimitLayer`].
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S, K, Bk> {
    inner: S,
    shared: Arc<ConcurrencyShared<K, Bk>>,
}

impl<S, K, Bk> ConcurrencyLimit<S, K, Bk> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

fn plain(status: StatusCode, body: &'static [u8]) -> Response<Bytes> {
    let mut res = Response::new(Bytes::from_static(body));
    *res.status_mut() = status;
    res
}

impl<S, K, Bk, ReqBody, ResBody> Service<Request<ReqBody>> for ConcurrencyLimit<S, K, Bk>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: KeyExtractor<ReqBody>,
    Bk: ConcurrencyBackend,
{
    type Response = Response<PermitBody<ResBody>>;
    type Error = S::Error;
    type Future = ConcurrencyFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let s = &self.shared;
        if s.exempt.iter().any(|p| p == req.uri().path()) {
            return ConcurrencyFuture::calling(self.inner.call(req), None);
        }
        let key = match s.key.extract(&req) {
            Ok(k) => k,
            Err(missing) => match s.missing {
                MissingKeyAction::Reject => {
                    tracing::error!(policy = %s.name, %missing, "concurrency limit: no key for this request; answering 500");
                    return ConcurrencyFuture::ready(plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        b"Internal Server Error\n",
                    ));
                }
                MissingKeyAction::SharedKey => String::from("__missing_key__"),
            },
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let acquire = s.backend.acquire(&s.name, &key, s.max);
        let info = Info {
            policy_header: s.policy_header.clone(),
            name: s.name.clone(),
            failure: s.failure,
        };
        match acquire {
            Acquire::Ready(result) => ConcurrencyFuture::decided(result, req, inner, &info),
            Acquire::Pending(fut) => ConcurrencyFuture {
                state: CState::Acquiring {
                    fut,
                    pending: Some((req, inner, info)),
                },
            },
        }
    }
}

#[derive(Debug)]
struct Info {
    policy_header: HeaderValue,
    name: Arc<str>,
    failure: FailureMode,
}

pin_project! {
    /// Response future of [`ConcurrencyLimit`].
    pub struct ConcurrencyFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: CState<S, ReqBody>,
    }
}

pin_project! {
    #[project = CStateProj]
    enum CState<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Acquiring {
            fut: AcquireFuture,
            pending: Option<(Request<ReqBody>, S, Info)>,
        },
        Calling {
            #[pin]
            future: S::Future,
            permit: Option<Permit>,
        },
        Ready {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S, ReqBody> ConcurrencyFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn calling(future: S::Future, permit: Option<Permit>) -> Self {
        Self {
            state: CState::Calling { future, permit },
        }
    }

    fn ready(response: Response<Bytes>) -> Self {
        Self {
            state: CState::Ready {
                response: Some(response),
            },
        }
    }

    fn decided(
        result: Result<Option<Permit>, BackendError>,
        req: Request<ReqBody>,
        mut inner: S,
        info: &Info,
    ) -> Self {
        match outcome(result, info) {
            Outcome::Call(permit) => Self::calling(inner.call(req), permit),
            Outcome::Refuse(res) => Self::ready(res),
        }
    }
}

/// What happens to a request once its slot is decided.
enum Outcome {
    /// Call the inner service, holding the permit (none when failing open).
    Call(Option<Permit>),
    /// Answer with this instead.
    Refuse(Response<Bytes>),
}

fn outcome(result: Result<Option<Permit>, BackendError>, info: &Info) -> Outcome {
    match result {
        Ok(Some(permit)) => Outcome::Call(Some(permit)),
        Ok(None) => {
            metrics::counter!("turret_ratelimit_decisions_total", "policy" => info.name.to_string(), "outcome" => "limited")
                .increment(1);
            let mut res = plain(StatusCode::TOO_MANY_REQUESTS, b"Too Many Requests\n");
            let h = res.headers_mut();
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            h.insert(RATELIMIT_POLICY.clone(), info.policy_header.clone());
            let name_end = info
                .policy_header
                .as_bytes()
                .iter()
                .position(|&b| b == b';')
                .unwrap_or(0);
            let mut value = info.policy_header.as_bytes()[..name_end].to_vec();
            value.extend_from_slice(b";r=0;t=1");
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                h.insert(RATELIMIT.clone(), v);
            }
            Outcome::Refuse(res)
        }
        Err(e) => {
            metrics::counter!("turret_ratelimit_backend_errors_total", "policy" => info.name.to_string()).increment(1);
            tracing::debug!(policy = %info.name, error = %e, "concurrency limit backend failed");
            match info.failure {
                FailureMode::Open => Outcome::Call(None),
                FailureMode::Closed => Outcome::Refuse(plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    b"Service Unavailable\n",
                )),
            }
        }
    }
}

impl<S, ReqBody, ResBody> Future for ConcurrencyFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<PermitBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                CStateProj::Acquiring { fut, pending } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let Some((req, mut inner, info)) = pending.take() else {
                        this.state.set(CState::Ready { response: None });
                        continue;
                    };
                    match outcome(result, &info) {
                        Outcome::Call(permit) => {
                            let future = inner.call(req);
                            this.state.set(CState::Calling { future, permit });
                        }
                        Outcome::Refuse(res) => this.state.set(CState::Ready {
                            response: Some(res),
                        }),
                    }
                }
                CStateProj::Calling { future, permit } => {
                    let res = ready!(future.poll(cx))?;
                    let permit = permit.take();
                    return Poll::Ready(Ok(res.map(|body| PermitBody::inner(body, permit))));
                }
                CStateProj::Ready { response } => {
                    let res = response
                        .take()
                        .unwrap_or_else(|| plain(StatusCode::INTERNAL_SERVER_ERROR, b""));
                    return Poll::Ready(Ok(res.map(PermitBody::full)));
                }
            }
        }
    }
}

pin_project! {
    /// A response body that holds its request's in-flight slot until it ends or is dropped.
    #[derive(Debug)]
    pub struct PermitBody<B> {
        #[pin]
        body: ResponseBody<B>,
        permit: Option<Permit>,
    }
}

impl<B> PermitBody<B> {
    fn inner(body: B, permit: Option<Permit>) -> Self {
        Self {
            body: ResponseBody::inner(body),
            permit,
        }
    }

    fn full(data: Bytes) -> Self {
        Self {
            body: ResponseBody::full(data),
            permit: None,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for PermitBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if body_done(&frame) {
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn body_done<T, E>(frame: &Option<Result<T, E>>) -> bool {
    matches!(frame, None | Some(Err(_)))
}
