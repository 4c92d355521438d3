use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use futures_util::future::{FutureExt as _, join, join_all};
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt as _;
use tokio::sync::oneshot;
use tower::{ServiceBuilder, ServiceExt as _, service_fn};
use turret_testkit::body::Chunks;

use super::*;

fn get(uri: &str) -> Request<String> {
    Request::get(uri).body(String::new()).unwrap()
}

async fn text<B>(res: Response<ResponseBody<B>>) -> String
where
    B: Body,
    B::Data: bytes::Buf,
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Sends `reqs` at once: every request is in flight before any inner call may finish.
async fn concurrently<S, B>(
    svc: S,
    reqs: Vec<Request<String>>,
    gate: oneshot::Sender<()>,
) -> Vec<Response<ResponseBody<B>>>
where
    S: tower_service::Service<
            Request<String>,
            Response = Response<ResponseBody<B>>,
            Error = Infallible,
        > + Clone,
    B: Body,
{
    let calls = join_all(reqs.into_iter().map(|r| svc.clone().oneshot(r)));
    let (responses, ()) = join(calls, async {
        let _ = gate.send(());
    })
    .await;
    responses.into_iter().map(Result::unwrap).collect()
}

type Gate = futures_util::future::Shared<oneshot::Receiver<()>>;

fn gate() -> (oneshot::Sender<()>, Gate) {
    let (tx, rx) = oneshot::channel();
    (tx, rx.shared())
}

#[tokio::test]
async fn identical_concurrent_gets_share_one_inner_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, gated) = gate();
    let counter = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(CoalesceLayer::new())
        .service(service_fn(move |req: Request<String>| {
            let counter = counter.clone();
            let gated = gated.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = gated.await;
                let res = Response::builder()
                    .status(StatusCode::OK)
                    .header("x-report", "sales")
                    .body(format!("report for {}", req.uri()))
                    .unwrap();
                Ok::<_, Infallible>(res)
            }
        }));
    let reqs = (0..50)
        .map(|_| get("/reports/sales?from=2024-01-01"))
        .collect();
    let responses = concurrently(svc.clone(), reqs, open).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let mut coalesced = 0;
    for res in responses {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-report"], "sales");
        coalesced += usize::from(res.extensions().get::<Coalesced>().is_some());
        assert_eq!(text(res).await, "report for /reports/sales?from=2024-01-01");
    }
    assert_eq!(coalesced, 49);
    assert_eq!(svc.in_flight(), 0);
    // Done: the next request is a new call, not a cached one.
    let _ = svc
        .clone()
        .oneshot(get("/reports/sales?from=2024-01-01"))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

fn counting_service(
    calls: Arc<AtomicUsize>,
    gated: Gate,
) -> impl tower_service::Service<
    Request<String>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |req: Request<String>| {
        let calls = calls.clone();
        let gated = gated.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = gated.await;
            Ok::<_, Infallible>(Response::new(format!(
                "{} {} {:?}",
                req.method(),
                req.uri(),
                req.headers().get(header::ACCEPT_LANGUAGE)
            )))
        }
    })
}

#[tokio::test]
async fn different_uris_methods_and_varied_headers_are_separate_calls() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, gated) = gate();
    let svc = ServiceBuilder::new()
        .layer(CoalesceLayer::new().vary_on(header::ACCEPT_LANGUAGE))
        .service(counting_service(calls.clone(), gated));
    let lang = |uri: &str, l: &str| {
        let mut r = get(uri);
        r.headers_mut()
            .insert(header::ACCEPT_LANGUAGE, l.parse().unwrap());
        r
    };
    let head = Request::head("/a").body(String::new()).unwrap();
    let reqs = vec![
        get("/a"),
        get("/a"),
        get("/b"),
        head,
        lang("/a", "es"),
        lang("/a", "es"),
        lang("/a", "en"),
    ];
    let responses = concurrently(svc, reqs, open).await;
    // /a, /b, HEAD /a, /a+es, /a+en
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    let bodies: Vec<String> = join_all(responses.into_iter().map(text)).await;
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[4], bodies[5]);
    assert!(bodies[4].contains("es") && bodies[6].contains("en"));
    assert!(bodies[3].starts_with("HEAD"));
}

