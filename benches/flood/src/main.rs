//! Floods: how much memory the memory backends hold under hostile volume.
//!
//! ```sh
//! cargo run --release -p flood              # every flood, each in a fresh process
//! cargo run --release -p flood -- ratelimit [--max-keys N]  # 1,000,000 client IPs through RateLimitLayer
//! cargo run --release -p flood -- cache [--body BYTES]      # 1,000,000 URLs through ResponseCacheLayer (64 MiB)
//! cargo run --release -p flood -- long-keys                 # 64 KiB API keys through RateLimitLayer
//! ```
//!
//! Each flood runs in its own process so that its resident memory starts from a clean
//! baseline; it reads `VmRSS` and `VmHWM` from `/proc/self/status` before and after, and
//! prints one Markdown table row. `--check` exits non-zero when a target is missed: the
//! rate limiter under 150 MB RSS with 1M keys, the cache's stored bytes never above its
//! bound.

use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{Empty, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use turret_cache::{MemoryStorage, ResponseCacheLayer};
use turret_ratelimit::{HeaderKey, MemoryBackend, Quota, RateLimitLayer};

const KEYS: u32 = 1_000_000;
const URLS: u32 = 1_000_000;
const CACHE_BOUND: u64 = 64 * 1024 * 1024;
const RATELIMIT_TARGET_MB: f64 = 150.0;
const LONG_KEYS: u32 = 2_000;
const LONG_KEY_BYTES: usize = 64 * 1024;

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// 1,000,000 distinct client IPs, one request each, through the default layer (memory
/// backend bounded to `max_keys`, by default 1,000,000; GCRA 100 an hour, so that no key
/// becomes idle — and so forgettable — while the flood lasts).
fn ratelimit(max_keys: Option<usize>) -> bool {
    let rt = runtime();
    rt.block_on(async {
        let backend = match max_keys {
            Some(n) => MemoryBackend::new().max_keys(n),
            None => MemoryBackend::new(),
        };
        let mut svc = RateLimitLayer::new(Quota::per_hour(100))
            .backend(backend.clone())
            .layer(service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }));
        let (before, _) = memory();
        let started = Instant::now();
        let mut admitted = 0u32;
        for i in 0..KEYS {
            let mut req = Request::new(());
            let ip = Ipv4Addr::from(0x0a00_0000 | i);
            req.extensions_mut().insert(SocketAddr::from((ip, 40_000)));
            let res = svc.ready().await.unwrap().call(req).await.unwrap();
            admitted += u32::from(res.status().is_success());
        }
        let took = started.elapsed();
        let (after, peak) = memory();
        let kept = backend.len();
        let ok = mb(peak) < RATELIMIT_TARGET_MB && admitted == KEYS;
        println!(
            "| rate limiter, memory backend, max_keys {} | {KEYS} client IPs | {kept} keys kept | {:.1} MB | {:.1} MB | {:.1} MB | {:.0} B/key | {:.1} s | < {RATELIMIT_TARGET_MB} MB: {} |",
            max_keys.map_or_else(|| "default".to_owned(), |n| n.to_string()),
            mb(before),
            mb(after),
            mb(peak),
            (after.saturating_sub(before)) as f64 / f64::from(KEYS),
            took.as_secs_f64(),
            if ok { "met" } else { "MISSED" },
        );
        ok
    })
}

