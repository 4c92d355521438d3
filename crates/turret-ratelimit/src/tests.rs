use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

use crate::*;

type Svc =
    tower::util::BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

fn handler()
-> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    })
}

fn stack<K, Bk, L>(layer: RateLimitLayer<K, Bk, L>) -> Svc
where
    K: KeyExtractor<String> + Clone,
    Bk: Backend + Clone,
    L: OnLimited,
{
    tower::util::BoxCloneService::new(ServiceBuilder::new().layer(layer).service(handler()))
}

fn req(method: Method, path: &str, ip: &str) -> Request<String> {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .body(String::new())
        .unwrap();
    r.extensions_mut()
        .insert(format!("{ip}:4000").parse::<SocketAddr>().unwrap());
    r
}

fn get(path: &str, ip: &str) -> Request<String> {
    req(Method::GET, path, ip)
}

async fn status(svc: &Svc, r: Request<String>) -> StatusCode {
    svc.clone().oneshot(r).await.unwrap().status()
}

#[tokio::test]
async fn requests_beyond_the_quota_get_429_with_exact_fields() {
    let clock = FakeMicrosClock::default();
    let svc = stack(
        RateLimitLayer::new(Quota::per_minute(3)).backend(MemoryBackend::with_clock(clock.clone())),
    );
    for remaining in [2, 1, 0] {
        let res = svc.clone().oneshot(get("/", "192.0.2.1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()["x-ratelimit-remaining"],
            remaining.to_string().as_str()
        );
        assert_eq!(res.headers()["ratelimit-policy"], "\"default\";q=3;w=60");
        assert!(res.headers().get("retry-after").is_none());
    }
    let res = svc.clone().oneshot(get("/", "192.0.2.1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = res.headers();
    assert_eq!(h["retry-after"], "20", "one request every 20 s");
    assert_eq!(h["ratelimit"], "\"default\";r=0;t=20");
    assert_eq!(h["x-ratelimit-limit"], "3");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(h["x-ratelimit-reset"], "20");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        Bytes::from_static(b"Too Many Requests (limit \"default\")\n")
    );

    // Another client is not affected; after 20 s one more request passes.
    assert_eq!(status(&svc, get("/", "192.0.2.2")).await, StatusCode::OK);
    clock.advance(Duration::from_secs(20));
    assert_eq!(status(&svc, get("/", "192.0.2.1")).await, StatusCode::OK);
    assert_eq!(
        status(&svc, get("/", "192.0.2.1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn quota_holds_when_the_service_is_cloned_per_request() {
    // axum clones the service for every request; the quota must not be per clone.
    let svc = stack(RateLimitLayer::new(Quota::per_minute(5)));
    let mut ok = 0;
    for _ in 0..20 {
        let mut clone = svc.clone();
        let r = clone
            .ready()
            .await
            .unwrap()
            .call(get("/", "198.51.100.9"))
            .await
            .unwrap();
        ok += usize::from(r.status() == StatusCode::OK);
    }
    assert_eq!(ok, 5);
}

#[tokio::test]
async fn exempt_paths_and_allowed_keys_are_never_limited() {
    let svc = stack(
        RateLimitLayer::new(Quota::per_minute(1))
            .exempt("/health")
            .allow_key("127.0.0.1"),
    );
    for _ in 0..5 {
        assert_eq!(
            status(&svc, get("/health", "192.0.2.1")).await,
            StatusCode::OK
        );
        assert_eq!(status(&svc, get("/", "127.0.0.1")).await, StatusCode::OK);
    }
    let res = svc
        .clone()
        .oneshot(get("/health", "192.0.2.1"))
        .await
        .unwrap();
    assert!(
        res.headers().get("ratelimit").is_none(),
        "exempt responses carry no fields"
    );
    assert_eq!(status(&svc, get("/", "192.0.2.1")).await, StatusCode::OK);
    assert_eq!(
        status(&svc, get("/", "192.0.2.1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn the_first_matching_policy_applies() {
    let svc = stack(
        RateLimitLayer::new(Quota::per_minute(100)).policy(
            Policy::new("writes", Quota::per_minute(1))
                .methods([Method::POST])
                .path_prefix("/api/"),
        ),
    );
    assert_eq!(
        status(&svc, req(Method::POST, "/api/x", "192.0.2.1")).await,
        StatusCode::OK
    );
    let res = svc
        .clone()
        .oneshot(req(Method::POST, "/api/y", "192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["ratelimit-policy"], "\"writes\";q=1;w=60");
    // GETs and other paths fall to the default policy, with its own budget.
    let res = svc
        .clone()
        .oneshot(get("/api/x", "192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["ratelimit"], "\"default\";r=99;t=1");
    assert_eq!(
        status(&svc, req(Method::POST, "/other", "192.0.2.1")).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn requests_no_policy_matches_are_not_limited() {
    let svc = stack(RateLimitLayer::policies([Policy::new(
        "api",
        Quota::per_minute(1),
    )
    .path_prefix("/api")]));
    for _ in 0..3 {
        assert_eq!(
            status(&svc, get("/static/a.css", "192.0.2.1")).await,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn weighted_requests_spend_their_cost() {
    let svc = stack(
        RateLimitLayer::new(Quota::per_minute(10)).policy(
            Policy::new("search", Quota::per_minute(10))
                .path("/search")
                .cost(|r| if r.uri.query() == Some("deep") { 6 } else { 1 }),
        ),
    );
    let res = svc
        .clone()
        .oneshot(get("/search?deep", "192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(res.headers()["x-ratelimit-remaining"], "4");
    assert_eq!(
        status(&svc, get("/search?deep", "192.0.2.1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(&svc, get("/search", "192.0.2.1")).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn missing_key_is_a_500_by_default_or_a_shared_key() {
    let svc = stack(RateLimitLayer::new(Quota::per_minute(1)));
    let no_peer = || Request::new(String::new());
    assert_eq!(
        status(&svc, no_peer()).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let res = svc.clone().oneshot(no_peer()).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], crate::service::MISSING_KEY_BODY);
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("rate limiter found no key"),
        "the 500 says which layer answered"
    );

    let svc = stack(
        RateLimitLayer::new(Quota::per_minute(1)).on_missing_key(MissingKeyAction::SharedKey),
    );
    assert_eq!(status(&svc, no_peer()).await, StatusCode::OK);
    assert_eq!(status(&svc, no_peer()).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_grpc_request_without_a_key_gets_a_grpc_internal_status() {
    let svc = stack(RateLimitLayer::new(Quota::per_minute(1)));
    let mut r = Request::new(String::new());
    r.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    let res = svc.oneshot(r).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "trailers-only gRPC answer");
    assert_eq!(res.headers()["grpc-status"], "13");
}

#[tokio::test]
async fn shadow_policy_never_refuses_but_reports() {
    let svc = stack(RateLimitLayer::policies([Policy::new(
        "dark",
        Quota::per_minute(1),
    )
    .shadow(true)]));
    assert_eq!(status(&svc, get("/", "192.0.2.1")).await, StatusCode::OK);
    let res = svc.clone().oneshot(get("/", "192.0.2.1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    assert!(res.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn grpc_refusal_is_trailers_only_resource_exhausted() {
    let svc = stack(RateLimitLayer::new(Quota::per_minute(1)));
    let grpc = || {
        let mut r = req(Method::POST, "/catalog.Catalog/Get", "192.0.2.1");
        r.headers_mut()
            .insert("content-type", "application/grpc+proto".parse().unwrap());
        r
    };
    assert_eq!(status(&svc, grpc()).await, StatusCode::OK);
    let res = svc.clone().oneshot(grpc()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "8");
    assert_eq!(res.headers()["content-type"], "application/grpc");
    // The retry delay travels as a google.rpc.Status (decoded in the gRPC example's tests),
    // base64 without padding as gRPC emits `-bin` metadata.
    let details = res.headers()["grpc-status-details-bin"].to_str().unwrap();
    assert!(!details.is_empty() && !details.contains('='), "{details}");
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
}

#[tokio::test]
async fn on_limited_hook_and_header_modes() {
    let layer = RateLimitLayer::new(Quota::per_minute(1))
        .header_mode(HeaderMode::OnRefusal)
        .on_limited(|l: &Limited<'_>| {
            let mut r = Response::new(Bytes::from(format!("slow down, {}", l.key)));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        });
    let svc = stack(layer);
    let res = svc.clone().oneshot(get("/", "192.0.2.1")).await.unwrap();
    assert!(res.headers().get("ratelimit").is_none());
    let res = svc.clone().oneshot(get("/", "192.0.2.1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().get("ratelimit").is_some());
    assert_eq!(res.headers()["retry-after"], "60");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from_static(b"slow down, 192.0.2.1"));
}

#[tokio::test]
async fn forged_forwarding_headers_do_not_change_the_key() {
    let svc = stack(
        RateLimitLayer::new(Quota::per_minute(1)).key(ClientIp::trusting(["10.0.0.0/8"]).unwrap()),
    );
    assert_eq!(status(&svc, get("/", "198.51.100.1")).await, StatusCode::OK);
    for forged in ["1.1.1.1", "2.2.2.2", "1.1.1.1, 3.3.3.3"] {
        let mut r = get("/", "198.51.100.1");
        r.headers_mut()
            .insert("x-forwarded-for", forged.parse().unwrap());
        assert_eq!(
            status(&svc, r).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{forged}"
        );
    }
    // Through the trusted proxy, each client has its own budget.
    for client in ["203.0.113.1", "203.0.113.2"] {
        let mut r = get("/", "10.0.0.5");
        r.headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        assert_eq!(status(&svc, r).await, StatusCode::OK, "{client}");
    }
}

mod concurrency {
    use std::sync::Arc;

    use tokio::sync::Notify;

    use super::*;

    /// A handler that waits until told, then answers with a body.
    fn gated(
        gate: Arc<Notify>,
    ) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
    + Clone {
        service_fn(move |_req: Request<String>| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Ok::<_, Infallible>(Response::new(String::from("body")))
            }
        })
    }

    #[tokio::test]
    async fn slot_is_held_until_the_body_ends_or_is_dropped() {
        let backend = MemoryConcurrency::new();
        let svc = ServiceBuilder::new()
            .layer(ConcurrencyLimitLayer::new("c", 1).backend(backend.clone()))
            .service(handler());
        let res = svc.clone().oneshot(get("/", "192.0.2.1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(backend.len(), 1, "the unread body holds the slot");
        let refused = svc.clone().oneshot(get("/", "192.0.2.1")).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            refused.headers()["ratelimit-policy"],
            "\"c\";q=1;qu=\"concurrent-requests\""
        );
        assert_eq!(refused.headers()["ratelimit"], "\"c\";r=0;t=1");
        assert_eq!(refused.headers()["retry-after"], "1");
        // Another key is not affected.
        assert_eq!(
            svc.clone()
                .oneshot(get("/", "192.0.2.2"))
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );

        // 192.0.2.2's response was dropped at once: only 192.0.2.1 holds a slot.
        assert_eq!(backend.len(), 1);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, Bytes::from_static(b"ok"));
        assert!(
            backend.is_empty(),
            "reading the body to its end gave the slot back"
        );
        let again = svc.clone().oneshot(get("/", "192.0.2.1")).await.unwrap();
        assert_eq!(again.status(), StatusCode::OK);
        assert_eq!(backend.len(), 1);
        drop(again);
        assert!(backend.is_empty(), "dropping the body gave the slot back");
    }

    #[tokio::test]
    async fn cancelled_request_gives_its_slot_back() {
        let backend = MemoryConcurrency::new();
        let gate = Arc::new(Notify::new());
        let svc = ServiceBuilder::new()
            .layer(ConcurrencyLimitLayer::new("c", 1).backend(backend.clone()))
            .service(gated(gate.clone()));
        let pending = tokio::spawn(svc.clone().oneshot(get("/", "192.0.2.1")));
        tokio::task::yield_now().await;
        while backend.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            svc.clone()
                .oneshot(get("/", "192.0.2.1"))
                .await
                .unwrap()
                .status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        pending.abort();
        let _ = pending.await;
        assert!(backend.is_empty(), "the aborted request released its slot");
        let next = tokio::spawn(svc.clone().oneshot(get("/", "192.0.2.1")));
        while backend.is_empty() {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(next.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}

#[test]
fn a_missing_key_is_reported_on_stderr_once_when_no_subscriber_is_set() {
    use std::sync::atomic::AtomicBool;

    use crate::{MissingKey, service::report_missing_key};
    // No test of this crate sets a global subscriber, so the report must go to stderr.
    assert!(!tracing::dispatcher::has_been_set());
    let reported = AtomicBool::new(false);
    let missing = MissingKey::new("header x-api-key");
    assert!(
        report_missing_key(&reported, "api", &missing),
        "first time: written"
    );
    assert!(
        !report_missing_key(&reported, "api", &missing),
        "then: once per process"
    );
}

#[test]
fn a_missing_peer_address_names_the_fix_for_this_build() {
    use crate::{ClientIp, KeyExtractor, PeerIp};
    let req = Request::new(());
    for what in [
        PeerIp::new().extract(&req).unwrap_err().to_string(),
        <ClientIp as KeyExtractor<()>>::extract(&ClientIp::trusting(["10.0.0.0/8"]).unwrap(), &req)
            .unwrap_err()
            .to_string(),
    ] {
        assert!(
            what.contains("into_make_service_with_connect_info::<SocketAddr>()"),
            "{what}"
        );
        assert!(what.contains("SocketAddr as a request extension"), "{what}");
        if cfg!(feature = "axum") {
            assert!(!what.contains("turn on the `axum` feature"), "{what}");
        } else {
            assert!(
                what.contains("turn on the `axum` feature of `turret`"),
                "{what}"
            );
        }
    }
}
