//! The rate limiter's response future: Deciding → Calling | Ready.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    Decision, ResponseBody,
    backend::DecisionFuture,
    headers,
    on_limited::OnLimited,
    state::Shared,
    verdict::{Verdict, verdict},
};

/// A request waiting for its decision.
pub(crate) struct Pending<S, ReqBody> {
    pub(crate) req: Request<ReqBody>,
    /// The inner service, already ready.
    pub(crate) inner: S,
    /// The index of the policy deciding.
    pub(crate) idx: usize,
    pub(crate) key: String,
    pub(crate) cost: u32,
    pub(crate) grpc: bool,
    /// When the question was sent to the backend.
    pub(crate) started: Instant,
}

pin_project! {
    /// Response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<S, ReqBody, K, Bk, L>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        shared: Arc<Shared<K, Bk, L>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Deciding {
            decision: DecisionFuture,
            pending: Option<Pending<S, ReqBody>>,
        },
        Calling {
            #[pin]
            future: S::Future,
            stamp: Option<(usize, Decision)>,
        },
        Ready {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S, ReqBody, K, Bk, L> ResponseFuture<S, ReqBody, K, Bk, L>
where
    S: Service<Request<ReqBody>>,
{
    /// Waits for `decision`, then calls `pending`'s inner service or refuses.
    pub(crate) fn deciding(
        decision: DecisionFuture,
        pending: Pending<S, ReqBody>,
        shared: Arc<Shared<K, Bk, L>>,
    ) -> Self {
        Self {
            state: State::Deciding {
                decision,
                pending: Some(pending),
            },
            shared,
        }
    }

    /// Drives the inner service's future; stamps the fields of `stamp` on its response.
    pub(crate) fn call(
        future: S::Future,
        stamp: Option<(usize, Decision)>,
        shared: Arc<Shared<K, Bk, L>>,
    ) -> Self {
        Self {
            state: State::Calling { future, stamp },
            shared,
        }
    }

    /// Answers with `response` (a refusal or an error of the layer's own).
    pub(crate) fn ready(response: Response<Bytes>, shared: Arc<Shared<K, Bk, L>>) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
            shared,
        }
    }
}

impl<S, ReqBody, ResBody, K, Bk, L> Future for ResponseFuture<S, ReqBody, K, Bk, L>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
    L: OnLimited,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Deciding { decision, pending } => {
                    let result = ready!(decision.as_mut().poll(cx));
                    let Some(p) = pending.take() else {
                        // Polled again after finishing: answer rather than hang.
                        this.state.set(State::Ready { response: None });
                        continue;
                    };
                    match verdict(
                        this.shared,
                        p.idx,
                        &p.key,
                        p.cost,
                        result,
                        p.grpc,
                        Some(p.started),
                    ) {
                        Verdict::Refuse(res) => this.state.set(State::Ready {
                            response: Some(res),
                        }),
                        Verdict::Pass(stamp) => {
                            let mut inner = p.inner;
                            let future = inner.call(p.req);
                            this.state.set(State::Calling { future, stamp });
                        }
                    }
                }
                StateProj::Calling { future, stamp } => {
                    let mut res = ready!(future.poll(cx))?;
                    if let Some((idx, decision)) = stamp.take() {
                        let policy = &this.shared.policies[idx];
                        // A shadow refusal passes: it carries the fields, not `Retry-After`.
                        headers::write(
                            res.headers_mut(),
                            policy,
                            &decision,
                            false,
                            this.shared.header_mode,
                        );
                    }
                    return Poll::Ready(Ok(res.map(ResponseBody::inner)));
                }
                StateProj::Ready { response } => {
                    let res = response.take().unwrap_or_else(|| {
                        let mut r = Response::new(Bytes::new());
                        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        r
                    });
                    return Poll::Ready(Ok(res.map(ResponseBody::full)));
                }
            }
        }
    }
}
