//! Hostile input: keys and tags with `{`, `}`, `:`, `*`, newlines, NUL and 64 KiB lengths
//! stay inside the stampede namespace and one hash slot on Redis, long ones hashed, and
//! distinct keys keep distinct values; any bytes read back from a store are a miss or a
//! value, never a panic; 64 KiB fields through the coalescer get a normal answer.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{Layer, ServiceExt, service_fn};
use turret_stampede::{
    CacheKey, CoalesceLayer, StampedeCache,
    store::{Entry, ValueStore},
};

const TTL: Duration = Duration::from_secs(60);

/// Raw keys a caller might pass straight from a request, each distinct.
#[cfg(feature = "redis")]
fn hostile_keys() -> Vec<Vec<u8>> {
    vec![
        b"{evil}".to_vec(),
        b"}{".to_vec(),
        b"a:b:*".to_vec(),
        b"*".to_vec(),
        b"?[a-z]".to_vec(),
        b"line\nbreak\r\0nul".to_vec(),
        b"\r\n*1\r\n$8\r\nFLUSHALL\r\n".to_vec(), // RESP lookalike
        b"%7B".to_vec(),
        b"%".to_vec(),
        b"#0123456789abcdef0123456789abcdef".to_vec(),
        b"caf\xc3\xa9".to_vec(),
        vec![b'x'; 64 * 1024],
        vec![b'{'; 64 * 1024],
        [vec![b'x'; 64 * 1024 - 1], b"2".to_vec()].concat(),
    ]
}

#[cfg(feature = "redis")]
mod redis_keys {
    use turret_redis::RedisConfig;
    use turret_testkit::RedisServer;

    use super::*;

    async fn cache(server: &RedisServer) -> StampedeCache {
        let redis = turret_testkit::connect!(server, |c: RedisConfig| c
            .command_timeout(Duration::from_secs(2)))
        .await;
        StampedeCache::redis(redis)
    }

    fn slot_tag(key: &str) -> &str {
        let open = key.find('{').expect("a hash tag");
        let close = key[open + 1..].find('}').expect("a closed hash tag") + open + 1;
        &key[open + 1..close]
    }

    fn assert_contained(server: &RedisServer) -> Vec<String> {
        let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
        assert!(!keys.is_empty());
        for key in &keys {
            assert!(
                [
                    "turret:val:{",
                    "turret:tag:{",
                    "turret:fence:{",
                    "turret:lock:{"
                ]
                .iter()
                .any(|p| key.starts_with(p)),
                "{key}"
            );
            assert_eq!(key.matches('{').count(), 1, "one hash tag: {key}");
            assert_eq!(key.matches('}').count(), 1, "one hash tag: {key}");
            assert!(key.ends_with('}'), "nothing after the tag: {key}");
            assert!(
                key.bytes().all(|b| b.is_ascii_graphic()),
                "printable ASCII only: {key:?}"
            );
            assert!(!key.contains(['*', '?', '[', ']']), "{key}");
            assert!(key.len() < 200, "long parts hashed: {} bytes", key.len());
            assert!(!slot_tag(key).is_empty());
        }
        keys
    }

    #[tokio::test]
    async fn hostile_raw_keys_and_tags_stay_in_the_namespace_with_their_own_values() {
        let server = RedisServer::start();
        let cache = cache(&server).await;
        let keys: Vec<String> = hostile_keys()
            .into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .collect();
        for (i, key) in keys.iter().enumerate() {
            let tag = key.as_str();
            let v: usize =
                cache
                    .get_or_compute_tagged(key, TTL, &[tag], move || async move {
                        Ok::<_, Infallible>(i)
                    })
                    .await
                    .unwrap();
            assert_eq!(v, i);
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(cache.peek::<usize>(key).await, Some(i), "no collision");
        }
        let stored = assert_contained(&server);
        let values = stored
            .iter()
            .filter(|k| k.starts_with("turret:val:"))
            .count();
        assert_eq!(values, keys.len(), "one value per key: {stored:?}");

        // A hostile tag invalidates exactly its own value.
        cache.invalidate_tag("{evil}").await.unwrap();
        assert_eq!(cache.peek::<usize>("{evil}").await, None);
        for (i, key) in keys.iter().enumerate().skip(1) {
            assert_eq!(cache.peek::<usize>(key).await, Some(i), "{i}");
        }
    }

