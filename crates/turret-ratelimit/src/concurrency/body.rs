//! The concurrency limiter's response body: holds the slot until the body ends.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::backend::Permit;
use crate::ResponseBody;

pin_project! {
    /// A response body that holds its request's in-flight slot until it ends or is dropped.
    #[derive(Debug)]
    pub struct PermitBody<B: Body> {
        #[pin]
        body: ResponseBody<B>,
        permit: Option<Permit>,
    }
}

impl<B: Body> PermitBody<B> {
    pub(crate) fn inner(body: B, permit: Option<Permit>) -> Self {
        Self {
            body: ResponseBody::inner(body),
            permit,
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            body: ResponseBody::full(data),
            permit: None,
        }
    }
}

impl<B: Body> Body for PermitBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if body_done(&frame) {
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn body_done<T, E>(frame: &Option<Result<T, E>>) -> bool {
    matches!(frame, None | Some(Err(_)))
}
