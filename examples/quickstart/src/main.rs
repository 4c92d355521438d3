//! The quickstart: a product service over a slow database with every turret layer, in memory
//! or, when `REDIS_URL` is set, on Redis for a fleet. The README's first code.

use std::{env, net::SocketAddr, time::Duration};

use axum::{Json, Router, extract::Path, extract::State, http::StatusCode, routing::get};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use turret::cache::{Policy, ResponseCacheLayer};
use turret::{cached, conditional::ConditionalLayer, conditional::ValidatorStore};
use turret::{ratelimit::ClientIp, ratelimit::Quota, ratelimit::RateLimitLayer};
use turret::{redis::Redis, redis::RedisConfig, stampede::StampedeCache};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS products (id INTEGER PRIMARY KEY, name, price);
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
    INSERT OR IGNORE INTO products SELECT i, 'Product ' || i, i * 1.5 FROM n";

#[derive(Serialize, Deserialize)]
struct Product {
    #[serde(default)]
    id: i64,
    name: String,
    price: f64,
}

#[derive(Serialize, Deserialize, Clone)]
struct Report {
    products: i64,
    total_value: f64,
}

type Db = State<SqlitePool>;
type Reply<T> = Result<Json<T>, StatusCode>;

fn internal(e: sqlx::Error) -> StatusCode {
    eprintln!("database error: {e}");
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn get_product(State(db): Db, Path(id): Path<i64>) -> Reply<Product> {
    tokio::time::sleep(Duration::from_millis(20)).await; // the slow database
    let sql = "SELECT name, price FROM products WHERE id = ?";
    let row: Option<(String, f64)> =
        sqlx::query_as(sql).bind(id).fetch_optional(&db).await.map_err(internal)?;
    let (name, price) = row.ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(Product { id, name, price }))
}

async fn put_product(State(db): Db, Path(id): Path<i64>, Json(p): Json<Product>) -> Reply<Product> {
    let sql = "UPDATE products SET name = ?, price = ? WHERE id = ?";
    sqlx::query(sql).bind(&p.name).bind(p.price).bind(id).execute(&db).await.map_err(internal)?;
    get_product(State(db), Path(id)).await // answer what a GET now returns: it carries its ETag
}

#[cached(ttl = "10m", key = "report", skip(db))] // computed once per 10 minutes per fleet
async fn compute_report(db: &SqlitePool) -> Result<Report, sqlx::Error> {
    eprintln!("computing the report");
    tokio::time::sleep(Duration::from_secs(2)).await; // the expensive part
    let sql = "SELECT COUNT(*), SUM(price) FROM products";
    let (products, total_value) = sqlx::query_as(sql).fetch_one(db).await?;
    Ok(Report { products, total_value })
}

async fn report(State(db): Db) -> Reply<Report> {
    Ok(Json(compute_report(&db).await.map_err(internal)?))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = env::temp_dir().join("quickstart.db");
    let url = env::var("DATABASE_URL").unwrap_or(format!("sqlite://{}?mode=rwc", file.display()));
    let db = SqlitePool::connect(&url).await?;
    sqlx::raw_sql(SCHEMA).execute(&db).await?;

    let redis = match env::var("REDIS_URL") {
        Ok(url) => Some(Redis::connect(RedisConfig::from_url(&url)?).await?),
        Err(_) => None, // memory: one instance
    };
    let data = redis.clone().map_or_else(StampedeCache::new, StampedeCache::redis);
    StampedeCache::set_default(data).ok(); // where #[cached] keeps values
    let validators = redis.clone().map_or_else(ValidatorStore::memory, ValidatorStore::redis);
    let products = Policy::new("products").ttl(Duration::from_secs(300));
    let client = ClientIp::trusting(["10.0.0.0/8"])?; // the address before our proxies
    let app = Router::new()
        .route("/products/{id}", get(get_product).put(put_product))
        .route("/report", get(report))
        .with_state(db)
        // Inside out: the response cache (a PUT invalidates it), ETags (304, If-Match → 412),
        // and outermost the rate limiter, so that cache hits and 304s count too.
        .layer(ResponseCacheLayer::new().backend_from(redis.clone()).route("/products/*", products))
        .layer(ConditionalLayer::new().validator_store(validators))
        .layer(RateLimitLayer::new(Quota::per_minute(100)).key(client).backend_from(redis));

    let listen = env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("quickstart listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
    Ok(())
}
