//! The response cache's security properties (SECURITY.md), through the public layer and
//! under the configurations most likely to break them (a default TTL, route policies that
//! force a TTL, heuristic freshness): `private` / `no-store` never stored, responses to
//! `Authorization` requests not shared unless the response allows it, `Set-Cookie` never
//! replayed, unkeyed request fields unable to poison the default key once keyed, and a
//! personal page under a static-looking path stored only if its handler allows it.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn, util::BoxCloneService};
use turret_cache::{
    CacheStorage, FakeClock, MemoryStorage, Policy, QueryKey, ResponseBody, ResponseCacheLayer,
    SetCookie,
};

const T0: Duration = Duration::from_secs(1_700_000_000);

type Origin = Arc<dyn Fn(&Request<()>, usize) -> Response<Full<Bytes>> + Send + Sync>;
type Svc = BoxCloneService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// The layer over an origin that answers with `respond(request, call number)`; the
/// counter counts the calls that reached it.
fn cached(layer: ResponseCacheLayer, respond: Origin) -> (Svc, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let origin = service_fn(move |req: Request<()>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let res = respond(&req, n);
        async move { Ok::<_, Infallible>(res) }
    });
    (BoxCloneService::new(layer.layer(origin)), calls)
}

/// A `200` whose body names the call, with `headers`.
fn respond_with(headers: &'static [(&'static str, &'static str)]) -> Origin {
    Arc::new(move |_req, n| {
        let mut res = Response::new(Full::from(format!("call {n}")));
        for (k, v) in headers {
            res.headers_mut().append(*k, HeaderValue::from_static(v));
        }
        res
    })
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut req = Request::get(path).header(header::HOST, "shop.example");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(()).unwrap()
}

