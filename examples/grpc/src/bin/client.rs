//! `client`: calls the catalogue until the rate limiter refuses, and prints the
//! `RESOURCE_EXHAUSTED` status with its `retry-after` (see `client --help`).

use std::{process::ExitCode, time::Instant};

use clap::Parser;
use grpc_example::{client::CatalogClient, config::ClientConfig, server::PRODUCTS};
use tonic::{Code, Status, metadata::MetadataMap};

#[tokio::main]
async fn main() -> ExitCode {
    let config = ClientConfig::parse();
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: ClientConfig) -> Result<(), String> {
    let mut client = CatalogClient::connect(&config.server, &config.api_key).await?;
    println!(
        "calling {} as x-api-key {:?}",
        config.server, config.api_key
    );

    let started = Instant::now();
    match client.list_products("books", 5).await {
        Ok(list) => println!(
            "ListProducts(books, 5) → {} products in {} ms [x-ratelimit-remaining: {}]",
            list.get_ref().products.len(),
            started.elapsed().as_millis(),
            remaining(list.metadata()),
        ),
        Err(status) => return refused("ListProducts(books, 5)", &status),
    }

    for call in 1..=config.max_calls {
        let id = u64::from(call - 1) % PRODUCTS + 1;
        match client.get_product(id).await {
            Ok(res) => println!(
                "GetProduct({id}) → {:?}, {} cents [x-ratelimit-remaining: {}]",
                res.get_ref().name,
                res.get_ref().price_cents,
                remaining(res.metadata()),
            ),
            Err(status) => return refused(&format!("GetProduct({id})"), &status),
        }
    }
    Err(format!(
        "no RESOURCE_EXHAUSTED after {} calls: is the server's --rate-limit higher?",
        config.max_calls
    ))
}

/// Prints a `RESOURCE_EXHAUSTED` refusal and its rate-limit metadata (the expected end);
/// any other status is an error.
fn refused(call: &str, status: &Status) -> Result<(), String> {
    if status.code() != Code::ResourceExhausted {
        return Err(format!("{call}: {status}"));
    }
    println!(
        "{call} → RESOURCE_EXHAUSTED (code {}): {}",
        status.code() as i32,
        status.message()
    );
    for field in ["retry-after", "ratelimit-policy", "ratelimit"] {
        if let Some(value) = status.metadata().get(field) {
            println!("  {field}: {}", value.to_str().unwrap_or("?"));
        }
    }
    Ok(())
}

/// The calls left in the window, from the limiter's `x-ratelimit-remaining` metadata.
fn remaining(metadata: &MetadataMap) -> &str {
    metadata
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
}
