//! The shop soak: two shop processes on one SQLite file and one Redis, mixed traffic from
//! many client addresses (behind a trusted proxy: `X-Forwarded-For`), Redis killed and
//! restarted empty at a fixed interval; afterwards every response is checked, the rate
//! limit is checked per client, resident memory of each shop is compared over time, and
//! the shops' logs are searched for panics.
//!
//! ```sh
//! scripts/soak                     # 600 s, Redis restarted every 120 s (release build)
//! scripts/soak --duration 60       # the CI version: Redis restarted every 20 s
//! soak --shop target/release/shop --duration 600 [--restart-every 120] [--report FILE]
//! ```
//!
//! Traffic: `--light-workers` threads (default 4) send reads of products, product lists,
//! categories, top-selling and the dashboard, conditional GETs with the last `ETag` they
//! saw, `PUT`s with `If-Match`, and `POST`/`DELETE` of their own products, each as one of
//! `--light-clients` addresses (default 50), paced (`--pace-ms`, default 40) so that every
//! light client stays under its quota; two greedy threads, one address each, read as fast
//! as the shops answer and spend their quota over and over. Requests alternate between the
//! two shops over keep-alive connections.
//!
//! Checks (exit status 1 when one fails):
//! - every response has a status expected for its request (5xx never) and a JSON body
//!   where one is due; no connection fails;
//! - per client, while Redis is up and the shops have had `--recovery` seconds (default 10)
//!   to notice it, no `quota + 1` admitted requests fall within 60 s (checked on the
//!   client's clock, send of the first to answer of the last, so never a false alarm); in
//!   any 60 s window, at most `(restarts in it + 3) × quota` (Redis' state is lost on each
//!   restart, and while it is down each shop limits alone);
//! - resident memory of each shop, sampled every `--sample-every` seconds (default 5):
//!   the last sample within 25 % (or 24 MB) of the first sample after the first quarter
//!   of the run;
//! - no `panicked` in either shop's log, and both still running at the end.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use turret_testkit::RedisServer;

#[derive(Debug, Clone)]
struct Args {
    duration: u64,
    restart_every: u64,
    shop: PathBuf,
    quota: u32,
    light_workers: usize,
    light_clients: u32,
    pace_ms: u64,
    sample_every: u64,
    recovery: u64,
    report: Option<PathBuf>,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Args {
            duration: 600,
            restart_every: 0,
            shop: PathBuf::from("target/release/shop"),
            quota: 300,
            light_workers: 4,
            light_clients: 50,
            pace_ms: 40,
            sample_every: 5,
            recovery: 10,
            report: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
            match flag.as_str() {
                "--duration" => args.duration = number(value()?)?,
                "--restart-every" => args.restart_every = number(value()?)?,
                "--shop" => args.shop = PathBuf::from(value()?),
                "--quota" => args.quota = number(value()?)? as u32,
                "--light-workers" => args.light_workers = number(value()?)? as usize,
                "--light-clients" => args.light_clients = number(value()?)? as u32,
                "--pace-ms" => args.pace_ms = number(value()?)?,
                "--sample-every" => args.sample_every = number(value()?)?.max(1),
                "--recovery" => args.recovery = number(value()?)?,
                "--report" => args.report = Some(PathBuf::from(value()?)),
                "-h" | "--help" => {
                    return Err(
                        "usage: soak --shop PATH [--duration SECS] [--restart-every SECS] \
                         [--quota N] [--light-workers N] [--light-clients N] [--pace-ms MS] \
                         [--sample-every SECS] [--recovery SECS] [--report FILE]"
                            .into(),
                    );
                }
                other => return Err(format!("unknown argument {other} (see --help)")),
            }
        }
        if args.restart_every == 0 {
            args.restart_every = if args.duration >= 600 { 120 } else { 20 };
        }
        if args.quota == 0 || args.light_clients == 0 {
            return Err("--quota and --light-clients must be positive".into());
        }
        Ok(args)
    }
}

// ---------------------------------------------------------------------------------------
// A small HTTP/1.1 client over keep-alive connections.

struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

struct Conn {
    port: u16,
    reader: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new(port: u16) -> Self {
        Self { port, reader: None }
    }

