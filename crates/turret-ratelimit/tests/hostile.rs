//! Hostile keys and oversized fields through the whole layer: header values and forwarding
//! chains with `{`, `}`, `:`, `*`, tabs, obs-text and 64 KiB lengths never leave the
//! rate limiter's namespace or hash slot in Redis, long keys are hashed, distinct keys keep
//! distinct quotas, and every request gets a normal answer.
// These tests run on a real Redis (some in memory as well): they need the `redis` feature.
#![cfg(feature = "redis")]

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use http::{HeaderValue, Request, Response, StatusCode};
use proptest::prelude::*;
use tower::{Layer, ServiceExt, service_fn};
use turret_ratelimit::{
    ClientIp, ConcurrencyLimitLayer, HeaderKey, Quota, RateLimitLayer, RedisBackend,
    RedisConcurrency,
};
use turret_redis::{Redis, RedisConfig};
use turret_testkit::RedisServer;

async fn redis(url: &str) -> Redis {
    Redis::connect(
        RedisConfig::from_url(url)
            .unwrap()
            .command_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap()
}

/// A request from `peer` with the given raw header values.
fn request(peer: &str, headers: &[(&str, &[u8])]) -> Request<()> {
    let mut req = Request::get("/items").body(()).unwrap();
    req.extensions_mut()
        .insert(peer.parse::<SocketAddr>().unwrap());
    for (name, value) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    req
}

/// The inner service: always `200 ok`.
fn ok(_req: Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>> {
    std::future::ready(Ok(Response::new(String::from("ok"))))
}

type OkFn = fn(Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>>;

fn ok_service() -> tower::util::ServiceFn<OkFn> {
    service_fn(ok as OkFn)
}

/// The hash tag of a key as Redis Cluster reads it: between the first `{` and the first
/// `}` after it.
fn slot_tag(key: &str) -> &str {
    let open = key.find('{').expect("a hash tag");
    let close = key[open + 1..].find('}').expect("a closed hash tag") + open + 1;
    &key[open + 1..close]
}

/// Every key is `turret:{kind}:{…}…` with exactly one hash tag, printable ASCII only, and
/// short whatever the input's length.
fn assert_contained(keys: &[String], kind: &str) {
    for key in keys {
        assert!(key.starts_with(&format!("turret:{kind}:{{")), "{key}");
        assert_eq!(key.matches('{').count(), 1, "one hash tag: {key}");
        assert_eq!(key.matches('}').count(), 1, "one hash tag: {key}");
        assert!(
            key.bytes().all(|b| b.is_ascii_graphic()),
            "printable ASCII only: {key:?}"
        );
        assert!(!key.contains(['*', '?', '[', ']']), "no glob bytes: {key}");
        assert!(
            key.len() < 200,
            "long parts are hashed: {} bytes",
            key.len()
        );
        let tag = slot_tag(key);
        assert!(!tag.is_empty() && !tag.contains(':'), "{key}");
    }
}

/// Values a client may put in an API-key header (every one a valid `HeaderValue`), each
/// distinct after the layer's UTF-8 reading.
fn hostile_values() -> Vec<Vec<u8>> {
    vec![
        b"{evil}".to_vec(),
        b"}{".to_vec(),
        b"a:b:*".to_vec(),
        b"*".to_vec(),
        b"?[a-z]".to_vec(),
        b"tab\there".to_vec(),
        b"%7B".to_vec(),                               // looks like an escaped `{`
        b"%".to_vec(),                                 // looks like the escaped empty part
        b"#0123456789abcdef0123456789abcdef".to_vec(), // looks like a hashed part
        b"default/x".to_vec(),                         // looks like policy/key
        b"caf\xc3\xa9 \xe2\x9c\x93".to_vec(),          // UTF-8
        b"\x80 obs-text".to_vec(),
        vec![b'k'; 64 * 1024],
        vec![b'{'; 64 * 1024],
        [vec![b'k'; 64 * 1024 - 1], b"2".to_vec()].concat(),
    ]
}

#[tokio::test]
async fn hostile_api_keys_stay_in_the_namespace_and_slot_with_their_own_quota() {
    let server = RedisServer::start();
    let svc = RateLimitLayer::new(Quota::per_minute(2))
        .key(HeaderKey::new("x-api-key"))
        .backend(RedisBackend::new(redis(&server.url()).await))
        .layer(ok_service());
    let values = hostile_values();
    for value in &values {
        let shown = String::from_utf8_lossy(&value[..value.len().min(24)]).into_owned();
        for expected in [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            let res = svc
                .clone()
                .oneshot(request("203.0.113.1:1", &[("x-api-key", value)]))
                .await
                .unwrap();
            assert_eq!(res.status(), expected, "key {shown:?}: its own quota of 2");
        }
    }
    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert_eq!(keys.len(), values.len(), "one Redis key per client key");
    assert_contained(&keys, "rl");
    // The two 64 KiB keys that differ in their last byte are hashed apart.
    let hashed: Vec<&String> = keys.iter().filter(|k| k.contains("{#")).collect();
    assert_eq!(hashed.len(), 3, "{hashed:?}");
}

#[tokio::test]
async fn hostile_forwarding_chains_key_by_an_address_or_the_proxy_never_by_the_text() {
    let server = RedisServer::start();
    let svc = RateLimitLayer::new(Quota::per_minute(1000))
        .key(ClientIp::trusting(["127.0.0.1/32"]).unwrap())
        .backend(RedisBackend::new(redis(&server.url()).await))
        .layer(ok_service());
    let long_chain = "198.51.100.7, ".repeat(64 * 1024 / 14);
    let long_garbage = "{:*}".repeat(16 * 1024);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("x-forwarded-for", b"{evil}".to_vec()),
        ("x-forwarded-for", b"203.0.113.9, }{:*".to_vec()),
        ("x-forwarded-for", b"}{:*, 203.0.113.10".to_vec()),
        ("x-forwarded-for", b"\t*\t, \x80\xff".to_vec()),
        ("x-forwarded-for", long_chain.into_bytes()),
        ("x-forwarded-for", long_garbage.into_bytes()),
        (
            "forwarded",
            b"for=\"[2001:db8::1]:80\";proto=https".to_vec(),
        ),
        ("forwarded", b"for=\"_hidden{x}\", for=unknown".to_vec()),
        ("forwarded", b"for=\"203.0.113.11\\\"}\"".to_vec()),
        (
            "forwarded",
            [b"for=".to_vec(), vec![b'{'; 64 * 1024 - 8]].concat(),
        ),
    ];
    for (name, value) in &cases {
        let res = svc
            .clone()
            .oneshot(request("127.0.0.1:9", &[(name, value)]))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert_contained(&keys, "rl");
    for key in &keys {
        let client = slot_tag(key)
            .strip_prefix("default/")
            .unwrap_or_else(|| panic!("{key}"));
        let unescaped = client.replace("%3A", ":");
        assert!(
            unescaped.parse::<std::net::IpAddr>().is_ok(),
            "the key of an address, never of the header's text: {key}"
        );
    }
    assert!(
        keys.iter().any(|k| k.contains("{default/127.0.0.1}")),
        "a malformed chain stops at the trusted proxy: {keys:?}"
    );
}

#[tokio::test]
async fn hostile_concurrency_keys_stay_in_the_namespace_and_slot() {
    let server = RedisServer::start();
    let backend = RedisConcurrency::new(redis(&server.url()).await);
    let mut keys = Vec::new();
    for value in hostile_values() {
        let key = String::from_utf8_lossy(&value).into_owned();
        keys.push(backend.redis_key("uploads", &key));
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), hostile_values().len(), "no two collide");
    assert_contained(&keys, "cc");

    // Through the layer: every hostile key is admitted and its lease released.
    let svc = ConcurrencyLimitLayer::new("uploads", 1)
        .key(HeaderKey::new("x-api-key"))
        .backend(backend)
        .layer(ok_service());
    for value in hostile_values() {
        let res = svc
            .clone()
            .oneshot(request("203.0.113.1:1", &[("x-api-key", &value)]))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        drop(res);
    }
    let left: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert_contained(&left, "cc");
}

#[tokio::test]
async fn a_64_kib_field_gets_a_normal_answer_from_every_key_extractor() {
    let big = vec![b'a'; 64 * 1024];
    let big_chain = "192.0.2.1,".repeat(64 * 1024 / 10).into_bytes();
    // Memory backend, per API key.
    let by_key = RateLimitLayer::new(Quota::per_minute(1))
        .key(HeaderKey::new("x-api-key"))
        .layer(ok_service());
    let first = by_key
        .clone()
        .oneshot(request("192.0.2.9:1", &[("x-api-key", &big)]))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = by_key
        .oneshot(request("192.0.2.9:1", &[("x-api-key", &big)]))
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().contains_key("retry-after"));

    // Per client IP behind a trusted proxy, with 64 KiB chains and an unrelated 64 KiB field.
    let by_ip = RateLimitLayer::new(Quota::per_minute(10))
        .key(ClientIp::trusting(["127.0.0.1"]).unwrap())
        .layer(ok_service());
    for headers in [
        vec![("x-forwarded-for", big_chain.as_slice())],
        vec![("forwarded", big.as_slice())],
        vec![("x-unrelated", big.as_slice())],
    ] {
        let res = by_ip
            .clone()
            .oneshot(request("127.0.0.1:1", &headers))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes a `HeaderValue` can hold, as the key: a normal answer (admitted, refused,
    /// or 500 for an empty key), never a panic; and the Redis key built from it is contained.
    #[test]
    fn any_api_key_bytes_give_a_normal_answer_and_a_contained_redis_key(
        value in prop::collection::vec(any::<u8>(), 0..300),
        policy in "[a-z]{1,8}",
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let Ok(header) = HeaderValue::from_bytes(&value) else { return Ok(()) };
        let status = rt.block_on(async {
            let svc = RateLimitLayer::new(Quota::per_minute(1))
                .key(HeaderKey::new("x-api-key"))
                .layer(ok_service());
            let mut req = request("192.0.2.1:1", &[]);
            req.headers_mut().insert("x-api-key", header);
            svc.oneshot(req).await.unwrap().status()
        });
        prop_assert!(
            [StatusCode::OK, StatusCode::INTERNAL_SERVER_ERROR].contains(&status),
            "{}", status
        );

        // Building the key needs no connection.
        let lazy = rt.block_on(async {
            Redis::connect_lazy(RedisConfig::from_url("redis://127.0.0.1:1/").unwrap()).unwrap()
        });
        let key = RedisBackend::new(lazy).redis_key(&policy, &String::from_utf8_lossy(&value), turret_ratelimit::Algorithm::Gcra);
        assert_contained(&[key], "rl");
    }
}
