//! [`ResponseFuture`]: the state machine of one request.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header, response::Parts};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    MakeEtag,
    body::{CollectBounded, Collected, ResponseBody, collect_bounded},
    etag::field_value,
    headers::{Conditions, Current, EntityTag},
    layer::{Backend, Config},
    precondition::{Decision, evaluate},
    store::{
        BoxFuture, ClaimOutcome, Learned, ResourceState, Target, Update, ValidatorStore, Validators,
    },
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
    /// The store has no record of the target: learn its validators from a GET through the
    /// inner service, then claim again.
    Learn,
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

/// The store's check-and-claim as the step before the inner call.
pub(crate) fn claim_check(
    store: &ValidatorStore,
    key: String,
    cond: Arc<Conditions>,
    learned: Option<Learned>,
) -> BoxFuture<CheckResult> {
    let fut = store.claim(key, cond, learned);
    Box::pin(async move {
        match fut.await {
            Ok(ClaimOutcome::Granted(token)) => CheckResult::claimed(token),
            Ok(ClaimOutcome::Failed | ClaimOutcome::Busy) => {
                CheckResult::Reject(StatusCode::PRECONDITION_FAILED)
            }
            Ok(ClaimOutcome::NoRecord) => CheckResult::Learn,
            // Fail open; `Health` logged and counted it.
            Err(_) => CheckResult::proceed(false),
        }
    })
}

/// The request fields that make a request conditional or partial, and those that describe
/// a request's content: none of them belongs on a GET the layer makes itself.
const NOT_ON_OWN_GET: [header::HeaderName; 12] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::TRANSFER_ENCODING,
    header::EXPECT,
];

/// Removes the conditional and range fields (a HEAD asked of the inner service as a GET).
pub(crate) fn strip_conditions(headers: &mut HeaderMap) {
    for name in &NOT_ON_OWN_GET[..6] {
        headers.remove(name);
    }
}

/// A GET of `req`'s target: the same URI, version, fields (but conditions, range and
/// content fields) and extensions, and an empty body.
fn learning_request<B: Default>(req: &Request<B>) -> Request<B> {
    let mut get = Request::new(B::default());
    *get.method_mut() = Method::GET;
    *get.uri_mut() = req.uri().clone();
    *get.version_mut() = req.version();
    *get.extensions_mut() = req.extensions().clone();
    let headers = get.headers_mut();
    for (name, value) in req.headers() {
        if !NOT_ON_OWN_GET.contains(name) {
            headers.append(name, value.clone());
        }
    }
    get
}

/// The body of a response to a HEAD answered from the inner service's GET: none, and the
/// GET's `Content-Length` (RFC 9110 §8.6, §9.3.2) when it is known.
fn without_body<B: Body>(mut parts: Parts, size: Option<u64>) -> Response<ResponseBody<B>> {
    if !parts.headers.contains_key(header::CONTENT_LENGTH)
        && !parts.headers.contains_key(header::TRANSFER_ENCODING)
        && let Some(size) = size
    {
        parts.headers.insert(header::CONTENT_LENGTH, size.into());
    }
    Response::from_parts(parts, ResponseBody::empty())
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
    /// A HEAD asked of the inner service as a GET: the answer drops the body.
    head_as_get: bool,
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
            head_as_get: false,
        }
    }

    /// Marks a HEAD that the inner service is asked as a GET.
    pub(crate) fn head_as_get(&mut self) {
        self.head_as_get = true;
    }

    fn store(&self) -> Option<&ValidatorStore> {
        match &self.config.backend {
            Backend::Store(s) => Some(s),
            _ => None,
        }
    }
}

/// Counts a response by outcome. A macro taking a literal, so that the metric's key is a
/// static (a label value in a variable makes `metrics` allocate its labels on every call).
macro_rules! count {
    ($outcome:literal) => {
        metrics::counter!("turret_conditional_responses_total", "outcome" => $outcome).increment(1)
    };
}

fn status_response<B: Body>(status: StatusCode) -> Response<ResponseBody<B>> {
    count_answer(status);
    let mut res = Response::new(ResponseBody::empty());
    *res.status_mut() = status;
    res
}

fn count_answer(status: StatusCode) {
    match status {
        StatusCode::NOT_MODIFIED => count!("304"),
        StatusCode::PRECONDITION_FAILED => count!("412"),
        _ => count!("428"),
    }
    tracing::debug!(%status, "conditional request answered by the layer");
}

/// The layer's own 412 or 428, built by the configured hook.
fn rejection<B: Body, E>(config: &Config<E>, status: StatusCode) -> Response<ResponseBody<B>> {
    count_answer(status);
    config.on_rejection.build(status).map(ResponseBody::full)
}

