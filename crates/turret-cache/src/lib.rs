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
//! `no-store`, unqualified `private` or unqualified `no-cache` (stored-and-revalidated is not
//! implemented yet), without `Set-Cookie` (unless a qualified `private`/`no-cache` names it),
//! without `Vary: *`, to a request without `Authorization` unless the response is `public`,
//! `s-maxage` or `must-revalidate` (§3.5), and with explicit freshness, or else a
//! heuristically cacheable status (RFC 9110 §15.1) and either
//! [`heuristic_freshness`](ResponseCacheLayer::heuristic_freshness) (off by default) or a
//! [`default_ttl`](ResponseCacheLayer::default_ttl). It must be fresh on arrival and its
//! body's exact size known and at most [`max_entry_size`](ResponseCacheLayer::max_entry_size);
//! everything else (SSE, downloads, streams) passes through untouched, without buffering.
//! `Connection` and the fields it lists, the proxy authentication fields and the fields named
//! by a qualified `private` / `no-cache` are removed from the stored copy.
//!
//! Freshness lifetime: `s-maxage`, then `max-age`, then `Expires − Date` (§4.2.1); an invalid
//! or duplicated directive, an invalid `Expires` or an invalid `Age` make the response stale.
//! Age is computed per §4.2.3 and sent on every hit; `Date` is never rewritten.
//!
//! # Keys and Vary
//!
//! The primary key is `scheme://host/path?query`, method-independent: the host (from the URI
//! or `Host`) is always part of it, query parameters are sorted by name. Under one key, one
//! response is kept per `Vary` secondary key (at most [`MAX_VARIANTS`]); an absent field
//! matches only an absent field and `Vary: *` never matches (§4.1). HEAD is answered from a
//! stored GET; a HEAD miss does not fill.
//!
//! # Requests
//!
//! - `Cache-Control: no-store` on the request: forwarded, nothing stored.
//! - `Cache-Control: no-cache`: forwarded, the response may be stored.
//! - A 2xx or 3xx to an unsafe or unknown method invalidates the target URI and the
//!   same-origin `Location` / `Content-Location` (§4.4).
//! - Concurrent misses on one key share one inner call (in this process) through
//!   [`turret_stampede::SingleFlight`]; waiters whose Vary key does not match, or whose leader
//!   got an uncacheable response, are released at once and make their own call.
//!
//! Every response carries RFC 9211 `Cache-Status` (`turret; hit; ttl=N`,
//! `turret; fwd=miss|stale|vary-miss|request|method[; stored][; collapsed]`), appended to any
//! upstream members, and `X-Cache: HIT|MISS`.
//!
//! # Not yet
//!
//! Revalidation (stored `no-cache` responses, 304 updates, conditional hits), stale serving
//! (`max-stale`, RFC 5861), targeted fields (RFC 9213), the Redis and two-tier storages,
//! tags and per-route policies are not implemented yet: what they would need is forwarded.
//!
//! # Storage
//!
//! [`CacheStorage`] is the backend trait; [`MemoryStorage`] (moka, bounded by bytes, each key
//! expiring with its freshness) is the default. [`CachedResponse::encode`] /
//! [`CachedResponse::decode`] give a compact binary form for storages that keep bytes. A
//! storage error is a miss (logged and counted), never an error to the client.

mod body;
mod cache_control;
mod entry;
mod freshness;
mod future;
mod invalidator;
mod key;
mod layer;
mod lease;
mod policy;
mod service;
mod storage;
#[cfg(test)]
mod tests;
mod validate;

pub use body::ResponseBody;
pub use entry::{CachedResponse, DecodeError};
pub use future::ResponseFuture;
pub use invalidator::CacheInvalidator;
pub use layer::{
    DEFAULT_KEEP_FOR_REVALIDATION, DEFAULT_LEASE_WAIT, DEFAULT_MAX_ENTRY_SIZE, ResponseCacheLayer,
    SetCookie,
};
pub use policy::{MakeCacheKey, Policy, QueryKey};
pub use service::ResponseCache;
pub use storage::{
    CacheStorage, MAX_VARIANTS, MemoryStorage, Purge, StorageError, StorageFuture, Variants,
};
pub use turret_stampede::{Clock, FakeClock, SystemClock};
