//! The routes, their handlers, and the order in which the layers wrap them.
//!
//! ```text
//! request → rate limit → conditional (ETag/304, If-Match → 412) → response cache → handler
//!                                                                 (products, categories)
//!                                                 handler → data cache (product rows,
//!                                                           top-selling, dashboard)
//!                                                 handler → write-behind (views)
//! ```
//!
//! `/health` and `/metrics` are outside the conditional layer and exempt from the rate
//! limit; `/admin/purge` (with `--purge-token`) is outside the cache and conditional layers.

use axum::{
    Json, Router,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use turret_cache::PurgeAuth;
use turret_redis::Redis;

use crate::{
    cache::{
        CATEGORY_LISTS, PRODUCT_LISTS, SURROGATE_KEY, ShopCache, category_tag, product_tag,
        surrogate_key,
    },
    config::Config,
    data::Data,
    db::Db,
    errors::{ApiError, method_not_allowed, parse_id, route_not_found},
    layers,
    model::{
        CategoryInput, ListParams, ProductInput, TopParams, category_etag, check_limit, parse_etag,
        product_etag,
    },
    views::Views,
};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    /// The database.
    pub(crate) db: Db,
    /// The response cache, for invalidation after writes.
    pub(crate) cache: ShopCache,
    /// The data cache: product rows and the aggregations.
    pub(crate) data: Data,
    /// View counts, through write-behind.
    pub(crate) views: Views,
    /// Renders `/metrics`.
    pub(crate) metrics: PrometheusHandle,
}

/// The whole application, every layer switched on or off per `config`.
pub(crate) fn app(
    state: AppState,
    config: &Config,
    redis: Option<&Redis>,
) -> Result<Router, String> {
    let mut catalogue = Router::new()
        .route("/products", get(list_products).post(create_product))
        .route(
            "/products/{id}",
            get(get_product).put(update_product).delete(delete_product),
        )
        .route("/categories", get(list_categories))
        .route("/categories/{id}", get(get_category).put(update_category));
    if let Some(cache) = state.cache.layer() {
        catalogue = catalogue.layer(cache);
    }
    let mut app = catalogue
        .route("/products/top-selling", get(top_selling))
        .route("/stats/dashboard", get(dashboard))
        .route("/products/{id}/views", post(add_view))
        .route("/products/{id}/stats", get(product_stats))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(route_not_found);
    if !config.no_conditional {
        app = layers::conditional(app, state.db.clone());
    }
    app = app
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    // Outside the cache and conditional layers (a purge is never cached, and names no
    // resource of its own), inside the rate limit (it slows down token guessing).
    if let Some(token) = &config.purge_token {
        let auth = PurgeAuth::bearer(token).map_err(|e| format!("--purge-token: {e}"))?;
        if let Some(purge) = state.cache.purge_service(auth) {
            app = app.route_service("/admin/purge", purge);
        }
    }
    if !config.no_rate_limit {
        app = layers::rate_limit(app, config, redis)?;
    }
    Ok(app.with_state(state))
}

/// A JSON response with `Surrogate-Key` tags for the cache, and an `ETag` if given.
///
/// The tags are for the cache only (it reads them and strips them): without the cache
/// (`--no-cache`) the field is not added at all, so it never reaches a client.
fn tagged(
    cache: &ShopCache,
    body: impl IntoResponse,
    tags: &[&str],
    etag: Option<String>,
) -> Response {
    let mut res = body.into_response();
    if !tags.is_empty() && cache.is_on() {
        res.headers_mut().insert(SURROGATE_KEY, surrogate_key(tags));
    }
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        res.headers_mut().insert(header::ETAG, etag);
    }
    res
}

