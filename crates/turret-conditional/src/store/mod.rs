//! Where the layer learns a resource's current validators before a write:
//! a user's [`ValidatorSource`] or the built-in [`ValidatorStore`].

mod memory;
mod redis;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use http::HeaderValue;

use crate::headers::{Conditions, Current, EntityTag, from_secs, to_secs};

pub(crate) use self::memory::MemoryStore;
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

/// Tells the layer a resource's current validators before an unsafe request runs.
///
/// Implement it over the real source of truth (a row version or `updated_at` column) to
/// evaluate `If-Match` / `If-Unmodified-Since` / `If-None-Match` on writes. Return `Ok(None)`
/// when the resource does not exist. The layer does not serialize writes through a
/// `ValidatorSource`: two requests may both pass the check, so the handler must still make its
/// write conditional (`UPDATE … WHERE version = $1`) if it needs exactly-once. The built-in
/// [`ValidatorStore`] does serialize them.
///
/// An `Err` fails open: the request goes to the handler, and the error is logged and counted.
///
/// Implemented for closures and `async fn`s `Fn(String) -> impl Future<Output =
/// Result<Option<Validators>, BoxError>>`.
pub trait ValidatorSource {
    /// The future [`validators`](Self::validators) returns.
    type Future: Future<Output = Result<Option<Validators>, BoxError>> + Send + 'static;

    /// The current validators of `resource` (a key made by
    /// [`MakeResourceKey`](crate::MakeResourceKey)), or `None` if it does not exist.
    fn validators(&self, resource: String) -> Self::Future;
}

impl<F, Fut> ValidatorSource for F
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Option<Validators>, BoxError>> + Send + 'static,
{
    type Future = Fut;

    fn validators(&self, resource: String) -> Fut {
        self(resource)
    }
}

/// A [`ValidatorSource`] with its future boxed, as the layer stores it.
pub(crate) type DynSource =
    Arc<dyn Fn(String) -> BoxFuture<Result<Option<Validators>, BoxError>> + Send + Sync>;

pub(crate) fn erase_source<V>(source: V) -> DynSource
where
    V: ValidatorSource + Send + Sync + 'static,
{
    Arc::new(move |resource: String| Box::pin(source.validators(resource)) as BoxFuture<_>)
}

/// An error of the built-in store (only the Redis store fails).
#[derive(Debug, Clone)]
pub struct StoreError(turret_redis::Error);

impl StoreError {
    /// Whether Redis could not be reached in time (timeout, open circuit breaker, lost
    /// connection), as opposed to a command Redis rejected.
    pub fn is_unavailable(&self) -> bool {
        self.0.is_unavailable()
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
/// The store knows what it has seen: a resource it holds no record for is treated as absent
/// (`If-Match` → 412, so the client re-reads it and the GET records it; `If-None-Match: *`
/// proceeds). It is authoritative only when every write to the resource goes through the
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
    Redis(Arc<RedisStore>),
}

impl fmt::Debug for ValidatorStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            StoreKind::Memory(_) => "memory",
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
            StoreKind::Redis(r) => {
                let r = Arc::clone(r);
                Box::pin(async move {
                    let out = r.lookup(&resource).await;
                    r.health.observe(&out);
                    out.map_err(StoreError)
                })
            }
        }
    }

    /// Atomically: evaluates `cond` for an unsafe request against the record and, when it
    /// holds and no other claim is active, claims the resource.
    pub(crate) fn claim(
        &self,
        resource: String,
        cond: Arc<Conditions>,
    ) -> BoxFuture<Result<ClaimOutcome, StoreError>> {
        let token = new_token();
        match &self.kind {
            StoreKind::Memory(m) => {
                let out = m.claim(&resource, &cond, token, self.claim_ttl, self.record_ttl);
                Box::pin(std::future::ready(Ok(out)))
            }
            StoreKind::Redis(r) => {
                let r = Arc::clone(r);
                let ttl = self.claim_ttl;
                Box::pin(async move {
                    let out = r.claim(&resource, &cond, token, ttl).await;
                    r.health.observe(&out);
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
            StoreKind::Redis(r) => {
                let r = Arc::clone(r);
                let ttl = self.record_ttl;
                Box::pin(async move {
                    let out = r.complete(&resource, token.as_deref(), &update, ttl).await;
                    r.health.observe(&out);
                })
            }
        }
    }

    /// Records the validators a successful GET/HEAD returned, unless a write holds a claim.
    /// Never waits: on Redis the write happens on a spawned task.
    pub(crate) fn record_read(&self, resource: String, current: Current) {
        match &self.kind {
            StoreKind::Memory(m) => m.record_read(&resource, current),
            StoreKind::Redis(r) => {
                let r = Arc::clone(r);
                let ttl = self.record_ttl;
                spawn_detached(async move {
                    let out = r.record_read(&resource, &current, ttl).await;
                    r.health.observe(&out);
                });
            }
        }
    }

    /// Releases a claim without waiting (from a `Drop`).
    pub(crate) fn release_detached(&self, resource: String, token: String) {
        match &self.kind {
            StoreKind::Memory(m) => m.complete(&resource, Some(&token), &Update::Keep),
            StoreKind::Redis(_) => {
                spawn_detached(self.complete(resource, Some(token), Update::Keep))
            }
        }
    }
}

/// Runs `fut` on the current tokio runtime, if there is one (a Redis store implies one).
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
#[derive(Debug, Default)]
pub(crate) struct Health {
    degraded: AtomicBool,
}

impl Health {
    pub(crate) fn observe<T>(&self, result: &Result<T, turret_redis::Error>) {
        match result {
            Ok(_) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("turret-conditional: validator store recovered");
                }
            }
            Err(e) => {
                metrics::counter!(
                    "turret_conditional_store_errors_total",
                    "kind" => if e.is_unavailable() { "unavailable" } else { "other" }
                )
                .increment(1);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "turret-conditional: validator store failing, writes pass unchecked (fail open)"
                    );
                }
            }
        }
    }
}
