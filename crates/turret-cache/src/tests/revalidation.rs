//! Validation: stored `no-cache` responses, 304 updates, conditional requests answered from
//! storage (RFC 9111 §4.3, RFC 9110 §13).

use super::*;

/// An origin with a validator: answers 304 to a matching `If-None-Match`, else 200 with the
/// body `v1` and `extra` fields.
fn validating(calls: Arc<AtomicUsize>, cache_control: &'static str) -> impl ScriptedOrigin {
    scripted(calls, move |n, req| {
        let current = req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"");
        let version = format!("{n}");
        if current {
            return Ok(respond(
                304,
                "",
                &[
                    ("etag", "\"v1\""),
                    ("cache-control", cache_control),
                    ("x-version", &version),
                ],
            ));
        }
        Ok(respond(
            200,
            "v1",
            &[
                ("etag", "\"v1\""),
                ("cache-control", cache_control),
                ("x-version", &version),
            ],
        ))
    })
}

#[tokio::test]
async fn no_cache_responses_are_stored_and_revalidated_on_every_reuse_rfc9111_5_2_2_4() {
    let cache = Fixture::serving(|calls| validating(calls, "no-cache"));
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "cache-status"), "turret; fwd=miss; stored");
    for n in 2..=3 {
        let res = cache.get("/a").await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(field(&res, "x-cache"), "REVALIDATED");
        assert_eq!(
            field(&res, "cache-status"),
            "turret; fwd=stale; fwd-status=304; stored"
        );
        // §4.3.4: the stored fields are updated from the 304.
        assert_eq!(field(&res, "x-version"), n.to_string());
        assert_eq!(text(res).await, "v1");
    }
    assert_eq!(cache.calls(), 3);
}

#[tokio::test]
async fn a_304_refreshes_the_stored_response_rfc9111_4_3_4() {
    let cache = Fixture::serving(|calls| validating(calls, "max-age=10"));
    cache.get("/a").await;
    cache.clock.advance(Duration::from_secs(11));
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "REVALIDATED");
    // Content-Length is never taken from the 304 (§3.2): the stored body is whole.
    assert_eq!(text(res).await, "v1");
    // Fresh again for 10 s from the revalidation.
    cache.clock.advance(Duration::from_secs(5));
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "cache-status"), "turret; hit; ttl=5");
    assert_eq!(field(&res, "x-version"), "2");
    assert_eq!(cache.calls(), 2);
}

#[tokio::test]
async fn revalidation_sends_the_stored_validators_rfc9111_4_3_1() {
    let clock = FakeClock::new(T0);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(&clock).layer(scripted(calls, move |_, req| {
        log.lock().unwrap().push((
            req.headers().get("if-none-match").cloned(),
            req.headers().get("if-modified-since").cloned(),
        ));
        Ok(respond(
            200,
            "x",
            &[
                ("etag", "\"e1\""),
                ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ("cache-control", "max-age=1"),
            ],
        ))
    }));
    // The client's own validators never reach the origin on a miss: the cache wants a
    // storable 200.
    svc.clone()
        .oneshot(with(Method::GET, "/a", &[("if-none-match", "\"client\"")]))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2));
    svc.clone().oneshot(get("/a")).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], (None, None));
    assert_eq!(seen[1].0.as_ref().unwrap(), "\"e1\"");
    assert_eq!(seen[1].1.as_ref().unwrap(), "Mon, 01 Jan 2024 00:00:00 GMT");
}

#[tokio::test]
async fn conditional_requests_are_answered_from_storage_rfc9110_13_2_2() {
    let cache = Fixture::serving(|calls| {
        scripted(calls, |_, _| {
            Ok(respond(
                200,
                "body",
                &[
                    ("etag", "\"v1\""),
                    ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                    ("cache-control", "max-age=60"),
                    ("content-type", "text/plain"),
                ],
            ))
        })
    });
    cache.get("/a").await;
    let cases: [(Headers, u16); 5] = [
        (&[("if-none-match", "\"v1\"")], 304),
        (&[("if-none-match", "W/\"v1\", \"x\"")], 304),
        (&[("if-none-match", "\"v2\"")], 200),
        (
            &[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")],
            304,
        ),
        (
            &[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")],
            200,
        ),
    ];
    for (headers, status) in cases {
        let res = cache.send(with(Method::GET, "/a", headers)).await;
        assert_eq!(res.status().as_u16(), status, "{headers:?}");
        assert_eq!(field(&res, "x-cache"), "HIT");
        if status == 304 {
            // RFC 9110 §15.4.5: validators and caching fields, no content metadata.
            assert_eq!(field(&res, "etag"), "\"v1\"");
            assert_eq!(field(&res, "cache-control"), "max-age=60");
            assert!(res.headers().get("content-type").is_none());
            assert_eq!(text(res).await, "");
        }
    }
    assert_eq!(cache.calls(), 1, "the handler ran once");
}

#[tokio::test]
async fn other_preconditions_go_to_the_origin_as_sent() {
    let cache = Fixture::new(200, &[("cache-control", "max-age=60")]);
    cache.get("/a").await;
    let res = cache
        .send(with(Method::GET, "/a", &[("if-match", "\"x\"")]))
        .await;
    assert_eq!(field(&res, "cache-status"), "turret; fwd=request");
    assert_eq!(cache.calls(), 2);
}

#[tokio::test]
async fn a_304_with_another_etag_is_passed_on_not_merged_rfc9111_4_3_4() {
    let cache = Fixture::serving(|calls| {
        scripted(calls, |n, _| {
            Ok(if n == 1 {
                respond(
                    200,
                    "old",
                    &[("etag", "\"v1\""), ("cache-control", "max-age=1")],
                )
            } else {
                respond(
                    304,
                    "",
                    &[("etag", "\"v9\""), ("cache-control", "max-age=60")],
                )
            })
        })
    });
    cache.get("/a").await;
    cache.clock.advance(Duration::from_secs(2));
    let res = cache.get("/a").await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(field(&res, "x-cache"), "MISS");
}

#[tokio::test]
async fn a_head_showing_a_new_validator_invalidates_the_stale_get_rfc9111_4_3_5() {
    let cache = Fixture::serving(|calls| {
        scripted(calls, |n, _| {
            let etag = if n == 1 { "\"v1\"" } else { "\"v2\"" };
            Ok(respond(
                200,
                &format!("v{n}"),
                &[("etag", etag), ("cache-control", "max-age=10")],
            ))
        })
    });
    cache.get("/a").await;
    cache.clock.advance(Duration::from_secs(20));
    let res = cache.send(with(Method::HEAD, "/a", &[])).await;
    assert_eq!(res.status(), StatusCode::OK);
    // The stored v1 is gone: the next GET is a plain miss, not a revalidation of v1.
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "cache-status"), "turret; fwd=miss; stored");
    assert_eq!(text(res).await, "v3");
}

