//! Logs (`tracing`, to stderr, `RUST_LOG`-style level from `SHOP_LOG`) and metrics (the
//! `metrics` facade, rendered in the Prometheus text format on `/metrics`).

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::Level;

/// Logs to stderr at the level `SHOP_LOG` names (`error` … `trace`, default `info`).
pub(crate) fn init_logs() {
    let level = std::env::var("SHOP_LOG")
        .ok()
        .and_then(|l| l.parse::<Level>().ok())
        .unwrap_or(Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Installs the Prometheus recorder that every layer's metrics and the shop's own go to,
/// and keeps its histograms drained.
pub(crate) fn init_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))?;
    metrics::describe_counter!(
        "shop_db_queries_total",
        "Database queries run by the shop, by query name"
    );
    metrics::describe_histogram!(
        "shop_db_query_seconds",
        metrics::Unit::Seconds,
        "Database query latency, by query name"
    );
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}
