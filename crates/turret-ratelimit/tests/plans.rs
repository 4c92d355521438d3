//! Plans of several quotas (all-or-nothing), plans chosen per request and changed at run
//! time, and delay mode, in memory (the Redis side is in `redis.rs`).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::Mutex;
use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
use turret_ratelimit::{
    Algorithm, FakeMicrosClock, MemoryBackend, Outcome, Plan, Plans, Policy, Quota, RateLimitLayer,
    ResponseBody,
};

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Gcra,
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::SlidingLog,
];

fn decide(b: &MemoryBackend, plan: &Plan, cost: u32) -> Outcome {
    b.decide_plan_now("api", "client", plan, cost, Duration::ZERO)
}

/// `short` (2 a second) and `long` (3 an hour), under the given algorithms.
fn two_limits(short: Algorithm, long: Algorithm) -> Plan {
    Plan::new("short", Quota::per_second(2).with_algorithm(short))
        .and("long", Quota::per_hour(3).with_algorithm(long))
}

#[test]
fn a_request_is_admitted_only_if_every_limit_admits_and_a_refusal_spends_nothing() {
    for short in ALGORITHMS {
        for long in ALGORITHMS {
            let clock = FakeMicrosClock::default();
            let b = MemoryBackend::with_clock(clock.clone());
            let plan = two_limits(short, long);
            let case = format!("{short:?} + {long:?}");
            assert!(decide(&b, &plan, 1).allowed(), "{case}");
            assert!(decide(&b, &plan, 1).allowed(), "{case}");
            // The short limit refuses; the long one, which would admit, is not spent.
            for _ in 0..5 {
                let refused = decide(&b, &plan, 1);
                assert!(!refused.allowed(), "{case}");
                assert_eq!(refused.binding(), 0, "{case}: the short limit refused");
                assert!(refused.decisions()[1].allowed, "{case}");
                assert_eq!(
                    refused.decisions()[1].remaining,
                    1,
                    "{case}: the long limit reports what it has left without the refused request"
                );
            }
            // Two seconds later (a sliding window still counts the last one) the short limit
            // admits again: the long one still has its third.
            clock.advance(Duration::from_millis(2001));
            let third = decide(&b, &plan, 1);
            assert!(third.allowed(), "{case}: refusals spent the long limit");
            assert_eq!(third.decisions()[1].remaining, 0, "{case}");
            // Now the long limit refuses, and the short one keeps its quota.
            let refused = decide(&b, &plan, 1);
            assert!(!refused.allowed(), "{case}");
            assert_eq!(refused.binding(), 1, "{case}: the long limit refused");
            assert!(refused.decisions()[0].allowed, "{case}");
            assert_eq!(refused.decisions()[0].remaining, 1, "{case}");
        }
    }
}

#[test]
fn weighted_costs_apply_to_every_limit() {
    for alg in ALGORITHMS {
        let b = MemoryBackend::with_clock(FakeMicrosClock::default());
        let plan = Plan::new("a", Quota::per_minute(10).with_algorithm(alg))
            .and("b", Quota::per_hour(7).with_algorithm(alg));
        let o = decide(&b, &plan, 3);
        assert!(o.allowed(), "{alg:?}");
        assert_eq!(o.decisions()[0].remaining, 7, "{alg:?}");
        assert_eq!(o.decisions()[1].remaining, 4, "{alg:?}");
        assert!(decide(&b, &plan, 4).allowed(), "{alg:?}");
        // `b` has 0 left, `a` 3: a request of 3 is refused by `b` alone, and spends nothing.
        let o = decide(&b, &plan, 3);
        assert!(!o.allowed(), "{alg:?}");
        assert_eq!(o.binding(), 1, "{alg:?}");
        assert_eq!(o.decisions()[0].remaining, 3, "{alg:?}");
        assert!(
            decide(&b, &Plan::new("a", Quota::per_minute(10)), 1).allowed(),
            "{alg:?}: another plan's limit of the same name is its own"
        );
    }
}

#[test]
fn retry_after_is_when_every_limit_admits_again() {
    let clock = FakeMicrosClock::default();
    let b = MemoryBackend::with_clock(clock.clone());
    // One a second, and two per ten seconds (one every 5 s, burst 2).
    let plan =
        Plan::new("s", Quota::per_second(1)).and("t", Quota::per(Duration::from_secs(10), 2));
    assert!(decide(&b, &plan, 1).allowed());
    clock.advance(Duration::from_secs(1));
    assert!(decide(&b, &plan, 1).allowed());
    // Both refuse now: `s` for 1 s, `t` for longer.
    let refused = decide(&b, &plan, 1);
    assert!(!refused.allowed());
    assert!(!refused.decisions()[0].allowed && !refused.decisions()[1].allowed);
    let retry = refused.retry_after().expect("a time");
    assert_eq!(retry, refused.decisions()[1].retry_after.unwrap());
    assert!(retry > refused.decisions()[0].retry_after.unwrap());
    assert_eq!(refused.binding(), 1);
    clock.advance(retry - Duration::from_micros(1));
    assert!(
        !decide(&b, &plan, 1).allowed(),
        "admitted before the time given"
    );
    clock.advance(Duration::from_micros(1));
    assert!(decide(&b, &plan, 1).allowed(), "refused at the time given");
}

