use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::{Collected, ResponseBody, collect_bounded, concat};

type Item = Result<Frame<&'static [u8]>, &'static str>;

/// A body that sends a script of frames and errors, claims whatever size hint it is given,
/// counts how often it is polled, and fails the test when polled after an error or its end.
struct Script {
    items: VecDeque<Item>,
    hint: SizeHint,
    polls: Arc<AtomicUsize>,
    finished: bool,
}

impl Script {
    fn new(items: impl IntoIterator<Item = Item>, hint: SizeHint) -> (Self, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let body = Script {
            items: items.into_iter().collect(),
            hint,
            polls: polls.clone(),
            finished: false,
        };
        (body, polls)
    }
}

impl Body for Script {
    // Not `Bytes`: any `Buf` is accepted.
    type Data = &'static [u8];
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<&'static [u8]>, &'static str>>> {
        assert!(!self.finished, "polled after an error or its end");
        self.polls.fetch_add(1, Ordering::SeqCst);
        let item = self.items.pop_front();
        if !matches!(item, Some(Ok(_))) {
            self.finished = true;
        }
        Poll::Ready(item)
    }

    fn is_end_stream(&self) -> bool {
        self.items.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

fn data(d: &'static str) -> Item {
    Ok(Frame::data(d.as_bytes()))
}

fn trailers(name: &'static str, value: &'static str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert(name, HeaderValue::from_static(value));
    t
}

fn exact(n: u64) -> SizeHint {
    SizeHint::with_exact(n)
}

/// Reads a body frame by frame: its data, its trailers, and the error that ended it.
async fn drain<B: Body<Data = Bytes>>(
    body: B,
) -> (Vec<Bytes>, Option<HeaderMap>, Option<B::Error>) {
    let mut body = std::pin::pin!(body);
    let (mut chunks, mut trailers) = (Vec::new(), None);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(d) => chunks.push(d),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Err(e) => {
                assert!(body.frame().await.is_none(), "the error ends the body");
                assert!(body.is_end_stream());
                return (chunks, trailers, Some(e));
            }
        }
    }
    assert!(body.is_end_stream());
    (chunks, trailers, None)
}

#[tokio::test]
async fn a_whole_body_keeps_its_trailers_and_is_sent_as_it_came() {
    let (body, _) = Script::new(
        [
            data("ab"),
            data(""),
            data("cd"),
            Ok(Frame::trailers(trailers("x-a", "1"))),
            Ok(Frame::trailers(trailers("x-b", "2"))),
        ],
        exact(4),
    );
    let collected = collect_bounded(body, 4).await;
    assert!(collected.is_whole());
    assert_eq!(collected.len(), 4);
    assert_eq!(collected.chunks().len(), 2, "the empty frame is left out");
    assert_eq!(collected.to_bytes(), "abcd");
    let t = collected.trailers().expect("trailers");
    assert_eq!(t["x-a"], "1");
    assert_eq!(t["x-b"], "2", "trailer frames are merged");

    let body = collected.into_body();
    assert_eq!(body.size_hint().exact(), Some(4));
    assert!(!body.is_end_stream());
    let (chunks, trailers, error) = drain(body).await;
    assert_eq!(chunks, ["ab", "cd"]);
    assert_eq!(trailers.expect("trailers").len(), 2);
    assert!(error.is_none());
}

