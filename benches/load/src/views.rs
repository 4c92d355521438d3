//! The write scenarios: view counting on a real SQLite file database (WAL mode), one
//! `POST /views/{id}` per view, 1,000 products.
//!
//! - `views-direct`: one `UPDATE product_views SET views = views + 1 WHERE product_id = ?`
//!   per request, answered `204` once it is committed (SQLite's default `synchronous =
//!   FULL`: each commit is on disk). `views-direct-normal`: the same with `synchronous =
//!   NORMAL` (the common WAL tuning: commits are not synced one by one, so a power loss may
//!   lose the last ones).
//! - `views-writebehind-redis`: the view goes into a [`WriteBehind`] queue on a Redis Stream
//!   (answered `204` once `XADD` is acknowledged); the flusher folds each batch (a sum per
//!   product) and applies it in one SQLite transaction that records the batch id, as the
//!   `Sink` docs show, so a redelivered batch is applied once.
//! - `views-writebehind-memory`: the same with the queue in this process' memory.
//!
//! A queue that is full answers `503` (not counted as accepted). The origin counter the
//! driver reads (`/__origin_calls`) counts the accepted writes (`204`s; a write runs in a
//! task of its own, so a client that hangs up mid-request does not cancel it between the
//! write and the count). `GET /__views_total`
//! flushes what is queued (shutting the queue down: call it last) and answers
//! `<views in the database> <writes accepted> <ms the flush took>`, so the driver can check
//! that the database counts exactly the writes it was answered `204` for.

