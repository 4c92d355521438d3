//! Where the layer learns a resource's current validators before a write:
//! a user's [`ValidatorSource`] or the built-in [`ValidatorStore`].

mod memory;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
use std::sync::{Mutex, PoisonError};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use http::{HeaderValue, Method};

use crate::headers::{Conditions, Current, EntityTag, from_secs, to_secs};

pub(crate) use self::memory::MemoryStore;
#[cfg(feature = "redis")]
pub(crate) use self::redis::RedisStore;

/// A type-erased error, as returned by a [`ValidatorSource`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The validators of a resource's current representation: its `ETag` and/or `Last-Modified`.
///
/// Both may be absent: the resource exists, but no validator is known (any `If-Match` with
/// entity-tags then fails, `If-None-Match: *` fails, `If-Match: *` succeeds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    etag: Option<HeaderValue>,
    last_modified: Option<SystemTime>,
}

impl Validators {
    /// No validator known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the entity-tag, in field-value form: `"v42"` or `W/"v42"`. A value that is not a
    /// well-formed entity-tag (RFC 9110 §8.8.3) is treated as no ETag.
    pub fn with_etag(mut self, etag: HeaderValue) -> Self {
        self.etag = Some(etag);
        self
    }

    /// Sets the last-modification time (compared with one-second resolution).
    pub fn with_last_modified(mut self, at: SystemTime) -> Self {
        self.last_modified = Some(at);
        self
    }

    /// The entity-tag, if any.
    pub fn etag(&self) -> Option<&HeaderValue> {
        self.etag.as_ref()
    }

    /// The last-modification time, if any.
    pub fn last_modified(&self) -> Option<SystemTime> {
        self.last_modified
    }

    pub(crate) fn to_current(&self) -> Current {
        Current {
            etag: self
                .etag
                .as_ref()
                .and_then(|v| EntityTag::parse(v.as_bytes())),
            last_modified: self.last_modified.map(to_secs),
        }
    }

    pub(crate) fn from_current(current: &Current) -> Validators {
        Validators {
            etag: current
                .etag
                .as_ref()
                .and_then(|t| HeaderValue::from_bytes(&t.to_bytes()).ok()),
            last_modified: current.last_modified.map(from_secs),
        }
    }
}

/// What a [`ValidatorSource`] is asked about: the request's method and the resource key
/// ([`MakeResourceKey`](crate::MakeResourceKey)) of its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    method: Method,
    resource: String,
}

impl Target {
    /// A target: `method` on `resource`.
    pub fn new(method: Method, resource: impl Into<String>) -> Self {
        Self {
            method,
            resource: resource.into(),
        }
    }

    /// The request's method (a write's, or GET for an `If-Range` look-up).
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The resource key.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The resource key, owned.
    pub fn into_resource(self) -> String {
        self.resource
    }
}

/// What a [`ValidatorSource`] knows about a request's target, which decides how the layer
/// treats the request's preconditions (RFC 9110 §13.1, §13.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceState {
    /// The target has a current representation with these validators. With none known
    /// ([`Validators::new`], e.g. a collection that exists), `If-Match: *` is true, any
    /// `If-Match` entity-tag is false and `If-None-Match: *` is false.
    Current(Validators),
    /// The target has no current representation *and the request would still be performed*
    /// (a PUT that creates it): `If-Match` is false (412), `If-None-Match: *` is true.
    Absent,
    /// The layer leaves the preconditions to the handler: the source does not know this
    /// target, or the request would not succeed without its preconditions (a DELETE or an
    /// update of something that does not exist is 404, a malformed id 400). RFC 9110 §13.2.1:
    /// a server ignores preconditions when its answer to the request without them would be
    /// anything but 2xx or 412, so the handler's answer must stand.
    Unknown,
}

impl From<Validators> for ResourceState {
    fn from(v: Validators) -> Self {
        ResourceState::Current(v)
    }
}

impl From<Option<Validators>> for ResourceState {
    /// `Some` is [`Current`](ResourceState::Current), `None` is
    /// [`Absent`](ResourceState::Absent).
    fn from(v: Option<Validators>) -> Self {
        v.map_or(ResourceState::Absent, ResourceState::Current)
    }
}

