//! turret-redis against a real redis-server and a real 3-master Redis Cluster.

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use turret_redis::{BreakerConfig, BreakerState, Error, Event, Redis, RedisConfig, Script};
use turret_testkit::{RedisCluster, RedisServer};

static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "swap",
        "local a = redis.call('GET', KEYS[1]) \
         redis.call('SET', KEYS[1], ARGV[1]) \
         redis.call('SET', KEYS[2], ARGV[2]) \
         return a",
    )
});

fn config(url: &str) -> RedisConfig {
    RedisConfig::from_url(url)
        .unwrap()
        .command_timeout(Duration::from_millis(500))
}

/// Retries `f` until it is `Ok`, for at most `within`.
async fn eventually<T>(within: Duration, mut f: impl AsyncFnMut() -> Result<T, Error>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("still failing after {within:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

async fn next(sub: &mut turret_redis::Subscription) -> Option<Event> {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("an event within 5 s")
}

#[tokio::test]
async fn commands_round_trip_in_the_namespace() {
    let server = RedisServer::start();
    let redis = Redis::connect(config(&server.url())).await.unwrap();
    let key = redis.key("t").part("a").build();
    assert_eq!(key, "turret:t:a");
    let _: () = redis
        .query(redis::cmd("SET").arg(&key).arg("v"))
        .await
        .unwrap();
    let v: String = server.cmd(&["GET", "turret:t:a"]);
    assert_eq!(v, "v");
    let got: Option<String> = redis.query(redis::cmd("GET").arg(&key)).await.unwrap();
    assert_eq!(got.as_deref(), Some("v"));
}

#[tokio::test]
async fn connect_fails_with_an_error_when_nothing_listens() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.stop();
    let err = Redis::connect(config(&url).connect_timeout(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[tokio::test]
async fn wrong_password_is_an_error_not_a_panic() {
    let server = RedisServer::start_with_args(&["--requirepass", "s3cret"]);
    let good = format!("redis://:s3cret@127.0.0.1:{}/", server.port());
    let redis = Redis::connect(config(&good)).await.unwrap();
    let _: () = redis
        .query(redis::cmd("SET").arg("k").arg(1))
        .await
        .unwrap();
    let bad = format!("redis://:nope@127.0.0.1:{}/", server.port());
    let err = Redis::connect(config(&bad)).await.unwrap_err();
    assert!(matches!(err, Error::Redis(_)), "{err}");
    assert!(
        !format!("{redis:?}").contains("s3cret"),
        "Debug never shows the password"
    );
}

#[tokio::test]
async fn evalsha_recovers_after_script_flush() {
    let server = RedisServer::start();
    let redis = Redis::connect(config(&server.url())).await.unwrap();
    let k1 = redis.key("s").tag("x").part("1").build();
    let k2 = redis.key("s").tag("x").part("2").build();
    let first: Option<String> = SWAP
        .key(&k1)
        .key(&k2)
        .arg("a")
        .arg("b")
        .invoke(&redis)
        .await
        .unwrap();
    assert_eq!(first, None);

    let _: String = server.cmd(&["SCRIPT", "FLUSH"]);
    let exists: Vec<i64> = server.cmd(&["SCRIPT", "EXISTS", SWAP.sha1()]);
    assert_eq!(exists, vec![0]);

    let second: Option<String> = SWAP
        .key(&k1)
        .key(&k2)
        .arg("c")
        .arg("d")
        .invoke(&redis)
        .await
        .unwrap();
    assert_eq!(second.as_deref(), Some("a"));
    let exists: Vec<i64> = server.cmd(&["SCRIPT", "EXISTS", SWAP.sha1()]);
    assert_eq!(exists, vec![1], "the fallback EVAL cached the script again");
}

#[tokio::test]
async fn preload_loads_scripts() {
    let server = RedisServer::start();
    let redis = Redis::connect(config(&server.url())).await.unwrap();
    redis.preload(&[&SWAP]).await.unwrap();
    let exists: Vec<i64> = server.cmd(&["SCRIPT", "EXISTS", SWAP.sha1()]);
    assert_eq!(exists, vec![1]);
}

#[tokio::test]
async fn script_errors_surface_and_do_not_trip_the_breaker() {
    let server = RedisServer::start();
    let cfg = config(&server.url()).breaker(BreakerConfig {
        failure_threshold: 1,
        cool_down: Duration::from_secs(60),
    });
    let redis = Redis::connect(cfg).await.unwrap();
    let bad = Script::new("bad", "return redis.call('NOPE')");
    let err = bad.prepare().invoke::<()>(&redis).await.unwrap_err();
    assert!(matches!(err, Error::Redis(_)), "{err}");
    assert!(!err.is_unavailable());
    assert_eq!(redis.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn reconnects_by_itself_after_restart() {
    let mut server = RedisServer::start();
    let redis = Redis::connect(config(&server.url())).await.unwrap();
    let _: () = redis
        .query(redis::cmd("SET").arg("k").arg("before"))
        .await
        .unwrap();
    server.restart();
    // The restarted server is empty (no persistence) and the handle finds it again.
    let got: Option<String> = eventually(Duration::from_secs(10), async || {
        redis.query(redis::cmd("GET").arg("k")).await
    })
    .await;
    assert_eq!(got, None);
    let _: () = redis
        .query(redis::cmd("SET").arg("k").arg("after"))
        .await
        .unwrap();
}

#[tokio::test]
async fn connect_lazy_starts_without_redis_and_works_once_it_is_up() {
    let mut server = RedisServer::start();
    server.stop();
    let redis = Redis::connect_lazy(config(&server.url())).unwrap();
    let err = redis
        .query::<String>(&redis::cmd("PING"))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    server.restart();
    let pong: String = eventually(Duration::from_secs(10), async || {
        redis.query(&redis::cmd("PING")).await
    })
    .await;
    assert_eq!(pong, "PONG");
}

#[tokio::test]
async fn command_timeout_bounds_a_call_to_a_paused_server() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(100);
    let redis = Redis::connect(config(&server.url()).command_timeout(timeout))
        .await
        .unwrap();
    server.pause(Duration::from_secs(2));
    let start = Instant::now();
    let err = redis
        .query::<Option<String>>(redis::cmd("GET").arg("k"))
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(err, Error::Timeout(t) if t == timeout), "{err}");
    assert!(
        elapsed < Duration::from_secs(1),
        "waited {elapsed:?}, not ~{timeout:?}"
    );
}

#[tokio::test]
async fn breaker_opens_when_redis_dies_and_closes_after_restart() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let cool_down = Duration::from_millis(300);
    let cfg = config(&server.url())
        .command_timeout(timeout)
        .breaker(BreakerConfig {
            failure_threshold: 3,
            cool_down,
        });
    let redis = Redis::connect(cfg).await.unwrap();
    let ping = || async { redis.query::<String>(&redis::cmd("PING")).await };
    ping().await.unwrap();

    server.stop();
    let mut failures = 0;
    while redis.breaker_state() != BreakerState::Open {
        assert!(ping().await.is_err());
        failures += 1;
        assert!(
            failures <= 3,
            "breaker still closed after {failures} failures"
        );
    }

    // While open, a call fails at once, with no network I/O.
    let start = Instant::now();
    let err = ping().await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(err, Error::Unavailable), "{err}");
    assert!(
        elapsed < Duration::from_millis(5),
        "open breaker took {elapsed:?}"
    );

    server.restart();
    let pong = eventually(Duration::from_secs(10), ping).await;
    assert_eq!(pong, "PONG");
    assert_eq!(redis.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn pubsub_delivers_to_every_subscription_of_the_channel() {
    let server = RedisServer::start();
    let a = Redis::connect(config(&server.url())).await.unwrap();
    let b = Redis::connect(config(&server.url())).await.unwrap();
    let mut s1 = a.subscribe("inval").await.unwrap();
    let mut s2 = a.subscribe("inval").await.unwrap();
    assert_eq!(s1.channel(), "turret:inval");

    // Subscribing happens in the background: publish until someone hears it.
    let n = eventually(Duration::from_secs(5), async || {
        match b.publish("inval", b"k1").await? {
            0 => Err(Error::Unavailable),
            n => Ok(n),
        }
    })
    .await;
    assert_eq!(n, 1, "one subscriber connection per handle");
    assert_eq!(next(&mut s1).await, Some(Event::Message("k1".into())));
    assert_eq!(next(&mut s2).await, Some(Event::Message("k1".into())));
}

#[tokio::test]
async fn subscription_reports_a_gap_and_resubscribes_after_restart() {
    let mut server = RedisServer::start();
    let a = Redis::connect(config(&server.url())).await.unwrap();
    let b = Redis::connect(config(&server.url())).await.unwrap();
    let mut sub = a.subscribe("ch").await.unwrap();
    eventually(Duration::from_secs(5), async || {
        match b.publish("ch", b"1").await? {
            0 => Err(Error::Unavailable),
            _ => Ok(()),
        }
    })
    .await;
    assert_eq!(sub.recv().await, Some(Event::Message("1".into())));

    server.restart();
    let event = next(&mut sub).await;
    assert_eq!(event, Some(Event::Gap));
    eventually(Duration::from_secs(10), async || {
        match b.publish("ch", b"2").await? {
            0 => Err(Error::Unavailable),
            _ => Ok(()),
        }
    })
    .await;
    let event = next(&mut sub).await;
    assert_eq!(event, Some(Event::Message("2".into())));
}

#[tokio::test]
async fn cluster_runs_scripts_pipelines_and_pubsub() {
    let cluster = RedisCluster::start(3);
    let redis = Redis::connect(config(&cluster.url())).await.unwrap();
    assert!(redis.is_cluster());

    // Hash-tagged keys of one call share a slot whatever the (hostile) tag, and the tags
    // spread over every master.
    let mut masters = std::collections::HashSet::new();
    for i in 0..64 {
        let tag = format!(
            "{{{:x}}}:\n*",
            (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        );
        let k1 = redis.key("s").tag(&tag).part("a").build();
        let k2 = redis.key("s").tag(&tag).part("b").build();
        let _: Option<String> = SWAP
            .key(&k1)
            .key(&k2)
            .arg("x")
            .arg("y")
            .invoke(&redis)
            .await
            .unwrap();
        masters.insert(cluster.master_of(&k1).port());
        let got: String = redis.query(redis::cmd("GET").arg(&k2)).await.unwrap();
        assert_eq!(got, "y");
    }
    assert_eq!(masters.len(), 3, "keys landed on every master");

    // EVALSHA after SCRIPT FLUSH on every node.
    for node in cluster.nodes() {
        let _: String = node.cmd(&["SCRIPT", "FLUSH"]);
    }
    let k1 = redis.key("s").tag("t").part("a").build();
    let k2 = redis.key("s").tag("t").part("b").build();
    let _: Option<String> = SWAP
        .key(&k1)
        .key(&k2)
        .arg("1")
        .arg("2")
        .invoke(&redis)
        .await
        .unwrap();
    redis.preload(&[&SWAP]).await.unwrap();
    for node in cluster.nodes() {
        let exists: Vec<i64> = node.cmd(&["SCRIPT", "EXISTS", SWAP.sha1()]);
        assert_eq!(exists, vec![1], "preloaded on node {}", node.port());
    }

    // A pipeline within one slot.
    let k3 = redis.key("s").tag("t").part("n").build();
    let mut pipe = redis::pipe();
    pipe.cmd("INCR").arg(&k3).cmd("INCRBY").arg(&k3).arg(10);
    let (a, b): (i64, i64) = redis.pipeline(&pipe).await.unwrap();
    assert_eq!((a, b), (1, 11));

    // Pub/sub across two independent handles.
    let other = Redis::connect(config(&cluster.url())).await.unwrap();
    let mut sub = redis.subscribe("bcast").await.unwrap();
    eventually(Duration::from_secs(5), async || {
        match other.publish("bcast", b"hi").await? {
            0 => Err(Error::Unavailable),
            _ => Ok(()),
        }
    })
    .await;
    let event = next(&mut sub).await;
    assert_eq!(event, Some(Event::Message("hi".into())));
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn rediss_with_a_private_ca() {
    let (server, ca) = RedisServer::start_tls();
    let url = format!("rediss://127.0.0.1:{}/", server.tls_port().unwrap());
    let redis = Redis::connect(config(&url).tls_root_certificate(ca.clone()))
        .await
        .unwrap();
    let pong: String = redis.query(&redis::cmd("PING")).await.unwrap();
    assert_eq!(pong, "PONG");
    let mut sub = redis.subscribe("tls").await.unwrap();
    eventually(Duration::from_secs(5), async || {
        match redis.publish("tls", b"x").await? {
            0 => Err(Error::Unavailable),
            _ => Ok(()),
        }
    })
    .await;
    assert_eq!(next(&mut sub).await, Some(Event::Message("x".into())));

    // Without the CA the server's certificate is not trusted.
    let err = Redis::connect(config(&url)).await.unwrap_err();
    assert!(matches!(err, Error::Redis(_)), "{err}");
}
