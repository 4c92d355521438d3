use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::future::{FutureExt as _, Shared};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use tokio::sync::oneshot;
use tower_service::Service;

use super::{
    future::ResponseFuture,
    layer::{CoalesceLayer, Config},
};

/// Marks a response that was fanned out from another request's inner call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesced;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RequestKey {
    method: Method,
    uri: Uri,
    /// The `Host` lines: an origin-form target has no authority, and one service may answer
    /// for several hosts.
    host: Vec<HeaderValue>,
    headers: Vec<Vec<HeaderValue>>,
}

/// A collected response, shared by the waiters.
#[derive(Debug)]
pub(crate) struct SharedResponse {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
}

#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Response(Arc<SharedResponse>),
    /// Make your own call.
    Release,
}

pub(crate) type Waiting = Shared<oneshot::Receiver<Outcome>>;
type Flights = Mutex<HashMap<RequestKey, Waiting>>;

/// Resolves the waiters of one in-flight request: with the response, or with a release
/// when dropped first.
pub(crate) struct LeaderGuard {
    flights: Arc<Flights>,
    key: Option<RequestKey>,
    tx: Option<oneshot::Sender<Outcome>>,
}

impl fmt::Debug for LeaderGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderGuard")
            .field("key", &self.key)
            .finish()
    }
}

impl LeaderGuard {
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if let Some(key) = self.key.take() {
            // Remove first: a request arriving from now on leads a new call.
            self.flights
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
        if let Some(tx) = self.tx.take() {
            if matches!(outcome, Outcome::Release) {
                metrics::counter!("turret_stampede_coalesce_releases_total").increment(1);
            }
            let _ = tx.send(outcome);
        }
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        self.finish(Outcome::Release);
    }
}

/// Coalesces identical in-flight `GET`/`HEAD` requests (see the [module docs](crate::coalesce)).
pub struct Coalesce<S> {
    inner: S,
    config: Arc<Config>,
    flights: Arc<Flights>,
}

impl<S: Clone> Clone for Coalesce<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
            flights: self.flights.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Coalesce<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S> Coalesce<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        CoalesceLayer::new().layer_into(inner)
    }

    /// A layer making this middleware.
    pub fn layer() -> CoalesceLayer {
        CoalesceLayer::new()
    }

    pub(crate) fn with_config(inner: S, config: Arc<Config>) -> Self {
        Self {
            inner,
            config,
            flights: Arc::default(),
        }
    }

    turret_body::inner_service_accessors!();

    /// Requests in flight that others may join.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn key<B>(&self, req: &Request<B>) -> RequestKey {
        RequestKey {
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: req
                .headers()
                .get_all(header::HOST)
                .iter()
                .cloned()
                .collect(),
            headers: self
                .config
                .headers
                .iter()
                .map(|name| req.headers().get_all(name).iter().cloned().collect())
                .collect(),
        }
    }
}

impl CoalesceLayer {
    fn layer_into<S>(&self, inner: S) -> Coalesce<S> {
        tower_layer::Layer::layer(self, inner)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Coalesce<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: http_body::Body,
{
    type Response = Response<super::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return ResponseFuture::passthrough(self.inner.call(req));
        }
        let key = self.key(&req);
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = flights.get(&key) {
            let waiting = waiting.clone();
            drop(flights);
            metrics::counter!("turret_stampede_coalesce_requests_total", "role" => "follower")
                .increment(1);
            // Keep the service that was made ready for this request: a released follower
            // calls it itself.
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            return ResponseFuture::waiting(waiting, req, inner);
        }
        let (tx, rx) = oneshot::channel();
        flights.insert(key.clone(), rx.shared());
        drop(flights);
        metrics::counter!("turret_stampede_coalesce_requests_total", "role" => "leader")
            .increment(1);
        let guard = LeaderGuard {
            flights: self.flights.clone(),
            key: Some(key),
            tx: Some(tx),
        };
        // The guard exists before the inner call, so even a panicking `call` cannot leave
        // the waiters hanging.
        let fut = self.inner.call(req);
        ResponseFuture::leading(fut, guard, self.config.clone())
    }
}
