//! The rate limiter (`turret_ratelimit`) and conditional requests (`turret_conditional`),
//! configured for the shop. (The response cache is in `cache.rs`, stampede protection in
//! `data.rs`.)

use axum::{
    Router,
    body::Bytes,
    http::{HeaderValue, Method, Response, StatusCode, header},
};
use serde_json::json;
use turret_conditional::{BoxError, ConditionalLayer, ResourceState, Target, Validators};
use turret_ratelimit::{ClientIp, Limited, Policy, RateLimitLayer, RedisBackend};
use turret_redis::Redis;

use crate::{
    config::Config,
    db::Db,
    model::{category_etag, product_etag},
};

/// Limits every route but `/health` and `/metrics` to `--rate-limit` (every quota of the
/// list) per client IP (the
/// peer address, or the address behind `--trusted-proxies`), on Redis when there is one
/// (one quota for the fleet; each process limits on its own while Redis is down).
pub(crate) fn rate_limit<S>(
    router: Router<S>,
    config: &Config,
    redis: Option<&Redis>,
) -> Result<Router<S>, String>
where
    S: Clone + Send + Sync + 'static,
{
    let plan = config
        .rate_limit
        .with_algorithm(config.rate_limit_algorithm.into());
    let layer = RateLimitLayer::policies([Policy::with_plan("default", plan)])
        .key(client_ip(config)?)
        .exempt("/health")
        .exempt("/metrics")
        .on_limited(too_many_requests);
    Ok(match redis {
        Some(redis) => router.layer(
            layer
                .backend(RedisBackend::new(redis.clone()))
                .fallback_to_memory(),
        ),
        None => router.layer(layer),
    })
}

/// The client's address: the peer, or behind `--trusted-proxies` the rightmost untrusted
/// address of `--forwarded-header`; IPv6 grouped by `--ipv6-prefix`.
fn client_ip(config: &Config) -> Result<ClientIp, String> {
    ClientIp::trusting(&config.trusted_proxies)?
        .header(config.forwarded_header.into())
        .ipv6_prefix(config.ipv6_prefix)
        .map_err(|e| e.to_string())
}

/// The 429 body; the layer adds `Retry-After`, `RateLimit`, `RateLimit-Policy` and
/// `X-RateLimit-*`.
fn too_many_requests(limited: &Limited<'_>) -> Response<Bytes> {
    let retry_after = limited
        .decision
        .retry_after
        .map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    let quota = limited.limit.quota();
    let window = quota.period().as_secs().max(1);
    let body = json!({
        "error": "rate_limited",
        "policy": limited.limit.name(),
        "message": format!(
            "at most {} requests per client in {window} s (limit {:?}); retry in {retry_after} s",
            quota.count(),
            limited.limit.name(),
        ),
        "retry_after": retry_after,
    });
    let mut res = Response::new(Bytes::from(body.to_string()));
    *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// ETags and 304 on reads; `If-Match` on writes decided against the database's row
/// versions before the handler runs (412 when stale).
///
/// Product and category responses carry an `ETag` made from their row version
/// (`"p7v3"`), which the layer leaves alone; lists get one hashed from the body. A HEAD is
/// answered from the GET (the cache inside serves it from storage), with the same fields.
pub(crate) fn conditional<S>(router: Router<S>, db: Db) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let layer = ConditionalLayer::new()
        .validator_source(move |target: Target| {
            let db = db.clone();
            async move { resource_state(&db, &target).await }
        })
        .on_rejection(json_rejection);
    router.layer(layer)
}

/// What a write's preconditions are evaluated against (RFC 9110 §13.1, §13.2.1):
///
/// - a product or category that exists: its row version as the ETag;
/// - the collection `/products`, for a POST: it always exists, with no validator
///   (`If-Match: *` is true, `If-None-Match: *` false);
/// - anything else (no such row, an id that is not one, another method on a collection, a
///   route that is not a resource): `Unknown`. None of the shop's writes creates at a given
///   id, so its plain answer would be 404, 400 or 405, and the preconditions are ignored: the
///   handler answers.
async fn resource_state(db: &Db, target: &Target) -> Result<ResourceState, BoxError> {
    let resource = target.resource();
    let path = resource.split('?').next().unwrap_or(resource);
    let etag = if let Some(id) = id_after(path, "/products/") {
        db.product_version(id)
            .await?
            .map(|version| product_etag(id, version))
    } else if let Some(id) = id_after(path, "/categories/") {
        db.category_version(id)
            .await?
            .map(|version| category_etag(id, version))
    } else if path == "/products" && target.method() == Method::POST {
        return Ok(ResourceState::Current(Validators::new()));
    } else {
        None
    };
    Ok(match etag {
        Some(etag) => {
            ResourceState::Current(Validators::new().with_etag(HeaderValue::from_str(&etag)?))
        }
        None => ResourceState::Unknown,
    })
}

fn id_after(path: &str, prefix: &str) -> Option<i64> {
    path.strip_prefix(prefix)?
        .parse()
        .ok()
        .filter(|id: &i64| *id > 0)
}

/// The conditional layer's own 412 (and 428, which the shop does not require) as the
/// shop's JSON errors, like the handlers' own.
fn json_rejection(status: StatusCode) -> Response<Bytes> {
    let (code, message) = if status == StatusCode::PRECONDITION_REQUIRED {
        (
            "precondition_required",
            "send If-Match with the ETag of the version you change",
        )
    } else {
        (
            "precondition_failed",
            "If-Match does not match the current version: GET it again, then retry",
        )
    };
    let body = json!({ "error": code, "message": message });
    let mut res = Response::new(Bytes::from(body.to_string()));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
