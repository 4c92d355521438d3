//! End-to-end tests: the real `quickstart` binary on a free port with its own SQLite file,
//! over HTTP/1.1 — one instance in memory, and two instances on one real `redis-server` from
//! `turret-testkit` (and one database), as a fleet behind a load balancer would run.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;
use turret_testkit::RedisServer;

/// A running quickstart process; killed (and its log printed if the test failed) on drop.
struct Instance {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Instance {
    /// Starts the binary on `dir`'s database, on Redis when `redis` is given.
    fn start(dir: &Path, name: &str, redis: Option<&RedisServer>) -> Instance {
        let log = dir.join(format!("{name}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_quickstart"));
        command
            .env("LISTEN", "127.0.0.1:0")
            .env("DATABASE_URL", format!("sqlite://{}?mode=rwc", dir.join("db.sqlite").display()))
            .env_remove("REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(redis) = redis {
            command.env("REDIS_URL", redis.url());
        }
        let mut child = command.spawn().expect("start the quickstart binary");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the address");
        let port = line.trim().rsplit(':').next().and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            panic!("no address in {line:?}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        };
        Instance { child, port, log }
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nhost: quickstart\r\nconnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "PUT" {
            head.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("send head");
        stream.write_all(body.as_bytes()).expect("send body");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read the response");
        Resp::parse(&raw)
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", path, headers, "")
    }

    fn put(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        self.request("PUT", path, headers, body)
    }

    /// How many times this instance computed the report (it logs each computation).
    fn report_computations(&self) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter(|l| l.contains("computing the report")).count()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.log.display());
        }
    }
}

/// A parsed HTTP/1.1 response (the server answers `connection: close` with a length or
/// chunks).
#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Resp {
    fn parse(raw: &[u8]) -> Resp {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok());
        let mut headers = HashMap::new();
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let mut body = raw[split + 4..].to_vec();
        if headers.get("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            body = dechunk(&body);
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        Resp { status: status.expect("a status line"), headers, body }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn etag(&self) -> String {
        self.header("etag").unwrap_or_else(|| panic!("no ETag on {self:?}")).to_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&data[..end]);
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16);
        let start = end + 2;
        match size {
            Ok(size) if size > 0 && data.len() >= start + size => {
                out.extend_from_slice(&data[start..start + size]);
                data = &data[(start + size + 2).min(data.len())..];
            }
            _ => break,
        }
    }
    out
}

/// Requests from this test's one client until the first refusal, alternating between
/// `instances`: how many were admitted, the refusal, and how long it took.
fn until_refused(instances: &[&Instance]) -> (usize, Resp, Duration) {
    let started = Instant::now();
    for i in 0..200 {
        let res = instances[i % instances.len()].get("/products/1", &[]);
        if res.status == 429 {
            return (i, res, started.elapsed());
        }
        assert_eq!(res.status, 200, "{res:?}");
    }
    panic!("200 requests, no refusal");
}

/// 100 a minute, admitted in a burst: exactly 100 at once, plus what refilled meanwhile (one
/// every 600 ms); the refusal carries `Retry-After` and the rate-limit fields.
fn assert_quota_of_100(admitted: usize, refused: &Resp, took: Duration) {
    let refilled = (took.as_millis() / 600) as usize + 1;
    assert!(admitted >= 100, "only {admitted} admitted before the first 429");
    assert!(admitted <= 100 + refilled, "{admitted} admitted in {took:?}");
    let retry: u64 = refused.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(refused.header("ratelimit-policy"), Some("\"default\";q=100;w=60"));
    let fields = refused.header("ratelimit").expect("RateLimit");
    assert!(fields.starts_with("\"default\";r=0;t="), "{fields}");
    assert_eq!(refused.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
}

#[test]
fn memory_get_is_cached_and_revalidated_with_304() {
    let dir = TempDir::new().unwrap();
    let app = Instance::start(dir.path(), "memory", None);
    let first = app.get("/products/7", &[]);
    assert_eq!(first.status, 200);
    assert_eq!(first.json(), serde_json::json!({"id": 7, "name": "Product 7", "price": 10.5}));
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = app.get("/products/7", &[]);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.etag(), first.etag());

    let revalidated = app.get("/products/7", &[("if-none-match", &first.etag())]);
    assert_eq!(revalidated.status, 304);
    assert_eq!(revalidated.body, "");
    assert_eq!(revalidated.etag(), first.etag());
    // Every response carries the limiter's fields, a 304 too: 4 requests of 100 spent (GCRA
    // refills one every 600 ms meanwhile).
    let remaining: u32 = revalidated.header("x-ratelimit-remaining").unwrap().parse().unwrap();
    assert!((90..=97).contains(&remaining), "{remaining} left");

    assert_eq!(app.get("/products/100", &[]).status, 200);
    assert_eq!(app.get("/products/101", &[]).status, 404);
    assert_eq!(app.get("/products/0", &[]).status, 404);
}

