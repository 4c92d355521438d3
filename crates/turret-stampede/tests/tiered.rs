//! The two-tier store against a real redis-server and a real Redis Cluster: two stores on
//! separate handles are two instances of a fleet.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use turret_redis::{BreakerConfig, Redis, RedisConfig};
use turret_stampede::{
    RedisStore, TieredStore, ValueStore,
    store::{Entry, Put, StoreError},
};
use turret_testkit::{RedisCluster, RedisServer};

const TTL: Duration = Duration::from_secs(60);

fn configure(config: RedisConfig) -> RedisConfig {
    config
        .command_timeout(Duration::from_millis(500))
        .breaker(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_millis(200),
        })
}

fn entry<'a>(value: &str, fence: u64, tags: &'a [String]) -> Entry<'a> {
    Entry {
        bytes: Bytes::from(value.to_owned()),
        fence,
        ttl: TTL,
        tags,
    }
}

/// Polls `check` every 10 ms until it holds or `within` passed; whether it held.
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

async fn live(store: &TieredStore) {
    assert!(
        eventually(Duration::from_secs(10), async || store.subscribed()).await,
        "the subscription never became live"
    );
}

async fn value(store: &impl ValueStore, key: &str) -> Option<String> {
    store
        .get(key)
        .await
        .unwrap()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
}

/// Two instances on one server (separate handles), live, and a plain `RedisStore` on a
/// third handle: it writes the L2 without telling any L1.
async fn fleet(url: &str, l1_ttl: Duration) -> (TieredStore, TieredStore, RedisStore) {
    let connect = async || {
        Redis::connect(configure(RedisConfig::from_url(url).unwrap()))
            .await
            .unwrap()
    };
    let a = TieredStore::builder(connect().await).l1_ttl(l1_ttl).build();
    let b = TieredStore::builder(connect().await)
        .l1_max_bytes(1024 * 1024)
        .l1_ttl(l1_ttl)
        .build();
    let silent = RedisStore::new(connect().await);
    live(&a).await;
    live(&b).await;
    (a, b, silent)
}

/// Reads `key` on `store` until its L1 holds it (a fill is dropped when the writer's own
/// message arrives during the read: it may predate it). Returns what it read.
async fn filled(store: &TieredStore, key: &str) -> Option<String> {
    let mut last = None;
    let held = eventually(Duration::from_secs(5), async || {
        last = value(store, key).await;
        store.l1_holds(key)
    })
    .await;
    assert!(held, "{key} never reached the L1");
    last
}

