//! The RFC 9110 §13.2.2 matrix: every precondition alone and in each precedence pair, weak and
//! strong tags, `*`, lists, invalid values, dates in the three formats, each method, 2xx and
//! 404 inner responses.

use std::{convert::Infallible, time::SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use turret_conditional::{BoxError, ConditionalLayer, ResourceState, Target, Validators};

/// Last-Modified of the representation: Sun, 06 Nov 1994 08:49:37 GMT.
const LM: u64 = 784_111_777;
const LM_IMF: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
const LM_850: &str = "Sunday, 06-Nov-94 08:49:37 GMT";
const LM_ASC: &str = "Sun Nov  6 08:49:37 1994";
const BEFORE_IMF: &str = "Sat, 05 Nov 1994 08:49:37 GMT";
const BEFORE_850: &str = "Saturday, 05-Nov-94 08:49:37 GMT";
const BEFORE_ASC: &str = "Sat Nov  5 08:49:37 1994";
const AFTER_IMF: &str = "Mon, 07 Nov 1994 08:49:37 GMT";
const AFTER_850: &str = "Monday, 07-Nov-94 08:49:37 GMT";
const AFTER_ASC: &str = "Mon Nov  7 08:49:37 1994";

/// The handler: GET/HEAD answer `"v1"` + LM (unless told otherwise by `x-test-*` fields);
/// writes answer 200/204/201. Every request that reaches it is echoed in `x-handled`.
async fn handler(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let h = req.headers();
    let status = h
        .get("x-test-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(200u16);
    let mut res = Response::builder()
        .status(status)
        .header("x-handled", "1")
        .header(header::CACHE_CONTROL, "max-age=60")
        .header(header::VARY, "accept-encoding")
        .header(header::CONTENT_TYPE, "text/plain");
    match *req.method() {
        Method::GET | Method::HEAD | Method::OPTIONS => {
            if !h.contains_key("x-test-no-etag") {
                res = res.header(header::ETAG, "\"v1\"");
            }
            if !h.contains_key("x-test-no-lm") {
                res = res.header(header::LAST_MODIFIED, LM_IMF);
            }
            if h.contains_key(header::RANGE) {
                res = res.status(206).header("x-range", "kept");
            }
            Ok(res.body(Full::from("hello")).unwrap())
        }
        Method::DELETE => Ok(res.status(204).body(Full::default()).unwrap()),
        Method::POST => Ok(res.status(201).body(Full::default()).unwrap()),
        _ => Ok(res
            .header(header::ETAG, "\"v2\"")
            .body(Full::default())
            .unwrap()),
    }
}

/// The user's source of truth for writes: `/missing` does not exist, everything else is at
/// `"v1"` / LM.
async fn source(target: Target) -> Result<ResourceState, BoxError> {
    if target.resource().starts_with("/missing") {
        return Ok(ResourceState::Absent);
    }
    Ok(ResourceState::Current(
        Validators::new()
            .with_etag(HeaderValue::from_static("\"v1\""))
            .with_last_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(LM)),
    ))
}

struct Row {
    method: Method,
    uri: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want: u16,
}

fn row(
    method: &str,
    uri: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want: u16,
) -> Row {
    Row {
        method: method.parse().unwrap(),
        uri,
        headers,
        want,
    }
}

async fn run(
    layer: ConditionalLayer,
    r: &Row,
) -> Response<turret_conditional::ResponseBody<Full<Bytes>>> {
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(handler));
    let mut req = Request::builder().method(r.method.clone()).uri(r.uri);
    for (k, v) in r.headers {
        req = req.header(*k, *v);
    }
    svc.oneshot(req.body(Full::default()).unwrap())
        .await
        .unwrap()
}

const IM: &str = "if-match";
const INM: &str = "if-none-match";
const IMS: &str = "if-modified-since";
const IUS: &str = "if-unmodified-since";

