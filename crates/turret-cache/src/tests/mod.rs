//! Layer tests: `service_fn` origins that count their calls, driven with `oneshot`.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use turret_testkit::body::{Chunks, Streaming};

use crate::{
    CacheInvalidator, CacheStorage, CachedResponse, FakeClock, Purge, ResponseBody, ResponseCache,
    ResponseCacheLayer, StorageError, StorageFuture, Variants,
};

const T0: Duration = Duration::from_secs(1_700_000_000);

type Headers = &'static [(&'static str, &'static str)];

/// An origin answering `status` with `headers` and a body naming the call number.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    status: StatusCode,
    headers: Headers,
}

fn origin(calls: Arc<AtomicUsize>, status: u16, headers: Headers) -> Origin {
    Origin {
        calls,
        status: StatusCode::from_u16(status).unwrap(),
        headers,
    }
}

impl Service<Request<()>> for Origin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<()>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let mut res = Response::new(Full::from(format!("body {n}")));
        *res.status_mut() = self.status;
        for (k, v) in self.headers {
            res.headers_mut().append(*k, HeaderValue::from_static(v));
        }
        std::future::ready(Ok(res))
    }
}

fn layer(clock: &FakeClock) -> ResponseCacheLayer {
    ResponseCacheLayer::new().clock(clock.clone())
}

/// One test's cache: a fake clock at `T0`, the origin's call count, and the test layer in
/// front of the origin.
struct Fixture<S> {
    clock: FakeClock,
    calls: Arc<AtomicUsize>,
    /// The layer's invalidator.
    invalidator: CacheInvalidator,
    svc: ResponseCache<S>,
}

impl Fixture<Origin> {
    /// The test layer in front of an [`Origin`] answering `status` with `headers`.
    fn new(status: u16, headers: Headers) -> Self {
        Self::configured(|layer| layer, status, headers)
    }

    /// [`Fixture::new`] with the layer set up by `configure`.
    fn configured(
        configure: impl FnOnce(ResponseCacheLayer) -> ResponseCacheLayer,
        status: u16,
        headers: Headers,
    ) -> Self {
        Fixture::with(configure, |calls| origin(calls, status, headers))
    }
}

impl<S> Fixture<S> {
    /// The test layer in front of the origin `make` builds on the call counter.
    fn serving(make: impl FnOnce(Arc<AtomicUsize>) -> S) -> Self {
        Self::with(|layer| layer, make)
    }

    /// The test layer, set up by `configure`, in front of the origin `make` builds.
    fn with(
        configure: impl FnOnce(ResponseCacheLayer) -> ResponseCacheLayer,
        make: impl FnOnce(Arc<AtomicUsize>) -> S,
    ) -> Self {
        let clock = FakeClock::new(T0);
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = configure(layer(&clock));
        let invalidator = layer.invalidator();
        let svc = layer.layer(make(calls.clone()));
        Self {
            clock,
            calls,
            invalidator,
            svc,
        }
    }

    /// How many times the origin was called.
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Lets a refresh on a spawned task run: yields until the origin was called `calls`
    /// times (at most 100 times), then once more for its fill.
    async fn settle(&self, calls: usize) {
        for _ in 0..100 {
            if self.calls() == calls {
                break;
            }
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
    }
}

impl<S, B> Fixture<S>
where
    S: Service<Request<()>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Debug + Send + 'static,
    B: Body + Send + 'static,
    B::Error: Send + 'static,
{
    /// Sends `req` through a clone of the cache.
    async fn send(&self, req: Request<()>) -> Response<ResponseBody<B>> {
        self.svc.clone().oneshot(req).await.unwrap()
    }

    /// A GET for `uri` on `shop.example`.
    async fn get(&self, uri: &str) -> Response<ResponseBody<B>> {
        self.send(get(uri)).await
    }
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri)
        .header(header::HOST, "shop.example")
        .body(())
        .unwrap()
}

fn with(method: Method, uri: &str, headers: Headers) -> Request<()> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "shop.example");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(()).unwrap()
}

