//! End-to-end tests: a small origin inside the test (hyper on a tokio listener) that records
//! every request it gets and answers with `Cache-Control` variations, the real `proxy`
//! binary in front of it, and a client — hyper-util's, or raw TCP where the exact bytes
//! matter. The fleet test runs two proxies on a real `redis-server` from `turret-testkit`.

use std::{
    convert::Infallible,
    future::Future,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    task::{Context, Poll},
    thread,
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
};
use turret_testkit::RedisServer;

/// How long a test waits for anything before failing instead of hanging.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The origin.

/// One request as the origin received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Debug, Default)]
struct OriginState {
    seen: Mutex<Vec<Seen>>,
    /// `/stream` sends its second chunk once this is notified.
    release_stream: Notify,
    /// Notified by `/upload` when its first chunk has arrived.
    upload_started: Notify,
}

/// The origin server; stopped (listener and connections closed) by [`Origin::stop`].
struct Origin {
    addr: SocketAddr,
    state: Arc<OriginState>,
    stop: watch::Sender<bool>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(OriginState::default());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept(listener, state.clone(), stopped));
        Origin { addr, state, stop }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests to `path`, in order.
    fn seen(&self, path: &str) -> Vec<Seen> {
        let seen = self.state.seen.lock().expect("lock");
        seen.iter().filter(|s| s.path == path).cloned().collect()
    }

    fn count(&self, path: &str) -> usize {
        self.seen(path).len()
    }

    fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

async fn accept(listener: TcpListener, state: Arc<OriginState>, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // Dropping the connection on stop closes its socket.
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        });
    }
}

type OriginBody = BoxBody<Bytes, Infallible>;

fn respond(status: u16, fields: &[(&str, &str)], body: impl Into<Bytes>) -> Response<OriginBody> {
    let mut res = Response::new(Full::new(body.into()).boxed());
    *res.status_mut() = StatusCode::from_u16(status).expect("status");
    for (name, value) in fields {
        res.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    res
}

async fn handle(
    state: Arc<OriginState>,
    req: Request<Incoming>,
) -> Result<Response<OriginBody>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    // Read the body frame by frame; `/upload` tells the test when its first chunk is in.
    let mut received = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            if received.is_empty() && path == "/upload" {
                state.upload_started.notify_one();
            }
            received.extend_from_slice(&data);
        }
    }
    let received = Bytes::from(received);
    let n = {
        let mut seen = state.seen.lock().expect("lock");
        seen.push(Seen {
            method: parts.method.clone(),
            path: path.clone(),
            headers: parts.headers.clone(),
            body: received.clone(),
        });
        seen.iter().filter(|s| s.path == path).count()
    };
    let method = parts.method;
    if method != Method::GET && method != Method::HEAD {
        let text = format!("{method} {path} {}", String::from_utf8_lossy(&received));
        return Ok(respond(200, &[("cache-control", "no-store")], text));
    }
    let res = match path.as_str() {
        "/max-age" | "/items" => respond(
            200,
            &[("cache-control", "max-age=60")],
            format!("{path} #{n}"),
        ),
        "/no-store" => respond(200, &[("cache-control", "no-store")], format!("#{n}")),
        "/private" => respond(
            200,
            &[("cache-control", "private, max-age=60")],
            format!("#{n}"),
        ),
        "/head" => respond(200, &[("cache-control", "max-age=60")], "head body"),
        "/tagged" => respond(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("surrogate-key", "t-a shared"),
            ],
            format!("{path} #{n}"),
        ),
        "/etag" => {
            let fields = [("cache-control", "max-age=1"), ("etag", "\"v1\"")];
            if parts
                .headers
                .get("if-none-match")
                .is_some_and(|v| v == "\"v1\"")
            {
                respond(304, &fields, "")
            } else {
                respond(200, &fields, "etag body")
            }
        }
        // "a" first; afterwards the representation is "b": a conditional request gets a
        // 304 for "b" (it selects nothing stored), a plain one the 200 of "b".
        "/changed" => match (n, parts.headers.contains_key("if-none-match")) {
            (1, _) => respond(
                200,
                &[("cache-control", "max-age=1"), ("etag", "\"a\"")],
                "a",
            ),
            (_, true) => respond(
                304,
                &[("cache-control", "max-age=1"), ("etag", "\"b\"")],
                "",
            ),
            (_, false) => respond(
                200,
                &[("cache-control", "max-age=60"), ("etag", "\"b\"")],
                "b",
            ),
        },
        "/must-revalidate" => respond(
            200,
            &[
                (
                    "cache-control",
                    "max-age=0, must-revalidate, stale-if-error=60",
                ),
                ("etag", "\"mr\""),
            ],
            format!("must-revalidate #{n}"),
        ),
        "/sie" => respond(
            200,
            &[("cache-control", "max-age=0, stale-if-error=60")],
            format!("sie #{n}"),
        ),
        "/hop" => respond(
            200,
            &[
                ("connection", "x-bar, keep-alive"),
                ("x-bar", "secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-authenticate", "Basic realm=\"origin\""),
                ("upgrade", "h2c"),
                ("x-end-to-end", "kept"),
                ("cache-control", "no-store"),
            ],
            "hop",
        ),
        "/stream" => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let state = state.clone();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first\n")).await;
                state.release_stream.notified().await;
                let _ = tx.send(Bytes::from_static(b"second\n")).await;
            });
            let mut res = Response::new(ChannelBody(rx).boxed());
            res.headers_mut()
                .insert("cache-control", "max-age=60".parse().expect("value"));
            res
        }
        _ => respond(404, &[], "not found"),
    };
    Ok(res)
}

