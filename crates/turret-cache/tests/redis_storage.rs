//! `RedisStorage` and `TieredStorage` against a real redis-server (and a real 3-master
//! Redis Cluster): layout, commands per operation, invalidation, faults.

#![cfg(feature = "redis")]

use std::{
    collections::HashSet,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use turret_cache::{
    CacheStorage, CachedResponse, MAX_VARIANTS, MemoryStorage, Purge, RedisStorage, ResponseBody,
    ResponseCacheLayer, TieredStorage, Variants,
};
use turret_redis::{BreakerConfig, Event, Redis, RedisConfig, redis};
use turret_testkit::{RedisCluster, RedisServer};

const TTL: Duration = Duration::from_secs(60);
const KEY: &str = "http://shop.example/products";

fn config(url: &str) -> RedisConfig {
    RedisConfig::from_url(url)
        .unwrap()
        .command_timeout(Duration::from_millis(500))
        .breaker(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_millis(200),
        })
}

async fn connect(server: &RedisServer) -> Redis {
    Redis::connect(config(&server.url())).await.unwrap()
}

/// Now, to the millisecond (the resolution of stored times).
fn now() -> Duration {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    Duration::from_millis(ms as u64)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A stored 200 response, built through the public decoder from the documented encoding:
/// fresh for 60 s from `received`; `accept` is `None` for no `Vary`, else the request's
/// `Accept` (`Some(None)`: absent) under `Vary: accept`.
fn entry(
    body: &str,
    accept: Option<Option<&str>>,
    tags: &[&str],
    received: Duration,
) -> Arc<CachedResponse> {
    let ms = received.as_millis() as u64;
    let mut out = b"TRC\x03".to_vec();
    out.extend_from_slice(&200u16.to_be_bytes());
    put_varint(&mut out, ms); // request time
    put_varint(&mut out, ms); // response time
    put_varint(&mut out, TTL.as_millis() as u64); // freshness lifetime
    put_varint(&mut out, 0); // initial age
    let mut headers: Vec<(&str, &str)> = vec![("cache-control", "max-age=60")];
    if accept.is_some() {
        headers.push(("vary", "accept"));
    }
    put_varint(&mut out, headers.len() as u64);
    for (n, v) in headers {
        put_bytes(&mut out, n.as_bytes());
        put_bytes(&mut out, v.as_bytes());
    }
    match accept {
        None => put_varint(&mut out, 0),
        Some(value) => {
            put_varint(&mut out, 1);
            put_bytes(&mut out, b"accept");
            match value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    put_bytes(&mut out, v.as_bytes());
                }
            }
        }
    }
    put_varint(&mut out, tags.len() as u64);
    for t in tags {
        put_bytes(&mut out, t.as_bytes());
    }
    out.push(0); // raw body
    put_bytes(&mut out, body.as_bytes());
    Arc::new(CachedResponse::decode(&out).expect("a valid entry"))
}

fn bodies(variants: &Variants) -> Vec<String> {
    let mut out: Vec<String> = variants
        .iter()
        .map(|v| String::from_utf8(v.body().to_vec()).unwrap())
        .collect();
    out.sort();
    out
}

/// An origin answering `200`, `cache-control: max-age=60`, with a body naming the call.
fn origin(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<()>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut res = Response::new(Full::from(format!("body {n}")));
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            );
            Ok::<_, Infallible>(res)
        }
    })
}

fn get(path: &str) -> Request<()> {
    Request::get(path)
        .header(header::HOST, "shop.example")
        .body(())
        .unwrap()
}

async fn text<B: http_body::Body>(res: Response<ResponseBody<B>>) -> String
where
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn x_cache<B>(res: &Response<B>) -> &str {
    res.headers()["x-cache"].to_str().unwrap()
}

/// `cmdstat_<name>` → calls, from `INFO commandstats`.
fn command_calls(server: &RedisServer) -> Vec<(String, u64)> {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Waits until `redis`'s subscriber is live on the invalidation channel: publishes probes
/// (which the storages ignore) until one comes back through the same connection.
async fn subscribed(redis: &Redis) {
    let mut probe = redis.subscribe("cache-invalidate").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "subscription never became live");
        let _ = redis.publish("cache-invalidate", b"probe").await;
        if let Ok(Some(Event::Message(_))) =
            tokio::time::timeout(Duration::from_millis(100), probe.recv()).await
        {
            return;
        }
    }
}

