//! The response body shared by turret's layers, the bounded collector that feeds it, and the
//! accessor macro of their services.
//!
//! A layer that may answer from memory, or that reads a response before passing it on, returns
//! a [`ResponseBody`]: the inner body untouched, a full buffered body (with its trailers), or
//! the bytes the layer already read followed by the rest of the inner body.
//! [`collect_bounded`] reads a body up to a limit and says which of those it got:
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use turret_body::{Collected, ResponseBody, collect_bounded};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Within the limit: the whole body, which the layer may keep (to store it, hash it, ...).
//! let small = collect_bounded(Full::new(Bytes::from("hello")), 1024).await;
//! assert!(small.is_whole());
//! assert_eq!(small.to_bytes(), "hello");
//!
//! // Past the limit: what was read, then the unread rest; never buffered past the limit.
//! let large = collect_bounded(Full::new(Bytes::from("a larger body")), 4).await;
//! assert!(matches!(large, Collected::Over { .. }));
//!
//! // Either way the client gets the body it would have had without the layer.
//! let body: ResponseBody<Full<Bytes>> = large.into_body();
//! assert_eq!(body.collect().await.unwrap().to_bytes(), "a larger body");
//! # }
//! ```
//!
//! The crate knows no layer: the layers decide what a body is for, this crate only moves bytes.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that went through a layer: the inner body streamed through
    /// untouched, a full buffered body with optional trailers, or the bytes the layer read
    /// followed by the rest of the inner body.
    ///
    /// Its data is always [`Bytes`], whatever the inner body's [`Buf`] (converted with
    /// [`Buf::copy_to_bytes`], which does not copy a `Bytes`). [`Body::size_hint`] and
    /// [`Body::is_end_stream`] are exact for buffered data and add the inner body's own for the
    /// rest.
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
        Full {
            data: Chunks,
            trailers: Option<HeaderMap>,
        },
        Partial {
            read: Chunks,
            rest: Rest<B>,
        },
        Tee {
            #[pin]
            body: B,
            tee: Tee,
        },
    }
}

/// The bytes of all tees in flight against one limit, shared by the tees of a layer: a tee
/// that would take the total past it stops collecting (its body still streams).
#[derive(Debug)]
pub struct TeeBudget {
    used: std::sync::atomic::AtomicU64,
    limit: u64,
}

