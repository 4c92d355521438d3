//! Helpers shared by the fuzz targets: splitting an input into field values, one tokio
//! runtime per thread, and the layers over scripted origins. Every target goes through a
//! public API: the parsers themselves are private to their crates.

use std::{cell::RefCell, convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// Runs `fut` to completion on this thread's runtime (made once).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    RUNTIME.with(|rt| {
        let mut rt = rt.borrow_mut();
        let rt = rt.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
        });
        rt.block_on(fut)
    })
}

/// The input cut at `\n` (a byte no field value may hold): one candidate value per piece.
pub fn pieces(data: &[u8]) -> Vec<&[u8]> {
    data.split(|&b| b == b'\n').collect()
}

/// Appends `value` as `name` when it is a valid field value (what an HTTP parser would
/// have let through).
pub fn append(headers: &mut HeaderMap, name: &'static str, value: &[u8]) {
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.append(HeaderName::from_static(name), v);
    }
}

/// A status every layer may answer with.
pub fn assert_valid(status: StatusCode) {
    assert!((100..600).contains(&status.as_u16()), "{status}");
}

/// One exchange through a response cache: the origin answers `status` with `response`
/// fields; the request carries `request` fields. Returns the statuses the client saw for
/// `rounds` identical requests (the clock moves `advance` seconds between them).
pub fn through_cache(
    method: Method,
    request: &HeaderMap,
    status: u16,
    response: &HeaderMap,
    rounds: usize,
    advance: u64,
) -> Vec<StatusCode> {
    let clock = turret_cache::FakeClock::new(Duration::from_secs(1_700_000_000));
    let response = response.clone();
    let status = StatusCode::from_u16(status.clamp(100, 599)).unwrap_or(StatusCode::OK);
    let svc = turret_cache::ResponseCacheLayer::new()
        .clock(clock.clone())
        .targeted_field(HeaderName::from_static("turret-cache-control"))
        .layer(service_fn(move |_req: Request<()>| {
            let mut res = Response::new(Full::<Bytes>::from("origin body"));
            *res.status_mut() = status;
            *res.headers_mut() = response.clone();
            async move { Ok::<_, Infallible>(res) }
        }));
    block_on(async {
        let mut seen = Vec::new();
        for _ in 0..rounds {
            let mut req = Request::builder()
                .method(method.clone())
                .uri("/fuzz?b=2&a=1")
                .header(http::header::HOST, "shop.example")
                .body(())
                .unwrap();
            req.headers_mut().extend(request.clone());
            let res = svc.clone().oneshot(req).await.unwrap();
            seen.push(res.status());
            let _ = res.into_body().collect().await;
            clock.advance(Duration::from_secs(advance));
        }
        seen
    })
}

/// One request through a conditional layer (with its memory validator store) whose handler
/// answers `status` with `response` fields; a GET first teaches the store the validators.
pub fn through_conditional(
    method: Method,
    request: &HeaderMap,
    status: u16,
    response: &HeaderMap,
) -> StatusCode {
    let response = response.clone();
    let status = StatusCode::from_u16(status.clamp(100, 599)).unwrap_or(StatusCode::OK);
    let svc = turret_conditional::ConditionalLayer::new()
        .validator_store(turret_conditional::ValidatorStore::memory())
        .layer(service_fn(move |_req: Request<()>| {
            let mut res = Response::new(Full::<Bytes>::from("handler body"));
            *res.status_mut() = status;
            *res.headers_mut() = response.clone();
            async move { Ok::<_, Infallible>(res) }
        }));
    block_on(async {
        let learn = Request::get("/doc").body(()).unwrap();
        let _ = svc.clone().oneshot(learn).await.unwrap();
        let mut req = Request::builder()
            .method(method)
            .uri("/doc")
            .body(())
            .unwrap();
        req.headers_mut().extend(request.clone());
        let res = svc.oneshot(req).await.unwrap();
        let status = res.status();
        let _ = res.into_body().collect().await;
        status
    })
}

/// A method chosen by one byte.
pub fn method(b: u8) -> Method {
    match b % 6 {
        0 | 1 => Method::GET,
        2 => Method::HEAD,
        3 => Method::PUT,
        4 => Method::DELETE,
        _ => Method::POST,
    }
}