/// Polls `check` every 10 ms for up to `within`.
async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_hit_through_the_layer_is_exactly_one_hgetall() {
    let server = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ResponseCacheLayer::with_storage(RedisStorage::new(connect(&server).await))
        .layer(origin(calls.clone()));

    let res = svc.clone().oneshot(get("/products")).await.unwrap();
    assert_eq!(x_cache(&res), "MISS");
    assert_eq!(text(res).await, "body 1");

    let _: () = server.cmd(&["CONFIG", "RESETSTAT"]);
    let res = svc.clone().oneshot(get("/products")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(x_cache(&res), "HIT");
    assert_eq!(text(res).await, "body 1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let data_commands: Vec<(String, u64)> = command_calls(&server)
        .into_iter()
        .filter(|(name, _)| !matches!(name.as_str(), "config|resetstat" | "config" | "info"))
        .collect();
    assert_eq!(data_commands, vec![("hgetall".to_owned(), 1)]);
}

#[tokio::test]
async fn put_and_get_round_trip_in_one_hash_per_key() {
    let server = RedisServer::start();
    let storage = RedisStorage::new(connect(&server).await);
    let e = entry("hello", Some(Some("text/html")), &["products"], now());
    storage.put(KEY, e.clone(), TTL).await.unwrap();

    let got = storage.get(KEY).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(*got[0], *e);
    assert_eq!(got[0].tags(), ["products"]);
    assert!(
        storage
            .get("http://shop.example/other")
            .await
            .unwrap()
            .is_empty()
    );

    let hash = storage.entry_key(KEY);
    assert_eq!(hash, "turret:cache:{http%3A//shop.example/products}");
    let fields: Vec<String> = server.cmd(&["HKEYS", &hash]);
    assert_eq!(
        fields.len(),
        2,
        "the variant and its response time: {fields:?}"
    );
    let variant = fields.iter().find(|f| !f.starts_with('!')).unwrap();
    assert_eq!(variant.len(), 32, "a hex digest of the secondary key");
    assert!(fields.contains(&format!("!t{variant}")));
    let pttl: i64 = server.cmd(&["PTTL", &hash]);
    assert!(pttl > 50_000 && pttl <= 60_000, "{pttl}");

    // A shorter TTL later never shortens the entry.
    storage
        .put(
            KEY,
            entry("again", Some(Some("text/html")), &[], now()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let pttl: i64 = server.cmd(&["PTTL", &hash]);
    assert!(pttl > 50_000, "{pttl}");
    let got = storage.get(KEY).await.unwrap();
    assert_eq!(bodies(&got), ["again"], "same secondary key: replaced");
}

#[tokio::test]
async fn vary_variants_are_bounded_and_the_oldest_go_first() {
    let server = RedisServer::start();
    let storage = RedisStorage::new(connect(&server).await);
    let t0 = now();
    let extra = 3;
    // Stored out of order: the response time decides which are oldest.
    let mut order: Vec<usize> = (0..MAX_VARIANTS + extra).collect();
    order.reverse();
    order.swap(0, 5);
    for i in order {
        let accept = format!("type/{i}");
        let e = entry(
            &format!("v{i:02}"),
            Some(Some(&accept)),
            &[],
            t0 + Duration::from_millis(i as u64),
        );
        storage.put(KEY, e, TTL).await.unwrap();
    }
    let got = storage.get(KEY).await.unwrap();
    assert!(got.len() <= MAX_VARIANTS, "{}", got.len());
    // The last put (v00, the oldest response) always stays; the others kept are the newest.
    let kept: HashSet<String> = bodies(&got).into_iter().collect();
    let expected: HashSet<String> = [0, 4, 5, 6, 7, 8, 9, 10]
        .iter()
        .map(|i| format!("v{i:02}"))
        .collect();
    assert_eq!(kept, expected);
    let fields: i64 = server.cmd(&["HLEN", &storage.entry_key(KEY)]);
    assert_eq!(fields as usize, 2 * got.len(), "no orphan time fields");

    // An absent header is its own variant, and replacing one keeps the count.
    storage
        .put(KEY, entry("none", Some(None), &[], now()), TTL)
        .await
        .unwrap();
    storage
        .put(KEY, entry("none2", Some(None), &[], now()), TTL)
        .await
        .unwrap();
    let got = storage.get(KEY).await.unwrap();
    assert_eq!(got.len(), MAX_VARIANTS);
    assert!(bodies(&got).contains(&"none2".to_owned()));
    assert!(!bodies(&got).contains(&"none".to_owned()));
}

#[tokio::test]
async fn remove_and_mark_stale_per_key() {
    let server = RedisServer::start();
    let storage = RedisStorage::new(connect(&server).await);
    let received = now();
    storage
        .put(KEY, entry("a", Some(Some("x")), &[], received), TTL)
        .await
        .unwrap();
    storage
        .put(KEY, entry("b", Some(Some("y")), &[], received), TTL)
        .await
        .unwrap();
    let hash = storage.entry_key(KEY);

    let at = received + Duration::from_secs(1);
    storage.invalidate(KEY, Purge::MarkStale(at)).await.unwrap();
    let got = storage.get(KEY).await.unwrap();
    assert_eq!(bodies(&got), ["a", "b"], "kept");
    for v in got.iter() {
        assert_eq!(v.ttl(at), None, "stale from the purge on");
        assert_eq!(
            v.ttl(at - Duration::from_millis(500)),
            Some(Duration::from_millis(500))
        );
    }
    let pttl: i64 = server.cmd(&["PTTL", &hash]);
    assert!(pttl > 50_000, "the TTL is kept: {pttl}");

    // A response received after the purge is fresh.
    let later = entry("c", Some(Some("z")), &[], at + Duration::from_secs(1));
    storage.put(KEY, later, TTL).await.unwrap();
    let got = storage.get(KEY).await.unwrap();
    let c = got.iter().find(|v| v.body() == "c").unwrap();
    assert!(c.ttl(at + Duration::from_secs(2)).is_some());

    // An older purge does not move the mark back.
    storage
        .invalidate(KEY, Purge::MarkStale(received))
        .await
        .unwrap();
    let got = storage.get(KEY).await.unwrap();
    assert!(
        got.iter()
            .filter(|v| v.body() != "c")
            .all(|v| v.ttl(at).is_none())
    );

    // Marking a key that does not exist creates nothing.
    storage
        .invalidate("http://shop.example/none", Purge::MarkStale(at))
        .await
        .unwrap();
    let exists: i64 = server.cmd(&["EXISTS", &storage.entry_key("http://shop.example/none")]);
    assert_eq!(exists, 0);

    storage.invalidate(KEY, Purge::Remove).await.unwrap();
    assert!(storage.get(KEY).await.unwrap().is_empty());
    let exists: i64 = server.cmd(&["EXISTS", &hash]);
    assert_eq!(exists, 0);
}

async fn tag_invalidation(storage: &RedisStorage, keys: &[String]) {
    let received = now();
    for (i, key) in keys.iter().enumerate() {
        let tags: &[&str] = if i % 2 == 0 {
            &["products", "all"]
        } else {
            &["all"]
        };
        storage
            .put(key, entry(key, None, tags, received), TTL)
            .await
            .unwrap();
    }
    let at = received + Duration::from_secs(1);
    let half = keys.len().div_ceil(2);
    let marked = storage
        .invalidate_tag("products", Purge::MarkStale(at))
        .await
        .unwrap();
    assert_eq!(marked, half, "the count of keys soft-purged");
    for (i, key) in keys.iter().enumerate() {
        let got = storage.get(key).await.unwrap();
        assert_eq!(got.len(), 1, "{key}: a soft purge keeps the response");
        assert_eq!(got[0].ttl(at).is_none(), i % 2 == 0, "{key}");
    }

    let removed = storage
        .invalidate_tag("products", Purge::Remove)
        .await
        .unwrap();
    assert_eq!(removed, half, "the count of keys removed");
    for (i, key) in keys.iter().enumerate() {
        let got = storage.get(key).await.unwrap();
        assert_eq!(got.is_empty(), i % 2 == 0, "{key}");
    }
    // Only the keys still holding responses count.
    let rest = storage.invalidate_tag("all", Purge::Remove).await.unwrap();
    assert_eq!(rest, keys.len() - half);
    for key in keys {
        assert!(storage.get(key).await.unwrap().is_empty(), "{key}");
    }
    let none = storage
        .invalidate_tag("unknown", Purge::Remove)
        .await
        .unwrap();
    assert_eq!(none, 0);
}

/// The variant fields of the entry hash `hash` (not the `!` bookkeeping fields).
fn variant_fields(server: &RedisServer, hash: &str) -> Vec<String> {
    let fields: Vec<String> = server.cmd(&["HKEYS", hash]);
    fields.into_iter().filter(|f| !f.starts_with('!')).collect()
}

#[tokio::test]
async fn a_kept_decoded_response_is_served_only_while_redis_holds_its_exact_bytes() {
    let server = RedisServer::start();
    let a = RedisStorage::new(connect(&server).await);
    // Another instance on the same Redis, with its own kept responses.
    let b = RedisStorage::new(connect(&server).await);
    let hash = a.entry_key(KEY);
    let received = now();
    a.put(KEY, entry("a", Some(Some("x")), &[], received), TTL)
        .await
        .unwrap();

    // Unchanged bytes: the response decoded by the first read, not a new decoding.
    let first = a.get(KEY).await.unwrap();
    let second = a.get(KEY).await.unwrap();
    assert_eq!(bodies(&second), ["a"]);
    assert!(Arc::ptr_eq(&first[0], &second[0]), "not decoded again");

    // Another instance replaces the variant (same secondary key, new bytes).
    b.put(
        KEY,
        entry(
            "a2",
            Some(Some("x")),
            &[],
            received + Duration::from_millis(1),
        ),
        TTL,
    )
    .await
    .unwrap();
    assert_eq!(variant_fields(&server, &hash).len(), 1, "the same variant");
    let got = a.get(KEY).await.unwrap();
    assert_eq!(bodies(&got), ["a2"], "what Redis holds now");
    assert!(Arc::ptr_eq(&got[0], &a.get(KEY).await.unwrap()[0]));

    // A soft purge by the other instance: the kept response is served stale.
    let at = received + Duration::from_secs(1);
    b.invalidate(KEY, Purge::MarkStale(at)).await.unwrap();
    let got = a.get(KEY).await.unwrap();
    assert_eq!(bodies(&got), ["a2"]);
    assert_eq!(got[0].ttl(at), None, "stale from the purge on");

    // A second variant appears, then the first one's field goes: only what is left is served.
    b.put(
        KEY,
        entry("b", Some(Some("y")), &[], at + Duration::from_secs(1)),
        TTL,
    )
    .await
    .unwrap();
    assert_eq!(bodies(&a.get(KEY).await.unwrap()), ["a2", "b"]);
    let a2_field = variant_fields(&server, &hash)
        .into_iter()
        .find(|f| {
            let raw: Vec<u8> = server.cmd(&["HGET", &hash, f]);
            raw.ends_with(b"a2")
        })
        .expect("the field of a2");
    let _: i64 = server.cmd(&["HDEL", &hash, &a2_field]);
    assert_eq!(bodies(&a.get(KEY).await.unwrap()), ["b"]);

    // Two variants kept (a key never soft-purged); Redis then holds one's bytes under both
    // fields: what Redis holds is served (the one, twice), never the other kept variant.
    let other = "http://shop.example/other";
    let other_hash = a.entry_key(other);
    for (body, accept) in [("b", "y"), ("d", "w")] {
        b.put(other, entry(body, Some(Some(accept)), &[], at), TTL)
            .await
            .unwrap();
    }
    assert_eq!(bodies(&a.get(other).await.unwrap()), ["b", "d"]);
    assert_eq!(bodies(&a.get(other).await.unwrap()), ["b", "d"]);
    let fields = variant_fields(&server, &other_hash);
    let d_bytes: Vec<u8> = fields
        .iter()
        .map(|f| server.cmd::<Vec<u8>>(&["HGET", &other_hash, f]))
        .find(|raw| raw.ends_with(b"d"))
        .expect("the bytes of d");
    for field in &fields {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&other_hash).arg(field).arg(&d_bytes[..]);
        let _: i64 = a.redis().query(&cmd).await.unwrap();
    }
    assert_eq!(bodies(&a.get(other).await.unwrap()), ["d", "d"]);

    // Bytes that do not decode are a miss, never the response kept for the field.
    for field in variant_fields(&server, &hash) {
        let _: i64 = server.cmd(&["HSET", &hash, &field, "TRC\x03garbage"]);
    }
    assert!(a.get(KEY).await.unwrap().is_empty());

    // Removed by the other instance: a miss.
    b.put(KEY, entry("c", None, &[], at + Duration::from_secs(2)), TTL)
        .await
        .unwrap();
    assert_eq!(bodies(&a.get(KEY).await.unwrap()), ["c"]);
    b.invalidate(KEY, Purge::Remove).await.unwrap();
    assert!(a.get(KEY).await.unwrap().is_empty());
}

#[tokio::test]
async fn keep_decoded_zero_decodes_every_read() {
    let server = RedisServer::start();
    let storage = RedisStorage::new(connect(&server).await).keep_decoded(0);
    storage
        .put(KEY, entry("a", None, &[], now()), TTL)
        .await
        .unwrap();
    let first = storage.get(KEY).await.unwrap();
    let second = storage.get(KEY).await.unwrap();
    assert_eq!(bodies(&second), ["a"]);
    assert!(!Arc::ptr_eq(&first[0], &second[0]));
}

#[tokio::test]
async fn invalidate_tag_on_a_single_node_removes_or_marks_every_tagged_key() {
    let server = RedisServer::start();
    let storage = RedisStorage::new(connect(&server).await);
    // More keys than one ZSCAN batch.
    let keys: Vec<String> = (0..600)
        .map(|i| format!("http://shop.example/p/{i}"))
        .collect();
    tag_invalidation(&storage, &keys).await;
    let exists: i64 = server.cmd(&["EXISTS", &storage.tag_key("products")]);
    assert_eq!(exists, 0, "a removed tag's index is empty, so gone");
}

#[tokio::test]
async fn invalidate_tag_on_a_cluster_reaches_keys_in_every_slot() {
    let cluster = RedisCluster::start(3);
    let redis = Redis::connect(config(&cluster.url())).await.unwrap();
    assert!(redis.is_cluster());
    let storage = RedisStorage::new(redis);
    let keys: Vec<String> = (0..40)
        .map(|i| format!("http://shop.example/p/{i}"))
        .collect();
    let masters: HashSet<u16> = keys
        .iter()
        .map(|k| cluster.master_of(&storage.entry_key(k)).port())
        .collect();
    assert_eq!(masters.len(), 3, "the keys are spread over every master");
    tag_invalidation(&storage, &keys).await;

    // Round trip and per-key purge on the cluster too.
    storage
        .put(KEY, entry("x", Some(Some("a")), &["t"], now()), TTL)
        .await
        .unwrap();
    assert_eq!(bodies(&storage.get(KEY).await.unwrap()), ["x"]);
    assert_eq!(storage.invalidate(KEY, Purge::Remove).await.unwrap(), 1);
    assert!(storage.get(KEY).await.unwrap().is_empty());
    assert_eq!(storage.invalidate(KEY, Purge::Remove).await.unwrap(), 0);
}

#[tokio::test]
async fn tag_indexes_expire_and_drop_expired_members() {
    let server = RedisServer::start();
    let storage = RedisStorage::new(connect(&server).await);
    let index = storage.tag_key("products");
    storage
        .put(
            "http://a/short",
            entry("s", None, &["products"], now()),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    // A second, so that a loaded machine reads the TTL before it runs out.
    let pttl: i64 = server.cmd(&["PTTL", &index]);
    assert!(
        pttl > 0 && pttl <= 1000,
        "the index expires with its member: {pttl}"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    storage
        .put("http://a/long", entry("l", None, &["products"], now()), TTL)
        .await
        .unwrap();
    storage
        .put(
            "http://a/mid",
            entry("m", None, &["products"], now()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let members: Vec<String> = server.cmd(&["ZRANGE", &index, "0", "-1"]);
    assert_eq!(
        members,
        ["http://a/mid", "http://a/long"],
        "the expired member left the index"
    );
    let pttl: i64 = server.cmd(&["PTTL", &index]);
    assert!(
        pttl > 50_000 && pttl <= 60_000,
        "the longest member's TTL: {pttl}"
    );

    // Re-putting the same keys does not grow the index.
    for _ in 0..10 {
        storage
            .put("http://a/long", entry("l", None, &["products"], now()), TTL)
            .await
            .unwrap();
    }
    let card: i64 = server.cmd(&["ZCARD", &index]);
    assert_eq!(card, 2);
}

#[tokio::test]
async fn corrupt_bytes_in_the_hash_are_a_miss_not_a_panic() {
    let server = RedisServer::start();
    let storage = RedisStorage::new(connect(&server).await);
    let hash = storage.entry_key(KEY);
    storage
        .put(KEY, entry("good", Some(Some("a")), &[], now()), TTL)
        .await
        .unwrap();
    let mut truncated = entry("x", None, &[], now()).encode();
    truncated.truncate(12);
    let mut conn = server.connection();
    let _: () = redis::cmd("HSET")
        .arg(&hash)
        .arg("0123456789abcdef0123456789abcdef")
        .arg(b"{\"json\":true}".as_slice())
        .arg("fedcba9876543210fedcba9876543210")
        .arg(truncated.as_slice())
        .arg("!stale")
        .arg("not a time")
        .query(&mut conn)
        .unwrap();
    let got = storage.get(KEY).await.unwrap();
    assert_eq!(bodies(&got), ["good"], "the corrupt variants are skipped");
    assert!(got[0].ttl(now()).is_some(), "a bad stale mark is ignored");

    // Only garbage under the layer's key: a miss answered by the origin.
    let _: () = redis::cmd("DEL").arg(&hash).query(&mut conn).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&hash)
        .arg("0123456789abcdef0123456789abcdef")
        .arg(b"\xff\xfe garbage".as_slice())
        .query(&mut conn)
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ResponseCacheLayer::with_storage(storage.clone()).layer(origin(calls.clone()));
    let res = svc.clone().oneshot(get("/products")).await.unwrap();
    assert_eq!(x_cache(&res), "MISS");
    assert_eq!(text(res).await, "body 1");
    let res = svc.oneshot(get("/products")).await.unwrap();
    assert_eq!(
        x_cache(&res),
        "HIT",
        "the origin's response replaced nothing valid"
    );
    assert_eq!(text(res).await, "body 1");
}

#[tokio::test]
async fn a_stopped_redis_is_a_storage_error_and_the_layer_answers_from_the_origin() {
    let mut server = RedisServer::start();
    let storage = RedisStorage::new(connect(&server).await);
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ResponseCacheLayer::with_storage(storage.clone()).layer(origin(calls.clone()));
    let res = svc.clone().oneshot(get("/products")).await.unwrap();
    assert_eq!(text(res).await, "body 1");

    server.stop();
    let e = storage.get(KEY).await.unwrap_err();
    assert!(e.to_string().starts_with("cache storage error"), "{e}");
    assert!(
        storage
            .put(KEY, entry("x", None, &[], now()), TTL)
            .await
            .is_err()
    );
    assert!(storage.invalidate(KEY, Purge::Remove).await.is_err());
    assert!(storage.invalidate_tag("t", Purge::Remove).await.is_err());
    for n in 2..5 {
        let res = svc.clone().oneshot(get("/products")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(x_cache(&res), "MISS");
        assert_eq!(text(res).await, format!("body {n}"));
    }
}

/// Two instances (separate connections) on one Redis, each with its own L1.
async fn two_instances(server: &RedisServer) -> (TieredStorage, TieredStorage) {
    let (ra, rb) = (connect(server).await, connect(server).await);
    let a = TieredStorage::new(ra.clone());
    let b = TieredStorage::builder(rb.clone())
        .l1(MemoryStorage::new(1024 * 1024))
        .l1_ttl(Duration::from_secs(30))
        .build();
    subscribed(&ra).await;
    subscribed(&rb).await;
    (a, b)
}

async fn l1_len(storage: &TieredStorage, key: &str) -> usize {
    storage.l1().get(key).await.unwrap().len()
}

#[tokio::test]
async fn tiered_hits_fill_both_l1s_and_a_tag_invalidation_reaches_the_other_instance() {
    let server = RedisServer::start();
    let (a, b) = two_instances(&server).await;
    a.put(KEY, entry("old", None, &["products"], now()), TTL)
        .await
        .unwrap();
    assert_eq!(bodies(&a.get(KEY).await.unwrap()), ["old"]);
    assert_eq!(bodies(&b.get(KEY).await.unwrap()), ["old"]);
    assert_eq!(l1_len(&a, KEY).await, 1);
    assert_eq!(l1_len(&b, KEY).await, 1);

    // B answers from its L1 now: no Redis command.
    let _: () = server.cmd(&["CONFIG", "RESETSTAT"]);
    assert_eq!(bodies(&b.get(KEY).await.unwrap()), ["old"]);
    assert!(
        command_calls(&server).iter().all(|(n, _)| n != "hgetall"),
        "{:?}",
        command_calls(&server)
    );

    a.invalidate_tag("products", Purge::Remove).await.unwrap();
    assert_eq!(l1_len(&a, KEY).await, 0, "the sender's own L1 at once");
    let gone = eventually(Duration::from_secs(1), async || l1_len(&b, KEY).await == 0).await;
    assert!(gone, "B's L1 still serves the old body after 1 s");
    assert!(b.get(KEY).await.unwrap().is_empty());

    // Through the layer: B serves the new body after A invalidates the URI.
    let calls = Arc::new(AtomicUsize::new(0));
    let layer_a = ResponseCacheLayer::with_storage(a.clone());
    let svc_a = layer_a.layer(origin(calls.clone()));
    let svc_b = ResponseCacheLayer::with_storage(b.clone()).layer(origin(calls.clone()));
    let res = svc_a.clone().oneshot(get("/products")).await.unwrap();
    assert_eq!(text(res).await, "body 1");
    let res = svc_b.clone().oneshot(get("/products")).await.unwrap();
    assert_eq!(x_cache(&res), "HIT");
    assert_eq!(text(res).await, "body 1");
    let res = svc_b.clone().oneshot(get("/products")).await.unwrap();
    assert_eq!(x_cache(&res), "HIT", "from B's L1");
    assert_eq!(l1_len(&b, KEY).await, 1);

    layer_a
        .invalidate(&"http://shop.example/products".parse().unwrap())
        .await
        .unwrap();
    let gone = eventually(Duration::from_secs(1), async || l1_len(&b, KEY).await == 0).await;
    assert!(gone, "B's L1 still holds the invalidated key after 1 s");
    let res = svc_b.oneshot(get("/products")).await.unwrap();
    assert_eq!(x_cache(&res), "MISS");
    assert_eq!(text(res).await, "body 2");
}

#[tokio::test]
async fn a_tiered_soft_purge_leaves_the_l1s_and_serves_the_stale_copy_from_redis() {
    let server = RedisServer::start();
    let (a, b) = two_instances(&server).await;
    let received = now();
    a.put(KEY, entry("v", None, &["products"], received), TTL)
        .await
        .unwrap();
    b.get(KEY).await.unwrap();
    assert_eq!(l1_len(&b, KEY).await, 1);

    let at = now();
    a.invalidate(KEY, Purge::MarkStale(at)).await.unwrap();
    let gone = eventually(Duration::from_secs(1), async || l1_len(&b, KEY).await == 0).await;
    assert!(gone);
    let got = b.get(KEY).await.unwrap();
    assert_eq!(bodies(&got), ["v"]);
    assert_eq!(got[0].ttl(at), None);
    assert_eq!(
        l1_len(&b, KEY).await,
        0,
        "stale copies are not copied to the L1"
    );
}

#[tokio::test]
async fn a_gap_clears_the_l1_and_the_next_get_asks_redis() {
    let mut server = RedisServer::start();
    let (a, b) = two_instances(&server).await;
    a.put(KEY, entry("v", None, &[], now()), TTL).await.unwrap();
    b.get(KEY).await.unwrap();
    b.put(
        "http://shop.example/local",
        entry("l", None, &[], now()),
        TTL,
    )
    .await
    .unwrap();
    b.get("http://shop.example/local").await.unwrap();
    assert_eq!(l1_len(&b, KEY).await, 1);

    // Invalidations sent while B is cut off would be lost: the restart is a gap.
    server.restart();
    let cleared = eventually(Duration::from_secs(5), async || {
        l1_len(&b, KEY).await == 0 && l1_len(&b, "http://shop.example/local").await == 0
    })
    .await;
    assert!(cleared, "B's L1 survived the gap");
    // The restarted Redis is empty: the next get asks it and misses.
    let miss = eventually(
        Duration::from_secs(5),
        async || matches!(b.get(KEY).await, Ok(v) if v.is_empty()),
    )
    .await;
    assert!(miss);

    // And the fleet is coherent again once re-subscribed.
    subscribed(b.l2().redis()).await;
    subscribed(a.l2().redis()).await;
    a.put(KEY, entry("w", None, &["t"], now()), TTL)
        .await
        .unwrap();
    assert_eq!(bodies(&b.get(KEY).await.unwrap()), ["w"]);
    assert_eq!(l1_len(&b, KEY).await, 1);
    a.invalidate_tag("t", Purge::Remove).await.unwrap();
    assert!(eventually(Duration::from_secs(1), async || l1_len(&b, KEY).await == 0).await);
}

#[tokio::test]
async fn tiered_storage_keeps_serving_its_l1_while_redis_is_down() {
    let mut server = RedisServer::start();
    let redis = connect(&server).await;
    let storage = TieredStorage::new(redis.clone());
    subscribed(&redis).await;
    let before = "http://shop.example/before";
    storage
        .put(before, entry("b", None, &[], now()), TTL)
        .await
        .unwrap();
    storage.get(before).await.unwrap();
    assert_eq!(l1_len(&storage, before).await, 1);
    server.stop();
    // The stop is a gap: what the L1 held may miss invalidations from now on.
    let cleared = eventually(Duration::from_secs(5), async || {
        l1_len(&storage, before).await == 0
    })
    .await;
    assert!(cleared);
    storage
        .put(KEY, entry("local", None, &[], now()), TTL)
        .await
        .unwrap();
    assert_eq!(bodies(&storage.get(KEY).await.unwrap()), ["local"]);
    assert!(storage.get("http://shop.example/other").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_ends_with_the_last_clone() {
    let server = RedisServer::start();
    let redis = connect(&server).await;
    subscribed(&redis).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    // The connections' own tasks may still be starting: count once the number holds still.
    let mut before = metrics.num_alive_tasks();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = metrics.num_alive_tasks();
        if now == before {
            break;
        }
        before = now;
    }
    let storage = TieredStorage::new(redis.clone());
    let clone = storage.clone();
    assert!(
        eventually(Duration::from_secs(1), async || metrics.num_alive_tasks()
            == before + 1)
        .await
    );
    drop(storage);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(metrics.num_alive_tasks(), before + 1, "a clone is alive");
    drop(clone);
    assert!(
        eventually(Duration::from_secs(1), async || metrics.num_alive_tasks()
            == before)
        .await,
        "the listener outlived the storage"
    );
}

#[cfg(feature = "compression")]
#[tokio::test]
async fn large_bodies_are_compressed_in_redis_and_read_back_whole() {
    let server = RedisServer::start();
    let redis = connect(&server).await;
    let plain = RedisStorage::new(redis.clone());
    let compressed = RedisStorage::new(redis).compress_over(1024);
    let body = r#"{"id":7,"name":"widget","price":"9.99"},"#.repeat(100);
    let e = entry(&body, None, &[], now());
    plain
        .put("http://shop.example/plain", e.clone(), TTL)
        .await
        .unwrap();
    compressed.put(KEY, e.clone(), TTL).await.unwrap();

    let size = |key: &str| {
        let hash = plain.entry_key(key);
        let fields: Vec<String> = server.cmd(&["HKEYS", &hash]);
        let variant = fields.iter().find(|f| !f.starts_with('!')).unwrap().clone();
        let len: i64 = server.cmd(&["HSTRLEN", &hash, &variant]);
        len
    };
    let (raw, small) = (size("http://shop.example/plain"), size(KEY));
    assert!(small * 4 < raw, "{small} vs {raw} bytes in Redis");
    // Either storage reads either form.
    let got = plain.get(KEY).await.unwrap();
    assert_eq!(*got[0], *e);
}

/// What the layer says of a GET: `X-Cache`.
async fn x_cache_of<S>(svc: &S, path: &str) -> String
where
    S: tower::Service<Request<()>, Response = Response<ResponseBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let req = Request::get(path)
        .header(header::HOST, "shop.example")
        .body(())
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    res.headers()["x-cache"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_tag_invalidation_that_failed_part_way_can_be_retried() {
    let server = RedisServer::start();
    let _: () = server.cmd(&[
        "ACL", "SETUSER", "nodel", "on", ">pw", "~*", "&*", "+@all", "-del", "-unlink",
    ]);
    let admin = Redis::connect(RedisConfig::from_url(&server.url()).unwrap())
        .await
        .unwrap();
    let limited_url = format!("redis://nodel:pw@127.0.0.1:{}/", server.port());
    let limited = Redis::connect(RedisConfig::from_url(&limited_url).unwrap())
        .await
        .unwrap();

    let layer = ResponseCacheLayer::with_storage(RedisStorage::new(admin));
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        let mut res = Response::new(Full::from("body"));
        res.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        res.headers_mut()
            .insert("surrogate-key", HeaderValue::from_static("products"));
        Ok::<_, Infallible>(res)
    }));
    for path in ["/a", "/b"] {
        assert_eq!(x_cache_of(&svc, path).await, "MISS");
        assert_eq!(x_cache_of(&svc, path).await, "HIT");
    }

    // The first attempt fails at the entries' DEL.
    let failing = ResponseCacheLayer::with_storage(RedisStorage::new(limited));
    assert!(failing.invalidate_tag("products").await.is_err());

    // The retry succeeds, and the tagged entries are gone.
    layer
        .invalidate_tag("products")
        .await
        .expect("retry the invalidation");
    for path in ["/a", "/b"] {
        assert_eq!(
            x_cache_of(&svc, path).await,
            "MISS",
            "{path} is still served after its tag was invalidated (the retry found an empty index)"
        );
    }
}
