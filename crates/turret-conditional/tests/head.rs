//! HEAD: the same fields as GET, ETag and length included (RFC 9110 §9.3.2), and the same
//! precondition evaluation (§13.2.2), even when the ETag is hashed from a body a HEAD lacks.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use turret_conditional::ConditionalLayer;

const BODY: &str = r#"[{"id":1,"name":"lamp"},{"id":2,"name":"chair"}]"#;

/// A service that honours HEAD as servers do: the fields of the GET, `Content-Length`
/// included, and no body; a GET with `Range` gets a 206. `etag` adds a handler's own ETag.
/// Records the methods it saw.
fn service(
    etag: Option<&'static str>,
    seen: Arc<Mutex<Vec<Method>>>,
) -> impl tower::Service<
    Request<()>,
    Response = Response<turret_conditional::ResponseBody<Full<Bytes>>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    ServiceBuilder::new()
        .layer(ConditionalLayer::new())
        .service(service_fn(move |req: Request<()>| {
            seen.lock().unwrap().push(req.method().clone());
            let body = if req.method() == Method::HEAD {
                Full::default()
            } else {
                Full::from(BODY)
            };
            let mut res = Response::new(body);
            if req.method() == Method::GET && req.headers().contains_key(header::RANGE) {
                *res.status_mut() = StatusCode::PARTIAL_CONTENT;
                *res.body_mut() = Full::from(&BODY[..2]);
            }
            if req.method() == Method::HEAD {
                res.headers_mut()
                    .insert(header::CONTENT_LENGTH, BODY.len().into());
            }
            if let Some(tag) = etag {
                res.headers_mut()
                    .insert(header::ETAG, HeaderValue::from_static(tag));
            }
            async move { Ok::<_, Infallible>(res) }
        }))
}

async fn send(
    svc: &(
         impl tower::Service<
        Request<()>,
        Response = Response<turret_conditional::ResponseBody<Full<Bytes>>>,
        Error = Infallible,
    > + Clone
     ),
    method: Method,
    headers: &[(header::HeaderName, &str)],
) -> (http::response::Parts, Bytes) {
    let mut req = Request::builder().method(method).uri("/products");
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    let res = svc.clone().oneshot(req.body(()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn a_head_carries_the_etag_and_length_a_get_would_rfc9110_9_3_2() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = service(None, seen.clone());
    let (get, _) = send(&svc, Method::GET, &[]).await;
    let etag = get.headers.get(header::ETAG).expect("a generated ETag");
    let (head, body) = send(&svc, Method::HEAD, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers.get(header::ETAG), Some(etag));
    assert_eq!(
        head.headers.get(header::CONTENT_LENGTH),
        Some(&HeaderValue::from(BODY.len()))
    );
    assert!(body.is_empty(), "a HEAD response has no content");
    // The inner service was asked for the GET, whose body the ETag is hashed from.
    assert_eq!(*seen.lock().unwrap(), [Method::GET, Method::GET]);
}

#[tokio::test]
async fn if_none_match_on_a_head_gets_304_as_on_a_get_rfc9110_13_2_2() {
    let svc = service(None, Arc::default());
    let (get, _) = send(&svc, Method::GET, &[]).await;
    let etag = get.headers[header::ETAG].to_str().unwrap().to_owned();
    for method in [Method::GET, Method::HEAD] {
        let (res, body) = send(&svc, method.clone(), &[(header::IF_NONE_MATCH, &etag)]).await;
        assert_eq!(res.status, StatusCode::NOT_MODIFIED, "{method}");
        assert_eq!(res.headers[header::ETAG], etag.as_str(), "{method}");
        assert!(body.is_empty());
        let (res, _) = send(
            &svc,
            method.clone(),
            &[(header::IF_NONE_MATCH, "\"other\"")],
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{method}");
        // If-Match with the current tag holds; with another it fails.
        let (res, _) = send(&svc, method.clone(), &[(header::IF_MATCH, &etag)]).await;
        assert_eq!(res.status, StatusCode::OK, "{method}");
        let (res, _) = send(&svc, method.clone(), &[(header::IF_MATCH, "\"other\"")]).await;
        assert_eq!(res.status, StatusCode::PRECONDITION_FAILED, "{method}");
    }
}

#[tokio::test]
async fn a_304_to_head_carries_the_200s_content_length_rfc9110_8_6() {
    // A handler's own ETag: no hashing needed, the 304 is the layer's.
    let svc = service(Some("\"v7\""), Arc::default());
    let (res, _) = send(&svc, Method::HEAD, &[(header::IF_NONE_MATCH, "\"v7\"")]).await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    // Without a length, a server frames the empty 304 as `Content-Length: 0`, which for a HEAD
    // claims the representation is empty.
    assert_eq!(
        res.headers.get(header::CONTENT_LENGTH),
        Some(&HeaderValue::from(BODY.len()))
    );
    // A 304 to GET carries none (it would describe a body it does not have).
    let (res, _) = send(&svc, Method::GET, &[(header::IF_NONE_MATCH, "\"v7\"")]).await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    assert_eq!(res.headers.get(header::CONTENT_LENGTH), None);
}

#[tokio::test]
async fn a_head_with_range_is_answered_whole_rfc9110_14_2() {
    // Range applies to GET only: the GET the layer asks for drops it.
    let svc = service(None, Arc::default());
    let (res, body) = send(&svc, Method::HEAD, &[(header::RANGE, "bytes=0-1")]).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(body.is_empty());
}

#[tokio::test]
async fn without_head_in_etag_methods_a_head_passes_through() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(ConditionalLayer::new().etag_methods([Method::GET]))
        .service(service_fn(move |req: Request<()>| {
            recorded.lock().unwrap().push(req.method().clone());
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        }));
    let (res, _) = send(&svc, Method::HEAD, &[]).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), [Method::HEAD]);
}