    fn open(&mut self) -> std::io::Result<&mut BufReader<TcpStream>> {
        if self.reader.is_none() {
            let stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.set_nodelay(true)?;
            self.reader = Some(BufReader::new(stream));
        }
        Ok(self.reader.as_mut().expect("just opened"))
    }

    /// Sends one request; a reused connection that the server had closed is retried once
    /// on a fresh one (only when nothing at all came back).
    fn send(&mut self, request: &[u8]) -> Result<Resp, String> {
        let reused = self.reader.is_some();
        match self.try_send(request) {
            Ok(r) => Ok(r),
            Err((e, nothing_read)) if reused && nothing_read => {
                self.reader = None;
                self.try_send(request)
                    .map_err(|(e2, _)| format!("{e}; retried: {e2}"))
            }
            Err((e, _)) => {
                self.reader = None;
                Err(e)
            }
        }
    }

    fn try_send(&mut self, request: &[u8]) -> Result<Resp, (String, bool)> {
        let reader = self.open().map_err(|e| (format!("connect: {e}"), true))?;
        reader
            .get_mut()
            .write_all(request)
            .map_err(|e| (format!("write: {e}"), true))?;
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| (format!("read status: {e}"), true))?;
        if n == 0 {
            self.reader = None;
            return Err(("connection closed before a response".into(), true));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or((format!("bad status line {line:?}"), false))?;
        let mut headers = HashMap::new();
        loop {
            line.clear();
            reader
                .read_line(&mut line)
                .map_err(|e| (format!("read head: {e}"), false))?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let mut body = Vec::new();
        if headers
            .get("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            loop {
                line.clear();
                reader
                    .read_line(&mut line)
                    .map_err(|e| (format!("read chunk: {e}"), false))?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| (format!("bad chunk size {line:?}"), false))?;
                let mut chunk = vec![0; size + 2];
                reader
                    .read_exact(&mut chunk)
                    .map_err(|e| (format!("read chunk: {e}"), false))?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(len) = headers.get("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| (format!("bad content-length {len}"), false))?;
            body.resize(len, 0);
            reader
                .read_exact(&mut body)
                .map_err(|e| (format!("read body: {e}"), false))?;
        }
        if headers.get("connection").is_some_and(|c| c == "close") {
            self.reader = None;
        }
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

fn request(method: &str, path: &str, client: &str, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nhost: shop.soak\r\nx-forwarded-for: {client}\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body);
    head.into_bytes()
}

// ---------------------------------------------------------------------------------------
// Traffic.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Product,
    ConditionalProduct,
    ProductList,
    Categories,
    Category,
    TopSelling,
    Dashboard,
    Put,
    Post,
    Delete,
}

impl Kind {
    fn expected(self) -> &'static [u16] {
        match self {
            Kind::Product | Kind::ProductList | Kind::Categories | Kind::Category => &[200, 429],
            Kind::ConditionalProduct => &[200, 304, 429],
            Kind::TopSelling | Kind::Dashboard => &[200, 429],
            Kind::Put => &[200, 412, 429],
            Kind::Post => &[201, 429],
            Kind::Delete => &[204, 429],
        }
    }
}

/// One request's outcome (times in ms since the start).
#[derive(Debug, Clone)]
struct Record {
    client: u32,
    kind: Kind,
    sent_ms: u64,
    answered_ms: u64,
    status: u16,
    x_cache: Option<String>,
    problem: Option<String>,
}

/// xorshift64*: enough randomness for traffic mixes, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn client_addr(client: u32) -> String {
    // Greedy clients are 0 and 1; light ones from 2 on. 198.18.0.0/15 is for benchmarks.
    format!("198.18.{}.{}", client / 250, client % 250 + 1)
}

struct Worker {
    ports: [u16; 2],
    conns: [Conn; 2],
    turn: usize,
    rng: Rng,
    start: Instant,
    records: Vec<Record>,
    etags: HashMap<u64, String>,
    created: Vec<u64>,
}

