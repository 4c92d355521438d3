//! Stale responses: `max-stale`, RFC 5861 `stale-while-revalidate` / `stale-if-error`, and
//! the directives that forbid them (RFC 9111 §4.2.4, §5.2.2.2).

use super::*;

/// First call: 200 `v1` with `cache_control`; later calls: `later(n)`.
fn then<F>(calls: Arc<AtomicUsize>, cache_control: &'static str, later: F) -> impl ScriptedOrigin
where
    F: Fn(usize) -> Result<Scripted, &'static str> + Clone + Send + Sync + 'static,
{
    scripted(calls, move |n, _| {
        if n == 1 {
            Ok(respond(200, "v1", &[("cache-control", cache_control)]))
        } else {
            later(n)
        }
    })
}

#[tokio::test]
async fn max_stale_lets_the_client_take_a_stale_response_rfc9111_5_2_1_2() {
    let cache = Fixture::serving(|calls| {
        then(calls, "max-age=10", |_| {
            Ok(respond(200, "v2", &[("cache-control", "max-age=10")]))
        })
    });
    cache.get("/a").await;
    cache.clock.advance(Duration::from_secs(15));
    let res = cache
        .send(with(
            Method::GET,
            "/a",
            &[("cache-control", "max-stale=10")],
        ))
        .await;
    assert_eq!(field(&res, "x-cache"), "STALE");
    assert_eq!(field(&res, "cache-status"), "turret; hit; ttl=-5");
    assert_eq!(text(res).await, "v1");
    // Too stale for max-stale=4: forwarded.
    let res = cache
        .send(with(Method::GET, "/a", &[("cache-control", "max-stale=4")]))
        .await;
    assert_eq!(text(res).await, "v2");
    assert_eq!(cache.calls(), 2);
}

#[tokio::test]
async fn must_revalidate_forbids_max_stale_rfc9111_5_2_2_2() {
    let cache = Fixture::serving(|calls| {
        then(calls, "max-age=10, must-revalidate", |_| {
            Ok(respond(200, "v2", &[]))
        })
    });
    cache.get("/a").await;
    cache.clock.advance(Duration::from_secs(15));
    let res = cache
        .send(with(Method::GET, "/a", &[("cache-control", "max-stale")]))
        .await;
    assert_eq!(text(res).await, "v2");
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once_rfc5861_3() {
    let cache = Fixture::serving(|calls| {
        scripted(calls, |n, _| {
            Ok(respond(
                200,
                &format!("v{n}"),
                &[("cache-control", "max-age=10, stale-while-revalidate=30")],
            ))
        })
    });
    cache.get("/a").await;
    cache.clock.advance(Duration::from_secs(20));
    // Ten concurrent requests within the window: all get v1 at once, one refresh runs.
    let responses = futures_join_all((0..10).map(|_| cache.svc.clone().oneshot(get("/a")))).await;
    for res in responses {
        let res = res.unwrap();
        assert_eq!(field(&res, "x-cache"), "STALE");
        assert_eq!(
            field(&res, "cache-status"),
            "turret; hit; detail=stale-while-revalidate; ttl=-10"
        );
        assert_eq!(text(res).await, "v1");
    }
    // The refresh runs on a spawned task.
    cache.settle(2).await;
    assert_eq!(cache.calls(), 2, "exactly one refresh");
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert_eq!(text(res).await, "v2");
}

#[tokio::test]
async fn past_the_window_the_request_waits_for_the_origin_rfc5861_3() {
    let cache = Fixture::serving(|calls| {
        then(calls, "max-age=10, stale-while-revalidate=5", |_| {
            Ok(respond(200, "v2", &[]))
        })
    });
    cache.get("/a").await;
    cache.clock.advance(Duration::from_secs(16));
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "MISS");
    assert_eq!(text(res).await, "v2");
}

#[tokio::test]
async fn stale_if_error_serves_stale_on_5xx_and_errors_rfc5861_4() {
    for failure in [Ok(500), Ok(503), Err("origin down")] {
        let clock = FakeClock::new(T0);
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = layer(&clock).layer(then(
            calls.clone(),
            "max-age=10, stale-if-error=60",
            move |_| match failure {
                Ok(status) => Ok(respond(status, "error", &[])),
                Err(e) => Err(e),
            },
        ));
        svc.clone().oneshot(get("/a")).await.unwrap();
        clock.advance(Duration::from_secs(30));
        let res = svc.clone().oneshot(get("/a")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{failure:?}");
        assert_eq!(field(&res, "x-cache"), "STALE");
        assert!(
            field(&res, "cache-status").contains("detail=stale-if-error"),
            "{}",
            field(&res, "cache-status")
        );
        assert_eq!(text(res).await, "v1");
        // Past the window the failure reaches the client.
        clock.advance(Duration::from_secs(60));
        let res = svc.clone().oneshot(get("/a")).await;
        match failure {
            Ok(status) => assert_eq!(res.unwrap().status().as_u16(), status),
            Err(e) => assert_eq!(res.unwrap_err(), e),
        }
    }
}

#[tokio::test]
async fn the_policy_gives_a_stale_if_error_window_when_the_response_has_none() {
    let cache = Fixture::with(
        |layer| {
            layer.route(
                "*",
                crate::Policy::new("all").stale_if_error(Duration::from_secs(60)),
            )
        },
        |calls| then(calls, "max-age=10", |_| Ok(respond(502, "", &[]))),
    );
    cache.get("/a").await;
    cache.clock.advance(Duration::from_secs(30));
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "STALE");
    assert_eq!(text(res).await, "v1");
}

#[tokio::test]
async fn must_revalidate_and_an_unreachable_origin_give_504_rfc9111_5_2_2_2() {
    for cc in [
        "max-age=10, must-revalidate, stale-if-error=60",
        "max-age=10, proxy-revalidate, stale-if-error=60",
        "s-maxage=10, stale-if-error=60",
    ] {
        let cache = Fixture::serving(|calls| then(calls, cc, |_| Err("origin down")));
        cache.get("/a").await;
        cache.clock.advance(Duration::from_secs(30));
        let res = cache.get("/a").await;
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT, "{cc}");
        // RFC 9211 §2: based on the stored response, which was forwarded for revalidation.
        assert_eq!(
            field(&res, "cache-status"),
            "turret; fwd=stale; detail=must-revalidate",
            "{cc}"
        );
    }
}