/// B reads `key` from its L1: a silent L2 write does not change what it answers.
async fn served_from_l1(b: &TieredStore, silent: &RedisStore, key: &str, expect: &str) {
    assert_eq!(filled(b, key).await.as_deref(), Some(expect));
    silent.put(key, entry("silent", 0, &[])).await.unwrap();
    assert_eq!(
        value(b, key).await.as_deref(),
        Some(expect),
        "not from the L1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_evicts_the_other_instances_l1_copy() {
    let server = RedisServer::start();
    let (a, b, silent) = fleet(&server.url(), Duration::from_secs(30)).await;
    assert_eq!(
        a.put("product:1", entry("v1", 0, &[])).await.unwrap(),
        Put::Stored
    );
    served_from_l1(&b, &silent, "product:1", "v1").await;

    assert_eq!(filled(&a, "product:1").await.as_deref(), Some("silent"));
    assert_eq!(
        a.put("product:1", entry("v2", 0, &[])).await.unwrap(),
        Put::Stored
    );
    assert!(
        !a.l1_holds("product:1"),
        "the writer's own L1 drops it at once"
    );
    assert!(
        eventually(Duration::from_secs(5), async || value(&b, "product:1")
            .await
            .as_deref()
            == Some("v2"))
        .await,
        "B's L1 still serves the old value"
    );
    assert!(b.l1_holds("product:1"), "the fresh value is copied again");

    // invalidate too.
    a.invalidate("product:1").await.unwrap();
    assert!(eventually(Duration::from_secs(5), async || !b.l1_holds("product:1")).await);
    assert_eq!(value(&b, "product:1").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_on_one_instance_evicts_the_other_instances_tagged_keys() {
    let server = RedisServer::start();
    let (a, b, _silent) = fleet(&server.url(), Duration::from_secs(30)).await;
    let tagged = [String::from("category:3")];
    a.put("p:1", entry("one", 0, &tagged)).await.unwrap();
    a.put("p:2", entry("two", 0, &tagged)).await.unwrap();
    a.put("p:3", entry("three", 0, &[])).await.unwrap();
    for k in ["p:1", "p:2", "p:3"] {
        assert!(filled(&b, k).await.is_some());
    }
    assert_eq!(a.invalidate_tag("category:3").await.unwrap(), 2);
    assert!(
        eventually(Duration::from_secs(5), async || !b.l1_holds("p:1")
            && !b.l1_holds("p:2"))
        .await,
        "B's L1 still holds tagged keys"
    );
    assert!(b.l1_holds("p:3"), "an untagged key stays");
    assert_eq!(value(&b, "p:1").await, None);
    assert_eq!(value(&b, "p:3").await.as_deref(), Some("three"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_l2_fence_refuses_a_stale_write_through_the_tiered_store() {
    let server = RedisServer::start();
    let (a, b, _silent) = fleet(&server.url(), Duration::from_secs(30)).await;
    assert_eq!(
        a.put("k", entry("fence 10", 10, &[])).await.unwrap(),
        Put::Stored
    );
    assert_eq!(value(&b, "k").await.as_deref(), Some("fence 10"));
    assert_eq!(
        b.put("k", entry("fence 5", 5, &[])).await.unwrap(),
        Put::Refused
    );
    assert_eq!(
        a.put("k", entry("fence 9", 9, &[])).await.unwrap(),
        Put::Refused
    );
    assert_eq!(value(&a, "k").await.as_deref(), Some("fence 10"));
    assert_eq!(value(&b, "k").await.as_deref(), Some("fence 10"));
    assert_eq!(
        b.put("k", entry("fence 11", 11, &[])).await.unwrap(),
        Put::Stored
    );
    assert!(
        eventually(Duration::from_secs(5), async || value(&a, "k")
            .await
            .as_deref()
            == Some("fence 11"))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_subscriber_connection_clears_the_l1_and_coherence_returns() {
    let server = RedisServer::start();
    let (a, b, silent) = fleet(&server.url(), Duration::from_secs(30)).await;
    a.put("k", entry("old", 0, &[])).await.unwrap();
    served_from_l1(&b, &silent, "k", "old").await;

    let killed: i64 = server.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(killed >= 2, "killed {killed} subscriber connections");
    // The silent write is seen once the gap cleared B's L1 (Redis answered).
    assert!(
        eventually(Duration::from_secs(10), async || value(&b, "k")
            .await
            .as_deref()
            == Some("silent"))
        .await,
        "B's L1 survived the gap"
    );
    live(&a).await;
    live(&b).await;
    assert_eq!(
        filled(&b, "k").await.as_deref(),
        Some("silent"),
        "filling again once live"
    );
    a.put("k", entry("new", 0, &[])).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || value(&b, "k")
            .await
            .as_deref()
            == Some("new"))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_clears_every_l1() {
    let mut server = RedisServer::start();
    let (a, b, _silent) = fleet(&server.url(), Duration::from_secs(30)).await;
    a.put("k", entry("v", 0, &[])).await.unwrap();
    filled(&a, "k").await;
    filled(&b, "k").await;
    server.restart();
    assert!(
        eventually(Duration::from_secs(10), async || !a.l1_holds("k")
            && !b.l1_holds("k"))
        .await,
        "an L1 survived the restart"
    );
    // The restarted server is empty: the next read asks it.
    assert!(
        eventually(Duration::from_secs(10), async || matches!(
            b.get("k").await,
            Ok(None)
        ))
        .await
    );
    live(&a).await;
    live(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_the_l1_answers_within_l1_ttl_and_not_after() {
    let mut server = RedisServer::start();
    let l1_ttl = Duration::from_secs(3);
    let (a, _b, _silent) = fleet(&server.url(), l1_ttl).await;
    a.put("k", entry("v", 0, &[])).await.unwrap();
    assert_eq!(filled(&a, "k").await.as_deref(), Some("v"));
    let filled = Instant::now();
    server.stop();
    // Give the gap time to reach the listener: it must not clear the L1 with Redis down.
    assert!(eventually(Duration::from_secs(2), async || !a.subscribed()).await);
    let got = a.get("k").await;
    assert!(
        filled.elapsed() < l1_ttl,
        "the test machine is too slow to tell"
    );
    assert_eq!(
        got.unwrap().as_deref(),
        Some(&b"v"[..]),
        "the L1 answers within l1_ttl"
    );
    // A key the L1 does not hold: Redis' error, as a store error (the cache's miss).
    assert!(matches!(
        a.get("other").await,
        Err(StoreError::Unavailable(_))
    ));
    tokio::time::sleep_until((filled + l1_ttl + Duration::from_millis(100)).into()).await;
    assert!(
        matches!(a.get("k").await, Err(StoreError::Unavailable(_))),
        "the L1 answered after l1_ttl"
    );
    // A write while Redis is down is an error, and the L1 keeps it locally.
    assert!(matches!(
        a.put("w", entry("local", 0, &[])).await,
        Err(StoreError::Unavailable(_))
    ));
    assert_eq!(a.get("w").await.unwrap().as_deref(), Some(&b"local"[..]));
    server.restart();
    // Once Redis answers the local copy (never in the L2) is dropped.
    assert!(
        eventually(Duration::from_secs(10), async || matches!(
            a.get("w").await,
            Ok(None)
        ))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_l2_or_on_the_channel_does_not_panic() {
    let server = RedisServer::start();
    let (a, b, _silent) = fleet(&server.url(), Duration::from_secs(30)).await;
    let redis = Redis::connect(configure(RedisConfig::from_url(&server.url()).unwrap()))
        .await
        .unwrap();
    let val = |key: &str| redis.key("val").tag(key).build();
    // Garbage fence and tags: the bytes are answered (the cache's envelope judges them),
    // but never copied to the L1, which could not drop them by tag.
    let _: () = server.cmd(&[
        "HSET",
        &val("g"),
        "v",
        "\u{1}\u{ff}junk",
        "f",
        "x",
        "t",
        "\u{ff}\u{ff}\u{ff}",
    ]);
    assert_eq!(
        b.get("g").await.unwrap().as_deref(),
        Some("\u{1}\u{ff}junk".as_bytes())
    );
    assert!(!b.l1_holds("g"));
    // A hash without a value field is a miss; another type at the key is an error.
    let _: () = server.cmd(&["HSET", &val("h"), "f", "3"]);
    assert_eq!(b.get("h").await.unwrap(), None);
    let _: () = server.cmd(&["SET", &val("s"), "plain"]);
    assert!(matches!(b.get("s").await, Err(StoreError::Backend(_))));
    // Garbage on the channel is ignored and the store stays coherent.
    for junk in [
        &b""[..],
        b"\x01",
        b"\x01k",
        b"\x01p\0\0\0\0\0\0\0\0\x01",
        b"\x02k00000000key",
        &[0xff; 300],
    ] {
        redis.publish("stampede:invalidate", junk).await.unwrap();
    }
    a.put("k", entry("v1", 0, &[])).await.unwrap();
    filled(&b, "k").await;
    a.put("k", entry("v2", 0, &[])).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || value(&b, "k")
            .await
            .as_deref()
            == Some("v2"))
        .await
    );
    assert!(b.subscribed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_writes_and_tag_invalidations_reach_every_l1() {
    let cluster = RedisCluster::start(3);
    let (a, b, _silent) = fleet(&cluster.url(), Duration::from_secs(30)).await;
    let tagged = [String::from("products")];
    // Keys in many slots.
    let keys: Vec<String> = (0..20).map(|i| format!("product:{i}")).collect();
    for k in &keys {
        a.put(k, entry("v1", 0, &tagged)).await.unwrap();
        assert_eq!(filled(&b, k).await.as_deref(), Some("v1"));
    }
    b.put(&keys[0], entry("v2", 0, &tagged)).await.unwrap();
    filled(&a, &keys[1]).await;
    assert!(
        eventually(Duration::from_secs(5), async || value(&a, &keys[0])
            .await
            .as_deref()
            == Some("v2"))
        .await
    );
    a.invalidate_tag("products").await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || keys
            .iter()
            .all(|k| !b.l1_holds(k)))
        .await,
        "B's L1 still holds tagged keys"
    );
    for k in &keys {
        assert_eq!(value(&b, k).await, None, "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_ends_with_the_last_clone() {
    let server = RedisServer::start();
    let redis = Redis::connect(configure(RedisConfig::from_url(&server.url()).unwrap()))
        .await
        .unwrap();
    let first = TieredStore::new(redis.clone());
    live(&first).await;
    drop(first);
    let metrics = tokio::runtime::Handle::current().metrics();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = metrics.num_alive_tasks();
    let store = TieredStore::new(redis.clone());
    let clone = store.clone();
    assert!(
        eventually(Duration::from_secs(1), async || metrics.num_alive_tasks()
            == before + 1)
        .await
    );
    drop(store);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(metrics.num_alive_tasks(), before + 1, "a clone is alive");
    drop(clone);
    assert!(
        eventually(Duration::from_secs(1), async || metrics.num_alive_tasks()
            == before)
        .await,
        "the listener outlived the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_racing_writes_never_goes_back_to_an_older_value_and_sees_the_last() {
    let server = RedisServer::start();
    let (a, b, _silent) = fleet(&server.url(), Duration::from_secs(30)).await;
    const WRITES: u64 = 300;
    a.put("k", entry("0", 0, &[])).await.unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (b, done) = (b.clone(), done.clone());
        tokio::spawn(async move {
            let (mut last, mut reads, mut l1_reads) = (0u64, 0u64, 0u64);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let held = b.l1_holds("k");
                let seen: u64 = value(&b, "k").await.unwrap().parse().unwrap();
                assert!(
                    seen >= last,
                    "read {seen} after {last}: an old value came back"
                );
                last = seen;
                reads += 1;
                l1_reads += u64::from(held);
                // An L1 hit never suspends: let the listener and the writer run.
                tokio::task::yield_now().await;
            }
            (last, reads, l1_reads)
        })
    };
    for i in 1..=WRITES {
        a.put("k", entry(&i.to_string(), 0, &[])).await.unwrap();
        // Let the reader fill its L1 between some writes.
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let last = WRITES.to_string();
    assert!(
        eventually(Duration::from_secs(5), async || value(&b, "k")
            .await
            .as_deref()
            == Some(last.as_str()))
        .await
    );
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (seen, reads, l1_reads) = reader.await.unwrap();
    assert!(seen <= WRITES);
    assert!(reads > WRITES, "the reader ran alongside: {reads} reads");
    assert!(l1_reads > 0, "some reads were L1 hits");
}

/// `get_local` answers an L1 hit without I/O, exactly as `get` does, and leaves an L1 miss to
/// `get`; the plain Redis store answers nothing locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_local_answers_l1_hits_only() {
    let server = RedisServer::start();
    let (a, b, silent) = fleet(&server.url(), Duration::from_secs(30)).await;
    a.put("k", entry("v1", 0, &[])).await.unwrap();
    assert_eq!(
        b.get_local("k"),
        None,
        "not in B's L1 yet: only get can tell"
    );
    assert_eq!(filled(&b, "k").await.as_deref(), Some("v1"));
    assert_eq!(b.get_local("k"), Some(Some(Bytes::from("v1"))));
    assert_eq!(silent.get_local("k"), None);
    // A's write evicts B's copy: the local answer goes with it.
    a.put("k", entry("v2", 0, &[])).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || b.get_local("k").is_none()).await,
        "B's L1 kept the old value"
    );
    assert_eq!(value(&b, "k").await.as_deref(), Some("v2"));
}
