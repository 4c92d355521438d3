//! Stampede protection: one origin call per key, in one process or across a whole fleet.
//!
//! When a hot key expires, every concurrent request goes to the database at once. This crate
//! gives the pieces to stop that, from the smallest to the whole pattern:
//!
//! - [`SingleFlight`]: concurrent calls with the same key share one computation in this
//!   process. The computation runs detached (a cancelled caller never cancels it), a panic
//!   resolves every waiter with [`Error::Panicked`], and waits can be bounded.
//! - [`LeaseLock`]: a lease lock with fencing tokens, in memory ([`MemoryLock`]) or on Redis
//!   for a fleet ([`RedisLock`], feature `redis`): `SET NX PX` with a 128-bit token, a
//!   watchdog extending the lease while the holder works, compare-and-delete release
//!   published on pub/sub so that waiters on every instance wake at once (jittered polling is
//!   only a fallback), and a monotonic fencing token per acquisition.
//! - [`should_refresh_early`]: XFetch (Vattani et al., VLDB 2015) probabilistic early
//!   refresh, a pure function.
//! - [`StampedeCache`]: cache-aside done right — `get_or_compute(key, ttl, || async { … })`
//!   with single-flight, the lease, a double-check after the lease, a fenced write, XFetch and
//!   stale-while-revalidate, over a bounded memory store, Redis, or both: `TieredStore`
//!   (feature `redis`), a bounded L1 in front of Redis, every instance's L1 kept coherent by
//!   pub/sub invalidation.
//! - [`CoalesceLayer`]: a tower layer coalescing identical in-flight `GET`/`HEAD` requests.
//!
//! When Redis is unreachable, everything degrades to in-process coalescing (each instance
//! computes at most once per key at a time), logs once per change of state, counts it in a
//! metric, and returns to fleet-wide protection by itself.
//!
//! # Example: single-flight
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
//! use turret_stampede::SingleFlight;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let flights: SingleFlight<String, Arc<Vec<u8>>, String> = SingleFlight::new();
//! let loads = Arc::new(AtomicUsize::new(0));
//! let load = |name: &str| {
//!     let loads = loads.clone();
//!     flights.call(name.to_owned(), move || async move {
//!         loads.fetch_add(1, Ordering::SeqCst);
//!         tokio::task::yield_now().await; // the slow part
//!         Ok(Arc::new(vec![1, 2, 3]))
//!     })
//! };
//! let (a, b) = tokio::join!(load("thumbnail"), load("thumbnail"));
//! assert!(Arc::ptr_eq(&a.unwrap(), &b.unwrap()), "the same value");
//! assert_eq!(loads.load(Ordering::SeqCst), 1);
//! # }
//! ```
//!
//! # Example: cache-aside
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use turret_stampede::{CacheKey, StampedeCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Memory store and lock: one process. `StampedeCache::redis(redis)` for a fleet.
//! let cache = StampedeCache::new().grace(Duration::from_secs(30));
//! let key = CacheKey::new("product").part("123");
//! let name: String = cache
//!     .get_or_compute(&key, Duration::from_secs(300), || async {
//!         Ok::<_, Infallible>(String::from("Laptop"))
//!     })
//!     .await
//!     .unwrap();
//! assert_eq!(name, "Laptop");
//! assert_eq!(cache.peek::<String>(&key).await.as_deref(), Some("Laptop"));
//! # }
//! ```
//!
//! # Example: coalescing requests
//!
//! ```
//! use std::{convert::Infallible, sync::{Arc, atomic::{AtomicUsize, Ordering}}};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use turret_stampede::CoalesceLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counter = calls.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(CoalesceLayer::new())
//!     .service(service_fn(move |_req: Request<String>| {
//!         counter.fetch_add(1, Ordering::SeqCst);
//!         async {
//!             tokio::task::yield_now().await;
//!             Ok::<_, Infallible>(Response::new(String::from("[{\"id\":1}]")))
//!         }
//!     }));
//! let get = || Request::get("/products?page=1").body(String::new()).unwrap();
//! let (a, b) = tokio::join!(svc.clone().oneshot(get()), svc.clone().oneshot(get()));
//! assert_eq!(a.unwrap().status(), StatusCode::OK);
//! assert_eq!(b.unwrap().status(), StatusCode::OK);
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! # }
//! ```
//!
//! # An expensive report, protected fleet-wide
//!
//! The usual cache-aside code for an expensive report is `GET`, and on a miss run the report
//! query and `SET … EX 3600`. When the hour is up, every instance and every request runs the
//! report query at once; a lock taken separately, polled every 100 ms, adds latency and
//! still lets each process's requests pile up behind it. With [`StampedeCache::redis`] the
//! same function runs the query once for the whole fleet: callers of one process share one flight, instances
//! share one Redis lease (the others sleep until its release is published, then read the
//! stored report), a hot report is refreshed before it expires (XFetch), a slightly stale one
//! is served at once while one instance refreshes it (`grace`), and a holder that stalled
//! past its lease cannot overwrite a newer report (the fencing token).
//!
// The example needs the `redis` feature: compiled with it, not run.
#![cfg_attr(feature = "redis", doc = "```no_run")]
#![cfg_attr(not(feature = "redis"), doc = "```ignore")]
//! use std::{sync::Arc, time::Duration};
//! use serde::{Deserialize, Serialize};
//! use turret_redis::{Redis, RedisConfig};
//! use turret_stampede::{CacheKey, Error, StampedeCache};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct SalesReport {
//!     total_cents: i64,
//!     orders: u64,
//! }
//!
//! #[derive(Debug, Clone)]
//! struct DbError(Arc<str>);
//!
//! /// The expensive query (seconds of aggregation in the database).
//! async fn execute_report_query(
//!     start: &str,
//!     end: &str,
//!     category: Option<&str>,
//! ) -> Result<SalesReport, DbError> {
//!     # let _ = (start, end, category);
//!     Ok(SalesReport { total_cents: 12_345_00, orders: 321 })
//! }
//!
//! async fn get_sales_report(
//!     cache: &StampedeCache,
//!     start_date: &str,
//!     end_date: &str,
//!     category: Option<&str>,
//! ) -> Result<SalesReport, Error<DbError>> {
//!     // Untrusted parts are escaped; a missing category is a shorter key, not a magic value.
//!     let mut key = CacheKey::new("sales_report").part(start_date).part(end_date);
//!     if let Some(category) = category {
//!         key = key.part("category").part(category);
//!     }
//!     let (start, end) = (start_date.to_owned(), end_date.to_owned());
//!     let category = category.map(str::to_owned);
//!     cache
//!         .get_or_compute_tagged(&key, Duration::from_secs(3600), &["sales"], move || async move {
//!             execute_report_query(&start, &end, category.as_deref()).await
//!         })
//!         .await
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = Redis::connect(RedisConfig::from_url("redis://127.0.0.1:6379")?.prefix("shop:")).await?;
//! let cache = StampedeCache::redis(redis).grace(Duration::from_secs(300));
//! let report = get_sales_report(&cache, "2024-01-01", "2024-01-31", Some("electronics")).await;
//! println!("{report:?}");
//! // A new order came in: drop every cached sales report, fleet-wide.
//! cache.invalidate_tag("sales").await?;
//! # Ok(()) }
//! ```

mod cache;
mod clock;
pub mod coalesce;
mod envelope;
mod error;
mod key;
pub mod lock;
mod options;
#[doc(hidden)]
pub mod __private {
    //! What `#[cached]` expansions name: not a public API.
    pub use crate::private::*;
}
mod private;
mod singleflight;
pub mod store;
mod xfetch;

pub use cache::{DEFAULT_LOCK_WAIT, StampedeCache};
pub use clock::{Clock, FakeClock, SystemClock};
pub use coalesce::{CoalesceLayer, Coalesced};
pub use error::Error;
pub use key::CacheKey;
#[cfg(feature = "redis")]
pub use lock::RedisLock;
pub use lock::{AnyLock, LeaseGuard, LeaseLock, LockBackend, MemoryLock};
pub use options::Options;
pub use singleflight::{OnTimeout, SingleFlight};
#[cfg(feature = "redis")]
pub use store::RedisStore;
pub use store::{AnyStore, MemoryStore, ValueStore};
#[cfg(feature = "redis")]
pub use store::{TieredStore, TieredStoreBuilder};
pub use xfetch::{DEFAULT_BETA, should_refresh_early};

/// `#[cached]`: caches an `async fn` in a [`StampedeCache`] (feature `macros`).
#[cfg(feature = "macros")]
pub use turret_macros::cached;
