//! Redis paused (`CLIENT PAUSE 2000 ALL`: every command hangs, then runs) in the middle of a
//! load, for every layer and failure mode. Each test runs [`common::pause`]: 16 tasks send
//! requests through the layer continuously; during the pause no request waits for Redis (the
//! command timeout ends it: a request sent early in the pause is answered long before the
//! pause ends), answers keep coming (no silence of half the pause), the runtime's live tasks
//! stay at their healthy level (no pile-up of waiting work), every request is answered as
//! the failure mode says, and the layer is back to normal once the pause ends. The latencies
//! measured are printed, not asserted against a number (speed is for benchmarks).

#![cfg(feature = "full")]

mod common;

use common::{PauseReport, layers, pause};
use turret::ratelimit::FailureMode;
use turret_testkit::RedisServer;

fn print(name: &str, r: &PauseReport) {
    eprintln!(
        "[faults] redis paused: {name}: healthy p50 {:?} max {:?}; {} requests sent during the 2 s pause, slowest {:?} (added ≤ {:?}); longest gap without an answer {:?}; live tasks {} healthy, {} paused; back to normal {:?} after the pause",
        r.healthy_p50,
        r.healthy_max,
        r.sent_while_paused,
        r.paused_max,
        r.paused_max.saturating_sub(r.healthy_p50),
        r.max_gap,
        r.alive_healthy,
        r.alive_paused,
        r.recovered_after,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_rate_limiter_fail_open_adds_at_most_the_command_timeout() {
    let server = RedisServer::start();
    let layer = layers::limiter(&server.url(), FailureMode::Open, false).await;
    print(layer.name, &pause(&server, &layer).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_rate_limiter_fail_closed_answers_503_within_the_command_timeout() {
    let server = RedisServer::start();
    let layer = layers::limiter(&server.url(), FailureMode::Closed, false).await;
    print(layer.name, &pause(&server, &layer).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_concurrency_limit_fail_open_adds_at_most_the_command_timeout() {
    let server = RedisServer::start();
    let layer = layers::concurrency(&server.url(), FailureMode::Open).await;
    print(layer.name, &pause(&server, &layer).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_concurrency_limit_fail_closed_answers_503_within_the_command_timeout() {
    let server = RedisServer::start();
    let layer = layers::concurrency(&server.url(), FailureMode::Closed).await;
    print(layer.name, &pause(&server, &layer).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_rate_limiter_memory_fallback_adds_at_most_the_command_timeout() {
    let server = RedisServer::start();
    let layer = layers::limiter(&server.url(), FailureMode::Open, true).await;
    print(layer.name, &pause(&server, &layer).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_response_cache_on_redis_storage_adds_at_most_the_command_timeout() {
    let server = RedisServer::start();
    let layer = layers::cache(&server.url(), false, "hot").await;
    print(layer.name, &pause(&server, &layer).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_response_cache_on_tiered_storage_adds_at_most_the_command_timeout() {
    let server = RedisServer::start();
    let layer = layers::cache(&server.url(), true, "hot").await;
    print(layer.name, &pause(&server, &layer).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_conditional_store_adds_at_most_the_command_timeout() {
    let server = RedisServer::start();
    let layer = layers::conditional(&server.url(), "hot").await;
    print(layer.name, &pause(&server, &layer).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_stampede_cache_adds_at_most_the_command_timeout() {
    let server = RedisServer::start();
    let layer = layers::stampede(&server.url(), "hot").await;
    print(layer.name, &pause(&server, &layer).await);
}
