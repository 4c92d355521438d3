//! End-to-end tests: the real `shop` binary on a free port with a fresh SQLite file, driven
//! over HTTP/1.1 by a small client on `std::net::TcpStream`; Redis tests use real
//! `redis-server` processes from `turret-testkit`.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Barrier, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;
use turret_testkit::RedisServer;

/// A running shop process; killed (and its log printed if the test failed) on drop.
struct Shop {
    child: Child,
    port: u16,
    log: PathBuf,
    host: String,
    _dir: Option<TempDir>,
}

impl Shop {
    /// A shop on its own new SQLite database.
    fn start(args: &[&str]) -> Shop {
        Shop::start_env(args, &[])
    }

    /// A shop on its own new SQLite database, with these environment variables set.
    fn start_env(args: &[&str], envs: &[(&str, &str)]) -> Shop {
        let dir = TempDir::new().expect("temp dir");
        let mut shop =
            Shop::spawn_env(&db_url(dir.path()), dir.path(), "shop", args, envs).wait_ready();
        shop._dir = Some(dir);
        shop
    }

    /// Starts the process without waiting for it (see [`Shop::wait_ready`]).
    fn spawn(database_url: &str, log_dir: &Path, name: &str, args: &[&str]) -> Starting {
        Shop::spawn_env(database_url, log_dir, name, args, &[])
    }

    /// [`Shop::spawn`] with these environment variables set.
    fn spawn_env(
        database_url: &str,
        log_dir: &Path,
        name: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Starting {
        let log = log_dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shop"))
            .args(["--listen", "127.0.0.1:0", "--database-url", database_url])
            .args(args)
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("RATE_LIMIT")
            .env_remove("CACHE_TTL")
            .env_remove("TRUSTED_PROXIES")
            .env_remove("FORWARDED_HEADER")
            .env_remove("IPV6_PREFIX")
            .envs(envs.iter().copied())
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
        Starting { child, rx, log }
    }

    /// Sends one request; `headers` may override `Host`.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut head = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("host: {}\r\n", self.host));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT") {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("send head");
        stream.write_all(body.as_bytes()).expect("send body");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read response");
        Resp::parse(&raw)
    }

    fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], "")
    }

    fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", path, headers, "")
    }

    fn send_json(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.request(method, path, &all, body)
    }

    /// The value of one sample of `/metrics`, e.g. `shop_db_queries_total{query="top_selling"}`
    /// (0 when absent).
    fn metric(&self, sample: &str) -> f64 {
        let text = self.get("/metrics").body;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    fn db_queries(&self, query: &str) -> f64 {
        self.metric(&format!("shop_db_queries_total{{query=\"{query}\"}}"))
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- shop log (last lines, newest first) ---");
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// A shop process that has not printed its address yet.
struct Starting {
    child: Child,
    rx: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Starting {
    /// Reads the address from stdout and waits until `/health` answers 200.
    fn wait_ready(mut self) -> Shop {
        let line = match self.rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => line,
            Err(_) => {
                let _ = self.child.kill();
                panic!(
                    "the shop did not start: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        };
        let port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = self.child.kill();
                panic!(
                    "no address in {line:?}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            });
        let shop = Shop {
            child: self.child,
            port,
            log: self.log,
            host: format!("127.0.0.1:{port}"),
            _dir: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && shop.get("/health").status == 200
            {
                return shop;
            }
            assert!(Instant::now() < deadline, "/health never answered 200");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn db_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("shop.db").display())
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Resp {
    fn parse(raw: &[u8]) -> Resp {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete response head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let mut headers = HashMap::new();
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let mut body = raw[split + 4..].to_vec();
        if headers
            .get("transfer-encoding")
            .is_some_and(|te| te.contains("chunked"))
        {
            body = dechunk(&body);
        }
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

/// A product body for POST / PUT.
fn product_body(name: &str, price: f64, category_id: i64) -> String {
    serde_json::json!({
        "name": name,
        "description": "made in the tests",
        "price": price,
        "stock": 3,
        "category_id": category_id,
    })
    .to_string()
}

#[test]
fn second_get_is_a_cache_hit() {
    let shop = Shop::start(&[]);

    let first = shop.get("/products/1");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = shop.get("/products/1");
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert!(
        second
            .header("cache-status")
            .is_some_and(|s| s.contains("hit")),
        "{:?}",
        second.headers
    );
    assert_eq!(first.body, second.body);
    assert_eq!(shop.db_queries("get_product"), 1.0);

    // Lists too, and parameters outside the key share the entry.
    assert_eq!(
        shop.get("/products?skip=0&limit=5").header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        shop.get("/products?limit=5&skip=0&utm_source=mail")
            .header("x-cache"),
        Some("HIT")
    );
    let categories = shop.get("/categories");
    assert_eq!(categories.json().as_array().map(Vec::len), Some(20));
    assert_eq!(shop.get("/categories").header("x-cache"), Some("HIT"));
    assert_eq!(shop.db_queries("list_products"), 1.0);
    assert_eq!(shop.db_queries("list_categories"), 1.0);
    // The tags are for the cache, not for clients.
    assert_eq!(second.header("surrogate-key"), None);
}

#[test]
fn if_none_match_gets_304() {
    let shop = Shop::start(&[]);

    let product = shop.get("/products/3");
    let etag = product.header("etag").expect("an ETag").to_owned();
    assert_eq!(etag, "\"p3v1\"");
    let revalidated = shop.get_with("/products/3", &[("if-none-match", &etag)]);
    assert_eq!(revalidated.status, 304);
    assert_eq!(revalidated.body, "");
    assert_eq!(revalidated.header("etag"), Some(etag.as_str()));

    // Lists get an ETag hashed from the body.
    let list = shop.get("/products?limit=3");
    let list_etag = list.header("etag").expect("a generated ETag").to_owned();
    assert_eq!(
        shop.get_with("/products?limit=3", &[("if-none-match", &list_etag)])
            .status,
        304
    );
    assert_eq!(
        shop.get_with("/products?limit=3", &[("if-none-match", "\"other\"")])
            .status,
        200
    );
}

#[test]
fn stale_if_match_put_gets_412() {
    let shop = Shop::start(&[]);

    let original = shop.get("/products/4");
    let etag = original.header("etag").expect("an ETag").to_owned();
    let mut edited = original.json();
    edited["name"] = "Edited by the first writer".into();
    let first = shop.send_json(
        "PUT",
        "/products/4",
        &[("if-match", &etag)],
        &edited.to_string(),
    );
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("etag"), Some("\"p4v2\""));
    assert_eq!(first.json()["version"], 2);

    // A second writer that read the same version would overwrite that change.
    edited["name"] = "Edited by the second writer".into();
    let second = shop.send_json(
        "PUT",
        "/products/4",
        &[("if-match", &etag)],
        &edited.to_string(),
    );
    assert_eq!(second.status, 412);
    assert_eq!(second.json()["error"], "precondition_failed");
    assert_eq!(
        shop.get("/products/4").json()["name"],
        "Edited by the first writer"
    );
    assert_eq!(
        shop.metric("turret_conditional_responses_total{outcome=\"412\"}"),
        1.0
    );

    // DELETE is guarded the same way.
    assert_eq!(
        shop.request("DELETE", "/products/4", &[("if-match", &etag)], "")
            .status,
        412
    );
    assert_eq!(
        shop.request("DELETE", "/products/4", &[("if-match", "\"p4v2\"")], "")
            .status,
        204
    );
}

#[test]
fn handler_refuses_a_stale_if_match_without_the_layer() {
    let shop = Shop::start(&["--no-conditional"]);
    let body = product_body("Renamed", 9.5, 2);
    let ok = shop.send_json("PUT", "/products/6", &[("if-match", "\"p6v1\"")], &body);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let stale = shop.send_json("PUT", "/products/6", &[("if-match", "\"p6v1\"")], &body);
    assert_eq!(stale.status, 412);
    assert_eq!(stale.json()["error"], "precondition_failed");
    // A list of tags that contains the current one passes.
    let listed = shop.send_json(
        "PUT",
        "/products/6",
        &[("if-match", "\"p6v1\", \"p6v2\"")],
        &body,
    );
    assert_eq!(listed.status, 200, "{}", listed.body);
}

#[test]
fn a_write_invalidates_the_cached_product_and_lists() {
    let shop = Shop::start(&[]);

    // Fill: the product, two lists it is on, and the category list.
    let product = shop.get("/products/5").json();
    let category = product["category_id"].as_i64().expect("a category id");
    let by_category = format!("/products?category={category}&limit=100");
    for path in ["/products/5", "/products?limit=10", &by_category] {
        shop.get(path);
        assert_eq!(shop.get(path).header("x-cache"), Some("HIT"), "{path}");
    }

    // PUT: the product and every list show the change at once.
    let mut edited = product.clone();
    edited["name"] = "Invalidated Lamp".into();
    edited["price"] = 12.5.into();
    let put = shop.send_json("PUT", "/products/5", &[], &edited.to_string());
    assert_eq!(put.status, 200, "{}", put.body);
    let fresh = shop.get("/products/5");
    assert_eq!(fresh.header("x-cache"), Some("MISS"));
    assert_eq!(fresh.json()["name"], "Invalidated Lamp");
    assert_eq!(fresh.json()["price"], 12.5);
    for path in ["/products?limit=10", &by_category] {
        let list = shop.get(path);
        assert_eq!(list.header("x-cache"), Some("MISS"), "{path}");
        assert!(list.body.contains("Invalidated Lamp"), "{path}");
    }

    // POST: 201 with Location; the lists are invalidated.
    let last_page = "/products?skip=4990&limit=100";
    assert_eq!(
        shop.get(last_page).json().as_array().map(Vec::len),
        Some(10)
    );
    assert_eq!(shop.get(last_page).header("x-cache"), Some("HIT"));
    let created = shop.send_json(
        "POST",
        "/products",
        &[],
        &product_body("Fresh Kettle", 19.99, 2),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_i64().expect("an id");
    assert_eq!(
        created.header("location"),
        Some(format!("/products/{id}").as_str())
    );
    assert_eq!(created.json()["price"], 19.99);
    let page = shop.get(last_page);
    assert_eq!(page.header("x-cache"), Some("MISS"));
    assert_eq!(page.json().as_array().map(Vec::len), Some(11));
    assert_eq!(
        shop.get(&format!("/products/{id}")).json()["name"],
        "Fresh Kettle"
    );

    // DELETE: 204, then 404 (never a stale 200), and gone from the lists.
    shop.get(&format!("/products/{id}"));
    let deleted = shop.request("DELETE", &format!("/products/{id}"), &[], "");
    assert_eq!(deleted.status, 204);
    assert_eq!(shop.get(&format!("/products/{id}")).status, 404);
    assert_eq!(
        shop.get(last_page).json().as_array().map(Vec::len),
        Some(10)
    );

    // Categories: the item and the list.
    shop.get("/categories");
    shop.get("/categories/2");
    let renamed = shop.send_json(
        "PUT",
        "/categories/2",
        &[],
        r#"{"name":"Rare Books","description":"Old paper"}"#,
    );
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(renamed.header("etag"), Some("\"c2v2\""));
    let list = shop.get("/categories");
    assert_eq!(list.header("x-cache"), Some("MISS"));
    assert_eq!(list.json()[1]["name"], "Rare Books");
    assert_eq!(shop.get("/categories/2").json()["name"], "Rare Books");
}

/// Sends 100 requests, all admitted, then checks the 101st.
fn spend_the_quota(shop: &Shop) -> Resp {
    for i in 1..=100 {
        let res = shop.get("/products/1");
        assert_eq!(
            res.status, 200,
            "request {i} was refused: {:?}",
            res.headers
        );
        assert_eq!(
            res.header("x-ratelimit-remaining"),
            Some((100 - i).to_string().as_str())
        );
    }
    shop.get("/products/1")
}

#[test]
fn the_101st_request_in_a_minute_gets_429() {
    let shop = Shop::start(&[]);
    let refused = spend_the_quota(&shop);
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"], "rate_limited");
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(refused.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"default\";q=100;w=60")
    );
    assert!(
        refused
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"default\";r=0;t=")),
        "{:?}",
        refused.headers
    );
    // Health checks and metrics are exempt.
    assert_eq!(shop.get("/health").status, 200);
    assert_eq!(shop.get("/metrics").status, 200);
    assert_eq!(
        shop.metric("turret_ratelimit_decisions_total{policy=\"default\",plan=\"default\",outcome=\"limited\"}"),
        1.0
    );
}

#[test]
fn a_rate_limit_list_applies_every_quota_and_names_the_one_that_refused() {
    // The hour's quota is the tighter: it refuses the fourth request.
    let shop = Shop::start(&["--rate-limit", "5/60s,3/1h"]);
    for _ in 0..3 {
        assert_eq!(shop.get("/products/1").status, 200);
    }
    let refused = shop.get("/products/1");
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(
        refused.headers["ratelimit-policy"],
        "\"default-60s\";q=5;w=60, \"default-1h\";q=3;w=3600"
    );
    assert!(
        refused.headers["ratelimit"].starts_with("\"default-1h\";r=0;"),
        "{refused:?}"
    );
    assert!(
        refused.body.contains("\"policy\":\"default-1h\""),
        "{}",
        refused.body
    );
    // The minute's quota is the tighter: it refuses the third, and says so.
    let shop = Shop::start(&["--rate-limit", "2/60s,10/1h"]);
    for _ in 0..2 {
        assert_eq!(shop.get("/products/1").status, 200);
    }
    for _ in 0..3 {
        let refused = shop.get("/products/1");
        assert_eq!(refused.status, 429);
        assert!(
            refused.body.contains("\"policy\":\"default-60s\""),
            "{}",
            refused.body
        );
        assert_eq!(refused.headers["x-ratelimit-limit"], "2");
    }
    // A single quota keeps working as before.
    let shop = Shop::start(&["--rate-limit", "1/60s"]);
    assert_eq!(shop.get("/products/1").status, 200);
    let refused = shop.get("/products/1");
    assert_eq!(refused.headers["ratelimit-policy"], "\"default\";q=1;w=60");
}

#[test]
fn forwarded_for_is_ignored_unless_the_proxy_is_trusted() {
    // Untrusted by default: a client cannot pick a fresh key per request.
    let shop = Shop::start(&["--rate-limit", "2/60s"]);
    for ip in ["1.1.1.1", "2.2.2.2"] {
        assert_eq!(
            shop.get_with("/products/1", &[("x-forwarded-for", ip)])
                .status,
            200
        );
    }
    assert_eq!(
        shop.get_with("/products/1", &[("x-forwarded-for", "3.3.3.3")])
            .status,
        429
    );

    // Behind a trusted proxy (here: loopback), each forwarded client has its own quota.
    let shop = Shop::start(&["--rate-limit", "2/60s", "--trusted-proxies", "127.0.0.1/32"]);
    for ip in ["1.1.1.1", "1.1.1.1", "2.2.2.2", "2.2.2.2"] {
        assert_eq!(
            shop.get_with("/products/1", &[("x-forwarded-for", ip)])
                .status,
            200
        );
    }
    assert_eq!(
        shop.get_with("/products/1", &[("x-forwarded-for", "1.1.1.1")])
            .status,
        429
    );
}

#[test]
fn behind_an_rfc_7239_proxy_each_client_has_its_own_quota_and_a_forged_element_opens_none() {
    // The proxy (loopback) appends `Forwarded: for=…`; with `x-forwarded-for` (the default)
    // the shop does not read it, so every client is the proxy itself.
    let statuses = |shop: &Shop, forwarded: &[&str]| -> Vec<u16> {
        forwarded
            .iter()
            .map(|f| shop.get_with("/products/1", &[("forwarded", f)]).status)
            .collect()
    };
    let xff = Shop::start(&["--rate-limit", "2/60s", "--trusted-proxies", "127.0.0.1/32"]);
    assert_eq!(
        statuses(&xff, &["for=1.1.1.1", "for=2.2.2.2", "for=3.3.3.3"]),
        [200, 200, 429]
    );

    let shop = Shop::start(&[
        "--rate-limit",
        "2/60s",
        "--trusted-proxies",
        "127.0.0.1/32",
        "--forwarded-header",
        "forwarded",
    ]);
    // Each forwarded client has its own quota (IPv6 in RFC 7239's quoted form too).
    assert_eq!(
        statuses(
            &shop,
            &[
                "for=1.1.1.1",
                "for=2.2.2.2;proto=https",
                "for=1.1.1.1",
                "for=\"[2001:db8::7]:443\"",
                "For=2.2.2.2",
            ]
        ),
        [200, 200, 200, 200, 200]
    );
    // 1.1.1.1 has spent its 2. A forged leftmost element (the client's own, followed by
    // what the proxy appended) is never chosen, whatever it names; neither is a forged
    // X-Forwarded-For, which this shop does not read.
    assert_eq!(
        statuses(
            &shop,
            &[
                "for=9.9.9.9, for=1.1.1.1",
                "for=\"[2001:db8:ffff::1]\", for=1.1.1.1"
            ]
        ),
        [429, 429]
    );
    let forged_xff = shop.get_with(
        "/products/1",
        &[("x-forwarded-for", "8.8.8.8"), ("forwarded", "for=1.1.1.1")],
    );
    assert_eq!(forged_xff.status, 429);
    // The forged names got no quota of their own: 9.9.9.9 is still whole.
    assert_eq!(statuses(&shop, &["for=9.9.9.9", "for=9.9.9.9"]), [200, 200]);
    // Trusted proxies in the chain are skipped: the client is the first untrusted address
    // from the right.
    assert_eq!(statuses(&shop, &["for=5.5.5.5, for=127.0.0.1"]), [200]);
    assert_eq!(
        statuses(&shop, &["for=5.5.5.5, for=127.0.0.1"]),
        [200],
        "the first untrusted address from the right is 5.5.5.5"
    );
    assert_eq!(statuses(&shop, &["for=5.5.5.5"]), [429]);
}

#[test]
fn ipv6_clients_share_a_quota_per_prefix() {
    // Behind the trusted loopback proxy, so the test can name IPv6 clients.
    let statuses = |shop: &Shop, clients: &[&str]| -> Vec<u16> {
        clients
            .iter()
            .map(|ip| {
                shop.get_with("/products/1", &[("x-forwarded-for", ip)])
                    .status
            })
            .collect()
    };
    let shop = Shop::start(&["--rate-limit", "2/60s", "--trusted-proxies", "127.0.0.1/32"]);
    // Two addresses of one /64 are one client: the third request of the /64 is refused.
    assert_eq!(
        statuses(
            &shop,
            &["2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2::3"]
        ),
        [200, 200, 429]
    );
    // Another /64 has its own quota; an IPv4-mapped address is the IPv4 client.
    assert_eq!(
        statuses(
            &shop,
            &[
                "2001:db8:1:3::1",
                "2001:db8:1:3::2",
                "::ffff:192.0.2.7",
                "192.0.2.7"
            ]
        ),
        [200, 200, 200, 200]
    );
    assert_eq!(statuses(&shop, &["::ffff:192.0.2.7"]), [429]);

    // IPV6_PREFIX=128 (the flag's environment fallback): each address on its own.
    let shop = Shop::start_env(
        &["--rate-limit", "2/60s", "--trusted-proxies", "127.0.0.1/32"],
        &[("IPV6_PREFIX", "128")],
    );
    assert_eq!(
        statuses(
            &shop,
            &[
                "2001:db8:1:2::1",
                "2001:db8:1:2::1",
                "2001:db8:1:2::2",
                "2001:db8:1:2::2"
            ]
        ),
        [200, 200, 200, 200]
    );
    assert_eq!(statuses(&shop, &["2001:db8:1:2::1"]), [429]);
}

#[test]
fn a_bad_ipv6_prefix_or_forwarded_header_stops_the_shop_with_a_clear_error() {
    for (flag, value, says) in [
        ("--ipv6-prefix", "0", "1..=128"),
        ("--ipv6-prefix", "129", "1..=128"),
        ("--forwarded-header", "x-real-ip", "x-forwarded-for"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_shop"))
            .args([flag, value])
            .env_remove("IPV6_PREFIX")
            .env_remove("FORWARDED_HEADER")
            .output()
            .expect("run the shop binary");
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag) && stderr.contains(says), "{stderr}");
    }
}

/// Sends `n` requests to `path` at once (threads released together by a barrier).
fn concurrently(shop: &Arc<Shop>, path: &str, n: usize) -> Vec<Resp> {
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (shop, barrier, path) = (shop.clone(), barrier.clone(), path.to_owned());
            thread::spawn(move || {
                barrier.wait();
                shop.get(&path)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("request thread"))
        .collect()
}

#[test]
fn concurrent_cold_top_selling_requests_run_one_aggregation() {
    let shop = Arc::new(Shop::start(&["--rate-limit", "10000/60s"]));

    let responses = concurrently(&shop, "/products/top-selling?limit=10", 200);
    assert!(responses.iter().all(|r| r.status == 200));
    assert!(responses.iter().all(|r| r.body == responses[0].body));
    let rows = responses[0].json();
    assert_eq!(rows.as_array().map(Vec::len), Some(10));
    assert!(rows[0]["units_sold"].as_i64() >= rows[9]["units_sold"].as_i64());
    assert_eq!(shop.db_queries("top_selling"), 1.0);

    let responses = concurrently(&shop, "/stats/dashboard", 200);
    assert!(responses.iter().all(|r| r.status == 200));
    assert_eq!(responses[0].json()["orders"], 50_000);
    assert_eq!(shop.db_queries("dashboard"), 1.0);

    // Later requests are answered from the stampede cache too.
    shop.get("/products/top-selling?limit=10");
    assert_eq!(shop.db_queries("top_selling"), 1.0);
}

#[test]
fn every_layer_switches_off() {
    let shop = Shop::start(&[
        "--no-cache",
        "--no-rate-limit",
        "--no-conditional",
        "--no-stampede",
    ]);
    let first = shop.get("/products?limit=2");
    assert_eq!(first.status, 200);
    for field in ["x-cache", "etag", "ratelimit", "x-ratelimit-limit"] {
        assert_eq!(first.header(field), None, "{field}");
    }
    shop.get("/products?limit=2");
    assert_eq!(shop.db_queries("list_products"), 2.0);
    shop.get("/products/top-selling?limit=3");
    shop.get("/products/top-selling?limit=3");
    assert_eq!(shop.db_queries("top_selling"), 2.0);
    // The handler's own ETag stays, but nothing answers 304 for it.
    let product = shop.get("/products/2");
    let etag = product
        .header("etag")
        .expect("the handler's ETag")
        .to_owned();
    assert_eq!(
        shop.get_with("/products/2", &[("if-none-match", &etag)])
            .status,
        200
    );
}

#[test]
fn bad_input_gets_a_json_error_with_the_right_status() {
    let shop = Shop::start(&[]);
    let good = product_body("Good", 1.0, 1);
    // method, path, content-type, body, status, error code ("" for a success)
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        String,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/products/abc",
            None,
            String::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/products/0",
            None,
            String::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/products/999999",
            None,
            String::new(),
            404,
            "not_found",
        ),
        (
            "GET",
            "/categories/999",
            None,
            String::new(),
            404,
            "not_found",
        ),
        (
            "GET",
            "/products?limit=abc",
            None,
            String::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/products?limit=1000",
            None,
            String::new(),
            422,
            "validation_failed",
        ),
        (
            "GET",
            "/products?skip=-1",
            None,
            String::new(),
            422,
            "validation_failed",
        ),
        (
            "GET",
            "/products/top-selling?limit=0",
            None,
            String::new(),
            422,
            "validation_failed",
        ),
        ("GET", "/nowhere", None, String::new(), 404, "not_found"),
        (
            "PATCH",
            "/products/1",
            None,
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/products",
            Some("application/json"),
            "{\"name\":".into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/products",
            None,
            good.clone(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/products",
            Some("application/json"),
            r#"{"name":"x"}"#.into(),
            422,
            "validation_failed",
        ),
        (
            "POST",
            "/products",
            Some("application/json"),
            r#"{"name":"x","price":"cheap","stock":1,"category_id":1}"#.into(),
            422,
            "validation_failed",
        ),
        (
            "POST",
            "/products",
            Some("application/json"),
            product_body("", 1.0, 1),
            422,
            "validation_failed",
        ),
        (
            "POST",
            "/products",
            Some("application/json"),
            product_body("x", -1.0, 1),
            422,
            "validation_failed",
        ),
        (
            "POST",
            "/products",
            Some("application/json"),
            product_body("x", 1.001, 1),
            422,
            "validation_failed",
        ),
        (
            "POST",
            "/products",
            Some("application/json"),
            product_body("x", 1.0, 999),
            422,
            "validation_failed",
        ),
        (
            "PUT",
            "/products/999999",
            Some("application/json"),
            good.clone(),
            404,
            "not_found",
        ),
        (
            "PUT",
            "/products/1",
            Some("application/json"),
            good.clone(),
            200,
            "",
        ),
        (
            "PUT",
            "/categories/1",
            Some("application/json"),
            r#"{"name":"   "}"#.into(),
            422,
            "validation_failed",
        ),
        (
            "DELETE",
            "/products/999999",
            None,
            String::new(),
            404,
            "not_found",
        ),
    ];
    for (method, path, content_type, body, status, code) in cases {
        let headers: Vec<(&str, &str)> = content_type
            .map(|c| ("content-type", c))
            .into_iter()
            .collect();
        let res = shop.request(method, path, &headers, &body);
        assert_eq!(res.status, status, "{method} {path} {body}: {}", res.body);
        if !code.is_empty() {
            assert_eq!(res.json()["error"], code, "{method} {path}: {}", res.body);
            assert!(res.json()["message"].is_string());
            assert_eq!(res.header("content-type"), Some("application/json"));
        }
    }
    // Errors are never stored: a product created after its 404 is found.
    assert_eq!(shop.get("/products/5001").status, 404);
    let created = shop.send_json("POST", "/products", &[], &product_body("Late", 2.0, 1));
    assert_eq!(created.json()["id"], 5001);
    assert_eq!(shop.get("/products/5001").status, 200);
}

/// Two shops on one SQLite file and one Redis, started at the same time.
fn fleet(args: &[&str]) -> (RedisServer, TempDir, Shop, Shop) {
    let redis = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let url = redis.url();
    let mut all = vec!["--redis-url", url.as_str()];
    all.extend_from_slice(args);
    let a = Shop::spawn(&db_url(dir.path()), dir.path(), "a", &all);
    let b = Shop::spawn(&db_url(dir.path()), dir.path(), "b", &all);
    let (mut a, mut b) = (a.wait_ready(), b.wait_ready());
    // One public host name, as behind a load balancer.
    a.host = "shop.test".into();
    b.host = "shop.test".into();
    (redis, dir, a, b)
}

#[test]
fn two_processes_on_one_redis_share_one_rate_limit_quota() {
    let (_redis, _dir, a, b) = fleet(&["--rate-limit", "10/60s"]);
    for i in 0..10 {
        let shop = if i % 2 == 0 { &a } else { &b };
        let res = shop.get("/categories");
        assert_eq!(res.status, 200, "request {i}");
        assert_eq!(
            res.header("x-ratelimit-remaining"),
            Some((9 - i).to_string().as_str())
        );
    }
    assert_eq!(a.get("/categories").status, 429);
    assert_eq!(b.get("/categories").status, 429);
}

#[test]
fn two_processes_on_one_database_and_redis_act_as_one() {
    let (_redis, _dir, a, b) = fleet(&["--rate-limit", "1000/60s"]);

    // Started together on one new file: seeded once.
    assert_eq!(a.get("/stats/dashboard").json()["products"], 5000);

    // One aggregation for the fleet: B reads what A computed.
    let top = a.get("/products/top-selling?limit=5");
    assert_eq!(top.status, 200);
    assert_eq!(b.get("/products/top-selling?limit=5").body, top.body);
    assert_eq!(a.db_queries("top_selling"), 1.0);
    assert_eq!(b.db_queries("top_selling"), 0.0);

    // One response cache: what A stored is a hit on B (same public host).
    assert_eq!(a.get("/products/9").header("x-cache"), Some("MISS"));
    assert_eq!(b.get("/products/9").header("x-cache"), Some("HIT"));
    assert_eq!(
        a.db_queries("get_product") + b.db_queries("get_product"),
        1.0
    );

    // A write on A is seen on B at once, cached or not.
    b.get("/products/8");
    assert_eq!(b.get("/products/8").header("x-cache"), Some("HIT"));
    let mut edited = a.get("/products/8").json();
    edited["name"] = "Written on A".into();
    let put = a.send_json("PUT", "/products/8", &[], &edited.to_string());
    assert_eq!(put.status, 200, "{}", put.body);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = b.get("/products/8");
        if seen.json()["name"] == "Written on A" {
            break;
        }
        assert!(Instant::now() < deadline, "B still serves {}", seen.body);
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a request head and `body` on a raw connection and reads the answer, tolerating a
/// server that answers (and closes) before it has read the whole body.
fn send_large(shop: &Shop, head: &str, body: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(("127.0.0.1", shop.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream.write_all(head.as_bytes()).expect("send head");
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    Resp::parse(&raw)
}

#[test]
fn a_head_of_a_cached_list_carries_the_get_fields_and_gets_304_rfc9110_9_3_2_13_2_2() {
    let shop = Shop::start(&[]);
    let get = shop.get("/products?limit=3");
    assert_eq!(get.status, 200);
    let etag = get.header("etag").expect("a generated ETag").to_owned();
    let length = get.header("content-length").expect("a length").to_owned();

    // HEAD, cached and cold, has the GET's validator and length (RFC 9110 §9.3.2, §8.6).
    for path in ["/products?limit=3", "/products?limit=4"] {
        let head = shop.request("HEAD", path, &[], "");
        assert_eq!(head.status, 200, "{path}");
        assert_eq!(head.body, "", "{path}");
        assert!(head.header("etag").is_some(), "{path}: {:?}", head.headers);
        assert!(head.header("content-length").is_some(), "{path}");
    }
    let head = shop.request("HEAD", "/products?limit=3", &[], "");
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    assert_eq!(head.header("content-length"), Some(length.as_str()));

    // If-None-Match is evaluated for HEAD as for GET (RFC 9110 §13.2.2).
    let not_modified = shop.request("HEAD", "/products?limit=3", &[("if-none-match", &etag)], "");
    assert_eq!(not_modified.status, 304, "{:?}", not_modified.headers);
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    let other = shop.request(
        "HEAD",
        "/products?limit=3",
        &[("if-none-match", "\"other\"")],
        "",
    );
    assert_eq!(other.status, 200);
}

#[test]
fn a_304_to_head_carries_no_content_length_or_the_200s_rfc9110_8_6() {
    let shop = Shop::start(&[]);
    // A list (ETag made by the conditional layer), a product cold (ETag from the handler, the
    // cache bypassed) and a product cached (the cache's own 304).
    shop.get("/products/5");
    for path in ["/products?limit=2", "/products/3", "/products/5"] {
        let get = shop.get(path);
        let etag = get.header("etag").expect("an ETag").to_owned();
        let length = get.header("content-length").map(str::to_owned);
        let head = shop.request("HEAD", path, &[("if-none-match", &etag)], "");
        assert_eq!(head.status, 304, "{path}");
        let sent = head.header("content-length").map(str::to_owned);
        assert!(
            sent.is_none() || sent == length,
            "{path}: a 304 to HEAD says content-length {sent:?}, the 200 {length:?}"
        );
    }
}

#[test]
fn preconditions_on_a_post_to_the_existing_collection_rfc9110_13_1_1_13_1_2() {
    let shop = Shop::start(&[]);
    let body = product_body("Conditional", 3.0, 1);
    // The collection exists: `If-Match: *` is true, `If-None-Match: *` is false.
    let created = shop.send_json("POST", "/products", &[("if-match", "*")], &body);
    assert_eq!(created.status, 201, "{}", created.body);
    let refused = shop.send_json("POST", "/products", &[("if-none-match", "*")], &body);
    assert_eq!(refused.status, 412, "{}", refused.body);
    assert_eq!(refused.json()["error"], "precondition_failed");
}

#[test]
fn preconditions_are_ignored_when_the_plain_answer_is_not_2xx_rfc9110_13_2_1() {
    for args in [&[][..], &["--no-conditional"][..]] {
        let shop = Shop::start(args);
        let body = product_body("Nobody", 3.0, 1);
        let cases = [
            ("DELETE", "/products/999999", "", 404),
            ("PUT", "/products/999999", body.as_str(), 404),
            (
                "PUT",
                "/categories/999999",
                r#"{"name":"n","description":"d"}"#,
                404,
            ),
            ("PUT", "/products/abc", body.as_str(), 400),
            ("DELETE", "/products/0", "", 400),
        ];
        for (method, path, body, status) in cases {
            for field in ["if-match", "if-none-match", "if-unmodified-since"] {
                let value = match field {
                    "if-unmodified-since" => "Sat, 01 Jan 2000 00:00:00 GMT",
                    _ => "\"p1v1\"",
                };
                let res = shop.send_json(method, path, &[(field, value)], body);
                assert_eq!(
                    res.status, status,
                    "{args:?} {method} {path} {field}: {}",
                    res.body
                );
            }
        }
    }
}

#[test]
fn no_surrogate_key_reaches_a_client_without_the_cache() {
    let shop = Shop::start(&["--no-cache"]);
    for path in [
        "/products/1",
        "/products?limit=2",
        "/categories",
        "/categories/1",
    ] {
        let res = shop.get(path);
        assert_eq!(res.status, 200, "{path}");
        assert_eq!(res.header("surrogate-key"), None, "{path}");
        let head = shop.request("HEAD", path, &[], "");
        assert_eq!(head.header("surrogate-key"), None, "HEAD {path}");
    }
    // With the cache, also when it is bypassed.
    let shop = Shop::start(&[]);
    let bypassing: [(&str, &[(&str, &str)]); 5] = [
        ("GET", &[("cache-control", "no-store")]),
        ("GET", &[("if-match", "\"p1v1\"")]),
        ("GET", &[("range", "bytes=0-3")]),
        ("HEAD", &[]),
        ("GET", &[]),
    ];
    for (method, headers) in bypassing {
        let res = shop.request(method, "/products/1", headers, "");
        assert_eq!(res.header("surrogate-key"), None, "{method} {headers:?}");
    }
}

#[test]
fn a_json_body_over_the_limit_gets_413_rfc9110_15_5_14() {
    let shop = Shop::start(&[]);
    let big = format!(
        r#"{{"name":"big","description":"{}","price":1.0,"stock":1,"category_id":1}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    for (method, path) in [("POST", "/products"), ("PUT", "/products/1")] {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            shop.host,
            big.len()
        );
        let res = send_large(&shop, &head, big.as_bytes());
        assert_eq!(res.status, 413, "{method} {path}: {}", res.body);
        assert_eq!(res.json()["error"], "content_too_large");
    }
}

#[test]
fn if_none_match_on_a_write_is_honoured_with_or_without_the_layer_rfc9110_13_1_2() {
    for args in [&[][..], &["--no-conditional"][..]] {
        let shop = Shop::start(args);
        let body = product_body("Create-only", 4.0, 1);
        for value in ["*", "\"p1v1\"", "\"other\", W/\"p1v1\""] {
            let res = shop.send_json("PUT", "/products/1", &[("if-none-match", value)], &body);
            assert_eq!(res.status, 412, "{args:?} {value}: {}", res.body);
            assert_eq!(res.json()["error"], "precondition_failed");
        }
        let res = shop.request("DELETE", "/products/2", &[("if-none-match", "*")], "");
        assert_eq!(res.status, 412, "{args:?}: {}", res.body);
        let res = shop.send_json(
            "PUT",
            "/categories/1",
            &[("if-none-match", "*")],
            r#"{"name":"n","description":"d"}"#,
        );
        assert_eq!(res.status, 412, "{args:?}: {}", res.body);
        // A tag that is not the current one: performed.
        let res = shop.send_json(
            "PUT",
            "/products/1",
            &[("if-none-match", "\"p1v9\"")],
            &body,
        );
        assert_eq!(res.status, 200, "{args:?}: {}", res.body);
        assert_eq!(shop.get("/products/1").json()["name"], "Create-only");
    }
}

/// `POST /products/{id}/views` on the shop at `port`: the status, or `None` when no answer
/// came (the shop was killed while the request was in flight).
fn try_view(port: u16, id: i64) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let head = format!(
        "POST /products/{id}/views HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n\
         content-length: 0\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(Resp::parse(&raw).status)
}

/// Sends SIGTERM (a graceful shutdown) and waits for the process to exit.
fn terminate(shop: &mut Shop) {
    let status = Command::new("kill")
        .args(["-TERM", &shop.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while shop.child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "the shop did not exit on SIGTERM"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The views of `id` the database holds, as `GET /products/{id}/stats` reports them.
fn views(shop: &Shop, id: i64) -> i64 {
    let res = shop.get(&format!("/products/{id}/stats"));
    assert_eq!(res.status, 200, "{}", res.body);
    res.json()["views"].as_i64().expect("a number of views")
}

/// Waits until `views` of each product reach `expected`; the last reading otherwise.
fn await_views(shop: &Shop, expected: &[(i64, i64)], within: Duration) -> Vec<(i64, i64)> {
    let deadline = Instant::now() + within;
    loop {
        let seen: Vec<(i64, i64)> = expected
            .iter()
            .map(|&(id, _)| (id, views(shop, id)))
            .collect();
        if seen == expected || Instant::now() >= deadline {
            return seen;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn views_are_counted_through_write_behind_and_bad_ids_are_refused() {
    let shop = Shop::start(&["--write-behind-flush", "200ms", "--no-rate-limit"]);
    for (path, status) in [
        ("/products/abc/views", 400),
        ("/products/0/views", 400),
        ("/products/-3/views", 400),
        ("/products/999999/views", 404),
    ] {
        let res = shop.request("POST", path, &[], "");
        assert_eq!(res.status, status, "POST {path}: {}", res.body);
        assert!(res.json()["error"].is_string(), "a JSON error for {path}");
    }
    assert_eq!(shop.get("/products/abc/stats").status, 400);
    assert_eq!(shop.get("/products/999999/stats").status, 404);
    assert_eq!(views(&shop, 3), 0);

    for _ in 0..50 {
        assert_eq!(
            shop.request("POST", "/products/3/views", &[], "").status,
            204
        );
    }
    for _ in 0..7 {
        assert_eq!(
            shop.request("POST", "/products/4/views", &[], "").status,
            204
        );
    }
    assert_eq!(
        await_views(&shop, &[(3, 50), (4, 7)], Duration::from_secs(10)),
        [(3, 50), (4, 7)]
    );
    // Batched: fewer database transactions than views.
    let batches = shop.db_queries("apply_views");
    assert!(
        (1.0..57.0).contains(&batches),
        "{batches} batches for 57 views"
    );
    // Nothing else arrives later.
    thread::sleep(Duration::from_millis(600));
    assert_eq!((views(&shop, 3), views(&shop, 4)), (50, 7));
    let stats = shop.get("/products/3/stats");
    assert_eq!(stats.header("cache-control"), Some("no-store"));
}

#[test]
fn stats_read_the_database_and_a_graceful_shutdown_flushes_the_queue() {
    let dir = TempDir::new().expect("temp dir");
    // A flush interval far beyond the test: only the shutdown flushes.
    let args = [
        "--write-behind-flush",
        "1h",
        "--write-behind-claim-idle",
        "3h",
        "--no-rate-limit",
    ];
    let mut first = Shop::spawn(&db_url(dir.path()), dir.path(), "first", &args).wait_ready();
    for _ in 0..25 {
        assert_eq!(
            first.request("POST", "/products/5/views", &[], "").status,
            204
        );
    }
    // In the queue, not in the database yet.
    assert_eq!(views(&first, 5), 0);
    terminate(&mut first);
    let second = Shop::spawn(&db_url(dir.path()), dir.path(), "second", &args).wait_ready();
    assert_eq!(views(&second, 5), 25);
}

/// The SQLite database's write lock, held by the test (`BEGIN IMMEDIATE` on a connection
/// of its own) until dropped: writers wait on it (the shop's busy timeout is 10 s).
struct DbWriteLock {
    release: Option<mpsc::Sender<()>>,
    done: Option<thread::JoinHandle<()>>,
}

impl DbWriteLock {
    fn take(url: &str) -> DbWriteLock {
        let url = format!("{url}?mode=rw");
        let (locked_tx, locked_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let done = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                use sqlx::Connection;
                sqlx::any::install_default_drivers();
                let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .expect("take the write lock");
                locked_tx.send(()).expect("report");
                let _ = tokio::task::spawn_blocking(move || release_rx.recv()).await;
                sqlx::query("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .expect("release");
            });
        });
        locked_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the write lock was not taken");
        DbWriteLock {
            release: Some(release),
            done: Some(done),
        }
    }
}

impl Drop for DbWriteLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(done) = self.done.take() {
            let _ = done.join();
        }
    }
}

/// Starts shop `name` of a views fleet on `dir`'s database and `redis_url`.
fn views_shop(dir: &Path, redis_url: &str, name: &str) -> Shop {
    let args = [
        "--redis-url",
        redis_url,
        "--no-rate-limit",
        "--write-behind-flush",
        "100ms",
        "--write-behind-claim-idle",
        "2s",
        "--write-behind-consumer",
        name,
    ];
    Shop::spawn(&db_url(dir), dir, name, &args).wait_ready()
}

#[test]
fn a_shop_killed_mid_traffic_loses_no_view_it_answered_and_counts_none_twice() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = TempDir::new().expect("temp dir");
    let mut shops: Vec<Shop> = ["s0", "s1", "s2"]
        .iter()
        .map(|name| views_shop(dir.path(), &url, name))
        .collect();
    let ports: Vec<u16> = shops.iter().map(|s| s.port).collect();
    const PRODUCTS: i64 = 10;
    const PER_WORKER: usize = 600;

    // Three workers per shop, each posting views of products 1..=10 in turn until it has
    // sent its share or its shop stops answering.
    let workers: Vec<_> = (0..9)
        .map(|w| {
            let port = ports[w % 3];
            thread::spawn(move || {
                let mut answered = vec![0_i64; PRODUCTS as usize];
                let mut unanswered = 0_i64;
                for i in 0..PER_WORKER {
                    let id = (i as i64 + w as i64) % PRODUCTS + 1;
                    match try_view(port, id) {
                        Some(204) => answered[(id - 1) as usize] += 1,
                        Some(other) => panic!("POST views answered {other}"),
                        None => {
                            unanswered += 1;
                            break;
                        }
                    }
                }
                (answered, unanswered)
            })
        })
        .collect();
    // Mid-traffic, hold the database's write lock, so that every shop's flusher is stuck in
    // its sink with a batch read from the stream and not acknowledged; then SIGKILL shop 1
    // (no graceful anything) while its batch is pending, and let the database go.
    thread::sleep(Duration::from_millis(400));
    let lock = DbWriteLock::take(&db_url(dir.path()));
    let stream = "shop:wb:{product-views}";
    let pending_of_s1 = || -> usize {
        let entries: Vec<(String, String, i64, i64)> =
            redis.cmd(&["XPENDING", stream, "flushers", "-", "+", "1000", "s1"]);
        entries.len()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending_of_s1() == 0 {
        assert!(Instant::now() < deadline, "shop 1 never read a batch");
        thread::sleep(Duration::from_millis(10));
    }
    shops[1].child.kill().expect("SIGKILL");
    shops[1].child.wait().expect("reap");
    let left_pending = pending_of_s1();
    assert!(left_pending > 0, "shop 1 died with no batch pending");
    thread::sleep(Duration::from_millis(300));
    drop(lock);

    let mut answered = vec![0_i64; PRODUCTS as usize];
    let mut unanswered = 0;
    for w in workers {
        let (a, u) = w.join().expect("worker");
        for (total, n) in answered.iter_mut().zip(a) {
            *total += n;
        }
        unanswered += u;
    }
    let total: i64 = answered.iter().sum();
    assert!(total >= 3_000, "only {total} views answered 204");
    assert!(
        unanswered <= 3,
        "{unanswered} requests unanswered: only the killed shop's three workers may lose one"
    );

    // Restart the killed shop under its name: it flushes what it left pending.
    shops[1] = views_shop(dir.path(), &url, "s1");
    let expected: Vec<(i64, i64)> = (1..=PRODUCTS)
        .map(|id| (id, answered[(id - 1) as usize]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let counted = loop {
        let counted: Vec<i64> = (1..=PRODUCTS).map(|id| views(&shops[0], id)).collect();
        let sum: i64 = counted.iter().sum();
        if sum >= total || Instant::now() >= deadline {
            break counted;
        }
        thread::sleep(Duration::from_millis(100));
    };
    // Let any redelivery (a batch applied but not acknowledged before the kill) arrive.
    thread::sleep(Duration::from_millis(500));
    let settled: Vec<i64> = (1..=PRODUCTS).map(|id| views(&shops[2], id)).collect();
    assert_eq!(counted, settled, "counts changed after the queue drained");
    // Every view answered 204 is counted; a view in flight when the shop died may be
    // counted without its answer (at most one per unanswered request); none twice.
    for (&(id, ok), &n) in expected.iter().zip(&settled) {
        assert!(
            n >= ok,
            "product {id}: {n} views counted, {ok} answered 204"
        );
    }
    let counted_total: i64 = settled.iter().sum();
    assert!(
        counted_total <= total + unanswered,
        "{counted_total} views counted for {total} answered and {unanswered} unanswered"
    );
    // The stream holds nothing unflushed.
    let backlog: i64 = redis.cmd(&["XLEN", "shop:wb:{product-views}"]);
    assert_eq!(backlog, 0);
}

#[test]
fn a_put_writes_the_product_through_the_data_cache() {
    let (_redis, _dir, a, b) = fleet(&["--rate-limit", "1000/60s", "--no-cache"]);
    // A reads product 7 into the data cache: one query.
    let before = a.get("/products/7");
    assert_eq!(before.status, 200);
    let mut edited = before.json();
    edited["name"] = "Written through".into();
    let put = a.send_json("PUT", "/products/7", &[], &edited.to_string());
    assert_eq!(put.status, 200, "{}", put.body);
    // B reads the written row from the fleet's data cache, not from the database.
    let on_b = b.get("/products/7");
    assert_eq!(on_b.json()["name"], "Written through");
    assert_eq!(on_b.header("etag"), put.header("etag"));
    assert_eq!(a.get("/products/7").json()["name"], "Written through");
    assert_eq!(
        a.db_queries("get_product") + b.db_queries("get_product"),
        1.0,
        "the write-through value was not read"
    );
}

#[test]
fn operators_purge_cached_products_by_url_or_tag_with_the_token() {
    let token = "shop-operator-token-93be01";
    let bearer = format!("Bearer {token}");
    let shop = Shop::start(&["--purge-token", token, "--rate-limit", "1000/60s"]);
    assert_eq!(shop.get("/products/7").header("x-cache"), Some("MISS"));
    assert_eq!(shop.get("/products/7").header("x-cache"), Some("HIT"));

    let purge = |path: &str, headers: &[(&str, &str)]| shop.request("POST", path, headers, "");
    let missing = purge("/admin/purge?url=/products/7", &[]);
    assert_eq!(missing.status, 401);
    let wrong = purge(
        "/admin/purge?url=/products/7",
        &[("authorization", "Bearer shop-operator-token-93be02")],
    );
    assert_eq!(wrong.status, 403);
    assert_eq!(shop.get("/products/7").header("x-cache"), Some("HIT"));

    let by_url = purge(
        "/admin/purge?url=/products/7",
        &[("authorization", &bearer)],
    );
    assert_eq!(
        (by_url.status, by_url.body.as_str()),
        (200, r#"{"purged":1}"#)
    );
    assert_eq!(shop.get("/products/7").header("x-cache"), Some("MISS"));

    shop.get("/products/8");
    assert_eq!(shop.get("/products/8").header("x-cache"), Some("HIT"));
    let by_tag = purge(
        "/admin/purge",
        &[("authorization", &bearer), ("surrogate-key", "product:8")],
    );
    assert_eq!(by_tag.body, r#"{"purged":1}"#);
    assert_eq!(shop.get("/products/8").header("x-cache"), Some("MISS"));

    // Off by default: no such route.
    let plain = Shop::start(&[]);
    assert_eq!(
        plain
            .request(
                "POST",
                "/admin/purge?url=/products/7",
                &[("authorization", &bearer)],
                ""
            )
            .status,
        404
    );
}
