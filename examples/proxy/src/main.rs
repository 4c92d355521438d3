//! The caching reverse proxy: an RFC 9111 shared HTTP cache (`turret-cache`) in front of any
//! origin, forwarding every method with its headers and streamed body. See the README beside
//! this crate and `proxy --help`.
//!
//! - `config.rs`: flags and their environment fallbacks.
//! - `proxy.rs`: connections, the request preparation, the cache key's host.
//! - `front.rs`: the outermost service: framing checks (400 / 501), the client body
//!   watched, the proxy's own 400 / 502 / 504 made outside the cache.
//! - `headers.rs`: hop-by-hop fields (RFC 9110 §7.6.1) and the forwarding fields.
//! - `cache.rs`: the cache layer, in memory or two-tier on Redis.
//! - `forward.rs`: the pooled client to the origin; an error when it fails.

mod cache;
mod config;
mod forward;
mod front;
mod headers;
mod proxy;

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use turret_cache::{PurgeAuth, PurgeService};
use turret_redis::{Redis, RedisConfig};

use crate::{config::Config, forward::Forward};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    init_logs();
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    // Lazy: the proxy starts while Redis is down; the cache treats Redis errors as misses.
    let redis = match &config.redis_url {
        Some(url) => {
            let redis_config = RedisConfig::from_url(url)
                .map_err(|e| format!("--redis-url: {e}"))?
                .prefix("proxy:")
                .command_timeout(Duration::from_millis(200));
            Some(Redis::connect_lazy(redis_config).map_err(|e| format!("redis: {e}"))?)
        }
        None => None,
    };
    let cache = cache::layer(&config, redis);
    let purge = match &config.purge_token {
        Some(token) => {
            let auth = PurgeAuth::bearer(token).map_err(|e| format!("--purge-token: {e}"))?;
            Some(PurgeService::new(cache.invalidator(), auth).for_request_target())
        }
        None => None,
    };
    let forward = Forward::new(config.origin_timeout);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    // The one line on stdout: scripts and tests read the address from it.
    println!("proxy listening on http://{addr}");
    tracing::info!(
        %addr,
        origin = %config.origin.authority,
        redis = config.redis_url.is_some(),
        max_entry_size = config.max_entry_size.0,
        purge = purge.is_some(),
        "serving"
    );
    proxy::serve(listener, config.origin, cache, purge, forward, shutdown()).await;
    Ok(())
}

/// Logs to stderr at the level `PROXY_LOG` names (`error` … `trace`, default `info`).
fn init_logs() {
    let level = std::env::var("PROXY_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