#[tokio::test]
async fn other_methods_pass_through() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, gated) = gate();
    let svc = ServiceBuilder::new()
        .layer(CoalesceLayer::new())
        .service(counting_service(calls.clone(), gated));
    let post = || Request::post("/a").body(String::new()).unwrap();
    concurrently(svc, vec![post(), post(), post()], open).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_body_over_the_bound_releases_the_waiters_to_call_themselves() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, gated) = gate();
    let svc = ServiceBuilder::new()
        .layer(CoalesceLayer::new().max_body(8))
        .service(counting_service(calls.clone(), gated));
    let responses = concurrently(svc, (0..5).map(|_| get("/big")).collect(), open).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "every waiter made its own call"
    );
    for res in responses {
        assert!(res.extensions().get::<Coalesced>().is_none());
        assert_eq!(text(res).await, "GET /big None");
    }
}

#[tokio::test]
async fn a_streaming_body_releases_the_waiters_and_reaches_the_leader_untouched() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, gated) = gate();
    let counter = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(CoalesceLayer::new())
        .service(service_fn(move |_req: Request<String>| {
            let counter = counter.clone();
            let gated = gated.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = gated.await;
                let chunks = ["event: a\n", "event: b\n"]
                    .map(|s: &'static str| Bytes::from_static(s.as_bytes()));
                // No size hint: a stream, as far as the layer can tell.
                Ok::<_, Infallible>(Response::new(Chunks::new(chunks)))
            }
        }));
    let responses = concurrently(svc, (0..4).map(|_| get("/events")).collect(), open).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    for res in responses {
        assert_eq!(text(res).await, "event: a\nevent: b\n");
    }
}

#[tokio::test]
async fn a_failed_leader_releases_the_waiters() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, gated) = gate();
    let counter = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(CoalesceLayer::new())
        .service(service_fn(move |_req: Request<String>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let gated = gated.clone();
            async move {
                let _ = gated.await;
                if n == 0 {
                    Err("origin down")
                } else {
                    Ok(Response::new(String::from("ok")))
                }
            }
        }));
    let calls_all = join_all((0..4).map(|_| svc.clone().oneshot(get("/a"))));
    let (results, ()) = join(calls_all, async {
        let _ = open.send(());
    })
    .await;
    assert_eq!(
        results.iter().filter(|r| r.is_err()).count(),
        1,
        "only the leader fails"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_dropped_leader_releases_the_waiters() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (_never, gated) = gate();
    let (open, second_gate) = gate();
    let counter = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(CoalesceLayer::new())
        .service(service_fn(move |_req: Request<String>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let gate = if n == 0 {
                gated.clone()
            } else {
                second_gate.clone()
            };
            async move {
                let _ = gate.await;
                Ok::<_, Infallible>(Response::new(String::from("ok")))
            }
        }));
    let mut leader = Box::pin(svc.clone().oneshot(get("/a")));
    assert!(leader.as_mut().now_or_never().is_none());
    let follower = tokio::spawn(svc.clone().oneshot(get("/a")));
    tokio::task::yield_now().await;
    drop(leader);
    let _ = open.send(());
    let res = follower.await.unwrap().unwrap();
    assert_eq!(text(res).await, "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(svc.in_flight(), 0);
}

#[tokio::test]
async fn trailers_of_a_shared_response_reach_every_waiter() {
    let (open, gated) = gate();
    let svc = ServiceBuilder::new()
        .layer(CoalesceLayer::new())
        .service(service_fn(move |_req: Request<String>| {
            let gated = gated.clone();
            async move {
                let _ = gated.await;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                let body = http_body_util::Full::new(Bytes::from_static(b"hi"))
                    .with_trailers(async move { Some(Ok(trailers)) });
                Ok::<_, Infallible>(Response::new(body))
            }
        }));
    let responses = concurrently(svc, vec![get("/t"), get("/t")], open).await;
    for res in responses {
        let collected = res.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "hi");
    }
}