#[tokio::test]
async fn a_body_longer_than_its_hint_is_not_read_past_the_limit() {
    // Claims 4 bytes, sends 16.
    let (body, polls) = Script::new(
        [data("aaaa"), data("bbbb"), data("cccc"), data("dddd")],
        exact(4),
    );
    let collected = collect_bounded(body, 6).await;
    let Collected::Over { read, .. } = &collected else {
        panic!("not over the limit: {collected:?}");
    };
    assert_eq!(
        concat(read),
        "aaaabbbb",
        "reading stops at the frame past the limit"
    );
    assert_eq!(polls.load(Ordering::SeqCst), 2, "nothing after it was read");

    let body = collected.into_body();
    // The read bytes plus what the rest says of itself (a lie, passed on as it is).
    assert_eq!(body.size_hint().lower(), 12);
    assert_eq!(body.size_hint().upper(), Some(12));
    let (chunks, _, error) = drain(body).await;
    assert_eq!(concat(&chunks.into()), "aaaabbbbccccdddd");
    assert!(error.is_none());
    assert_eq!(polls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_size_hint_is_never_trusted_for_the_limit() {
    // Claims no more than 2 bytes and sends 3: over a limit of 2.
    let mut hint = SizeHint::new();
    hint.set_upper(2);
    let (body, _) = Script::new([data("abc")], hint);
    assert!(matches!(
        collect_bounded(body, 2).await,
        Collected::Over { .. }
    ));

    // Claims a million bytes and sends 3: whole within a limit of 3.
    let (body, _) = Script::new([data("abc")], exact(1_000_000));
    let collected = collect_bounded(body, 3).await;
    assert!(collected.is_whole());
    assert_eq!(collected.into_body().size_hint().exact(), Some(3));

    // Exactly the limit is within it.
    let (body, _) = Script::new([data("ab"), data("c")], SizeHint::new());
    assert!(collect_bounded(body, 3).await.is_whole());

    // An empty body is whole within a limit of 0.
    let (body, _) = Script::new([], exact(0));
    let collected = collect_bounded(body, 0).await;
    assert!(collected.is_whole() && collected.is_empty());
    assert!(collected.into_body().is_end_stream());
}

#[tokio::test]
async fn an_error_mid_body_comes_after_the_bytes_read_and_ends_the_body() {
    let (body, polls) = Script::new([data("ab"), Err("reset"), data("never")], exact(7));
    let collected = collect_bounded(body, 100).await;
    let Collected::Failed { read, error } = &collected else {
        panic!("not failed: {collected:?}");
    };
    assert_eq!(concat(read), "ab");
    assert_eq!(*error, "reset");
    assert_eq!(
        polls.load(Ordering::SeqCst),
        2,
        "not polled after the error"
    );

    let body = collected.into_body();
    // At least what was read, and no upper bound: never framed as a complete message.
    assert_eq!(body.size_hint().lower(), 2);
    assert_eq!(body.size_hint().upper(), None);
    assert!(!body.is_end_stream());
    let (chunks, trailers, error) = drain(body).await;
    assert_eq!(chunks, ["ab"]);
    assert!(trailers.is_none());
    assert_eq!(error, Some("reset"));
}

#[tokio::test]
async fn an_error_past_the_limit_is_the_rests_to_send() {
    let (body, _) = Script::new([data("abcd"), Err("reset")], exact(4));
    let collected = collect_bounded(body, 3).await;
    assert!(matches!(collected, Collected::Over { .. }));
    let (chunks, _, error) = drain(collected.into_body()).await;
    assert_eq!(chunks, ["abcd"]);
    assert_eq!(error, Some("reset"));
}

#[tokio::test]
async fn an_error_before_any_data_is_the_whole_body() {
    let (body, _) = Script::new([Err("refused")], exact(3));
    let collected = collect_bounded(body, 3).await;
    assert!(matches!(collected, Collected::Failed { .. }));
    assert!(collected.is_empty());
    let (chunks, _, error) = drain(collected.into_body()).await;
    assert!(chunks.is_empty());
    assert_eq!(error, Some("refused"));
}

#[tokio::test]
async fn the_rest_adds_its_own_hint_until_it_ends() {
    let (body, _) = Script::new([data("ab"), data("cd"), data("ef")], SizeHint::new());
    let collected = collect_bounded(body, 1).await;
    let mut body = std::pin::pin!(collected.into_body());
    // "ab" read; the rest hints nothing of itself.
    assert_eq!(body.size_hint().lower(), 2);
    assert_eq!(body.size_hint().upper(), None);
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "ab");
    assert_eq!(body.size_hint().lower(), 0);
    while body.frame().await.is_some() {}
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    assert!(body.frame().await.is_none(), "an ended body stays ended");
}

#[tokio::test]
async fn full_bodies_are_exact_and_end_after_their_trailers() {
    let body: ResponseBody<Script> = ResponseBody::full(Bytes::from_static(b"hello"));
    assert_eq!(body.size_hint().exact(), Some(5));
    assert!(!body.is_end_stream());
    let (chunks, trailers, _) = drain(body).await;
    assert_eq!(chunks, ["hello"]);
    assert!(trailers.is_none());

    let empty: ResponseBody<Script> = ResponseBody::empty();
    assert!(empty.is_end_stream());
    assert_eq!(empty.size_hint().exact(), Some(0));
    assert!(ResponseBody::<Script>::full(Bytes::new()).is_end_stream());

    let only_trailers: ResponseBody<Script> =
        ResponseBody::with_trailers(Bytes::new(), Some(trailers_of("x-t")));
    assert!(
        !only_trailers.is_end_stream(),
        "the trailers are still to send"
    );
    assert_eq!(only_trailers.size_hint().exact(), Some(0));
    let (chunks, trailers, _) = drain(only_trailers).await;
    assert!(chunks.is_empty());
    assert!(trailers.expect("trailers").contains_key("x-t"));

    let chunked: ResponseBody<Script> = ResponseBody::from_chunks(
        VecDeque::from([Bytes::from("a"), Bytes::new(), Bytes::from("bc")]),
        None,
    );
    assert_eq!(chunked.size_hint().exact(), Some(3));
    let (chunks, _, _) = drain(chunked).await;
    assert_eq!(chunks, ["a", "bc"]);
}

fn trailers_of(name: &'static str) -> HeaderMap {
    trailers(name, "1")
}

#[tokio::test]
async fn the_inner_body_is_untouched_whatever_its_data() {
    let mut hint = SizeHint::new();
    hint.set_lower(1);
    let (body, polls) = Script::new(
        [
            data("x"),
            data("yz"),
            Ok(Frame::trailers(trailers_of("x-t"))),
        ],
        hint,
    );
    let body = ResponseBody::inner(body);
    assert_eq!(body.size_hint().lower(), hint.lower());
    assert_eq!(body.size_hint().upper(), hint.upper());
    let (chunks, trailers, error) = drain(body).await;
    assert_eq!(chunks, ["x", "yz"]);
    assert!(trailers.is_some());
    assert!(error.is_none());
    assert_eq!(polls.load(Ordering::SeqCst), 4);
}

#[test]
fn concat_copies_only_several_chunks() {
    let one = Bytes::from("one");
    let joined = concat(&VecDeque::from([one.clone()]));
    assert_eq!(joined.as_ptr(), one.as_ptr(), "one chunk is not copied");
    let many = concat(&VecDeque::from([Bytes::from("a"), Bytes::from("b")]));
    assert_eq!(many, "ab");
    assert!(concat(&VecDeque::new()).is_empty());
}

mod tee {
    use std::sync::Mutex;

    use super::*;
    use crate::{Tee, TeeBudget};

    fn data(s: &'static str) -> Item {
        Ok(Frame::data(s.as_bytes()))
    }

    /// A tee whose outcome lands in the returned slot (`Some(None)`: abandoned).
    fn tee(max: u64, budget: &Arc<TeeBudget>) -> (Tee, Arc<Mutex<Option<Option<Bytes>>>>) {
        let slot = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let tee = Tee::new(max, budget.clone(), move |bytes| {
            let mut out = out.lock().unwrap();
            assert!(out.is_none(), "done called twice");
            *out = Some(bytes);
        });
        (tee, slot)
    }

    #[tokio::test]
    async fn the_body_streams_unchanged_and_the_copy_is_handed_over_at_its_end() {
        let budget = Arc::new(TeeBudget::new(1024));
        let (body, _) = Script::new([data("hello "), data("world")], SizeHint::new());
        let (tee, slot) = tee(100, &budget);
        let body = ResponseBody::tee(body, tee);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello world");
        assert_eq!(
            *slot.lock().unwrap(),
            Some(Some(Bytes::from("hello world")))
        );
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn past_its_limit_the_copy_is_abandoned_and_the_body_still_streams() {
        let budget = Arc::new(TeeBudget::new(1024));
        let (body, _) = Script::new([data("0123"), data("4567"), data("89")], SizeHint::new());
        let (tee, slot) = tee(6, &budget);
        let body = ResponseBody::tee(body, tee);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "0123456789");
        assert_eq!(*slot.lock().unwrap(), Some(None));
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn the_shared_budget_bounds_every_tee_in_flight() {
        let budget = Arc::new(TeeBudget::new(10));
        let (a, _) = Script::new([data("012345"), data("6")], SizeHint::new());
        let (b, _) = Script::new([data("abcdef"), data("g")], SizeHint::new());
        let (tee_a, slot_a) = tee(100, &budget);
        let (tee_b, slot_b) = tee(100, &budget);
        let mut a = ResponseBody::tee(a, tee_a);
        let mut b = ResponseBody::tee(b, tee_b);
        // A takes 6 of the 10 bytes; B's 6 would pass the budget: B stops collecting.
        a.frame().await.unwrap().unwrap();
        assert_eq!(budget.used(), 6);
        b.frame().await.unwrap().unwrap();
        assert_eq!(*slot_b.lock().unwrap(), Some(None));
        assert_eq!(budget.used(), 6);
        assert_eq!(a.collect().await.unwrap().to_bytes(), "6");
        assert_eq!(*slot_a.lock().unwrap(), Some(Some(Bytes::from("0123456"))));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "g");
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn an_error_trailers_or_a_drop_abandon_the_copy() {
        let budget = Arc::new(TeeBudget::new(1024));
        let (failing, _) = Script::new([data("part"), Err("reset")], SizeHint::new());
        let (t, slot) = tee(100, &budget);
        let failing = ResponseBody::tee(failing, t);
        assert!(failing.collect().await.is_err());
        assert_eq!(*slot.lock().unwrap(), Some(None));

        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("1"));
        let (with_trailers, _) =
            Script::new([data("a"), Ok(Frame::trailers(trailers))], SizeHint::new());
        let (t, slot) = tee(100, &budget);
        let body = ResponseBody::tee(with_trailers, t);
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_some());
        assert_eq!(*slot.lock().unwrap(), Some(None));

        let (cut, _) = Script::new([data("abc"), data("def")], SizeHint::new());
        let (t, slot) = tee(100, &budget);
        let mut body = ResponseBody::tee(cut, t);
        body.frame().await.unwrap().unwrap();
        assert_eq!(budget.used(), 3);
        drop(body);
        assert_eq!(*slot.lock().unwrap(), Some(None), "the client went away");
        assert_eq!(budget.used(), 0);
    }
}
