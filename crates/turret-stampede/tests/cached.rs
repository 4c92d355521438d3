//! `#[cached]` against the memory cache: single flight, keys, skip, errors, write-through,
//! invalidation, tags, methods.
#![cfg(feature = "macros")]

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use turret_stampede::{Options, StampedeCache, cached};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
}

/// A database handle: not keyable, so it is skipped.
struct Db {
    name: &'static str,
    /// The queries this handle ran (per handle, so tests running in parallel do not mix).
    runs: AtomicUsize,
}

fn db(name: &'static str) -> Db {
    Db {
        name,
        runs: AtomicUsize::new(0),
    }
}

#[derive(Debug, PartialEq)]
struct DbError;

#[cached(cache = cache, ttl = "10m", key = "product:{id}", tags = ["category:{category_id}"], skip(db))]
async fn get_product(
    cache: &StampedeCache,
    db: &Db,
    id: u64,
    category_id: u32,
) -> Result<Product, DbError> {
    db.runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    if id == 0 {
        return Err(DbError);
    }
    Ok(Product {
        id,
        name: format!("{} {id} in {category_id}", db.name),
    })
}

#[tokio::test]
async fn concurrent_calls_with_the_same_arguments_run_the_body_once() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    #[cached(cache = cache, ttl = "1m", key = "n:{n}")]
    async fn slow(cache: &StampedeCache, n: u32) -> u32 {
        RUNS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        n * 2
    }
    let cache = StampedeCache::new();
    let calls = (0..8).map(|_| slow(&cache, 21));
    let values = futures_util::future::join_all(calls).await;
    assert_eq!(values, vec![42; 8]);
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        1,
        "one computation for eight callers"
    );
    // A different argument is another key: the body runs again (a lower bound).
    assert_eq!(slow(&cache, 1).await, 2);
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn different_arguments_are_different_keys_and_skipped_ones_are_not() {
    let cache = StampedeCache::new();
    let (a, b) = (db("a"), db("b"));
    let first = get_product(&cache, &a, 10, 1).await.unwrap();
    let other_id = get_product(&cache, &a, 11, 1).await.unwrap();
    assert_ne!(first, other_id);
    assert_ne!(get_product_key(10), get_product_key(11));
    // Another handle: the same key, served from the cache.
    assert_eq!(get_product(&cache, &b, 10, 1).await.unwrap(), first);
    assert_eq!(a.runs.load(Ordering::SeqCst), 2);
    assert_eq!(b.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn errors_are_not_cached() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    #[cached(cache = cache, ttl = "1m", key = "flaky:{id}")]
    async fn flaky(cache: &StampedeCache, id: u64) -> Result<u64, DbError> {
        if RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(DbError)
        } else {
            Ok(id)
        }
    }
    let cache = StampedeCache::new();
    assert_eq!(flaky(&cache, 5).await, Err(DbError));
    assert_eq!(flaky(&cache, 5).await, Ok(5), "the error was not stored");
    assert_eq!(flaky(&cache, 5).await, Ok(5));
    assert_eq!(RUNS.load(Ordering::SeqCst), 2, "the value was");
}

#[tokio::test]
async fn the_key_function_names_the_key_the_function_uses() {
    let cache = StampedeCache::new();
    let db = db("db");
    let written = Product {
        id: 42,
        name: String::from("written through"),
    };
    cache
        .set(get_product_key(42), &written, &get_product_options(3))
        .await
        .unwrap();
    let before = db.runs.load(Ordering::SeqCst);
    assert_eq!(get_product(&cache, &db, 42, 3).await.unwrap(), written);
    assert_eq!(
        db.runs.load(Ordering::SeqCst),
        before,
        "served what set stored"
    );
    assert!(cache.invalidate(get_product_key(42)).await.unwrap());
    assert_eq!(
        get_product(&cache, &db, 42, 3).await.unwrap().name,
        "db 42 in 3"
    );
    assert_eq!(
        db.runs.load(Ordering::SeqCst),
        before + 1,
        "recomputed after invalidate"
    );
}

