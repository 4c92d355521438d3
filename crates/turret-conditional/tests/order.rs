//! The conditional layer and a response cache in either order, on a real Redis, after the
//! validator store lost a resource's record: no order locks writers out.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
use turret_cache::ResponseCacheLayer;
use turret_conditional::{ConditionalLayer, ValidatorStore};
use turret_redis::{Redis, RedisConfig};
use turret_testkit::RedisServer;

type Svc = BoxCloneService<Request<()>, Response<Bytes>, Infallible>;

/// The application: `GET /doc` answers its version in the body, without an ETag (the
/// conditional layer hashes one) and fresh for 5 minutes; `PUT /doc` bumps the version.
#[derive(Clone, Default)]
struct App {
    version: Arc<AtomicUsize>,
    gets: Arc<AtomicUsize>,
    puts: Arc<AtomicUsize>,
}

impl App {
    async fn handle(self, req: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.method() == Method::PUT {
            self.puts.fetch_add(1, Ordering::SeqCst);
            self.version.fetch_add(1, Ordering::SeqCst);
            let mut res = Response::new(Full::default());
            *res.status_mut() = StatusCode::NO_CONTENT;
            return Ok(res);
        }
        self.gets.fetch_add(1, Ordering::SeqCst);
        let v = self.version.load(Ordering::SeqCst);
        let mut res = Response::new(Full::from(format!("version {v}")));
        res.headers_mut()
            .insert(header::CACHE_CONTROL, "max-age=300".parse().unwrap());
        Ok(res)
    }
}

/// Collects a response body so that both orders have one response type.
async fn collected<B: http_body::Body>(res: Response<B>) -> Response<Bytes>
where
    B::Error: std::fmt::Debug,
{
    let (parts, body) = res.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

fn cache_outside(app: &App, store: ValidatorStore) -> Svc {
    let app = app.clone();
    let svc = ServiceBuilder::new()
        .layer(ResponseCacheLayer::new())
        .layer(ConditionalLayer::new().validator_store(store))
        .service(service_fn(move |req| app.clone().handle(req)));
    BoxCloneService::new(svc.map_future(|f| async move { Ok(collected(f.await?).await) }))
}

fn conditional_outside(app: &App, store: ValidatorStore) -> Svc {
    let app = app.clone();
    let svc = ServiceBuilder::new()
        .layer(ConditionalLayer::new().validator_store(store))
        .layer(ResponseCacheLayer::new())
        .service(service_fn(move |req| app.clone().handle(req)));
    BoxCloneService::new(svc.map_future(|f| async move { Ok(collected(f.await?).await) }))
}

async fn send(svc: &Svc, method: Method, headers: &[(&str, &str)]) -> Response<Bytes> {
    let mut req = Request::builder()
        .method(method)
        .uri("/doc")
        .header(header::HOST, "example.test");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    svc.clone().oneshot(req.body(()).unwrap()).await.unwrap()
}

/// Waits until the store holds a record of `/doc` (GETs are recorded in the background),
/// then deletes it as an eviction, a flush or a restart would.
async fn lose_the_record(server: &RedisServer, store: &ValidatorStore) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get("/doc").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the GET was never recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let keys: Vec<String> = server.cmd(&["KEYS", "*cond*"]);
    assert!(!keys.is_empty());
    for key in keys {
        let _: i64 = server.cmd(&["DEL", &key]);
    }
    assert_eq!(store.get("/doc").await.unwrap(), None);
}

async fn redis_store(server: &RedisServer) -> ValidatorStore {
    let config = RedisConfig::from_url(&server.url())
        .unwrap()
        .command_timeout(Duration::from_millis(500));
    ValidatorStore::redis(Redis::connect(config).await.unwrap())
}

/// Read, lose the record, then write with the tag the client was given: performed once, a
/// stale tag fails. With `reread`, a read between the loss and the write, which a cache
/// outside the conditional layer answers without reaching it (so nothing records again).
async fn a_lost_record_does_not_lock_writers_out(
    make: fn(&App, ValidatorStore) -> Svc,
    reread: bool,
) {
    let server = RedisServer::start();
    let store = redis_store(&server).await;
    let app = App::default();
    let svc = make(&app, store.clone());

    let first = send(&svc, Method::GET, &[]).await;
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
    lose_the_record(&server, &store).await;
    if reread {
        let again = send(&svc, Method::GET, &[]).await;
        assert_eq!(again.headers()["x-cache"], "HIT");
        assert_eq!(again.headers()[header::ETAG], etag.as_str());
        assert_eq!(store.get("/doc").await.unwrap(), None);
    }

    let stale = send(&svc, Method::PUT, &[("if-match", "\"stale\"")]).await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let write = send(&svc, Method::PUT, &[("if-match", &etag)]).await;
    assert_eq!(write.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.puts.load(Ordering::SeqCst), 1);
    // The write changed the resource: the same tag is stale now.
    let repeat = send(&svc, Method::PUT, &[("if-match", &etag)]).await;
    assert_eq!(repeat.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(app.puts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cache_outside_conditional_a_lost_record_does_not_lock_writers_out_rfc9110_13_1_1() {
    a_lost_record_does_not_lock_writers_out(cache_outside, true).await;
}

#[tokio::test]
async fn conditional_outside_cache_a_lost_record_does_not_lock_writers_out_rfc9110_13_1_1() {
    a_lost_record_does_not_lock_writers_out(conditional_outside, false).await;
}

#[tokio::test]
async fn a_create_only_put_does_not_overwrite_what_the_store_forgot_rfc9110_13_1_2() {
    for make in [
        cache_outside as fn(&App, ValidatorStore) -> Svc,
        conditional_outside,
    ] {
        let server = RedisServer::start();
        let store = redis_store(&server).await;
        let app = App::default();
        let svc = make(&app, store.clone());
        assert_eq!(send(&svc, Method::GET, &[]).await.status(), StatusCode::OK);
        lose_the_record(&server, &store).await;
        let create = send(&svc, Method::PUT, &[("if-none-match", "*")]).await;
        assert_eq!(create.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(app.puts.load(Ordering::SeqCst), 0);
    }
}
