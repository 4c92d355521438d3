//! Range requests through the cache (RFC 9110 §14, RFC 9111 §3.4): answered from storage
//! on a hit, filled whole on a miss and answered from the stored copy, `If-Range`, `416`,
//! ignored when malformed, several ranges, `HEAD`, and a `206` from the origin passed
//! through unstored.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use turret_cache::ResponseCacheLayer;

/// 100 bytes: "0123456789" ten times.
fn representation() -> Bytes {
    Bytes::from("0123456789".repeat(10))
}

/// The origin: `/file` is cacheable with strong validators, `/nostore` is not and honours
/// `Range` itself (a 206). Records each request's `Range` field.
fn serve(
    seen: Arc<Mutex<Vec<Option<String>>>>,
) -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |req: Request<()>| {
        let range = req
            .headers()
            .get(header::RANGE)
            .map(|v| v.to_str().unwrap().to_owned());
        seen.lock().unwrap().push(range.clone());
        let path = req.uri().path().to_owned();
        async move {
            let body = representation();
            let mut res = if path == "/nostore" && range.as_deref() == Some("bytes=0-3") {
                let mut res = Response::new(Full::new(body.slice(0..4)));
                *res.status_mut() = StatusCode::PARTIAL_CONTENT;
                res.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_static("bytes 0-3/100"),
                );
                res
            } else {
                Response::new(Full::new(body))
            };
            let h = res.headers_mut();
            let cc = if path == "/nostore" {
                "no-store"
            } else {
                "max-age=600"
            };
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
            h.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            h.insert(
                header::LAST_MODIFIED,
                HeaderValue::from_static("Tue, 01 Dec 2026 10:00:00 GMT"),
            );
            let date = httpdate::fmt_http_date(std::time::SystemTime::now());
            h.insert(header::DATE, HeaderValue::from_str(&date).unwrap());
            Ok::<_, Infallible>(res)
        }
    })
}

struct Fixture {
    layer: ResponseCacheLayer,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

struct Got {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

impl Fixture {
    fn new() -> Self {
        Self {
            layer: ResponseCacheLayer::new(),
            seen: Arc::default(),
        }
    }

    async fn send(&self, method: Method, path: &str, fields: &[(&str, &str)]) -> Got {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "files.example");
        for (n, v) in fields {
            req = req.header(*n, *v);
        }
        let res = self
            .layer
            .layer(serve(self.seen.clone()))
            .oneshot(req.body(()).unwrap())
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&self, fields: &[(&str, &str)]) -> Got {
        self.send(Method::GET, "/file", fields).await
    }

