//! ETag generation: strong SHA-256 tags from buffered bodies, and what is left untouched.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use turret_conditional::ConditionalLayer;
use turret_testkit::body::Chunks;

async fn get_with<B>(
    layer: ConditionalLayer,
    method: Method,
    body: impl Fn() -> B + Clone + Send + 'static,
    headers: &[(&str, &str)],
) -> Response<turret_conditional::ResponseBody<B>>
where
    B: Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |_req: Request<()>| {
            let body = body.clone();
            async move { Ok::<_, Infallible>(Response::new(body())) }
        }));
    let mut req = Request::builder().method(method).uri("/r");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    svc.oneshot(req.body(()).unwrap()).await.unwrap()
}

async fn etag_of(body: &'static str) -> HeaderValue {
    let res = get_with(
        ConditionalLayer::new(),
        Method::GET,
        move || Full::from(body),
        &[],
    )
    .await;
    assert_eq!(res.status(), 200);
    res.headers()[header::ETAG].clone()
}

#[tokio::test]
async fn generates_a_strong_sha256_etag_and_keeps_the_body() {
    let res = get_with(
        ConditionalLayer::new(),
        Method::GET,
        || Full::from("hello world"),
        &[],
    )
    .await;
    // base64url(sha256("hello world")[..16])
    assert_eq!(res.headers()[header::ETAG], "\"uU0nuZNNPgilLlLX2n2r-g\"");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello world");
}

#[tokio::test]
async fn same_body_same_tag_different_body_different_tag() {
    assert_eq!(etag_of("a").await, etag_of("a").await);
    assert_ne!(etag_of("a").await, etag_of("b").await);
    assert_ne!(etag_of("").await, etag_of(" ").await);
}

#[tokio::test]
async fn revalidation_with_the_generated_tag_gets_304() {
    let tag = etag_of("payload").await;
    let res = get_with(
        ConditionalLayer::new(),
        Method::GET,
        || Full::from("payload"),
        &[("if-none-match", tag.to_str().unwrap())],
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(res.headers()[header::ETAG], tag);
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    let res = get_with(
        ConditionalLayer::new(),
        Method::GET,
        || Full::from("changed"),
        &[("if-none-match", tag.to_str().unwrap())],
    )
    .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn weak_etags_and_custom_makers() {
    let res = get_with(
        ConditionalLayer::new().weak_etags(true),
        Method::GET,
        || Full::from("x"),
        &[],
    )
    .await;
    let tag = res.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert!(tag.starts_with("W/\""), "{tag}");

    let layer = ConditionalLayer::new().make_etag(|b: &[u8]| Some(format!("len-{}", b.len())));
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("four")))
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.headers()[header::ETAG], "\"len-4\"");

    // A maker's invalid output means no ETag rather than a malformed one.
    let layer = ConditionalLayer::new().make_etag(|_: &[u8]| Some("bad\"tag".to_owned()));
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("four")))
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert!(!res.headers().contains_key(header::ETAG));
}

#[tokio::test]
async fn streaming_bodies_pass_through_untouched() {
    let res = get_with(
        ConditionalLayer::new(),
        Method::GET,
        || Chunks::new([&b"one"[..], b"two", b"three"]),
        &[("if-none-match", "\"x\"")],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(!res.headers().contains_key(header::ETAG));
    let mut body = res.into_body();
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        seen.push(frame.unwrap().into_data().unwrap());
    }
    assert_eq!(
        seen,
        ["one", "two", "three"],
        "chunks arrive unchanged, one by one"
    );
}

#[tokio::test]
async fn oversize_bodies_pass_through_untouched() {
    let res = get_with(
        ConditionalLayer::new().max_body_size(4),
        Method::GET,
        || Full::from("12345"),
        &[],
    )
    .await;
    assert!(!res.headers().contains_key(header::ETAG));
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "12345");

    let res = get_with(
        ConditionalLayer::new().max_body_size(5),
        Method::GET,
        || Full::from("12345"),
        &[],
    )
    .await;
    assert!(
        res.headers().contains_key(header::ETAG),
        "the limit is inclusive"
    );
}

#[tokio::test]
async fn a_body_that_lies_about_its_size_is_not_buffered_beyond_the_limit() {
    let res = get_with(
        ConditionalLayer::new().max_body_size(4),
        Method::GET,
        || Chunks::new([&b"ab"[..], b"cd", b"ef", b"gh"]).with_hint(2),
        &[],
    )
    .await;
    assert!(!res.headers().contains_key(header::ETAG));
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "abcdefgh"
    );
}

