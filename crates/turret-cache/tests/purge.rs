//! `PurgeService`: purge over HTTP by URL (every Vary variant) and by tag, hard and soft,
//! every authorization outcome, hostile tags matched exactly, and fleet-wide on a real
//! redis-server and a 3-master Redis Cluster (every instance's L1 included).

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use turret_cache::{PurgeAuth, PurgeService, ResponseCacheLayer};

const TOKEN: &str = "operator-token-7f3a9c2e51";

/// The origin: counts its calls; tags each response with the `tags` query parameter
/// (`+`-separated) and varies on `Accept`.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
}

impl Origin {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The origin as a tower service.
fn serve(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |req: Request<()>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let tags = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("tags="))
            .unwrap_or("")
            .replace('+', " ");
        async move {
            let mut res = Response::new(Full::from(format!("v{n}")));
            let h = res.headers_mut();
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=600, stale-while-revalidate=60"),
            );
            h.insert(header::VARY, HeaderValue::from_static("accept"));
            if !tags.is_empty() {
                h.insert("surrogate-key", HeaderValue::from_str(&tags).unwrap());
            }
            Ok::<_, Infallible>(res)
        }
    })
}

fn get(path: &str, accept: &str) -> Request<()> {
    Request::get(path)
        .header(header::HOST, "shop.example")
        .header(header::ACCEPT, accept)
        .body(())
        .unwrap()
}

/// The `X-Cache` of one GET through `layer`.
async fn x_cache(layer: &ResponseCacheLayer, origin: &Origin, path: &str, accept: &str) -> String {
    let res = layer
        .layer(serve(origin.calls.clone()))
        .oneshot(get(path, accept))
        .await
        .unwrap();
    let x = res
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = res.into_body().collect().await.unwrap();
    x
}

/// One purge request: the status and the body.
async fn purge(
    svc: &PurgeService,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "shop.example");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let res = svc.clone().oneshot(req.body(()).unwrap()).await.unwrap();
    assert_eq!(
        res.headers().get(header::CACHE_CONTROL).unwrap(),
        "no-store"
    );
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

const AUTH: (&str, &str) = ("authorization", "Bearer operator-token-7f3a9c2e51");

fn service(layer: &ResponseCacheLayer) -> PurgeService {
    PurgeService::new(layer.invalidator(), PurgeAuth::bearer(TOKEN).unwrap())
}

#[tokio::test]
async fn every_authorization_outcome() {
    let layer = ResponseCacheLayer::new();
    let origin = Origin::default();
    let svc = service(&layer);
    x_cache(&layer, &origin, "/a", "text/html").await;
    let url = "/admin/purge?url=/a";
    let (status, _) = purge(&svc, "POST", url, &[]).await;
    assert_eq!(status, 401);
    let (status, _) = purge(&svc, "POST", url, &[("authorization", "Basic b3A6cHc=")]).await;
    assert_eq!(status, 401);
    let wrong = ("authorization", "Bearer operator-token-7f3a9c2e52");
    let (status, _) = purge(&svc, "POST", url, &[wrong]).await;
    assert_eq!(status, 403);
    let (status, _) = purge(&svc, "GET", url, &[AUTH]).await;
    assert_eq!(status, 405);
    // Nothing was purged by the refused requests.
    assert_eq!(x_cache(&layer, &origin, "/a", "text/html").await, "HIT");
    let (status, body) = purge(&svc, "POST", url, &[AUTH]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"purged":1}"#));
    assert_eq!(x_cache(&layer, &origin, "/a", "text/html").await, "MISS");

    // A predicate of the user's own.
    let only_internal = PurgeService::new(
        layer.invalidator(),
        PurgeAuth::predicate(|head| head.headers.get("x-internal").is_some()),
    );
    let (status, _) = purge(&only_internal, "PURGE", url, &[]).await;
    assert_eq!(status, 403);
    let (status, body) = purge(&only_internal, "PURGE", url, &[("x-internal", "1")]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"purged":1}"#));
}