fn handler()
-> impl tower::Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    })
}

fn get(ip: &str, plan: Option<&str>) -> Request<String> {
    let mut r = Request::builder().uri("/").body(String::new()).unwrap();
    r.extensions_mut()
        .insert(format!("{ip}:1").parse::<SocketAddr>().unwrap());
    if let Some(plan) = plan {
        r.headers_mut().insert("x-plan", plan.parse().unwrap());
    }
    r
}

#[tokio::test]
async fn the_fields_list_every_limit_and_report_the_binding_one() {
    let clock = FakeMicrosClock::default();
    let plan: Plan = "2/1s,3/60s".parse().unwrap();
    let layer = RateLimitLayer::policies([Policy::with_plan("default", plan)])
        .backend(MemoryBackend::with_clock(clock.clone()));
    let svc: Svc = BoxCloneService::new(ServiceBuilder::new().layer(layer).service(handler()));
    let res = svc.clone().oneshot(get("192.0.2.1", None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["ratelimit-policy"],
        "\"default-1s\";q=2;w=1, \"default-60s\";q=3;w=60"
    );
    // After one: 1 left of the 1 s limit, 2 of the 60 s one: the 1 s limit is closest.
    assert_eq!(res.headers()["ratelimit"], "\"default-1s\";r=1;t=1");
    assert_eq!(res.headers()["x-ratelimit-limit"], "2");
    svc.clone().oneshot(get("192.0.2.1", None)).await.unwrap();
    let refused = svc.clone().oneshot(get("192.0.2.1", None)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["ratelimit"], "\"default-1s\";r=0;t=1");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        Bytes::from("Too Many Requests (limit \"default-1s\")\n")
    );

    clock.advance(Duration::from_secs(1));
    let third = svc.clone().oneshot(get("192.0.2.1", None)).await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);
    // Now the 60 s limit is the one closest to exhaustion (0 left, whole in 60 s).
    assert_eq!(third.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(third.headers()["x-ratelimit-limit"], "3");
    clock.advance(Duration::from_secs(1));
    let refused = svc.clone().oneshot(get("192.0.2.1", None)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The 60 s limit (a turn every 20 s) was spent at 0, 0 and 1 s: its next turn is at 20 s.
    assert_eq!(refused.headers()["retry-after"], "18");
    assert_eq!(refused.headers()["ratelimit"], "\"default-60s\";r=0;t=18");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        Bytes::from("Too Many Requests (limit \"default-60s\")\n")
    );
}

