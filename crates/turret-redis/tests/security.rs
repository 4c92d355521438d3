//! Redis security properties (SECURITY.md): an ACL user limited to turret's commands, key
//! prefix and channels works, over plain TCP and over TLS (`rediss://`), and nothing secret
//! is logged — every `tracing` event of the process is captured and searched for the
//! password, through connects, scripts, pub/sub, wrong passwords, an outage with its
//! breaker changes, and the recovery.

use std::{
    fmt::Write as _,
    sync::{LazyLock, Mutex, OnceLock},
    time::{Duration, Instant},
};

use tracing::{
    Event, Metadata, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
    subscriber::Interest,
};
use turret_redis::{BreakerConfig, Error, Redis, RedisConfig, Script};
use turret_testkit::RedisServer;

/// Everything logged by this test binary, at every level, fields included.
static LOGS: Mutex<String> = Mutex::new(String::new());

struct Capture;

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={}", field.name(), value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let _ = write!(self.0, " {}={} ({:?})", field.name(), value, value);
    }
}

impl Subscriber for Capture {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::always()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut logs = LOGS.lock().unwrap();
        let _ = write!(logs, "\nspan {}", span.metadata().name());
        span.record(&mut Fields(&mut logs));
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, values: &Record<'_>) {
        values.record(&mut Fields(&mut LOGS.lock().unwrap()));
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut logs = LOGS.lock().unwrap();
        let _ = write!(
            logs,
            "\n{} {}",
            event.metadata().level(),
            event.metadata().target()
        );
        event.record(&mut Fields(&mut logs));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

fn capture_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(Capture).expect("the only subscriber");
    });
}

fn assert_not_logged(secret: &str) {
    let logs = LOGS.lock().unwrap();
    assert!(!logs.contains(secret), "the password was logged:\n{logs}");
}

/// The commands turret's layers send (SECURITY.md lists them), and those a connection
/// needs to start (`HELLO` for the RESP3 subscriber).
const COMMANDS: &str = "+ping +get +set +del +exists +incr +incrby +time +pexpire +pttl \
     +hget +hset +hmget +hgetall +hdel +hkeys +sadd +sscan +zadd +zrem +zscan +zcard +zrange \
     +zremrangebyscore +zscore +eval +evalsha +script +publish +subscribe +unsubscribe \
     +hello";

/// Creates the ACL user `turret` with `password`, limited to [`COMMANDS`], keys under
/// `turret:` and channels under `turret:`.
fn acl_user(server: &RedisServer, password: &str) {
    let mut args = vec![
        "ACL",
        "SETUSER",
        "turret",
        "reset",
        "on",
        "resetkeys",
        "~turret:*",
        "resetchannels",
        "&turret:*",
        "-@all",
    ];
    let pass = format!(">{password}");
    args.push(&pass);
    args.extend(COMMANDS.split_whitespace());
    let _: String = server.cmd(&args);
}

static INCR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "incr",
        "local n = redis.call('INCR', KEYS[1]) redis.call('PEXPIRE', KEYS[1], ARGV[1]) return n",
    )
});

fn config(url: &str) -> RedisConfig {
    RedisConfig::from_url(url)
        .unwrap()
        .command_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(2))
        .breaker(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_millis(100),
        })
}

/// Redis refused the command for lack of permission.
fn refused(err: &Error) -> bool {
    let text = err.to_string().to_lowercase();
    text.contains("noperm") || text.contains("no permissions") || text.contains("can't access")
}

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

/// What every layer does with its handle: a script on a namespaced key, a plain command,
/// and a publish that a subscriber of the same handle receives.
async fn exercise(redis: &Redis) {
    let key = redis.key("sec").tag("client").build();
    let n: i64 = INCR.key(&key).arg(60_000).invoke(redis).await.unwrap();
    assert!(n >= 1);
    let got: Option<String> = redis.query(redis::cmd("GET").arg(&key)).await.unwrap();
    assert_eq!(got, Some(n.to_string()));
    let channel = redis.channel("sec");
    let mut sub = redis.subscribe(&channel).await.unwrap();
    eventually(Duration::from_secs(5), async || {
        match redis.publish(&channel, b"hello").await? {
            0 => Err(Error::Unavailable),
            _ => Ok(()),
        }
    })
    .await;
    let event = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("a message within 5 s");
    assert_eq!(event, Some(turret_redis::Event::Message("hello".into())));
}

