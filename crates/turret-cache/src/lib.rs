//! An RFC 9111 shared HTTP response cache for any tower service: fresh responses to GET and
//! HEAD are answered from storage without calling the inner service.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, sync::{Arc, atomic::{AtomicUsize, Ordering}}, time::Duration};
//! use bytes::Bytes;
//! use http::{Request, Response, header};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use turret_cache::ResponseCacheLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counter = calls.clone();
//! let svc = ServiceBuilder::new()
//!     // Products send no caching headers: keep them 5 minutes.
//!     .layer(ResponseCacheLayer::new().default_ttl(Duration::from_secs(300)))
//!     .service(service_fn(move |_req: Request<()>| {
//!         counter.fetch_add(1, Ordering::SeqCst);
//!         async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(r#"[{"id":7}]"#))) }
//!     }));
//!
//! let get = || Request::get("/products").header(header::HOST, "shop.example").body(()).unwrap();
//! let res = svc.clone().oneshot(get()).await.unwrap();
//! assert_eq!(res.headers()["cache-status"], "turret; fwd=miss; stored");
//!
//! let res = svc.clone().oneshot(get()).await.unwrap();
//! assert_eq!(res.headers()["x-cache"], "HIT");
//! assert_eq!(res.headers()[header::AGE], "0");
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//!
//! // A successful write to the same URI invalidates it (RFC 9111 §4.4).
//! svc.clone().oneshot(Request::post("/products").header(header::HOST, "shop.example").body(()).unwrap()).await.unwrap();
//! let res = svc.oneshot(get()).await.unwrap();
//! assert_eq!(res.headers()["x-cache"], "MISS");
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # }
//! ```
//!
//! # What is stored (RFC 9111 §3, shared cache)
//!
//! A response to GET whose status is final and is not 206, 304 or 429 (RFC 6585), without
//! `no-store` or unqualified `private`, without `Set-Cookie` (unless a qualified
//! `private`/`no-cache` names it, or [`SetCookie::StoreWithout`]), without `Vary: *`, to a
//! request without `Authorization` unless the response is `public`, `s-maxage` or
//! `must-revalidate` (§3.5), and with explicit freshness, or else a heuristically cacheable
//! status (RFC 9110 §15.1) and either [`heuristic_freshness`](ResponseCacheLayer::heuristic_freshness)
//! (off by default) or a default TTL ([`ResponseCacheLayer::default_ttl`], [`Policy::ttl`]).
//! An unqualified `no-cache` response is stored and revalidated on every reuse. Its body
//! must be at most [`max_entry_size`](ResponseCacheLayer::max_entry_size): a body of a known
//! size within it is read, stored, then sent; a body of unknown size (SSE, chunked
//! downloads) streams to the client as it arrives while a bounded copy is kept, stored
//! when the body ends within the bound (a streaming fill:
//! [`max_fill_bytes_in_flight`](ResponseCacheLayer::max_fill_bytes_in_flight) bounds all
//! copies; [`stream_above`](ResponseCacheLayer::stream_above) streams large known sizes
//! too); anything larger streams through untouched.
//! `Connection` and the fields it lists, the proxy authentication fields and the fields named
//! by a qualified `private` / `no-cache` are removed from the stored copy.
//!
//! Freshness lifetime: `s-maxage`, then `max-age`, then `Expires − Date` (§4.2.1); an invalid
//! or duplicated directive, an invalid `Expires` or an invalid `Age` make the response stale.
//! Age is computed per §4.2.3 and sent on every hit; `Date` is never rewritten. A valid
//! RFC 9213 targeted field — the layer's own ([`targeted_field`](ResponseCacheLayer::targeted_field))
//! or `CDN-Cache-Control` — replaces `Cache-Control` and `Expires`; an invalid one is ignored.
//!
//! The backend keeps an entry for its freshness left plus its stale window: the RFC 5861
//! windows, and [`keep_for_revalidation`](ResponseCacheLayer::keep_for_revalidation) when it
//! has a validator. Nothing is kept forever.
//!
//! # Keys and Vary
//!
//! The primary key is `scheme://host/path?query`, method-independent: the host (from the URI
//! or `Host`, escaped; a `Host` that disagrees with the URI's authority is added to the key)
//! is always part of it. The query is keyed as the handler's `Query` sees it: decoded as
//! `application/x-www-form-urlencoded` (`%XX`, `+` as a space), sorted stably by name (so
//! repeated names keep their order) and re-encoded canonically, so two queries a handler can
//! tell apart never share an entry; [`QueryKey`] picks the parameters that count by their
//! decoded name. Under one key, one response is kept per `Vary` secondary key (at most
//! [`MAX_VARIANTS`]; [`Policy::key_headers`] adds fields as if `Vary` named them), selected by
//! the same field lines, byte for byte; an absent field matches only an absent field and
//! `Vary: *` never matches (§4.1). [`MakeCacheKey`]
//! replaces the default key. HEAD is answered from a stored GET; a HEAD miss does not fill.
//!
//! # Requests
//!
//! - `Cache-Control: no-store`: forwarded, nothing stored. `no-cache`, `max-age`, `min-fresh`:
//!   a stored response that does not fit is revalidated. `max-stale` accepts a stale one;
//!   `only-if-cached` gets a 504 when nothing fits (RFC 9111 §5.2.1).
//! - `If-None-Match` / `If-Modified-Since` are answered from storage: a 304 without calling
//!   the inner service when the client's copy is current (RFC 9110 §13.2.2). `If-Match`
//!   and `If-Unmodified-Since` go to the origin as sent.
//! - `Range` (RFC 9110 §14): a single `bytes` range of a stored `200` is answered `206` from
//!   storage (`Content-Range`, the stored validators; `Cache-Status` says `hit`), an
//!   unsatisfiable one `416` with `Content-Range: bytes */LEN`, a malformed one or several
//!   ranges the whole `200`; `If-Range` with a strong `ETag` or a strong `Last-Modified`
//!   date is evaluated against the stored response (no match: the whole `200`). On a miss the
//!   cache asks the origin for the whole representation (without `Range` / `If-Range`),
//!   stores it and answers the range from it; a `206` from the origin (a hit-for-miss URL,
//!   which is sent on as the client asked) passes through unstored. `HEAD` ignores `Range`.
//! - A 2xx or 3xx to an unsafe or unknown method invalidates the target URI and the
//!   same-origin `Location` / `Content-Location` (§4.4), plus the tags of the layer's
//!   [`invalidate_on_write`](ResponseCacheLayer::invalidate_on_write) rules.
//!
//! # Validation and stale responses
//!
//! A stale response with an `ETag` or `Last-Modified` is revalidated with a conditional
//! request; a 304 updates the stored fields (never `Content-Length`) and makes it fresh again
//! (RFC 9111 §4.3). `stale-while-revalidate` (RFC 5861 §3, or [`Policy::stale_while_revalidate`])
//! serves the stale response at once and refreshes it once in the background (once per
//! process; once per fleet with a [`fill_lease`](ResponseCacheLayer::fill_lease)).
//! `stale-if-error` serves it when the origin answers 500/502/503/504 or fails. `no-cache`,
//! `must-revalidate`, `proxy-revalidate` and `s-maxage` forbid stale serving; then an origin
//! failure gives a 504 (RFC 9111 §5.2.2.2). A timeout is an error of the inner service: put a
//! `tower::timeout::TimeoutLayer` inside the cache to bound the wait.
//!
//! # Misses
//!
//! Concurrent misses on one key share one inner call in the process through
//! [`turret_stampede::SingleFlight`], and with a [`fill_lease`](ResponseCacheLayer::fill_lease)
//! one call in the fleet: the instance holding the lease fills, the others wait for its
//! release (woken by notification, bounded) and read what it stored. Waiters whose Vary key
//! does not match, or whose leader got an uncacheable response, are released at once and
//! make their own call.
//!
//! # Application policy
//!
//! [`ResponseCacheLayer::route`] gives groups of paths a [`Policy`]: a default TTL, which
//! query parameters and headers are in the key, tags, stale windows, or bypass. Responses
//! are tagged by their policy and by a `Surrogate-Key` / `Cache-Tag` field (removed before
//! the client sees it). A [`CacheInvalidator`] invalidates by URI, tag or application event,
//! hard or soft (stale, so the next request revalidates). [`ResponseCache::warm`] fills the
//! cache ahead of traffic.
//!
//! Every response carries RFC 9211 `Cache-Status` (`turret; hit; ttl=N`,
//! `turret; fwd=miss|stale|vary-miss|request|method|bypass[; fwd-status=N][; stored][; collapsed]`,
//! `detail=stale-while-revalidate|stale-if-error` for stale ones), appended to any upstream
//! members, and `X-Cache: HIT|MISS|STALE|REVALIDATED`. Metrics:
//! `turret_cache_requests_total{outcome, policy}`, `turret_cache_stored_bytes_total{policy}`,
//! `turret_cache_invalidations_total`, `turret_cache_tag_invalidations_total`,
//! `turret_cache_backend_errors_total{op}`; `tracing` debug events per decision.
//!
//! # Storage
//!
//! [`CacheStorage`] is the backend trait; [`MemoryStorage`] (`quick_cache`, bounded by bytes, each key
//! expiring with its freshness and stale window, tags indexed) is the default. With the
//! `redis` feature, [`RedisStorage`] keeps entries in Redis (one node or cluster) and
//! [`TieredStorage`] puts a memory L1 in front of it, evicting L1 copies on every instance
//! when one invalidates. [`CachedResponse::encode`] / [`CachedResponse::decode`] give the
//! compact binary form; corrupt bytes read back are a miss. A storage error is a miss
//! (logged and counted), never an error to the client.