#[tokio::test]
async fn handler_validators_win() {
    let svc = ServiceBuilder::new()
        .layer(ConditionalLayer::new())
        .service(service_fn(|req: Request<()>| async move {
            let mut res = Response::new(Full::<Bytes>::from("body"));
            if req.uri().path() == "/etag" {
                res.headers_mut()
                    .insert(header::ETAG, HeaderValue::from_static("\"mine\""));
            } else {
                res.headers_mut().insert(
                    header::LAST_MODIFIED,
                    HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
                );
            }
            Ok::<_, Infallible>(res)
        }));
    let res = svc
        .clone()
        .oneshot(Request::get("/etag").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.headers()[header::ETAG], "\"mine\"");
    let res = svc
        .oneshot(Request::get("/lm").body(()).unwrap())
        .await
        .unwrap();
    assert!(!res.headers().contains_key(header::ETAG));
}

#[tokio::test]
async fn only_configured_statuses_and_methods_get_one() {
    let svc = |status: u16| {
        ServiceBuilder::new()
            .layer(ConditionalLayer::new())
            .service(service_fn(move |_req: Request<()>| async move {
                let mut res = Response::new(Full::<Bytes>::from("x"));
                *res.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok::<_, Infallible>(res)
            }))
    };
    let res = svc(201)
        .oneshot(Request::get("/").body(()).unwrap())
        .await
        .unwrap();
    assert!(!res.headers().contains_key(header::ETAG));
    let res = svc(404)
        .oneshot(Request::get("/").body(()).unwrap())
        .await
        .unwrap();
    assert!(!res.headers().contains_key(header::ETAG));
    let res = svc(200)
        .oneshot(Request::post("/").body(()).unwrap())
        .await
        .unwrap();
    assert!(!res.headers().contains_key(header::ETAG));
    let res = svc(200)
        .oneshot(Request::head("/").body(()).unwrap())
        .await
        .unwrap();
    assert!(
        res.headers().contains_key(header::ETAG),
        "HEAD behaves as GET"
    );

    let layer = ConditionalLayer::new()
        .etag_statuses([StatusCode::OK, StatusCode::CREATED])
        .etag_methods([Method::POST]);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_req: Request<()>| async {
            let mut res = Response::new(Full::<Bytes>::from("x"));
            *res.status_mut() = StatusCode::CREATED;
            Ok::<_, Infallible>(res)
        }));
    let res = svc
        .clone()
        .oneshot(Request::post("/").body(()).unwrap())
        .await
        .unwrap();
    assert!(res.headers().contains_key(header::ETAG));
    let res = svc
        .oneshot(Request::get("/").body(()).unwrap())
        .await
        .unwrap();
    assert!(!res.headers().contains_key(header::ETAG));
}

#[tokio::test]
async fn a_head_response_with_a_stripped_body_gets_no_empty_body_tag() {
    let svc = ServiceBuilder::new()
        .layer(ConditionalLayer::new())
        .service(service_fn(|_req: Request<()>| async {
            let mut res = Response::new(Full::<Bytes>::default());
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
            Ok::<_, Infallible>(res)
        }));
    let res = svc
        .oneshot(Request::head("/").body(()).unwrap())
        .await
        .unwrap();
    assert!(!res.headers().contains_key(header::ETAG));
}

#[tokio::test]
async fn a_304_keeps_the_cache_status_of_a_cache_inside_rfc9211_2() {
    let svc = ServiceBuilder::new()
        .layer(ConditionalLayer::new())
        .service(service_fn(|_req: Request<()>| async {
            let mut res = Response::new(Full::new(Bytes::from_static(b"stored body")));
            let h = res.headers_mut();
            h.insert(
                "cache-status",
                HeaderValue::from_static("turret; hit; ttl=50"),
            );
            h.insert("x-cache", HeaderValue::from_static("HIT"));
            h.insert("x-other", HeaderValue::from_static("dropped"));
            Ok::<_, Infallible>(res)
        }));
    let res = svc
        .clone()
        .oneshot(Request::get("/").body(()).unwrap())
        .await
        .unwrap();
    let etag = res.headers()[header::ETAG].clone();
    let req = Request::get("/")
        .header(header::IF_NONE_MATCH, etag)
        .body(())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(res.headers()["cache-status"], "turret; hit; ttl=50");
    assert_eq!(res.headers()["x-cache"], "HIT");
    assert!(res.headers().get("x-other").is_none());
}
