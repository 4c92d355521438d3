//! End-to-end tests: the real `server` binary on a free port, called over HTTP/2 with the
//! crate's own `CatalogClient` (and once with the real `client` binary); the fleet test runs
//! two servers on a real `redis-server` from `turret-testkit`.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use grpc_example::{client::CatalogClient, proto::ListProductsResponse};
use prost::Message as _;
use tempfile::TempDir;
use tonic::Code;
use turret_testkit::RedisServer;

/// `google.rpc.Status` (google/rpc/status.proto), the message in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.RetryInfo` (google/rpc/error_details.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types::Duration>,
}

/// A running server process; killed (and its log printed if the test failed) on drop.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Server {
    /// Starts `server --listen 127.0.0.1:0 ARGS…` and reads its address from stdout.
    fn start(args: &[&str]) -> Server {
        let dir = TempDir::new().expect("temp dir");
        let log = dir.path().join("server.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("REDIS_URL")
            .env_remove("RATE_LIMIT")
            .env_remove("PRO_RATE_LIMIT")
            .env_remove("PRO_KEYS")
            .env_remove("SLOW_READ")
            .env_remove("LIST_TTL")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start the server binary");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let Some(url) = line.trim().strip_prefix("grpc server listening on ") else {
            let _ = child.kill();
            panic!(
                "the server did not start ({line:?}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Server {
            url: url.to_owned(),
            child,
            log,
            _dir: dir,
        }
    }

    async fn client(&self, api_key: &str) -> CatalogClient {
        CatalogClient::connect(&self.url, api_key)
            .await
            .expect("connect")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- server log ---");
            eprintln!("{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn metadata(res_metadata: &tonic::metadata::MetadataMap, key: &str) -> String {
    res_metadata
        .get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// `n` identical `ListProducts` calls at once, each from `client_for(i)`.
async fn concurrent_lists(
    clients: Vec<CatalogClient>,
    category: &'static str,
) -> Vec<ListProductsResponse> {
    let calls: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.list_products(category, 10).await }))
        .collect();
    let mut out = Vec::new();
    for call in calls {
        let res = call.await.expect("task").expect("ListProducts");
        out.push(res.into_inner());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pro_keys_get_the_pro_plan_and_refusals_name_the_plan() {
    let server = Server::start(&[
        "--rate-limit",
        "2/60s",
        "--pro-rate-limit",
        "5/60s",
        "--pro-keys",
        "gold,platinum",
    ]);
    let calls = |key: &'static str| {
        let server = &server;
        async move {
            let mut client = server.client(key).await;
            let mut ok = 0;
            loop {
                match client.get_product(1).await {
                    Ok(res) => {
                        ok += 1;
                        assert!(ok <= 10, "{key}: never refused");
                        let _ = res;
                    }
                    Err(status) => return (ok, status),
                }
            }
        }
    };
    let (free, refused) = calls("alice").await;
    assert_eq!(free, 2);
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.message(), "rate limit exceeded: free");
    assert_eq!(
        metadata(refused.metadata(), "ratelimit-policy"),
        "\"free\";q=2;w=60"
    );
    let (pro, refused) = calls("gold").await;
    assert_eq!(pro, 5);
    assert_eq!(refused.message(), "rate limit exceeded: pro");
    assert_eq!(
        metadata(refused.metadata(), "ratelimit-policy"),
        "\"pro\";q=5;w=60"
    );
    // Each pro key has its own quota on the pro plan.
    assert_eq!(calls("platinum").await.0, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_answered_until_the_quota_then_resource_exhausted_per_key() {
    let server = Server::start(&["--rate-limit", "3/60s"]);
    let mut alice = server.client("alice").await;

    let first = alice.get_product(1).await.expect("GetProduct");
    assert_eq!(first.get_ref().id, 1);
    assert_eq!(first.get_ref().name, "Sleek Novel");
    assert_eq!(first.get_ref().category, "books");
    assert_eq!(metadata(first.metadata(), "x-ratelimit-limit"), "3");
    assert_eq!(metadata(first.metadata(), "x-ratelimit-remaining"), "2");
    alice.get_product(2).await.expect("second call");
    let third = alice.get_product(3).await.expect("third call");
    assert_eq!(metadata(third.metadata(), "x-ratelimit-remaining"), "0");

    let refused = alice.get_product(4).await.expect_err("over the quota");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(refused.message(), "rate limit exceeded: free");
    let retry_after: u64 = metadata(refused.metadata(), "retry-after")
        .parse()
        .expect("retry-after in seconds");
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    assert!(
        metadata(refused.metadata(), "ratelimit").contains("r=0"),
        "{:?}",
        refused.metadata()
    );

    // The retry delay as google.rpc.RetryInfo in grpc-status-details-bin, for retry policies.
    let status = RpcStatus::decode(refused.details()).expect("a google.rpc.Status");
    assert_eq!(status.code, Code::ResourceExhausted as i32);
    assert_eq!(status.message, "rate limit exceeded: free");
    assert_eq!(status.details.len(), 1, "{status:?}");
    assert_eq!(
        status.details[0].type_url,
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    let info = RetryInfo::decode(status.details[0].value.as_slice()).expect("a RetryInfo");
    let delay = info.retry_delay.expect("retry_delay");
    let delay = Duration::new(
        u64::try_from(delay.seconds).expect("non-negative"),
        u32::try_from(delay.nanos).expect("non-negative"),
    );
    // Retry-After is the delay rounded up to whole seconds.
    assert!(delay > Duration::ZERO, "{delay:?}");
    assert!(
        delay <= Duration::from_secs(retry_after),
        "{delay:?} vs {retry_after}"
    );
    assert!(
        delay > Duration::from_secs(retry_after - 1),
        "{delay:?} vs {retry_after}"
    );

    // Another key has its own quota.
    let mut bob = server.client("bob").await;
    let other = bob.get_product(4).await.expect("another key is allowed");
    assert_eq!(other.get_ref().id, 4);

    // Stats is exempt from the limit, and counted only admitted calls.
    let stats = alice.stats().await.expect("Stats is exempt").into_inner();
    assert_eq!(stats.get_calls, 4);

    // No key: refused before the limiter, with a gRPC status.
    let anonymous = alice.clone().without_api_key().get_product(1).await;
    assert_eq!(anonymous.expect_err("no key").code(), Code::Unauthenticated);

    // Client mistakes are statuses too.
    let mut carol = server.client("carol").await;
    let missing = carol.get_product(10_000).await.expect_err("unknown id");
    assert_eq!(missing.code(), Code::NotFound);
    let bad = carol
        .list_products("socks", 5)
        .await
        .expect_err("unknown category");
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_slow_reads_share_one_computation() {
    let server = Server::start(&["--rate-limit", "1000/60s", "--slow-read", "1s"]);
    let client = server.client("lister").await;
    // 20 identical calls at once: 10 on one HTTP/2 connection, 10 on another.
    let other = server.client("lister").await;
    let clients = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                client.clone()
            } else {
                other.clone()
            }
        })
        .collect();
    let lists = concurrent_lists(clients, "garden").await;
    assert_eq!(lists.len(), 20);
    assert_eq!(lists[0].products.len(), 10);
    assert!(lists[0].products.iter().all(|p| p.category == "garden"));
    assert!(lists.iter().all(|l| l == &lists[0]), "one shared result");

    let stats = client.clone().stats().await.expect("Stats").into_inner();
    assert_eq!(stats.list_calls, 20);
    assert_eq!(stats.list_computations, 1, "{stats:?}");

    // Another request is another computation.
    client
        .clone()
        .list_products("music", 10)
        .await
        .expect("ListProducts");
    let stats = client.clone().stats().await.expect("Stats").into_inner();
    assert_eq!(stats.list_computations, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_binary_shows_resource_exhausted() {
    let server = Server::start(&["--rate-limit", "3/60s", "--slow-read", "10ms"]);
    let run = |url: String| {
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_client"))
                .args(["--server", &url, "--api-key", "dave", "--max-calls", "50"])
                .env_remove("GRPC_SERVER")
                .env_remove("API_KEY")
                .output()
                .expect("run the client binary");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "client failed: {stdout}\n{stderr}");
            stdout
        })
    };
    let stdout = run(server.url.clone()).await.expect("task");
    assert!(
        stdout.contains("ListProducts(books, 5) → 5 products"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GetProduct(3) → RESOURCE_EXHAUSTED (code 8): rate limit exceeded"),
        "{stdout}"
    );
    assert!(stdout.contains("retry-after: "), "{stdout}");
    // One list and two products were admitted; the fourth call was refused.
    assert_eq!(stdout.matches("GetProduct(").count(), 3, "{stdout}");

    // Run again with the same key: refused at once.
    let stdout = run(server.url.clone()).await.expect("task");
    assert!(
        stdout.contains("ListProducts(books, 5) → RESOURCE_EXHAUSTED"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_redis_share_the_quota_and_the_computation() {
    let redis = RedisServer::start();
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--rate-limit",
        "4/60s",
        "--slow-read",
        "1s",
    ];
    let a = Server::start(&args);
    let b = Server::start(&args);

    // One quota per key across both servers.
    let (mut on_a, mut on_b) = (a.client("erin").await, b.client("erin").await);
    on_a.get_product(1).await.expect("1st");
    on_b.get_product(1).await.expect("2nd");
    on_a.get_product(1).await.expect("3rd");
    on_b.get_product(1).await.expect("4th");
    let refused = on_a.get_product(1).await.expect_err("5th on a");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let refused = on_b.get_product(1).await.expect_err("5th on b");
    assert_eq!(refused.code(), Code::ResourceExhausted);

    // 10 identical slow reads on each server at once (each with its own key, so the quota
    // does not interfere): one computation for the fleet.
    let (ca, cb) = (a.client("x").await, b.client("x").await);
    let clients = (0..20)
        .map(|i| {
            let base = if i % 2 == 0 { &ca } else { &cb };
            base.clone()
                .with_api_key(&format!("reader-{i}"))
                .expect("key")
        })
        .collect();
    let lists = concurrent_lists(clients, "kitchen").await;
    assert!(lists.iter().all(|l| l == &lists[0]), "one shared result");
    let sa = ca.clone().stats().await.expect("Stats").into_inner();
    let sb = cb.clone().stats().await.expect("Stats").into_inner();
    assert_eq!(sa.list_calls + sb.list_calls, 20);
    assert_eq!(
        sa.list_computations + sb.list_computations,
        1,
        "a: {sa:?}, b: {sb:?}"
    );
}