/// Tells the layer the state of a request's target before an unsafe request runs.
///
/// Implement it over the real source of truth (a row version or `updated_at` column) to
/// evaluate `If-Match` / `If-Unmodified-Since` / `If-None-Match` on writes. Answer
/// [`ResourceState::Current`] with the validators when the target exists,
/// [`ResourceState::Absent`] when it does not and the method would create it (a PUT), and
/// [`ResourceState::Unknown`] when the request would fail without its preconditions (a DELETE
/// or update of a missing row: 404; a path that is not a valid id: 400) or the source does
/// not know the target; the handler then answers as if there were no precondition.
///
/// ```
/// use http::{HeaderValue, Method};
/// use turret_conditional::{BoxError, ResourceState, Target, Validators};
///
/// async fn version_of(_id: u64) -> Result<Option<u64>, BoxError> { Ok(Some(3)) }
///
/// async fn source(target: Target) -> Result<ResourceState, BoxError> {
///     let Some(id) = target.resource().strip_prefix("/docs/").and_then(|id| id.parse().ok())
///     else {
///         return Ok(ResourceState::Unknown); // not a document: the handler answers (404/400)
///     };
///     Ok(match version_of(id).await? {
///         Some(v) => ResourceState::Current(
///             Validators::new().with_etag(HeaderValue::from_str(&format!("\"v{v}\""))?),
///         ),
///         None if target.method() == Method::PUT => ResourceState::Absent, // PUT creates
///         None => ResourceState::Unknown, // DELETE/PATCH of nothing: the handler's 404
///     })
/// }
/// # let _ = turret_conditional::ConditionalLayer::new().validator_source(source);
/// ```
///
/// The layer does not serialize writes through a `ValidatorSource`: two requests may both
/// pass the check, so the handler must still make its write conditional
/// (`UPDATE … WHERE version = $1`) if it needs exactly-once. The built-in [`ValidatorStore`]
/// does serialize them.
///
/// An `Err` fails open: the request goes to the handler, and the error is logged and counted.
///
/// Implemented for closures and `async fn`s `Fn(Target) -> impl Future<Output =
/// Result<ResourceState, BoxError>>`.
pub trait ValidatorSource {
    /// The future [`validators`](Self::validators) returns.
    type Future: Future<Output = Result<ResourceState, BoxError>> + Send + 'static;

    /// The state of `target`'s resource.
    fn validators(&self, target: Target) -> Self::Future;
}

impl<F, Fut> ValidatorSource for F
where
    F: Fn(Target) -> Fut,
    Fut: Future<Output = Result<ResourceState, BoxError>> + Send + 'static,
{
    type Future = Fut;

    fn validators(&self, target: Target) -> Fut {
        self(target)
    }
}

/// A [`ValidatorSource`] with its future boxed, as the layer stores it.
pub(crate) type DynSource =
    Arc<dyn Fn(Target) -> BoxFuture<Result<ResourceState, BoxError>> + Send + Sync>;

pub(crate) fn erase_source<V>(source: V) -> DynSource
where
    V: ValidatorSource + Send + Sync + 'static,
{
    Arc::new(move |target: Target| Box::pin(source.validators(target)) as BoxFuture<_>)
}

/// An error of the built-in store (only the Redis store fails).
#[derive(Debug, Clone)]
pub struct StoreError(StoreErrorInner);

#[cfg(feature = "redis")]
type StoreErrorInner = turret_redis::Error;
/// Without the `redis` feature the built-in store never fails.
#[cfg(not(feature = "redis"))]
type StoreErrorInner = std::convert::Infallible;