    #[tokio::test]
    async fn cache_key_parts_from_hostile_bytes_stay_in_the_namespace() {
        let server = RedisServer::start();
        let cache = cache(&server).await;
        let keys: Vec<CacheKey> = hostile_keys()
            .into_iter()
            .map(|part| CacheKey::new("report").part(part).part("2024"))
            .collect();
        for (i, key) in keys.iter().enumerate() {
            assert!(key.as_str().len() < 200, "{}", key.as_str().len());
            assert_eq!(key.as_str().matches(':').count(), 2, "{key}");
            let v: usize = cache
                .get_or_compute(key, TTL, move || async move { Ok::<_, Infallible>(i) })
                .await
                .unwrap();
            assert_eq!(v, i);
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(cache.peek::<usize>(key).await, Some(i));
        }
        assert_contained(&server);
    }
}

/// Whatever bytes a store hands back (a shared Redis may hold anything): a miss that
/// recomputes, or a value, never a panic.
async fn read_back(bytes: Vec<u8>) {
    let cache = StampedeCache::new();
    for key in ["s", "v", "t"] {
        cache
            .store()
            .put(
                key,
                Entry {
                    bytes: Bytes::from(bytes.clone()),
                    fence: 0,
                    ttl: TTL,
                    tags: &[],
                },
            )
            .await
            .unwrap();
    }
    // What the stored bytes are, read without computing: a fresh value that decodes, or none.
    let stored_s = cache.peek::<String>("s").await;
    let stored_v = cache.peek::<Vec<u64>>("v").await;
    let _ = cache.peek::<(u8, Option<String>, f64)>("t").await;
    let s: String = cache
        .get_or_compute("s", TTL, || async {
            Ok::<_, Infallible>(String::from("fresh"))
        })
        .await
        .unwrap();
    let v: Vec<u64> = cache
        .get_or_compute("v", TTL, || async { Ok::<_, Infallible>(vec![7]) })
        .await
        .unwrap();
    // A stored value that decodes is served as it is (no grace: only a fresh one); anything
    // else is a miss, recomputed.
    assert_eq!(
        s,
        stored_s.unwrap_or_else(|| String::from("fresh")),
        "{bytes:?}"
    );
    assert_eq!(v, stored_v.unwrap_or_else(|| vec![7]), "{bytes:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_stored_bytes_are_a_miss_or_a_value(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(read_back(bytes));
    }

    #[test]
    fn a_valid_header_with_any_value_bytes_does_not_panic(
        version in prop_oneof![Just(1u8), any::<u8>()],
        times in prop::collection::vec(any::<u8>(), 4),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        // postcard: version, then four varints; then the value's bytes.
        let mut bytes = vec![version];
        for t in &times {
            bytes.push(*t & 0x7f);
        }
        bytes.extend_from_slice(&tail);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(read_back(bytes));
    }

    #[test]
    fn any_key_bytes_make_a_bounded_single_part(part in prop::collection::vec(any::<u8>(), 0..400)) {
        let key = CacheKey::new("q").part(&part);
        prop_assert_eq!(key.as_str().matches(':').count(), 1);
        prop_assert!(key.as_str().len() <= 2 + 129);
        prop_assert!(key.as_str().bytes().all(|b| b.is_ascii_graphic()));
        prop_assert!(!key.as_str().contains(['{', '}', '*']), "{}", key);
    }
}

#[tokio::test]
async fn a_64_kib_field_through_the_coalescer_gets_a_normal_answer() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let big = HeaderName::from_static("x-big");
    let svc =
        CoalesceLayer::new()
            .vary_on(big.clone())
            .layer(service_fn(move |req: Request<()>| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let len = req.headers().get("x-big").map_or(0, |v| v.len());
                    Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(len.to_string())))
                }
            }));
    let long_query = format!("/report?q={}", "a".repeat(60 * 1024));
    let request = |value: &[u8]| {
        Request::get(long_query.as_str())
            .header(&big, HeaderValue::from_bytes(value).unwrap())
            .body(())
            .unwrap()
    };
    let a = vec![b'a'; 64 * 1024];
    let b = [vec![b'a'; 64 * 1024 - 1], b"b".to_vec()].concat();
    let (r1, r2, r3) = tokio::join!(
        svc.clone().oneshot(request(&a)),
        svc.clone().oneshot(request(&a)),
        svc.clone().oneshot(request(&b)),
    );
    for res in [r1, r2, r3] {
        let res = res.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "65536");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "identical 64 KiB fields share a call, different ones do not"
    );
}