#[test]
fn memory_put_answers_the_new_etag_invalidates_and_a_stale_if_match_gets_412() {
    let dir = TempDir::new().unwrap();
    let app = Instance::start(dir.path(), "memory", None);
    let old = app.get("/products/3", &[]).etag();
    app.get("/products/3", &[]); // cached

    let body = r#"{"name":"Lamp","price":24.5}"#;
    let put = app.put("/products/3", &[("if-match", &old)], body);
    assert_eq!(put.status, 200, "{put:?}");
    assert_eq!(put.json(), serde_json::json!({"id": 3, "name": "Lamp", "price": 24.5}));
    let new = put.etag();
    assert_ne!(new, old);

    // The write invalidated the cached GET; the new representation has the PUT's tag.
    let read = app.get("/products/3", &[]);
    assert_eq!(read.header("x-cache"), Some("MISS"));
    assert_eq!(read.body, put.body);
    assert_eq!(read.etag(), new);

    // A writer that read the old version is refused before the handler runs.
    let stale = app.put("/products/3", &[("if-match", &old)], r#"{"name":"Lost","price":1}"#);
    assert_eq!(stale.status, 412);
    assert_eq!(stale.header("content-type"), Some("application/problem+json"));
    assert_eq!(stale.json()["status"], 412);
    assert_eq!(app.get("/products/3", &[]).json()["name"], "Lamp");
    // The PUT's own tag is current: no GET needed before the next write.
    let next = app.put("/products/3", &[("if-match", &new)], r#"{"name":"Desk","price":80}"#);
    assert_eq!(next.status, 200);
    assert_eq!(app.put("/products/500", &[], body).status, 404);
}

#[test]
fn memory_allows_100_requests_a_minute_per_client_then_429_with_the_fields() {
    let dir = TempDir::new().unwrap();
    let app = Instance::start(dir.path(), "memory", None);
    let (admitted, refused, took) = until_refused(&[&app]);
    assert_quota_of_100(admitted, &refused, took);
    // The peer (127.0.0.1) is not a trusted proxy (10.0.0.0/8): a made-up X-Forwarded-For
    // does not make it another client.
    let spoofed = app.get("/products/1", &[("x-forwarded-for", "203.0.113.9")]);
    assert_eq!(spoofed.status, 429);
}

#[test]
fn memory_report_is_computed_once_for_concurrent_readers_then_served_cached() {
    let dir = TempDir::new().unwrap();
    let app = Instance::start(dir.path(), "memory", None);
    let bodies: Vec<Resp> = thread::scope(|s| {
        let readers: Vec<_> = (0..4).map(|_| s.spawn(|| app.get("/report", &[]))).collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for res in &bodies {
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.json(), serde_json::json!({"products": 100, "total_value": 7575.0}));
    }
    assert_eq!(app.get("/report", &[]).body, bodies[0].body);
    assert_eq!(app.report_computations(), 1);
}

/// Two instances of the quickstart on one Redis and one database.
fn fleet(dir: &Path, redis: &RedisServer) -> (Instance, Instance) {
    let a = Instance::start(dir, "a", Some(redis));
    let b = Instance::start(dir, "b", Some(redis));
    (a, b)
}

#[test]
fn fleet_shares_one_quota_on_redis() {
    let (dir, redis) = (TempDir::new().unwrap(), RedisServer::start());
    let (a, b) = fleet(dir.path(), &redis);
    let (admitted, refused, took) = until_refused(&[&a, &b]);
    assert_quota_of_100(admitted, &refused, took);
    // Refused on both: one quota, not one per instance.
    assert_eq!(a.get("/products/1", &[]).status, 429);
    assert_eq!(b.get("/products/1", &[]).status, 429);
}

#[test]
fn fleet_put_on_one_instance_invalidates_the_other_and_its_validators() {
    let (dir, redis) = (TempDir::new().unwrap(), RedisServer::start());
    let (a, b) = fleet(dir.path(), &redis);
    let old = b.get("/products/5", &[]).etag();
    let cached = b.get("/products/5", &[]);
    assert_eq!(cached.header("x-cache"), Some("HIT"));
    // One cache for the fleet: the other instance hits what the first stored.
    assert_eq!(a.get("/products/5", &[]).header("x-cache"), Some("HIT"));
    assert_eq!(b.get("/products/5", &[("if-none-match", &old)]).status, 304);

    let put = a.put("/products/5", &[("if-match", &old)], r#"{"name":"Chair","price":42}"#);
    assert_eq!(put.status, 200, "{put:?}");
    let new = put.etag();

    // B's copy (its memory tier too) is gone: B reads the new version, with the PUT's tag.
    let deadline = Instant::now() + Duration::from_secs(5);
    let read = loop {
        let read = b.get("/products/5", &[]);
        if read.json()["name"] == "Chair" || Instant::now() > deadline {
            break read;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(read.json()["name"], "Chair", "B still serves the old product");
    assert_eq!(read.etag(), new);
    assert_eq!(b.get("/products/5", &[("if-none-match", &new)]).status, 304);
    // The validator store is shared: B refuses the stale If-Match A already used.
    let stale = b.put("/products/5", &[("if-match", &old)], r#"{"name":"Lost","price":1}"#);
    assert_eq!(stale.status, 412);
    assert_eq!(a.get("/products/5", &[]).json()["name"], "Chair");
}

#[test]
fn fleet_computes_the_report_once_for_both_instances() {
    let (dir, redis) = (TempDir::new().unwrap(), RedisServer::start());
    let (a, b) = fleet(dir.path(), &redis);
    let bodies: Vec<Resp> = thread::scope(|s| {
        let readers: Vec<_> = (0..6)
            .map(|i| {
                let instance = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || instance.get("/report", &[]))
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for res in &bodies {
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.json()["products"], 100);
    }
    assert_eq!(a.report_computations() + b.report_computations(), 1);
    // Later readers on either instance get the stored report.
    assert_eq!(b.get("/report", &[]).body, bodies[0].body);
    assert_eq!(a.report_computations() + b.report_computations(), 1);
}
