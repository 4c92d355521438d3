//! The rate limiter's security properties (SECURITY.md): a client cannot choose its own key
//! through forged forwarding headers, and cannot reset or spend another client's quota —
//! in memory and on a real Redis.
// These tests run on a real Redis (some in memory as well): they need the `redis` feature.
#![cfg(feature = "redis")]

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt, service_fn};
use turret_ratelimit::{
    ClientIp, ForwardingHeader, HeaderKey, Quota, RateLimitLayer, RedisBackend,
};
use turret_redis::{Redis, RedisConfig};
use turret_testkit::RedisServer;

fn ok(_req: Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>> {
    std::future::ready(Ok(Response::new(String::from("ok"))))
}

type OkFn = fn(Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>>;

fn ok_service() -> tower::util::ServiceFn<OkFn> {
    service_fn(ok as OkFn)
}

async fn redis(url: &str) -> Redis {
    Redis::connect(
        RedisConfig::from_url(url)
            .unwrap()
            .command_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap()
}

fn request(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut req = Request::get("/orders").body(()).unwrap();
    req.extensions_mut()
        .insert(format!("{peer}:4000").parse::<SocketAddr>().unwrap());
    for (name, value) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    req
}

/// Status and `X-RateLimit-Remaining` of one request.
async fn send<S, B>(svc: &S, req: Request<()>) -> (StatusCode, Option<String>)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    let remaining = res
        .headers()
        .get("x-ratelimit-remaining")
        .map(|v| v.to_str().unwrap().to_owned());
    (res.status(), remaining)
}

/// Every header a client might try to be someone else with.
fn forged(ip: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-forwarded-for", ip.to_owned()),
        ("forwarded", format!("for={ip}")),
        ("forwarded", format!("for=\"{ip}:443\";proto=https")),
        ("x-real-ip", ip.to_owned()),
        ("true-client-ip", ip.to_owned()),
        ("cf-connecting-ip", ip.to_owned()),
        ("x-client-ip", ip.to_owned()),
    ]
}

#[tokio::test]
async fn the_peer_address_ignores_every_forwarding_header() {
    let svc = RateLimitLayer::new(Quota::per_minute(2)).layer(ok_service());
    let attacker = "198.51.100.66";
    for _ in 0..2 {
        assert_eq!(send(&svc, request(attacker, &[])).await.0, StatusCode::OK);
    }
    for i in 0..50 {
        let fresh = format!("203.0.113.{i}");
        for (name, value) in forged(&fresh) {
            let (status, _) = send(&svc, request(attacker, &[(name, &value)])).await;
            assert_eq!(
                status,
                StatusCode::TOO_MANY_REQUESTS,
                "{name}: {value} chose a fresh key"
            );
        }
    }
    // And the addresses it claimed were never charged.
    assert_eq!(
        send(&svc, request("203.0.113.7", &[])).await,
        (StatusCode::OK, Some("1".into()))
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_forged_hops_change_nothing() {
    let svc = RateLimitLayer::new(Quota::per_minute(2))
        .key(ClientIp::trusting(["10.0.0.0/8"]).unwrap())
        .layer(ok_service());
    let proxy = "10.0.0.2";
    let client = "203.0.113.7";
    // What the proxy appends: the real client, the hop it received the request from.
    for _ in 0..2 {
        let (status, _) = send(&svc, request(proxy, &[("x-forwarded-for", client)])).await;
        assert_eq!(status, StatusCode::OK);
    }
    let chains = [
        format!("1.1.1.1, {client}"),
        format!("9.9.9.9, 8.8.8.8, {client}"),
        format!("10.0.0.5, {client}"), // a forged trusted hop on the left
        format!("{client}, 10.0.0.3"), // a second trusted proxy on the right is skipped
        format!("unknown, garbage, {client}"),
    ];
    for chain in &chains {
        let (status, _) = send(&svc, request(proxy, &[("x-forwarded-for", chain)])).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{chain}");
    }
    // The client wrote its own header; the proxy added a second line: still the client.
    let mut req = request(proxy, &[("x-forwarded-for", "1.2.3.4")]);
    req.headers_mut()
        .append("x-forwarded-for", client.parse().unwrap());
    assert_eq!(send(&svc, req).await.0, StatusCode::TOO_MANY_REQUESTS);
    // A `Forwarded` the proxy does not write is the client's: it never picks the key.
    let mut req = request(proxy, &[("x-forwarded-for", client)]);
    req.headers_mut()
        .insert("forwarded", "for=9.9.9.9".parse().unwrap());
    assert_eq!(send(&svc, req).await.0, StatusCode::TOO_MANY_REQUESTS);
    // RFC 7239 chains, behind proxies configured to append `Forwarded`.
    let rfc = RateLimitLayer::new(Quota::per_minute(2))
        .key(
            ClientIp::trusting(["10.0.0.0/8"])
                .unwrap()
                .header(ForwardingHeader::Forwarded),
        )
        .layer(ok_service());
    for _ in 0..2 {
        let (status, _) = send(
            &rfc,
            request(proxy, &[("forwarded", &format!("for={client}"))]),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    for chain in [
        format!("for=1.1.1.1, for={client}"),
        format!("for=\"[2001:db8::1]\", for={client};proto=https"),
    ] {
        let (status, _) = send(&rfc, request(proxy, &[("forwarded", &chain)])).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{chain}");
    }
    // A client that reaches the service directly cannot claim to be behind the proxy.
    let direct = "198.51.100.9";
    for _ in 0..2 {
        let (status, _) = send(&svc, request(direct, &[("x-forwarded-for", "10.0.0.2")])).await;
        assert_eq!(status, StatusCode::OK);
    }
    for i in 0..20 {
        let (status, _) = send(
            &svc,
            request(direct, &[("x-forwarded-for", &format!("192.0.2.{i}"))]),
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    }
}

/// Client A spends two of its three requests; client B then does everything it can
/// (spends its own quota many times over, claims to be A, floods distinct API keys);
/// A still has exactly one request left.
async fn check_isolation<S, B>(svc: S)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone,
{
    let (a, b) = ("198.51.100.1", "198.51.100.2");
    assert_eq!(
        send(&svc, request(a, &[])).await,
        (StatusCode::OK, Some("2".into()))
    );
    assert_eq!(
        send(&svc, request(a, &[])).await,
        (StatusCode::OK, Some("1".into()))
    );
    let mut refused = 0;
    for i in 0..60 {
        let mut headers: Vec<(&str, String)> = forged(a);
        headers.push(("x-api-key", format!("key-{i}")));
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        if send(&svc, request(b, &headers)).await.0 == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    assert_eq!(refused, 57, "B has its own quota of 3");
    assert_eq!(
        send(&svc, request(a, &[])).await,
        (StatusCode::OK, Some("0".into())),
        "A's quota was neither reset nor spent by B"
    );
    assert_eq!(
        send(&svc, request(a, &[])).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn one_client_cannot_reset_or_spend_another_clients_quota_in_memory() {
    check_isolation(
        RateLimitLayer::new(Quota::per_minute(3))
            .key(ClientIp::trusting(["10.0.0.0/8"]).unwrap())
            .layer(ok_service()),
    )
    .await;
}

#[tokio::test]
async fn one_client_cannot_reset_or_spend_another_clients_quota_on_redis() {
    let server = RedisServer::start();
    let backend = RedisBackend::new(redis(&server.url()).await);
    check_isolation(
        RateLimitLayer::new(Quota::per_minute(3))
            .key(ClientIp::trusting(["10.0.0.0/8"]).unwrap())
            .backend(backend.clone())
            .layer(ok_service()),
    )
    .await;
    // B's refusals wrote nothing: its key holds what its three admissions left.
    let b_key = backend.redis_key("default", "198.51.100.2", turret_ratelimit::Algorithm::Gcra);
    let ttl: i64 = server.cmd(&["PTTL", &b_key]);
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert_eq!(keys.len(), 2, "only A's and B's keys: {keys:?}");
}

#[tokio::test]
async fn api_key_clients_are_isolated_from_each_other() {
    let server = RedisServer::start();
    let svc = RateLimitLayer::new(Quota::per_minute(2))
        .key(HeaderKey::new("x-api-key"))
        .backend(RedisBackend::new(redis(&server.url()).await))
        .layer(ok_service());
    let victim = [("x-api-key", "victim-key")];
    assert_eq!(
        send(&svc, request("192.0.2.1", &victim)).await.0,
        StatusCode::OK
    );
    // Near-misses of the victim's key are other keys: they neither spend nor reset it.
    for near in [
        "victim-key ",
        "Victim-key",
        "victim-key\t",
        "victim%2Dkey",
        "victim-key:",
        "{victim-key}",
        "default/victim-key",
    ] {
        for _ in 0..3 {
            send(&svc, request("192.0.2.2", &[("x-api-key", near)])).await;
        }
    }
    assert_eq!(
        send(&svc, request("192.0.2.1", &victim)).await,
        (StatusCode::OK, Some("0".into()))
    );
    assert_eq!(
        send(&svc, request("192.0.2.1", &victim)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}