async fn text<B: Body>(res: Response<ResponseBody<B>>) -> String
where
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn field<B>(res: &Response<B>, name: &str) -> String {
    res.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test]
async fn second_get_is_served_from_cache_with_age_and_cache_status() {
    let clock = FakeClock::new(T0);
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new().layer(layer(&clock)).service(origin(
        calls.clone(),
        200,
        &[("cache-control", "max-age=60")],
    ));

    let res = svc.clone().oneshot(get("/products")).await.unwrap();
    assert_eq!(field(&res, "cache-status"), "turret; fwd=miss; stored");
    assert_eq!(field(&res, "x-cache"), "MISS");
    assert_eq!(text(res).await, "body 1");

    clock.advance(Duration::from_secs(10));
    let res = svc.clone().oneshot(get("/products")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(field(&res, "cache-status"), "turret; hit; ttl=50");
    assert_eq!(field(&res, "x-cache"), "HIT");
    // RFC 9111 §4.2.3, §5.1: Age on every reuse.
    assert_eq!(field(&res, "age"), "10");
    assert_eq!(field(&res, "cache-control"), "max-age=60");
    assert_eq!(text(res).await, "body 1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_full_hit_states_its_length_and_a_bodiless_status_none_rfc9110_8_6() {
    let cache = Fixture::new(200, &[("cache-control", "max-age=60")]);
    cache.get("/a").await;
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    // Made with the hit's fields, so that no server or layer adding it regrows the map.
    assert_eq!(res.headers().get_all("content-length").iter().count(), 1);
    assert_eq!(field(&res, "content-length"), "6");
    assert_eq!(text(res).await, "body 1");

    let cache = Fixture::new(204, &[("cache-control", "max-age=60")]);
    cache.get("/b").await;
    let res = cache.get("/b").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert!(!res.headers().contains_key("content-length"));
}

#[tokio::test]
async fn upstream_age_counts_toward_freshness_rfc9111_4_2_3() {
    let cache = Fixture::new(200, &[("cache-control", "max-age=60"), ("age", "50")]);
    cache.get("/a").await;
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "age"), "50");
    assert_eq!(field(&res, "cache-status"), "turret; hit; ttl=10");
    cache.clock.advance(Duration::from_secs(10));
    let res = cache.get("/a").await;
    assert_eq!(
        field(&res, "cache-status"),
        "turret; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(cache.calls(), 2);
}

#[tokio::test]
async fn an_age_list_uses_its_first_member_and_an_invalid_age_is_ignored_rfc9111_5_1() {
    // (Age value, the age the hit reports): a list keeps its first member; a value that is
    // not a non-negative integer is ignored as if absent, so the response is fresh.
    let cases: [(&'static str, &str); 5] = [
        ("0, 7200", "0"),
        ("10, 7200", "10"),
        ("abc", "0"),
        ("-7200", "0"),
        ("7200.0", "0"),
    ];
    for (age, expected) in cases {
        let headers: Headers = Box::leak(Box::new([("cache-control", "max-age=60"), ("age", age)]));
        let cache = Fixture::new(200, headers);
        let res = cache.get("/a").await;
        assert_eq!(
            field(&res, "cache-status"),
            "turret; fwd=miss; stored",
            "{age}"
        );
        let res = cache.get("/a").await;
        assert_eq!(field(&res, "x-cache"), "HIT", "{age}");
        assert_eq!(field(&res, "age"), expected, "{age}");
        assert_eq!(cache.calls(), 1, "{age}");
    }
}

#[tokio::test]
async fn stale_entry_is_a_miss_rfc9111_4_2() {
    let cache = Fixture::new(200, &[("cache-control", "max-age=60")]);
    cache.get("/a").await;
    cache.clock.advance(Duration::from_secs(60));
    let res = cache.get("/a").await;
    assert_eq!(
        field(&res, "cache-status"),
        "turret; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(text(res).await, "body 2");
    let res = cache.get("/a").await;
    assert_eq!(text(res).await, "body 2");
    assert_eq!(cache.calls(), 2);
}

#[tokio::test]
async fn forbidden_responses_are_never_stored_rfc9111_3() {
    let cases: [(&str, u16, Headers); 8] = [
        (
            "no-store",
            200,
            &[("cache-control", "max-age=60, no-store")],
        ),
        ("private", 200, &[("cache-control", "private, max-age=60")]),
        ("429 (RFC 6585)", 429, &[("cache-control", "max-age=60")]),
        (
            "set-cookie",
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "sid=1")],
        ),
        ("no freshness", 200, &[]),
        (
            "no-cache",
            200,
            &[("cache-control", "no-cache, max-age=60")],
        ),
        ("invalid max-age", 200, &[("cache-control", "max-age=1.5")]),
        (
            "duplicate max-age",
            200,
            &[("cache-control", "max-age=60, max-age=60")],
        ),
    ];
    for (name, status, headers) in cases {
        let cache = Fixture::new(status, headers);
        let res = cache.get("/a").await;
        assert_eq!(res.status().as_u16(), status, "{name}");
        assert_eq!(field(&res, "cache-status"), "turret; fwd=miss", "{name}");
        let res = cache.get("/a").await;
        assert_eq!(field(&res, "x-cache"), "MISS", "{name}");
        assert_eq!(cache.calls(), 2, "{name}");
    }
}

#[tokio::test]
async fn authorization_requests_are_reused_only_when_allowed_rfc9111_3_5() {
    for (cc, stored) in [
        ("max-age=60", false),
        ("public, max-age=60", true),
        ("s-maxage=60", true),
    ] {
        let headers: Headers = match cc {
            "max-age=60" => &[("cache-control", "max-age=60")],
            "public, max-age=60" => &[("cache-control", "public, max-age=60")],
            _ => &[("cache-control", "s-maxage=60")],
        };
        let cache = Fixture::new(200, headers);
        let authed = || with(Method::GET, "/me", &[("authorization", "Bearer x")]);
        cache.send(authed()).await;
        cache.send(authed()).await;
        assert_eq!(cache.calls(), if stored { 1 } else { 2 }, "{cc}");
    }
}

#[tokio::test]
async fn vary_mismatch_is_a_miss_and_each_variant_is_kept_rfc9111_4_1() {
    let cache = Fixture::new(
        200,
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
    );
    let lang = |l: &'static str| {
        with(
            Method::GET,
            "/a",
            if l == "en" {
                &[("accept-language", "en")]
            } else {
                &[("accept-language", "fr")]
            },
        )
    };
    assert_eq!(text(cache.send(lang("en")).await).await, "body 1");
    let res = cache.send(lang("fr")).await;
    assert_eq!(field(&res, "cache-status"), "turret; fwd=vary-miss; stored");
    assert_eq!(text(res).await, "body 2");
    // An absent field matches only an absent field.
    let res = cache.get("/a").await;
    assert_eq!(text(res).await, "body 3");
    assert_eq!(text(cache.send(lang("en")).await).await, "body 1");
    assert_eq!(text(cache.send(lang("fr")).await).await, "body 2");
    assert_eq!(text(cache.get("/a").await).await, "body 3");
    assert_eq!(cache.calls(), 3);
}

