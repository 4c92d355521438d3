//! The response body of [`Conditional`](crate::Conditional).

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that went through the conditional layer: the inner body passed
    /// through untouched, the body the layer buffered to compute an ETag, or no body at all
    /// (304, 412, 428).
    pub struct ResponseBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Inner {
            #[pin]
            body: B,
        },
        Buffered {
            chunks: VecDeque<Bytes>,
            // An error the inner body returned while it was being buffered, after `chunks`.
            error: Option<B::Error>,
            // The rest of the inner body when buffering stopped early (it exceeded the limit).
            rest: Option<Pin<Box<B>>>,
            trailers: Option<HeaderMap>,
        },
        Empty,
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn buffered(
        chunks: VecDeque<Bytes>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
        trailers: Option<HeaderMap>,
    ) -> Self {
        Self {
            kind: Kind::Buffered {
                chunks,
                error,
                rest,
                trailers,
            },
        }
    }

    pub(crate) fn empty() -> Self {
        Self { kind: Kind::Empty }
    }
}

impl<B: Body> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Buffered { .. } => "Buffered",
            Kind::Empty => "Empty",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx).map(|f| f.map(|r| r.map(to_bytes))),
            KindProj::Buffered {
                chunks,
                error,
                rest,
                trailers,
            } => {
                if let Some(chunk) = chunks.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if let Some(e) = error.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                if let Some(body) = rest.as_mut() {
                    match body.as_mut().poll_frame(cx) {
                        Poll::Ready(None) => *rest = None,
                        other => return other.map(|f| f.map(|r| r.map(to_bytes))),
                    }
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Buffered {
                chunks,
                error,
                rest,
                trailers,
            } => {
                chunks.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
                    && trailers.is_none()
            }
            Kind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Buffered { chunks, rest, .. } => {
                let buffered: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                match rest {
                    None => SizeHint::with_exact(buffered),
                    Some(rest) => {
                        let hint = rest.size_hint();
                        let mut out = SizeHint::new();
                        out.set_lower(hint.lower().saturating_add(buffered));
                        if let Some(upper) = hint.upper() {
                            out.set_upper(upper.saturating_add(buffered));
                        }
                        out
                    }
                }
            }
            Kind::Empty => SizeHint::with_exact(0),
        }
    }
}