#[tokio::test]
async fn a_value_containing_the_separator_does_not_collide() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    #[cached(cache = cache, ttl = "1m", key = "pair:{a}:{b}")]
    async fn pair(cache: &StampedeCache, a: &str, b: &str) -> String {
        RUNS.fetch_add(1, Ordering::SeqCst);
        format!("{a}|{b}")
    }
    let cache = StampedeCache::new();
    assert_ne!(pair_key("x:y", "z"), pair_key("x", "y:z"));
    assert_eq!(pair(&cache, "x:y", "z").await, "x:y|z");
    assert_eq!(pair(&cache, "x", "y:z").await, "x|y:z");
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn tags_invalidate_the_values_they_name() {
    let cache = StampedeCache::new();
    let db = db("db");
    let before = db.runs.load(Ordering::SeqCst);
    get_product(&cache, &db, 1, 7).await.unwrap();
    get_product(&cache, &db, 2, 8).await.unwrap();
    let tag = get_product_options(7).get_tags()[0].clone();
    assert_eq!(tag, "category:7");
    cache.invalidate_tag(&tag).await.unwrap(); // the memory store counts lazily (may say 0)
    get_product(&cache, &db, 1, 7).await.unwrap();
    get_product(&cache, &db, 2, 8).await.unwrap();
    assert_eq!(
        db.runs.load(Ordering::SeqCst) - before,
        3,
        "only category 7 recomputed"
    );
}

struct ProductService {
    cache: StampedeCache,
    db: Db,
    runs: AtomicUsize,
}

impl ProductService {
    #[cached(cache = self.cache, ttl = "10m", key = "product:{id}")]
    async fn get_product(&self, id: u64) -> Result<Product, DbError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(Product {
            id,
            name: format!("{} {id}", self.db.name),
        })
    }

    #[cached(cache = self.cache, ttl = "1m", key = "search:{query}", skip(db))]
    async fn search(&self, db: &Db, query: &str) -> Vec<String> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        vec![format!("{} {query}", db.name)]
    }
}

#[tokio::test]
async fn methods_use_their_cache_and_borrowed_arguments() {
    let service = ProductService {
        cache: StampedeCache::new(),
        db: db("svc"),
        runs: AtomicUsize::new(0),
    };
    assert_eq!(service.get_product(1).await.unwrap().name, "svc 1");
    assert_eq!(service.get_product(1).await.unwrap().name, "svc 1");
    assert_eq!(ProductService::get_product_key(1), "product:1");
    let other = db("other");
    assert_eq!(service.search(&other, "usb c").await, ["other usb c"]);
    assert_eq!(
        service.search(&service.db, "usb c").await,
        ["other usb c"],
        "db is skipped"
    );
    assert_eq!(service.runs.load(Ordering::SeqCst), 2);
    assert!(
        service
            .cache
            .peek::<Vec<String>>(ProductService::search_key("usb c"))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn default_keys_hash_the_arguments() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    #[cached(cache = cache, ttl = "1m", skip(db))]
    async fn listed(cache: &StampedeCache, db: &Db, category: String, page: u32) -> Vec<u32> {
        let _ = db;
        RUNS.fetch_add(1, Ordering::SeqCst);
        vec![page; category.len()]
    }
    let cache = StampedeCache::new();
    let db = db("db");
    let key = listed_key(String::from("tools"), 2);
    assert!(key.starts_with("cached:"), "{key}");
    assert_ne!(key, listed_key(String::from("tools"), 3));
    assert_ne!(key, listed_key(String::from("tool"), 2));
    assert_eq!(listed(&cache, &db, "tools".into(), 2).await, [2; 5]);
    assert_eq!(listed(&cache, &db, "tools".into(), 2).await, [2; 5]);
    assert_eq!(listed(&cache, &db, "tools".into(), 3).await, [3; 5]);
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);
    let _: Options = listed_options();
}

/// The same function on two instances sharing one real Redis: one computation for the
/// fleet, and a write-through on one is what the other's next call returns.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_redis_runs_the_body_once() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    #[cached(cache = cache, ttl = "10m", key = "report:{month}")]
    async fn report(cache: &StampedeCache, month: u32) -> Result<u64, DbError> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(u64::from(month) * 100)
    }
    let server = turret_testkit::RedisServer::start();
    let a = StampedeCache::redis(turret_testkit::connect!(&server).await);
    let b = StampedeCache::redis(turret_testkit::connect!(&server).await);
    let calls = (0..20).map(|i| {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { report(&cache, 7).await }
    });
    let values = futures_util::future::join_all(calls).await;
    assert!(values.iter().all(|v| v == &Ok(700)), "{values:?}");
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        1,
        "one computation for the fleet"
    );
    a.set(report_key(7), &1u64, &report_options())
        .await
        .unwrap();
    assert_eq!(report(&b, 7).await, Ok(1), "B reads A's write-through");
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
}
