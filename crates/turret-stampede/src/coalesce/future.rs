use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Buf;
use http::{HeaderMap, HeaderName, Request, Response, header, response::Parts};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    ResponseBody,
    body::{CollectBounded, Collected, collect_bounded, concat},
    flight::{Coalesced, Config, LeaderGuard, Outcome, SharedResponse, Waiting},
};

pin_project! {
    /// The response future of [`super::Coalesce`].
    pub struct ResponseFuture<F, S, ReqBody, B>
    where
        B: Body,
    {
        #[pin]
        state: State<F, S, ReqBody, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, ReqBody, B>
    where
        B: Body,
    {
        // Not coalesced (a method other than GET/HEAD).
        Passthrough {
            #[pin]
            fut: F,
        },
        // The first of identical requests: the inner call.
        Leading {
            #[pin]
            fut: F,
            guard: Option<LeaderGuard>,
            config: Arc<Config>,
        },
        // The leader collects a body small enough to share.
        Collecting {
            collect: CollectBounded<B>,
            parts: Option<Parts>,
            guard: Option<LeaderGuard>,
        },
        // A follower waits for the leader's outcome, holding its own ready service.
        Waiting {
            waiting: Waiting,
            req: Option<Request<ReqBody>>,
            inner: Option<S>,
        },
        // A released follower's own call.
        Own {
            #[pin]
            fut: F,
        },
    }
}

impl<F, S, ReqBody, B: Body> fmt::Debug for ResponseFuture<F, S, ReqBody, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Passthrough { .. } => "passthrough",
            State::Leading { .. } => "leading",
            State::Collecting { .. } => "collecting",
            State::Waiting { .. } => "waiting",
            State::Own { .. } => "own",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, S, ReqBody, B: Body> ResponseFuture<F, S, ReqBody, B> {
    pub(crate) fn passthrough(fut: F) -> Self {
        Self {
            state: State::Passthrough { fut },
        }
    }

    pub(crate) fn leading(fut: F, guard: LeaderGuard, config: Arc<Config>) -> Self {
        Self {
            state: State::Leading {
                fut,
                guard: Some(guard),
                config,
            },
        }
    }

    pub(crate) fn waiting(waiting: Waiting, req: Request<ReqBody>, inner: S) -> Self {
        Self {
            state: State::Waiting {
                waiting,
                req: Some(req),
                inner: Some(inner),
            },
        }
    }
}

fn release(guard: &mut Option<LeaderGuard>) {
    if let Some(mut guard) = guard.take() {
        guard.finish(Outcome::Release);
    }
}

/// Whether every field the response's `Vary` names (RFC 9111 §4.1) is one the requests
/// sharing the call agree on; `Vary: *` never is.
fn varies_only_on(headers: &HeaderMap, coalesced_on: &[HeaderName]) -> bool {
    headers.get_all(header::VARY).iter().all(|value| {
        value.as_bytes().split(|&b| b == b',').all(|name| {
            let name = name.trim_ascii();
            name.is_empty()
                || name != b"*"
                    && HeaderName::from_bytes(name).is_ok_and(|name| coalesced_on.contains(&name))
        })
    })
}

fn fanned_out<B: Body>(shared: &SharedResponse) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::with_trailers(
        shared.body.clone(),
        shared.trailers.clone(),
    ));
    *res.status_mut() = shared.status;
    *res.version_mut() = shared.version;
    *res.headers_mut() = shared.headers.clone();
    res.extensions_mut().insert(Coalesced);
    res
}

impl<F, S, ReqBody, B, E> Future for ResponseFuture<F, S, ReqBody, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    S: Service<Request<ReqBody>, Response = Response<B>, Error = E, Future = F>,
    B: Body,
    B::Data: Buf,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Passthrough { fut } | StateProj::Own { fut } => {
                    return Poll::Ready(ready!(fut.poll(cx)).map(|r| r.map(ResponseBody::inner)));
                }
                StateProj::Leading { fut, guard, config } => {
                    let res = match ready!(fut.poll(cx)) {
                        Ok(res) => res,
                        Err(e) => {
                            release(guard);
                            return Poll::Ready(Err(e));
                        }
                    };
                    let max_body = config.max_body;
                    let fits = res
                        .body()
                        .size_hint()
                        .exact()
                        .is_some_and(|n| n <= max_body as u64);
                    if !fits || !varies_only_on(res.headers(), &config.headers) {
                        // Too big or streaming, or selected by a field the waiters may not
                        // share: the waiters make their own calls now.
                        release(guard);
                        return Poll::Ready(Ok(res.map(ResponseBody::inner)));
                    }
                    let (parts, body) = res.into_parts();
                    let next = State::Collecting {
                        collect: collect_bounded(body, max_body as u64),
                        parts: Some(parts),
                        guard: guard.take(),
                    };
                    this.state.set(next);
                }
                StateProj::Collecting {
                    collect,
                    parts,
                    guard,
                } => {
                    if parts.is_none() {
                        // Polled after completion.
                        return Poll::Pending;
                    }
                    let collected = ready!(Pin::new(collect).poll(cx));
                    let Some(parts) = parts.take() else {
                        return Poll::Pending;
                    };
                    let Collected::Whole { chunks, trailers } = collected else {
                        // The size hint lied, or the body failed: stop sharing, hand the
                        // leader what was read, then the rest or the error.
                        release(guard);
                        return Poll::Ready(Ok(Response::from_parts(parts, collected.into_body())));
                    };
                    let data = concat(&chunks);
                    if let Some(mut guard) = guard.take() {
                        guard.finish(Outcome::Response(Arc::new(SharedResponse {
                            status: parts.status,
                            version: parts.version,
                            headers: parts.headers.clone(),
                            body: data.clone(),
                            trailers: trailers.clone(),
                        })));
                    }
                    return Poll::Ready(Ok(Response::from_parts(
                        parts,
                        ResponseBody::with_trailers(data, trailers),
                    )));
                }
                StateProj::Waiting {
                    waiting,
                    req,
                    inner,
                } => match ready!(Pin::new(waiting).poll(cx)) {
                    Ok(Outcome::Response(shared)) => return Poll::Ready(Ok(fanned_out(&shared))),
                    Ok(Outcome::Release) | Err(_) => {
                        let (Some(mut inner), Some(req)) = (inner.take(), req.take()) else {
                            return Poll::Pending;
                        };
                        metrics::counter!("turret_stampede_coalesce_requests_total", "role" => "released")
                            .increment(1);
                        let fut = inner.call(req);
                        this.state.set(State::Own { fut });
                    }
                },
            }
        }
    }
}
