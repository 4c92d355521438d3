//! The database: SQLite (embedded default) or PostgreSQL through `sqlx::Any`, the schema,
//! the first-start seed, and every query the routes run.
//!
//! Every query is counted in `shop_db_queries_total{query="<name>"}` and timed in
//! `shop_db_query_seconds{query="<name>"}`, so `/metrics` shows the database work the layers
//! save.
//!
//! # Several processes on one database
//!
//! Start-up runs one transaction that creates the tables (`IF NOT EXISTS`) and claims the
//! seed by inserting the row `shop_meta(key = 'seeded')`. The first process to insert it
//! seeds inside the same transaction; the others wait on that row (PostgreSQL: a unique
//! index wait after `pg_advisory_xact_lock`; SQLite: the database write lock, with WAL and a
//! busy timeout) and find it already there. A start that loses a race (SQLite's
//! `SQLITE_BUSY`) retries the whole transaction.

use std::{
    future::Future,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sqlx::{
    AnyPool, Row,
    any::{AnyPoolOptions, AnyRow},
};

use crate::model::{Category, Dashboard, NewProduct, Page, Product, TopProduct, from_cents};

/// Products created on first start.
pub(crate) const SEED_PRODUCTS: i64 = 5_000;
/// Orders created on first start.
pub(crate) const SEED_ORDERS: i64 = 50_000;
/// Order lines created on first start (four per order): what top-selling aggregates.
pub(crate) const SEED_ORDER_LINES: i64 = SEED_ORDERS * 4;

const PRODUCT_COLUMNS: &str =
    "id, name, description, price_cents, stock, category_id, version, created_at, updated_at";
const CATEGORY_COLUMNS: &str = "id, name, description, version, updated_at";

/// Which database the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A handle to the pool; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// What `Db::connect` found or did, for the start-up log line.
#[derive(Debug)]
pub(crate) struct Startup {
    /// Whether this process seeded the database.
    pub(crate) seeded: bool,
    /// How long schema creation and seeding took.
    pub(crate) took: Duration,
}

impl Db {
    /// Connects, creates the schema and seeds it if no process did yet.
    pub(crate) async fn connect(url: &str) -> Result<(Db, Startup), sqlx::Error> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("sqlite:") {
            // `mode=rwc`: create the file on first start.
            let url = if url.contains("mode=") {
                url.to_owned()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(sqlx::Error::Configuration(
                format!("unsupported database URL `{url}`: use sqlite://FILE or postgres://…")
                    .into(),
            ));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Readers never block the writer, and a writer waits for another.
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let db = Db { pool, backend };
        let started = Instant::now();
        let mut attempt = 0;
        let seeded = loop {
            attempt += 1;
            match db.init().await {
                Ok(seeded) => break seeded,
                Err(e) if attempt < 20 && is_busy(&e) => {
                    tracing::info!(attempt, error = %e, "database busy at start-up, retrying");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok((
            db,
            Startup {
                seeded,
                took: started.elapsed(),
            },
        ))
    }

    /// The backend in use.
    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// Schema and seed in one transaction; true if this call seeded.
    async fn init(&self) -> Result<bool, sqlx::Error> {
        if self.backend == Backend::Sqlite {
            // Persistent in the file; needs no other connection in a transaction.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&self.pool)
                .await?;
        }
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // Concurrent CREATE TABLE IF NOT EXISTS can fail on PostgreSQL: serialize them.
            sqlx::query("SELECT pg_advisory_xact_lock(7317001)")
                .execute(&mut *tx)
                .await?;
        }
        for statement in schema(self.backend) {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        let claimed = sqlx::query(
            "INSERT INTO shop_meta (key, value) VALUES ('seeded', $1) ON CONFLICT (key) DO NOTHING",
        )
        .bind(now_rfc3339())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if claimed {
            seed(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Runs `fut`, counting and timing it under `name`.
    async fn run<T>(
        &self,
        name: &'static str,
        fut: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        metrics::counter!("shop_db_queries_total", "query" => name).increment(1);
        let started = Instant::now();
        let out = fut.await;
        metrics::histogram!("shop_db_query_seconds", "query" => name)
            .record(started.elapsed().as_secs_f64());
        out
    }

    /// `GET /products`: one page, ordered by id.
    pub(crate) async fn list_products(&self, page: Page) -> Result<Vec<Product>, sqlx::Error> {
        self.run("list_products", async {
            let rows = match page.category {
                Some(category) => {
                    sqlx::query(&format!(
                        "SELECT {PRODUCT_COLUMNS} FROM products WHERE category_id = $1 \
                         ORDER BY id LIMIT $2 OFFSET $3"
                    ))
                    .bind(category)
                    .bind(page.limit)
                    .bind(page.skip)
                    .fetch_all(&self.pool)
                    .await?
                }
                None => {
                    sqlx::query(&format!(
                        "SELECT {PRODUCT_COLUMNS} FROM products ORDER BY id LIMIT $1 OFFSET $2"
                    ))
                    .bind(page.limit)
                    .bind(page.skip)
                    .fetch_all(&self.pool)
                    .await?
                }
            };
            rows.iter().map(product).collect()
        })
        .await
    }

    /// `GET /products/{id}`.
    pub(crate) async fn get_product(&self, id: i64) -> Result<Option<Product>, sqlx::Error> {
        self.run("get_product", async {
            sqlx::query(&format!(
                "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(product)
            .transpose()
        })
        .await
    }

    /// The current version of a product, for `If-Match` (the conditional layer's source).
    pub(crate) async fn product_version(&self, id: i64) -> Result<Option<i64>, sqlx::Error> {
        self.run("product_version", async {
            sqlx::query("SELECT version FROM products WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get::<i64, _>(0))
                .transpose()
        })
        .await
    }

    /// Whether a category exists.
    pub(crate) async fn category_exists(&self, id: i64) -> Result<bool, sqlx::Error> {
        Ok(self.category_version(id).await?.is_some())
    }

    /// `POST /products`.
    pub(crate) async fn create_product(&self, p: &NewProduct) -> Result<Product, sqlx::Error> {
        self.run("create_product", async {
            let now = now_rfc3339();
            let row = sqlx::query(&format!(
                "INSERT INTO products (name, description, price_cents, stock, category_id, \
                 version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $6) \
                 RETURNING {PRODUCT_COLUMNS}"
            ))
            .bind(p.name.clone())
            .bind(p.description.clone())
            .bind(p.price_cents)
            .bind(p.stock)
            .bind(p.category_id)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
            product(&row)
        })
        .await
    }

    /// `PUT /products/{id}`: replaces the editable fields if the product exists and, when
    /// `expected` is given, is still at that version. `None`: nothing was updated.
    pub(crate) async fn update_product(
        &self,
        id: i64,
        p: &NewProduct,
        expected: Option<i64>,
    ) -> Result<Option<Product>, sqlx::Error> {
        self.run("update_product", async {
            sqlx::query(&format!(
                "UPDATE products SET name = $1, description = $2, price_cents = $3, stock = $4, \
                 category_id = $5, version = version + 1, updated_at = $6 \
                 WHERE id = $7 AND ($8 = 0 OR version = $8) RETURNING {PRODUCT_COLUMNS}"
            ))
            .bind(p.name.clone())
            .bind(p.description.clone())
            .bind(p.price_cents)
            .bind(p.stock)
            .bind(p.category_id)
            .bind(now_rfc3339())
            .bind(id)
            .bind(expected.unwrap_or(0))
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(product)
            .transpose()
        })
        .await
    }

    /// `DELETE /products/{id}` (at `expected` version if given); true if a row went.
    pub(crate) async fn delete_product(
        &self,
        id: i64,
        expected: Option<i64>,
    ) -> Result<bool, sqlx::Error> {
        self.run("delete_product", async {
            Ok(
                sqlx::query("DELETE FROM products WHERE id = $1 AND ($2 = 0 OR version = $2)")
                    .bind(id)
                    .bind(expected.unwrap_or(0))
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
                    == 1,
            )
        })
        .await
    }

    /// `GET /categories`: every category, ordered by id.
    pub(crate) async fn list_categories(&self) -> Result<Vec<Category>, sqlx::Error> {
        self.run("list_categories", async {
            sqlx::query(&format!(
                "SELECT {CATEGORY_COLUMNS} FROM categories ORDER BY id"
            ))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(category)
            .collect()
        })
        .await
    }

    /// `GET /categories/{id}`.
    pub(crate) async fn get_category(&self, id: i64) -> Result<Option<Category>, sqlx::Error> {
        self.run("get_category", async {
            sqlx::query(&format!(
                "SELECT {CATEGORY_COLUMNS} FROM categories WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(category)
            .transpose()
        })
        .await
    }

    /// The current version of a category, for `If-Match`.
    pub(crate) async fn category_version(&self, id: i64) -> Result<Option<i64>, sqlx::Error> {
        self.run("category_version", async {
            sqlx::query("SELECT version FROM categories WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get::<i64, _>(0))
                .transpose()
        })
        .await
    }

    /// `PUT /categories/{id}` (at `expected` version if given).
    pub(crate) async fn update_category(
        &self,
        id: i64,
        name: &str,
        description: &str,
        expected: Option<i64>,
    ) -> Result<Option<Category>, sqlx::Error> {
        self.run("update_category", async {
            sqlx::query(&format!(
                "UPDATE categories SET name = $1, description = $2, version = version + 1, \
                 updated_at = $3 WHERE id = $4 AND ($5 = 0 OR version = $5) \
                 RETURNING {CATEGORY_COLUMNS}"
            ))
            .bind(name.to_owned())
            .bind(description.to_owned())
            .bind(now_rfc3339())
            .bind(id)
            .bind(expected.unwrap_or(0))
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(category)
            .transpose()
        })
        .await
    }

    /// The expensive aggregation: units and revenue per product over every order line
    /// (a full scan and a group-by of the order lines).
    pub(crate) async fn top_selling(&self, limit: i64) -> Result<Vec<TopProduct>, sqlx::Error> {
        self.run("top_selling", async {
            sqlx::query(
                "SELECT p.id, p.name, p.category_id, \
                        CAST(SUM(oi.quantity) AS BIGINT) AS units, \
                        CAST(SUM(oi.quantity * oi.unit_price_cents) AS BIGINT) AS revenue \
                 FROM order_items oi JOIN products p ON p.id = oi.product_id \
                 GROUP BY p.id, p.name, p.category_id \
                 ORDER BY units DESC, p.id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(TopProduct {
                    product_id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    category_id: r.try_get(2)?,
                    units_sold: r.try_get(3)?,
                    revenue: from_cents(r.try_get(4)?),
                })
            })
            .collect()
        })
        .await
    }

    /// Applies one write-behind batch of view counts (`(product id, views)`) exactly once:
    /// in one transaction, the batch id is recorded first (which also takes SQLite's write
    /// lock at once) and the counts are added only if the id was new. A redelivered batch
    /// (after a crash between this commit and the queue's acknowledgement, or taken over
    /// from a dead instance) finds its id and changes nothing. Ids older than
    /// [`BATCH_IDS_KEPT`] are pruned in the same transaction. True if the batch was applied
    /// now, false if it had been before.
    pub(crate) async fn apply_views(
        &self,
        batch_id: &str,
        views: &[(i64, i64)],
    ) -> Result<bool, sqlx::Error> {
        self.run("apply_views", async {
            let now = unix_millis();
            let mut tx = self.pool.begin().await?;
            let fresh = sqlx::query(
                "INSERT INTO applied_view_batches (id, applied_at_ms) VALUES ($1, $2) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(batch_id.to_owned())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if fresh {
                for &(product, n) in views {
                    sqlx::query(UPSERT_VIEWS)
                        .bind(product)
                        .bind(n)
                        .execute(&mut *tx)
                        .await?;
                }
                let kept_ms = BATCH_IDS_KEPT.as_millis() as i64;
                sqlx::query("DELETE FROM applied_view_batches WHERE applied_at_ms < $1")
                    .bind(now - kept_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(fresh)
        })
        .await
    }

    /// Adds `n` views of `product` at once, without the queue (the fallback while Redis is
    /// known to be unreachable).
    pub(crate) async fn add_views_now(&self, product: i64, n: i64) -> Result<(), sqlx::Error> {
        self.run("add_views_now", async {
            sqlx::query(UPSERT_VIEWS)
                .bind(product)
                .bind(n)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// The views of a product flushed to the database so far (0 before the first).
    pub(crate) async fn product_views(&self, id: i64) -> Result<i64, sqlx::Error> {
        self.run("product_views", async {
            sqlx::query("SELECT views FROM product_views WHERE product_id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .map_or(Ok(0), |r| r.try_get::<i64, _>(0))
        })
        .await
    }

    /// The dashboard's totals: counts, and sums over every order line.
    pub(crate) async fn dashboard(&self) -> Result<Dashboard, sqlx::Error> {
        self.run("dashboard", async {
            let r = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM products), \
                        (SELECT COUNT(*) FROM categories), \
                        (SELECT COUNT(*) FROM orders), \
                        (SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM order_items), \
                        (SELECT CAST(COALESCE(SUM(quantity * unit_price_cents), 0) AS BIGINT) \
                         FROM order_items)",
            )
            .fetch_one(&self.pool)
            .await?;
            let orders: i64 = r.try_get(2)?;
            let revenue_cents: i64 = r.try_get(4)?;
            Ok(Dashboard {
                products: r.try_get(0)?,
                categories: r.try_get(1)?,
                orders,
                units_sold: r.try_get(3)?,
                revenue: from_cents(revenue_cents),
                average_order_value: if orders == 0 {
                    0.0
                } else {
                    (revenue_cents as f64 / orders as f64).round() / 100.0
                },
            })
        })
        .await
    }
}

/// How long the ids of applied view batches are kept: a batch redelivered later than this
/// (only if the queue could not acknowledge it for a week) would be counted again.
pub(crate) const BATCH_IDS_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether a start-up error is a lost race that a retry fixes.
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let msg = db.message().to_ascii_lowercase();
            msg.contains("locked") || msg.contains("busy") || db.is_unique_violation()
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
        _ => false,
    }
}

fn product(r: &AnyRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        description: r.try_get(2)?,
        price: from_cents(r.try_get(3)?),
        stock: r.try_get(4)?,
        category_id: r.try_get(5)?,
        version: r.try_get(6)?,
        created_at: r.try_get(7)?,
        updated_at: r.try_get(8)?,
    })
}

fn category(r: &AnyRow) -> Result<Category, sqlx::Error> {
    Ok(Category {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        description: r.try_get(2)?,
        version: r.try_get(3)?,
        updated_at: r.try_get(4)?,
    })
}

/// View counts, flushed by write-behind (not a column of `products`: a view changes no
/// version and no `ETag`).
const VIEWS_TABLE: &str = "CREATE TABLE IF NOT EXISTS product_views (product_id BIGINT PRIMARY KEY, \
     views BIGINT NOT NULL)";
/// Adds `$2` views to product `$1`.
const UPSERT_VIEWS: &str = "INSERT INTO product_views (product_id, views) VALUES ($1, $2) \
     ON CONFLICT (product_id) DO UPDATE SET views = product_views.views + excluded.views";
/// The ids of the write-behind batches applied, recorded in the same transaction.
const APPLIED_TABLE: &str = "CREATE TABLE IF NOT EXISTS applied_view_batches (id TEXT PRIMARY KEY, \
     applied_at_ms BIGINT NOT NULL)";
const APPLIED_INDEX: &str = "CREATE INDEX IF NOT EXISTS applied_view_batches_by_time \
     ON applied_view_batches (applied_at_ms)";

/// `CREATE TABLE IF NOT EXISTS …` for `backend`. No index on `order_items.product_id`:
/// top-selling is meant to cost a full scan.
fn schema(backend: Backend) -> Vec<&'static str> {
    match backend {
        Backend::Sqlite => vec![
            "CREATE TABLE IF NOT EXISTS shop_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS categories (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             name TEXT NOT NULL, description TEXT NOT NULL, version BIGINT NOT NULL DEFAULT 1, \
             updated_at TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS products (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             name TEXT NOT NULL, description TEXT NOT NULL, price_cents BIGINT NOT NULL, \
             stock BIGINT NOT NULL, category_id BIGINT NOT NULL REFERENCES categories(id), \
             version BIGINT NOT NULL DEFAULT 1, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS products_by_category ON products (category_id, id)",
            "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             customer_id BIGINT NOT NULL, placed_at BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS order_items (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             order_id BIGINT NOT NULL REFERENCES orders(id), product_id BIGINT NOT NULL, \
             quantity BIGINT NOT NULL, unit_price_cents BIGINT NOT NULL)",
            VIEWS_TABLE,
            APPLIED_TABLE,
            APPLIED_INDEX,
        ],
        Backend::Postgres => vec![
            "CREATE TABLE IF NOT EXISTS shop_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS categories (id BIGINT GENERATED BY DEFAULT AS IDENTITY \
             PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL, \
             version BIGINT NOT NULL DEFAULT 1, updated_at TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS products (id BIGINT GENERATED BY DEFAULT AS IDENTITY \
             PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL, \
             price_cents BIGINT NOT NULL, stock BIGINT NOT NULL, \
             category_id BIGINT NOT NULL REFERENCES categories(id), \
             version BIGINT NOT NULL DEFAULT 1, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS products_by_category ON products (category_id, id)",
            "CREATE TABLE IF NOT EXISTS orders (id BIGINT GENERATED BY DEFAULT AS IDENTITY \
             PRIMARY KEY, customer_id BIGINT NOT NULL, placed_at BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS order_items (id BIGINT GENERATED BY DEFAULT AS IDENTITY \
             PRIMARY KEY, order_id BIGINT NOT NULL REFERENCES orders(id), \
             product_id BIGINT NOT NULL, quantity BIGINT NOT NULL, \
             unit_price_cents BIGINT NOT NULL)",
            VIEWS_TABLE,
            APPLIED_TABLE,
            APPLIED_INDEX,
        ],
    }
}

const CATEGORIES: [(&str, &str); 20] = [
    (
        "Electronics",
        "Phones, laptops and everything with a battery",
    ),
    ("Books", "Paper and ink"),
    ("Home & Kitchen", "Pots, pans and gadgets"),
    ("Garden", "Tools and seeds"),
    ("Toys", "For every age"),
    ("Sports", "Balls, rackets and shoes"),
    ("Clothing", "Shirts, trousers and coats"),
    ("Beauty", "Creams and perfumes"),
    ("Grocery", "Food that keeps"),
    ("Automotive", "Parts and care"),
    ("Office", "Paper, pens and chairs"),
    ("Pet Supplies", "For cats, dogs and fish"),
    ("Music", "Instruments and records"),
    ("Movies", "Discs and posters"),
    ("Health", "Vitamins and first aid"),
    ("Jewelry", "Rings and watches"),
    ("Baby", "Nappies and prams"),
    ("Tools", "Drills, saws and screws"),
    ("Outdoors", "Tents and backpacks"),
    ("Crafts", "Yarn, paint and glue"),
];

const ADJECTIVES: [&str; 16] = [
    "Ergonomic",
    "Rustic",
    "Sleek",
    "Durable",
    "Compact",
    "Deluxe",
    "Classic",
    "Smart",
    "Handmade",
    "Portable",
    "Premium",
    "Vintage",
    "Modern",
    "Eco",
    "Heavy-Duty",
    "Mini",
];

const NOUNS: [&str; 16] = [
    "Lamp", "Chair", "Kettle", "Backpack", "Speaker", "Notebook", "Blender", "Jacket", "Watch",
    "Drill", "Mug", "Tent", "Guitar", "Camera", "Scarf", "Puzzle",
];

/// The first-start data: 20 categories, [`SEED_PRODUCTS`] products, [`SEED_ORDERS`] orders
/// and [`SEED_ORDER_LINES`] order lines, deterministic, in the caller's transaction. The
/// order lines are generated by the database itself (a recursive CTE), so seeding is a
/// handful of statements.
async fn seed(tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<(), sqlx::Error> {
    let now = now_rfc3339();
    for (name, description) in CATEGORIES {
        sqlx::query(
            "INSERT INTO categories (name, description, version, updated_at) \
             VALUES ($1, $2, 1, $3)",
        )
        .bind(name)
        .bind(description)
        .bind(now.clone())
        .execute(&mut **tx)
        .await?;
    }
    let first_category: i64 = sqlx::query("SELECT MIN(id) FROM categories")
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;

    // Products in batches of 500 rows (8 parameters each).
    const BATCH: i64 = 500;
    for start in (0..SEED_PRODUCTS).step_by(BATCH as usize) {
        let end = (start + BATCH).min(SEED_PRODUCTS);
        let mut sql = String::from(
            "INSERT INTO products (name, description, price_cents, stock, category_id, version, \
             created_at, updated_at) VALUES ",
        );
        for n in 0..(end - start) {
            let p = n * 7;
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, 1, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6,
                p + 7
            ));
        }
        let mut query = sqlx::query(&sql);
        for i in start..end {
            let adjective = ADJECTIVES[(i % 16) as usize];
            let noun = NOUNS[((i / 16) % 16) as usize];
            let category = i % CATEGORIES.len() as i64;
            query = query
                .bind(format!("{adjective} {noun} {}", i + 1))
                .bind(format!(
                    "{adjective} {}, from our {} department.",
                    noun.to_lowercase(),
                    CATEGORIES[category as usize].0
                ))
                .bind(199 + (i * 7_927) % 49_800)
                .bind((i * 37) % 500)
                .bind(first_category + category)
                .bind(now.clone())
                .bind(now.clone());
        }
        query.execute(&mut **tx).await?;
    }
    let first_product: i64 = sqlx::query("SELECT MIN(id) FROM products")
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;

    // Orders over the last ~three weeks.
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    sqlx::query(
        "WITH RECURSIVE seq(n) AS (SELECT CAST(1 AS BIGINT) UNION ALL \
                                   SELECT n + 1 FROM seq WHERE n < $1) \
         INSERT INTO orders (customer_id, placed_at) \
         SELECT 1 + (n * 7919) % 5000, $2 - n * 37 FROM seq",
    )
    .bind(SEED_ORDERS)
    .bind(now_secs)
    .execute(&mut **tx)
    .await?;
    let first_order: i64 = sqlx::query("SELECT MIN(id) FROM orders")
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;

    // Four lines per order. The product index is the product of two pseudo-random numbers
    // scaled back to [0, P): low ids sell most, so top-selling has a clear head.
    sqlx::query(
        "WITH RECURSIVE seq(n) AS (SELECT CAST(0 AS BIGINT) UNION ALL \
                                   SELECT n + 1 FROM seq WHERE n < $1 - 1), \
              lines AS (SELECT $2 + n / 4 AS order_id, \
                               $3 + ((n * 7919) % $4) * ((n * 104729 + 13) % $4) / $4 AS product_id, \
                               1 + (n * 31) % 5 AS quantity \
                        FROM seq) \
         INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) \
         SELECT l.order_id, l.product_id, l.quantity, p.price_cents \
         FROM lines l JOIN products p ON p.id = l.product_id",
    )
    .bind(SEED_ORDER_LINES)
    .bind(first_order)
    .bind(first_product)
    .bind(SEED_PRODUCTS)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Now as RFC 3339 in UTC with seconds: `2024-05-01T12:00:00Z`.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the Unix epoch as RFC 3339 (the civil-from-days algorithm of H. Hinnant).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    /// A batch delivered twice (the sink succeeded, the acknowledgement was lost) is
    /// applied once; another batch id adds again.
    #[tokio::test]
    async fn a_view_batch_delivered_twice_is_applied_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let url = format!("sqlite://{}", dir.path().join("shop.db").display());
        let (db, _) = Db::connect(&url).await.unwrap();
        let batch = [(3, 5), (4, 1)];
        assert!(db.apply_views("views/1-0/6", &batch).await.unwrap());
        assert!(!db.apply_views("views/1-0/6", &batch).await.unwrap());
        assert_eq!(db.product_views(3).await.unwrap(), 5);
        assert_eq!(db.product_views(4).await.unwrap(), 1);
        assert!(db.apply_views("views/1-6/1", &[(3, 2)]).await.unwrap());
        assert_eq!(db.product_views(3).await.unwrap(), 7);
        assert_eq!(db.product_views(5).await.unwrap(), 0);
        db.add_views_now(5, 1).await.unwrap();
        assert_eq!(db.product_views(5).await.unwrap(), 1);
    }
}
