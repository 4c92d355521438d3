//! Plans of several quotas, quotas changed at run time and delay mode against a real
//! redis-server and a real 3-master Redis Cluster.
#![cfg(feature = "redis")]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{Request, Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
use turret_ratelimit::{
    Algorithm, Backend, Decide, Outcome, Plan, Plans, Policy, Quota, RateLimitLayer, RedisBackend,
    ResponseBody,
};
use turret_redis::{Redis, RedisConfig};
use turret_testkit::{RedisCluster, RedisServer};

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Gcra,
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::SlidingLog,
];

async fn redis(url: &str) -> Redis {
    let config = RedisConfig::from_url(url)
        .unwrap()
        .command_timeout(Duration::from_millis(2000));
    Redis::connect(config).await.unwrap()
}

async fn decide(
    b: &RedisBackend,
    key: &str,
    plan: &Plan,
    cost: u32,
    max_delay: Duration,
) -> Outcome {
    match b.decide("api", key, plan, cost, max_delay) {
        Decide::Pending(f) => f.await.unwrap(),
        Decide::Ready(r) => r.unwrap(),
    }
}

/// A window long enough that no test crosses a fixed window's edge.
fn long(count: u32, alg: Algorithm) -> Quota {
    Quota::per(Duration::from_secs(1_000_000), count).with_algorithm(alg)
}

/// Under every pair of algorithms: a limit that refuses leaves the other unspent, read back
/// from Redis through a plan of that limit alone (the same key).
async fn all_or_nothing(url: &str) {
    let b = RedisBackend::new(redis(url).await);
    for x_alg in ALGORITHMS {
        for y_alg in ALGORITHMS {
            let case = format!("{x_alg:?} + {y_alg:?}");
            let key = format!("client-{x_alg:?}-{y_alg:?}");
            // `y` refuses first.
            let plan = Plan::new("x", long(5, x_alg)).and("y", long(2, y_alg));
            for _ in 0..2 {
                assert!(
                    decide(&b, &key, &plan, 1, Duration::ZERO).await.allowed(),
                    "{case}"
                );
            }
            for _ in 0..3 {
                let o = decide(&b, &key, &plan, 1, Duration::ZERO).await;
                assert!(!o.allowed(), "{case}");
                assert_eq!(o.binding(), 1, "{case}");
                assert_eq!(o.decisions()[0].remaining, 3, "{case}: what x has left");
            }
            let x_alone = Plan::new("x", long(5, x_alg));
            let probe = decide(&b, &key, &x_alone, 1, Duration::ZERO).await;
            assert!(probe.allowed(), "{case}");
            assert_eq!(
                probe.decisions()[0].remaining,
                2,
                "{case}: refusals spent x"
            );

            // `x` refuses first, weighted: each request costs 2 of both.
            let key = format!("{key}-w");
            let plan = Plan::new("x", long(2, x_alg)).and("y", long(10, y_alg));
            assert!(
                decide(&b, &key, &plan, 2, Duration::ZERO).await.allowed(),
                "{case}"
            );
            for _ in 0..3 {
                let o = decide(&b, &key, &plan, 2, Duration::ZERO).await;
                assert!(!o.allowed(), "{case}");
                assert_eq!(o.binding(), 0, "{case}");
                assert_eq!(o.decisions()[1].remaining, 8, "{case}");
            }
            let y_alone = Plan::new("y", long(10, y_alg));
            let probe = decide(&b, &key, &y_alone, 1, Duration::ZERO).await;
            assert_eq!(
                probe.decisions()[0].remaining,
                7,
                "{case}: refusals spent y"
            );
        }
    }
}

#[tokio::test]
async fn several_quotas_are_all_or_nothing_on_one_node() {
    let server = RedisServer::start();
    all_or_nothing(&server.url()).await;
}

#[tokio::test]
async fn several_quotas_are_all_or_nothing_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    all_or_nothing(&cluster.url()).await;
}

fn get(ip: &str) -> Request<String> {
    let mut r = Request::new(String::new());
    r.extensions_mut()
        .insert(format!("{ip}:1").parse::<SocketAddr>().unwrap());
    r
}

