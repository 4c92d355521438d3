//! Any bytes in any field the cache reads, through the whole layer: no panic, and every
//! answer a valid response. Each parser also has its own property test next to it
//! (`cache_control.rs`, `freshness.rs`, `validate.rs`, `entry.rs`, `tiered.rs`); this one
//! checks that they compose. Plus 64 KiB fields on both sides.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{Layer, ServiceExt, service_fn};
use turret_cache::{FakeClock, MemoryStorage, ResponseCacheLayer};

const T0: Duration = Duration::from_secs(1_700_000_000);

const RESPONSE_FIELDS: [&str; 13] = [
    "cache-control",
    "cdn-cache-control",
    "turret-cache-control",
    "expires",
    "date",
    "age",
    "etag",
    "last-modified",
    "vary",
    "surrogate-key",
    "set-cookie",
    "location",
    "content-location",
];

const REQUEST_FIELDS: [&str; 8] = [
    "cache-control",
    "pragma",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-range",
    "authorization",
    "accept-language",
];

/// Field values: arbitrary bytes, plus near-valid ones so that the parsers get past
/// their first byte.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..48),
        "(public|private|no-store|no-cache|max-age=[0-9]{1,12}|s-maxage=-?[0-9]{0,3}|stale-while-revalidate=[0-9]{1,3}|stale-if-error=[0-9]{1,3}|must-revalidate|immutable|private=\"[a-z-]{0,8}\"|only-if-cached|max-stale(=[0-9]{1,3})?|min-fresh=[0-9]{1,3})(, ?(public|max-age=[0-9]{1,4}|no-cache=\"set-cookie\"))?"
            .prop_map(String::into_bytes),
        "(W/)?\"[!#-~]{0,6}\"(, *(W/)?\"[!#-~]{0,6}\"){0,3}|\\*".prop_map(String::into_bytes),
        Just(b"Sun, 06 Nov 1994 08:49:37 GMT".to_vec()),
        Just(b"Tue, 14 Nov 2023 22:13:20 GMT".to_vec()),
        Just(b"Sunday, 06-Nov-94 08:49:37 GMT".to_vec()),
        Just(b"Sun Nov  6 08:49:37 1994".to_vec()),
        Just(b"Accept-Language, *".to_vec()),
        Just(b"/other".to_vec()),
        Just(b"http://shop.example/x".to_vec()),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        4 => Just(Method::GET),
        1 => Just(Method::HEAD),
        1 => Just(Method::POST),
        1 => Just(Method::DELETE),
    ]
}

#[derive(Debug, Clone)]
struct Exchange {
    method: Method,
    path: u8,
    request: Vec<(usize, Vec<u8>)>,
    status: u16,
    response: Vec<(usize, Vec<u8>)>,
    advance: u32,
}

fn exchange() -> impl Strategy<Value = Exchange> {
    (
        method(),
        0u8..3,
        prop::collection::vec((0..REQUEST_FIELDS.len(), value()), 0..4),
        prop_oneof![
            Just(200u16),
            Just(304),
            Just(404),
            Just(206),
            Just(500),
            100u16..600
        ],
        prop::collection::vec((0..RESPONSE_FIELDS.len(), value()), 0..6),
        0u32..120,
    )
        .prop_map(
            |(method, path, request, status, response, advance)| Exchange {
                method,
                path,
                request,
                status,
                response,
                advance,
            },
        )
}

async fn run(exchanges: Vec<Exchange>) {
    let clock = FakeClock::new(T0);
    let script: Arc<Vec<Exchange>> = Arc::new(exchanges.clone());
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let storage = MemoryStorage::new(1 << 20);
    let svc = ResponseCacheLayer::with_storage(storage.clone())
        .clock(clock.clone())
        .targeted_field(HeaderName::from_static("turret-cache-control"))
        .default_ttl(Duration::from_secs(30))
        .layer(service_fn(move |_req: Request<()>| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let e = &script[n % script.len()];
            let mut res = Response::new(Full::<Bytes>::from(format!("call {n}")));
            *res.status_mut() = StatusCode::from_u16(e.status).unwrap();
            for (i, v) in &e.response {
                if let Ok(v) = HeaderValue::from_bytes(v) {
                    res.headers_mut()
                        .append(HeaderName::from_static(RESPONSE_FIELDS[*i]), v);
                }
            }
            async move { Ok::<_, Infallible>(res) }
        }));
    for e in exchanges {
        let mut req = Request::builder()
            .method(e.method.clone())
            .uri(["/a", "/a?x=1", "/other"][e.path as usize])
            .header(header::HOST, "shop.example");
        for (i, v) in &e.request {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                req = req.header(REQUEST_FIELDS[*i], v);
            }
        }
        let res = svc.clone().oneshot(req.body(()).unwrap()).await.unwrap();
        let status = res.status().as_u16();
        assert!((100..600).contains(&status), "{status}");
        // The body is readable to its end.
        res.into_body().collect().await.unwrap();
        clock.advance(Duration::from_secs(u64::from(e.advance)));
    }
    storage.run_pending_tasks();
    assert!(storage.weighted_size() <= 1 << 20);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_caching_fields_on_either_side_give_a_valid_response(
        exchanges in prop::collection::vec(exchange(), 1..6),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(exchanges));
    }
}