/// Fields a cache inside the layer set on the 200 to say how it was produced (RFC 9211
/// `Cache-Status`, `X-Cache`): kept on the 304 made from it, which is not representation
/// metadata but the same cache's account of this response.
const CACHE_FIELDS: [header::HeaderName; 2] = [
    header::HeaderName::from_static("cache-status"),
    header::HeaderName::from_static("x-cache"),
];

/// A 304 made from the 200 the inner service produced: exactly the fields RFC 9110 §15.4.5
/// asks for (and the inner caches' [`CACHE_FIELDS`]), and no body. `head_length`: the 200's length, for a 304 to HEAD, which then
/// carries it (RFC 9110 §8.6; without it a server may frame the 304 as `Content-Length: 0`).
fn not_modified<B: Body>(parts: Parts, head_length: Option<u64>) -> Response<ResponseBody<B>> {
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
    ]
    .iter()
    .chain(&CACHE_FIELDS)
    {
        for value in parts.headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if !parts.headers.contains_key(header::ETAG)
        && let Some(lm) = parts.headers.get(header::LAST_MODIFIED)
    {
        headers.insert(header::LAST_MODIFIED, lm.clone());
    }
    if let Some(length) = head_length {
        headers.insert(header::CONTENT_LENGTH, length.into());
    }
    res
}

