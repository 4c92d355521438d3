//! Coalesces identical in-flight `GET`/`HEAD` requests into one inner call.
//!
//! Requests are identical when their method, URI, `Host` field and the configured headers
//! (say `accept-encoding`, `authorization`) are, byte for byte. The first one calls the inner
//! service; the others wait for its response. A response whose body has an exact size hint
//! within the bound (default 1 MiB) is collected once and fanned out to every waiter (their
//! responses carry a [`Coalesced`] extension); a bigger or streaming body, a response whose
//! `Vary` names a field the layer does not coalesce on (or `*`: the waiters may differ in
//! it), an error, or a leader dropped before its response releases the waiters at once to
//! make their own calls, and the leader's own response streams through untouched.
//!
//! Other methods pass through untouched.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, sync::{Arc, atomic::{AtomicUsize, Ordering}}};
//! use http::{Request, Response};
//! use http_body_util::BodyExt;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use turret_stampede::{Coalesced, CoalesceLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counter = calls.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(CoalesceLayer::new().vary_on(http::header::ACCEPT_ENCODING))
//!     .service(service_fn(move |_req: Request<String>| {
//!         let counter = counter.clone();
//!         async move {
//!             counter.fetch_add(1, Ordering::SeqCst);
//!             tokio::task::yield_now().await; // an expensive report query
//!             Ok::<_, Infallible>(Response::new(String::from("report")))
//!         }
//!     }));
//!
//! let get = || Request::get("/reports/sales?from=2024-01-01").body(String::new()).unwrap();
//! let (a, b) = tokio::join!(svc.clone().oneshot(get()), svc.clone().oneshot(get()));
//! let (a, b) = (a.unwrap(), b.unwrap());
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! assert!(b.extensions().get::<Coalesced>().is_some());
//! assert_eq!(a.into_body().collect().await.unwrap().to_bytes(), "report");
//! assert_eq!(b.into_body().collect().await.unwrap().to_bytes(), "report");
//! # }
//! ```

// Imports run one way: layer → service → future → flight (the in-flight table).
mod body;
mod flight;
mod future;
mod layer;
mod service;

pub use body::ResponseBody;
pub use flight::Coalesced;
pub use future::ResponseFuture;
pub use layer::{CoalesceLayer, DEFAULT_MAX_BODY};
pub use service::Coalesce;

#[cfg(test)]
mod tests;