#[tokio::test]
async fn safe_methods_follow_section_13_2_2() {
    let rows = [
        // No preconditions.
        row("GET", "/r", &[], 200),
        // Step 1: If-Match, strong comparison.
        row("GET", "/r", &[(IM, "\"v1\"")], 200),
        row("GET", "/r", &[(IM, "\"v2\"")], 412),
        row("GET", "/r", &[(IM, "W/\"v1\"")], 412),
        row("GET", "/r", &[(IM, "*")], 200),
        row("GET", "/r", &[(IM, "\"a\", \"v1\"")], 200),
        row("GET", "/r", &[(IM, "\"a\",\"b\"")], 412),
        row("GET", "/r", &[(IM, "v1")], 412),
        row("GET", "/r", &[(IM, "\"v1")], 412),
        row("GET", "/r", &[(IM, "*, \"v2\"")], 412),
        // Step 2: If-Unmodified-Since, three date formats, invalid ignored.
        row("GET", "/r", &[(IUS, LM_IMF)], 200),
        row("GET", "/r", &[(IUS, AFTER_IMF)], 200),
        row("GET", "/r", &[(IUS, AFTER_850)], 200),
        row("GET", "/r", &[(IUS, AFTER_ASC)], 200),
        row("GET", "/r", &[(IUS, BEFORE_IMF)], 412),
        row("GET", "/r", &[(IUS, BEFORE_850)], 412),
        row("GET", "/r", &[(IUS, BEFORE_ASC)], 412),
        row("GET", "/r", &[(IUS, "not a date")], 200),
        row(
            "GET",
            "/r",
            &[(
                IUS,
                "Sat, 05 Nov 1994 08:49:37 GMT, Sat, 05 Nov 1994 08:49:37 GMT",
            )],
            200,
        ),
        // Pair 1+2: IUS ignored with If-Match.
        row("GET", "/r", &[(IM, "\"v1\""), (IUS, BEFORE_IMF)], 200),
        row("GET", "/r", &[(IM, "\"v2\""), (IUS, AFTER_IMF)], 412),
        // Step 3: If-None-Match, weak comparison.
        row("GET", "/r", &[(INM, "\"v1\"")], 304),
        row("GET", "/r", &[(INM, "W/\"v1\"")], 304),
        row("GET", "/r", &[(INM, "\"v2\"")], 200),
        row("GET", "/r", &[(INM, "*")], 304),
        row("GET", "/r", &[(INM, "\"a\", W/\"v1\"")], 304),
        row("GET", "/r", &[(INM, "garbage")], 200),
        // Pair 1+3 and 2+3: step order.
        row("GET", "/r", &[(IM, "\"v1\""), (INM, "\"v1\"")], 304),
        row("GET", "/r", &[(IM, "\"v2\""), (INM, "\"v2\"")], 412),
        row("GET", "/r", &[(IUS, BEFORE_IMF), (INM, "\"v1\"")], 412),
        row("GET", "/r", &[(IUS, AFTER_IMF), (INM, "\"v1\"")], 304),
        // Step 4: If-Modified-Since, three formats; equal or later date → 304.
        row("GET", "/r", &[(IMS, LM_IMF)], 304),
        row("GET", "/r", &[(IMS, LM_850)], 304),
        row("GET", "/r", &[(IMS, LM_ASC)], 304),
        row("GET", "/r", &[(IMS, AFTER_IMF)], 304),
        row("GET", "/r", &[(IMS, BEFORE_IMF)], 200),
        row("GET", "/r", &[(IMS, BEFORE_850)], 200),
        row("GET", "/r", &[(IMS, BEFORE_ASC)], 200),
        row("GET", "/r", &[(IMS, "yesterday")], 200),
        row(
            "GET",
            "/r",
            &[(
                IMS,
                "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
            )],
            200,
        ),
        row("GET", "/r", &[(IMS, LM_IMF), ("x-test-no-lm", "1")], 200),
        // Pair 3+4: IMS ignored with If-None-Match.
        row("GET", "/r", &[(INM, "\"v2\""), (IMS, LM_IMF)], 200),
        row("GET", "/r", &[(INM, "\"v1\""), (IMS, BEFORE_IMF)], 304),
        // Pair 1+4, 2+4.
        row("GET", "/r", &[(IM, "\"v1\""), (IMS, LM_IMF)], 304),
        row("GET", "/r", &[(IM, "\"v2\""), (IMS, LM_IMF)], 412),
        row("GET", "/r", &[(IUS, BEFORE_IMF), (IMS, LM_IMF)], 412),
        // HEAD behaves as GET.
        row("HEAD", "/r", &[(INM, "\"v1\"")], 304),
        row("HEAD", "/r", &[(IMS, LM_IMF)], 304),
        row("HEAD", "/r", &[(IM, "\"v2\"")], 412),
        row("HEAD", "/r", &[(INM, "\"v2\"")], 200),
        // A non-2xx inner response: every precondition ignored.
        row("GET", "/r", &[(INM, "*"), ("x-test-status", "404")], 404),
        row(
            "GET",
            "/r",
            &[(INM, "\"v1\""), ("x-test-status", "404")],
            404,
        ),
        row(
            "GET",
            "/r",
            &[(IM, "\"v2\""), ("x-test-status", "404")],
            404,
        ),
        row("GET", "/r", &[(IMS, LM_IMF), ("x-test-status", "404")], 404),
        row(
            "GET",
            "/r",
            &[(INM, "\"v1\""), ("x-test-status", "301")],
            301,
        ),
        row(
            "HEAD",
            "/r",
            &[(INM, "\"v1\""), ("x-test-status", "500")],
            500,
        ),
        // OPTIONS (and CONNECT, TRACE): never.
        row("OPTIONS", "/r", &[(IM, "\"v2\"")], 200),
        row("OPTIONS", "/r", &[(INM, "\"v1\"")], 200),
        row("TRACE", "/r", &[(IM, "\"v2\"")], 200),
    ];
    for r in &rows {
        let res = run(ConditionalLayer::new(), r).await;
        assert_eq!(
            res.status().as_u16(),
            r.want,
            "{} {:?}",
            r.method,
            r.headers
        );
        let reached = res.headers().contains_key("x-handled");
        assert_eq!(
            reached,
            r.want != 304 && r.want != 412,
            "{} {:?}",
            r.method,
            r.headers
        );
    }
}