/// A body of unknown length, one chunk per message on the channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

// ---------------------------------------------------------------------------------------
// The proxy process and the clients.

/// A running proxy process; killed (and its log printed if the test failed) on drop.
struct Proxy {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Proxy {
    /// Starts `proxy --listen 127.0.0.1:0 --origin ORIGIN ARGS…`.
    fn start(origin: &str, args: &[&str]) -> Proxy {
        let dir = TempDir::new().expect("temp dir");
        let log = dir.path().join("proxy.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["--listen", "127.0.0.1:0", "--origin", origin])
            .args(args)
            .env_remove("REDIS_URL")
            .env_remove("MAX_ENTRY_SIZE")
            .env_remove("CACHE_SIZE")
            .env_remove("ORIGIN_TIMEOUT")
            .env_remove("PURGE_TOKEN")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start the proxy binary");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let Some(addr) = line.trim().strip_prefix("proxy listening on http://") else {
            let _ = child.kill();
            panic!(
                "the proxy did not start ({line:?}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Proxy {
            addr: addr.to_owned(),
            child,
            log,
            _dir: dir,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- proxy log ---");
            eprintln!("{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// A response as the client saw it.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// An HTTP/1.1 client (pooled connections) to one proxy.
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    fn new(proxy: &Proxy) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            base: format!("http://{}", proxy.addr),
        }
    }

    async fn send(&self, method: &str, path: &str, fields: &[(&str, &str)], body: &str) -> Resp {
        let res = self.start(method, path, fields, body).await;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = tokio::time::timeout(PATIENCE, res.into_body().collect())
            .await
            .expect("the body in time")
            .expect("the body")
            .to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// Sends a request and returns as soon as the response head is in.
    async fn start(
        &self,
        method: &str,
        path: &str,
        fields: &[(&str, &str)],
        body: &str,
    ) -> Response<Incoming> {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(format!("{}{path}", self.base));
        for (name, value) in fields {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        tokio::time::timeout(PATIENCE, self.client.request(req))
            .await
            .expect("a response in time")
            .expect("a response")
    }

    async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], "").await
    }
}

/// Sends `head` on a new connection, then `then` once `before_then` resolves, and reads
/// until the proxy closes the connection. Returns the status, fields (lower-case names, in
/// order) and body.
async fn raw(
    addr: &str,
    head: &str,
    before_then: impl Future<Output = ()>,
    then: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send");
    tokio::time::timeout(PATIENCE, before_then)
        .await
        .expect("in time");
    stream.write_all(then.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("the response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let fields = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, fields, body.to_owned())
}

// ---------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_get_is_a_hit_and_no_store_or_private_is_not_stored() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let http = Http::new(&proxy);

    let first = http.get("/max-age").await;
    assert_eq!((first.status, first.body.as_str()), (200, "/max-age #1"));
    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(first.header("cache-status"), "turret; fwd=miss; stored");
    let second = http.get("/max-age").await;
    assert_eq!(second.body, "/max-age #1");
    assert_eq!(second.header("x-cache"), "HIT");
    assert!(second.headers.contains_key("age"));
    assert_eq!(origin.count("/max-age"), 1);

    // Another spelling of the proxy's host shares the entry (the key's host is the origin's).
    let other_host = http
        .send("GET", "/max-age", &[("host", "localhost:1")], "")
        .await;
    assert_eq!(other_host.header("x-cache"), "HIT");
    assert_eq!(origin.count("/max-age"), 1);

    for path in ["/no-store", "/private"] {
        let a = http.get(path).await;
        let b = http.get(path).await;
        assert_eq!((a.body.as_str(), b.body.as_str()), ("#1", "#2"), "{path}");
        assert_eq!(b.header("x-cache"), "MISS", "{path}");
        assert_eq!(origin.count(path), 2, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_and_unknown_methods_are_forwarded_with_their_bodies_and_invalidate() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let http = Http::new(&proxy);

    assert_eq!(http.get("/items").await.header("x-cache"), "MISS");
    assert_eq!(http.get("/items").await.header("x-cache"), "HIT");

    let posted = http
        .send(
            "POST",
            "/items",
            &[("content-type", "text/plain")],
            "a new item",
        )
        .await;
    assert_eq!(
        (posted.status, posted.body.as_str()),
        (200, "POST /items a new item")
    );
    let seen = origin.seen("/items");
    let post = seen
        .iter()
        .find(|s| s.method == Method::POST)
        .expect("POST");
    assert_eq!(post.body, "a new item");
    assert_eq!(post.headers["content-type"], "text/plain");

    // The POST invalidated the stored GET (RFC 9111 §4.4).
    let after = http.get("/items").await;
    assert_eq!(
        (after.header("x-cache"), after.body.as_str()),
        ("MISS", "/items #3")
    );

    for method in ["PUT", "DELETE", "PATCH", "FROBNICATE"] {
        let res = http.send(method, "/items", &[], "payload").await;
        assert_eq!(res.status, 200, "{method}");
        assert_eq!(res.body, format!("{method} /items payload"));
    }
    let methods: Vec<String> = origin
        .seen("/items")
        .iter()
        .map(|s| s.method.to_string())
        .collect();
    assert_eq!(
        methods,
        ["GET", "POST", "GET", "PUT", "DELETE", "PATCH", "FROBNICATE"]
    );
    // The unknown method invalidated too.
    assert_eq!(http.get("/items").await.header("x-cache"), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_forwarded_on_a_miss_and_answered_from_a_stored_get() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let http = Http::new(&proxy);

    let head = http.send("HEAD", "/head", &[], "").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.header("content-length"), "9");
    assert_eq!(origin.seen("/head")[0].method, Method::HEAD);

    assert_eq!(http.get("/head").await.body, "head body");
    let head = http.send("HEAD", "/head", &[], "").await;
    assert_eq!(head.header("x-cache"), "HIT");
    assert_eq!(head.header("content-length"), "9");
    assert_eq!(head.body, "");
    assert_eq!(origin.count("/head"), 2, "HEAD (miss) and GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_do_not_pass_and_forwarding_fields_are_added() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);

    let head = "GET /hop HTTP/1.1\r\n\
                Host: shop.example\r\n\
                Connection: close, x-foo\r\n\
                X-Foo: secret\r\n\
                Keep-Alive: timeout=5\r\n\
                Proxy-Connection: keep-alive\r\n\
                TE: trailers\r\n\
                Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
                X-Forwarded-For: 203.0.113.9\r\n\
                X-End-To-End: kept\r\n\r\n";
    let (status, fields, body) = raw(&proxy.addr, head, async {}, "").await;
    assert_eq!((status, body.as_str()), (200, "hop"));

    // What the origin got.
    let seen = &origin.seen("/hop")[0];
    for gone in [
        "connection",
        "x-foo",
        "keep-alive",
        "proxy-connection",
        "te",
        "proxy-authorization",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the origin: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    assert_eq!(seen.headers["host"], origin.addr.to_string());
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(
        seen.headers["forwarded"],
        "for=127.0.0.1;host=\"shop.example\";proto=http"
    );
    assert_eq!(seen.headers["via"], "1.1 turret-proxy");

    // What the client got.
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    for gone in ["x-bar", "keep-alive", "proxy-authenticate", "upgrade"] {
        assert!(
            !names.contains(&gone),
            "{gone} reached the client: {fields:?}"
        );
    }
    for (name, value) in &fields {
        if name == "connection" {
            assert_eq!(value, "close", "only the proxy's own Connection field");
        }
    }
    assert!(
        fields
            .iter()
            .any(|(n, v)| n == "x-end-to-end" && v == "kept")
    );

    // An absolute-form target naming another host still goes to the origin: this is a
    // reverse proxy, not an open forward proxy.
    let head = "GET http://elsewhere.example/hop HTTP/1.1\r\n\
                Host: elsewhere.example\r\n\
                Connection: close\r\n\r\n";
    let (status, _, _) = raw(&proxy.addr, head, async {}, "").await;
    assert_eq!(status, 200);
    let seen = &origin.seen("/hop")[1];
    assert_eq!(seen.headers["host"], origin.addr.to_string());
    assert_eq!(seen.headers["x-forwarded-host"], "elsewhere.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_response_is_revalidated_with_if_none_match() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let http = Http::new(&proxy);

    let first = http.get("/etag").await;
    assert_eq!((first.status, first.header("etag")), (200, "\"v1\""));
    assert_eq!(http.get("/etag").await.header("x-cache"), "HIT");
    // The client's own conditional GET is answered by the cache.
    let not_modified = http
        .send("GET", "/etag", &[("if-none-match", "\"v1\"")], "")
        .await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(origin.count("/etag"), 1);

    // max-age=1: wait until the stored copy is stale (Age counts whole seconds).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let revalidated = http.get("/etag").await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.body, "etag body");
    assert_eq!(revalidated.header("x-cache"), "REVALIDATED");
    let seen = origin.seen("/etag");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["if-none-match"], "\"v1\"");

    // The 304 made the stored copy fresh again.
    assert_eq!(http.get("/etag").await.header("x-cache"), "HIT");
    assert_eq!(origin.count("/etag"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_arrives_chunk_by_chunk() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let http = Http::new(&proxy);

    let res = http.start("GET", "/stream", &[], "").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-cache"], "MISS");
    assert!(!res.headers().contains_key("content-length"));
    let mut body = res.into_body();
    // The first chunk arrives while the origin is still holding the second one back.
    let first = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("the first chunk before the origin finishes")
        .expect("a frame")
        .expect("data");
    assert_eq!(first.into_data().expect("data"), "first\n");
    origin.state.release_stream.notify_one();
    let rest = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .expect("the rest in time")
        .expect("the rest")
        .to_bytes();
    assert_eq!(rest, "second\n");

    // Stored as it streamed (a streaming fill): the next GET is a hit with the whole body.
    let again = http.get("/stream").await;
    assert_eq!(again.body, "first\nsecond\n");
    assert_eq!(again.header("x-cache"), "HIT");
    assert_eq!(origin.count("/stream"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_streams_to_the_origin_without_buffering() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let head = "POST /upload HTTP/1.1\r\n\
                Host: shop.example\r\n\
                Transfer-Encoding: chunked\r\n\
                Connection: close\r\n\r\n\
                5\r\npart1\r\n";
    // The second chunk is sent only once the origin has the first one.
    let (status, _, body) = raw(
        &proxy.addr,
        head,
        origin.state.upload_started.notified(),
        "5\r\npart2\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.ends_with("POST /upload part1part2"), "{body:?}");
    assert_eq!(origin.seen("/upload")[0].body, "part1part2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_origin_gives_502_and_stale_if_error_serves_the_stored_copy() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let http = Http::new(&proxy);

    let stored = http.get("/sie").await;
    assert_eq!(stored.body, "sie #1");
    assert_eq!(stored.header("cache-status"), "turret; fwd=miss; stored");

    origin.stop();
    let down = http.get("/max-age").await;
    assert_eq!(down.status, 502);
    assert_eq!(down.body, "the origin could not be reached\n");

    // max-age=0, stale-if-error=60: the stale copy instead of the 502.
    let stale = http.get("/sie").await;
    assert_eq!((stale.status, stale.body.as_str()), (200, "sie #1"));
    assert_eq!(stale.header("x-cache"), "STALE");
    assert!(
        stale.header("cache-status").contains("stale-if-error"),
        "{:?}",
        stale.headers
    );

    // A proxy whose origin never existed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let nowhere = Proxy::start(&format!("http://127.0.0.1:{port}"), &[]);
    let res = Http::new(&nowhere).get("/").await;
    assert_eq!(res.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_on_one_redis_share_the_cache_and_its_invalidations() {
    let redis = RedisServer::start();
    let url = redis.url();
    let origin = Origin::start().await;
    let a = Proxy::start(&origin.url(), &["--redis-url", &url]);
    let b = Proxy::start(&origin.url(), &["--redis-url", &url]);
    let (on_a, on_b) = (Http::new(&a), Http::new(&b));

    assert_eq!(on_a.get("/max-age").await.header("x-cache"), "MISS");
    let from_b = on_b.get("/max-age").await;
    assert_eq!(from_b.header("x-cache"), "HIT", "stored by a, read by b");
    assert_eq!(from_b.body, "/max-age #1");
    assert_eq!(origin.count("/max-age"), 1);
    // Now in a's memory (L1) too.
    assert_eq!(on_a.get("/max-age").await.header("x-cache"), "HIT");

    // A write through b invalidates on a as well (published to every proxy's L1).
    on_b.send("PUT", "/max-age", &[], "new").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let res = on_a.get("/max-age").await;
        if res.header("x-cache") == "MISS" {
            assert_eq!(res.body, "/max-age #3");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never saw the invalidation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_resumed_with_range_is_answered_from_the_stored_whole() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let http = Http::new(&proxy);
    // The first part: the proxy fetches the whole, stores it, sends the part.
    let first = http
        .send("GET", "/max-age", &[("range", "bytes=0-3")], "")
        .await;
    assert_eq!((first.status, first.body.as_str()), (206, "/max"));
    assert_eq!(first.header("content-range"), "bytes 0-3/11");
    assert!(
        origin.seen("/max-age")[0].headers.get("range").is_none(),
        "the origin was asked for the whole"
    );
    // The client resumes where it stopped: from storage.
    let rest = http
        .send("GET", "/max-age", &[("range", "bytes=4-")], "")
        .await;
    assert_eq!((rest.status, rest.body.as_str()), (206, "-age #1"));
    assert_eq!(rest.header("content-range"), "bytes 4-10/11");
    assert_eq!(rest.header("x-cache"), "HIT");
    let past = http
        .send("GET", "/max-age", &[("range", "bytes=11-")], "")
        .await;
    assert_eq!(
        (past.status, past.header("content-range")),
        (416, "bytes */11")
    );
    assert_eq!(origin.count("/max-age"), 1);
}

const PURGE_TOKEN: &str = "proxy-purge-token-41c9e2";
const BEARER: (&str, &str) = ("authorization", "Bearer proxy-purge-token-41c9e2");

/// How many `PURGE` requests reached the origin (none may).
fn purges_forwarded(origin: &Origin) -> usize {
    let seen = origin.state.seen.lock().expect("lock");
    seen.iter().filter(|s| s.method.as_str() == "PURGE").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_without_a_configured_token_is_405_and_never_forwarded() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let http = Http::new(&proxy);
    http.get("/max-age").await;
    let res = http.send("PURGE", "/max-age", &[BEARER], "").await;
    assert_eq!(res.status, 405);
    assert!(res.header("allow").contains("GET"), "{:?}", res.headers);
    assert_eq!(http.get("/max-age").await.header("x-cache"), "HIT");
    assert_eq!(purges_forwarded(&origin), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_with_the_token_removes_a_url_or_a_tag_and_is_never_forwarded() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &["--purge-token", PURGE_TOKEN]);
    let http = Http::new(&proxy);
    http.get("/max-age").await;
    assert_eq!(http.get("/max-age").await.header("x-cache"), "HIT");

    let missing = http.send("PURGE", "/max-age", &[], "").await;
    assert_eq!(missing.status, 401);
    assert!(missing.header("www-authenticate").starts_with("Bearer"));
    let wrong = ("authorization", "Bearer proxy-purge-token-41c9e3");
    assert_eq!(
        http.send("PURGE", "/max-age", &[wrong], "").await.status,
        403
    );
    assert_eq!(http.get("/max-age").await.header("x-cache"), "HIT");

    let res = http.send("PURGE", "/max-age", &[BEARER], "").await;
    assert_eq!((res.status, res.body.as_str()), (200, r#"{"purged":1}"#));
    let after = http.get("/max-age").await;
    assert_eq!(
        (after.header("x-cache"), after.body.as_str()),
        ("MISS", "/max-age #2")
    );

    // By tag, whatever the target (the client's Host spelling does not matter either).
    http.get("/tagged").await;
    assert_eq!(http.get("/tagged").await.header("x-cache"), "HIT");
    let by_tag = http
        .send(
            "PURGE",
            "/",
            &[BEARER, ("surrogate-key", "t-a"), ("host", "other:1")],
            "",
        )
        .await;
    assert_eq!(by_tag.body, r#"{"purged":1}"#);
    assert_eq!(http.get("/tagged").await.header("x-cache"), "MISS");
    // Soft: kept, but stale: the next request goes to the origin.
    assert_eq!(http.get("/tagged").await.header("x-cache"), "HIT");
    let soft = http
        .send(
            "PURGE",
            "/",
            &[BEARER, ("surrogate-key", "shared"), ("soft-purge", "1")],
            "",
        )
        .await;
    assert_eq!(soft.body, r#"{"purged":1}"#);
    assert_ne!(http.get("/tagged").await.header("x-cache"), "HIT");
    assert_eq!(origin.count("/tagged"), 3);
    assert_eq!(purges_forwarded(&origin), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_proxy_is_seen_on_the_other_on_one_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let origin = Origin::start().await;
    let args = ["--redis-url", url.as_str(), "--purge-token", PURGE_TOKEN];
    let (a, b) = (
        Proxy::start(&origin.url(), &args),
        Proxy::start(&origin.url(), &args),
    );
    let (on_a, on_b) = (Http::new(&a), Http::new(&b));
    on_a.get("/max-age").await;
    assert_eq!(on_b.get("/max-age").await.header("x-cache"), "HIT");
    assert_eq!(
        on_b.get("/max-age").await.header("x-cache"),
        "HIT",
        "in b's L1 now"
    );
    let res = on_a.send("PURGE", "/max-age", &[BEARER], "").await;
    assert_eq!(res.body, r#"{"purged":1}"#);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if on_b.get("/max-age").await.header("x-cache") == "MISS" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never saw the purge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(purges_forwarded(&origin), 0);
}

// ---------------------------------------------------------------------------------------
// Framing: raw TCP on both sides, where the exact bytes matter.

/// An origin written on raw TCP: for every connection it reads a request head and writes
/// `answer` (nothing at all when `None`: it holds the connection open and never answers),
/// then closes the connection once the proxy does.
struct RawOrigin {
    addr: SocketAddr,
    /// The request heads it read, in order.
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawOrigin {
    async fn start(answer: Option<&'static [u8]>) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let head = read_head(&mut stream).await;
                    seen.lock().expect("lock").push(head);
                    if let Some(answer) = answer {
                        let _ = stream.write_all(answer).await;
                    }
                    // Until the proxy closes (or the test ends).
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest).await;
                });
            }
        });
        RawOrigin { addr, heads }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn count(&self) -> usize {
        self.heads.lock().expect("lock").len()
    }
}

/// Reads up to the end of a message head (`\r\n\r\n`), or whatever came before EOF.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Writes `request` on a new connection (write errors are ignored: the proxy may close
/// before reading all of a malformed request), then ends the sending side when
/// `half_close`, and returns everything the proxy sent until it closed the connection (a
/// reset after the response counts as a close).
async fn raw_exchange(addr: &str, request: &[u8], half_close: bool) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("the proxy answers and closes in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// The status line, the fields (lower-case names) and the body of one response's text.
fn parse_response(text: &str) -> (String, Vec<(String, String)>, String) {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("a response head in {text:?}"));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default().to_owned();
    let fields = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status_line, fields, body.to_owned())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_carries_the_proxys_http_version_not_the_origins_rfc9110_6_2() {
    let origin = RawOrigin::start(Some(
        b"HTTP/1.0 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok",
    ))
    .await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let get = b"GET /v HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";

    let miss = raw_exchange(&proxy.addr, get, false).await;
    let (status_line, fields, body) = parse_response(&miss);
    assert_eq!(status_line, "HTTP/1.1 200 OK", "the miss: {miss:?}");
    assert_eq!(body, "ok");
    assert_eq!(field(&fields, "x-cache"), Some("MISS"));

    let hit = raw_exchange(&proxy.addr, get, false).await;
    let (status_line, fields, body) = parse_response(&hit);
    assert_eq!(status_line, "HTTP/1.1 200 OK", "the hit: {hit:?}");
    assert_eq!(body, "ok");
    assert_eq!(field(&fields, "x-cache"), Some("HIT"));
    assert_eq!(origin.count(), 1);

    // An HTTP/1.0 client gets HTTP/1.0 (the highest version it can read).
    let old = raw_exchange(&proxy.addr, b"GET /v HTTP/1.0\r\n\r\n", false).await;
    assert!(old.starts_with("HTTP/1.0 200 OK\r\n"), "{old:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_other_than_chunked_is_501_and_not_forwarded_rfc9112_6_1() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let body = "5\r\nhello\r\n0\r\n\r\n";

    for codings in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: x-custom;p=1 , chunked\r\n",
    ] {
        let request = format!("POST /upload HTTP/1.1\r\nHost: shop.example\r\n{codings}\r\n{body}");
        let text = raw_exchange(&proxy.addr, request.as_bytes(), false).await;
        let (status_line, fields, _) = parse_response(&text);
        assert!(
            status_line.starts_with("HTTP/1.1 501 "),
            "{codings:?}: {text:?}"
        );
        assert_eq!(
            field(&fields, "cache-status"),
            None,
            "{codings:?}: the proxy's own"
        );
    }
    // Chunked twice is not a message this proxy can forward either (§6.1: a sender never
    // applies chunked more than once).
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked, chunked\r\n\r\n{body}"
    );
    let text = raw_exchange(&proxy.addr, request.as_bytes(), false).await;
    assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");
    assert_eq!(origin.count("/upload"), 0, "nothing reached the origin");

    // `chunked` alone (any case, with empty list elements) is forwarded.
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: , Chunked\r\nConnection: close\r\n\r\n{body}"
    );
    let text = raw_exchange(&proxy.addr, request.as_bytes(), false).await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text:?}");
    assert_eq!(origin.seen("/upload")[0].body, "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_body_that_cannot_be_read_is_400_never_502_or_a_stale_copy_rfc9112_7_1_1() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let http = Http::new(&proxy);
    // Stored with max-age=0, stale-if-error=60: an origin failure would serve this copy.
    assert_eq!(http.get("/sie").await.body, "sie #1");

    // A 100 KB chunk extension: more than the proxy reads of one chunk-size line (§7.1.1:
    // a server limits them and answers 4xx).
    let extension = format!(";ext={}", "x".repeat(100 * 1024));
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n\
         5{extension}\r\nhello\r\n0\r\n\r\n"
    );
    let text = raw_exchange(&proxy.addr, request.as_bytes(), false).await;
    let (status_line, fields, body) = parse_response(&text);
    assert!(status_line.starts_with("HTTP/1.1 400 "), "{text:?}");
    assert!(!body.contains("origin"), "{body:?}");
    assert_eq!(field(&fields, "cache-status"), None);
    assert_eq!(field(&fields, "connection"), Some("close"));

    // A body shorter than its Content-Length (the client ends its side of the connection
    // early), on a GET of the stale-if-error entry and on a POST: the client's fault, so
    // 400, and never the stored copy.
    for (method, path) in [("GET", "/sie"), ("POST", "/upload")] {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 10\r\n\r\nhello"
        );
        let text = raw_exchange(&proxy.addr, request.as_bytes(), true).await;
        let (status_line, fields, body) = parse_response(&text);
        assert!(
            status_line.starts_with("HTTP/1.1 400 "),
            "{method} {path}: {text:?}"
        );
        assert!(!body.contains("sie #"), "{method} {path}: {body:?}");
        assert_eq!(field(&fields, "cache-status"), None, "{method} {path}");
    }

    // The origin is fine, and the stored copy is still there for real origin failures.
    origin.stop();
    let stale = http.get("/sie").await;
    assert_eq!((stale.status, stale.body.as_str()), (200, "sie #1"));
    assert_eq!(stale.header("x-cache"), "STALE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_host_or_with_two_or_a_bad_one_is_400_rfc9112_3_2() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);

    for (what, request) in [
        ("no Host", "GET /max-age HTTP/1.1\r\n\r\n"),
        (
            "two Host lines",
            "GET /max-age HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        (
            "two Host lines, the same value",
            "GET /max-age HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
        ),
        (
            "no Host, absolute-form",
            "GET http://a.example/max-age HTTP/1.1\r\n\r\n",
        ),
        (
            "an invalid Host",
            "GET /max-age HTTP/1.1\r\nHost: a b.example\r\n\r\n",
        ),
        (
            "user information in Host",
            "GET /max-age HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
        ),
        (
            "two Host lines, HTTP/1.0",
            "GET /max-age HTTP/1.0\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
    ] {
        let text = raw_exchange(&proxy.addr, request.as_bytes(), false).await;
        let (status_line, fields, _) = parse_response(&text);
        assert!(status_line.contains(" 400 "), "{what}: {text:?}");
        assert_eq!(field(&fields, "cache-status"), None, "{what}");
    }
    assert_eq!(origin.count("/max-age"), 0, "nothing reached the origin");

    // HTTP/1.0 needs no Host; an empty Host is valid (RFC 9110 §7.2).
    let text = raw_exchange(&proxy.addr, b"GET /max-age HTTP/1.0\r\n\r\n", false).await;
    assert!(text.starts_with("HTTP/1.0 200 "), "{text:?}");
    let text = raw_exchange(
        &proxy.addr,
        b"GET /max-age HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_502_504_and_501_carry_no_cache_status_rfc9211_2() {
    // 502: nothing listens on the origin's port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let nowhere = Proxy::start(&format!("http://127.0.0.1:{port}"), &[]);
    let res = Http::new(&nowhere).get("/").await;
    assert_eq!(res.status, 502);
    assert_eq!(res.body, "the origin could not be reached\n");
    assert!(
        !res.headers.contains_key("cache-status"),
        "{:?}",
        res.headers
    );
    assert!(!res.headers.contains_key("x-cache"), "{:?}", res.headers);

    // 504: the origin takes the request and never answers.
    let silent = RawOrigin::start(None).await;
    let slow = Proxy::start(&silent.url(), &["--origin-timeout", "300ms"]);
    let http = Http::new(&slow);
    let res = http.get("/").await;
    assert_eq!(res.status, 504);
    assert!(
        !res.headers.contains_key("cache-status"),
        "{:?}",
        res.headers
    );
    assert!(!res.headers.contains_key("x-cache"), "{:?}", res.headers);

    // 501: CONNECT and `OPTIONS *` are not forwarded.
    for request in [
        "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    ] {
        let text = raw_exchange(&slow.addr, request.as_bytes(), false).await;
        let (status_line, fields, _) = parse_response(&text);
        assert!(status_line.starts_with("HTTP/1.1 501 "), "{text:?}");
        assert_eq!(field(&fields, "cache-status"), None, "{request:?}");
        assert_eq!(field(&fields, "x-cache"), None, "{request:?}");
    }
    assert_eq!(silent.count(), 1, "only the GET reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_103_before_a_cacheable_200_is_neither_stored_nor_replayed_rfc9110_15_2() {
    let origin = RawOrigin::start(Some(
        b"HTTP/1.1 103 Early Hints\r\n\
          Link: </style.css>; rel=preload; as=style\r\n\r\n\
          HTTP/1.1 200 OK\r\n\
          Cache-Control: max-age=60\r\n\
          Content-Length: 5\r\n\
          Connection: close\r\n\r\n\
          hello",
    ))
    .await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let get = b"GET /hinted HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";

    for expected in ["MISS", "HIT"] {
        let text = raw_exchange(&proxy.addr, get, false).await;
        let (status_line, fields, body) = parse_response(&text);
        // hyper's server cannot send a 103 (the proxy README names the upstream work): the
        // client gets the final response only, without the 103's fields.
        assert_eq!(status_line, "HTTP/1.1 200 OK", "{expected}: {text:?}");
        assert_eq!(body, "hello", "{expected}");
        assert_eq!(field(&fields, "x-cache"), Some(expected));
        assert_eq!(field(&fields, "link"), None, "{expected}: {fields:?}");
        assert!(!text.contains("103"), "{expected}: {text:?}");
    }
    assert_eq!(origin.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_a_100_before_the_client_sends_its_body_rfc9110_10_1_1() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let mut stream = TcpStream::connect(&proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nExpect: 100-continue\r\n\
              Content-Length: 5\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("send");
    let interim = tokio::time::timeout(PATIENCE, read_head(&mut stream))
        .await
        .expect("the 100 in time");
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.expect("send");
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("the response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(text.ends_with("POST /upload hello"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_content_goes_around_the_cache_with_its_content_rfc9110_9_3_1() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let http = Http::new(&proxy);

    // Two GETs the origin can tell apart by their content: neither is answered with the
    // other's response, and neither is stored under the URL.
    let a = http.send("GET", "/max-age", &[], "query a").await;
    let b = http.send("GET", "/max-age", &[], "query b").await;
    assert_eq!(
        (a.body.as_str(), b.body.as_str()),
        ("/max-age #1", "/max-age #2")
    );
    assert!(!b.headers.contains_key("cache-status"), "{:?}", b.headers);
    // Chunked content reaches the origin too.
    let request = "GET /max-age HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\
                   Connection: close\r\n\r\n7\r\nquery c\r\n0\r\n\r\n";
    let text = raw_exchange(&proxy.addr, request.as_bytes(), false).await;
    assert!(text.ends_with("/max-age #3"), "{text:?}");
    let bodies: Vec<Bytes> = origin
        .seen("/max-age")
        .into_iter()
        .map(|s| s.body)
        .collect();
    assert_eq!(bodies, ["query a", "query b", "query c"]);

    // A GET without content is cached as before.
    assert_eq!(http.get("/max-age").await.header("x-cache"), "MISS");
    assert_eq!(http.get("/max-age").await.header("x-cache"), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_transfer_coding_the_proxy_cannot_decode_is_502_not_dropped_rfc9112_6_1() {
    // The proxy sends no `TE`, so the origin may apply no coding but chunked; forwarding
    // this body without its `gzip` coding would hand the client bytes it cannot decode.
    let origin = RawOrigin::start(Some(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nCache-Control: max-age=60\r\n\
          Connection: close\r\n\r\n5\r\nGZIPD\r\n0\r\n\r\n",
    ))
    .await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let get = b"GET /coded HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";
    let text = raw_exchange(&proxy.addr, get, false).await;
    let (status_line, fields, body) = parse_response(&text);
    assert_eq!(status_line, "HTTP/1.1 502 Bad Gateway", "{text:?}");
    assert!(!body.contains("GZIPD"), "{text:?}");
    assert_eq!(field(&fields, "cache-status"), None);
    // Nothing was stored: the next request asks the origin again.
    let text = raw_exchange(&proxy.addr, get, false).await;
    assert!(text.starts_with("HTTP/1.1 502 "), "{text:?}");
    assert_eq!(origin.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_forwards_on_options_and_trace_is_answered_at_0_and_decremented_above_rfc9110_7_6_2() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let http = Http::new(&proxy);

    // At 0 the proxy is the final recipient: nothing is forwarded.
    let options = http
        .send("OPTIONS", "/items", &[("max-forwards", "0")], "")
        .await;
    assert_eq!((options.status, options.body.as_str()), (200, ""));
    assert!(!options.headers.contains_key("cache-status"));
    let trace = http
        .send(
            "TRACE",
            "/items",
            &[
                ("max-forwards", "0"),
                ("x-probe", "seen"),
                ("cookie", "session=secret"),
                ("authorization", "Bearer secret"),
            ],
            "",
        )
        .await;
    assert_eq!(trace.status, 200);
    assert_eq!(trace.header("content-type"), "message/http");
    assert!(trace.body.starts_with("TRACE "), "{:?}", trace.body);
    assert!(trace.body.contains("x-probe: seen\r\n"), "{:?}", trace.body);
    assert!(
        !trace.body.contains("secret"),
        "credentials are not reflected"
    );
    assert_eq!(origin.count("/items"), 0);

    // Above 0 it is forwarded with one less; other methods keep theirs.
    http.send("OPTIONS", "/items", &[("max-forwards", "5")], "")
        .await;
    http.send("TRACE", "/items", &[("max-forwards", "1")], "")
        .await;
    http.send("DELETE", "/items", &[("max-forwards", "0")], "")
        .await;
    let seen: Vec<(String, String)> = origin
        .seen("/items")
        .iter()
        .map(|s| {
            (
                s.method.to_string(),
                s.headers["max-forwards"].to_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected = [("OPTIONS", "4"), ("TRACE", "0"), ("DELETE", "0")]
        .map(|(m, v)| (m.to_owned(), v.to_owned()));
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsolicited_101_from_the_origin_is_502_rfc9110_15_2_2() {
    // The proxy removes `Upgrade` from requests, so no switch was asked for.
    let origin = RawOrigin::start(Some(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAW",
    ))
    .await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let request = b"GET /chat HTTP/1.1\r\nHost: shop.example\r\nUpgrade: websocket\r\n\
                    Connection: upgrade, close\r\n\r\n";
    let text = raw_exchange(&proxy.addr, request, false).await;
    let (status_line, fields, body) = parse_response(&text);
    assert_eq!(status_line, "HTTP/1.1 502 Bad Gateway", "{text:?}");
    assert!(!body.contains("RAW"), "{text:?}");
    assert_eq!(field(&fields, "cache-status"), None);
    assert!(
        !origin.heads.lock().expect("lock")[0]
            .to_ascii_lowercase()
            .contains("upgrade")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_must_revalidate_copy_is_not_served_when_the_origin_is_down_rfc9111_5_2_2_2() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&origin.url(), &[]);
    let http = Http::new(&proxy);
    let stored = http.get("/must-revalidate").await;
    assert_eq!(stored.header("cache-status"), "turret; fwd=miss; stored");

    // The origin's failure reaches the cache as an error: must-revalidate forbids the stale
    // copy (stale-if-error notwithstanding), and the cache answers 504.
    origin.stop();
    let res = http.get("/must-revalidate").await;
    assert_eq!(res.status, 504, "{:?}", res.headers);
    assert!(!res.body.contains("must-revalidate #"), "{:?}", res.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_selecting_nothing_stored_never_reaches_a_plain_get_rfc9111_4_3_4() {
    let redis = RedisServer::start();
    let url = redis.url();
    for fleet in [false, true] {
        let origin = Origin::start().await;
        let flags: &[&str] = if fleet { &["--redis-url", &url] } else { &[] };
        let proxies = [
            Proxy::start(&origin.url(), flags),
            Proxy::start(&origin.url(), flags),
        ];
        let clients = [Http::new(&proxies[0]), Http::new(&proxies[1])];
        let first = clients[0].get("/changed").await;
        assert_eq!((first.status, first.body.as_str()), (200, "a"));
        // max-age=1: wait until the stored copy is stale (Age counts whole seconds).
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let res = clients[0].get("/changed").await;
        assert_eq!(res.status, 200, "fleet {fleet}");
        assert_eq!((res.header("etag"), res.body.as_str()), ("\"b\"", "b"));
        assert_eq!(
            res.header("cache-status"),
            "turret; fwd=stale; fwd-status=200; stored"
        );
        // Every plain GET afterwards gets "b", never a 304.
        for client in &clients {
            for _ in 0..3 {
                let res = client.get("/changed").await;
                assert_eq!((res.status, res.body.as_str()), (200, "b"), "fleet {fleet}");
            }
        }
        let seen = origin.seen("/changed");
        assert_eq!(seen[1].headers["if-none-match"], "\"a\"");
        assert!(!seen[2].headers.contains_key("if-none-match"));
    }
}