#[tokio::test]
async fn a_304_that_selects_no_stored_response_is_asked_again_unconditionally_rfc9111_4_3_4() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    // 200 "a", then every conditional request gets a 304 for "b" (the representation
    // changed), every unconditional one the 200 of "b".
    let cache = Fixture::serving(|calls| {
        scripted(calls, move |n, req| {
            let inm = req.headers().get("if-none-match").cloned();
            log.lock().unwrap().push(inm.clone());
            Ok(match (n, inm) {
                (1, _) => respond(
                    200,
                    "a",
                    &[("etag", "\"a\""), ("cache-control", "max-age=1")],
                ),
                (_, Some(_)) => respond(
                    304,
                    "",
                    &[("etag", "\"b\""), ("cache-control", "max-age=1")],
                ),
                (_, None) => respond(
                    200,
                    "b",
                    &[("etag", "\"b\""), ("cache-control", "max-age=60")],
                ),
            })
        })
    });
    cache.get("/a").await;
    cache.clock.advance(Duration::from_secs(2));
    let res = cache.get("/a").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(field(&res, "etag"), "\"b\"");
    assert_eq!(
        field(&res, "cache-status"),
        "turret; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(text(res).await, "b");
    // The revalidation carried the stored validator; the second request none.
    assert_eq!(
        *seen.lock().unwrap(),
        [None, Some(HeaderValue::from_static("\"a\"")), None]
    );
    // "b" is stored: a hit, and a client holding "b" gets its 304.
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert_eq!(text(res).await, "b");
    let res = cache
        .send(with(Method::GET, "/a", &[("if-none-match", "\"b\"")]))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(cache.calls(), 3);
}

#[tokio::test]
async fn a_plain_get_never_gets_a_304_and_a_client_gets_its_own_rfc9110_15_4_5() {
    // The stale entry is revalidated on behalf of a client with its own (other) tag: the
    // origin's 304 for "b" selects nothing stored, the cache asks again and answers the
    // client's condition against the new 200.
    for (client_inm, expected) in [(None, 200), (Some("\"x\""), 200), (Some("\"b\""), 304)] {
        let clock = FakeClock::new(T0);
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = layer(&clock).layer(scripted(calls.clone(), |n, req| {
            let conditional = req.headers().contains_key("if-none-match");
            Ok(match (n, conditional) {
                (1, _) => respond(
                    200,
                    "a",
                    &[("etag", "\"a\""), ("cache-control", "max-age=1")],
                ),
                (_, true) => respond(304, "", &[("etag", "\"b\"")]),
                (_, false) => respond(
                    200,
                    "b",
                    &[("etag", "\"b\""), ("cache-control", "max-age=60")],
                ),
            })
        }));
        svc.clone().oneshot(get("/a")).await.unwrap();
        clock.advance(Duration::from_secs(2));
        let headers: Headers = match client_inm {
            None => &[],
            Some(tag) => Box::leak(Box::new([("if-none-match", tag)])),
        };
        let res = svc.oneshot(with(Method::GET, "/a", headers)).await.unwrap();
        assert_eq!(res.status().as_u16(), expected, "{client_inm:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{client_inm:?}");
    }
}

#[tokio::test]
async fn a_304_to_head_carries_the_200s_length_and_to_get_none_rfc9110_8_6() {
    let cache = Fixture::serving(|calls| validating(calls, "max-age=60"));
    cache.get("/a").await;
    for (method, length) in [(Method::HEAD, Some("2")), (Method::GET, None)] {
        let res = cache
            .send(with(method.clone(), "/a", &[("if-none-match", "\"v1\"")]))
            .await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{method}");
        assert_eq!(
            res.headers()
                .get(header::CONTENT_LENGTH)
                .map(|v| v.to_str().unwrap()),
            length,
            "{method}"
        );
    }
    assert_eq!(cache.calls(), 1);
}