    fn origin_calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

#[tokio::test]
async fn a_range_miss_fills_the_whole_and_answers_the_range_from_it() {
    let f = Fixture::new();
    let first = f.get(&[("range", "bytes=0-9")]).await;
    assert_eq!(first.status, 206);
    assert_eq!(&first.body[..], b"0123456789");
    assert_eq!(first.header("content-range"), "bytes 0-9/100");
    assert_eq!(first.header("content-length"), "10");
    assert_eq!(first.header("etag"), "\"v1\"");
    assert_eq!(
        *f.seen.lock().unwrap(),
        [None],
        "the origin was asked for the whole"
    );
    // Stored whole: a plain GET is a hit with every byte.
    let whole = f.get(&[]).await;
    assert_eq!((whole.status, whole.header("x-cache")), (200, "HIT"));
    assert_eq!(whole.body, representation());
    assert_eq!(f.origin_calls(), 1);
}

/// A request's fields, then the status, `Content-Range` and body expected.
type Row<'a> = (&'a [(&'a str, &'a str)], u16, &'a str, &'a [u8]);

/// One row per rule, all answered from storage after one fill.
#[tokio::test]
async fn ranges_on_a_hit_per_rfc_9110_14() {
    let f = Fixture::new();
    f.get(&[]).await;
    let rows: &[Row<'_>] = &[
        (
            &[("range", "bytes=10-19")],
            206,
            "bytes 10-19/100",
            b"0123456789",
        ),
        (&[("range", "bytes=-3")], 206, "bytes 97-99/100", b"789"),
        (&[("range", "bytes=95-")], 206, "bytes 95-99/100", b"56789"),
        (&[("range", "bytes=98-500")], 206, "bytes 98-99/100", b"89"),
        (&[("range", "bytes=100-")], 416, "bytes */100", b""),
        (&[("range", "bytes=-0")], 416, "bytes */100", b""),
        // Malformed, another unit, several ranges: the whole 200.
        (&[("range", "bytes=9-1")], 200, "", b""),
        (&[("range", "bytes=x-")], 200, "", b""),
        (&[("range", "pages=1-2")], 200, "", b""),
        (&[("range", "bytes=0-1,5-6")], 200, "", b""),
        // If-Range: a strong match applies the range, anything else gives the whole.
        (
            &[("range", "bytes=0-1"), ("if-range", "\"v1\"")],
            206,
            "bytes 0-1/100",
            b"01",
        ),
        (
            &[("range", "bytes=0-1"), ("if-range", "\"v2\"")],
            200,
            "",
            b"",
        ),
        (
            &[("range", "bytes=0-1"), ("if-range", "W/\"v1\"")],
            200,
            "",
            b"",
        ),
        (
            &[
                ("range", "bytes=0-1"),
                ("if-range", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ],
            206,
            "bytes 0-1/100",
            b"01",
        ),
        (
            &[
                ("range", "bytes=0-1"),
                ("if-range", "Tue, 01 Dec 2026 09:59:59 GMT"),
            ],
            200,
            "",
            b"",
        ),
        // If-Range without Range is ignored (§13.1.5).
        (&[("if-range", "\"v2\"")], 200, "", b""),
    ];
    for (fields, status, content_range, body) in rows {
        let got = f.get(fields).await;
        assert_eq!(got.status, *status, "{fields:?}");
        assert_eq!(got.header("content-range"), *content_range, "{fields:?}");
        assert_eq!(got.header("x-cache"), "HIT", "{fields:?}");
        assert!(got.header("cache-status").contains("hit"), "{fields:?}");
        match status {
            200 => assert_eq!(got.body, representation(), "{fields:?}"),
            _ => {
                assert_eq!(&got.body[..], *body, "{fields:?}");
                assert_eq!(got.header("content-length"), got.body.len().to_string());
            }
        }
        if *status == 416 {
            assert_eq!(got.header("etag"), "", "a 416 describes no representation");
        }
    }
    assert_eq!(f.origin_calls(), 1, "every row from storage");

    // The client's copy is current: a 304 comes before any range (§13.2.2).
    let not_modified = f
        .get(&[("range", "bytes=0-1"), ("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(not_modified.status, 304);
    // HEAD ignores Range.
    let head = f
        .send(Method::HEAD, "/file", &[("range", "bytes=0-1")])
        .await;
    assert_eq!((head.status, head.header("content-length")), (200, "100"));
    assert!(head.body.is_empty());
    assert_eq!(f.origin_calls(), 1);
}

#[tokio::test]
async fn a_206_from_the_origin_passes_through_unstored() {
    let f = Fixture::new();
    // First: the whole is asked for, is not storable, and the client gets it whole.
    let first = f
        .send(Method::GET, "/nostore", &[("range", "bytes=0-3")])
        .await;
    assert_eq!(first.status, 200);
    // Now a hit-for-miss URL: sent on as the client asked; the origin's 206 passes.
    let second = f
        .send(Method::GET, "/nostore", &[("range", "bytes=0-3")])
        .await;
    assert_eq!((second.status, &second.body[..]), (206, &b"0123"[..]));
    assert_eq!(second.header("content-range"), "bytes 0-3/100");
    let third = f.send(Method::GET, "/nostore", &[]).await;
    assert_eq!(third.status, 200);
    assert_eq!(
        *f.seen.lock().unwrap(),
        [None, Some("bytes=0-3".to_owned()), None]
    );
}