#[tokio::test]
async fn vary_star_never_hits_rfc9111_4_1() {
    let cache = Fixture::new(
        200,
        &[("cache-control", "max-age=60"), ("vary", "accept, *")],
    );
    for _ in 0..3 {
        let res = cache.get("/a").await;
        assert_eq!(field(&res, "x-cache"), "MISS");
    }
    assert_eq!(cache.calls(), 3);
}

#[tokio::test]
async fn successful_unsafe_methods_invalidate_the_target_rfc9111_4_4() {
    let unknown = Method::from_bytes(b"M-SEARCH").unwrap();
    for method in [
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        unknown,
    ] {
        let cache = Fixture::new(200, &[("cache-control", "max-age=60")]);
        cache.get("/products?b=2&a=1").await;
        cache.get("/products?a=1&b=2").await;
        assert_eq!(
            cache.calls(),
            1,
            "{method}: normalised query shares the key"
        );
        let res = cache
            .send(with(method.clone(), "/products?a=1&b=2", &[]))
            .await;
        assert_eq!(field(&res, "cache-status"), "turret; fwd=method");
        let res = cache.get("/products?a=1&b=2").await;
        assert_eq!(field(&res, "x-cache"), "MISS", "{method}");
        assert_eq!(cache.calls(), 3, "{method}");
    }
}