impl Worker {
    fn new(ports: [u16; 2], seed: u64, start: Instant) -> Self {
        Self {
            ports,
            conns: [Conn::new(ports[0]), Conn::new(ports[1])],
            turn: seed as usize % 2,
            rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            start,
            records: Vec::new(),
            etags: HashMap::new(),
            created: Vec::new(),
        }
    }

    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn exchange(&mut self, client: u32, kind: Kind, req: Vec<u8>) -> Option<Resp> {
        let shop = self.turn;
        self.turn ^= 1;
        let sent_ms = self.ms();
        let result = self.conns[shop].send(&req);
        let answered_ms = self.ms();
        let _ = self.ports;
        let mut record = Record {
            client,
            kind,
            sent_ms,
            answered_ms,
            status: 0,
            x_cache: None,
            problem: None,
        };
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                record.problem = Some(format!("shop {shop}: {e}"));
                self.records.push(record);
                return None;
            }
        };
        record.status = resp.status;
        record.x_cache = resp.headers.get("x-cache").cloned();
        if !kind.expected().contains(&resp.status) {
            record.problem = Some(format!(
                "shop {shop}: status {} not in {:?}: {}",
                resp.status,
                kind.expected(),
                String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
            ));
        } else if !matches!(resp.status, 204 | 304)
            && serde_json::from_slice::<serde_json::Value>(&resp.body).is_err()
        {
            record.problem = Some(format!(
                "shop {shop}: status {} with a body that is not JSON: {:?}",
                resp.status,
                String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
            ));
        }
        self.records.push(record);
        Some(resp)
    }

    /// One request of the light mix, as one of the light clients.
    fn light(&mut self, light_clients: u32) {
        let client = 2 + self.rng.below(u64::from(light_clients)) as u32;
        let addr = client_addr(client);
        let roll = self.rng.below(100);
        match roll {
            0..=24 => {
                let id = 1 + self.rng.below(200);
                let req = request("GET", &format!("/products/{id}"), &addr, &[], "");
                if let Some(r) = self.exchange(client, Kind::Product, req)
                    && let Some(etag) = r.headers.get("etag")
                {
                    self.etags.insert(id, etag.clone());
                }
            }
            25..=34 => {
                let id = 1 + self.rng.below(200);
                let etag = self
                    .etags
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("\"p{id}v1\""));
                let req = request(
                    "GET",
                    &format!("/products/{id}"),
                    &addr,
                    &[("if-none-match", &etag)],
                    "",
                );
                self.exchange(client, Kind::ConditionalProduct, req);
            }
            35..=49 => {
                let skip = self.rng.below(20) * 20;
                let limit = [5, 10, 20, 50][self.rng.below(4) as usize];
                let path = match self.rng.below(3) {
                    0 => format!("/products?skip={skip}&limit={limit}"),
                    1 => format!(
                        "/products?category={}&limit={limit}",
                        1 + self.rng.below(20)
                    ),
                    _ => format!(
                        "/products?limit={limit}&utm_source=soak{}",
                        self.rng.below(9)
                    ),
                };
                let req = request("GET", &path, &addr, &[], "");
                self.exchange(client, Kind::ProductList, req);
            }
            50..=59 => {
                let req = request("GET", "/categories", &addr, &[], "");
                self.exchange(client, Kind::Categories, req);
            }
            60..=64 => {
                let id = 1 + self.rng.below(20);
                let req = request("GET", &format!("/categories/{id}"), &addr, &[], "");
                self.exchange(client, Kind::Category, req);
            }
            65..=74 => {
                let limit = [5, 10, 20][self.rng.below(3) as usize];
                let path = format!("/products/top-selling?limit={limit}");
                let req = request("GET", &path, &addr, &[], "");
                self.exchange(client, Kind::TopSelling, req);
            }
            75..=79 => {
                let req = request("GET", "/stats/dashboard", &addr, &[], "");
                self.exchange(client, Kind::Dashboard, req);
            }
            80..=89 => {
                let id = 1 + self.rng.below(50);
                let body = format!(
                    r#"{{"name":"Soak product {id} {}","description":"written by the soak","price":{}.{:02},"stock":{},"category_id":{}}}"#,
                    self.rng.below(1000),
                    1 + self.rng.below(99),
                    self.rng.below(100),
                    self.rng.below(50),
                    1 + id % 20,
                );
                let etag = self.etags.get(&id).cloned();
                let headers: Vec<(&str, &str)> = etag
                    .as_deref()
                    .map(|e| ("if-match", e))
                    .into_iter()
                    .collect();
                let req = request("PUT", &format!("/products/{id}"), &addr, &headers, &body);
                if let Some(r) = self.exchange(client, Kind::Put, req)
                    && let Some(etag) = r.headers.get("etag")
                {
                    self.etags.insert(id, etag.clone());
                }
            }
            90..=94 => {
                let body = format!(
                    r#"{{"name":"Soak new {}","description":"made by the soak","price":2.5,"stock":1,"category_id":{}}}"#,
                    self.rng.below(1_000_000),
                    1 + self.rng.below(20)
                );
                let req = request("POST", "/products", &addr, &[], &body);
                if let Some(r) = self.exchange(client, Kind::Post, req)
                    && r.status == 201
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.body)
                    && let Some(id) = v["id"].as_u64()
                {
                    self.created.push(id);
                }
            }
            _ => {
                let Some(id) = self.created.pop() else {
                    return;
                };
                let req = request("DELETE", &format!("/products/{id}"), &addr, &[], "");
                if let Some(r) = self.exchange(client, Kind::Delete, req)
                    && r.status == 429
                {
                    self.created.push(id);
                }
            }
        }
    }

    /// One cheap read as greedy client `client` (0 or 1).
    fn greedy(&mut self, client: u32) {
        let addr = client_addr(client);
        let (path, kind) = if self.rng.below(2) == 0 {
            ("/categories", Kind::Categories)
        } else {
            ("/products/1", Kind::Product)
        };
        let req = request("GET", path, &addr, &[], "");
        self.exchange(client, kind, req);
    }
}