/// The version an `If-Match` field allows for a resource whose entity-tags `etag_of`
/// makes: the handler's own check, atomic with the write (`UPDATE … WHERE version = v`).
/// The conditional layer decides before the handler runs, but two writers can both pass it.
///
/// `Ok(None)`: no `If-Match`, or `*`. `Ok(Some(v))`: write only at version `v`. `Err(412)`:
/// no listed tag can be current. `Err(404)`: `what` does not exist (RFC 9110 §13.2.1: the
/// plain answer would be 404, so the precondition is ignored). One tag of the resource's own
/// form needs no query; anything else is compared with the current version.
async fn allowed_version<F, Fut>(
    what: &str,
    headers: &HeaderMap,
    etag_of: impl Fn(i64) -> String,
    parse: impl Fn(&str) -> Option<i64>,
    current: F,
) -> Result<Option<i64>, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<i64>, sqlx::Error>>,
{
    let values: Vec<&str> = headers
        .get_all(header::IF_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() || values.contains(&"*") {
        return Ok(None);
    }
    let stale = || {
        ApiError::PreconditionFailed(
            "If-Match does not match the current version: GET it again, then retry".into(),
        )
    };
    if let [one] = values.as_slice()
        && let Some(version) = parse(one)
    {
        return Ok(Some(version));
    }
    let Some(version) = current().await? else {
        return Err(ApiError::not_found(what));
    };
    if values.contains(&etag_of(version).as_str()) {
        Ok(Some(version))
    } else {
        Err(stale())
    }
}

/// The handler's own `If-None-Match` check for a write (RFC 9110 §13.1.2): `*` fails when
/// the resource exists, a list fails when it holds the current entity-tag (weak comparison).
/// A missing resource passes: the write's plain answer, 404, stands (§13.2.1). Not atomic
/// with the write; the conditional layer checks the same before the handler runs.
async fn refuse_none_match<Fut>(
    headers: &HeaderMap,
    etag_of: impl Fn(i64) -> String,
    current: impl FnOnce() -> Fut,
) -> Result<(), ApiError>
where
    Fut: Future<Output = Result<Option<i64>, sqlx::Error>>,
{
    let values: Vec<&str> = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().trim_start_matches("W/"))
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Ok(());
    }
    let Some(version) = current().await? else {
        return Ok(());
    };
    if values.contains(&"*") || values.contains(&etag_of(version).as_str()) {
        return Err(ApiError::PreconditionFailed(
            "If-None-Match matches the current version: the write is refused".into(),
        ));
    }
    Ok(())
}

/// Why a write at `expected` version touched no row: the row is gone (404: RFC 9110 §13.2.1,
/// the precondition is ignored when the plain answer is not 2xx), or it is at another
/// version (412).
async fn not_written(
    expected: Option<i64>,
    what: &str,
    id: i64,
    current: impl Future<Output = Result<Option<i64>, sqlx::Error>>,
) -> ApiError {
    let exists = match (expected, current.await) {
        (None, _) => false,
        (Some(_), Ok(version)) => version.is_some(),
        (Some(_), Err(e)) => return e.into(),
    };
    if exists {
        ApiError::PreconditionFailed(format!(
            "the {what} changed meanwhile: GET it again, then retry"
        ))
    } else {
        ApiError::not_found(format!("{what} {id}"))
    }
}

/// `GET /products?skip=&limit=&category=`: a page of products, ordered by id.
async fn list_products(
    State(s): State<AppState>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query?;
    let products = s.db.list_products(params.validate()?).await?;
    Ok(tagged(&s.cache, Json(products), &[PRODUCT_LISTS], None))
}

/// `GET /products/{id}`.
async fn get_product(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id?.0, "product")?;
    let product = s
        .data
        .get_product(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("product {id}")))?;
    let etag = product.etag();
    Ok(tagged(
        &s.cache,
        Json(product),
        &[&product_tag(id)],
        Some(etag),
    ))
}

/// `POST /products`: 201 with the product, its `Location` and `ETag`.
async fn create_product(
    State(s): State<AppState>,
    body: Result<Json<ProductInput>, JsonRejection>,
) -> Result<Response, ApiError> {
    let new = body?.0.validate()?;
    if !s.db.category_exists(new.category_id).await? {
        return Err(ApiError::Unprocessable(format!(
            "category {} does not exist",
            new.category_id
        )));
    }
    let product = s.db.create_product(&new).await?;
    s.data.product_written(&product).await;
    s.cache.invalidate(&[PRODUCT_LISTS]).await;
    s.data.dashboard_changed().await;
    let mut res = (StatusCode::CREATED, Json(&product)).into_response();
    let headers = res.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/products/{}", product.id)) {
        headers.insert(header::LOCATION, location);
    }
    if let Ok(etag) = HeaderValue::from_str(&product.etag()) {
        headers.insert(header::ETAG, etag);
    }
    Ok(res)
}

