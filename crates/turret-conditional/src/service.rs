//! [`Conditional`]: the service.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Method, Request, Response, StatusCode, header};
use http_body::Body;
use tower_service::Service;

use crate::{
    ConditionalLayer, MakeEtag, MakeResourceKey, PathAndQuery, Sha256Etag,
    body::ResponseBody,
    future::{CheckResult, Ctx, ResponseFuture, Route, claim_check, strip_conditions},
    headers::{Conditions, has_conditional_fields},
    layer::{Backend, Config},
    precondition::{Decision, evaluate, is_exempt, is_get_or_head},
    store::{BoxFuture, ResourceState, Target},
};

/// Middleware that generates ETags and evaluates RFC 9110 preconditions.
/// See the [crate documentation](crate).
#[derive(Debug, Clone)]
pub struct Conditional<S, K = PathAndQuery, E = Sha256Etag> {
    pub(crate) inner: S,
    pub(crate) make_key: K,
    pub(crate) config: Arc<Config<E>>,
}

impl<S> Conditional<S> {
    /// Wraps `inner` with the default configuration ([`ConditionalLayer::new`]).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&ConditionalLayer::new(), inner)
    }

    /// A [`ConditionalLayer`] with the default configuration.
    pub fn layer() -> ConditionalLayer {
        ConditionalLayer::new()
    }
}

impl<S, K, E> Conditional<S, K, E> {
    turret_body::inner_service_accessors!();
}

impl<S, K, E, ReqBody, ResBody> Service<Request<ReqBody>> for Conditional<S, K, E>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: MakeResourceKey,
    E: MakeEtag,
    ReqBody: Default,
    ResBody: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody, E>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let method = req.method().clone();
        if is_exempt(&method) {
            let ctx = Ctx::new(Arc::clone(&self.config), method, Route::Exempt, None, None);
            return ResponseFuture::inner(ctx, self.inner.call(req));
        }
        let cond = has_conditional_fields(req.headers())
            .then(|| Arc::new(Conditions::from_headers(req.headers())))
            .filter(|c| c.any() || c.if_range.is_some());
        let backend = &self.config.backend;
        let key = match backend {
            Backend::None => None,
            Backend::Source(_) | Backend::Store(_) => self.make_key.make_resource_key(&req),
        };

        if is_get_or_head(&method) {
            let if_range = cond.as_ref().and_then(|c| c.if_range.clone());
            let mut ctx = Ctx::new(
                Arc::clone(&self.config),
                method.clone(),
                Route::Safe,
                cond,
                key.clone(),
            );
            if method == Method::HEAD && self.config.etag_methods.contains(&Method::HEAD) {
                // A HEAD has the fields of the GET (RFC 9110 §9.3.2), ETag included, and
                // the ETag may have to be hashed from the GET's body: ask the inner service
                // for the GET, without the client's conditions (the layer evaluates them on
                // the full 200, so a 304 can carry its length), and send no body.
                *req.method_mut() = Method::GET;
                strip_conditions(req.headers_mut());
                ctx.head_as_get();
                return ResponseFuture::inner(ctx, self.inner.call(req));
            }
            let Some(if_range) = if_range.filter(|_| method == Method::GET) else {
                return ResponseFuture::inner(ctx, self.inner.call(req));
            };
            // §13.2.2 step 5: keep `Range` only when If-Range matches the current validators,
            // which must be known before the handler runs.
            let lookup: Option<BoxFuture<CheckResult>> = match (backend, key) {
                (Backend::Store(store), Some(key)) => {
                    let fut = store.lookup(key);
                    Some(Box::pin(async move {
                        let current = fut.await.ok().flatten();
                        CheckResult::proceed(
                            !if_range.matches(current.as_ref(), std::time::SystemTime::now()),
                        )
                    }))
                }
                (Backend::Source(source), Some(key)) => {
                    let fut = source(Target::new(Method::GET, key));
                    Some(Box::pin(async move {
                        let current = match fut.await {
                            Ok(ResourceState::Current(v)) => Some(v.to_current()),
                            _ => None,
                        };
                        CheckResult::proceed(
                            !if_range.matches(current.as_ref(), std::time::SystemTime::now()),
                        )
                    }))
                }
                _ => None,
            };
            return match lookup {
                Some(check) => self.checked(ctx, check, req),
                None => {
                    // Nothing to compare with: ignoring Range is always allowed (and a full
                    // 200 is never wrong), serving a range of another version is.
                    req.headers_mut().remove(header::RANGE);
                    ResponseFuture::inner(ctx, self.inner.call(req))
                }
            };
        }

        // Unsafe (or unknown) method: decide before the handler runs.
        let guards = cond.as_ref().is_some_and(|c| c.guards_write());
        let ctx = Ctx::new(
            Arc::clone(&self.config),
            method.clone(),
            Route::Write,
            cond.clone(),
            key.clone(),
        );
        if self.config.require_precondition && !guards {
            return ResponseFuture::ready(ctx, StatusCode::PRECONDITION_REQUIRED);
        }
        let (Some(cond), Some(key)) = (cond.filter(|_| guards), key) else {
            return ResponseFuture::inner(ctx, self.inner.call(req));
        };
        let check: BoxFuture<CheckResult> = match backend {
            Backend::Store(store) => claim_check(store, key, cond, None),
            Backend::Source(source) => {
                let fut = source(Target::new(method.clone(), key));
                Box::pin(async move {
                    let current = match fut.await {
                        Ok(ResourceState::Current(v)) => Some(v.to_current()),
                        Ok(ResourceState::Absent) => None,
                        // §13.2.1: the handler's answer without preconditions stands.
                        Ok(ResourceState::Unknown) => return CheckResult::proceed(false),
                        Err(e) => {
                            metrics::counter!("turret_conditional_store_errors_total", "kind" => "source")
                                .increment(1);
                            tracing::warn!(error = %e, "validator source failed, write passes unchecked");
                            return CheckResult::proceed(false);
                        }
                    };
                    match evaluate(&cond, &method, current.as_ref()) {
                        Decision::Proceed => CheckResult::proceed(false),
                        Decision::NotModified | Decision::PreconditionFailed => {
                            CheckResult::Reject(StatusCode::PRECONDITION_FAILED)
                        }
                    }
                })
            }
            Backend::None => return ResponseFuture::inner(ctx, self.inner.call(req)),
        };
        self.checked(ctx, check, req)
    }
}

impl<S, K, E> Conditional<S, K, E> {
    /// An async step before the inner call: the ready service moves into the future and a
    /// clone takes its place (the pattern `tower-service` documents).
    fn checked<ReqBody, ResBody>(
        &mut self,
        ctx: Ctx<E>,
        check: BoxFuture<CheckResult>,
        req: Request<ReqBody>,
    ) -> ResponseFuture<S, ReqBody, ResBody, E>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
        ResBody: Body,
    {
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::check(ctx, check, ready, req)
    }
}