#[tokio::test]
async fn fields_of_64_kib_on_either_side_get_a_normal_answer() {
    let big = |fill: u8| vec![fill; 64 * 1024];
    let link = [b"<https://cdn.example/".to_vec(), big(b'a'), b">".to_vec()].concat();
    let long_cc = [b"max-age=60, ".to_vec(), big(b'x')].concat();
    let svc = ResponseCacheLayer::new().layer(service_fn(move |req: Request<()>| {
        let link = link.clone();
        let long_cc = long_cc.clone();
        async move {
            let mut res = Response::new(Full::<Bytes>::from("body"));
            let headers = res.headers_mut();
            match req.uri().path() {
                "/link" => {
                    headers.insert(
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("max-age=60"),
                    );
                    headers.insert(header::LINK, HeaderValue::from_bytes(&link).unwrap());
                }
                "/long-cc" => {
                    headers.insert(
                        header::CACHE_CONTROL,
                        HeaderValue::from_bytes(&long_cc).unwrap(),
                    );
                }
                "/vary" => {
                    headers.insert(
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("max-age=60"),
                    );
                    headers.insert(header::VARY, HeaderValue::from_static("x-big"));
                }
                _ => {
                    headers.insert(
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("max-age=60"),
                    );
                }
            }
            Ok::<_, Infallible>(res)
        }
    }));
    let send = |path: &str, fields: Vec<(HeaderName, Vec<u8>)>| {
        let mut req = Request::get(path).header(header::HOST, "shop.example");
        for (name, value) in fields {
            req = req.header(name, HeaderValue::from_bytes(&value).unwrap());
        }
        svc.clone().oneshot(req.body(()).unwrap())
    };

    // A 64 KiB response field is stored and replayed whole.
    send("/link", vec![]).await.unwrap();
    let res = send("/link", vec![]).await.unwrap();
    assert_eq!(res.headers()["x-cache"], "HIT");
    assert_eq!(res.headers()[header::LINK].len(), 64 * 1024 + 22);

    // A 64 KiB Cache-Control with an unknown directive: the known ones still count.
    send("/long-cc", vec![]).await.unwrap();
    let res = send("/long-cc", vec![]).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // A 64 KiB varied field: its own variant.
    send("/vary", vec![(HeaderName::from_static("x-big"), big(b'b'))])
        .await
        .unwrap();
    let res = send("/vary", vec![(HeaderName::from_static("x-big"), big(b'b'))])
        .await
        .unwrap();
    assert_eq!(res.headers()["x-cache"], "HIT");
    let res = send("/vary", vec![(HeaderName::from_static("x-big"), big(b'c'))])
        .await
        .unwrap();
    assert_eq!(res.headers()["x-cache"], "MISS");

    // 64 KiB request fields the cache parses.
    for (name, value, expected) in [
        (header::CACHE_CONTROL, big(b','), StatusCode::OK),
        (
            header::CACHE_CONTROL,
            [b"max-age=".to_vec(), big(b'9')].concat(),
            StatusCode::OK,
        ),
        (header::IF_NONE_MATCH, big(b'"'), StatusCode::OK),
        (header::IF_MODIFIED_SINCE, big(b'1'), StatusCode::OK),
        (header::PRAGMA, big(b'n'), StatusCode::OK),
        (header::AUTHORIZATION, big(b'k'), StatusCode::OK),
    ] {
        let res = send("/plain", vec![(name.clone(), value)]).await.unwrap();
        assert_eq!(res.status(), expected, "{name}");
    }
    // A 64 KiB Host: its own key.
    let host = "h".repeat(60 * 1024);
    let req = Request::get("/plain")
        .header(header::HOST, host)
        .body(())
        .unwrap();
    assert_eq!(
        svc.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK
    );
}