/// The length of a response's content: its `Content-Length`, else its body's exact size.
fn content_length<B: Body>(parts: &Parts, body: &B) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or_else(|| body.size_hint().exact())
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
            // Whether `service` has been polled ready.
            ready: bool,
            request: Option<Request<ReqBody>>,
        },
        // Waiting for the inner service's answer to the layer's own GET of a write's target
        // (the store had no record of it).
        Learning {
            #[pin]
            future: S::Future,
            service: Option<S>,
            request: Option<Request<ReqBody>>,
        },
        // Hashing the body of that GET's answer.
        LearnCollecting {
            collect: CollectBounded<ResBody>,
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
            collect: CollectBounded<ResBody>,
        },
        // Recording a write's outcome in the store before answering.
        Finishing {
            fut: BoxFuture<()>,
            response: Option<Response<ResponseBody<ResBody>>>,
        },
        // Asking the validator source for a write's new validators before answering.
        Asking {
            ask: BoxFuture<Option<Validators>>,
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
                response: Some(rejection(&ctx.config, status)),
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
                ready: true,
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
        let listed = c.etag_methods.contains(&self.method);
        let write = !listed && self.hashes_write();
        if !(listed || write)
            || !c.etag_statuses.contains(&parts.status)
            || parts.headers.contains_key(header::ETAG)
            || parts.headers.contains_key(header::LAST_MODIFIED)
        {
            return false;
        }
        let Some(len) = body.size_hint().exact() else {
            return false;
        };
        // An empty body is no representation: a write answered without one gets no tag.
        if len > c.max_body_size || (write && len == 0) {
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

    /// Whether this is a PUT or PATCH whose successful response may get the new ETag.
    fn is_etagged_write(&self) -> bool {
        self.config.write_etags
            && self.route == Route::Write
            && (self.method == Method::PUT || self.method == Method::PATCH)
    }

    /// Whether a write's new ETag is hashed from its response body: not with a
    /// [`ValidatorSource`](crate::ValidatorSource), whose validators are the truth (the
    /// layer asks it instead).
    fn hashes_write(&self) -> bool {
        self.is_etagged_write() && !matches!(self.config.backend, Backend::Source(_))
    }

    /// After the inner response arrived: either answer, or buffer first.
    fn on_response<ResBody: Body>(&mut self, res: Response<ResBody>) -> Next<ResBody> {
        let (parts, body) = res.into_parts();
        match self.route {
            Route::Exempt => Next::Ready(Response::from_parts(parts, ResponseBody::inner(body))),
            Route::Safe if !parts.status.is_success() => {
                // §13.2.1: preconditions are ignored for a non-2xx response.
                count!("passthrough");
                if self.head_as_get {
                    let size = content_length(&parts, &body);
                    return Next::Ready(without_body(parts, size));
                }
                Next::Ready(Response::from_parts(parts, ResponseBody::inner(body)))
            }
            Route::Safe | Route::Write => {
                if parts.status.is_success() && self.wants_etag(&parts, &body) {
                    let collect = collect_bounded(body, self.config.max_body_size);
                    Next::Collect(parts, collect)
                } else {
                    self.finish(parts, ResponseBody::inner(body))
                }
            }
        }
    }

    /// The ETag field value the maker gives for a body of `chunks`.
    fn etag_of(&self, chunks: &[Bytes]) -> Option<http::HeaderValue> {
        self.config
            .make_etag
            .make_etag(chunks)
            .and_then(|opaque| field_value(&opaque, self.config.weak))
    }

    /// Adds the ETag computed from `chunks`, if the maker gives one.
    fn add_etag(&self, parts: &mut Parts, chunks: &VecDeque<Bytes>) {
        let value = match chunks.as_slices() {
            (front, []) => self.etag_of(front),
            _ => self.etag_of(&chunks.iter().cloned().collect::<Vec<_>>()),
        };
        if let Some(value) = value {
            count!("etag_generated");
            parts.headers.insert(header::ETAG, value);
        }
    }

    /// What the answer to the layer's own GET of a write's target says about it; `Err` with
    /// the body when its ETag must be hashed from it first.
    fn learn_from<B: Body>(&self, res: Response<B>) -> Result<Learned, B> {
        let (parts, body) = res.into_parts();
        if !parts.status.is_success() {
            return Ok(Learned::Absent);
        }
        let current = Current::from_response_headers(&parts.headers);
        if current.etag.is_some() || current.last_modified.is_some() {
            return Ok(Learned::Current(current));
        }
        let hashable = self.config.etag_methods.contains(&Method::GET)
            && self.config.etag_statuses.contains(&parts.status)
            && body
                .size_hint()
                .exact()
                .is_some_and(|len| len <= self.config.max_body_size);
        if hashable {
            Err(body)
        } else {
            // It exists; no validator is known.
            Ok(Learned::Current(Current::default()))
        }
    }

    /// The validators learned from a hashed body.
    fn learned_from_chunks(&self, chunks: &[Bytes]) -> Learned {
        Learned::Current(Current {
            etag: self
                .etag_of(chunks)
                .and_then(|v| EntityTag::parse(v.as_bytes())),
            last_modified: None,
        })
    }

    /// The check-and-claim again, with what was learned.
    fn claim_learned(&self, learned: Learned) -> BoxFuture<CheckResult> {
        let (Some(store), Some(key), Some(cond)) = (self.store(), self.key.clone(), &self.cond)
        else {
            return Box::pin(std::future::ready(CheckResult::proceed(false)));
        };
        let fut = claim_check(store, key, Arc::clone(cond), Some(learned));
        Box::pin(async move {
            match fut.await {
                // Only without a record and with nothing learned; cannot happen here.
                CheckResult::Learn => CheckResult::Reject(StatusCode::PRECONDITION_FAILED),
                other => other,
            }
        })
    }

    /// The final step for a response (body possibly buffered).
    fn finish<ResBody: Body>(
        &mut self,
        parts: Parts,
        body: ResponseBody<ResBody>,
    ) -> Next<ResBody> {
        let head_length = self
            .head_as_get
            .then(|| content_length(&parts, &body))
            .flatten();
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
                    Some(Decision::NotModified) => Next::Ready(not_modified(parts, head_length)),
                    Some(Decision::PreconditionFailed) => {
                        Next::Ready(rejection(&self.config, StatusCode::PRECONDITION_FAILED))
                    }
                    Some(Decision::Proceed) | None if self.head_as_get => {
                        Next::Ready(without_body(parts, head_length))
                    }
                    Some(Decision::Proceed) | None => {
                        Next::Ready(Response::from_parts(parts, body))
                    }
                }
            }
            Route::Write => {
                if let Backend::Source(source) = &self.config.backend
                    && self.is_etagged_write()
                    && parts.status.is_success()
                    && !parts.headers.contains_key(header::ETAG)
                    && !parts.headers.contains_key(header::LAST_MODIFIED)
                    && let Some(key) = self.key.clone()
                {
                    // The source knows the new version: ask it, as a GET would.
                    let fut = source(Target::new(Method::GET, key));
                    let ask: BoxFuture<Option<Validators>> = Box::pin(async move {
                        match fut.await {
                            Ok(ResourceState::Current(v)) => Some(v),
                            _ => None,
                        }
                    });
                    return Next::Ask(ask, Response::from_parts(parts, body));
                }
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
    Collect(Parts, CollectBounded<B>),
    Finish(BoxFuture<()>, Response<ResponseBody<B>>),
    Ask(BoxFuture<Option<Validators>>, Response<ResponseBody<B>>),
}

/// Gives a write's response the validators its source answered after it.
fn with_validators<B>(mut res: Response<B>, validators: Option<Validators>) -> Response<B> {
    let Some(v) = validators else {
        return res;
    };
    let headers = res.headers_mut();
    if let Some(etag) = v
        .etag()
        .filter(|e| EntityTag::parse(e.as_bytes()).is_some())
    {
        headers.insert(header::ETAG, etag.clone());
    }
    if let Some(at) = v.last_modified()
        && let Ok(value) = http::HeaderValue::from_str(&httpdate::fmt_http_date(at))
    {
        headers.insert(header::LAST_MODIFIED, value);
    }
    res
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
            Next::Collect(parts, collect) => State::Collecting {
                parts: Some(parts),
                collect,
            },
            Next::Finish(fut, response) => State::Finishing {
                fut,
                response: Some(response),
            },
            Next::Ask(ask, response) => State::Asking {
                ask,
                response: Some(response),
            },
        }
    }
}