#[tokio::test]
async fn unsafe_methods_are_decided_before_the_handler() {
    let rows = [
        row("PUT", "/r", &[], 200),
        // Step 1.
        row("PUT", "/r", &[(IM, "\"v1\"")], 200),
        row("PUT", "/r", &[(IM, "\"v2\"")], 412),
        row("PUT", "/r", &[(IM, "W/\"v1\"")], 412),
        row("PUT", "/r", &[(IM, "*")], 200),
        row("PUT", "/r", &[(IM, "\"x\", \"v1\"")], 200),
        row("PUT", "/r", &[(IM, "bogus")], 412),
        row("PUT", "/missing", &[(IM, "*")], 412),
        row("PUT", "/missing", &[(IM, "\"v1\"")], 412),
        // Step 2.
        row("PUT", "/r", &[(IUS, BEFORE_IMF)], 412),
        row("PUT", "/r", &[(IUS, BEFORE_850)], 412),
        row("PUT", "/r", &[(IUS, BEFORE_ASC)], 412),
        row("PUT", "/r", &[(IUS, LM_IMF)], 200),
        row("PUT", "/r", &[(IUS, AFTER_ASC)], 200),
        row("PUT", "/r", &[(IUS, "garbage")], 200),
        row("PUT", "/r", &[(IM, "\"v1\""), (IUS, BEFORE_IMF)], 200),
        // Step 3: 412, not 304, for other methods.
        row("PUT", "/r", &[(INM, "*")], 412),
        row("PUT", "/missing", &[(INM, "*")], 200),
        row("PUT", "/r", &[(INM, "\"v1\"")], 412),
        row("PUT", "/r", &[(INM, "W/\"v1\"")], 412),
        row("PUT", "/r", &[(INM, "\"v2\"")], 200),
        row("PUT", "/r", &[(IM, "\"v2\""), (INM, "\"v2\"")], 412),
        row("PUT", "/r", &[(IM, "\"v1\""), (INM, "\"v1\"")], 412),
        row("PUT", "/r", &[(IUS, BEFORE_IMF), (INM, "\"v2\"")], 412),
        // Step 4 applies to GET/HEAD only.
        row("PUT", "/r", &[(IMS, LM_IMF)], 200),
        row("DELETE", "/r", &[(IMS, AFTER_IMF)], 204),
        // Other methods.
        row("DELETE", "/r", &[(IM, "\"v1\"")], 204),
        row("DELETE", "/r", &[(IM, "\"v2\"")], 412),
        row("DELETE", "/missing", &[(IM, "*")], 412),
        row("POST", "/r", &[(IM, "\"v2\"")], 412),
        row("POST", "/r", &[(IM, "\"v1\"")], 201),
        row("POST", "/r", &[(INM, "*")], 412),
        row("PATCH", "/r", &[(IM, "\"v2\"")], 412),
        row("PATCH", "/r", &[(IM, "\"v1\"")], 200),
        row("OPTIONS", "/r", &[(IM, "\"v2\"")], 200),
    ];
    for r in &rows {
        let res = run(ConditionalLayer::new().validator_source(source), r).await;
        assert_eq!(
            res.status().as_u16(),
            r.want,
            "{} {} {:?}",
            r.method,
            r.uri,
            r.headers
        );
        assert_eq!(
            res.headers().contains_key("x-handled"),
            r.want != 412,
            "the handler runs iff the preconditions hold: {} {:?}",
            r.method,
            r.headers
        );
    }
}