/// `PUT /products/{id}`: replaces the editable fields; `If-Match` guards against lost
/// updates.
async fn update_product(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<ProductInput>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id?.0, "product")?;
    let new = body?.0.validate()?;
    let expected = allowed_version(
        &format!("product {id}"),
        &headers,
        |v| product_etag(id, v),
        |tag| parse_etag(tag, 'p', id),
        || s.db.product_version(id),
    )
    .await?;
    refuse_none_match(
        &headers,
        |v| product_etag(id, v),
        || s.db.product_version(id),
    )
    .await?;
    if !s.db.category_exists(new.category_id).await? {
        return Err(ApiError::Unprocessable(format!(
            "category {} does not exist",
            new.category_id
        )));
    }
    let Some(product) = s.db.update_product(id, &new, expected).await? else {
        return Err(not_written(expected, "product", id, s.db.product_version(id)).await);
    };
    s.data.product_written(&product).await;
    s.cache.invalidate(&[&product_tag(id), PRODUCT_LISTS]).await;
    let etag = product.etag();
    Ok(tagged(&s.cache, Json(product), &[], Some(etag)))
}

/// `DELETE /products/{id}`: 204.
async fn delete_product(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id?.0, "product")?;
    let expected = allowed_version(
        &format!("product {id}"),
        &headers,
        |v| product_etag(id, v),
        |tag| parse_etag(tag, 'p', id),
        || s.db.product_version(id),
    )
    .await?;
    refuse_none_match(
        &headers,
        |v| product_etag(id, v),
        || s.db.product_version(id),
    )
    .await?;
    if !s.db.delete_product(id, expected).await? {
        return Err(not_written(expected, "product", id, s.db.product_version(id)).await);
    }
    s.data.product_deleted(id).await;
    s.cache.invalidate(&[&product_tag(id), PRODUCT_LISTS]).await;
    s.data.dashboard_changed().await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /categories`: every category, ordered by id.
async fn list_categories(State(s): State<AppState>) -> Result<Response, ApiError> {
    let categories = s.db.list_categories().await?;
    Ok(tagged(&s.cache, Json(categories), &[CATEGORY_LISTS], None))
}

/// `GET /categories/{id}`.
async fn get_category(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id?.0, "category")?;
    let category =
        s.db.get_category(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("category {id}")))?;
    let etag = category_etag(id, category.version);
    Ok(tagged(
        &s.cache,
        Json(category),
        &[&category_tag(id)],
        Some(etag),
    ))
}

/// `PUT /categories/{id}`: replaces name and description.
async fn update_category(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<CategoryInput>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id?.0, "category")?;
    let input = body?.0.validate()?;
    let expected = allowed_version(
        &format!("category {id}"),
        &headers,
        |v| category_etag(id, v),
        |tag| parse_etag(tag, 'c', id),
        || s.db.category_version(id),
    )
    .await?;
    refuse_none_match(
        &headers,
        |v| category_etag(id, v),
        || s.db.category_version(id),
    )
    .await?;
    let Some(category) =
        s.db.update_category(id, &input.name, &input.description, expected)
            .await?
    else {
        return Err(not_written(expected, "category", id, s.db.category_version(id)).await);
    };
    s.cache
        .invalidate(&[&category_tag(id), CATEGORY_LISTS])
        .await;
    let etag = category_etag(id, category.version);
    Ok(tagged(&s.cache, Json(category), &[], Some(etag)))
}

/// `GET /products/top-selling?limit=`: units and revenue per product over every order
/// line, best first. One aggregation however many requests arrive at once.
async fn top_selling(
    State(s): State<AppState>,
    query: Result<Query<TopParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query?;
    let limit = check_limit(params.limit, 10)?;
    let rows = s.data.get_top_selling(limit).await?;
    Ok(Json(rows).into_response())
}

/// `GET /stats/dashboard`: catalogue and sales totals.
async fn dashboard(State(s): State<AppState>) -> Result<Response, ApiError> {
    let stats = s.data.get_dashboard().await?;
    Ok(Json(stats).into_response())
}

/// `POST /products/{id}/views`: counts one view through write-behind; `204` once it is in
/// the queue (see `views.rs`).
async fn add_view(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id?.0, "product")?;
    if s.data.get_product(id).await?.is_none() {
        return Err(ApiError::not_found(format!("product {id}")));
    }
    s.views.add(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /products/{id}/stats`: `{"views": N}`, the views flushed to the database (not those
/// still in the queue).
async fn product_stats(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id?.0, "product")?;
    if s.data.get_product(id).await?.is_none() {
        return Err(ApiError::not_found(format!("product {id}")));
    }
    let views = s.db.product_views(id).await?;
    let mut res = Json(json!({ "views": views })).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// `GET /health`: the database is ready (the listener opens after start-up).
async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /metrics`: every metric in the Prometheus text format.
async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        s.metrics.render(),
    )
        .into_response()
}