mod admit;
mod body;
mod cache_control;
mod entry;
mod fill;
mod freshness;
mod future;
mod invalidator;
mod key;
mod layer;
mod lease;
mod lookup;
mod miss;
mod policy;
mod purge;
mod range;
#[cfg(feature = "redis")]
mod redis_storage;
mod respond;
mod service;
mod storage;
#[cfg(test)]
mod tests;
#[cfg(feature = "redis")]
mod tiered;
mod validate;

pub use body::ResponseBody;
pub use entry::{CachedResponse, DecodeError};
pub use future::ResponseFuture;
pub use invalidator::CacheInvalidator;
pub use layer::{
    DEFAULT_FILL_BYTES_IN_FLIGHT, DEFAULT_HIT_FOR_MISS, DEFAULT_KEEP_FOR_REVALIDATION,
    DEFAULT_LEASE_WAIT, DEFAULT_MAX_ENTRY_SIZE, ResponseCacheLayer, SetCookie,
};
pub use policy::{MakeCacheKey, Policy, QueryKey};
pub use purge::{InvalidPurgeToken, MAX_PURGE_TAGS, MAX_PURGE_TARGET, PurgeAuth, PurgeService};
#[cfg(feature = "redis")]
pub use redis_storage::{DEFAULT_KEEP_DECODED, RedisStorage};
pub use service::ResponseCache;
pub use storage::{
    CacheStorage, MAX_VARIANTS, MemoryStorage, Purge, StorageError, StorageFuture, Variants,
};
#[cfg(feature = "redis")]
pub use tiered::{DEFAULT_L1_TTL, TieredStorage, TieredStorageBuilder};
pub use turret_stampede::{Clock, FakeClock, SystemClock};
