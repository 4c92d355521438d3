//! Redis `SIGKILL`ed in the middle of a load, then restarted (empty), for every layer and
//! failure mode. Each test runs [`common::kill_and_restart`]: 16 tasks send requests through
//! the layer continuously; Redis is killed; once the handle's breaker is open, 49 of 50
//! requests sent in a row complete, together, before one command timeout would have elapsed
//! (the 50th may be the breaker's probe, bounded by the timeout); every request is
//! answered as the failure mode says (fail-open layers: never a 5xx; fail-closed: 503, fast);
//! after the restart the layer is back to its normal, Redis-backed, fleet-wide job within
//! twice the breaker cool-down plus the reconnect allowance, without a process restart.

#![cfg(feature = "full")]

mod common;

use common::{CMD_TIMEOUT, KillReport, SLACK, kill_and_restart, layers};
use turret::ratelimit::FailureMode;
use turret_testkit::RedisServer;

fn print(name: &str, r: &KillReport) {
    eprintln!(
        "[faults] redis killed: {name}: {} requests, {} sent while down ({} 5xx, slowest {:?}); breaker open {:?} after the kill; {} requests with the breaker open in {:?} ({:?} each; the slowest, maybe the probe, {:?}); back to normal {:?} after the restart",
        r.requests,
        r.sent_while_down,
        r.five_xx_while_down,
        r.max_latency_while_down,
        r.breaker_open_after,
        r.fast.0,
        r.fast.1,
        r.fast.1 / r.fast.0 as u32,
        r.fast_slowest,
        r.recovered_after,
    );
}

/// Fail-open layers: no request sent while Redis is down gets a 5xx, and none waits long.
fn assert_fail_open(name: &str, r: &KillReport) {
    print(name, r);
    assert_eq!(r.five_xx_while_down, 0, "{name}: 5xx while Redis was down");
    assert!(
        r.max_latency_while_down <= CMD_TIMEOUT + SLACK,
        "{name}: a request took {:?} while Redis was down",
        r.max_latency_while_down
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_rate_limiter_fail_open_admits_everything_then_limits_fleet_wide_again() {
    let mut server = RedisServer::start();
    let layer = layers::limiter(&server.url(), FailureMode::Open, false).await;
    let r = kill_and_restart(&mut server, &layer).await;
    assert_fail_open(layer.name, &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_rate_limiter_fail_closed_answers_503_fast_then_admits_again() {
    let mut server = RedisServer::start();
    let layer = layers::limiter(&server.url(), FailureMode::Closed, false).await;
    let r = kill_and_restart(&mut server, &layer).await;
    print(layer.name, &r);
    // Every request sent while Redis was down got a 503 (the scenario checks the statuses),
    // each within one command timeout (+ slack): before the breaker opens, a request waits at
    // most for its command to fail.
    assert_eq!(r.five_xx_while_down, r.sent_while_down);
    assert!(
        r.max_latency_while_down <= CMD_TIMEOUT + SLACK,
        "a 503 took {:?}",
        r.max_latency_while_down
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_concurrency_limit_fail_open_admits_everything_then_limits_fleet_wide_again() {
    let mut server = RedisServer::start();
    let layer = layers::concurrency(&server.url(), FailureMode::Open).await;
    let r = kill_and_restart(&mut server, &layer).await;
    assert_fail_open(layer.name, &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_concurrency_limit_fail_closed_answers_503_fast_then_admits_again() {
    let mut server = RedisServer::start();
    let layer = layers::concurrency(&server.url(), FailureMode::Closed).await;
    let r = kill_and_restart(&mut server, &layer).await;
    print(layer.name, &r);
    assert_eq!(r.five_xx_while_down, r.sent_while_down);
    assert!(
        r.max_latency_while_down <= CMD_TIMEOUT + SLACK,
        "a 503 took {:?}",
        r.max_latency_while_down
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_rate_limiter_memory_fallback_admits_everything_then_limits_fleet_wide_again()
{
    let mut server = RedisServer::start();
    let layer = layers::limiter(&server.url(), FailureMode::Open, true).await;
    let r = kill_and_restart(&mut server, &layer).await;
    assert_fail_open(layer.name, &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_response_cache_on_redis_storage_serves_the_origin_then_shares_fills_again() {
    let mut server = RedisServer::start();
    let layer = layers::cache(&server.url(), false, "hot").await;
    let r = kill_and_restart(&mut server, &layer).await;
    assert_fail_open(layer.name, &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_response_cache_on_tiered_storage_serves_the_origin_then_shares_fills_again() {
    let mut server = RedisServer::start();
    let layer = layers::cache(&server.url(), true, "hot").await;
    let r = kill_and_restart(&mut server, &layer).await;
    assert_fail_open(layer.name, &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_conditional_store_fails_open_then_decides_writes_again() {
    let mut server = RedisServer::start();
    let layer = layers::conditional(&server.url(), "hot").await;
    let r = kill_and_restart(&mut server, &layer).await;
    assert_fail_open(layer.name, &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_stampede_cache_computes_locally_then_shares_values_fleet_wide_again() {
    let mut server = RedisServer::start();
    let layer = layers::stampede(&server.url(), "hot").await;
    let r = kill_and_restart(&mut server, &layer).await;
    assert_fail_open(layer.name, &r);
}
