//! The concurrency-limit response future: Acquiring → Calling | Ready.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    backend::{AcquireFuture, Permit},
    body::PermitBody,
};
use crate::{BackendError, FailureMode};

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A response of this status and body, without a `Content-Type`.
pub(crate) fn plain(status: StatusCode, body: &'static [u8]) -> Response<Bytes> {
    let mut res = Response::new(Bytes::from_static(body));
    *res.status_mut() = status;
    res
}

/// What the future needs of the settings to answer once the slot is decided.
#[derive(Debug)]
pub(crate) struct Info {
    pub(crate) policy_header: HeaderValue,
    pub(crate) name: Arc<str>,
    pub(crate) failure: FailureMode,
}

pin_project! {
    /// Response future of [`ConcurrencyLimit`](crate::ConcurrencyLimit).
    pub struct ConcurrencyFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: CState<S, ReqBody>,
    }
}

pin_project! {
    #[project = CStateProj]
    enum CState<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Acquiring {
            fut: AcquireFuture,
            pending: Option<(Request<ReqBody>, S, Info)>,
        },
        Calling {
            #[pin]
            future: S::Future,
            permit: Option<Permit>,
        },
        Ready {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S, ReqBody> ConcurrencyFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn calling(future: S::Future, permit: Option<Permit>) -> Self {
        Self {
            state: CState::Calling { future, permit },
        }
    }

    pub(crate) fn ready(response: Response<Bytes>) -> Self {
        Self {
            state: CState::Ready {
                response: Some(response),
            },
        }
    }

    /// Waits for the slot, then calls `inner` (already ready) with `req` or refuses.
    pub(crate) fn acquiring(
        fut: AcquireFuture,
        req: Request<ReqBody>,
        inner: S,
        info: Info,
    ) -> Self {
        Self {
            state: CState::Acquiring {
                fut,
                pending: Some((req, inner, info)),
            },
        }
    }

    pub(crate) fn decided(
        result: Result<Option<Permit>, BackendError>,
        req: Request<ReqBody>,
        mut inner: S,
        info: &Info,
    ) -> Self {
        match outcome(result, info) {
            Outcome::Call(permit) => Self::calling(inner.call(req), permit),
            Outcome::Refuse(res) => Self::ready(res),
        }
    }
}

/// What happens to a request once its slot is decided.
enum Outcome {
    /// Call the inner service, holding the permit (none when failing open).
    Call(Option<Permit>),
    /// Answer with this instead.
    Refuse(Response<Bytes>),
}

fn outcome(result: Result<Option<Permit>, BackendError>, info: &Info) -> Outcome {
    match result {
        Ok(Some(permit)) => Outcome::Call(Some(permit)),
        Ok(None) => {
            metrics::counter!("turret_ratelimit_decisions_total", "policy" => info.name.to_string(), "outcome" => "limited")
                .increment(1);
            let mut res = plain(StatusCode::TOO_MANY_REQUESTS, b"Too Many Requests\n");
            let h = res.headers_mut();
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            h.insert(RATELIMIT_POLICY.clone(), info.policy_header.clone());
            let name_end = info
                .policy_header
                .as_bytes()
                .iter()
                .position(|&b| b == b';')
                .unwrap_or(0);
            let mut value = info.policy_header.as_bytes()[..name_end].to_vec();
            value.extend_from_slice(b";r=0;t=1");
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                h.insert(RATELIMIT.clone(), v);
            }
            Outcome::Refuse(res)
        }
        Err(e) => {
            metrics::counter!("turret_ratelimit_backend_errors_total", "policy" => info.name.to_string()).increment(1);
            tracing::debug!(policy = %info.name, error = %e, "concurrency limit backend failed");
            match info.failure {
                FailureMode::Open => Outcome::Call(None),
                FailureMode::Closed => Outcome::Refuse(plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    b"Service Unavailable\n",
                )),
            }
        }
    }
}

impl<S, ReqBody, ResBody> Future for ConcurrencyFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Output = Result<Response<PermitBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                CStateProj::Acquiring { fut, pending } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let Some((req, mut inner, info)) = pending.take() else {
                        this.state.set(CState::Ready { response: None });
                        continue;
                    };
                    match outcome(result, &info) {
                        Outcome::Call(permit) => {
                            let future = inner.call(req);
                            this.state.set(CState::Calling { future, permit });
                        }
                        Outcome::Refuse(res) => this.state.set(CState::Ready {
                            response: Some(res),
                        }),
                    }
                }
                CStateProj::Calling { future, permit } => {
                    let res = ready!(future.poll(cx))?;
                    let permit = permit.take();
                    return Poll::Ready(Ok(res.map(|body| PermitBody::inner(body, permit))));
                }
                CStateProj::Ready { response } => {
                    let res = response
                        .take()
                        .unwrap_or_else(|| plain(StatusCode::INTERNAL_SERVER_ERROR, b""));
                    return Poll::Ready(Ok(res.map(PermitBody::full)));
                }
            }
        }
    }
}
