//! The server: the catalogue service, written the way `tonic-build` would generate it (a
//! tower `Service` routing on the method path, each unary handler run through
//! `tonic::server::Grpc` with prost's codec), and the layers in front of it:
//!
//! ```text
//! call → x-api-key check → rate limit per x-api-key → CatalogService
//!        (interceptor)     (turret-ratelimit)          ListProducts → StampedeCache → slow read
//! ```
//!
//! - **API key**: a tonic interceptor answers `UNAUTHENTICATED` when `x-api-key` is missing,
//!   empty or longer than 128 bytes, so that the rate limiter always has a key. (Without it
//!   the limiter would answer a key-less call with HTTP 500, which is no gRPC status.)
//! - **Rate limit**: `turret_ratelimit::RateLimitLayer` keyed by `HeaderKey::new("x-api-key")`
//!   (gRPC metadata is HTTP/2 header fields), with two plans: `free` (`--rate-limit`) for
//!   every key and `pro` (`--pro-rate-limit`) for the keys of `--pro-keys` (per-key
//!   overrides of a `Plans` handle). A refused call gets a trailers-only response:
//!   HTTP 200, `grpc-status: 8` (`RESOURCE_EXHAUSTED`), with `retry-after` and the
//!   `ratelimit` fields as metadata. Admitted calls carry the same fields. `Stats` is exempt.
//!   With `--redis-url` the quota is one per key for every server on that Redis.
//! - **The slow read**: `ListProducts` goes through `turret_stampede::StampedeCache` keyed by
//!   the decoded request (category, page size): identical concurrent calls share one
//!   computation, and its result is reused for `--list-ttl`. With `--redis-url` the lease and
//!   the value are on Redis: one computation for the whole fleet.
//!
//! Why not `turret_stampede::CoalesceLayer`: it coalesces identical in-flight `GET`/`HEAD`
//! requests, and every gRPC call is a `POST` whose request message is in the body, outside
//! the layer's key (method, URI, chosen headers), so it passes gRPC calls through untouched.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prost::Message;
use tokio::net::TcpListener;
use tonic::{
    Status,
    body::Body,
    server::{Grpc, NamedService, UnaryService},
    service::InterceptorLayer,
    transport::{Server, server::TcpIncoming},
};
use tonic_prost::ProstCodec;
use turret_ratelimit::{HeaderKey, Plans, Policy, RateLimitLayer};
use turret_redis::{Redis, RedisConfig};
use turret_stampede::{CacheKey, StampedeCache};

use crate::{
    config::ServerConfig,
    proto::{
        GET_PRODUCT, GetProductRequest, LIST_PRODUCTS, ListProductsRequest, ListProductsResponse,
        Product, SERVICE, STATS, StatsRequest, StatsResponse,
    },
};

/// The metadata key that identifies a client: the rate limiter's key.
pub const API_KEY: &str = "x-api-key";

/// The longest API key accepted.
pub const MAX_API_KEY_LEN: usize = 128;

/// The default and the largest `page_size` of `ListProducts`.
const DEFAULT_PAGE_SIZE: u32 = 20;
const MAX_PAGE_SIZE: u32 = 100;

/// Categories of the generated catalogue; product `id` is in `CATEGORIES[(id - 1) % 6]`.
const CATEGORIES: [&str; 6] = ["books", "games", "garden", "kitchen", "music", "toys"];
const ADJECTIVES: [&str; 10] = [
    "Sleek", "Rustic", "Compact", "Deluxe", "Classic", "Bright", "Quiet", "Sturdy", "Tiny", "Grand",
];
/// How many products the catalogue has.
pub const PRODUCTS: u64 = 60;