const POLLED_AFTER_COMPLETION: &str = "ResponseFuture polled after completion";

impl<S, ReqBody, ResBody, E> Future for ResponseFuture<S, ReqBody, ResBody, E>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ReqBody: Default,
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
                    ready,
                    request,
                } => {
                    if !*ready {
                        let svc = service.as_mut().expect(POLLED_AFTER_COMPLETION);
                        ready!(svc.poll_ready(cx))?;
                        *ready = true;
                    }
                    match ready!(check.as_mut().poll(cx)) {
                        CheckResult::Reject(status) => {
                            Next::Ready(rejection(&this.ctx.config, status))
                        }
                        CheckResult::Learn => {
                            let request = request.take().expect(POLLED_AFTER_COMPLETION);
                            let mut service = service.take().expect(POLLED_AFTER_COMPLETION);
                            let spare = service.clone();
                            tracing::debug!(
                                resource = ?this.ctx.key,
                                "no validators recorded: learning them from a GET of the target"
                            );
                            let future = service.call(learning_request(&request));
                            this.state.set(State::Learning {
                                future,
                                service: Some(spare),
                                request: Some(request),
                            });
                            continue;
                        }
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
                    }
                }
                StateProj::Learning {
                    future,
                    service,
                    request,
                } => {
                    let res = ready!(future.poll(cx))?;
                    let (service, request) = (service.take(), request.take());
                    match this.ctx.learn_from(res) {
                        Ok(learned) => {
                            this.state.set(State::Check {
                                check: this.ctx.claim_learned(learned),
                                service,
                                ready: false,
                                request,
                            });
                        }
                        Err(body) => this.state.set(State::LearnCollecting {
                            collect: collect_bounded(body, this.ctx.config.max_body_size),
                            service,
                            request,
                        }),
                    }
                    continue;
                }
                StateProj::LearnCollecting {
                    collect,
                    service,
                    request,
                } => {
                    let learned = match ready!(Pin::new(collect).poll(cx)) {
                        Collected::Whole { mut chunks, .. } => {
                            this.ctx.learned_from_chunks(chunks.make_contiguous())
                        }
                        // It lied about its size, or failed: it exists, its tag is unknown.
                        Collected::Over { .. } | Collected::Failed { .. } => {
                            Learned::Current(Current::default())
                        }
                    };
                    let (service, request) = (service.take(), request.take());
                    this.state.set(State::Check {
                        check: this.ctx.claim_learned(learned),
                        service,
                        ready: false,
                        request,
                    });
                    continue;
                }
                StateProj::Inner { future } => {
                    let res = ready!(future.poll(cx))?;
                    this.ctx.on_response(res)
                }
                StateProj::Collecting { parts, collect } => {
                    let collected = ready!(Pin::new(collect).poll(cx));
                    let mut parts = parts.take().expect(POLLED_AFTER_COMPLETION);
                    if let Collected::Whole { chunks, .. } = &collected {
                        this.ctx.add_etag(&mut parts, chunks);
                    }
                    // Cut short (the body lied about its size, or failed): what was read, then
                    // the rest or the error, without an ETag.
                    this.ctx.finish(parts, collected.into_body())
                }
                StateProj::Finishing { fut, response } => {
                    ready!(fut.as_mut().poll(cx));
                    return Poll::Ready(Ok(response.take().expect(POLLED_AFTER_COMPLETION)));
                }
                StateProj::Asking { ask, response } => {
                    let validators = ready!(ask.as_mut().poll(cx));
                    let response = response.take().expect(POLLED_AFTER_COMPLETION);
                    return Poll::Ready(Ok(with_validators(response, validators)));
                }
                StateProj::Ready { response } => {
                    return Poll::Ready(Ok(response.take().expect(POLLED_AFTER_COMPLETION)));
                }
            };
            this.state.set(next.into_state());
        }
    }
}
