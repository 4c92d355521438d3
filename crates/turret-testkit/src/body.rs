//! Response bodies for tests of the layers: chunks one by one with a chosen size hint,
//! chunks fed through a channel, and a large body that counts what was read of it.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// A body that yields its chunks one by one, with a chosen (possibly wrong) size hint:
/// none by default, a stream as far as a layer can tell.
#[derive(Debug, Clone, Default)]
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    hint: Option<u64>,
}

impl Chunks {
    /// These chunks, without a size hint.
    pub fn new<I, C>(chunks: I) -> Self
    where
        I: IntoIterator<Item = C>,
        C: Into<Bytes>,
    {
        Self {
            chunks: chunks.into_iter().map(Into::into).collect(),
            hint: None,
        }
    }

    /// Claims an exact size of `hint` bytes, whatever the chunks add up to.
    pub fn with_hint(mut self, hint: u64) -> Self {
        self.hint = Some(hint);
        self
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn size_hint(&self) -> SizeHint {
        self.hint.map(SizeHint::with_exact).unwrap_or_default()
    }
}

/// A body whose chunks arrive on a channel: unknown size, like server-sent events. It ends
/// when every sender is dropped.
#[derive(Debug)]
pub struct Streaming(pub mpsc::Receiver<Bytes>);

impl Streaming {
    /// A body and the sender of its chunks (a channel of `capacity` chunks).
    pub fn channel(capacity: usize) -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Self(rx))
    }
}

impl Body for Streaming {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
    }
}

/// `total` bytes of `x` in chunks of `chunk` bytes, with a chosen exact size hint, adding
/// each chunk's length to a shared counter when it is read.
#[derive(Debug)]
pub struct Counted {
    left: u64,
    chunk: u64,
    hint: u64,
    polled: Arc<AtomicU64>,
}

impl Counted {
    /// `total` bytes claiming `hint`, read `chunk` bytes at a time (at least 1), counted in
    /// `polled`.
    pub fn new(total: u64, hint: u64, chunk: u64, polled: Arc<AtomicU64>) -> Self {
        Self {
            left: total,
            chunk: chunk.max(1),
            hint,
            polled,
        }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk);
        self.left -= n;
        self.polled.fetch_add(n, Ordering::SeqCst);
        let len = usize::try_from(n).expect("a chunk fits in memory");
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; len])))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.hint)
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}
