//! [`ResponseFuture`]: the state machine of one request.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Method, Request, Response, StatusCode, header, response::Parts};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    MakeEtag,
    body::ResponseBody,
    etag::field_value,
    headers::{Conditions, Current},
    layer::{Backend, Config},
    precondition::{Decision, evaluate},
    store::{BoxFuture, Update, ValidatorStore},
};

/// Which rules apply to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// CONNECT, OPTIONS, TRACE: untouched.
    Exempt,
    /// GET, HEAD: preconditions evaluated against the inner response.
    Safe,
    /// Everything else: preconditions decided before the inner service runs.
    Write,
}

/// What the step before the inner call decided.
#[derive(Debug)]
pub(crate) enum CheckResult {
    Proceed {
        remove_range: bool,
        token: Option<String>,
    },
    Reject(StatusCode),
}

impl CheckResult {
    pub(crate) fn proceed(remove_range: bool) -> Self {
        CheckResult::Proceed {
            remove_range,
            token: None,
        }
    }

    pub(crate) fn claimed(token: String) -> Self {
        CheckResult::Proceed {
            remove_range: false,
            token: Some(token),
        }
    }
}

/// Releases a claim when the request ends without completing it (inner error, dropped
/// future).
struct ClaimGuard {
    store: ValidatorStore,
    resource: String,
    token: Option<String>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            tracing::debug!(resource = %self.resource, "releasing an abandoned claim");
            self.store
                .release_detached(std::mem::take(&mut self.resource), token);
        }
    }
}

/// The request's context, carried through every state.
pub(crate) struct Ctx<E> {
    config: Arc<Config<E>>,
    method: Method,
    route: Route,
    cond: Option<Arc<Conditions>>,
    key: Option<String>,
    claim: Option<ClaimGuard>,
}

impl<E> Ctx<E> {
    pub(crate) fn new(
        config: Arc<Config<E>>,
        method: Method,
        route: Route,
        cond: Option<Arc<Conditions>>,
        key: Option<String>,
    ) -> Self {
        Self {
            config,
            method,
            route,
            cond,
            key,
            claim: None,
        }
    }

    fn store(&self) -> Option<&ValidatorStore> {
        match &self.config.backend {
            Backend::Store(s) => Some(s),
            _ => None,
        }
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("turret_conditional_responses_total", "outcome" => outcome).increment(1);
}

fn status_response<B: Body>(status: StatusCode) -> Response<ResponseBody<B>> {
    let outcome = match status {
        StatusCode::NOT_MODIFIED => "304",
        StatusCode::PRECONDITION_FAILED => "412",
        _ => "428",
    };
    count(outcome);
    tracing::debug!(%status, "conditional request answered by the layer");
    let mut res = Response::new(ResponseBody::empty());
    *res.status_mut() = status;
    res
}

/// A 304 made from the 200 the inner service produced: exactly the fields RFC 9110 §15.4.5
/// asks for, and no body.
fn not_modified<B: Body>(parts: Parts) -> Response<ResponseBody<B>> {
    let mut res = status_response(StatusCode::NOT_MODIFIED);
    *res.version_mut() = parts.version;
    *res.extensions_mut() = parts.extensions;
    let headers = res.headers_mut();
    for name in [
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::VARY,
        header::CACHE_CONTROL,
        header::EXPIRES,
    ] {
        for value in parts.headers.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if !parts.headers.contains_key(header::ETAG)
        && let Some(lm) = parts.headers.get(header::LAST_MODIFIED)
    {
        headers.insert(header::LAST_MODIFIED, lm.clone());
    }
    res
}

pin_project! {
    /// The response future of [`Conditional`](crate::Conditional).
    pub struct ResponseFuture<S, ReqBody, ResBody, E>
    where
        S: Service<Request<ReqBody>>,
        ResBody: Body,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
        ctx: Ctx<E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
        ResBody: Body,
    {
        // Waiting for the validator store or source before calling the inner service.
        Check {
            check: BoxFuture<CheckResult>,
            service: Option<S>,
            request: Option<Request<ReqBody>>,
        },
        // Waiting for the inner service.
        Inner {
            #[pin]
            future: S::Future,
        },
        // Buffering a known-size body to compute its ETag.
        Collecting {
            parts: Option<Parts>,
            body: Option<Pin<Box<ResBody>>>,
            chunks: VecDeque<Bytes>,
            len: u64,
            trailers: Option<HeaderMap>,
        },
        // Recording a write's outcome in the store before answering.
        Finishing {
            fut: BoxFuture<()>,
            response: Option<Response<ResponseBody<ResBody>>>,
        },
        // An answer is ready: an early 304/412/428, or the final response.
        Ready {
            response: Option<Response<ResponseBody<ResBody>>>,
        },
    }
}

impl<S, ReqBody, ResBody, E> fmt::Debug for ResponseFuture<S, ReqBody, ResBody, E>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("method", &self.ctx.method)
            .field("route", &self.ctx.route)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody, E> ResponseFuture<S, ReqBody, ResBody, E>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    pub(crate) fn inner(ctx: Ctx<E>, future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
            ctx,
        }
    }