#[tokio::test]
async fn failed_unsafe_methods_and_other_hosts_do_not_invalidate() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(&FakeClock::new(T0)).layer(origin(
        calls.clone(),
        400,
        &[("cache-control", "max-age=60")],
    ));
    svc.clone().oneshot(get("/a")).await.unwrap();
    svc.clone()
        .oneshot(with(Method::POST, "/a", &[]))
        .await
        .unwrap();
    let res = svc.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(field(&res, "x-cache"), "HIT");

    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(&FakeClock::new(T0)).layer(origin(
        calls.clone(),
        200,
        &[("cache-control", "max-age=60")],
    ));
    svc.clone().oneshot(get("/a")).await.unwrap();
    let other_host = Request::post("/a")
        .header(header::HOST, "other.example")
        .body(())
        .unwrap();
    svc.clone().oneshot(other_host).await.unwrap();
    let res = svc.oneshot(get("/a")).await.unwrap();
    assert_eq!(field(&res, "x-cache"), "HIT");
}

#[tokio::test]
async fn same_origin_location_is_invalidated_too_rfc9111_4_4() {
    let cache = Fixture::new(
        201,
        &[
            ("cache-control", "max-age=60"),
            ("location", "/products/7"),
            ("content-location", "http://evil.example/products"),
        ],
    );
    cache.get("/products/7").await;
    cache.send(with(Method::POST, "/products", &[])).await;
    let res = cache.get("/products/7").await;
    assert_eq!(field(&res, "x-cache"), "MISS");
    assert_eq!(cache.calls(), 3);
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get_without_body() {
    let cache = Fixture::new(200, &[("cache-control", "max-age=60")]);
    // A HEAD miss does not fill: it has no body.
    cache.send(with(Method::HEAD, "/a", &[])).await;
    cache.get("/a").await;
    let res = cache.send(with(Method::HEAD, "/a", &[])).await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert_eq!(field(&res, "content-length"), "6");
    assert_eq!(text(res).await, "");
    assert_eq!(cache.calls(), 2);
}

#[tokio::test]
async fn request_no_store_bypasses_and_no_cache_refreshes_rfc9111_5_2_1() {
    let cache = Fixture::new(200, &[("cache-control", "max-age=60")]);
    let res = cache
        .send(with(Method::GET, "/a", &[("cache-control", "no-store")]))
        .await;
    assert_eq!(field(&res, "cache-status"), "turret; fwd=request");
    // Nothing was stored.
    let res = cache
        .send(with(Method::GET, "/a", &[("cache-control", "no-cache")]))
        .await;
    assert_eq!(field(&res, "cache-status"), "turret; fwd=miss; stored");
    assert_eq!(text(res).await, "body 2");
    let res = cache.get("/a").await;
    assert_eq!(text(res).await, "body 2");
    assert_eq!(cache.calls(), 2);
}

#[tokio::test]
async fn default_ttl_stores_responses_without_caching_headers() {
    let cache = Fixture::configured(
        |layer| layer.default_ttl(Duration::from_secs(300)),
        200,
        &[],
    );
    cache.get("/categories").await;
    cache.clock.advance(Duration::from_secs(299));
    let res = cache.get("/categories").await;
    assert_eq!(field(&res, "cache-status"), "turret; hit; ttl=1");
    cache.clock.advance(Duration::from_secs(1));
    cache.get("/categories").await;
    assert_eq!(cache.calls(), 2);
}

#[tokio::test]
async fn qualified_private_field_is_stripped_from_storage_only_rfc9111_5_2_2_7() {
    let cache = Fixture::new(
        200,
        &[
            ("cache-control", "max-age=60, private=\"x-user\""),
            ("x-user", "alice"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
        ],
    );
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-user"), "alice");
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert!(!res.headers().contains_key("x-user"));
    // RFC 9111 §3.1: Connection and the fields it lists are not stored.
    assert!(!res.headers().contains_key("x-hop"));
    assert!(!res.headers().contains_key(header::CONNECTION));
}

#[tokio::test]
async fn upstream_cache_status_is_kept_rfc9211_2() {
    let cache = Fixture::serving(|calls| {
        origin(
            calls,
            200,
            &[
                ("cache-control", "max-age=60"),
                ("cache-status", "origin-cdn; hit"),
            ],
        )
    });
    let res = cache.get("/a").await;
    assert_eq!(
        field(&res, "cache-status"),
        "origin-cdn; hit, turret; fwd=miss; stored"
    );
    let res = cache.get("/a").await;
    assert_eq!(
        field(&res, "cache-status"),
        "origin-cdn; hit, turret; hit; ttl=60"
    );
}

#[tokio::test]
async fn over_size_response_passes_through_and_is_not_stored() {
    let cache = Fixture::configured(
        |layer| layer.max_entry_size(5),
        200,
        &[("cache-control", "max-age=60")],
    );
    assert_eq!(text(cache.get("/a").await).await, "body 1");
    assert_eq!(text(cache.get("/a").await).await, "body 2");
}

#[tokio::test]
async fn a_streaming_body_passes_through_chunk_by_chunk_and_is_stored_at_its_end() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let counter = calls.clone();
    let svc = layer(&FakeClock::new(T0)).layer(service_fn(move |_req: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let rx = rx.lock().unwrap().take();
        async move {
            let mut res = Response::new(Streaming(
                rx.unwrap_or_else(|| tokio::sync::mpsc::channel(1).1),
            ));
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            );
            Ok::<_, Infallible>(res)
        }
    }));
    let res = svc.clone().oneshot(get("/events")).await.unwrap();
    assert_eq!(field(&res, "cache-status"), "turret; fwd=miss");
    let mut body = res.into_body();
    for chunk in ["data: 1\n\n", "data: 2\n\n"] {
        tx.send(Bytes::from(chunk)).await.unwrap();
        // Each chunk arrives before the next one is sent: nothing is buffered.
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), chunk);
    }
    drop(tx);
    assert!(body.frame().await.is_none());
    // Stored as it streamed: the next request is a hit with the whole body.
    let again = svc.oneshot(get("/events")).await.unwrap();
    assert_eq!(field(&again, "x-cache"), "HIT");
    assert_eq!(text(again).await, "data: 1\n\ndata: 2\n\n");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_share_one_inner_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = layer(&FakeClock::new(T0)).layer(service_fn(move |_req: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut res = Response::new(Full::<Bytes>::from("shared"));
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            );
            Ok::<_, Infallible>(res)
        }
    }));
    let requests = (0..20).map(|_| svc.clone().oneshot(get("/hot")));
    let responses = futures_join_all(requests).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let mut collapsed = 0;
    for res in responses {
        let res = res.unwrap();
        if field(&res, "cache-status").ends_with("collapsed") {
            collapsed += 1;
        }
        assert_eq!(text(res).await, "shared");
    }
    assert_eq!(collapsed, 19);
}

