use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Method, Request, Response};
use tower_service::Service;

use super::{
    ResponseBody,
    flight::{Config, Flights, Joined, RequestKey},
    future::ResponseFuture,
};

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
        self.flights.len()
    }

    pub(crate) fn key<B>(&self, req: &Request<B>) -> RequestKey {
        RequestKey::of(req, &self.config.headers)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Coalesce<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: http_body::Body,
{
    type Response = Response<ResponseBody<ResBody>>;
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
        match self.flights.join(key) {
            Joined::Follow(waiting) => {
                metrics::counter!("turret_stampede_coalesce_requests_total", "role" => "follower")
                    .increment(1);
                // Keep the service that was made ready for this request: a released follower
                // calls it itself.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(waiting, req, inner)
            }
            Joined::Lead(guard) => {
                metrics::counter!("turret_stampede_coalesce_requests_total", "role" => "leader")
                    .increment(1);
                // The guard exists before the inner call, so even a panicking `call` cannot
                // leave the waiters hanging.
                let fut = self.inner.call(req);
                ResponseFuture::leading(fut, guard, self.config.clone())
            }
        }
    }
}