async fn send(svc: &Svc, req: Request<()>) -> (Response<()>, String) {
    let res = svc.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        Response::from_parts(parts, ()),
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

/// Layers configured to store as much as they can, on `storage`: a default TTL, a route
/// policy forcing a TTL on everything, heuristic freshness, `Set-Cookie` stored without.
fn eager_layers_on(
    clock: &FakeClock,
    storage: &MemoryStorage,
) -> Vec<(&'static str, ResponseCacheLayer)> {
    let base = || ResponseCacheLayer::with_storage(storage.clone()).clock(clock.clone());
    vec![
        ("defaults", base()),
        ("default_ttl", base().default_ttl(Duration::from_secs(300))),
        (
            "policy ttl",
            base().route("/*", Policy::new("all").ttl(Duration::from_secs(300))),
        ),
        ("heuristic", base().heuristic_freshness(true)),
        (
            "set-cookie stored without",
            base()
                .default_ttl(Duration::from_secs(300))
                .set_cookie(SetCookie::StoreWithout),
        ),
    ]
}

/// The same layers, each on its own storage.
fn eager_layers(clock: &FakeClock) -> Vec<(&'static str, ResponseCacheLayer)> {
    let n = eager_layers_on(clock, &MemoryStorage::new(1)).len();
    (0..n)
        .map(|i| eager_layers_on(clock, &MemoryStorage::new(1 << 20)).swap_remove(i))
        .collect()
}

#[tokio::test]
async fn private_and_no_store_are_never_stored_whatever_the_configuration() {
    let forbidden: [&'static [(&'static str, &'static str)]; 8] = [
        &[("cache-control", "no-store")],
        &[("cache-control", "no-store, max-age=600, public")],
        &[
            ("cache-control", "max-age=600"),
            ("cache-control", "no-store"),
        ],
        &[("cache-control", "private")],
        &[("cache-control", "private, max-age=600")],
        &[("cache-control", "Private, S-MaxAge=600")],
        &[
            ("cache-control", "public, max-age=600"),
            ("cache-control", "private"),
        ],
        &[
            ("cache-control", "private, max-age=600"),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ],
    ];
    let clock = FakeClock::new(T0);
    for headers in forbidden {
        let storage = MemoryStorage::new(1 << 20);
        for (config, layer) in eager_layers_on(&clock, &storage) {
            let (svc, calls) = cached(layer, respond_with(headers));
            let (first, body1) = send(&svc, get("/me", &[])).await;
            assert_eq!(first.status(), StatusCode::OK);
            let (second, body2) = send(&svc, get("/me", &[])).await;
            assert_eq!(second.headers()["x-cache"], "MISS", "{config}: {headers:?}");
            assert_ne!(body1, body2, "{config}: {headers:?}");
            // A client willing to take anything stored finds nothing.
            let (only, _) = send(
                &svc,
                get("/me", &[("cache-control", "only-if-cached, max-stale")]),
            )
            .await;
            assert_eq!(
                only.status(),
                StatusCode::GATEWAY_TIMEOUT,
                "{config}: {headers:?}"
            );
            assert_eq!(calls.load(Ordering::SeqCst), 2, "{config}: {headers:?}");
        }
        // Nothing of the response was stored: at most the hit-for-miss marker that says
        // the URL is uncacheable, which holds no body and no field of the response.
        let variants = storage.get("http://shop.example/me").await.unwrap();
        for v in variants.iter() {
            assert!(v.body().is_empty(), "{headers:?}: a body was stored");
            assert!(
                v.headers().keys().all(|k| k == "turret-hit-for-miss"),
                "{headers:?}: a field was stored: {:?}",
                v.headers()
            );
        }
        assert!(variants.len() <= 1, "{headers:?}");
    }
}

#[tokio::test]
async fn responses_to_authorization_requests_are_shared_only_when_allowed() {
    let clock = FakeClock::new(T0);
    // Not allowed: every eager configuration, and each caching field that is not one of
    // public / s-maxage / must-revalidate.
    for cc in [
        None,
        Some("max-age=600"),
        Some("max-age=600, proxy-revalidate"),
        Some("max-age=600, stale-while-revalidate=60"),
    ] {
        for (config, layer) in eager_layers(&clock) {
            let respond: Origin = Arc::new(move |req, n| {
                let who = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .map_or("anonymous", |v| v.to_str().unwrap())
                    .to_owned();
                let mut res = Response::new(Full::from(format!("{who} call {n}")));
                if let Some(cc) = cc {
                    res.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
                }
                res
            });
            let (svc, calls) = cached(layer, respond);
            let (_, alice) =
                send(&svc, get("/account", &[("authorization", "Bearer alice")])).await;
            assert!(alice.starts_with("Bearer alice"));
            for (who, auth) in [
                ("bob", Some("Bearer bob")),
                ("alice again", Some("Bearer alice")),
                ("anonymous", None),
            ] {
                let headers: Vec<(&str, &str)> =
                    auth.map(|a| ("authorization", a)).into_iter().collect();
                let (res, body) = send(&svc, get("/account", &headers)).await;
                assert_eq!(res.headers()["x-cache"], "MISS", "{config} {cc:?}: {who}");
                assert!(
                    !body.starts_with("Bearer alice") || who == "alice again",
                    "{config} {cc:?}: {who} got {body}"
                );
            }
            assert_eq!(calls.load(Ordering::SeqCst), 4, "{config} {cc:?}");
        }
    }
    // Allowed (RFC 9111 §3.5): the response says it may be shared.
    for cc in [
        "public, max-age=600",
        "s-maxage=600",
        "max-age=600, must-revalidate",
    ] {
        let (svc, calls) = cached(
            ResponseCacheLayer::new().clock(clock.clone()),
            Arc::new(move |_req, n| {
                let mut res = Response::new(Full::from(format!("shared {n}")));
                res.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
                res
            }),
        );
        send(
            &svc,
            get("/catalogue", &[("authorization", "Bearer alice")]),
        )
        .await;
        let (res, body) = send(&svc, get("/catalogue", &[("authorization", "Bearer bob")])).await;
        assert_eq!(res.headers()["x-cache"], "HIT", "{cc}");
        assert_eq!(body, "shared 1");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn set_cookie_is_never_replayed_to_another_client() {
    let clock = FakeClock::new(T0);
    for (config, layer) in eager_layers(&clock) {
        let (svc, calls) = cached(
            layer,
            Arc::new(|_req, n| {
                let mut res = Response::new(Full::from(format!("call {n}")));
                res.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=600"),
                );
                res.headers_mut().append(
                    header::SET_COOKIE,
                    HeaderValue::from_str(&format!("sid=session-{n}; HttpOnly")).unwrap(),
                );
                res.headers_mut()
                    .append(header::SET_COOKIE, HeaderValue::from_static("theme=dark"));
                res
            }),
        );
        let (first, _) = send(&svc, get("/home", &[])).await;
        assert_eq!(
            first.headers().get_all(header::SET_COOKIE).iter().count(),
            2,
            "{config}: the client that caused the call gets its cookies"
        );
        for _ in 0..3 {
            let (res, _) = send(&svc, get("/home", &[])).await;
            assert!(
                !res.headers().contains_key(header::SET_COOKIE)
                    || res.headers()["x-cache"] == "MISS",
                "{config}: a stored cookie was replayed"
            );
            if res.headers()["x-cache"] == "MISS" {
                // Its own fresh cookie, never another client's.
                let cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
                assert_ne!(cookie, "sid=session-1; HttpOnly", "{config}");
            }
        }
        let stored = calls.load(Ordering::SeqCst) == 1;
        assert_eq!(
            stored,
            config == "set-cookie stored without",
            "{config}: stored only when configured to store without the field"
        );
    }
}

/// A 304 carrying `Set-Cookie` refreshes the stored response (default configuration),
/// which still must not hand that cookie to the next client.
#[tokio::test]
async fn a_revalidation_does_not_make_a_cookie_replayable() {
    let clock = FakeClock::new(T0);
    for set_cookie in [SetCookie::Bypass, SetCookie::StoreWithout] {
        let (svc, calls) = cached(
            ResponseCacheLayer::new()
                .clock(clock.clone())
                .set_cookie(set_cookie),
            Arc::new(|req, n| {
                let revalidating = req.headers().contains_key(header::IF_NONE_MATCH);
                let mut res = Response::new(Full::from(if revalidating {
                    String::new()
                } else {
                    format!("call {n}")
                }));
                if revalidating {
                    *res.status_mut() = StatusCode::NOT_MODIFIED;
                    res.headers_mut().insert(
                        header::SET_COOKIE,
                        HeaderValue::from_static("sid=only-for-the-revalidating-client"),
                    );
                }
                res.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=10"),
                );
                res.headers_mut()
                    .insert(header::ETAG, HeaderValue::from_static("\"v1\""));
                res
            }),
        );
        send(&svc, get("/page", &[])).await;
        clock.advance(Duration::from_secs(11));
        send(&svc, get("/page", &[])).await; // revalidated: 304 with Set-Cookie
        for _ in 0..2 {
            let (res, _) = send(&svc, get("/page", &[])).await;
            if res.headers()["x-cache"] != "MISS" {
                assert!(
                    !res.headers().contains_key(header::SET_COOKIE),
                    "{set_cookie:?}: the cookie of the revalidating client was replayed"
                );
            }
        }
        assert!(calls.load(Ordering::SeqCst) >= 2);
        clock.advance(Duration::from_secs(3600));
    }
}

#[tokio::test]
async fn an_unkeyed_field_cannot_poison_the_entry_once_it_is_keyed_or_varied() {
    let clock = FakeClock::new(T0);
    // A handler that builds absolute links from X-Forwarded-Host (the classic poisoning).
    let links = |vary: bool| -> Origin {
        Arc::new(move |req: &Request<()>, _n| {
            let host = req
                .headers()
                .get("x-forwarded-host")
                .or(req.headers().get(header::HOST))
                .map_or("", |v| v.to_str().unwrap())
                .to_owned();
            let mut res = Response::new(Full::from(format!(
                "<script src=\"https://{host}/app.js\">"
            )));
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=600"),
            );
            if vary {
                res.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("X-Forwarded-Host"));
            }
            res
        })
    };
    let keyed = ResponseCacheLayer::new().clock(clock.clone()).route(
        "/*",
        Policy::new("pages").key_headers([http::HeaderName::from_static("x-forwarded-host")]),
    );
    for (how, svc) in [
        ("Policy::key_headers", cached(keyed, links(false)).0),
        (
            "Vary",
            cached(ResponseCacheLayer::new().clock(clock.clone()), links(true)).0,
        ),
    ] {
        let (_, poisoned) = send(&svc, get("/", &[("x-forwarded-host", "evil.example")])).await;
        assert!(poisoned.contains("evil.example"));
        for _ in 0..2 {
            let (_, body) = send(&svc, get("/", &[])).await;
            assert_eq!(
                body, "<script src=\"https://shop.example/app.js\">",
                "{how}: the victim gets its own page"
            );
        }
    }

    // The host is always in the default key: another Host is another entry.
    let (svc, _) = cached(ResponseCacheLayer::new().clock(clock.clone()), links(false));
    let evil = Request::get("/")
        .header(header::HOST, "evil.example")
        .body(())
        .unwrap();
    send(&svc, evil).await;
    let (res, body) = send(&svc, get("/", &[])).await;
    assert_eq!(res.headers()["x-cache"], "MISS");
    assert!(body.contains("shop.example"));
}