#[tokio::test(start_paused = true)]
async fn an_uncacheable_fill_releases_the_waiters_to_call_themselves() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = layer(&FakeClock::new(T0)).layer(service_fn(move |_req: Request<()>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut res = Response::new(Full::<Bytes>::from(format!("private {n}")));
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
            Ok::<_, Infallible>(res)
        }
    }));
    let responses = futures_join_all((0..5).map(|_| svc.clone().oneshot(get("/me")))).await;
    let mut bodies = Vec::new();
    for res in responses {
        bodies.push(text(res.unwrap()).await);
    }
    bodies.sort();
    bodies.dedup();
    // Nobody got somebody else's private response.
    assert_eq!(bodies.len(), 5);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

/// Awaits every future concurrently (the futures are spawned, so they make progress together).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn inner_errors_pass_through_unchanged() {
    let svc = layer(&FakeClock::new(T0)).layer(service_fn(|_req: Request<()>| async {
        Err::<Response<Full<Bytes>>, _>("origin down")
    }));
    let err = svc.oneshot(get("/a")).await.unwrap_err();
    assert_eq!(err, "origin down");
}

/// A storage that answers asynchronously and always fails.
#[derive(Debug)]
struct Broken;

impl CacheStorage for Broken {
    fn get(&self, _: &str) -> StorageFuture<Variants> {
        StorageFuture::new(async { Err(StorageError::new("down")) })
    }
    fn put(&self, _: &str, _: Arc<CachedResponse>, _: Duration) -> StorageFuture<()> {
        StorageFuture::new(async { Err(StorageError::new("down")) })
    }
    fn invalidate(&self, _: &str, _: Purge) -> StorageFuture<usize> {
        StorageFuture::ready(Err(StorageError::new("down")))
    }
    fn invalidate_tag(&self, _: &str, _: Purge) -> StorageFuture<usize> {
        StorageFuture::ready(Err(StorageError::new("down")))
    }
}