/// Serves the catalogue on `listener` until `shutdown` resolves, with the layers of
/// `config` (memory, or Redis with `--redis-url`).
pub async fn serve(
    config: &ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    // One lazy Redis handle for the limiter and the stampede cache: the server starts while
    // Redis is down, and each layer degrades as documented until it is back.
    let redis = match &config.redis_url {
        Some(url) => {
            let redis_config = RedisConfig::from_url(url)
                .map_err(|e| format!("--redis-url: {e}"))?
                .prefix("grpc:")
                .command_timeout(Duration::from_millis(200));
            Some(Redis::connect_lazy(redis_config).map_err(|e| format!("redis: {e}"))?)
        }
        None => None,
    };
    let service = CatalogService::new(config.slow_read, config.list_ttl, redis.clone());
    // One quota per key for the fleet when Redis is configured (the same layer type either
    // way); while Redis is down each server limits on its own.
    let plans = Plans::new(config.rate_limit.clone()).with(config.pro_rate_limit.clone());
    for key in &config.pro_keys {
        plans.override_key(key, config.pro_rate_limit.clone());
    }
    let limit = RateLimitLayer::policies([Policy::with_plans("api", plans)])
        .key(HeaderKey::new(API_KEY))
        .exempt(STATS)
        .backend_from(redis)
        .fallback_to_memory();
    let served = Server::builder()
        .layer(InterceptorLayer::new(require_api_key))
        .layer(limit)
        .serve_with_incoming_shutdown(service, TcpIncoming::from(listener), shutdown)
        .await;
    served.map_err(|e| format!("server: {e}"))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// The interceptor in front of the rate limiter: every call must name its client.
fn require_api_key(req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    match req.metadata().get(API_KEY) {
        None => Err(Status::unauthenticated(
            "send your API key in the x-api-key metadata",
        )),
        Some(key) if key.is_empty() || key.len() > MAX_API_KEY_LEN => Err(Status::unauthenticated(
            "x-api-key must be 1 to 128 bytes long",
        )),
        Some(_) => Ok(req),
    }
}

/// The `catalog.v1.Catalog` service as a tower `Service` of HTTP/2 requests, ready for
/// `tonic::transport::Server` and any tower layer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CatalogService {
    catalog: Arc<Catalog>,
}

#[derive(Debug)]
struct Catalog {
    products: Vec<Product>,
    slow_read: Duration,
    list_ttl: Duration,
    /// The stampede cache of computed lists: in memory, or on Redis for a fleet.
    lists: StampedeCache,
    list_computations: AtomicU64,
    list_calls: AtomicU64,
    get_calls: AtomicU64,
}

impl CatalogService {
    /// The catalogue: `ListProducts` takes `slow_read` and its lists are reused for
    /// `list_ttl`; with `redis`, shared by every server on it.
    pub fn new(slow_read: Duration, list_ttl: Duration, redis: Option<Redis>) -> Self {
        let lists = match redis {
            None => StampedeCache::new(),
            Some(redis) => StampedeCache::redis(redis),
        };
        Self {
            catalog: Arc::new(Catalog {
                products: (1..=PRODUCTS).map(product).collect(),
                slow_read,
                list_ttl,
                lists,
                list_computations: AtomicU64::new(0),
                list_calls: AtomicU64::new(0),
                get_calls: AtomicU64::new(0),
            }),
        }
    }

    /// The counters `Stats` answers with.
    pub fn stats(&self) -> StatsResponse {
        self.catalog.stats()
    }
}

/// The generated catalogue's product `id`.
fn product(id: u64) -> Product {
    let category = CATEGORIES[((id - 1) % CATEGORIES.len() as u64) as usize];
    let adjective = ADJECTIVES[((id - 1) / CATEGORIES.len() as u64) as usize % ADJECTIVES.len()];
    let noun = match category {
        "books" => "Novel",
        "games" => "Board Game",
        "garden" => "Planter",
        "kitchen" => "Kettle",
        "music" => "Ukulele",
        _ => "Robot",
    };
    Product {
        id,
        name: format!("{adjective} {noun}"),
        category: category.to_owned(),
        price_cents: 499 + (id * 137) % 9_500,
    }
}

impl Catalog {
    fn get_product(&self, req: GetProductRequest) -> Result<Product, Status> {
        self.get_calls.fetch_add(1, Ordering::Relaxed);
        if req.id == 0 {
            return Err(Status::invalid_argument("id must be 1 or more"));
        }
        usize::try_from(req.id - 1)
            .ok()
            .and_then(|i| self.products.get(i))
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no product {}", req.id)))
    }

    async fn list_products(
        self: Arc<Self>,
        req: ListProductsRequest,
    ) -> Result<ListProductsResponse, Status> {
        self.list_calls.fetch_add(1, Ordering::Relaxed);
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n <= MAX_PAGE_SIZE => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "page_size must be 1 to {MAX_PAGE_SIZE} (or 0 for {DEFAULT_PAGE_SIZE}), not {n}"
                )));
            }
        };
        if !req.category.is_empty() && !CATEGORIES.contains(&req.category.as_str()) {
            return Err(Status::invalid_argument(format!(
                "unknown category {:?}; one of {CATEGORIES:?}",
                req.category
            )));
        }
        let key = CacheKey::new("products")
            .part(&req.category)
            .part(page_size.to_string());
        let catalog = self.clone();
        let compute = move || async move { Ok(catalog.slow_read(&req.category, page_size).await) };
        let result = self
            .lists
            .get_or_compute(&key, self.list_ttl, compute)
            .await;
        result.map_err(|e: turret_stampede::Error<Infallible>| {
            tracing::error!(error = %e, "ListProducts failed");
            Status::unavailable(format!("the product list could not be computed: {e}"))
        })
    }

    /// The expensive part: a query that takes `slow_read`.
    async fn slow_read(&self, category: &str, page_size: u32) -> ListProductsResponse {
        let n = self.list_computations.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            category,
            page_size,
            computations = n,
            "ListProducts: running the slow read"
        );
        tokio::time::sleep(self.slow_read).await;
        ListProductsResponse {
            products: self
                .products
                .iter()
                .filter(|p| category.is_empty() || p.category == category)
                .take(page_size as usize)
                .cloned()
                .collect(),
            computed_at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    fn stats(&self) -> StatsResponse {
        StatsResponse {
            list_computations: self.list_computations.load(Ordering::Relaxed),
            list_calls: self.list_calls.load(Ordering::Relaxed),
            get_calls: self.get_calls.load(Ordering::Relaxed),
        }
    }
}