use std::{
    path::PathBuf,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use turret_writebehind::{Batch, Merge, Sink, WriteBehind, WriteError};

/// Products: ids `0..PRODUCTS`, the ids the driver's POSTs use.
const PRODUCTS: u64 = 1000;

/// The direct scenarios' pool size: sqlx's default.
const DIRECT_CONNECTIONS: u32 = 10;

/// How the writes reach the database.
#[derive(Clone)]
enum Writer {
    Direct,
    Queue(WriteBehind<u64, i64>),
}

#[derive(Clone)]
struct Views {
    db: SqlitePool,
    writer: Writer,
    accepted: Arc<AtomicU64>,
    /// Writes started and not finished (counted or failed) yet.
    in_flight: Arc<AtomicU64>,
}

/// One SQLite transaction per batch, recording its id: applied exactly once.
struct ViewsSink(SqlitePool);

impl Sink<u64, i64> for ViewsSink {
    type Error = sqlx::Error;

    async fn flush(&self, batch: &Batch<u64, i64>) -> Result<(), sqlx::Error> {
        let mut tx = self.0.begin().await?;
        let new = sqlx::query("INSERT INTO applied_batches (id) VALUES (?) ON CONFLICT DO NOTHING")
            .bind(batch.id().as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if new == 0 {
            return Ok(()); // applied before: a redelivery (the transaction rolls back)
        }
        for (product, n) in batch.items() {
            sqlx::query("UPDATE product_views SET views = views + ? WHERE product_id = ?")
                .bind(n)
                .bind(*product as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
}

/// A fresh database file in the temporary directory (the driver's own, removed after the
/// run): WAL, 1,000 products at 0 views, a pool of `connections`.
async fn database(scenario: &str, synchronous: SqliteSynchronous, connections: u32) -> SqlitePool {
    let file: PathBuf = std::env::temp_dir().join(format!(
        "turret-bench-{scenario}-{}.sqlite",
        std::process::id()
    ));
    for suffix in ["", "-wal", "-shm"] {
        let mut name = file.clone().into_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", file.display()))
        .expect("sqlite url")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .expect("open the SQLite database");
    for statement in [
        "CREATE TABLE product_views (product_id INTEGER PRIMARY KEY, views INTEGER NOT NULL)",
        "CREATE TABLE applied_batches (id TEXT PRIMARY KEY)",
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < 1000) \
         INSERT INTO product_views SELECT i, 0 FROM n",
    ] {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .expect("create the schema");
    }
    pool
}

async fn view(State(v): State<Views>, Path(id): Path<u64>) -> StatusCode {
    if id >= PRODUCTS {
        return StatusCode::NOT_FOUND;
    }
    // In a task of its own, so that a client gone mid-write (wrk closes its connections at the
    // end of a run) does not cancel it between the write and the count: the count is exactly
    // the writes done, each of them answered 204 to a client still there.
    v.in_flight.fetch_add(1, Ordering::SeqCst);
    let task = tokio::spawn(async move {
        let status = write(&v, id).await;
        v.in_flight.fetch_sub(1, Ordering::SeqCst);
        status
    });
    task.await.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn write(v: &Views, id: u64) -> StatusCode {
    let status = match &v.writer {
        Writer::Direct => {
            match sqlx::query("UPDATE product_views SET views = views + 1 WHERE product_id = ?")
                .bind(id as i64)
                .execute(&v.db)
                .await
            {
                Ok(done) if done.rows_affected() == 1 => StatusCode::NO_CONTENT,
                Ok(_) => StatusCode::NOT_FOUND,
                Err(_) => StatusCode::SERVICE_UNAVAILABLE,
            }
        }
        Writer::Queue(queue) => match queue.write(id, 1).await {
            Ok(()) => StatusCode::NO_CONTENT,
            // Backpressure, or Redis not answering: not accepted.
            Err(WriteError::Full { .. } | _) => StatusCode::SERVICE_UNAVAILABLE,
        },
    };
    if status == StatusCode::NO_CONTENT {
        v.accepted.fetch_add(1, Ordering::Relaxed);
    }
    status
}

/// Waits for the writes in flight (the last requests of a run, whose clients may have gone),
/// flushes the queue (shutting it down), then sums the database.
async fn total(State(v): State<Views>) -> String {
    let settle = Instant::now() + Duration::from_secs(30);
    while v.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    if let Writer::Queue(queue) = &v.writer {
        queue.shutdown().await;
    }
    let flushed_in = started.elapsed();
    let sum: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(views), 0) FROM product_views")
        .fetch_one(&v.db)
        .await
        .unwrap_or(-1);
    format!(
        "{sum} {} {}",
        v.accepted.load(Ordering::Relaxed),
        flushed_in.as_millis()
    )
}

/// The app of a `views-…` scenario, and the counter of accepted writes (the driver reads it
/// as `/__origin_calls`). `None` for another scenario.
pub(crate) async fn app(scenario: &str, redis_url: &str) -> Option<(Router, Arc<AtomicU64>)> {
    let queue = |name: &str| {
        WriteBehind::<u64, i64>::builder(name)
            .flush_interval(Duration::from_secs(1))
            .max_batch(turret_writebehind::MAX_BATCH_LIMIT)
            .merge(Merge::fold(|a, b| a + b))
    };
    use SqliteSynchronous::{Full, Normal};
    let (db, writer) = match scenario {
        // sqlx's default pool size: SQLite commits one writer at a time, but the statement
        // work outside the write lock overlaps (faster here than 1, 2 or 4 connections).
        "views-direct" => (
            database(scenario, Full, DIRECT_CONNECTIONS).await,
            Writer::Direct,
        ),
        "views-direct-normal" => (
            database(scenario, Normal, DIRECT_CONNECTIONS).await,
            Writer::Direct,
        ),
        "views-writebehind-redis" => {
            // The flusher (one batch at a time) and `/__views_total`.
            let db = database(scenario, Full, 2).await;
            let redis = crate::redis_handle(redis_url).await;
            let q = queue("views")
                .redis(redis, ViewsSink(db.clone()))
                .expect("queue config");
            (db, Writer::Queue(q))
        }
        "views-writebehind-memory" => {
            // The flusher (one batch at a time) and `/__views_total`.
            let db = database(scenario, Full, 2).await;
            let q = queue("views")
                .memory(ViewsSink(db.clone()))
                .expect("queue config");
            (db, Writer::Queue(q))
        }
        _ => return None,
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let state = Views {
        db,
        writer,
        accepted: accepted.clone(),
        in_flight: Arc::default(),
    };
    let app = Router::new()
        .route("/views/{id}", post(view))
        .route("/__views_total", get(total))
        .with_state(state);
    Some((app, accepted))
}