#[tokio::test]
async fn a_url_purge_removes_every_variant_and_only_that_url() {
    let layer = ResponseCacheLayer::new();
    let origin = Origin::default();
    let svc = service(&layer);
    for accept in ["text/html", "application/json"] {
        x_cache(&layer, &origin, "/products/7?page=2", accept).await;
    }
    x_cache(&layer, &origin, "/products/8", "text/html").await;
    assert_eq!(origin.calls(), 3);
    let (status, body) = purge(
        &svc,
        "POST",
        "/admin/purge?url=%2Fproducts%2F7%3Fpage%3D2",
        &[AUTH],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"purged":1}"#));
    for accept in ["text/html", "application/json"] {
        assert_eq!(
            x_cache(&layer, &origin, "/products/7?page=2", accept).await,
            "MISS"
        );
    }
    assert_eq!(
        x_cache(&layer, &origin, "/products/8", "text/html").await,
        "HIT"
    );
    // Nothing there any more: 0.
    let (_, body) = purge(&svc, "POST", "/admin/purge?url=/nothing", &[AUTH]).await;
    assert_eq!(body, r#"{"purged":0}"#);
    let (status, _) = purge(&svc, "POST", "/admin/purge", &[AUTH]).await;
    assert_eq!(status, 400, "neither a URL nor a tag");
}

#[tokio::test]
async fn tag_purges_match_hostile_tags_exactly_and_soft_purges_serve_stale() {
    let layer = ResponseCacheLayer::new();
    let origin = Origin::default();
    let svc = service(&layer);
    // Tags that look like patterns, key syntax or hash tags are plain strings.
    let paths = [
        ("/t1?tags=a*", "a*"),
        ("/t2?tags=ab", "ab"),
        ("/t3?tags={x}+shared", "{x}"),
        ("/t4?tags=x+shared", "x"),
        ("/t5?tags=..%2F:", "..%2F:"),
    ];
    for (path, _) in paths {
        assert_eq!(x_cache(&layer, &origin, path, "text/html").await, "MISS");
    }
    let (_, body) = purge(
        &svc,
        "POST",
        "/admin/purge",
        &[AUTH, ("surrogate-key", "a*")],
    )
    .await;
    assert_eq!(body, r#"{"purged":1}"#);
    assert_eq!(
        x_cache(&layer, &origin, "/t1?tags=a*", "text/html").await,
        "MISS"
    );
    assert_eq!(
        x_cache(&layer, &origin, "/t2?tags=ab", "text/html").await,
        "HIT"
    );
    let (_, body) = purge(
        &svc,
        "POST",
        "/admin/purge",
        &[AUTH, ("surrogate-key", "{x} ..%2F:")],
    )
    .await;
    assert_eq!(body, r#"{"purged":2}"#);
    assert_eq!(
        x_cache(&layer, &origin, "/t3?tags={x}+shared", "text/html").await,
        "MISS"
    );
    assert_eq!(
        x_cache(&layer, &origin, "/t4?tags=x+shared", "text/html").await,
        "HIT"
    );
    assert_eq!(
        x_cache(&layer, &origin, "/t5?tags=..%2F:", "text/html").await,
        "MISS"
    );

    // Soft: kept, stale, served while one request revalidates.
    let (_, body) = purge(
        &svc,
        "POST",
        "/admin/purge",
        &[AUTH, ("surrogate-key", "shared"), ("soft-purge", "1")],
    )
    .await;
    assert_eq!(body, r#"{"purged":2}"#);
    let calls = origin.calls();
    let res = layer
        .layer(serve(origin.calls.clone()))
        .oneshot(get("/t4?tags=x+shared", "text/html"))
        .await
        .unwrap();
    let x = res
        .headers()
        .get("x-cache")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(x, "STALE");
    assert_eq!(&body[..], format!("v{}", 4).as_bytes(), "the stale copy");
    // One background revalidation.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(origin.calls(), calls + 1);
}

#[tokio::test]
async fn the_proxy_form_purges_the_request_target() {
    let layer = ResponseCacheLayer::new();
    let origin = Origin::default();
    let svc = service(&layer).for_request_target();
    x_cache(&layer, &origin, "/downloads/a.iso", "*/*").await;
    let (status, _) = purge(&svc, "POST", "/downloads/a.iso", &[AUTH]).await;
    assert_eq!(status, 405, "only PURGE");
    let (status, body) = purge(&svc, "PURGE", "/downloads/a.iso", &[AUTH]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"purged":1}"#));
    assert_eq!(
        x_cache(&layer, &origin, "/downloads/a.iso", "*/*").await,
        "MISS"
    );
}

#[cfg(feature = "redis")]
mod fleet {
    use super::*;
    use turret_cache::TieredStorage;
    use turret_redis::{Redis, RedisConfig};
    use turret_testkit::{RedisCluster, RedisServer};

    async fn instance(url: &str) -> ResponseCacheLayer {
        let redis = Redis::connect(RedisConfig::from_url(url).unwrap())
            .await
            .unwrap();
        let storage = TieredStorage::new(redis);
        ResponseCacheLayer::with_storage(storage)
    }

    /// A purge on A reaches B's L1 and the shared L2: B's next request is a miss.
    async fn purge_on_a_is_seen_on_b(url: &str) {
        let (a, b) = (instance(url).await, instance(url).await);
        let origin = Origin::default();
        assert_eq!(
            x_cache(&a, &origin, "/p/1?tags=product:1", "text/html").await,
            "MISS"
        );
        assert_eq!(
            x_cache(&b, &origin, "/p/1?tags=product:1", "text/html").await,
            "HIT"
        );
        assert_eq!(
            x_cache(&b, &origin, "/p/2?tags=product:2", "text/html").await,
            "MISS"
        );
        assert_eq!(
            x_cache(&a, &origin, "/p/2?tags=product:2", "text/html").await,
            "HIT"
        );
        let svc = service(&a);
        let (_, body) = purge(
            &svc,
            "POST",
            "/admin/purge?url=/p/1?tags=product:1",
            &[AUTH],
        )
        .await;
        assert_eq!(body, r#"{"purged":1}"#);
        let (_, body) = purge(
            &svc,
            "POST",
            "/admin/purge",
            &[AUTH, ("surrogate-key", "product:2")],
        )
        .await;
        assert_eq!(body, r#"{"purged":1}"#);
        // The broadcast reaches B's listener asynchronously.
        let mut seen = String::new();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen = x_cache(&b, &origin, "/p/2?tags=product:2", "text/html").await;
            if seen == "MISS" {
                break;
            }
        }
        assert_eq!(seen, "MISS", "B's L1 kept a purged tag");
        assert_eq!(
            x_cache(&b, &origin, "/p/1?tags=product:1", "text/html").await,
            "MISS"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_on_one_instance_reaches_the_other_on_redis() {
        let server = RedisServer::start();
        purge_on_a_is_seen_on_b(&server.url()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_on_one_instance_reaches_the_other_on_a_cluster() {
        let cluster = RedisCluster::start(3);
        purge_on_a_is_seen_on_b(&cluster.url()).await;
    }
}
