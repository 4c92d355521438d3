//! Application policy: routes, keys, tags, write rules, targeted fields (RFC 9213),
//! Set-Cookie, warming and the fleet fill lease.

use turret_stampede::LeaseLock;

use super::*;
use crate::{MemoryStorage, Policy, QueryKey, SetCookie};

/// The shop's routes on `layer`.
fn shop(layer: ResponseCacheLayer) -> ResponseCacheLayer {
    layer
        .route(
            "/products/*",
            Policy::new("products")
                .ttl(Duration::from_secs(300))
                .query(QueryKey::Only(vec!["skip".into(), "limit".into()]))
                .tags(["products"]),
        )
        .route(
            "/categories/*",
            Policy::new("categories").ttl(Duration::from_secs(3600)),
        )
        .route("/admin/*", Policy::new("admin").bypass())
        .invalidate_on_write("/products/*", ["products"])
}

#[tokio::test]
async fn each_route_gets_its_policy_ttl() {
    let cache = Fixture::configured(shop, 200, &[]);
    for path in ["/products/1", "/categories/1", "/admin/x", "/other"] {
        cache.get(path).await;
    }
    let ttl = async |path: &'static str| field(&cache.get(path).await, "cache-status");
    assert_eq!(ttl("/products/1").await, "turret; hit; ttl=300");
    assert_eq!(ttl("/categories/1").await, "turret; hit; ttl=3600");
    assert_eq!(ttl("/admin/x").await, "turret; fwd=bypass");
    // No caching fields and no default TTL: not stored (the first miss left a hit-for-miss
    // marker, so this one went straight to the origin).
    assert_eq!(ttl("/other").await, "turret; fwd=miss; detail=hit-for-miss");
}

#[tokio::test]
async fn only_the_listed_query_parameters_are_in_the_key() {
    let cache = Fixture::configured(shop, 200, &[]);
    cache.get("/products?limit=10&skip=0&utm_source=x").await;
    let res = cache.get("/products?skip=0&limit=10").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    let res = cache.get("/products?skip=10&limit=10").await;
    assert_eq!(field(&res, "x-cache"), "MISS");
}

#[tokio::test]
async fn tags_come_from_the_policy_and_surrogate_key_and_are_stripped() {
    let cache = Fixture::with(shop, |calls| {
        scripted(calls, |n, req| {
            let id = req.uri().path().rsplit('/').next().unwrap().to_owned();
            Ok(respond(
                200,
                &format!("{id} v{n}"),
                &[("surrogate-key", &format!("product:{id} catalogue"))],
            ))
        })
    });
    let res = cache.get("/products/1").await;
    assert!(res.headers().get("surrogate-key").is_none());
    cache.get("/products/2").await;
    let res = cache.get("/products/1").await;
    assert!(res.headers().get("surrogate-key").is_none());
    assert_eq!(field(&res, "x-cache"), "HIT");

    cache.invalidator.invalidate_tag("product:1").await.unwrap();
    let hit = async |path: &'static str| field(&cache.get(path).await, "x-cache");
    assert_eq!(hit("/products/1").await, "MISS");
    assert_eq!(hit("/products/2").await, "HIT");
    // The policy's tag covers every product.
    cache.invalidator.invalidate_tag("products").await.unwrap();
    assert_eq!(hit("/products/1").await, "MISS");
    assert_eq!(hit("/products/2").await, "MISS");
}

#[tokio::test]
async fn a_successful_write_invalidates_the_tags_of_its_write_rule() {
    let cache = Fixture::with(shop, |calls| {
        scripted(calls, |_, req| {
            Ok(if req.method() == Method::POST {
                respond(201, "", &[("location", "/products/99")])
            } else {
                respond(200, "list", &[])
            })
        })
    });
    cache.get("/products?skip=0").await;
    cache.get("/products/1").await;
    let res = cache.send(with(Method::POST, "/products", &[])).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    for path in ["/products?skip=0", "/products/1"] {
        let res = cache.send(get(path)).await;
        assert_eq!(field(&res, "x-cache"), "MISS", "{path}");
    }
}

#[tokio::test]
async fn events_invalidate_their_tags() {
    let cache = Fixture::configured(
        |layer| shop(layer).on_event("catalogue-imported", ["products"]),
        200,
        &[],
    );
    cache.get("/products/1").await;
    cache.invalidator.emit("unknown-event").await.unwrap();
    let res = cache.get("/products/1").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    cache.invalidator.emit("catalogue-imported").await.unwrap();
    let res = cache.get("/products/1").await;
    assert_eq!(field(&res, "x-cache"), "MISS");
}

#[tokio::test]
async fn a_custom_key_can_bypass_and_the_host_is_in_the_default_key() {
    let cache = Fixture::configured(
        |layer| {
            layer.make_key(|_: &Method, uri: &http::Uri, _: &http::HeaderMap| {
                (!uri.path().starts_with("/private")).then(|| uri.path().to_owned())
            })
        },
        200,
        &[("cache-control", "max-age=60")],
    );
    cache.get("/private/a").await;
    let res = cache.get("/private/a").await;
    assert_eq!(field(&res, "cache-status"), "turret; fwd=bypass");
    cache.get("/a").await;
    let res = cache.get("/a").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
}