// ---------------------------------------------------------------------------------------
// The processes.

struct Shop {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
}

fn spawn_shop(
    args: &Args,
    name: &'static str,
    dir: &Path,
    redis_url: &str,
) -> Result<(Child, mpsc::Receiver<String>, PathBuf), String> {
    let log = dir.join(format!("shop-{name}.log"));
    let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = Command::new(&args.shop)
        .args(["--listen", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("shop.db").display()))
        .args(["--redis-url", redis_url])
        .args(["--trusted-proxies", "127.0.0.1/32"])
        .args(["--rate-limit", &format!("{}/60s", args.quota)])
        .env("SHOP_LOG", "info")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("RATE_LIMIT")
        .env_remove("TRUSTED_PROXIES")
        .env_remove("CACHE_TTL")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("start {}: {e}", args.shop.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    Ok((child, rx, log))
}

fn wait_ready(
    name: &'static str,
    (mut child, rx, log): (Child, mpsc::Receiver<String>, PathBuf),
) -> Result<Shop, String> {
    let line = rx.recv_timeout(Duration::from_secs(300)).map_err(|_| {
        let _ = child.kill();
        format!(
            "shop {name} did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("shop {name}: no address in {line:?}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn = Conn::new(port);
    let health = b"GET /health HTTP/1.1\r\nhost: shop.soak\r\n\r\n";
    while conn.send(health).map(|r| r.status) != Ok(200) {
        if Instant::now() > deadline {
            return Err(format!("shop {name}: /health never answered 200"));
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(Shop {
        name,
        child,
        port,
        log,
    })
}

/// `VmRSS` of a process, in bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

// ---------------------------------------------------------------------------------------
// Checks.

/// Restarts: when Redis was killed and when it answered again (ms since the start).
#[derive(Debug, Clone, Copy)]
struct Restart {
    killed_ms: u64,
    back_ms: u64,
}

struct RateCheck {
    violations: Vec<String>,
    /// Per greedy client: admitted, refused, the most admitted within one Redis-up span of
    /// under 60 s, the most admitted in any 60 s window.
    greedy: Vec<(u32, usize, usize, usize, usize)>,
}

fn check_rate_limit(
    records: &[Record],
    restarts: &[Restart],
    quota: usize,
    recovery_ms: u64,
    end_ms: u64,
) -> RateCheck {
    const WINDOW: u64 = 60_000;
    // Redis-up spans in which the shops had time to notice it: [start, end).
    let mut epochs = Vec::new();
    let mut from = 0;
    for r in restarts {
        epochs.push((from, r.killed_ms));
        from = r.back_ms + recovery_ms;
    }
    epochs.push((from, end_ms));
    let mut by_client: HashMap<u32, Vec<&Record>> = HashMap::new();
    for r in records
        .iter()
        .filter(|r| r.problem.is_none() && r.status != 0)
    {
        by_client.entry(r.client).or_default().push(r);
    }
    let mut check = RateCheck {
        violations: Vec::new(),
        greedy: Vec::new(),
    };
    let mut clients: Vec<_> = by_client.into_iter().collect();
    clients.sort_by_key(|(c, _)| *c);
    for (client, mut recs) in clients {
        recs.sort_by_key(|r| r.sent_ms);
        let admitted: Vec<&Record> = recs.iter().copied().filter(|r| r.status != 429).collect();
        let refused = recs.len() - admitted.len();
        // Strict: inside one epoch, quota + 1 admissions never within 60 s.
        let mut most_in_epoch = 0;
        for &(lo, hi) in &epochs {
            let inside: Vec<&Record> = admitted
                .iter()
                .copied()
                .filter(|r| r.sent_ms >= lo && r.answered_ms < hi)
                .collect();
            let mut j = 0;
            for i in 0..inside.len() {
                while j < inside.len() && inside[j].sent_ms < inside[i].sent_ms + WINDOW {
                    j += 1;
                }
                // inside[i..j] were all sent within 60 s of inside[i]; those answered
                // within 60 s of inside[i]'s send were certainly decided within 60 s.
                let certain = inside[i..j]
                    .iter()
                    .filter(|r| r.answered_ms < inside[i].sent_ms + WINDOW)
                    .count();
                most_in_epoch = most_in_epoch.max(certain);
                if certain > quota {
                    check.violations.push(format!(
                        "client {} got {certain} admissions within 60 s from {} ms while Redis was up (quota {quota})",
                        client_addr(client),
                        inside[i].sent_ms
                    ));
                    break;
                }
            }
        }
        // Loose: any 60 s window, allowing for lost Redis state and per-process fallback.
        let mut most_any = 0;
        let mut j = 0;
        for i in 0..admitted.len() {
            while j < admitted.len() && admitted[j].sent_ms < admitted[i].sent_ms + WINDOW {
                j += 1;
            }
            let count = j - i;
            most_any = most_any.max(count);
            let lo = admitted[i].sent_ms;
            let restarts_in = restarts
                .iter()
                .filter(|r| r.killed_ms + WINDOW >= lo && r.killed_ms < lo + WINDOW)
                .count();
            let bound = (restarts_in + 3) * quota;
            if count > bound {
                check.violations.push(format!(
                    "client {} got {count} admissions in the 60 s from {lo} ms (bound {bound})",
                    client_addr(client)
                ));
                break;
            }
        }
        if client < 2 {
            check
                .greedy
                .push((client, admitted.len(), refused, most_in_epoch, most_any));
        }
    }
    check
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<bool, String> {
    if !args.shop.exists() {
        return Err(format!(
            "no shop binary at {} (cargo build --release -p shop)",
            args.shop.display()
        ));
    }
    let dir = std::env::temp_dir().join(format!("turret-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut redis = RedisServer::start();
    let url = redis.url();
    eprintln!(
        "soak: redis on {}, shops on one SQLite file in {}",
        redis.addr(),
        dir.display()
    );
    let a = spawn_shop(args, "a", &dir, &url)?;
    let b = spawn_shop(args, "b", &dir, &url)?;
    let mut shops = vec![wait_ready("a", a)?, wait_ready("b", b)?];
    let ports = [shops[0].port, shops[1].port];
    let pids: Vec<u32> = shops.iter().map(|s| s.child.id()).collect();
    eprintln!(
        "soak: shops ready on ports {ports:?}; {} s of traffic, Redis restarted every {} s",
        args.duration, args.restart_every
    );

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let all: Arc<Mutex<Vec<Record>>> = Arc::default();
    let mut threads = Vec::new();
    for w in 0..args.light_workers + 2 {
        let (stop, all) = (stop.clone(), all.clone());
        let args = args.clone();
        threads.push(thread::spawn(move || {
            let mut worker = Worker::new(ports, 1 + w as u64, start);
            let greedy = w >= args.light_workers;
            while !stop.load(Ordering::Relaxed) {
                if greedy {
                    worker.greedy((w - args.light_workers) as u32);
                    thread::sleep(Duration::from_millis(1));
                } else {
                    worker.light(args.light_clients);
                    thread::sleep(Duration::from_millis(args.pace_ms));
                }
            }
            all.lock().unwrap().extend(worker.records);
        }));
    }

    // Main thread: memory samples and Redis restarts until the deadline.
    let deadline = start + Duration::from_secs(args.duration);
    let mut samples: Vec<(u64, Vec<Option<u64>>)> = Vec::new();
    let mut restarts = Vec::new();
    let mut next_sample = start;
    let mut next_restart = start + Duration::from_secs(args.restart_every);
    while Instant::now() < deadline {
        let now = Instant::now();
        if now >= next_sample {
            samples.push((
                now.duration_since(start).as_secs(),
                pids.iter().map(|&p| rss(p)).collect(),
            ));
            next_sample += Duration::from_secs(args.sample_every);
        }
        if now >= next_restart && now + Duration::from_secs(5) < deadline {
            let killed_ms = start.elapsed().as_millis() as u64;
            redis.restart();
            let back_ms = start.elapsed().as_millis() as u64;
            eprintln!(
                "soak: redis killed at {:.1} s and answering again at {:.1} s",
                killed_ms as f64 / 1000.0,
                back_ms as f64 / 1000.0
            );
            restarts.push(Restart { killed_ms, back_ms });
            next_restart += Duration::from_secs(args.restart_every);
        }
        thread::sleep(Duration::from_millis(100));
    }
    samples.push((
        start.elapsed().as_secs(),
        pids.iter().map(|&p| rss(p)).collect(),
    ));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| "a traffic thread panicked")?;
    }
    let end_ms = start.elapsed().as_millis() as u64;

    // Shops still alive? Then stop them and read their logs.
    let mut alive = Vec::new();
    for shop in &mut shops {
        alive.push(matches!(shop.child.try_wait(), Ok(None)));
        let _ = shop.child.kill();
        let _ = shop.child.wait();
    }
    let mut panics = Vec::new();
    let mut log_lines = Vec::new();
    let mut warnings = Vec::new();
    for shop in &shops {
        let log = std::fs::read_to_string(&shop.log).unwrap_or_default();
        log_lines.push(log.lines().count());
        warnings.push(log.lines().filter(|l| l.contains(" WARN ")).count());
        panics.push(
            log.lines()
                .filter(|l| l.contains("panicked"))
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
    }

    let records = std::mem::take(&mut *all.lock().unwrap());
    let problems: Vec<&Record> = records.iter().filter(|r| r.problem.is_some()).collect();
    let rate = check_rate_limit(
        &records,
        &restarts,
        args.quota as usize,
        args.recovery * 1000,
        end_ms,
    );

    // Memory: the last sample against the first after the first quarter.
    let warm_from = args.duration / 4;
    let mut memory_ok = true;
    let mut memory_rows = Vec::new();
    let mut memory_series = Vec::new();
    for (i, shop) in shops.iter().enumerate() {
        let series: Vec<(u64, u64)> = samples
            .iter()
            .filter_map(|(t, v)| v[i].map(|m| (*t, m)))
            .collect();
        let Some(&(_, first)) = series.first() else {
            memory_ok = false;
            continue;
        };
        let last = series.last().map_or(first, |s| s.1);
        let max = series.iter().map(|s| s.1).max().unwrap_or(first);
        let warm = series
            .iter()
            .find(|(t, _)| *t >= warm_from)
            .map_or(first, |s| s.1);
        let allowed = (warm / 4).max(24_000_000);
        let flat = last <= warm + allowed;
        memory_ok &= flat;
        memory_rows.push(format!(
            "| shop {} | {} | {:.1} MB | {:.1} MB (at {} s) | {:.1} MB | {:.1} MB | {} |",
            shop.name,
            series.len(),
            mb(first),
            mb(warm),
            warm_from,
            mb(last),
            mb(max),
            if flat { "flat" } else { "GREW" }
        ));
        // The shape: one sample a minute (every sample when the run is shorter).
        let step = if args.duration >= 120 {
            60
        } else {
            args.sample_every
        };
        let mut next = 0;
        let mut shape = Vec::new();
        for &(t, m) in &series {
            if t >= next {
                shape.push(format!("{t} s {:.1}", mb(m)));
                next = t + step;
            }
        }
        memory_series.push(format!("shop {}: {}", shop.name, shape.join(", ")));
    }

    // The report.
    let mut out = String::new();
    let secs = end_ms as f64 / 1000.0;
    out.push_str(&format!(
        "Soak: {secs:.0} s, 2 shops (`{}`), Redis killed and restarted empty every {} s ({} restarts), quota {}/60 s per client, {} light clients + 2 greedy.\n\n",
        args.shop.display(),
        args.restart_every,
        restarts.len(),
        args.quota,
        args.light_clients
    ));
    let mut kinds: HashMap<Kind, HashMap<u16, usize>> = HashMap::new();
    let mut cache: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *kinds
            .entry(r.kind)
            .or_default()
            .entry(r.status)
            .or_default() += 1;
        if let Some(x) = &r.x_cache {
            *cache.entry(x.clone()).or_default() += 1;
        }
    }
    out.push_str(&format!(
        "Requests: {} ({:.0}/s), invalid: {}.\n\n| request | sent | statuses |\n|---|---|---|\n",
        records.len(),
        records.len() as f64 / secs.max(1.0),
        problems.len()
    ));
    let mut kind_list: Vec<_> = kinds.iter().collect();
    kind_list.sort_by_key(|(k, _)| **k);
    for (kind, statuses) in kind_list {
        let mut s: Vec<_> = statuses.iter().collect();
        s.sort();
        let total: usize = s.iter().map(|(_, n)| **n).sum();
        let text: Vec<String> = s.iter().map(|(st, n)| format!("{st}: {n}")).collect();
        out.push_str(&format!("| {kind:?} | {total} | {} |\n", text.join(", ")));
    }
    let mut c: Vec<_> = cache.into_iter().collect();
    c.sort();
    out.push_str(&format!(
        "\nX-Cache: {}.\n\n",
        c.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.push_str(
        "| greedy client | admitted | refused (429) | most admitted within 60 s while Redis was up | most admitted in any 60 s |\n|---|---|---|---|---|\n",
    );
    for (client, admitted, refused, epoch, any) in &rate.greedy {
        out.push_str(&format!(
            "| {} | {admitted} | {refused} | {epoch} (quota {}) | {any} |\n",
            client_addr(*client),
            args.quota
        ));
    }
    out.push_str(&format!(
        "\nRate-limit violations: {}.\n\n| process | samples | RSS first | RSS after warm-up | RSS last | RSS max | |\n|---|---|---|---|---|---|---|\n",
        rate.violations.len()
    ));
    for row in &memory_rows {
        out.push_str(row);
        out.push('\n');
    }
    out.push_str(&format!(
        "\nRSS (MB) over time: {}.\n",
        memory_series.join("; ")
    ));
    out.push_str(&format!(
        "\nPanics in the logs: {} (log lines: {:?}, of which warnings, e.g. Redis lost: {:?}); both shops running at the end: {}.\n",
        panics.iter().map(Vec::len).sum::<usize>(),
        log_lines,
        warnings,
        alive.iter().all(|a| *a)
    ));

    let ok = problems.is_empty()
        && rate.violations.is_empty()
        && memory_ok
        && panics.iter().all(Vec::is_empty)
        && alive.iter().all(|a| *a)
        && !records.is_empty();
    out.push_str(&format!(
        "\nResult: {}.\n",
        if ok { "PASS" } else { "FAIL" }
    ));
    println!("{out}");
    for p in problems.iter().take(20) {
        eprintln!(
            "invalid: {:?} from {} at {} ms: {}",
            p.kind,
            client_addr(p.client),
            p.sent_ms,
            p.problem.as_deref().unwrap_or("")
        );
    }
    for v in rate.violations.iter().take(20) {
        eprintln!("rate limit: {v}");
    }
    for (shop, lines) in shops.iter().zip(&panics) {
        for l in lines.iter().take(5) {
            eprintln!("panic in shop {}: {l}", shop.name);
        }
    }
    if let Some(path) = &args.report {
        std::fs::write(path, &out).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("soak: logs kept in {}", dir.display());
    }
    Ok(ok)
}