#[tokio::test]
async fn an_acl_user_limited_to_the_namespace_works_and_cannot_leave_it() {
    capture_logs();
    let secret = "acl-pw-7c1d5e0b";
    let server = RedisServer::start();
    acl_user(&server, secret);
    let url = format!("redis://turret:{secret}@127.0.0.1:{}/", server.port());
    let redis = Redis::connect(config(&url)).await.unwrap();
    exercise(&redis).await;

    // The ACL is in force: outside the prefix, and other commands, are refused.
    let err = redis
        .query::<Option<String>>(redis::cmd("GET").arg("other:key"))
        .await
        .unwrap_err();
    assert!(refused(&err), "{err}");
    let err = redis
        .query::<String>(&redis::cmd("FLUSHALL"))
        .await
        .unwrap_err();
    assert!(refused(&err), "{err}");
    assert!(!err.is_unavailable(), "a refused command is not an outage");

    // A script's own commands are checked too.
    let escape = Script::new("escape", "return redis.call('GET', 'other:key')");
    let err = escape
        .key(redis.key("sec").tag("x").build())
        .invoke::<Option<String>>(&redis)
        .await
        .unwrap_err();
    assert!(refused(&err), "{err}");

    // A wrong password for the same user is an error, not a panic, and says nothing secret.
    let wrong = format!("redis://turret:not-{secret}@127.0.0.1:{}/", server.port());
    let err = Redis::connect(config(&wrong)).await.unwrap_err();
    assert!(
        !err.is_unavailable() || matches!(err, Error::Redis(_)),
        "{err}"
    );
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(!format!("{redis:?}").contains(secret));
    assert_not_logged(secret);
}

#[tokio::test]
async fn nothing_secret_is_logged_through_an_outage_and_recovery() {
    capture_logs();
    let secret = "legacy-pw-93b0a4f2";
    let mut server = RedisServer::start_with_args(&["--requirepass", secret]);
    let url = server.url();
    assert!(url.contains(secret));
    let redis = Redis::connect(config(&url)).await.unwrap();
    exercise(&redis).await;
    // NOSCRIPT recovery logs the script's name.
    let _: String = server.cmd(&["SCRIPT", "FLUSH"]);
    let key = redis.key("sec").tag("n").build();
    let _: i64 = INCR.key(&key).arg(1000).invoke(&redis).await.unwrap();

    // Outage: commands fail, the breaker opens (logged), the subscriber loses its connection
    // (logged), then Redis comes back and everything recovers (logged).
    server.stop();
    for _ in 0..5 {
        let _ = redis.query::<String>(&redis::cmd("PING")).await;
    }
    server.restart();
    eventually(Duration::from_secs(10), async || {
        redis.query::<String>(&redis::cmd("PING")).await
    })
    .await;
    let _: i64 = eventually(Duration::from_secs(5), async || {
        INCR.key(&key).arg(1000).invoke(&redis).await
    })
    .await;

    // Configuration errors name the URL without its password.
    for bad in [
        format!("bogus://user:{secret}@127.0.0.1:1"),
        format!("redis+cluster://user:{secret}@"),
    ] {
        let err = RedisConfig::from_url(&bad).unwrap_err();
        assert!(!err.to_string().contains(secret), "{err}");
    }
    // Connecting where nothing listens.
    let port = server.port();
    server.stop();
    let err = Redis::connect(
        config(&format!("redis://:{secret}@127.0.0.1:{port}/"))
            .connect_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(secret));
    assert_not_logged(secret);
    let logs = LOGS.lock().unwrap();
    assert!(
        logs.contains("circuit breaker"),
        "the outage was logged (so the search above saw it):\n{logs}"
    );
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn an_acl_user_over_tls_with_a_private_ca() {
    capture_logs();
    let secret = "tls-acl-pw-4e6f0c21";
    let (server, ca) = RedisServer::start_tls();
    acl_user(&server, secret);
    let url = format!(
        "rediss://turret:{secret}@127.0.0.1:{}/",
        server.tls_port().unwrap()
    );
    let redis = Redis::connect(config(&url).tls_root_certificate(ca.clone()))
        .await
        .unwrap();
    exercise(&redis).await;
    let err = redis
        .query::<Option<String>>(redis::cmd("GET").arg("other:key"))
        .await
        .unwrap_err();
    assert!(refused(&err), "{err}");
    // The wrong password over TLS: an error, nothing secret in it.
    let wrong = format!(
        "rediss://turret:nope@127.0.0.1:{}/",
        server.tls_port().unwrap()
    );
    let err = Redis::connect(config(&wrong).tls_root_certificate(ca))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Redis(_)), "{err}");
    assert!(!format!("{redis:?}").contains(secret));
    assert_not_logged(secret);
}
