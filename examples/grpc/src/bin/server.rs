//! `server`: the catalogue on `--listen`, rate limited per `x-api-key` (see `server --help`
//! and the README beside this crate).

use std::process::ExitCode;

use clap::Parser;
use grpc_example::{config::ServerConfig, server};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let config = ServerConfig::parse();
    init_logs();
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: ServerConfig) -> Result<(), String> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    // The one line on stdout: scripts and tests read the address from it.
    println!("grpc server listening on http://{addr}");
    tracing::info!(
        %addr,
        free = ?config.rate_limit.limits(),
        pro = ?config.pro_rate_limit.limits(),
        pro_keys = config.pro_keys.len(),
        slow_read = ?config.slow_read,
        redis = config.redis_url.is_some(),
        "serving catalog.v1.Catalog"
    );
    server::serve(&config, listener, server::shutdown_signal()).await
}

/// Logs to stderr at the level `GRPC_LOG` names (`error` … `trace`, default `info`).
fn init_logs() {
    let level = std::env::var("GRPC_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
}
