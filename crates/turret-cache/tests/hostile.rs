//! Hostile request targets through the Redis storage: no namespace or cluster-slot escape,
//! long keys hashed, every request still answered.

#![cfg(feature = "redis")]

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use tower::{Layer, ServiceExt, service_fn};
use turret_cache::{RedisStorage, ResponseCacheLayer};
use turret_redis::{Redis, RedisConfig};
use turret_testkit::RedisServer;

#[tokio::test]
async fn hostile_targets_stay_inside_the_cache_namespace_and_slot() {
    let server = RedisServer::start();
    let redis = Redis::connect(RedisConfig::from_url(&server.url()).unwrap())
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = ResponseCacheLayer::with_storage(RedisStorage::new(redis)).layer(service_fn(
        move |_req: Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                let mut res = Response::new(Full::<Bytes>::from("ok"));
                res.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=60"),
                );
                Ok::<_, Infallible>(res)
            }
        },
    ));
    // http::Uri allows up to 64 KiB - 2 bytes.
    let long = "q".repeat(60 * 1024);
    let targets: Vec<(String, String)> = vec![
        ("/a{b}c".into(), "shop.example".into()),
        ("/}{x}/*/?k=v:w".into(), "shop.example".into()),
        ("/%0A%00%7B%7D".into(), "shop.example".into()),
        ("/x".into(), "evil}{host:1".into()),
        (format!("/long?{long}=1"), "shop.example".into()),
        (format!("/{long}"), "shop.example".into()),
    ];
    for (path, host) in &targets {
        for expected in ["MISS", "HIT"] {
            let req = Request::get(path.as_str())
                .header(header::HOST, host.as_str())
                .body(())
                .unwrap();
            let res = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(
                res.status(),
                StatusCode::OK,
                "{}",
                &path[..path.len().min(40)]
            );
            assert_eq!(res.headers()["x-cache"], expected);
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), targets.len());

    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert!(!keys.is_empty());
    for key in keys {
        assert!(key.starts_with("turret:cache"), "{key}");
        assert_eq!(key.matches('{').count(), 1, "one hash tag: {key}");
        assert_eq!(key.matches('}').count(), 1, "one hash tag: {key}");
        assert!(!key.contains(['\n', '\0', '*', ' ']), "{key:?}");
        assert!(
            key.len() < 512,
            "long parts are hashed: {} bytes",
            key.len()
        );
    }
}
