//! [`ResponseCache`]: the service.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::{
    ResponseBody, ResponseCacheLayer,
    cache_control::{CacheControl, Qualified},
    future::{self, Invalidate, ResponseFuture},
    key,
    layer::Config,
};

/// A service that answers GET and HEAD from an RFC 9111 shared cache and fills it from
/// `inner`. See [`ResponseCacheLayer`].
#[derive(Clone)]
pub struct ResponseCache<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for ResponseCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> ResponseCache<S> {
    /// A layer with the default configuration ([`ResponseCacheLayer::new`]).
    pub fn layer() -> ResponseCacheLayer {
        ResponseCacheLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the cache, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResponseCache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The clone-and-swap of `tower-service`: `inner` is the service that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let method = req.method();

        if method != Method::GET && method != Method::HEAD {
            // RFC 9111 §4.4: a 2xx/3xx to an unsafe or unknown method invalidates the target.
            let safe = method == Method::OPTIONS || method == Method::TRACE;
            let invalidate = (!safe).then(|| {
                let (scheme, host) = key::origin(req.uri(), req.headers());
                Invalidate {
                    config,
                    key: key::primary_key(req.uri(), req.headers()),
                    origin: (scheme.to_owned(), host.to_owned()),
                }
            });
            future::count("method");
            return ResponseFuture::forward(inner.call(req), "fwd=method", invalidate);
        }

        let directives = CacheControl::from_headers(req.headers());
        if directives.no_store {
            // RFC 9111 §5.2.1.5: store nothing of this exchange.
            future::count("request-no-store");
            return ResponseFuture::forward(inner.call(req), "fwd=request", None);
        }
        let key = key::primary_key(req.uri(), req.headers());
        if directives.no_cache != Qualified::Absent {
            // RFC 9111 §5.2.1.4: do not reuse without validation; the response may be stored.
            future::count("request-no-cache");
            return future::miss(config, inner, req, key, "fwd=request");
        }
        future::lookup(config, inner, req, key, directives)
    }
}