    pub(crate) fn ready(ctx: Ctx<E>, status: StatusCode) -> Self {
        Self {
            state: State::Ready {
                response: Some(status_response(status)),
            },
            ctx,
        }
    }

    pub(crate) fn check(
        ctx: Ctx<E>,
        check: BoxFuture<CheckResult>,
        service: S,
        request: Request<ReqBody>,
    ) -> Self {
        Self {
            state: State::Check {
                check,
                service: Some(service),
                request: Some(request),
            },
            ctx,
        }
    }
}

impl<E: MakeEtag> Ctx<E> {
    /// Whether the layer should buffer this response's body to compute an ETag.
    fn wants_etag<B: Body>(&self, parts: &Parts, body: &B) -> bool {
        let c = &self.config;
        if !c.etag_methods.contains(&self.method)
            || !c.etag_statuses.contains(&parts.status)
            || parts.headers.contains_key(header::ETAG)
            || parts.headers.contains_key(header::LAST_MODIFIED)
        {
            return false;
        }
        let Some(len) = body.size_hint().exact() else {
            return false;
        };
        if len > c.max_body_size {
            return false;
        }
        // A HEAD response whose body was already stripped would hash as empty: skip it.
        if self.method == Method::HEAD {
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|d| d != len) {
                return false;
            }
        }
        true
    }

    /// After the inner response arrived: either answer, or buffer first.
    fn on_response<ResBody: Body>(&mut self, res: Response<ResBody>) -> Next<ResBody> {
        let (parts, body) = res.into_parts();
        match self.route {
            Route::Exempt => Next::Ready(Response::from_parts(parts, ResponseBody::inner(body))),
            Route::Safe if !parts.status.is_success() => {
                // §13.2.1: preconditions are ignored for a non-2xx response.
                count("passthrough");
                Next::Ready(Response::from_parts(parts, ResponseBody::inner(body)))
            }
            Route::Safe | Route::Write => {
                if parts.status.is_success() && self.wants_etag(&parts, &body) {
                    Next::Collect(parts, body)
                } else {
                    self.finish(parts, ResponseBody::inner(body))
                }
            }
        }
    }

    /// Adds the ETag computed from `chunks`, if the maker gives one.
    fn add_etag(&self, parts: &mut Parts, chunks: &VecDeque<Bytes>) {
        let chunks = chunks.iter().cloned().collect::<Vec<_>>();
        let value = self
            .config
            .make_etag
            .make_etag(&chunks)
            .and_then(|opaque| field_value(&opaque, self.config.weak));
        if let Some(value) = value {
            count("etag_generated");
            parts.headers.insert(header::ETAG, value);
        }
    }

    /// The final step for a response (body possibly buffered).
    fn finish<ResBody: Body>(
        &mut self,
        parts: Parts,
        body: ResponseBody<ResBody>,
    ) -> Next<ResBody> {
        match self.route {
            Route::Exempt => Next::Ready(Response::from_parts(parts, body)),
            Route::Safe => {
                let current = Current::from_response_headers(&parts.headers);
                if parts.status == StatusCode::OK
                    && (current.etag.is_some() || current.last_modified.is_some())
                    && let (Some(store), Some(key)) = (self.store(), self.key.as_ref())
                {
                    store.record_read(key.clone(), current.clone());
                }
                match self
                    .cond
                    .as_deref()
                    .map(|c| evaluate(c, &self.method, Some(&current)))
                {
                    Some(Decision::NotModified) => Next::Ready(not_modified(parts)),
                    Some(Decision::PreconditionFailed) => {
                        Next::Ready(status_response(StatusCode::PRECONDITION_FAILED))
                    }
                    Some(Decision::Proceed) | None => {
                        Next::Ready(Response::from_parts(parts, body))
                    }
                }
            }
            Route::Write => {
                let token = self.claim.as_mut().and_then(|g| g.token.take());
                let (Some(store), Some(key)) = (self.store(), self.key.clone()) else {
                    return Next::Ready(Response::from_parts(parts, body));
                };
                let update = if !parts.status.is_success() {
                    Update::Keep
                } else if self.method == Method::DELETE {
                    Update::Delete
                } else if self.method == Method::POST {
                    // A POST's validators describe what it created, not its target: the target
                    // changed to something unknown.
                    Update::Set(Current::default())
                } else {
                    Update::Set(Current::from_response_headers(&parts.headers))
                };
                if token.is_none() && matches!(update, Update::Keep) {
                    return Next::Ready(Response::from_parts(parts, body));
                }
                let fut = store.complete(key, token, update);
                Next::Finish(fut, Response::from_parts(parts, body))
            }
        }
    }
}

