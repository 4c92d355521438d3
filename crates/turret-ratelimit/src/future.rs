//! The rate limiter's response future: Deciding → (Waiting →) Calling | Ready.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use crate::{
    Backend, Plan, ResponseBody,
    backend::DecisionFuture,
    headers,
    on_limited::OnLimited,
    state::{Shared, Waiter},
    verdict::{Asked, Stamp, Verdict, verdict},
};

/// A request waiting for its decision.
pub(crate) struct Pending<S, ReqBody> {
    pub(crate) req: Request<ReqBody>,
    /// The inner service, already ready.
    pub(crate) inner: S,
    /// The index of the policy deciding.
    pub(crate) idx: usize,
    pub(crate) plan: Plan,
    pub(crate) key: String,
    pub(crate) cost: u32,
    pub(crate) grpc: bool,
    /// When the question was sent to the backend.
    pub(crate) started: Instant,
    /// Its place among the key's waiters, when it may be delayed.
    pub(crate) waiter: Option<Waiter>,
}

/// A request admitted with a delay, holding its turn: dropped before its turn comes (its
/// client gone), it gives the turn back to the backend.
pub(crate) struct Reservation {
    refund: Option<Box<dyn FnOnce() + Send>>,
    _waiter: Option<Waiter>,
}

impl Reservation {
    /// The turn of `key` under `plan` for `cost`, reserved in `shared`'s backend.
    pub(crate) fn new<K, Bk, L>(
        shared: &Arc<Shared<K, Bk, L>>,
        idx: usize,
        plan: &Plan,
        key: &str,
        cost: u32,
        waiter: Option<Waiter>,
    ) -> Self
    where
        Shared<K, Bk, L>: Send + Sync + 'static,
        Bk: Backend,
    {
        let (shared, plan, key) = (shared.clone(), plan.clone(), key.to_owned());
        Self {
            refund: Some(Box::new(move || {
                let policy = &shared.policies[idx];
                tracing::debug!(policy = %policy.name, key, "rate limit: a delayed request left before its turn; giving it back");
                shared.backend.refund(&policy.name, &key, &plan, cost);
            })),
            _waiter: waiter,
        }
    }

    /// Nothing reserved.
    pub(crate) fn none() -> Self {
        Self {
            refund: None,
            _waiter: None,
        }
    }

    /// Its turn came: nothing to give back.
    fn used(mut self) {
        self.refund = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(refund) = self.refund.take() {
            refund();
        }
    }
}

/// A request admitted with a delay, until its turn.
pub(crate) struct Delayed<S, ReqBody> {
    pub(crate) req: Request<ReqBody>,
    pub(crate) inner: S,
    pub(crate) stamp: Option<Stamp>,
    pub(crate) reservation: Reservation,
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
        Waiting {
            #[pin]
            sleep: Sleep,
            delayed: Option<Delayed<S, ReqBody>>,
        },
        Calling {
            #[pin]
            future: S::Future,
            stamp: Option<Stamp>,
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
    /// Waits for `decision`, then calls `pending`'s inner service (at once or after its
    /// turn) or refuses.
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

    /// Waits `delay`, then calls `delayed`'s inner service.
    pub(crate) fn waiting(
        delay: Duration,
        delayed: Delayed<S, ReqBody>,
        shared: Arc<Shared<K, Bk, L>>,
    ) -> Self {
        Self {
            state: State::Waiting {
                sleep: tokio::time::sleep(delay),
                delayed: Some(delayed),
            },
            shared,
        }
    }

    /// Drives the inner service's future; stamps the fields of `stamp` on its response.
    pub(crate) fn call(
        future: S::Future,
        stamp: Option<Stamp>,
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
    Bk: Backend,
    Shared<K, Bk, L>: Send + Sync + 'static,
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
                    let asked = Asked {
                        idx: p.idx,
                        plan: &p.plan,
                        key: &p.key,
                        cost: p.cost,
                        grpc: p.grpc,
                        started: Some(p.started),
                    };
                    match verdict(this.shared, &asked, result) {
                        Verdict::Refuse(res) => this.state.set(State::Ready {
                            response: Some(res),
                        }),
                        Verdict::Pass { stamp, delay } if !delay.is_zero() => {
                            let reservation = Reservation::new(
                                this.shared,
                                p.idx,
                                &p.plan,
                                &p.key,
                                p.cost,
                                p.waiter,
                            );
                            this.state.set(State::Waiting {
                                sleep: tokio::time::sleep(delay),
                                delayed: Some(Delayed {
                                    req: p.req,
                                    inner: p.inner,
                                    stamp,
                                    reservation,
                                }),
                            });
                        }
                        Verdict::Pass { stamp, .. } => {
                            let mut inner = p.inner;
                            let future = inner.call(p.req);
                            this.state.set(State::Calling { future, stamp });
                        }
                    }
                }
                StateProj::Waiting { sleep, delayed } => {
                    ready!(sleep.poll(cx));
                    let Some(d) = delayed.take() else {
                        this.state.set(State::Ready { response: None });
                        continue;
                    };
                    d.reservation.used();
                    let mut inner = d.inner;
                    let future = inner.call(d.req);
                    this.state.set(State::Calling {
                        future,
                        stamp: d.stamp,
                    });
                }
                StateProj::Calling { future, stamp } => {
                    let mut res = ready!(future.poll(cx))?;
                    if let Some(stamp) = stamp.take() {
                        // A shadow refusal passes: it carries the fields, not `Retry-After`.
                        headers::write(
                            res.headers_mut(),
                            &stamp,
                            false,
                            None,
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