#[tokio::test]
async fn a_personal_page_under_a_static_looking_path_is_stored_only_if_its_handler_allows() {
    // Cache deception: `/account.css` answered by the account page. The cache decides by the
    // response's fields, never by the extension.
    let clock = FakeClock::new(T0);
    for (config, layer) in eager_layers(&clock) {
        let respond: Origin = Arc::new(|req, _n| {
            let who = req
                .headers()
                .get(header::COOKIE)
                .map_or("nobody", |v| v.to_str().unwrap())
                .to_owned();
            let mut res = Response::new(Full::from(format!("account of {who}")));
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            );
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css"));
            res
        });
        let (svc, _) = cached(layer, respond);
        for path in [
            "/account.css",
            "/account/x.js",
            "/account;.png",
            "/account%2f.css",
        ] {
            send(&svc, get(path, &[("cookie", "sid=victim")])).await;
            let (res, body) = send(&svc, get(path, &[])).await;
            assert_eq!(res.headers()["x-cache"], "MISS", "{config} {path}");
            assert_eq!(body, "account of nobody", "{config} {path}");
        }
    }
}

#[tokio::test]
async fn other_statuses_that_must_not_be_shared_are_not() {
    // 429 (RFC 6585) and 206 partial responses, even with explicit freshness and a TTL.
    let clock = FakeClock::new(T0);
    for status in [429u16, 206] {
        let (svc, calls) = cached(
            ResponseCacheLayer::new()
                .clock(clock.clone())
                .default_ttl(Duration::from_secs(300)),
            Arc::new(move |_req, n| {
                let mut res = Response::new(Full::from(format!("call {n}")));
                *res.status_mut() = StatusCode::from_u16(status).unwrap();
                res.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=600"),
                );
                res
            }),
        );
        for _ in 0..2 {
            let (res, _) = send(&svc, get("/limited", &[])).await;
            assert_eq!(res.status().as_u16(), status);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{status}");
    }
}

