//! Security properties of the whole shop, over HTTP against the real binary:
//!
//! - the response cache cannot be poisoned through the query: a parameter name spelled with
//!   `%XX` escapes (`categ%6fry=9`) is the name the handler reads, so the list it selects is
//!   never served for the plain URL;
//! - the response cache cannot be poisoned through unkeyed request fields: a client that
//!   forges `X-Forwarded-Host`, `X-Forwarded-Proto`, `Forwarded`, `X-Original-URL`, … or a
//!   `Host` that disagrees with an absolute request target gets exactly the bytes every
//!   other client gets, and whatever it caused to be stored is what a clean client gets too;
//! - every layer runs as a Redis ACL user limited to its commands, its key prefix and its
//!   channels, two processes act as one fleet, every key they write expires, and neither
//!   the Redis password nor a client's credentials appear in any log line (debug level).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;
use turret_testkit::RedisServer;

struct Shop {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {} ---", self.log.display());
            for line in log.lines().rev().take(40) {
                eprintln!("{line}");
            }
        }
    }
}

/// Starts a shop on `dir`'s SQLite file, logging to `dir/{name}.log`, and waits until
/// `/health` answers.
fn start(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Shop {
    let log = dir.join(format!("{name}.log"));
    let stderr = std::fs::File::create(&log).expect("log file");
    let db = format!("sqlite://{}", dir.join("shop.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(["--listen", "127.0.0.1:0", "--database-url", &db])
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("RATE_LIMIT")
        .env_remove("TRUSTED_PROXIES")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start the shop binary");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the shop printed its address");
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let shop = Shop { child, port, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while raw(shop.port, &get_head("/health", &[])).status != 200 {
        assert!(Instant::now() < deadline, "/health never answered 200");
        thread::sleep(Duration::from_millis(50));
    }
    shop
}

struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A request head: `GET {target}` with `Host: shop.test` unless `headers` gives one.
fn get_head(target: &str, headers: &[(&str, &str)]) -> String {
    let mut head = format!("GET {target} HTTP/1.1\r\nconnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str("host: shop.test\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Sends raw bytes and parses the answer (bodies are read to the end, chunked or not).
fn raw(port: u16, request: &str) -> Resp {
    let mut stream = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(_) => {
            return Resp {
                status: 0,
                headers: HashMap::new(),
                body: Vec::new(),
            };
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut data = Vec::new();
    let _ = stream.read_to_end(&mut data);
    let Some(split) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Resp {
            status: 0,
            headers: HashMap::new(),
            body: data,
        };
    };
    let head = String::from_utf8_lossy(&data[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = data[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        let mut out = Vec::new();
        let mut rest = body.as_slice();
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..end])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .unwrap_or(0);
            if size == 0 || rest.len() < end + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[(end + 4 + size).min(rest.len())..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// Request fields that applications commonly (and wrongly) trust to build links or route.
const FORGED: [(&str, &str); 9] = [
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "javascript"),
    ("x-forwarded-prefix", "/evil"),
    ("x-forwarded-port", "6666"),
    ("forwarded", "host=evil.example;proto=http"),
    ("x-original-url", "/admin"),
    ("x-rewrite-url", "/admin"),
    ("x-host", "evil.example"),
    ("x-http-method-override", "DELETE"),
];

const PATHS: [&str; 5] = [
    "/products/1",
    "/products?limit=5&skip=10",
    "/categories",
    "/categories/2",
    "/products/top-selling?limit=3",
];

fn assert_unpoisoned(ports: &[u16]) {
    let forged: Vec<(&str, &str)> = FORGED.to_vec();
    for path in PATHS {
        // The attacker first: its request fills the cache.
        let attack = raw(ports[0], &get_head(path, &forged));
        assert_eq!(attack.status, 200, "{path}");
        for &port in ports {
            let clean = raw(port, &get_head(path, &[]));
            assert_eq!(clean.status, 200, "{path}");
            assert_eq!(
                clean.body, attack.body,
                "{path}: the forged fields changed the body"
            );
            let text = String::from_utf8_lossy(&clean.body);
            assert!(
                !text.contains("evil") && !text.contains("javascript"),
                "{path}: {text}"
            );
        }
        // A Host that disagrees with the absolute request target (RFC 9112 §3.2.2).
        let absolute = format!("http://shop.test{path}");
        let confused = raw(ports[0], &get_head(&absolute, &[("host", "evil.example")]));
        assert_eq!(confused.status, 200, "{path}");
        assert_eq!(confused.body, attack.body, "{path}");
        let clean = raw(ports[0], &get_head(path, &[]));
        assert_eq!(clean.body, attack.body, "{path}");
    }
    // The product the method override named is still there.
    assert_eq!(raw(ports[0], &get_head("/products/1", &[])).status, 200);
}

#[test]
fn forged_forwarding_fields_do_not_change_a_cached_body() {
    let dir = TempDir::new().unwrap();
    let shop = start(dir.path(), "shop", &["--rate-limit", "10000/60s"], &[]);
    // A cached entry made by the attacker is a hit for everyone, with the same bytes.
    let attack = raw(shop.port, &get_head("/products/7", &FORGED));
    assert_eq!(attack.header("x-cache"), Some("MISS"));
    let clean = raw(shop.port, &get_head("/products/7", &[]));
    assert_eq!(clean.header("x-cache"), Some("HIT"));
    assert_eq!(clean.body, attack.body);
    assert_unpoisoned(&[shop.port]);
}

/// The product lists a poisoning request tries to plant (`category` or `limit` spelled with
/// `%XX` escapes, which axum's `Query` decodes), each with the plain list it must not replace.
const ESCAPED_NAMES: [(&str, &str); 7] = [
    ("/products?skip=11&categ%6fry=9", "/products?skip=11"),
    ("/products?skip=12&categ%6Fry=9", "/products?skip=12"),
    ("/products?skip=2&%63ategory=3", "/products?skip=2"),
    ("/products?skip=3&c%61t%65gory=3", "/products?skip=3"),
    ("/products?skip=4&lim%69t=1", "/products?skip=4"),
    ("/products?skip=5&%6C%69%6D%69%74=1", "/products?skip=5"),
    ("/products?%73kip=1&limit=2", "/products?limit=2"),
];

#[test]
fn escaped_query_names_cannot_poison_the_product_lists() {
    let dir = TempDir::new().unwrap();
    let shop = start(dir.path(), "shop", &["--rate-limit", "10000/60s"], &[]);
    let origin = start(
        dir.path(),
        "origin",
        &["--rate-limit", "10000/60s", "--no-cache"],
        &[],
    );
    for (poison, victim) in ESCAPED_NAMES {
        let wanted = raw(origin.port, &get_head(victim, &[]));
        let filtered = raw(origin.port, &get_head(poison, &[]));
        assert_eq!((wanted.status, filtered.status), (200, 200), "{poison}");
        assert_ne!(
            wanted.body, filtered.body,
            "{poison}: the handler reads the escaped name"
        );
        let attack = raw(shop.port, &get_head(poison, &[]));
        assert_eq!(attack.body, filtered.body, "{poison}");
        for _ in 0..2 {
            let clean = raw(shop.port, &get_head(victim, &[]));
            assert_eq!(clean.status, 200, "{victim}");
            assert!(
                clean.body == wanted.body,
                "{poison} then {victim}: not the plain list (x-cache {:?})",
                clean.header("x-cache")
            );
        }
    }
    // Spellings of the same list still share the entry.
    let first = raw(shop.port, &get_head("/products?skip=6&category=2", &[]));
    let again = raw(
        shop.port,
        &get_head("/products?categ%6Fry=%32&utm=x&skip=6", &[]),
    );
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(again.header("x-cache"), Some("HIT"));
    assert_eq!(again.body, first.body);
}

/// Commands turret's layers send, `HELLO` for the RESP3 subscriber connection, and the
/// stream commands of write-behind.
const COMMANDS: &str = "+ping +get +set +del +exists +incr +incrby +time +pexpire +pttl \
     +hget +hset +hmget +hgetall +hdel +hkeys +sadd +sscan +zadd +zrem +zscan +zcard +zrange \
     +zremrangebyscore +zscore +eval +evalsha +script +publish +subscribe +unsubscribe +hello \
     +xadd +xlen +xrange +xreadgroup +xack +xdel +xpending +xclaim +xgroup +xinfo";

#[test]
fn every_layer_works_as_a_limited_acl_user_and_the_password_is_never_logged() {
    let secret = "shop-acl-5f2e9d7a01";
    let redis = RedisServer::start();
    let mut setuser: Vec<String> = [
        "ACL",
        "SETUSER",
        "shop",
        "reset",
        "on",
        "resetkeys",
        "~shop:*",
        "resetchannels",
        "&shop:*",
        "-@all",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    setuser.push(format!(">{secret}"));
    setuser.extend(COMMANDS.split_whitespace().map(str::to_owned));
    let args: Vec<&str> = setuser.iter().map(String::as_str).collect();
    let _: String = redis.cmd(&args);
    // The default user may do nothing: only the ACL user can reach the data.
    let url = format!("redis://shop:{secret}@127.0.0.1:{}/", redis.port());

    let dir = TempDir::new().unwrap();
    let args = ["--redis-url", url.as_str(), "--rate-limit", "6/60s"];
    let env = [("SHOP_LOG", "debug")];
    let a = start(dir.path(), "a", &args, &env);
    let b = start(dir.path(), "b", &args, &env);

    // Rate limit on Redis: one quota of 6 for the fleet.
    let mut statuses = Vec::new();
    for i in 0..7 {
        let port = if i % 2 == 0 { a.port } else { b.port };
        statuses.push(raw(port, &get_head("/categories", &[])).status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 200, 429],
        "one fleet-wide quota"
    );

    // The rest from other client addresses (the shops trust no proxy here, so restart
    // with a larger quota for the cache, stampede and conditional checks).
    drop((a, b));
    let args = ["--redis-url", url.as_str(), "--rate-limit", "10000/60s"];
    let a = start(dir.path(), "a2", &args, &env);
    let b = start(dir.path(), "b2", &args, &env);

    // Response cache on Redis: what A stored is a hit on B.
    assert_eq!(
        raw(a.port, &get_head("/products/11", &[])).header("x-cache"),
        Some("MISS")
    );
    let on_b = raw(b.port, &get_head("/products/11", &[]));
    assert_eq!(on_b.header("x-cache"), Some("HIT"));
    // Stampede cache on Redis: one aggregation for the fleet.
    let top_a = raw(a.port, &get_head("/products/top-selling?limit=4", &[]));
    let top_b = raw(b.port, &get_head("/products/top-selling?limit=4", &[]));
    assert_eq!(top_a.status, 200);
    assert_eq!(top_a.body, top_b.body);
    // Conditional write on A, invalidation seen on B.
    let etag = on_b.header("etag").expect("an ETag").to_owned();
    let body = r#"{"name":"ACL Lamp","description":"d","price":3.5,"stock":1,"category_id":1}"#;
    let put = format!(
        "PUT /products/11 HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n\
         content-type: application/json\r\nif-match: {etag}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw(a.port, &put).status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = raw(b.port, &get_head("/products/11", &[]));
        if String::from_utf8_lossy(&seen.body).contains("ACL Lamp") {
            break;
        }
        assert!(Instant::now() < deadline, "B never saw the write");
        thread::sleep(Duration::from_millis(20));
    }
    // Poisoning through the fleet's shared cache fails too.
    assert_unpoisoned(&[a.port, b.port]);

    // Write-behind on the stream: a view on each shop, flushed to the database.
    let view = "POST /products/12/views HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n\
                content-length: 0\r\n\r\n";
    assert_eq!(raw(a.port, view).status, 204);
    assert_eq!(raw(b.port, view).status, 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = raw(a.port, &get_head("/products/12/stats", &[]));
        if String::from_utf8_lossy(&stats.body).contains(r#""views":2"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the views never reached the database: {}",
            String::from_utf8_lossy(&stats.body)
        );
        thread::sleep(Duration::from_millis(50));
    }

    // Request fields are not logged (at debug level either): credentials sent by a client.
    let token = "Bearer tok-3e7a99c1d2";
    let cookie = "sid=cookie-8b1f04aa";
    let with_credentials = get_head(
        "/products/12",
        &[("authorization", token), ("cookie", cookie)],
    );
    assert_eq!(raw(a.port, &with_credentials).status, 200);
    assert_eq!(raw(b.port, &with_credentials).status, 200);

    // Every layer wrote under the prefix, every key expires, and nothing was refused by
    // the ACL.
    let keys: Vec<String> = redis.cmd(&["KEYS", "*"]);
    for kind in ["shop:rl:", "shop:cache", "shop:val:", "shop:wb:"] {
        assert!(
            keys.iter().any(|k| k.starts_with(kind)),
            "no {kind} key: {keys:?}"
        );
    }
    assert!(keys.iter().all(|k| k.starts_with("shop:")), "{keys:?}");
    // The write-behind stream is the durable queue: it has no TTL (it must outlive any
    // pause of the flushers), and is bounded instead by its maximum backlog, entries deleted
    // as they are acknowledged.
    for key in keys.iter().filter(|k| !k.starts_with("shop:wb:")) {
        let ttl: i64 = redis.cmd(&["PTTL", key]);
        assert_ne!(ttl, -1, "{key} has no TTL");
    }
    let metrics = String::from_utf8(raw(a.port, &get_head("/metrics", &[])).body).unwrap();
    drop((a, b));
    for name in ["a", "b", "a2", "b2"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        assert!(!log.is_empty());
        assert!(
            !log.contains(secret),
            "{name}.log shows the password:\n{log}"
        );
        for credential in ["tok-3e7a99c1d2", "cookie-8b1f04aa"] {
            assert!(
                !log.contains(credential),
                "{name}.log shows a request credential"
            );
        }
        let lower = log.to_lowercase();
        for refused in ["noperm", "no permissions", "can't access"] {
            assert!(!lower.contains(refused), "{name}.log: {refused}:\n{log}");
        }
        assert!(!lower.contains("panicked"), "{name}.log:\n{log}");
    }
    assert!(!metrics.contains(secret));
}