#[test]
fn the_method_is_part_of_the_key() {
    let layer = CoalesceLayer::new();
    let svc = tower_layer::Layer::layer(
        &layer,
        tower::service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }),
    );
    let get_key = svc.key(&get("/a"));
    let head_key = svc.key(&Request::head("/a").body(String::new()).unwrap());
    assert_ne!(get_key, head_key);
    let _ = Method::GET;
}

/// A service naming the `Host` and `Accept-Language` it was asked with, its response varying
/// on `vary` (when given).
fn echo_service(
    calls: Arc<AtomicUsize>,
    gated: Gate,
    vary: Option<&'static str>,
) -> impl tower_service::Service<
    Request<String>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |req: Request<String>| {
        let calls = calls.clone();
        let gated = gated.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = gated.await;
            let mut res = Response::new(format!(
                "{:?} {:?}",
                req.headers().get(header::HOST),
                req.headers().get(header::ACCEPT_LANGUAGE)
            ));
            if let Some(vary) = vary {
                res.headers_mut()
                    .insert(header::VARY, http::HeaderValue::from_static(vary));
            }
            Ok::<_, Infallible>(res)
        }
    })
}

fn with(uri: &str, headers: &[(http::HeaderName, &'static str)]) -> Request<String> {
    let mut r = get(uri);
    for (name, value) in headers {
        r.headers_mut()
            .append(name, http::HeaderValue::from_static(value));
    }
    r
}

#[tokio::test]
async fn requests_for_different_hosts_never_share_a_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, gated) = gate();
    let svc = ServiceBuilder::new()
        .layer(CoalesceLayer::new())
        .service(echo_service(calls.clone(), gated, None));
    let host = |h: &'static str| with("/a", &[(header::HOST, h)]);
    let reqs = vec![
        host("shop.example"),
        host("shop.example"),
        host("evil.example"),
        get("/a"),
    ];
    let responses = concurrently(svc, reqs, open).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let bodies: Vec<String> = join_all(responses.into_iter().map(text)).await;
    assert_eq!(bodies[0], bodies[1]);
    assert!(bodies[2].contains("evil.example"), "{}", bodies[2]);
    assert!(bodies[3].starts_with("None"), "{}", bodies[3]);
}

#[tokio::test]
async fn a_response_varying_on_a_field_not_coalesced_on_is_not_fanned_out_rfc9111_4_1() {
    for vary in ["accept-language", "Accept-Encoding, Accept-Language", "*"] {
        let calls = Arc::new(AtomicUsize::new(0));
        let (open, gated) = gate();
        let svc = ServiceBuilder::new()
            .layer(CoalesceLayer::new().vary_on(header::ACCEPT_ENCODING))
            .service(echo_service(calls.clone(), gated, Some(vary)));
        let lang = |l: &'static str| with("/a", &[(header::ACCEPT_LANGUAGE, l)]);
        let reqs = vec![lang("en"), lang("fr"), lang("de")];
        let responses = concurrently(svc.clone(), reqs, open).await;
        let bodies: Vec<String> = join_all(responses.into_iter().map(text)).await;
        for (body, l) in bodies.iter().zip(["en", "fr", "de"]) {
            assert!(body.contains(l), "Vary: {vary}: {body} for {l}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3, "Vary: {vary}");
        assert_eq!(svc.in_flight(), 0);
    }
    // Varying only on fields the layer coalesces on: shared.
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, gated) = gate();
    let svc = ServiceBuilder::new()
        .layer(CoalesceLayer::new().vary_on(header::ACCEPT_LANGUAGE))
        .service(echo_service(calls.clone(), gated, Some("Accept-Language")));
    let lang = |l: &'static str| with("/a", &[(header::ACCEPT_LANGUAGE, l)]);
    let responses = concurrently(svc, vec![lang("en"), lang("en"), lang("fr")], open).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let coalesced = responses
        .iter()
        .filter(|r| r.extensions().get::<Coalesced>().is_some())
        .count();
    assert_eq!(coalesced, 1);
}