impl TeeBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            used: std::sync::atomic::AtomicU64::new(0),
            limit,
        }
    }

    /// The bytes the tees in flight hold now.
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn try_take(&self, n: u64) -> bool {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What a tee hands its owner once: the whole body (ended cleanly, no trailers, within its
/// limits), or nothing (over a limit, an error, trailers, or dropped before its end).
pub type TeeDone = Box<dyn FnOnce(Option<Bytes>) + Send + Sync>;

/// A copy of a body's data taken as the body streams ([`ResponseBody::tee`]): at most `max`
/// bytes, within a shared [`TeeBudget`].
pub struct Tee {
    chunks: Option<VecDeque<Bytes>>,
    len: u64,
    max: u64,
    budget: std::sync::Arc<TeeBudget>,
    done: Option<TeeDone>,
}

impl fmt::Debug for Tee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tee")
            .field("collecting", &self.chunks.is_some())
            .field("len", &self.len)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Tee {
    /// Collects at most `max` bytes within `budget`; `done` is called once, at the body's
    /// end (with the bytes) or when collecting stops (with `None`).
    pub fn new(
        max: u64,
        budget: std::sync::Arc<TeeBudget>,
        done: impl FnOnce(Option<Bytes>) + Send + Sync + 'static,
    ) -> Self {
        Self {
            chunks: Some(VecDeque::new()),
            len: 0,
            max,
            budget,
            done: Some(Box::new(done)),
        }
    }

    fn data(&mut self, data: &Bytes) {
        let Some(chunks) = &mut self.chunks else {
            return;
        };
        let n = data.len() as u64;
        if self.len.saturating_add(n) > self.max || !self.budget.try_take(n) {
            self.abandon();
            return;
        }
        self.len += n;
        if n > 0 {
            chunks.push_back(data.clone());
        }
    }

    fn abandon(&mut self) {
        if self.chunks.take().is_some() {
            self.budget.give_back(self.len);
            self.len = 0;
        }
        if let Some(done) = self.done.take() {
            done(None);
        }
    }

    fn end(&mut self) {
        let Some(chunks) = self.chunks.take() else {
            return;
        };
        self.budget.give_back(self.len);
        let bytes = concat(&chunks);
        if let Some(done) = self.done.take() {
            done(Some(bytes));
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// What follows the bytes already read.
enum Rest<B: Body> {
    /// The unread rest of the inner body.
    Body(Pin<Box<B>>),
    /// The error the inner body returned while it was read; taken when sent.
    Error(Option<B::Error>),
    /// The rest has ended.
    Done,
}

impl<B: Body> ResponseBody<B> {
    /// The inner body, streamed through untouched.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A full body of `data`, without trailers: one buffer, no allocation.
    pub fn full(data: Bytes) -> Self {
        Self::with_trailers(data, None)
    }

    /// A body of no data and no trailers.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A full body of `data`, then `trailers` if there are some.
    pub fn with_trailers(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Full {
                data: Chunks::one(data),
                trailers,
            },
        }
    }

    /// A full body of `chunks` in order, then `trailers` if there are some.
    pub fn from_chunks(chunks: VecDeque<Bytes>, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Full {
                data: Chunks::many(chunks),
                trailers,
            },
        }
    }

    /// The bytes already `read` from a body, then its unread `rest`.
    pub fn then_rest(read: VecDeque<Bytes>, rest: Pin<Box<B>>) -> Self {
        Self::partial(read, Rest::Body(rest))
    }

    /// The bytes `read` from a body before it failed, then its `error`, which ends the body.
    pub fn then_error(read: VecDeque<Bytes>, error: B::Error) -> Self {
        Self::partial(read, Rest::Error(Some(error)))
    }

    /// `body` streamed through untouched while `tee` keeps a copy of its data (a cache
    /// storing a response of unknown length as it reaches the client).
    pub fn tee(body: B, tee: Tee) -> Self {
        Self {
            kind: Kind::Tee { body, tee },
        }
    }

    fn partial(read: VecDeque<Bytes>, rest: Rest<B>) -> Self {
        Self {
            kind: Kind::Partial {
                read: Chunks::many(read),
                rest,
            },
        }
    }
}

impl<B: Body> From<Collected<B>> for ResponseBody<B> {
    fn from(collected: Collected<B>) -> Self {
        collected.into_body()
    }
}

impl<B: Body> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Full { .. } => "Full",
            Kind::Partial { .. } => "Partial",
            Kind::Tee { .. } => "Tee",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

/// A frame of any [`Buf`] as a frame of [`Bytes`].
fn into_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
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
            KindProj::Inner { body } => body.poll_frame(cx).map(|f| f.map(|r| r.map(into_bytes))),
            KindProj::Full { data, trailers } => {
                if let Some(chunk) = data.pop() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Partial { read, rest } => {
                if let Some(chunk) = read.pop() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                match rest {
                    Rest::Body(body) => match ready!(body.as_mut().poll_frame(cx)) {
                        Some(Ok(frame)) => Poll::Ready(Some(Ok(into_bytes(frame)))),
                        // An error ends the body here too: the rest is not polled again.
                        Some(Err(e)) => {
                            *rest = Rest::Done;
                            Poll::Ready(Some(Err(e)))
                        }
                        None => {
                            *rest = Rest::Done;
                            Poll::Ready(None)
                        }
                    },
                    Rest::Error(error) => {
                        let error = error.take();
                        *rest = Rest::Done;
                        Poll::Ready(error.map(Err))
                    }
                    Rest::Done => Poll::Ready(None),
                }
            }
            KindProj::Tee { mut body, tee } => match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let frame = into_bytes(frame);
                    match frame.data_ref() {
                        Some(data) => tee.data(data),
                        // Trailers: an entry stores none.
                        None => tee.abandon(),
                    }
                    // A consumer may stop polling once the body says it is at its end
                    // (hyper does): the copy is complete now.
                    if body.is_end_stream() {
                        tee.end();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Some(Err(e)) => {
                    tee.abandon();
                    Poll::Ready(Some(Err(e)))
                }
                None => {
                    tee.end();
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            // Not at the end while the copy is open: the end must be polled to finish it.
            Kind::Tee { body, tee } => tee.chunks.is_none() && body.is_end_stream(),
            Kind::Full { data, trailers } => data.is_empty() && trailers.is_none(),
            Kind::Partial { read, rest } => {
                read.is_empty()
                    && match rest {
                        Rest::Body(body) => body.is_end_stream(),
                        Rest::Error(error) => error.is_none(),
                        Rest::Done => true,
                    }
            }
        }
    }

    /// Exact for a full body. For the bytes already read then the rest: those bytes plus the
    /// rest's own hint. For the bytes read then an error: at least those bytes and no upper
    /// bound, so that no consumer frames the response as a complete message of that length
    /// (hyper would send it with that `Content-Length`, and the truncation would be invisible).
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } | Kind::Tee { body, .. } => body.size_hint(),
            Kind::Full { data, .. } => SizeHint::with_exact(data.len()),
            Kind::Partial { read, rest } => {
                let read = read.len();
                match rest {
                    Rest::Body(body) => {
                        let hint = body.size_hint();
                        let mut out = SizeHint::new();
                        out.set_lower(hint.lower().saturating_add(read));
                        if let Some(upper) = hint.upper() {
                            out.set_upper(upper.saturating_add(read));
                        }
                        out
                    }
                    Rest::Error(Some(_)) => {
                        let mut out = SizeHint::new();
                        out.set_lower(read);
                        out
                    }
                    Rest::Error(None) | Rest::Done => SizeHint::with_exact(read),
                }
            }
        }
    }
}