impl StoreError {
    /// Whether Redis could not be reached in time (timeout, open circuit breaker, lost
    /// connection), as opposed to a command Redis rejected.
    pub fn is_unavailable(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.0.is_unavailable();
        #[cfg(not(feature = "redis"))]
        match self.0 {}
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "validator store: {}", self.0)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The default bound of [`ValidatorStore::memory`].
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
/// The default lifetime of a claim (see [`ValidatorStore::claim_ttl`]).
pub const DEFAULT_CLAIM_TTL: Duration = Duration::from_secs(30);
/// The default lifetime of a recorded validator (see [`ValidatorStore::record_ttl`]).
pub const DEFAULT_RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// The built-in validator store: records the validators of each successful GET/HEAD and
/// write per resource key, and decides conditional writes with an atomic check-and-claim.
///
/// - [`ValidatorStore::memory`]: one process. Bounded (entries, evicting the least useful)
///   and each record expires after [`record_ttl`](Self::record_ttl) without refresh.
/// - [`ValidatorStore::redis`]: a fleet of instances sharing one Redis (node or cluster).
///   Check-and-claim is one Lua script; the record and its claim share a hash tag.
///
/// The store knows what it has seen. When a conditional write targets a resource it holds
/// no record for (never read through the layer, evicted, expired, flushed, a Redis restarted
/// empty), the layer first learns the current validators from its inner service: a GET of
/// the same target (the write's fields without its conditions, range and content fields, its
/// extensions, an empty body), whose `ETag`/`Last-Modified` (or the ETag hashed from its
/// body, as for any GET) are recorded, in the same atomic step as the claim, unless a record
/// or a claim appeared meanwhile. A 2xx GET without a validator means "exists, no validator
/// known"; any other status means "no current representation" (`If-Match` → 412,
/// `If-None-Match: *` proceeds). So a lost record never locks writers out, whatever sits in
/// front of the layer (a response cache answering GETs from storage, say), and a create-only
/// `If-None-Match: *` never overwrites a resource the store forgot. The GET costs one inner
/// request per write that finds no record. The store cannot tell whether a method would
/// create what does not exist, so `If-Match` on a missing resource is always 412 (never a
/// PUT that recreates something another client deleted), also for a DELETE whose plain
/// answer would be 404; a [`ValidatorSource`] can answer [`ResourceState::Unknown`] there.
///
/// The store is authoritative only when every write to the resource goes through the
/// layer; with writes elsewhere, use a [`ValidatorSource`] over the real data.
///
/// A conditional write *claims* the resource: while the claim is held, other conditional
/// writes to it get 412. The claim is released when the write finishes (recording the new
/// validators on a 2xx), fails, or its future is dropped, and it expires after
/// [`claim_ttl`](Self::claim_ttl) so that a crashed instance cannot block a resource.
///
/// When Redis is unavailable, the layer fails open: the write goes to the handler unchecked;
/// the state change is logged once and counted in
/// `turret_conditional_store_errors_total`.
#[derive(Clone)]
pub struct ValidatorStore {
    pub(crate) kind: StoreKind,
    pub(crate) claim_ttl: Duration,
    pub(crate) record_ttl: Duration,
}

#[derive(Clone)]
pub(crate) enum StoreKind {
    Memory(Arc<MemoryStore>),
    #[cfg(feature = "redis")]
    Redis(Arc<RedisStore>),
}

impl fmt::Debug for ValidatorStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            StoreKind::Memory(_) => "memory",
            #[cfg(feature = "redis")]
            StoreKind::Redis(_) => "redis",
        };
        f.debug_struct("ValidatorStore")
            .field("kind", &kind)
            .field("claim_ttl", &self.claim_ttl)
            .field("record_ttl", &self.record_ttl)
            .finish()
    }
}

/// What a check-and-claim decided.
#[derive(Debug)]
pub(crate) enum ClaimOutcome {
    /// The preconditions hold and the resource is now claimed with this token.
    Granted(String),
    /// A precondition is false.
    Failed,
    /// Another conditional write holds the resource.
    Busy,
    /// The store holds no record of the resource (never seen, evicted, flushed): the layer
    /// learns its validators from the inner service and claims again with them.
    NoRecord,
}

/// What the layer learned about a resource the store had no record of, from a GET of it
/// through the inner service.
#[derive(Debug, Clone)]
pub(crate) enum Learned {
    /// The GET was 2xx: the resource exists, with these validators (possibly none known).
    Current(Current),
    /// The GET was not 2xx: no current representation.
    Absent,
}

/// What a finished write does to the record.
#[derive(Debug, Clone)]
pub(crate) enum Update {
    /// The resource now has these validators (possibly none known).
    Set(Current),
    /// The resource is gone (a successful DELETE).
    Delete,
    /// Nothing changed (a failed write): only release the claim.
    Keep,
}

impl ValidatorStore {
    /// An in-process store bounded to [`DEFAULT_MAX_ENTRIES`] resources.
    pub fn memory() -> Self {
        Self::memory_with_capacity(DEFAULT_MAX_ENTRIES)
    }

    /// An in-process store bounded to `max_entries` resources.
    pub fn memory_with_capacity(max_entries: u64) -> Self {
        Self {
            kind: StoreKind::Memory(Arc::new(MemoryStore::new(max_entries))),
            claim_ttl: DEFAULT_CLAIM_TTL,
            record_ttl: DEFAULT_RECORD_TTL,
        }
    }

    /// A store in Redis, shared by every instance that uses the same Redis and key prefix.
    /// Keys: `{prefix}cond:{resource}` (a hash) and `{prefix}cond:{resource}:claim`.
    #[cfg(feature = "redis")]
    pub fn redis(redis: turret_redis::Redis) -> Self {
        Self {
            kind: StoreKind::Redis(Arc::new(RedisStore::new(redis))),
            claim_ttl: DEFAULT_CLAIM_TTL,
            record_ttl: DEFAULT_RECORD_TTL,
        }
    }

