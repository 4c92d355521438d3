//! Bounded buffering at the default limit (1 MiB): a bigger body streams through untouched
//! and without an ETag, a body lying about its size is buffered at most to the limit, and
//! 64 KiB conditional fields get a normal answer.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use turret_conditional::{ConditionalLayer, DEFAULT_MAX_BODY_SIZE, ValidatorStore};
use turret_testkit::body::Counted;

const CHUNK: u64 = 64 * 1024;

/// The response head to a GET whose handler answers `total` bytes claiming `hint`, and how
/// many bytes the layer had read from the body when the head was returned.
async fn head(
    total: u64,
    hint: u64,
) -> (
    Response<turret_conditional::ResponseBody<Counted>>,
    u64,
    Arc<AtomicU64>,
) {
    let polled = Arc::new(AtomicU64::new(0));
    let counter = polled.clone();
    let svc =
        ServiceBuilder::new()
            .layer(ConditionalLayer::new())
            .service(service_fn(move |_req: Request<()>| {
                let polled = counter.clone();
                async move {
                    Ok::<_, Infallible>(Response::new(Counted::new(total, hint, CHUNK, polled)))
                }
            }));
    let res = svc
        .oneshot(Request::get("/download").body(()).unwrap())
        .await
        .unwrap();
    let at_head = polled.load(Ordering::SeqCst);
    (res, at_head, polled)
}

#[tokio::test]
async fn a_body_over_the_limit_streams_through_without_an_etag_or_buffering() {
    let total = DEFAULT_MAX_BODY_SIZE + 1;
    let (res, at_head, _) = head(total, total).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!res.headers().contains_key(header::ETAG));
    assert_eq!(at_head, 0, "nothing read before the head goes out");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len() as u64, total);

    // Far over the limit: the same.
    let total = 16 * DEFAULT_MAX_BODY_SIZE;
    let (res, at_head, _) = head(total, total).await;
    assert!(!res.headers().contains_key(header::ETAG));
    assert_eq!(at_head, 0);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes().len() as u64,
        total
    );
}

#[tokio::test]
async fn a_body_at_the_limit_is_hashed() {
    let (res, at_head, _) = head(DEFAULT_MAX_BODY_SIZE, DEFAULT_MAX_BODY_SIZE).await;
    assert!(
        res.headers().contains_key(header::ETAG),
        "the limit is inclusive"
    );
    assert_eq!(at_head, DEFAULT_MAX_BODY_SIZE);
}

#[tokio::test]
async fn a_body_lying_about_its_size_is_buffered_at_most_to_the_limit() {
    let total = 8 * DEFAULT_MAX_BODY_SIZE;
    let (res, at_head, polled) = head(total, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!res.headers().contains_key(header::ETAG));
    assert!(
        at_head <= DEFAULT_MAX_BODY_SIZE + CHUNK,
        "buffered {at_head} bytes before the head"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body.len() as u64,
        total,
        "every byte still arrives, in order"
    );
    assert!(body.iter().all(|&b| b == b'x'));
    assert_eq!(polled.load(Ordering::SeqCst), total);
}

/// A service whose resource has the ETag `"v1"` and a `Last-Modified`.
fn resource() -> impl tower::Service<
    Request<()>,
    Response = Response<turret_conditional::ResponseBody<Full<Bytes>>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    ServiceBuilder::new()
        .layer(ConditionalLayer::new().validator_store(ValidatorStore::memory()))
        .service(service_fn(|_req: Request<()>| async {
            let mut res = Response::new(Full::<Bytes>::from("body"));
            res.headers_mut()
                .insert(header::ETAG, HeaderValue::from_static("\"v1\""));
            res.headers_mut().insert(
                header::LAST_MODIFIED,
                HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
            );
            Ok::<_, Infallible>(res)
        }))
}

async fn status(method: Method, headers: &[(header::HeaderName, Vec<u8>)]) -> StatusCode {
    let mut req = Request::builder().method(method).uri("/doc");
    for (name, value) in headers {
        req = req.header(name, HeaderValue::from_bytes(value).unwrap());
    }
    resource()
        .oneshot(req.body(()).unwrap())
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn conditional_fields_of_64_kib_get_a_normal_answer() {
    // A list of thousands of tags, the current one last.
    let mut list = String::new();
    while list.len() < 64 * 1024 - 16 {
        list.push_str("\"no\", W/\"no\", ");
    }
    list.push_str("\"v1\"");
    assert_eq!(
        status(
            Method::GET,
            &[(header::IF_NONE_MATCH, list.clone().into_bytes())]
        )
        .await,
        StatusCode::NOT_MODIFIED
    );
    let garbage = [b"\"".to_vec(), vec![b'{'; 64 * 1024]].concat();
    let long_date = [
        b"Sun, 06 Nov 1994 08:49:37 GMT ".to_vec(),
        vec![b'x'; 64 * 1024],
    ]
    .concat();
    let cases: Vec<(Method, header::HeaderName, Vec<u8>, StatusCode)> = vec![
        (
            Method::GET,
            header::IF_NONE_MATCH,
            garbage.clone(),
            StatusCode::OK,
        ),
        (
            Method::GET,
            header::IF_MATCH,
            garbage.clone(),
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            Method::GET,
            header::IF_MATCH,
            list.clone().into_bytes(),
            StatusCode::OK,
        ),
        (
            Method::GET,
            header::IF_MODIFIED_SINCE,
            long_date.clone(),
            StatusCode::OK,
        ),
        (
            Method::GET,
            header::IF_UNMODIFIED_SINCE,
            vec![b'9'; 64 * 1024],
            StatusCode::OK,
        ),
        (
            Method::GET,
            header::IF_RANGE,
            garbage.clone(),
            StatusCode::OK,
        ),
        (
            Method::PUT,
            header::IF_MATCH,
            garbage.clone(),
            StatusCode::PRECONDITION_FAILED,
        ),
        // The store learns "v1" from a GET of the target, and the list holds it.
        (
            Method::DELETE,
            header::IF_NONE_MATCH,
            list.clone().into_bytes(),
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            Method::GET,
            header::HeaderName::from_static("x-unrelated"),
            vec![b'a'; 64 * 1024],
            StatusCode::OK,
        ),
    ];
    for (method, name, value, expected) in cases {
        let got = status(method.clone(), &[(name.clone(), value)]).await;
        assert_eq!(got, expected, "{method} {name}");
    }
    // With `Range`: a 64 KiB If-Range that cannot match drops the range.
    let got = status(
        Method::GET,
        &[
            (header::RANGE, b"bytes=0-1".to_vec()),
            (header::IF_RANGE, long_date),
        ],
    )
    .await;
    assert_eq!(got, StatusCode::OK);
}