#[tokio::test]
async fn a_failing_storage_means_misses_not_errors() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ResponseCacheLayer::with_storage(Broken).layer(origin(
        calls.clone(),
        200,
        &[("cache-control", "max-age=60")],
    ));
    for _ in 0..2 {
        let res = svc.clone().oneshot(get("/a")).await.unwrap();
        assert_eq!(field(&res, "cache-status"), "turret; fwd=miss");
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = svc.oneshot(with(Method::DELETE, "/a", &[])).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn without_coalescing_misses_still_fill() {
    let cache = Fixture::configured(
        |layer| layer.coalesce(false),
        200,
        &[("cache-control", "max-age=60")],
    );
    cache.get("/a").await;
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert_eq!(cache.calls(), 1);
}

#[tokio::test]
async fn request_max_age_and_min_fresh_narrow_reuse_rfc9111_5_2_1() {
    let cache = Fixture::new(200, &[("cache-control", "max-age=60")]);
    cache.get("/a").await;
    cache.clock.advance(Duration::from_secs(30));
    // Age 30 is within max-age=30; 30 s of freshness left satisfies min-fresh=30.
    let res = cache
        .send(with(
            Method::GET,
            "/a",
            &[("cache-control", "max-age=30, min-fresh=30")],
        ))
        .await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    let res = cache
        .send(with(Method::GET, "/a", &[("cache-control", "max-age=29")]))
        .await;
    assert_eq!(
        field(&res, "cache-status"),
        "turret; fwd=request; fwd-status=200; stored"
    );
    cache.clock.advance(Duration::from_secs(1));
    let res = cache
        .send(with(
            Method::GET,
            "/a",
            &[("cache-control", "min-fresh=60")],
        ))
        .await;
    assert_eq!(
        field(&res, "cache-status"),
        "turret; fwd=request; fwd-status=200; stored"
    );
    assert_eq!(cache.calls(), 3);
}

#[tokio::test]
async fn only_if_cached_gets_504_when_nothing_fits_rfc9111_5_2_1_7() {
    let cache = Fixture::new(200, &[("cache-control", "max-age=60")]);
    let only = || with(Method::GET, "/a", &[("cache-control", "only-if-cached")]);
    let res = cache.send(only()).await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(!res.headers().contains_key("cache-status"));
    assert_eq!(cache.calls(), 0);
    cache.get("/a").await;
    let res = cache.send(only()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert_eq!(cache.calls(), 1);
}

#[tokio::test]
async fn the_application_can_invalidate_a_uri() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = layer(&FakeClock::new(T0));
    let svc = cache.layer(origin(
        calls.clone(),
        200,
        &[("cache-control", "max-age=60")],
    ));
    svc.clone()
        .oneshot(get("/products?sort=price&page=2"))
        .await
        .unwrap();
    cache
        .invalidate(
            &"http://other.example/products?page=2&sort=price"
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    let res = svc
        .clone()
        .oneshot(get("/products?sort=price&page=2"))
        .await
        .unwrap();
    assert_eq!(field(&res, "x-cache"), "HIT");
    cache
        .invalidate(
            &"http://Shop.example/products?page=2&sort=price"
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    let res = svc
        .oneshot(get("/products?sort=price&page=2"))
        .await
        .unwrap();
    assert_eq!(field(&res, "x-cache"), "MISS");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

mod hit_for_miss;
mod policies;
mod revalidation;
mod stale;

type Scripted = Response<Full<Bytes>>;

/// A scripted origin: answers [`Scripted`] responses or `&'static str` errors.
trait ScriptedOrigin:
    Service<Request<()>, Response = Scripted, Error = &'static str, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> ScriptedOrigin for S where
    S: Service<Request<()>, Response = Scripted, Error = &'static str, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// An origin whose answer `f(call number, request)` decides; errors are `&'static str`.
fn scripted<F>(calls: Arc<AtomicUsize>, f: F) -> impl ScriptedOrigin
where
    F: Fn(usize, &Request<()>) -> Result<Scripted, &'static str> + Clone + Send + Sync + 'static,
{
    service_fn(move |req: Request<()>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let out = f(n, &req);
        async move { out }
    })
}

/// A response with `status`, `body` and `headers`.
fn respond(status: u16, body: &str, headers: &[(&str, &str)]) -> Scripted {
    let mut res = Response::new(Full::from(body.to_owned()));
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        res.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    res
}

#[tokio::test]
async fn a_body_longer_than_its_size_hint_is_not_buffered_past_the_limit() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = ResponseCacheLayer::new()
        .max_entry_size(1024)
        .layer(service_fn(move |_req: Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                // A size hint of 10 bytes, then 32 KiB.
                let chunks = (0..64).map(|_| Bytes::from(vec![b'x'; 512]));
                let mut res = Response::new(Chunks::new(chunks).with_hint(10));
                res.headers_mut()
                    .insert("cache-control", HeaderValue::from_static("max-age=60"));
                Ok::<_, Infallible>(res)
            }
        }));
    let res = svc.clone().oneshot(get("/lies")).await.unwrap();
    assert_eq!(field(&res, "cache-status"), "turret; fwd=miss");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 64 * 512, "the whole body reaches the client");
    let res = svc.oneshot(get("/lies")).await.unwrap();
    assert_eq!(field(&res, "x-cache"), "MISS");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn tag_fields_never_leave_the_layer_unless_exposed() {
    let tagged: Headers = &[
        ("cache-control", "max-age=60"),
        ("surrogate-key", "products p1"),
        ("cache-tag", "all"),
    ];
    let requests = || {
        [
            ("a miss", with(Method::GET, "/a", &[])),
            ("a hit", with(Method::GET, "/a", &[])),
            (
                "a conditional hit",
                with(Method::GET, "/a", &[("if-none-match", "*")]),
            ),
            (
                "request no-store",
                with(Method::GET, "/b", &[("cache-control", "no-store")]),
            ),
            (
                "If-Match",
                with(Method::GET, "/c", &[("if-match", "\"x\"")]),
            ),
            (
                "If-Range",
                with(
                    Method::GET,
                    "/d",
                    &[("if-range", "\"x\""), ("range", "bytes=0-1")],
                ),
            ),
            ("a cold HEAD", with(Method::HEAD, "/e", &[])),
            ("a POST", with(Method::POST, "/f", &[])),
            ("a bypassed route", with(Method::GET, "/admin/x", &[])),
        ]
    };
    for expose in [false, true] {
        let cache = Fixture::with(
            |layer| {
                layer
                    .route("/admin/*", crate::Policy::new("admin").bypass())
                    .expose_tags(expose)
            },
            |calls| origin(calls, 200, tagged),
        );
        for (name, req) in requests() {
            let res = cache.send(req).await;
            for tag_field in ["surrogate-key", "cache-tag"] {
                if expose && name != "a hit" && name != "a conditional hit" {
                    assert!(res.headers().contains_key(tag_field), "{name}: {tag_field}");
                } else if !expose {
                    assert!(
                        !res.headers().contains_key(tag_field),
                        "{name}: {tag_field}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn a_storage_failing_behind_a_local_tier_logs_one_line_per_change_of_state() {
    use std::sync::Mutex as StdMutex;

    /// Answers `/l1` synchronously (a two-tier storage's L1 hit) and takes writes locally;
    /// everything else needs the remote storage, which is down until `up` is set.
    #[derive(Debug, Clone, Default)]
    struct Tiered {
        up: Arc<std::sync::atomic::AtomicBool>,
    }
    impl CacheStorage for Tiered {
        fn get(&self, key: &str) -> StorageFuture<Variants> {
            if key.ends_with("/l1") {
                return StorageFuture::ready(Ok(Variants::from(Vec::new())));
            }
            let up = self.up.load(Ordering::SeqCst);
            StorageFuture::new(async move {
                if up {
                    Ok(Variants::from(Vec::new()))
                } else {
                    Err(StorageError::new("down"))
                }
            })
        }
        fn put(&self, _: &str, _: Arc<CachedResponse>, _: Duration) -> StorageFuture<()> {
            StorageFuture::ready(Ok(()))
        }
        fn invalidate(&self, _: &str, _: Purge) -> StorageFuture<usize> {
            StorageFuture::ready(Ok(0))
        }
        fn invalidate_tag(&self, _: &str, _: Purge) -> StorageFuture<usize> {
            StorageFuture::ready(Ok(0))
        }
    }

    /// Collects the layer's storage health lines.
    #[derive(Clone, Default)]
    struct Lines(Arc<StdMutex<Vec<String>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let line = String::from_utf8_lossy(buf).into_owned();
            if line.contains("cache storage") {
                self.0.lock().unwrap().push(line);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let storage = Tiered::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ResponseCacheLayer::with_storage(storage.clone()).layer(origin(
        calls,
        200,
        &[("cache-control", "max-age=60")],
    ));
    // The remote storage is down: misses that reach it fail, L1 answers and writes succeed.
    for path in ["/remote", "/l1", "/remote", "/l1", "/remote"] {
        svc.clone().oneshot(get(path)).await.unwrap();
    }
    assert_eq!(
        lines.0.lock().unwrap().len(),
        1,
        "{:?}",
        lines.0.lock().unwrap()
    );
    assert!(lines.0.lock().unwrap()[0].contains("failing"));
    // Back: one line.
    storage.up.store(true, Ordering::SeqCst);
    for path in ["/remote", "/l1", "/remote"] {
        svc.clone().oneshot(get(path)).await.unwrap();
    }
    let lines = lines.0.lock().unwrap().clone();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("recovered"), "{lines:?}");
}

#[tokio::test]
async fn a_write_with_an_absolute_target_invalidates_it_whatever_its_host_field_rfc9111_4_4() {
    let cache = Fixture::new(200, &[("cache-control", "max-age=60")]);
    cache.get("/a").await;
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    let write = Request::post("http://shop.example/a")
        .header(header::HOST, "other.example")
        .body(())
        .unwrap();
    cache.send(write).await;
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "MISS");
    assert_eq!(cache.calls(), 3);
}

#[tokio::test]
async fn a_response_without_date_is_stored_with_the_time_it_was_received_rfc9110_6_6_1() {
    let cache = Fixture::serving(|calls| origin(calls, 200, &[("cache-control", "max-age=60")]));
    let received = httpdate::fmt_http_date(std::time::UNIX_EPOCH + T0);
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "date"), received);
    cache.clock.advance(Duration::from_secs(10));
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert_eq!(field(&res, "date"), received);
    assert_eq!(field(&res, "age"), "10");
}
