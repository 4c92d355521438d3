//! Lost-update prevention with the built-in validator store: memory, and Redis shared by
//! several independent layer instances (a real redis-server, no mock).

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tokio::sync::{Notify, watch};
use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
use turret_conditional::{ConditionalLayer, ResponseBody, ValidatorStore};
#[cfg(feature = "redis")]
use turret_redis::{Redis, RedisConfig};
#[cfg(feature = "redis")]
use turret_testkit::RedisServer;

type Svc = BoxCloneService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// The application: GET answers the current version as ETag (404 after a DELETE); PUT
/// (unless `x-fail`) bumps it, after waiting for `gate` to open; every PUT that reaches it is
/// counted.
#[derive(Clone)]
struct App {
    version: Arc<AtomicUsize>,
    exists: Arc<std::sync::atomic::AtomicBool>,
    handled: Arc<AtomicUsize>,
    entered: Arc<Notify>,
    gate: watch::Receiver<bool>,
}

impl App {
    fn new(open: bool) -> (Self, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(open);
        let app = App {
            version: Arc::new(AtomicUsize::new(1)),
            exists: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            handled: Arc::new(AtomicUsize::new(0)),
            entered: Arc::new(Notify::new()),
            gate: rx,
        };
        (app, tx)
    }

    /// Waits until `n` PUTs have reached the handler.
    async fn wait_handled(&self, n: usize) {
        loop {
            let notified = self.entered.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.handled.load(Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    }

    fn service(&self, store: ValidatorStore) -> Svc {
        let app = self.clone();
        let svc = ServiceBuilder::new()
            .layer(ConditionalLayer::new().validator_store(store))
            .service(service_fn(move |req: Request<()>| {
                let app = app.clone();
                async move {
                    let mut res = Response::new(Full::<Bytes>::default());
                    if req.method() == Method::PUT {
                        app.handled.fetch_add(1, Ordering::SeqCst);
                        app.entered.notify_waiters();
                        let mut gate = app.gate.clone();
                        let _ = gate.wait_for(|open| *open).await;
                        if req.headers().contains_key("x-fail") {
                            *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            return Ok(res);
                        }
                        app.version.fetch_add(1, Ordering::SeqCst);
                        app.exists.store(true, Ordering::SeqCst);
                    }
                    if req.method() == Method::DELETE {
                        app.exists.store(false, Ordering::SeqCst);
                        return Ok(res);
                    }
                    if !app.exists.load(Ordering::SeqCst) {
                        *res.status_mut() = StatusCode::NOT_FOUND;
                        return Ok(res);
                    }
                    let v = app.version.load(Ordering::SeqCst);
                    let tag = HeaderValue::from_str(&format!("\"v{v}\"")).unwrap();
                    res.headers_mut().insert(header::ETAG, tag);
                    Ok::<_, Infallible>(res)
                }
            }));
        BoxCloneService::new(svc)
    }
}

fn send(
    svc: &Svc,
    method: Method,
    headers: &[(&str, &str)],
) -> impl std::future::Future<Output = Response<ResponseBody<Full<Bytes>>>> + Send + 'static {
    let mut req = Request::builder().method(method).uri("/doc/1");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(()).unwrap();
    let svc = svc.clone();
    async move { svc.oneshot(req).await.unwrap() }
}

/// Waits until the store has recorded `want` as the ETag of `/doc/1` (Redis records GETs in
/// the background).
async fn recorded(store: &ValidatorStore, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = store.get("/doc/1").await.ok().flatten();
        if got
            .as_ref()
            .and_then(|v| v.etag())
            .is_some_and(|e| e == want)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{want} never recorded; have {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// N concurrent PUTs with the same If-Match, spread over `stores` (one layer instance
/// each): exactly one reaches the handler, every other one gets 412 while it still runs.
async fn one_writer_wins(stores: Vec<ValidatorStore>, n: usize) {
    let (app, gate) = App::new(false);
    let services: Vec<Svc> = stores.iter().map(|s| app.service(s.clone())).collect();
    assert_eq!(send(&services[0], Method::GET, &[]).await.status(), 200);
    recorded(&stores[0], "\"v1\"").await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let svc = services[i % services.len()].clone();
        let put = send(&svc, Method::PUT, &[("if-match", "\"v1\"")]);
        tasks.spawn(async move { put.await.status() });
    }
    // The winner is parked at the gate; all the others must come back first.
    for _ in 0..n - 1 {
        let status = tasks.join_next().await.unwrap().unwrap();
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    }
    assert_eq!(
        app.handled.load(Ordering::SeqCst),
        1,
        "exactly one write reached the handler"
    );
    gate.send(true).unwrap();
    assert_eq!(tasks.join_next().await.unwrap().unwrap(), StatusCode::OK);

    // The winner recorded its new ETag and released the claim, on every instance.
    for store in &stores {
        recorded(store, "\"v2\"").await;
    }
    let last = services.last().unwrap();
    assert_eq!(
        send(last, Method::PUT, &[("if-match", "\"v1\"")])
            .await
            .status(),
        412
    );
    assert_eq!(
        send(last, Method::PUT, &[("if-match", "\"v2\"")])
            .await
            .status(),
        200
    );
    assert_eq!(app.handled.load(Ordering::SeqCst), 2);
}

/// A failed write and a dropped write both release their claim.
async fn claims_are_released(store: ValidatorStore) {
    let (app, gate) = App::new(true);
    let svc = app.service(store.clone());
    assert_eq!(send(&svc, Method::GET, &[]).await.status(), 200);
    recorded(&store, "\"v1\"").await;

    // A failed write: released, record unchanged.
    let res = send(
        &svc,
        Method::PUT,
        &[("if-match", "\"v1\""), ("x-fail", "1")],
    )
    .await;
    assert_eq!(res.status(), 500);
    recorded(&store, "\"v1\"").await;

    // A dropped write: its future is dropped while the handler runs.
    gate.send(false).unwrap();
    let task = tokio::spawn(send(&svc, Method::PUT, &[("if-match", "\"v1\"")]));
    app.wait_handled(2).await;
    // While it runs, the resource is claimed.
    assert_eq!(
        send(&svc, Method::PUT, &[("if-match", "\"v1\"")])
            .await
            .status(),
        412
    );
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    gate.send(true).unwrap();

    // Released (on Redis, by a background task): a new write gets through.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = send(&svc, Method::PUT, &[("if-match", "\"v1\"")])
            .await
            .status();
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, 412);
        assert!(
            Instant::now() < deadline,
            "the dropped write's claim was never released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    recorded(&store, "\"v2\"").await;
}

/// Create-only PUT, DELETE and POST bookkeeping.
async fn creates_and_deletes(store: ValidatorStore) {
    let (app, _gate) = App::new(true);
    let svc = app.service(store.clone());
    // Unknown to the store: learned from a GET of the target ("v1"), so a stale tag fails
    // and the current one passes.
    assert_eq!(
        send(&svc, Method::PUT, &[("if-match", "\"v0\"")])
            .await
            .status(),
        412
    );
    assert_eq!(
        send(&svc, Method::PUT, &[("if-match", "\"v1\"")])
            .await
            .status(),
        200
    );
    recorded(&store, "\"v2\"").await;
    assert_eq!(
        send(&svc, Method::PUT, &[("if-none-match", "*")])
            .await
            .status(),
        412
    );
    // DELETE removes the record; the GET that learns it again finds nothing (404): If-Match
    // now fails and create-only succeeds.
    assert_eq!(
        send(&svc, Method::DELETE, &[("if-match", "\"v2\"")])
            .await
            .status(),
        200
    );
    assert_eq!(store.get("/doc/1").await.unwrap(), None);
    assert_eq!(
        send(&svc, Method::DELETE, &[("if-match", "\"v2\"")])
            .await
            .status(),
        412
    );
    assert_eq!(
        send(&svc, Method::PUT, &[("if-none-match", "*")])
            .await
            .status(),
        200
    );
    recorded(&store, "\"v3\"").await;
    // A POST leaves the target existing with unknown validators.
    assert_eq!(send(&svc, Method::POST, &[]).await.status(), 200);
    let v = store
        .get("/doc/1")
        .await
        .unwrap()
        .expect("exists after POST");
    assert_eq!(v.etag(), None);
    assert_eq!(
        send(&svc, Method::PUT, &[("if-none-match", "*")])
            .await
            .status(),
        412
    );
    assert_eq!(
        send(&svc, Method::PUT, &[("if-match", "*")]).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_lets_exactly_one_concurrent_writer_through() {
    one_writer_wins(vec![ValidatorStore::memory()], 16).await;
}

#[tokio::test]
async fn memory_store_releases_failed_and_dropped_claims() {
    claims_are_released(ValidatorStore::memory()).await;
}

#[tokio::test]
async fn memory_store_tracks_creates_and_deletes() {
    creates_and_deletes(ValidatorStore::memory()).await;
}

#[tokio::test]
async fn memory_store_claims_expire() {
    tokio::time::pause();
    let store = ValidatorStore::memory().claim_ttl(Duration::from_secs(1));
    let (app, _gate) = App::new(false);
    let svc = app.service(store.clone());
    send(&svc, Method::GET, &[]).await;
    // A write that never finishes (its future is leaked, so nothing releases the claim).
    let stuck = send(&svc, Method::PUT, &[("if-match", "\"v1\"")]);
    let mut stuck = Box::pin(stuck);
    assert!(futures_poll_once(stuck.as_mut()).await.is_none());
    assert_eq!(
        send(&svc, Method::PUT, &[("if-match", "\"v1\"")])
            .await
            .status(),
        412
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let (app2, _gate2) = App::new(true);
    let svc2 = app2.service(store);
    assert_eq!(
        send(&svc2, Method::PUT, &[("if-match", "\"v1\"")])
            .await
            .status(),
        200
    );
    std::mem::forget(stuck);
}

async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
    let mut f = f;
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[cfg(feature = "redis")]
async fn redis_store(server: &RedisServer) -> ValidatorStore {
    let config = RedisConfig::from_url(&server.url())
        .unwrap()
        .command_timeout(Duration::from_millis(500));
    ValidatorStore::redis(Redis::connect(config).await.unwrap())
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_lets_exactly_one_writer_through_across_four_instances() {
    let server = RedisServer::start();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(redis_store(&server).await);
    }
    one_writer_wins(stores, 16).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_store_releases_failed_and_dropped_claims() {
    let server = RedisServer::start();
    claims_are_released(redis_store(&server).await).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_store_tracks_creates_and_deletes() {
    let server = RedisServer::start();
    creates_and_deletes(redis_store(&server).await).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_claims_expire_with_their_ttl() {
    let server = RedisServer::start();
    let store = redis_store(&server)
        .await
        .claim_ttl(Duration::from_millis(200));
    let (app, _gate) = App::new(false);
    let svc = app.service(store.clone());
    send(&svc, Method::GET, &[]).await;
    recorded(&store, "\"v1\"").await;
    // A write parked in its handler: its claim stays until the TTL, as for a crashed instance.
    let _stuck = tokio::spawn(send(&svc, Method::PUT, &[("if-match", "\"v1\"")]));
    app.wait_handled(1).await;
    let keys: Vec<String> = server.cmd(&["KEYS", "*:claim"]);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = server.cmd(&["PTTL", &keys[0]]);
    assert!(ttl > 0 && ttl <= 200, "the claim has a TTL: {ttl}");
    let (app2, _gate2) = App::new(true);
    let svc2 = app2.service(store);
    let deadline = Instant::now() + Duration::from_secs(5);
    while send(&svc2, Method::PUT, &[("if-match", "\"v1\"")])
        .await
        .status()
        != 200
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_down_fails_open() {
    let mut server = RedisServer::start();
    let store = redis_store(&server).await;
    let (app, _gate) = App::new(true);
    let svc = app.service(store);
    send(&svc, Method::GET, &[]).await;
    server.stop();
    // Unchecked: the write reaches the handler even with a stale If-Match.
    let res = send(&svc, Method::PUT, &[("if-match", "\"stale\"")]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.handled.load(Ordering::SeqCst), 1);
    // GETs keep working.
    assert_eq!(send(&svc, Method::GET, &[]).await.status(), 200);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_lets_exactly_one_writer_through_across_four_instances() {
    let cluster = turret_testkit::RedisCluster::start(3);
    let mut stores = Vec::new();
    for _ in 0..4 {
        let config = RedisConfig::from_url(&cluster.url())
            .unwrap()
            .command_timeout(Duration::from_millis(500));
        stores.push(ValidatorStore::redis(Redis::connect(config).await.unwrap()));
    }
    one_writer_wins(stores, 16).await;
}
