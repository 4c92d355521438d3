//! Hit-for-miss: a URL that answered uncacheably is not serialised behind the coalescing
//! lock; its requests go to the origin at once, in parallel, until a response may be stored.

use tokio::time::Instant;

use super::*;

/// An origin that holds each request `delay` (tokio time), counts calls and the most
/// requests it held at once, and answers with `headers`.
#[derive(Clone, Default)]
struct Slow {
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
}

impl Slow {
    fn service(
        self,
        delay: Duration,
        headers: Headers,
    ) -> impl Service<
        Request<()>,
        Response = Scripted,
        Error = Infallible,
        Future = impl Future<Output = Result<Scripted, Infallible>> + Send,
    > + Clone
    + Send
    + 'static {
        let this = self;
        service_fn(move |_req: Request<()>| {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let now = this.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                this.most_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                this.in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(respond(200, &format!("call {n}"), headers))
            }
        })
    }

    fn take_most_in_flight(&self) -> usize {
        self.most_in_flight.swap(0, Ordering::SeqCst)
    }
}

/// `n` concurrent GETs of `/me` (the `i`th with `request(i)`'s fields): how long each took.
async fn burst<S>(svc: &S, n: usize, request: MakeRequest) -> Vec<Duration>
where
    S: Service<Request<()>, Response = Response<ResponseBody<Full<Bytes>>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let res = svc.oneshot(request(i)).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                text(res).await;
                started.elapsed()
            })
        })
        .collect();
    let mut took = Vec::new();
    for h in handles {
        took.push(h.await.unwrap());
    }
    took
}

/// Makes the `i`th request of a burst.
type MakeRequest = fn(usize) -> Request<()>;

fn plain(_: usize) -> Request<()> {
    get("/me")
}

fn authorized(i: usize) -> Request<()> {
    let mut req = get("/me");
    req.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer user-{i}")).unwrap(),
    );
    req
}

#[tokio::test(start_paused = true)]
async fn uncacheable_responses_are_not_serialised_behind_the_coalescing_lock() {
    let cases: [(&str, Headers, MakeRequest); 5] = [
        (
            "private",
            &[("cache-control", "private, max-age=60")],
            plain,
        ),
        ("no-store", &[("cache-control", "no-store")], plain),
        ("no freshness", &[], plain),
        (
            "set-cookie",
            &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
            plain,
        ),
        (
            "authorization",
            &[("cache-control", "max-age=60")],
            authorized,
        ),
    ];
    let second = Duration::from_secs(1);
    for (name, headers, request) in cases {
        let origin = Slow::default();
        let svc = layer(&FakeClock::new(T0)).layer(origin.clone().service(second, headers));
        // The first burst learns that the URL is uncacheable: the leader's fill, then the
        // others, released together.
        let first = burst(&svc, 10, request).await;
        assert!(first.iter().all(|t| *t >= second), "{name}: {first:?}");
        assert_eq!(origin.take_most_in_flight(), 9, "{name}");
        // The second goes straight to the origin, all ten at once.
        let again = burst(&svc, 10, request).await;
        assert!(
            again
                .iter()
                .all(|t| *t >= second && *t < second + Duration::from_millis(10)),
            "{name}: {again:?}"
        );
        assert_eq!(origin.take_most_in_flight(), 10, "{name}");
        assert_eq!(origin.calls.load(Ordering::SeqCst), 20, "{name}");
    }
}

#[tokio::test]
async fn a_marker_is_never_served_and_gives_way_to_a_storable_response() {
    let cache = Fixture::serving(|calls| {
        scripted(calls, |n, _| {
            let cc = if n <= 2 { "private" } else { "max-age=60" };
            Ok(respond(200, &format!("v{n}"), &[("cache-control", cc)]))
        })
    });
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "cache-status"), "turret; fwd=miss");
    assert_eq!(text(res).await, "v1");
    let res = cache.get("/a").await;
    assert_eq!(
        field(&res, "cache-status"),
        "turret; fwd=miss; detail=hit-for-miss"
    );
    assert!(res.headers().get("turret-hit-for-miss").is_none());
    assert_eq!(text(res).await, "v2");
    // Cacheable now: the pass stores it, replacing the marker, and the next is a hit.
    let res = cache.get("/a").await;
    assert_eq!(
        field(&res, "cache-status"),
        "turret; fwd=miss; detail=hit-for-miss; stored"
    );
    assert_eq!(text(res).await, "v3");
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert_eq!(text(res).await, "v3");
    assert_eq!(cache.calls(), 3);
}

#[tokio::test]
async fn a_marker_lives_for_its_lifetime_and_can_be_turned_off() {
    for (lifetime, passes) in [(Duration::from_secs(5), true), (Duration::ZERO, false)] {
        let cache = Fixture::configured(
            |layer| layer.hit_for_miss(lifetime),
            200,
            &[("cache-control", "no-store")],
        );
        cache.get("/a").await;
        let res = cache.get("/a").await;
        let expected = if passes {
            "turret; fwd=miss; detail=hit-for-miss"
        } else {
            "turret; fwd=miss"
        };
        assert_eq!(field(&res, "cache-status"), expected, "{lifetime:?}");
        cache.clock.advance(Duration::from_secs(6));
        let res = cache.get("/a").await;
        assert_eq!(
            field(&res, "cache-status"),
            "turret; fwd=miss",
            "{lifetime:?}"
        );
        assert_eq!(cache.calls(), 3);
    }
}

#[tokio::test]
async fn failures_and_unstorable_statuses_leave_no_marker() {
    for status in [500, 503, 429, 206] {
        let cache = Fixture::new(status, &[]);
        cache.get("/a").await;
        let res = cache.get("/a").await;
        assert_eq!(field(&res, "cache-status"), "turret; fwd=miss", "{status}");
    }
}

#[tokio::test]
async fn an_origin_cannot_forge_a_marker() {
    let cache = Fixture::serving(|calls| {
        scripted(calls, |_, _| {
            let mut res = respond(200, "", &[("cache-control", "max-age=60")]);
            res.headers_mut()
                .insert("turret-hit-for-miss", HeaderValue::from_static("no-store"));
            Ok(res)
        })
    });
    cache.get("/a").await;
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert_eq!(cache.calls(), 1);
}

#[tokio::test]
async fn invalidating_the_url_or_its_tag_removes_the_marker() {
    let cache = Fixture::new(
        200,
        &[("cache-control", "private"), ("surrogate-key", "me")],
    );
    cache.get("/a").await;
    cache.invalidator.invalidate_tag("me").await.unwrap();
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "cache-status"), "turret; fwd=miss");
    cache
        .invalidator
        .invalidate(&"http://shop.example/a".parse().unwrap())
        .await
        .unwrap();
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "cache-status"), "turret; fwd=miss");
}

#[tokio::test]
async fn only_if_cached_with_a_marker_is_a_504() {
    let cache = Fixture::new(200, &[("cache-control", "private")]);
    cache.get("/a").await;
    let res = cache
        .send(with(
            Method::GET,
            "/a",
            &[("cache-control", "only-if-cached")],
        ))
        .await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(cache.calls(), 1);
}