    /// How long a claim lasts if its write never finishes (a crashed instance). A handler that
    /// runs longer than this loses its exclusivity. Default 30 s; at least 1 ms.
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        self.claim_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// How long a record lives without being refreshed by a GET or a write. Default 24 h;
    /// at least 1 ms.
    pub fn record_ttl(mut self, ttl: Duration) -> Self {
        self.record_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The recorded validators of `resource`, or `None` if the store holds no record.
    pub async fn get(&self, resource: &str) -> Result<Option<Validators>, StoreError> {
        let current = match &self.kind {
            StoreKind::Memory(m) => m.lookup(resource, self.record_ttl),
            #[cfg(feature = "redis")]
            StoreKind::Redis(r) => r.lookup(resource).await.map_err(StoreError)?,
        };
        Ok(current.as_ref().map(Validators::from_current))
    }

    /// Looks up the current record, for `If-Range`.
    pub(crate) fn lookup(
        &self,
        resource: String,
    ) -> BoxFuture<Result<Option<Current>, StoreError>> {
        match &self.kind {
            StoreKind::Memory(m) => {
                let out = m.lookup(&resource, self.record_ttl);
                Box::pin(std::future::ready(Ok(out)))
            }
            #[cfg(feature = "redis")]
            StoreKind::Redis(r) => {
                let r = Arc::clone(r);
                Box::pin(async move {
                    let started = r.health.start();
                    let out = r.lookup(&resource).await;
                    r.health.observe(started, &out);
                    out.map_err(StoreError)
                })
            }
        }
    }

    /// Atomically: evaluates `cond` for an unsafe request against the record and, when it
    /// holds and no other claim is active, claims the resource.
    ///
    /// Without a record, `learned` decides: `None` answers [`ClaimOutcome::NoRecord`];
    /// `Some(Current)` records it (the record is still absent and nothing holds a claim:
    /// checked in the same atomic step) and evaluates against it; `Some(Absent)` evaluates
    /// against no representation.
    pub(crate) fn claim(
        &self,
        resource: String,
        cond: Arc<Conditions>,
        learned: Option<Learned>,
    ) -> BoxFuture<Result<ClaimOutcome, StoreError>> {
        let token = new_token();
        match &self.kind {
            StoreKind::Memory(m) => {
                let out = m.claim(
                    &resource,
                    &cond,
                    token,
                    learned.as_ref(),
                    self.claim_ttl,
                    self.record_ttl,
                );
                Box::pin(std::future::ready(Ok(out)))
            }
            #[cfg(feature = "redis")]
            StoreKind::Redis(r) => {
                let r = Arc::clone(r);
                let (claim_ttl, record_ttl) = (self.claim_ttl, self.record_ttl);
                Box::pin(async move {
                    let started = r.health.start();
                    let out = r
                        .claim(
                            &resource,
                            &cond,
                            token,
                            learned.as_ref(),
                            claim_ttl,
                            record_ttl,
                        )
                        .await;
                    r.health.observe(started, &out);
                    out.map_err(StoreError)
                })
            }
        }
    }

    /// Applies a finished write: updates the record and releases the claim `token` (if any
    /// and still held). Errors are logged, counted and otherwise ignored.
    pub(crate) fn complete(
        &self,
        resource: String,
        token: Option<String>,
        update: Update,
    ) -> BoxFuture<()> {
        match &self.kind {
            StoreKind::Memory(m) => {
                m.complete(&resource, token.as_deref(), &update);
                Box::pin(std::future::ready(()))
            }
            #[cfg(feature = "redis")]
            StoreKind::Redis(r) => {
                let r = Arc::clone(r);
                let ttl = self.record_ttl;
                Box::pin(async move {
                    let started = r.health.start();
                    let out = r.complete(&resource, token.as_deref(), &update, ttl).await;
                    r.health.observe(started, &out);
                })
            }
        }
    }

    /// Records the validators a successful GET/HEAD returned, unless a write holds a claim.
    /// Never waits: on Redis the write happens on a spawned task.
    pub(crate) fn record_read(&self, resource: String, current: Current) {
        match &self.kind {
            StoreKind::Memory(m) => m.record_read(&resource, current),
            #[cfg(feature = "redis")]
            StoreKind::Redis(r) => {
                let r = Arc::clone(r);
                let ttl = self.record_ttl;
                spawn_detached(async move {
                    let started = r.health.start();
                    let out = r.record_read(&resource, &current, ttl).await;
                    r.health.observe(started, &out);
                });
            }
        }
    }

    /// Releases a claim without waiting (from a `Drop`).
    pub(crate) fn release_detached(&self, resource: String, token: String) {
        match &self.kind {
            StoreKind::Memory(m) => m.complete(&resource, Some(&token), &Update::Keep),
            #[cfg(feature = "redis")]
            StoreKind::Redis(_) => {
                spawn_detached(self.complete(resource, Some(token), Update::Keep))
            }
        }
    }
}

/// Runs `fut` on the current tokio runtime, if there is one (a Redis store implies one).
#[cfg(feature = "redis")]
fn spawn_detached(fut: impl Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(fut);
    } else {
        tracing::debug!("no tokio runtime: validator store update dropped");
    }
}