enum Next<B: Body> {
    Ready(Response<ResponseBody<B>>),
    Collect(Parts, B),
    Finish(BoxFuture<()>, Response<ResponseBody<B>>),
}

impl<B: Body> Next<B> {
    fn into_state<S, ReqBody>(self) -> State<S, ReqBody, B>
    where
        S: Service<Request<ReqBody>>,
    {
        match self {
            Next::Ready(response) => State::Ready {
                response: Some(response),
            },
            Next::Collect(parts, body) => State::Collecting {
                parts: Some(parts),
                body: Some(Box::pin(body)),
                chunks: VecDeque::new(),
                len: 0,
                trailers: None,
            },
            Next::Finish(fut, response) => State::Finishing {
                fut,
                response: Some(response),
            },
        }
    }
}

const POLLED_AFTER_COMPLETION: &str = "ResponseFuture polled after completion";

impl<S, ReqBody, ResBody, E> Future for ResponseFuture<S, ReqBody, ResBody, E>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
    E: MakeEtag,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Check {
                    check,
                    service,
                    request,
                } => match ready!(check.as_mut().poll(cx)) {
                    CheckResult::Reject(status) => Next::Ready(status_response(status)),
                    CheckResult::Proceed {
                        remove_range,
                        token,
                    } => {
                        if let (Some(token), Some(store), Some(key)) =
                            (token, this.ctx.store(), this.ctx.key.as_ref())
                        {
                            this.ctx.claim = Some(ClaimGuard {
                                store: store.clone(),
                                resource: key.clone(),
                                token: Some(token),
                            });
                        }
                        let mut request = request.take().expect(POLLED_AFTER_COMPLETION);
                        let mut service = service.take().expect(POLLED_AFTER_COMPLETION);
                        if remove_range {
                            request.headers_mut().remove(header::RANGE);
                        }
                        let future = service.call(request);
                        this.state.set(State::Inner { future });
                        continue;
                    }
                },
                StateProj::Inner { future } => {
                    let res = ready!(future.poll(cx))?;
                    this.ctx.on_response(res)
                }
                StateProj::Collecting {
                    parts,
                    body,
                    chunks,
                    len,
                    trailers,
                } => {
                    let inner = body.as_mut().expect(POLLED_AFTER_COMPLETION);
                    let limit = this.ctx.config.max_body_size;
                    let frame = ready!(inner.as_mut().poll_frame(cx));
                    match frame {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(mut data) => {
                                let bytes = data.copy_to_bytes(data.remaining());
                                *len += bytes.len() as u64;
                                chunks.push_back(bytes);
                                if *len > limit {
                                    // The body lied about its size: stop buffering and
                                    // stream the rest, without an ETag.
                                    let parts = parts.take().expect(POLLED_AFTER_COMPLETION);
                                    let body = ResponseBody::buffered(
                                        std::mem::take(chunks),
                                        None,
                                        body.take(),
                                        None,
                                    );
                                    this.ctx.finish(parts, body)
                                } else {
                                    continue;
                                }
                            }
                            Err(frame) => {
                                if let Ok(t) = frame.into_trailers() {
                                    trailers.get_or_insert_with(HeaderMap::new).extend(t);
                                }
                                continue;
                            }
                        },
                        Some(Err(e)) => {
                            let parts = parts.take().expect(POLLED_AFTER_COMPLETION);
                            let body =
                                ResponseBody::buffered(std::mem::take(chunks), Some(e), None, None);
                            this.ctx.finish(parts, body)
                        }
                        None => {
                            let mut parts = parts.take().expect(POLLED_AFTER_COMPLETION);
                            this.ctx.add_etag(&mut parts, chunks);
                            let body = ResponseBody::buffered(
                                std::mem::take(chunks),
                                None,
                                None,
                                trailers.take(),
                            );
                            this.ctx.finish(parts, body)
                        }
                    }
                }
                StateProj::Finishing { fut, response } => {
                    ready!(fut.as_mut().poll(cx));
                    return Poll::Ready(Ok(response.take().expect(POLLED_AFTER_COMPLETION)));
                }
                StateProj::Ready { response } => {
                    return Poll::Ready(Ok(response.take().expect(POLLED_AFTER_COMPLETION)));
                }
            };
            this.state.set(next.into_state());
        }
    }
}