#[tokio::test]
async fn writes_without_a_source_are_left_to_the_handler() {
    let r = row("PUT", "/r", &[(IM, "\"stale\"")], 200);
    let res = run(ConditionalLayer::new(), &r).await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn require_precondition_answers_428() {
    let layer = || {
        ConditionalLayer::new()
            .validator_source(source)
            .require_precondition(true)
    };
    for (r, want) in [
        (row("PUT", "/r", &[], 0), 428),
        (row("DELETE", "/r", &[], 0), 428),
        (row("POST", "/r", &[], 0), 428),
        (row("PATCH", "/r", &[(IMS, LM_IMF)], 0), 428),
        (row("PUT", "/r", &[(IUS, "garbage")], 0), 428),
        (row("PUT", "/r", &[(IM, "\"v1\"")], 0), 200),
        (row("PUT", "/r", &[(IUS, AFTER_IMF)], 0), 200),
        (row("PUT", "/missing", &[(INM, "*")], 0), 200),
        (row("GET", "/r", &[], 0), 200),
        (row("OPTIONS", "/r", &[], 0), 200),
    ] {
        let res = run(layer(), &r).await;
        assert_eq!(res.status().as_u16(), want, "{} {:?}", r.method, r.headers);
        assert_eq!(res.headers().contains_key("x-handled"), want != 428);
    }
}

#[tokio::test]
async fn not_modified_carries_exactly_the_section_15_4_5_fields() {
    let svc = ServiceBuilder::new()
        .layer(ConditionalLayer::new())
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .header(header::ETAG, "\"v1\"")
                    .header(header::LAST_MODIFIED, LM_IMF)
                    .header(header::CACHE_CONTROL, "max-age=60")
                    .header(header::VARY, "accept-encoding")
                    .header(header::VARY, "accept-language")
                    .header(header::CONTENT_LOCATION, "/r.en")
                    .header(header::DATE, AFTER_IMF)
                    .header(header::EXPIRES, AFTER_IMF)
                    .header(header::CONTENT_TYPE, "text/plain")
                    .header(header::CONTENT_LENGTH, "5")
                    .header("x-custom", "1")
                    .body(Full::<Bytes>::from("hello"))
                    .unwrap(),
            )
        }));
    let req = Request::get("/r")
        .header(INM, "\"v1\"")
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let mut names: Vec<_> = res
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cache-control: max-age=60",
            "content-location: /r.en",
            &format!("date: {AFTER_IMF}"),
            "etag: \"v1\"",
            &format!("expires: {AFTER_IMF}"),
            "vary: accept-encoding",
            "vary: accept-language",
        ]
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty());
}

#[tokio::test]
async fn not_modified_without_etag_carries_last_modified() {
    let req = Row {
        method: Method::GET,
        uri: "/r",
        headers: &[(IMS, LM_IMF), ("x-test-no-etag", "1")],
        want: 304,
    };
    let res = run(ConditionalLayer::new(), &req).await;
    assert_eq!(res.status(), 304);
    assert_eq!(res.headers()[header::LAST_MODIFIED], LM_IMF);
    assert!(!res.headers().contains_key(header::ETAG));
    assert!(!res.headers().contains_key(header::CONTENT_TYPE));
    assert!(!res.headers().contains_key(header::CONTENT_LENGTH));

    let req = Row {
        headers: &[(IMS, LM_IMF)],
        ..req
    };
    let res = run(ConditionalLayer::new(), &req).await;
    assert_eq!(res.status(), 304);
    assert!(
        !res.headers().contains_key(header::LAST_MODIFIED),
        "Last-Modified only when there is no ETag"
    );
}

#[tokio::test]
async fn if_range_keeps_range_only_on_a_strong_match() {
    use turret_conditional::ValidatorStore;
    let store = ValidatorStore::memory();
    let layer = || ConditionalLayer::new().validator_store(store.clone());
    // The first GET records "v1" / LM.
    let res = run(layer(), &row("GET", "/r", &[], 200)).await;
    assert_eq!(res.status(), 200);
    for (headers, kept) in [
        (&[("range", "bytes=0-1"), ("if-range", "\"v1\"")][..], true),
        (&[("range", "bytes=0-1"), ("if-range", "\"v2\"")][..], false),
        (
            &[("range", "bytes=0-1"), ("if-range", "W/\"v1\"")][..],
            false,
        ),
        (&[("range", "bytes=0-1"), ("if-range", LM_IMF)][..], true),
        (&[("range", "bytes=0-1"), ("if-range", LM_850)][..], true),
        (&[("range", "bytes=0-1"), ("if-range", LM_ASC)][..], true),
        (
            &[("range", "bytes=0-1"), ("if-range", AFTER_IMF)][..],
            false,
        ),
        (&[("range", "bytes=0-1"), ("if-range", "junk")][..], false),
        (&[("range", "bytes=0-1")][..], true),
    ] {
        let headers: &'static [(&'static str, &'static str)] =
            Box::leak(headers.to_vec().into_boxed_slice());
        let res = run(layer(), &row("GET", "/r", headers, 0)).await;
        let want = if kept { 206 } else { 200 };
        assert_eq!(res.status().as_u16(), want, "{headers:?}");
    }
    // Without a store or source the current validator is unknown: Range is dropped.
    let res = run(
        ConditionalLayer::new(),
        &row(
            "GET",
            "/r",
            &[("range", "bytes=0-1"), ("if-range", "\"v1\"")],
            0,
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
}