#[tokio::test]
async fn key_headers_select_variants_like_vary() {
    let cache = Fixture::configured(
        |layer| {
            layer.route(
                "*",
                Policy::new("i18n")
                    .ttl(Duration::from_secs(60))
                    .key_headers([header::ACCEPT_LANGUAGE]),
            )
        },
        200,
        &[],
    );
    let lang = |l: &'static str| {
        let mut req = get("/a");
        req.headers_mut()
            .insert("accept-language", HeaderValue::from_static(l));
        req
    };
    cache.send(lang("en")).await;
    let res = cache.send(lang("fr")).await;
    assert_eq!(field(&res, "x-cache"), "MISS");
    let res = cache.send(lang("en")).await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert_eq!(text(res).await, "body 1");
}

#[tokio::test]
async fn cdn_cache_control_overrides_cache_control_rfc9213_2_1() {
    let cases: [(Headers, &str); 5] = [
        // Valid targeted field: it wins, Cache-Control is ignored.
        (
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ],
            "HIT",
        ),
        (
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "no-store"),
            ],
            "MISS",
        ),
        // Invalid dictionary: ignored, Cache-Control applies.
        (
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "max-age=\"x"),
            ],
            "HIT",
        ),
        // Our own targeted field beats CDN-Cache-Control.
        (
            &[
                ("cdn-cache-control", "no-store"),
                ("turret-cache-control", "max-age=60"),
            ],
            "HIT",
        ),
        // Expires is ignored under a targeted field.
        (
            &[
                ("cdn-cache-control", "public"),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
            ],
            "MISS",
        ),
    ];
    for (headers, expected) in cases {
        let cache = Fixture::with(
            |layer| layer.targeted_field(HeaderName::from_static("turret-cache-control")),
            |calls| origin(calls, 200, headers),
        );
        cache.get("/a").await;
        let res = cache.get("/a").await;
        assert_eq!(field(&res, "x-cache"), expected, "{headers:?}");
    }
}

#[tokio::test]
async fn a_targeted_field_with_a_wrong_typed_directive_is_ignored_so_no_store_applies_rfc9213_2_1()
{
    let cases: [Headers; 2] = [
        &[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=\"10000\""),
        ],
        &[
            ("cache-control", "private"),
            ("cdn-cache-control", "max-age=10000, public=\"yes\""),
        ],
    ];
    for headers in cases {
        let cache = Fixture::new(200, headers);
        let res = cache.get("/a").await;
        assert_eq!(
            field(&res, "cache-status"),
            "turret; fwd=miss",
            "{headers:?}"
        );
        let res = cache.get("/a").await;
        assert_eq!(field(&res, "x-cache"), "MISS", "{headers:?}");
        assert_eq!(cache.calls(), 2, "{headers:?}");
    }
}

#[tokio::test]
async fn set_cookie_is_never_replayed() {
    let headers: Headers = &[("cache-control", "max-age=60"), ("set-cookie", "sid=1")];
    let clock = FakeClock::new(T0);
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(&clock).layer(origin(calls.clone(), 200, headers));
    svc.clone().oneshot(get("/a")).await.unwrap();
    let res = svc.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(field(&res, "x-cache"), "MISS");
    assert_eq!(field(&res, "set-cookie"), "sid=1");

    let svc = layer(&clock)
        .set_cookie(SetCookie::StoreWithout)
        .layer(origin(calls.clone(), 200, headers));
    let res = svc.clone().oneshot(get("/b")).await.unwrap();
    assert_eq!(
        field(&res, "set-cookie"),
        "sid=1",
        "the filling client gets it"
    );
    let res = svc.clone().oneshot(get("/b")).await.unwrap();
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert!(res.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn warm_fills_the_cache_ahead_of_traffic() {
    let cache = Fixture::configured(shop, 200, &[]);
    let warmed = cache
        .svc
        .warm(["/products/1", "/products/2", "/other"].map(get))
        .await
        .unwrap();
    assert_eq!(warmed, 2, "/other is not cacheable");
    let res = cache.get("/products/2").await;
    assert_eq!(field(&res, "x-cache"), "HIT");
    assert_eq!(cache.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fill_lease_makes_instances_share_one_origin_call() {
    let clock = FakeClock::new(T0);
    let calls = Arc::new(AtomicUsize::new(0));
    let storage = Arc::new(MemoryStorage::default());
    let lock = LeaseLock::memory();
    // Two "instances": separate layers (no shared single-flight), one storage, one lock.
    let instances: Vec<_> = (0..2)
        .map(|_| {
            let calls = calls.clone();
            ResponseCacheLayer::with_storage(storage.clone())
                .clock(clock.clone())
                .fill_lease(lock.clone(), Duration::from_secs(5))
                .layer(service_fn(move |_req: Request<()>| {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let mut res = Response::new(Full::<Bytes>::from("slow"));
                        res.headers_mut()
                            .insert("cache-control", HeaderValue::from_static("max-age=60"));
                        Ok::<_, Infallible>(res)
                    }
                }))
        })
        .collect();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let svc = instances[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let res = svc.oneshot(get("/report")).await.unwrap();
            text(res).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "slow");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