/// A claim token unique across processes: a random per-process nonce and a counter.
fn new_token() -> String {
    use std::{
        hash::{BuildHasher, RandomState},
        sync::LazyLock,
    };
    static NONCE: LazyLock<u64> = LazyLock::new(|| RandomState::new().hash_one(std::process::id()));
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}{n:x}", *NONCE)
}

/// Logs and counts store failures once per change of state (healthy ↔ degraded).
///
/// Each operation takes a sequence number when it starts. An outcome changes the state only
/// if its operation started after the last outcome that agreed with the current state was
/// seen: under an outage, operations already in flight finish out of order (one answered
/// just before Redis went away, another timing out after it came back), and each such late
/// outcome used to flip the state, logging "failing" and "recovered" milliseconds apart.
#[cfg(feature = "redis")]
#[derive(Debug, Default)]
pub(crate) struct Health {
    next: AtomicU64,
    state: Mutex<HealthState>,
}

#[cfg(feature = "redis")]
#[derive(Debug, Default)]
struct HealthState {
    degraded: bool,
    /// Operations that started at or before this sequence number cannot change the state.
    fence: u64,
}

#[cfg(feature = "redis")]
impl Health {
    /// The sequence number of an operation starting now.
    pub(crate) fn start(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Notes the outcome of the operation that started with sequence number `started`;
    /// returns the new state when it changed (`Some(true)`: now degraded).
    pub(crate) fn observe<T>(
        &self,
        started: u64,
        result: &Result<T, turret_redis::Error>,
    ) -> Option<bool> {
        if let Err(e) = result {
            metrics::counter!(
                "turret_conditional_store_errors_total",
                "kind" => if e.is_unavailable() { "unavailable" } else { "other" }
            )
            .increment(1);
        }
        let failed = result.is_err();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Everything started so far began before this outcome was seen.
        let now = self.next.load(Ordering::Relaxed);
        if state.degraded == failed {
            state.fence = state.fence.max(now);
            return None;
        }
        if started <= state.fence {
            return None;
        }
        state.degraded = failed;
        state.fence = now;
        drop(state);
        match result {
            Ok(_) => tracing::info!("turret-conditional: validator store recovered"),
            Err(e) => tracing::warn!(
                error = %e,
                "turret-conditional: validator store failing, writes pass unchecked (fail open)"
            ),
        }
        Some(failed)
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::Health;

    fn unavailable() -> Result<(), turret_redis::Error> {
        Err(turret_redis::Error::Unavailable)
    }

    #[test]
    fn late_outcomes_of_older_operations_do_not_flap_the_state() {
        let health = Health::default();
        let before = health.start();
        let during = health.start();
        // The outage: the newer operation fails first.
        assert_eq!(health.observe(during, &unavailable()), Some(true));
        // The older one, answered just before the outage, is no evidence of recovery.
        assert_eq!(health.observe(before, &Ok(())), None);
        let failing = health.start();
        let slow = health.start();
        assert_eq!(health.observe(failing, &unavailable()), None);
        // Redis is back: an operation started now succeeds.
        let after = health.start();
        assert_eq!(health.observe(after, &Ok(())), Some(false));
        // One that started during the outage times out only now: no new "failing".
        assert_eq!(health.observe(slow, &unavailable()), None);
        assert_eq!(health.observe(health.start(), &Ok(())), None);
        // A real new outage is a change again, once.
        let first = health.start();
        let second = health.start();
        assert_eq!(health.observe(first, &unavailable()), Some(true));
        assert_eq!(health.observe(second, &unavailable()), None);
        let recovered = health.start();
        assert_eq!(health.observe(recovered, &Ok(())), Some(false));
    }
}
