//! [`ResponseFuture`]: the state machine of one request. An answer made in `call` (a fresh
//! hit) is `Ready`; a request passed straight to the inner service is `Forward`, then
//! `Invalidating` after a successful write; everything that waits for storage or fills it is
//! one boxed future, the slow path of `miss.rs`.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use crate::{
    ResponseBody, StorageFuture,
    invalidator::{self, Invalidate},
    layer::Shared,
    respond::annotate,
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`ResponseCache`](crate::ResponseCache).
    pub struct ResponseFuture<F, B: Body, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B: Body, E> {
        // An answer that needs no more work: a fresh hit made in `call`, or a forwarded
        // response once its invalidations are done.
        Ready {
            res: Option<Response<ResponseBody<B>>>,
        },
        // Passed to the inner service; its response is annotated and, after an unsafe
        // method, the target invalidated.
        Forward {
            #[pin]
            fut: F,
            member: &'static str,
            shared: Arc<Shared>,
            invalidate: Option<Invalidate>,
        },
        // A successful write's response, held until what it invalidates is invalidated
        // (RFC 9111 §4.4).
        Invalidating {
            pending: Vec<StorageFuture<usize>>,
            res: Option<Response<ResponseBody<B>>>,
            shared: Arc<Shared>,
        },
        // The slow path (`miss.rs`): waits for the look-up, then serves stale, revalidates
        // or fills.
        Boxed {
            fut: BoxFuture<Result<Response<ResponseBody<B>>, E>>,
        },
    }
}

impl<F, B: Body, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Ready { .. } => "Ready",
            Kind::Forward { .. } => "Forward",
            Kind::Invalidating { .. } => "Invalidating",
            Kind::Boxed { .. } => "Boxed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    /// An answer made without the inner service.
    pub(crate) fn ready(res: Response<ResponseBody<B>>) -> Self {
        Self {
            kind: Kind::Ready { res: Some(res) },
        }
    }

    /// A request passed to the inner service: its response is annotated with `member`,
    /// and after a successful unsafe request `invalidate` runs before it is returned.
    pub(crate) fn forward(
        fut: F,
        member: &'static str,
        shared: Arc<Shared>,
        invalidate: Option<Invalidate>,
    ) -> Self {
        Self {
            kind: Kind::Forward {
                fut,
                member,
                shared,
                invalidate,
            },
        }
    }

    /// The slow path.
    pub(crate) fn boxed(fut: BoxFuture<Result<Response<ResponseBody<B>>, E>>) -> Self {
        Self {
            kind: Kind::Boxed { fut },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().kind.project() {
                KindProj::Ready { res } => {
                    return match res.take() {
                        Some(res) => Poll::Ready(Ok(res)),
                        None => panic!("ResponseFuture polled after completion"),
                    };
                }
                KindProj::Boxed { fut } => return fut.as_mut().poll(cx),
                KindProj::Forward {
                    fut,
                    member,
                    shared,
                    invalidate,
                } => {
                    let mut res = ready!(fut.poll(cx))?.map(ResponseBody::inner);
                    annotate(shared, &mut res, member, "MISS");
                    let status = res.status();
                    match invalidate.take() {
                        Some(inv) if status.is_success() || status.is_redirection() => {
                            let pending = invalidator::invalidations(&inv, res.headers());
                            Kind::Invalidating {
                                pending,
                                res: Some(res),
                                shared: inv.shared,
                            }
                        }
                        _ => Kind::Ready { res: Some(res) },
                    }
                }
                KindProj::Invalidating {
                    pending,
                    res,
                    shared,
                } => {
                    let mut i = 0;
                    while i < pending.len() {
                        match Pin::new(&mut pending[i]).poll(cx) {
                            Poll::Pending => i += 1,
                            Poll::Ready(result) => {
                                if let Err(e) = result {
                                    shared.storage_error("invalidate", &e);
                                }
                                drop(pending.swap_remove(i));
                            }
                        }
                    }
                    if !pending.is_empty() {
                        return Poll::Pending;
                    }
                    Kind::Ready { res: res.take() }
                }
            };
            self.as_mut().project().kind.set(next);
        }
    }
}