/// The error bound of request bodies.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed response future, as generated services use.
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send + 'static>>;

impl<B> tower_service::Service<http::Request<B>> for CatalogService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let catalog = self.catalog.clone();
        match req.uri().path() {
            GET_PRODUCT => Box::pin(async move {
                Ok(unary(req, move |r: tonic::Request<GetProductRequest>| {
                    let result = catalog.get_product(r.into_inner());
                    async move { result.map(tonic::Response::new) }
                })
                .await)
            }),
            LIST_PRODUCTS => Box::pin(async move {
                Ok(unary(req, move |r: tonic::Request<ListProductsRequest>| {
                    let catalog = catalog.clone();
                    async move {
                        catalog
                            .list_products(r.into_inner())
                            .await
                            .map(tonic::Response::new)
                    }
                })
                .await)
            }),
            STATS => Box::pin(async move {
                Ok(unary(req, move |_: tonic::Request<StatsRequest>| {
                    let stats = catalog.stats();
                    async move { Ok(tonic::Response::new(stats)) }
                })
                .await)
            }),
            path => {
                let status = Status::unimplemented(format!("no method {path}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

impl NamedService for CatalogService {
    const NAME: &'static str = SERVICE;
}

/// Decodes one request message, runs `handler`, encodes its answer (or status): what the
/// generated code does per unary method.
async fn unary<B, Req, Res, F, Fut>(req: http::Request<B>, handler: F) -> http::Response<Body>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send,
    Req: Message + Default + Send + 'static,
    Res: Message + Send + 'static,
    F: FnMut(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Res>, Status>>,
{
    let mut grpc = Grpc::new(ProstCodec::<Res, Req>::default());
    grpc.unary(Handler(handler), req).await
}

/// A closure as a `UnaryService`.
struct Handler<F>(F);

impl<Req, Res, F, Fut> UnaryService<Req> for Handler<F>
where
    F: FnMut(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Res>, Status>>,
{
    type Response = Res;
    type Future = Fut;

    fn call(&mut self, request: tonic::Request<Req>) -> Fut {
        (self.0)(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_is_generated_in_order() {
        let service = CatalogService::new(Duration::from_millis(1), Duration::from_secs(1), None);
        let catalog = &service.catalog;
        assert_eq!(catalog.products.len() as u64, PRODUCTS);
        assert!(
            catalog
                .products
                .iter()
                .enumerate()
                .all(|(i, p)| p.id == i as u64 + 1)
        );
        assert_eq!(catalog.products[0].category, "books");
        assert_eq!(catalog.products[6].category, "books");
    }

    #[test]
    fn get_product_answers_statuses_for_bad_ids() {
        let service = CatalogService::new(Duration::from_millis(1), Duration::from_secs(1), None);
        let catalog = &service.catalog;
        assert_eq!(
            catalog.get_product(GetProductRequest { id: 3 }).unwrap().id,
            3
        );
        let zero = catalog
            .get_product(GetProductRequest { id: 0 })
            .unwrap_err();
        assert_eq!(zero.code(), tonic::Code::InvalidArgument);
        let missing = catalog
            .get_product(GetProductRequest { id: PRODUCTS + 1 })
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
    }

    #[test]
    fn calls_without_a_usable_api_key_are_unauthenticated() {
        let no_key = require_api_key(tonic::Request::new(())).unwrap_err();
        assert_eq!(no_key.code(), tonic::Code::Unauthenticated);
        let mut long = tonic::Request::new(());
        let value = "k".repeat(MAX_API_KEY_LEN + 1);
        long.metadata_mut()
            .insert(API_KEY, value.parse().expect("ascii"));
        assert!(require_api_key(long).is_err());
        let mut ok = tonic::Request::new(());
        ok.metadata_mut()
            .insert(API_KEY, "alice".parse().expect("ascii"));
        assert!(require_api_key(ok).is_ok());
    }
}