/// Buffered data: one buffer without an allocation, or several in order. Never holds an empty
/// buffer, so that a body of no data is at its end.
enum Chunks {
    One(Option<Bytes>),
    Many(VecDeque<Bytes>),
}

impl Chunks {
    fn one(data: Bytes) -> Self {
        Chunks::One((!data.is_empty()).then_some(data))
    }

    fn many(mut chunks: VecDeque<Bytes>) -> Self {
        chunks.retain(|c| !c.is_empty());
        if chunks.len() <= 1 {
            Chunks::One(chunks.pop_front())
        } else {
            Chunks::Many(chunks)
        }
    }

    fn pop(&mut self) -> Option<Bytes> {
        match self {
            Chunks::One(data) => data.take(),
            Chunks::Many(chunks) => chunks.pop_front(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Chunks::One(data) => data.is_none(),
            Chunks::Many(chunks) => chunks.is_empty(),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Chunks::One(data) => data.as_ref().map_or(0, |d| d.len() as u64),
            Chunks::Many(chunks) => total(chunks),
        }
    }
}

fn total(chunks: &VecDeque<Bytes>) -> u64 {
    chunks.iter().map(|c| c.len() as u64).sum()
}

/// A body read by [`collect_bounded`]: whole, or cut at the limit, or cut by an error.
///
/// The order is fixed: the bytes read, then the rest (past the limit) or the error. The two
/// never meet: the body is not read past the limit, so an error after it is the rest's to
/// send; and a body is not polled again after it returned an error, so an error has no rest
/// (the error ends the body: [`Collected::into_body`] sends it after the bytes read).
pub enum Collected<B: Body> {
    /// The body read to its end within the limit: its data and its trailers.
    Whole {
        /// The data frames in order (empty ones left out).
        chunks: VecDeque<Bytes>,
        /// The trailer frames, merged.
        trailers: Option<HeaderMap>,
    },
    /// The body sent more than the limit. Reading stopped at the frame that took it past the
    /// limit (that frame is the last of `read`); nothing after it was read.
    Over {
        /// The data frames read, the last one past the limit.
        read: VecDeque<Bytes>,
        /// The unread rest of the body.
        rest: Pin<Box<B>>,
    },
    /// The body returned an error before its end and within the limit.
    Failed {
        /// The data frames read before the error.
        read: VecDeque<Bytes>,
        /// The body's error.
        error: B::Error,
    },
}

impl<B: Body> Collected<B> {
    /// Whether the body was read to its end within the limit.
    pub fn is_whole(&self) -> bool {
        matches!(self, Collected::Whole { .. })
    }

    /// The data frames read, in order.
    pub fn chunks(&self) -> &VecDeque<Bytes> {
        match self {
            Collected::Whole { chunks, .. } => chunks,
            Collected::Over { read, .. } | Collected::Failed { read, .. } => read,
        }
    }

    /// The trailers of a whole body.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        match self {
            Collected::Whole { trailers, .. } => trailers.as_ref(),
            _ => None,
        }
    }

    /// How many bytes were read.
    pub fn len(&self) -> u64 {
        total(self.chunks())
    }

    /// Whether no data was read.
    pub fn is_empty(&self) -> bool {
        self.chunks().is_empty()
    }

    /// The data read as one buffer: no copy when it came in one frame.
    pub fn to_bytes(&self) -> Bytes {
        concat(self.chunks())
    }

    /// The body a client gets: the data read, then the trailers (whole), the rest (over) or
    /// the error (failed) — the body as if it had not been read.
    pub fn into_body(self) -> ResponseBody<B> {
        match self {
            Collected::Whole { chunks, trailers } => ResponseBody::from_chunks(chunks, trailers),
            Collected::Over { read, rest } => ResponseBody::then_rest(read, rest),
            Collected::Failed { read, error } => ResponseBody::then_error(read, error),
        }
    }
}

