//! The shop: an e-commerce API (products, categories, orders) on SQLite or PostgreSQL with
//! every turret layer stacked — rate limit, response cache, conditional requests and
//! stampede protection — each switchable for an A/B comparison, a data cache (`#[cached]`,
//! two tiers, write-through) and view counts through write-behind. See the README beside this
//! crate and `shop --help`.
//!
//! - `config.rs`: flags and their environment fallbacks.
//! - `db.rs`: schema, first-start seed, queries (counted in `shop_db_queries_total`).
//! - `model.rs`: the JSON in and out, and input rules.
//! - `routes.rs`: handlers, and the order of the layers.
//! - `cache.rs`, `layers.rs`: the turret layers, configured; `data.rs`: the data cache;
//!   `views.rs`: write-behind.
//! - `errors.rs`: JSON errors; `telemetry.rs`: logs and `/metrics`.

mod cache;
mod config;
mod data;
mod db;
mod errors;
mod layers;
mod model;
mod routes;
mod telemetry;
mod views;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use turret_redis::{Redis, RedisConfig};

use crate::{
    cache::ShopCache,
    config::Config,
    data::Data,
    db::Db,
    routes::AppState,
    views::{Views, ViewsConfig},
};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    telemetry::init_logs();
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("shop: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let metrics = telemetry::init_metrics()?;
    let (db, startup) = Db::connect(&config.database_url)
        .await
        .map_err(|e| format!("database {}: {e}", config.database_url))?;
    tracing::info!(
        backend = ?db.backend(),
        seeded = startup.seeded,
        took_ms = startup.took.as_millis() as u64,
        "database ready"
    );

    // One Redis handle for every layer. Lazy: the shop starts while Redis is down, and each
    // layer degrades as documented until it is back.
    let redis = match &config.redis_url {
        Some(url) => {
            let redis_config = RedisConfig::from_url(url)
                .map_err(|e| format!("--redis-url: {e}"))?
                .prefix("shop:")
                .command_timeout(Duration::from_millis(200));
            Some(Redis::connect_lazy(redis_config).map_err(|e| format!("redis: {e}"))?)
        }
        None => None,
    };

    let cache = if config.no_cache {
        ShopCache::off()
    } else {
        ShopCache::new(config.cache_ttl, redis.clone())
    };
    let views = Views::start(
        db.clone(),
        redis.clone(),
        &ViewsConfig {
            flush: config.write_behind_flush,
            claim_idle: config.write_behind_claim_idle,
            consumer: config.write_behind_consumer.clone(),
        },
    )?;
    let state = AppState {
        data: Data::new(db.clone(), !config.no_stampede, redis.clone()),
        db,
        cache,
        views: views.clone(),
        metrics,
    };
    let app = routes::app(state, &config, redis.as_ref())?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    // The one line on stdout: scripts and tests read the address from it.
    println!("shop listening on http://{addr}");
    tracing::info!(
        %addr,
        cache = !config.no_cache,
        rate_limit = !config.no_rate_limit,
        conditional = !config.no_conditional,
        stampede = !config.no_stampede,
        redis = config.redis_url.is_some(),
        "serving"
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await
    .map_err(|e| format!("server: {e}"))?;
    // The views still in a memory queue go to the database now (on Redis they are durable
    // in the stream; the batch in flight is finished).
    views.shutdown().await;
    Ok(())
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