#[tokio::test]
async fn plans_are_chosen_per_request_overridden_per_key_and_changed_at_run_time() {
    let plans = Plans::new(Plan::new("free", Quota::per_hour(2)))
        .with(Plan::new("pro", Quota::per_hour(5)));
    let policy = Policy::with_plans("api", plans.clone())
        .select_plan(|req| req.headers.get("x-plan").and_then(|v| v.to_str().ok()));
    let layer = RateLimitLayer::policies([policy])
        .backend(MemoryBackend::with_clock(FakeMicrosClock::default()));
    let svc: Svc = BoxCloneService::new(ServiceBuilder::new().layer(layer).service(handler()));
    let admitted = |ip: &'static str, plan: Option<&'static str>, n: usize| {
        let svc = svc.clone();
        async move {
            let mut ok = 0;
            let mut last = None;
            for _ in 0..n {
                let res = svc.clone().oneshot(get(ip, plan)).await.unwrap();
                if res.status() == StatusCode::OK {
                    ok += 1;
                }
                last = Some(
                    res.headers()["ratelimit-policy"]
                        .to_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            (ok, last.unwrap())
        }
    };
    assert_eq!(
        admitted("192.0.2.1", None, 10).await,
        (2, "\"free\";q=2;w=3600".into())
    );
    assert_eq!(
        admitted("192.0.2.2", Some("pro"), 10).await,
        (5, "\"pro\";q=5;w=3600".into())
    );
    // An unknown plan gets the default.
    assert_eq!(admitted("192.0.2.3", Some("gold"), 10).await.0, 2);
    // An override for one key: ten times the default, whatever it selects.
    plans.override_key("192.0.2.4", plans.default_plan().scaled("partner", 10));
    assert_eq!(
        admitted("192.0.2.4", Some("pro"), 30).await,
        (20, "\"partner\";q=20;w=3600".into())
    );
    // Lowered at run time: the next decision uses the new quota, with what was spent.
    // Two of 5 an hour spent (2 × 12 min); at 2 an hour (30 min a turn, 60 min of
    // tolerance) there is room for one more, where the old quota had three.
    assert_eq!(admitted("192.0.2.5", Some("pro"), 2).await.0, 2);
    plans.set(Plan::new("pro", Quota::per_hour(2)));
    assert_eq!(admitted("192.0.2.5", Some("pro"), 5).await.0, 1);
    assert_eq!(admitted("192.0.2.6", Some("pro"), 5).await.0, 2);
    plans.remove("pro");
    assert_eq!(
        admitted("192.0.2.7", Some("pro"), 5).await.0,
        2,
        "back to the default"
    );
}

/// A service whose handler records when (tokio time) each request reached it.
fn delayed_stack(
    backend: MemoryBackend,
    quota: Quota,
    delay: Duration,
    max_waiting: u32,
    calls: Arc<Mutex<Vec<tokio::time::Instant>>>,
) -> Svc {
    let policy = Policy::new("default", quota)
        .delay(delay)
        .max_waiting(max_waiting);
    let layer = RateLimitLayer::policies([policy]).backend(backend);
    BoxCloneService::new(ServiceBuilder::new().layer(layer).service(service_fn(
        move |_req: Request<String>| {
            let calls = calls.clone();
            async move {
                calls.lock().await.push(tokio::time::Instant::now());
                Ok::<_, Infallible>(Response::new(String::from("ok")))
            }
        },
    )))
}

#[tokio::test(start_paused = true)]
async fn delay_mode_spaces_a_burst_at_the_rate_and_refuses_beyond_the_delay() {
    let calls = Arc::default();
    // 10 a second, one at a time: a turn every 100 ms; up to 450 ms of waiting.
    let quota = Quota::per_second(10).burst(1);
    let svc = delayed_stack(
        MemoryBackend::with_clock(FakeMicrosClock::default()),
        quota,
        Duration::from_millis(450),
        64,
        Arc::clone(&calls),
    );
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let svc = svc.clone();
        tasks.spawn(async move { svc.oneshot(get("192.0.2.1", None)).await.unwrap().status() });
    }
    let mut statuses = Vec::new();
    while let Some(s) = tasks.join_next().await {
        statuses.push(s.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    // At once, then 100, 200, 300 and 400 ms later; the rest would wait beyond 450 ms.
    assert_eq!(ok, 5, "{statuses:?}");
    let mut at: Vec<u128> = calls
        .lock()
        .await
        .iter()
        .map(|t| (*t - start).as_millis())
        .collect();
    at.sort_unstable();
    assert_eq!(at, [0, 100, 200, 300, 400]);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_gives_its_turn_back_and_waiters_are_bounded_per_key() {
    let calls: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let clock = FakeMicrosClock::default();
    let backend = MemoryBackend::with_clock(clock.clone());
    let quota = Quota::per_second(10).burst(1);
    let svc = delayed_stack(
        backend.clone(),
        quota,
        Duration::from_secs(10),
        2,
        Arc::clone(&calls),
    );
    let plan = Plan::new("default", quota);
    // First: at once. Second and third wait for 100 and 200 ms.
    assert_eq!(
        svc.clone()
            .oneshot(get("192.0.2.1", None))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let second = tokio::spawn(svc.clone().oneshot(get("192.0.2.1", None)));
    let third = tokio::spawn(svc.clone().oneshot(get("192.0.2.1", None)));
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    // Two wait: a third waiter of this key is decided without a delay, and refused.
    let refused = svc.clone().oneshot(get("192.0.2.1", None)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The second's client goes away: its turn (100 ms) comes back.
    second.abort();
    assert!(second.await.unwrap_err().is_cancelled());
    // Without the refund the next turn would be at 300 ms; with it, 200 ms, as the third's.
    let probe = backend.decide_plan_now("default", "192.0.2.1", &plan, 1, Duration::from_secs(10));
    assert!(probe.allowed());
    assert_eq!(probe.delay(), Duration::from_millis(200));
    assert_eq!(third.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(
        calls.lock().await.len(),
        2,
        "the first and the third reached the handler"
    );
}

#[test]
fn a_limit_changed_at_run_time_keeps_what_was_spent_under_it() {
    let b = MemoryBackend::with_clock(FakeMicrosClock::default());
    let fixed = |n| Quota::per_hour(n).with_algorithm(Algorithm::FixedWindow);
    let before = Plan::new("x", Quota::per_minute(100)).and("y", fixed(5));
    for _ in 0..5 {
        assert!(decide(&b, &before, 1).allowed());
    }
    assert!(!decide(&b, &before, 1).allowed());
    // `y` raised to 6: the five spent still count, so one more is admitted, not six.
    let after = Plan::new("x", Quota::per_minute(100)).and("y", fixed(6));
    let o = decide(&b, &after, 1);
    assert!(o.allowed());
    assert_eq!(o.decisions()[1].remaining, 0);
    assert_eq!(
        o.decisions()[0].remaining,
        94,
        "x: six admitted, the refusal spent nothing"
    );
    assert!(!decide(&b, &after, 1).allowed());
}