impl<B: Body> fmt::Debug for Collected<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self {
            Collected::Whole { .. } => "Whole",
            Collected::Over { .. } => "Over",
            Collected::Failed { .. } => "Failed",
        };
        f.debug_struct("Collected")
            .field("end", &end)
            .field("len", &self.len())
            .finish()
    }
}

/// `chunks` as one buffer: no copy for one chunk, one copy for several.
pub fn concat(chunks: &VecDeque<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks[0].clone(),
        _ => {
            let mut out = Vec::with_capacity(total(chunks) as usize);
            for c in chunks {
                out.extend_from_slice(c);
            }
            Bytes::from(out)
        }
    }
}

/// Reads `body` until its end, an error, or more than `limit` bytes, whichever comes first.
///
/// The size hint is not trusted: a body that promised less than it sends stops being read at
/// the frame that takes it past `limit`, and its rest is handed back unread
/// ([`Collected::Over`]). The returned future is `Unpin` (the body is boxed), so a layer's
/// own future can hold it in a field and poll it.
pub fn collect_bounded<B: Body>(body: B, limit: u64) -> CollectBounded<B> {
    CollectBounded {
        body: Some(Box::pin(body)),
        chunks: VecDeque::new(),
        trailers: None,
        read: 0,
        limit,
    }
}

/// The future of [`collect_bounded`].
pub struct CollectBounded<B: Body> {
    body: Option<Pin<Box<B>>>,
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    read: u64,
    limit: u64,
}

impl<B: Body> fmt::Debug for CollectBounded<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectBounded")
            .field("read", &self.read)
            .field("limit", &self.limit)
            .finish()
    }
}

impl<B: Body> Future for CollectBounded<B> {
    type Output = Collected<B>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Collected<B>> {
        let this = &mut *self;
        let body = this
            .body
            .as_mut()
            .expect("CollectBounded polled after completion");
        loop {
            match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let bytes = data.copy_to_bytes(data.remaining());
                        this.read = this.read.saturating_add(bytes.len() as u64);
                        if !bytes.is_empty() {
                            this.chunks.push_back(bytes);
                        }
                        if this.read > this.limit {
                            let rest = this.body.take().expect("the body is there");
                            return Poll::Ready(Collected::Over {
                                read: std::mem::take(&mut this.chunks),
                                rest,
                            });
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            match &mut this.trailers {
                                Some(all) => all.extend(t),
                                None => this.trailers = Some(t),
                            }
                        }
                    }
                },
                Some(Err(error)) => {
                    this.body = None;
                    return Poll::Ready(Collected::Failed {
                        read: std::mem::take(&mut this.chunks),
                        error,
                    });
                }
                None => {
                    this.body = None;
                    return Poll::Ready(Collected::Whole {
                        chunks: std::mem::take(&mut this.chunks),
                        trailers: this.trailers.take(),
                    });
                }
            }
        }
    }
}

/// The `get_ref` / `get_mut` / `into_inner` accessors of a middleware service that wraps its
/// inner service in a field: by default the field `inner` of type `S`.
///
/// Call it inside the service's `impl` block:
///
/// ```
/// #[derive(Debug)]
/// pub struct Wrapper<S> {
///     inner: S,
/// }
///
/// impl<S> Wrapper<S> {
///     turret_body::inner_service_accessors!();
/// }
///
/// #[derive(Debug)]
/// pub struct Other<T> {
///     service: T,
/// }
///
/// impl<T> Other<T> {
///     turret_body::inner_service_accessors!(service: T);
/// }
///
/// let mut w = Wrapper { inner: 1 };
/// *w.get_mut() += 1;
/// assert_eq!(*w.get_ref(), 2);
/// assert_eq!(w.into_inner(), 2);
/// assert_eq!(Other { service: "s" }.into_inner(), "s");
/// ```
#[macro_export]
macro_rules! inner_service_accessors {
    () => {
        $crate::inner_service_accessors!(inner: S);
    };
    ($field:ident : $inner:ty) => {
        /// The inner service.
        pub fn get_ref(&self) -> &$inner {
            &self.$field
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut $inner {
            &mut self.$field
        }

        /// Consumes `self`, returning the inner service.
        pub fn into_inner(self) -> $inner {
            self.$field
        }
    };
}

#[cfg(test)]
mod tests;
