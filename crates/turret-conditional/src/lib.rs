//! Conditional requests for any tower service: ETag generation and RFC 9110 precondition
//! evaluation (304 Not Modified, 412 Precondition Failed, 428 Precondition Required), with
//! lost-update prevention decided before the handler runs.
//!
//! # Example
//!
//! GET revalidation: the layer computes a strong ETag from the body, and a client that sends
//! it back in `If-None-Match` gets a 304 without the body.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode, header};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use turret_conditional::ConditionalLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(ConditionalLayer::new())
//!     .service(service_fn(|_req: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(r#"{"id":7}"#)))
//!     }));
//!
//! let res = svc.clone().oneshot(Request::get("/items/7").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! let etag = res.headers()[header::ETAG].clone();
//!
//! let revalidate = Request::get("/items/7")
//!     .header(header::IF_NONE_MATCH, etag.clone())
//!     .body(())
//!     .unwrap();
//! let res = svc.oneshot(revalidate).await.unwrap();
//! assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
//! assert_eq!(res.headers()[header::ETAG], etag);
//! # }
//! ```
//!
//! Optimistic concurrency on PUT: with a [`ValidatorStore`], the layer records the ETag of
//! each GET and answers a PUT whose `If-Match` is stale with 412 *before* the handler runs.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Method, Request, Response, StatusCode, header};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use turret_conditional::{ConditionalLayer, ValidatorStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(ConditionalLayer::new().validator_store(ValidatorStore::memory()))
//!     .service(service_fn(|req: Request<()>| async move {
//!         let mut res = Response::new(Full::<Bytes>::default());
//!         let version = if req.method() == Method::PUT { "\"v2\"" } else { "\"v1\"" };
//!         res.headers_mut().insert(header::ETAG, version.parse().unwrap());
//!         Ok::<_, Infallible>(res)
//!     }));
//!
//! // Read: the store learns "v1".
//! let res = svc.clone().oneshot(Request::get("/doc").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.headers()[header::ETAG], "\"v1\"");
//!
//! // Write with the current tag: performed; the store now holds "v2".
//! let put = |tag: &str| Request::put("/doc").header(header::IF_MATCH, tag).body(()).unwrap();
//! let res = svc.clone().oneshot(put("\"v1\"")).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//!
//! // A second writer that also read "v1" would overwrite that change: 412.
//! let res = svc.oneshot(put("\"v1\"")).await.unwrap();
//! assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
//! # }
//! ```
//!
//! # ETag generation
//!
//! A response to GET or HEAD with status 200 that has neither `ETag` nor `Last-Modified`, and
//! whose body has an exact known size (`size_hint().exact()`) of at most
//! [`max_body_size`](ConditionalLayer::max_body_size) (1 MiB), is buffered (bounded: a body
//! that lies about its size stops being buffered at the limit and streams on) and gets a strong
//! ETag: the first 128 bits of its SHA-256 in base64url ([`Sha256Etag`]). Bodies that are
//! larger or of unknown size (streams) pass through untouched, without an ETag and without
//! buffering. A handler's own `ETag` or `Last-Modified` always wins. Statuses, methods, weak
//! tags and the hash are configurable ([`MakeEtag`]).
//!
//! ## Ordering with compression
//!
//! A strong ETag names one exact byte sequence, so each content-coding needs its own
//! (RFC 9110 §8.8.3). Two correct set-ups with tower-http's `CompressionLayer`:
//!
//! - **Conditional outside compression** (`ServiceBuilder::new().layer(ConditionalLayer::new())
//!   .layer(CompressionLayer::new())`): the layer hashes the bytes actually sent, so gzip and
//!   identity get distinct strong tags. A compressed body whose size is unknown (tower-http
//!   compresses as a stream) gets no generated ETag; a pre-compressed body of known size does.
//! - **Conditional inside compression** (`…layer(CompressionLayer::new()).layer(
//!   ConditionalLayer::new().weak_etags(true))`): the layer hashes the identity body and the
//!   tag covers every coding, so it must be weak; `If-None-Match` uses weak comparison, so
//!   revalidation still yields 304s, but `If-Match` / `If-Range` (strong) never match it.
//!
//! # Precondition evaluation (RFC 9110 §13.2.2)
//!
//! For GET and HEAD the inner service runs first; when its response is 2xx, the layer
//! evaluates, in order: `If-Match` (strong; false → 412), else `If-Unmodified-Since`
//! (false → 412), `If-None-Match` (weak; false → 304), else `If-Modified-Since` (ignored if
//! invalid, a list, or without `Last-Modified`; false → 304), against the response's `ETag` /
//! `Last-Modified`. A non-2xx response (404, 3xx, 5xx) passes through unchanged, as does a
//! response the handler already made conditional (304/412). A 304 carries exactly
//! `Content-Location`, `Date`, `ETag`, `Vary`, `Cache-Control`, `Expires` of the 200, and
//! `Last-Modified` only without `ETag`; no body, no `Content-Type`, and no `Content-Length`
//! (a 304 to HEAD carries the 200's, RFC 9110 §8.6). CONNECT, OPTIONS and TRACE are never
//! touched.
//!
//! ## HEAD
//!
//! A HEAD response has the fields a GET would have (RFC 9110 §9.3.2), the ETag too, and is
//! evaluated the same way (§13.2.2). But an inner service answers a HEAD without a body, so
//! there is nothing to hash. While HEAD is one of the [`etag_methods`](
//! ConditionalLayer::etag_methods) (the default), the layer therefore asks its inner service
//! for a GET instead, without the client's conditional and `Range` fields, evaluates the
//! conditions itself on that 200 and answers the HEAD with the GET's fields, its
//! `Content-Length`, and no body; the GET's body is dropped unread unless it is hashed. A
//! response cache inside the layer serves that GET from storage; without one, a HEAD costs
//! what a GET costs (axum, for one, runs the GET handler for a HEAD anyway). Leave HEAD out
//! of `etag_methods` to pass HEADs through as they are, without generated ETags.
//!
//! `If-Range` (GET with `Range`): the layer keeps `Range` only when `If-Range` matches the
//! current validators known *before* the handler runs (store or source): a strong exact ETag,
//! or a date equal to a Last-Modified at least a second old. Otherwise (no match, weak tag,
//! invalid value, nothing known) it removes `Range`, so the handler answers a full 200.
//!
//! # Writes: lost-update prevention
//!
//! For any other method (PUT, PATCH, DELETE, POST, …), `If-Match`, `If-Unmodified-Since` and
//! `If-None-Match` are decided before the handler runs, against:
//!
//! - a [`ValidatorSource`] of your own (the resource's row version, say), which answers a
//!   [`ResourceState`] for the request's [`Target`]: the current validators, "absent" (the
//!   request would create it: `If-Match` fails), or "unknown" (the request would fail
//!   without its preconditions, 404 or 400, say: RFC 9110 §13.2.1 says to ignore them, so the
//!   handler answers), or
//! - the built-in [`ValidatorStore`] (memory, or Redis for a fleet), which records the
//!   validators of successful GETs and writes per resource key ([`MakeResourceKey`], default
//!   the path and query) and makes check-and-claim one atomic step: of two concurrent writes
//!   with the same `If-Match`, exactly one reaches the handler, the other gets 412. A 2xx write
//!   records the `ETag`/`Last-Modified` it returned (DELETE removes the record; POST marks the
//!   target changed with unknown validators); any other outcome, an inner error or a dropped
//!   future releases the claim. A write to a resource the store has no record of first learns
//!   its validators with a GET through the inner service (see [`ValidatorStore`]), so the
//!   order of this layer and a response cache never matters for correctness (README, "Layer
//!   order").
//!
//! Without either, write preconditions are left to the handler. With
//! [`require_precondition`](ConditionalLayer::require_precondition), unsafe requests without a
//! precondition get 428 (RFC 6585).
//!
//! The layer's own 412 and 428 carry a small RFC 9457 problem details body
//! (`application/problem+json`: `type`, `title`, `status`, `detail`; [`problem_json`]);
//! [`on_rejection`](ConditionalLayer::on_rejection) builds them your way.
//!
//! # The ETag of a write
//!
//! A successful `PUT` or `PATCH` response carries the new `ETag`, so a client can send it in
//! its next `If-Match` without reading the resource again (on by default;
//! [`write_etags(false)`](ConditionalLayer::write_etags) turns it off):
//!
//! - the handler's own `ETag` (or `Last-Modified`) always wins, as on reads;
//! - with a [`ValidatorSource`], the layer asks it for the target's validators after the
//!   write (as for a GET's `If-Range`) and sends what it answers: the source's versions are
//!   the truth;
//! - otherwise (the built-in store, or neither), a `200` with a non-empty body of known size
//!   up to [`max_body_size`](ConditionalLayer::max_body_size) gets the tag hashed from that
//!   body — the tag a GET gets when the handler answers a write with the new
//!   representation, as axum handlers returning `Json(product)` from both routes do. The
//!   store records it as the new validators. A `204`, an empty or a streamed body gets no tag
//!   (the store then records "changed, no validator known", and the next `If-Match` makes the
//!   layer learn the current one with a GET).
//!
//! A handler whose write response is *not* the representation a GET returns (a summary, a
//! message) should set its own `ETag` or turn this off: the hashed tag would then name bytes
//! no GET returns, and an `If-Match` with it fails once a GET has recorded the real one.
//!
//! # Degraded mode
//!
//! When the Redis store (or a source) fails, the layer fails open: writes reach the handler
//! unchecked, GETs are unaffected. The change of state is logged once (`tracing` warn, then info
//! on recovery; operations still in flight when it changed, finishing late, do not flip it
//! back) and each failure is counted in `turret_conditional_store_errors_total{kind}`.
//!
//! # Request bodies
//!
//! The service needs `ReqBody: Default` (axum's `Body`, `http_body_util::{Full, Empty}`,
//! `()`, …): the GET it makes to learn validators has an empty body. Wrap hyper's
//! `Incoming` in one of those (`req.map(axum::body::Body::new)`) before this layer.
//!
//! # Metrics
//!
//! `turret_conditional_responses_total{outcome}` with `outcome` = `304`, `412`, `428`,
//! `etag_generated`, `passthrough` (a non-2xx GET/HEAD response left alone).

mod body;
mod etag;
mod future;
mod headers;
mod layer;
mod policy;
mod precondition;
mod rejection;
mod service;
mod store;

pub use body::ResponseBody;
pub use etag::{MakeEtag, Sha256Etag};
pub use future::ResponseFuture;
pub use layer::{ConditionalLayer, DEFAULT_MAX_BODY_SIZE};
pub use policy::{MakeResourceKey, PathAndQuery};
pub use rejection::{PROBLEM_JSON, problem_json};
pub use service::Conditional;
pub use store::{
    BoxError, DEFAULT_CLAIM_TTL, DEFAULT_MAX_ENTRIES, DEFAULT_RECORD_TTL, ResourceState,
    StoreError, Target, ValidatorSource, ValidatorStore, Validators,
};