/// A service recording when each request reached the handler.
fn service(
    layer: RateLimitLayer<turret_ratelimit::PeerIp, RedisBackend>,
    calls: Arc<Mutex<Vec<Instant>>>,
) -> Svc {
    BoxCloneService::new(ServiceBuilder::new().layer(layer).service(service_fn(
        move |_: Request<String>| {
            calls.lock().unwrap().push(Instant::now());
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        },
    )))
}

/// Sends `total` requests of one client at once, spread over `fleet`: the statuses.
async fn burst(fleet: &[Svc], total: usize) -> (usize, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let svc = fleet[i % fleet.len()].clone();
        tasks.spawn(async move { svc.oneshot(get("203.0.113.9")).await.unwrap().status() });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(status) = tasks.join_next().await {
        match status.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    (ok, limited)
}

/// Four instances, two quotas: exactly the smaller passes, and the larger is spent by
/// exactly the admitted requests.
async fn fleet_two_quotas(url: &str, alg: Algorithm) {
    let plan = Plan::new("x", long(100, alg)).and("y", long(60, Algorithm::Gcra));
    let calls = Arc::default();
    let mut fleet = Vec::new();
    for _ in 0..4 {
        let layer = RateLimitLayer::policies([Policy::with_plan("api", plan.clone())])
            .backend(RedisBackend::new(redis(url).await));
        fleet.push(service(layer, Arc::clone(&calls)));
    }
    let (ok, limited) = burst(&fleet, 1000).await;
    assert_eq!((ok, limited), (60, 940), "{alg:?}");
    assert_eq!(calls.lock().unwrap().len(), 60);
    let probe = RedisBackend::new(redis(url).await);
    let x_alone = Plan::new("x", long(100, alg));
    let o = decide(&probe, "203.0.113.9", &x_alone, 1, Duration::ZERO).await;
    assert_eq!(
        o.decisions()[0].remaining,
        39,
        "{alg:?}: x spent by refusals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_admits_exactly_the_tightest_of_two_quotas_on_one_node() {
    let server = RedisServer::start();
    fleet_two_quotas(&server.url(), Algorithm::SlidingWindow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_admits_exactly_the_tightest_of_two_quotas_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    fleet_two_quotas(&cluster.url(), Algorithm::SlidingLog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_lowered_at_run_time_holds_fleet_wide_from_the_next_decision() {
    let server = RedisServer::start();
    // Each instance has its own handle, as separate processes would; both are changed.
    let handles: Vec<Plans> = (0..2)
        .map(|_| Plans::new(Plan::new("api", Quota::per_minute(10))))
        .collect();
    let mut fleet = Vec::new();
    for plans in &handles {
        let layer = RateLimitLayer::policies([Policy::with_plans("api", plans.clone())])
            .backend(RedisBackend::new(redis(&server.url()).await));
        fleet.push(service(layer, Arc::default()));
    }
    // Five of ten a minute spent (5 × 6 s of the 60 s tolerance).
    assert_eq!(burst(&fleet, 5).await, (5, 0));
    for plans in &handles {
        plans.set_default(Plan::new("api", Quota::per_minute(2)));
    }
    // At two a minute a turn is 30 s: the 30 s spent leave room for one, where the old quota
    // had five.
    assert_eq!(burst(&fleet, 6).await, (1, 5));
    let res = fleet[1].clone().oneshot(get("203.0.113.9")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["ratelimit-policy"], "\"api\";q=2;w=60");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_mode_spaces_a_fleets_burst_at_the_rate_and_refuses_none_within_the_bound() {
    let server = RedisServer::start();
    // Ten a second, one at a time (a turn every 100 ms), three instances, a burst of three
    // seconds' worth; up to 4 s of waiting.
    let quota = Quota::per_second(10).burst(1);
    let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut fleet = Vec::new();
    for _ in 0..3 {
        let policy = Policy::new("api", quota).delay(Duration::from_secs(4));
        let layer = RateLimitLayer::policies([policy])
            .backend(RedisBackend::new(redis(&server.url()).await));
        fleet.push(service(layer, Arc::clone(&calls)));
    }
    assert_eq!(
        burst(&fleet, 30).await,
        (30, 0),
        "none refused within the delay"
    );
    let mut at = calls.lock().unwrap().clone();
    at.sort_unstable();
    assert_eq!(at.len(), 30);
    // Spaced at the rate fleet-wide: any ten consecutive turns span at least ~a second.
    for i in 0..at.len() - 10 {
        let span = at[i + 10] - at[i];
        assert!(
            span >= Duration::from_millis(950),
            "turns {i}..{}: {span:?}",
            i + 10
        );
    }
    assert!(
        at[29] - at[0] >= Duration::from_millis(2850),
        "{:?}",
        at[29] - at[0]
    );
    // And a burst beyond the bound is refused as without delay.
    let (ok, limited) = burst(&fleet, 60).await;
    assert!(limited > 0 && ok <= 41, "{ok} admitted, {limited} refused");
}

#[tokio::test]
async fn a_turn_given_back_on_redis_is_taken_by_the_next_request() {
    let server = RedisServer::start();
    let b = RedisBackend::new(redis(&server.url()).await);
    let plan = Plan::new("api", Quota::per_second(10).burst(1));
    let max = Duration::from_secs(2);
    let delays: Vec<Duration> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(decide(&b, "k", &plan, 1, max).await.delay());
        }
        v
    };
    assert_eq!(delays[0], Duration::ZERO);
    let ms = |d: Duration| d.as_millis();
    assert!((90..=100).contains(&ms(delays[1])), "{delays:?}");
    assert!((190..=200).contains(&ms(delays[2])), "{delays:?}");
    // The third's client goes away: its turn comes back (the refund is a call of its own).
    let tat_key = b.redis_key("api", "k", Algorithm::Gcra);
    let get = turret_redis::redis::cmd("GET").arg(&tat_key).clone();
    let before: u64 = b.redis().query::<Option<u64>>(&get).await.unwrap().unwrap();
    b.refund("api", "k", &plan, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now: Option<u64> = b.redis().query(&get).await.unwrap();
        if now.is_some_and(|t| t + 100_000 == before) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the turn was not given back: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The next request gets the third's turn (about 200 ms), not the one after (300 ms).
    let next = decide(&b, "k", &plan, 1, max).await;
    assert!(next.allowed());
    assert!(
        (150..=200).contains(&ms(next.delay())),
        "{:?}",
        next.delay()
    );
}

#[tokio::test]
async fn a_plans_keys_are_its_limits_keys_built_one_by_one() {
    // Decisions build a plan's keys from one escaped stem; they must be the keys that
    // `KeyBuilder` makes for each limit, hostile and hashed (too long) client keys included.
    let server = RedisServer::start();
    let handle = redis(&server.url()).await;
    let b = RedisBackend::new(handle.clone());
    let huge = "x".repeat(64 * 1024);
    let plan = Plan::new("api", Quota::per_second(5))
        .and("daily:{x}", long(20, Algorithm::FixedWindow))
        .and(&"n".repeat(300), long(3, Algorithm::SlidingLog));
    for key in [
        "client",
        "}{evil}",
        "a:b:*",
        "line\nbreak\0nul",
        "",
        huge.as_str(),
    ] {
        let o = decide(&b, key, &plan, 1, Duration::ZERO).await;
        assert!(o.allowed(), "{key:?}");
        let expected: Vec<String> = plan
            .limits()
            .iter()
            .map(|l| {
                let mut k = handle.key("rl").tag(format!("api/{key}"));
                if l.name() != "api" {
                    k = k.part(l.name());
                }
                k.part(match l.quota().algorithm() {
                    Algorithm::Gcra => "gcra",
                    Algorithm::FixedWindow => "fixed_window",
                    Algorithm::SlidingWindow => "sliding_window",
                    Algorithm::SlidingLog => "sliding_log",
                    other => panic!("{other:?}"),
                })
                .build()
            })
            .collect();
        assert_eq!(b.plan_keys("api", key, &plan), expected, "{key:?}");
        for k in &expected {
            let exists: i64 = server.cmd(&["EXISTS", k]);
            assert_eq!(exists, 1, "{k} was written by the decision");
        }
    }
}
