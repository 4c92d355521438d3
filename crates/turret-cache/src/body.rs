//! The response body of [`ResponseCache`](crate::ResponseCache).

use std::{
    collections::VecDeque,
    fmt,
    future::poll_fn,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that went through the cache: the inner body streamed through
    /// untouched, a body the cache buffered to store it, or a stored body.
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
        // A stored body: one buffer, no allocation.
        Full {
            data: Option<Bytes>,
        },
        Buffered {
            chunks: VecDeque<Bytes>,
            // An error the inner body returned while it was being buffered, after `chunks`.
            error: Option<B::Error>,
            trailers: Option<HeaderMap>,
            // The rest of a body that sent more than its size hint promised: streamed after
            // `chunks`, never buffered.
            rest: Option<Pin<Box<B>>>,
        },
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl<B: Body> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Full { .. } => "Full",
            Kind::Buffered { .. } => "Buffered",
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
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Buffered {
                chunks,
                error,
                trailers,
                rest,
            } => {
                if let Some(chunk) = chunks.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if let Some(body) = rest {
                    return body
                        .as_mut()
                        .poll_frame(cx)
                        .map(|f| f.map(|r| r.map(to_bytes)));
                }
                if let Some(e) = error.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Buffered {
                chunks,
                error,
                trailers,
                rest,
            } => {
                chunks.is_empty()
                    && error.is_none()
                    && trailers.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Buffered { chunks, rest, .. } => {
                let buffered: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                match rest {
                    None => SizeHint::with_exact(buffered),
                    Some(body) => {
                        let hint = body.size_hint();
                        let mut out = SizeHint::new();
                        out.set_lower(hint.lower().saturating_add(buffered));
                        if let Some(upper) = hint.upper() {
                            out.set_upper(upper.saturating_add(buffered));
                        }
                        out
                    }
                }
            }
        }
    }
}

/// A body read to its end: the data, an error that stopped it, its trailers.
pub(crate) struct Collected<B: Body> {
    pub(crate) chunks: VecDeque<Bytes>,
    pub(crate) error: Option<B::Error>,
    pub(crate) trailers: Option<HeaderMap>,
    /// Set when the body sent more than `max` bytes: the unread rest.
    pub(crate) rest: Option<Pin<Box<B>>>,
}

impl<B: Body> Collected<B> {
    /// The whole body as one buffer, when it ended cleanly without trailers.
    pub(crate) fn storable_bytes(&self) -> Option<Bytes> {
        if self.error.is_some() || self.trailers.is_some() || self.rest.is_some() {
            return None;
        }
        Some(match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks[0].clone(),
            _ => {
                let len = self.chunks.iter().map(Bytes::len).sum();
                let mut out = Vec::with_capacity(len);
                for c in &self.chunks {
                    out.extend_from_slice(c);
                }
                Bytes::from(out)
            }
        })
    }

    pub(crate) fn into_body(self) -> ResponseBody<B> {
        ResponseBody {
            kind: Kind::Buffered {
                chunks: self.chunks,
                error: self.error,
                trailers: self.trailers,
                rest: self.rest,
            },
        }
    }
}

/// Reads `body` to its end, buffering at most `max` bytes: a body that sends more than its
/// size hint promised keeps its unread rest in [`Collected::rest`] (never buffered).
pub(crate) async fn collect<B: Body>(body: B, max: u64) -> Collected<B> {
    let mut body = Box::pin(body);
    let mut out = Collected {
        chunks: VecDeque::new(),
        error: None,
        trailers: None,
        rest: None,
    };
    let mut total: u64 = 0;
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(mut data) => {
                    let bytes = data.copy_to_bytes(data.remaining());
                    total = total.saturating_add(bytes.len() as u64);
                    if !bytes.is_empty() {
                        out.chunks.push_back(bytes);
                    }
                    if total > max {
                        out.rest = Some(body);
                        return out;
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        match &mut out.trailers {
                            Some(all) => all.extend(t),
                            None => out.trailers = Some(t),
                        }
                    }
                }
            },
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out
}