/// 1,000,000 distinct URLs, each a cacheable JSON response of `body_len` bytes, through a
/// cache bounded to 64 MiB; the storage's own byte count is sampled every 10,000 requests.
fn cache(body_len: usize) -> bool {
    let rt = runtime();
    rt.block_on(async {
        let storage = MemoryStorage::new(CACHE_BOUND);
        let body = Bytes::from(format!(
            "{{\"items\":\"{}\"}}",
            "x".repeat(body_len.saturating_sub(13))
        ));
        let mut svc = ResponseCacheLayer::with_storage(storage.clone())
            .default_ttl(Duration::from_secs(600))
            .layer(service_fn(move |_req: Request<()>| {
                // Each response its own allocation, as a real origin's would be (a shared
                // `Bytes` would be stored once and hide the bodies' memory).
                let body = Bytes::copy_from_slice(&body);
                async move {
                    let mut res = Response::new(Full::new(body));
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(res)
                }
            }));
        let (before, _) = memory();
        let started = Instant::now();
        let mut max_weighted = 0u64;
        let mut stored = 0u32;
        for i in 0..URLS {
            let req = Request::get(format!("/products/{i}?page=1"))
                .header(header::HOST, "shop.example")
                .body(())
                .unwrap();
            let res = svc.ready().await.unwrap().call(req).await.unwrap();
            if res
                .headers()
                .get("cache-status")
                .is_some_and(|v| v.as_bytes().ends_with(b"stored"))
            {
                stored += 1;
            }
            drop(res);
            if i % 10_000 == 0 {
                max_weighted = max_weighted.max(storage.weighted_size());
            }
        }
        let took = started.elapsed();
        let transient = max_weighted.max(storage.weighted_size());
        storage.run_pending_tasks();
        let weighted = storage.weighted_size();
        let (after, peak) = memory();
        let entries = entries(&storage);
        let overhead = after.saturating_sub(before).saturating_sub(weighted);
        let per_entry = entries.map_or(0.0, |n| overhead as f64 / n.max(1) as f64);
        let ok = weighted <= CACHE_BOUND;
        println!(
            "| response cache, MemoryStorage 64 MiB, {body_len} B bodies | {URLS} URLs ({stored} stored) | {} entries, {:.1} MB stored (max sampled {:.1} MB) | {:.1} MB | {:.1} MB | {:.1} MB | {:.0} B/entry over the stored bytes | {:.1} s | stored ≤ {:.1} MB: {} |",
            entries.map_or_else(|| "?".into(), |n| n.to_string()),
            mb(weighted),
            mb(transient),
            mb(before),
            mb(after),
            mb(peak),
            per_entry,
            took.as_secs_f64(),
            mb(CACHE_BOUND),
            if ok { "met" } else { "MISSED" },
        );
        ok
    })
}

/// The entry count from the storage's `Debug` (`MemoryStorage { entries: N, … }`).
fn entries(storage: &MemoryStorage) -> Option<u64> {
    let debug = format!("{storage:?}");
    debug
        .split("entries: ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// 2,000 distinct 64 KiB API keys through `HeaderKey` (memory backend): what one key costs
/// when a client picks its length.
fn long_keys() -> bool {
    let rt = runtime();
    rt.block_on(async {
        let backend = MemoryBackend::new();
        let mut svc = RateLimitLayer::new(Quota::per_minute(100))
            .key(HeaderKey::new("x-api-key"))
            .backend(backend.clone())
            .layer(service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }));
        let (before, _) = memory();
        let mut value = vec![b'k'; LONG_KEY_BYTES];
        for i in 0..LONG_KEYS {
            value[..10].copy_from_slice(format!("{i:010}").as_bytes());
            let mut req = Request::new(());
            req.headers_mut()
                .insert("x-api-key", HeaderValue::from_bytes(&value).unwrap());
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
        let (after, peak) = memory();
        let per_key = after.saturating_sub(before) as f64 / f64::from(LONG_KEYS);
        println!(
            "| rate limiter, memory backend, `HeaderKey` | {LONG_KEYS} API keys of 64 KiB | {} keys kept | {:.1} MB | {:.1} MB | {:.1} MB | {:.0} B/key | - | projected to the 1,000,000-key bound: {:.2} GB |",
            backend.len(),
            mb(before),
            mb(after),
            mb(peak),
            per_key,
            per_key * 1e6 / 1e9,
        );
        true
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    let modes: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let modes: Vec<&str> = modes
        .into_iter()
        .filter(|m| m.parse::<usize>().is_err())
        .collect();
    let ok = match modes.as_slice() {
        ["ratelimit"] => ratelimit(value("--max-keys")),
        ["cache"] => cache(value("--body").unwrap_or(512)),
        ["long-keys"] => long_keys(),
        [] => {
            println!(
                "| flood | input | kept | RSS before | RSS after | RSS peak (VmHWM) | cost | time | target |"
            );
            println!("|---|---|---|---|---|---|---|---|---|");
            let exe = std::env::current_exe().expect("own path");
            let mut all = true;
            // The default bound, then a smaller one that meets the memory target.
            let runs: [&[&str]; 5] = [
                &["ratelimit"],
                &["ratelimit", "--max-keys", "600000"],
                &["cache"],
                &["cache", "--body", "8192"],
                &["long-keys"],
            ];
            for run in runs {
                let status = Command::new(&exe)
                    .args(run)
                    .args(check.then_some("--check"))
                    .status()
                    .expect("run a flood");
                all &= status.success();
            }
            all
        }
        other => {
            eprintln!(
                "usage: flood [ratelimit [--max-keys N] | cache [--body BYTES] | long-keys] [--check] (got {other:?})"
            );
            return ExitCode::from(2);
        }
    };
    if ok || !check {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