/// Any method other than GET/HEAD goes to the origin, and a request cannot turn itself into
/// a cached GET by a method-override field.
#[tokio::test]
async fn method_override_fields_do_not_reach_the_cache_as_a_get() {
    let clock = FakeClock::new(T0);
    let (svc, calls) = cached(
        ResponseCacheLayer::new().clock(clock.clone()),
        Arc::new(|req, n| {
            let mut res = Response::new(Full::from(format!("{} call {n}", req.method())));
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=600"),
            );
            res
        }),
    );
    let post = Request::post("/items")
        .header(header::HOST, "shop.example")
        .header("x-http-method-override", "GET")
        .body(())
        .unwrap();
    send(&svc, post).await;
    let (res, body) = send(&svc, get("/items", &[])).await;
    assert_eq!(res.headers()["x-cache"], "MISS");
    assert_eq!(body, "GET call 2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Keep `Service` in scope for readers: the layer is a plain tower service.
    fn _is_service<S: Service<Request<()>>>(_: &S) {}
    _is_service(&svc);
}

/// A `200` for 10 minutes naming the product list the handler reads from the query, parsed
/// the way axum's `Query` parses it (`form_urlencoded`: `%XX` and `+` decoded, the first of
/// repeated names kept).
fn product_list() -> Origin {
    Arc::new(|req: &Request<()>, _n| {
        let query = req.uri().query().unwrap_or("");
        let read = |name: &str| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.into_owned())
        };
        let mut res = Response::new(Full::from(format!(
            "skip={:?} limit={:?} category={:?}",
            read("skip"),
            read("limit"),
            read("category")
        )));
        res.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=600"),
        );
        res
    })
}