#[tokio::test]
async fn only_if_cached_takes_a_stale_response_only_with_max_stale_rfc9111_5_2_1_7() {
    let cache =
        Fixture::serving(|calls| then(calls, "max-age=10", |_| Ok(respond(200, "v2", &[]))));
    cache.get("/a").await;
    cache.clock.advance(Duration::from_secs(20));
    let res = cache
        .send(with(
            Method::GET,
            "/a",
            &[("cache-control", "only-if-cached")],
        ))
        .await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    let res = cache
        .send(with(
            Method::GET,
            "/a",
            &[("cache-control", "only-if-cached, max-stale")],
        ))
        .await;
    assert_eq!(text(res).await, "v1");
    assert_eq!(cache.calls(), 1);
}

#[tokio::test]
async fn soft_purge_keeps_serving_stale_while_one_request_refreshes() {
    let cache = Fixture::serving(|calls| {
        scripted(calls, |n, _| {
            Ok(respond(
                200,
                &format!("v{n}"),
                &[
                    ("cache-control", "max-age=300, stale-while-revalidate=60"),
                    ("surrogate-key", "products"),
                ],
            ))
        })
    });
    cache.get("/a").await;
    cache.invalidator.soft_purge_tag("products").await.unwrap();
    cache.clock.advance(Duration::from_secs(1));
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "STALE");
    assert_eq!(text(res).await, "v1");
    cache.settle(2).await;
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert_eq!(text(res).await, "v2");
}