#[tokio::test]
async fn escaped_parameter_names_cannot_poison_a_query_policy() {
    let products = || {
        ResponseCacheLayer::new().route(
            "/products",
            Policy::new("products")
                .ttl(Duration::from_secs(300))
                .query(QueryKey::Only(vec![
                    "skip".into(),
                    "limit".into(),
                    "category".into(),
                ])),
        )
    };
    let cases = [
        ("/products?skip=11&categ%6fry=9", "/products?skip=11"),
        ("/products?skip=11&categ%6Fry=9", "/products?skip=11"),
        ("/products?skip=11&%63ategory=3", "/products?skip=11"),
        ("/products?skip=11&%63%61tegory=3", "/products?skip=11"),
        ("/products?skip=11&lim%69t=1", "/products?skip=11"),
        ("/products?skip=11&LIM%49T=1&lim%49t=1", "/products?skip=11"),
        ("/products?%73kip=99", "/products"),
        (
            "/products?skip=11&category=%39",
            "/products?skip=11&category=3",
        ),
        (
            "/products?category=3&category=9",
            "/products?category=9&category=3",
        ),
        (
            "/products?categ%6fry=3&category=9",
            "/products?category=9&categ%6fry=3",
        ),
        ("/products?category=9+", "/products?category=9"),
        (
            "/products?category=9%26skip=1",
            "/products?category=9&skip=1",
        ),
    ];
    for (poison, victim) in cases {
        let (svc, _) = cached(products(), product_list());
        let (_, expected) = send(
            &cached(ResponseCacheLayer::new(), product_list()).0,
            get(victim, &[]),
        )
        .await;
        send(&svc, get(poison, &[])).await;
        for _ in 0..2 {
            let (_, body) = send(&svc, get(victim, &[])).await;
            assert_eq!(body, expected, "{poison} then {victim}");
        }
    }
    // Spellings of the same parameters share the entry.
    let (svc, calls) = cached(products(), product_list());
    for spelling in [
        "/products?skip=11&category=3",
        "/products?category=3&skip=11&utm_source=x",
        "/products?%73kip=1%31&&categ%6Fry=%33",
    ] {
        send(&svc, get(spelling, &[])).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_host_field_cannot_poison_another_host_or_path() {
    // A handler that names the host and path it was asked for.
    let echo: Origin = Arc::new(|req: &Request<()>, _n| {
        let host = req.headers().get(header::HOST).map_or(String::new(), |h| {
            String::from_utf8_lossy(h.as_bytes()).into_owned()
        });
        let mut res = Response::new(Full::from(format!("{host} {}", req.uri())));
        res.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=600"),
        );
        res
    });
    let with_host = |uri: &str, host: &[u8]| {
        Request::get(uri)
            .header(header::HOST, HeaderValue::from_bytes(host).unwrap())
            .body(())
            .unwrap()
    };
    let cases: [(Request<()>, Request<()>); 4] = [
        // A `Host` that is not UTF-8, another one.
        (with_host("/", b"\xffevil"), with_host("/", b"\xfeshop")),
        // A `Host` holding a path or a query.
        (
            with_host("/", b"shop.example/admin"),
            with_host("/admin/", b"shop.example"),
        ),
        (
            with_host("/", b"shop.example/p?a=1"),
            with_host("/p?a=1/", b"shop.example"),
        ),
        // An absolute target with a `Host` disagreeing with it (RFC 9112 §3.2.2: the origin
        // should ignore the field; a handler reading it must not poison the target).
        (
            with_host("http://shop.example/", b"evil.example"),
            with_host("/", b"shop.example"),
        ),
    ];
    for (poison, victim) in cases {
        let (svc, _) = cached(ResponseCacheLayer::new(), echo.clone());
        let expected = (echo)(&victim, 1);
        let expected = expected.into_body().collect().await.unwrap().to_bytes();
        let what = format!("{:?} then {:?}", poison.headers(), victim.headers());
        send(&svc, poison).await;
        let (_, body) = send(&svc, victim).await;
        assert_eq!(body.as_bytes(), expected, "{what}");
    }
}

#[tokio::test]
async fn a_keyed_or_varied_field_spelled_otherwise_selects_its_own_variant_rfc9111_4_1() {
    // A handler that reads the field's first line as is (`headers.get`).
    let tenant = |vary: bool| -> Origin {
        Arc::new(move |req: &Request<()>, _n| {
            let tenant = req.headers().get("x-tenant").map_or(String::new(), |v| {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            });
            let mut res = Response::new(Full::from(format!("tenant {tenant:?}")));
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=600"),
            );
            if vary {
                res.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("x-tenant"));
            }
            res
        })
    };
    let with_lines = |lines: &[&str]| {
        let mut req = get("/", &[]);
        for line in lines {
            req.headers_mut()
                .append("x-tenant", HeaderValue::from_str(line).unwrap());
        }
        req
    };
    let attacks: [&[&str]; 5] = [
        &[",victim"],
        &["", "victim"],
        &["evil", "victim"],
        &["victim", "evil"],
        &["victim,"],
    ];
    for attack in attacks {
        let keyed = ResponseCacheLayer::new().route(
            "/*",
            Policy::new("pages").key_headers([http::HeaderName::from_static("x-tenant")]),
        );
        for (how, layer, vary) in [
            ("Policy::key_headers", keyed, false),
            ("Vary", ResponseCacheLayer::new(), true),
        ] {
            let (svc, _) = cached(layer, tenant(vary));
            send(&svc, with_lines(attack)).await;
            let (_, body) = send(&svc, with_lines(&["victim"])).await;
            assert_eq!(body, "tenant \"victim\"", "{how}: {attack:?} then victim");
        }
    }
}
