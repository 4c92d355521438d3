//! The fleet queue against a real redis-server (and a real Redis Cluster).
#![cfg(feature = "redis")]

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use turret_redis::{Redis, RedisConfig, redis};
use turret_testkit::{RedisCluster, RedisServer};
use turret_writebehind::{Batch, Merge, Sink, WriteBehind, WriteError};

/// A stand-in database: applies a batch once per id, and remembers every delivery.
#[derive(Debug, Default)]
struct Db {
    /// Batch ids applied (as a sink records them in its transaction).
    applied: HashSet<String>,
    /// Per key, the sum of the applied items.
    totals: HashMap<u64, i64>,
    /// Every delivery: (which instance's sink, batch id, writes covered).
    deliveries: Vec<(usize, String, usize)>,
    /// Fail this many deliveries, then succeed.
    fail: usize,
    /// Fail every delivery.
    fail_always: bool,
}

#[derive(Clone)]
struct Recorder {
    db: Arc<Mutex<Db>>,
    instance: usize,
    /// Set when a delivery starts; the sink then never answers (a process dying mid-batch).
    hang: Option<Arc<tokio::sync::Notify>>,
}

impl Recorder {
    fn new(db: &Arc<Mutex<Db>>, instance: usize) -> Self {
        Self {
            db: db.clone(),
            instance,
            hang: None,
        }
    }
}

impl Sink<u64, i64> for Recorder {
    type Error = String;

    async fn flush(&self, batch: &Batch<u64, i64>) -> Result<(), String> {
        {
            let mut db = self.db.lock().unwrap();
            db.deliveries
                .push((self.instance, batch.id().to_string(), batch.entries()));
            if self.hang.is_none() {
                if db.fail_always {
                    return Err("database down".into());
                }
                if db.fail > 0 {
                    db.fail -= 1;
                    return Err("database down".into());
                }
                if db.applied.insert(batch.id().to_string()) {
                    for (k, v) in batch.items() {
                        *db.totals.entry(*k).or_default() += v;
                    }
                }
                return Ok(());
            }
        }
        if let Some(hang) = &self.hang {
            hang.notify_one();
        }
        std::future::pending().await
    }
}

fn configure(config: RedisConfig) -> RedisConfig {
    config.command_timeout(Duration::from_millis(500))
}

async fn connect(server: &RedisServer) -> Redis {
    turret_testkit::connect!(server, configure).await
}

fn views(name: &str) -> turret_writebehind::WriteBehindBuilder<u64, i64> {
    WriteBehind::<u64, i64>::builder(name)
        .flush_interval(Duration::from_millis(50))
        .max_batch(100)
        .claim_idle(Duration::from_secs(1))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .merge(Merge::fold(|a, b| a + b))
}

async fn eventually(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn xlen(server: &RedisServer, name: &str) -> i64 {
    server.cmd(&["XLEN", &format!("turret:wb:{{{name}}}")])
}

fn total(db: &Arc<Mutex<Db>>) -> i64 {
    db.lock().unwrap().totals.values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_apply_every_write_exactly_once() {
    let server = RedisServer::start();
    let db = Arc::new(Mutex::new(Db::default()));
    let mut queues = Vec::new();
    for i in 0..3 {
        queues.push(
            views("views")
                .redis(connect(&server).await, Recorder::new(&db, i))
                .unwrap(),
        );
    }
    let mut expected: HashMap<u64, i64> = HashMap::new();
    let mut tasks = Vec::new();
    for (i, q) in queues.iter().enumerate() {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..1000u64 {
                q.write((n * 7 + i as u64) % 50, 1).await.unwrap();
            }
        }));
    }
    for i in 0..3u64 {
        for n in 0..1000u64 {
            *expected.entry((n * 7 + i) % 50).or_default() += 1;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually("3,000 views applied", Duration::from_secs(20), || {
        total(&db) >= 3000
    })
    .await;
    // Settle: nothing else arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for q in &queues {
        q.shutdown().await;
    }
    let db = db.lock().unwrap();
    assert_eq!(db.totals, expected);
    let ids: Vec<&String> = db.deliveries.iter().map(|d| &d.1).collect();
    let distinct: HashSet<&String> = ids.iter().copied().collect();
    assert_eq!(ids.len(), distinct.len(), "a batch was delivered twice");
    assert_eq!(db.deliveries.iter().map(|d| d.2).sum::<usize>(), 3000);
    let flushers: HashSet<usize> = db.deliveries.iter().map(|d| d.0).collect();
    assert!(
        flushers.len() >= 2,
        "one instance flushed everything: {flushers:?}"
    );
    assert_eq!(xlen(&server, "views"), 0, "flushed entries are deleted");
}

#[test]
fn a_batch_left_pending_by_a_dead_consumer_is_taken_over_with_the_same_id() {
    let server = RedisServer::start();
    let db = Arc::new(Mutex::new(Db::default()));
    // Instance 0 in its own runtime: it reads a batch, its sink hangs, and then the runtime
    // (the process) goes away with the batch pending.
    let dying = tokio::runtime::Runtime::new().unwrap();
    let hang = Arc::new(tokio::sync::Notify::new());
    dying.block_on(async {
        let mut sink = Recorder::new(&db, 0);
        sink.hang = Some(hang.clone());
        let q = views("handover")
            .redis(connect(&server).await, sink)
            .unwrap();
        for n in 0..60u64 {
            q.write(n % 6, 1).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), hang.notified())
            .await
            .expect("instance 0 got a batch");
        std::mem::forget(q); // no graceful shutdown: the process dies
    });
    dying.shutdown_background();
    let first = db.lock().unwrap().deliveries[0].clone();
    assert_eq!(first.0, 0);
    let pending: redis::Value = server.cmd(&["XPENDING", "turret:wb:{handover}", "flushers"]);
    assert!(
        matches!(&pending, redis::Value::Array(v) if matches!(v.first(), Some(redis::Value::Int(n)) if *n as usize == first.2)),
        "the dead consumer's batch is pending: {pending:?}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let q = views("handover")
            .redis(connect(&server).await, Recorder::new(&db, 1))
            .unwrap();
        eventually("the 60 views applied", Duration::from_secs(15), || {
            total(&db) == 60
        })
        .await;
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "taken over before the batch was idle long enough"
        );
        q.shutdown().await;
    });
    let db = db.lock().unwrap();
    let taken_over: Vec<_> = db.deliveries.iter().filter(|d| d.1 == first.1).collect();
    assert_eq!(taken_over.len(), 2, "{:?}", db.deliveries);
    assert_eq!(
        taken_over[1].0, 1,
        "instance 1 delivered the dead one's batch"
    );
    assert_eq!(db.totals, (0..6).map(|k| (k, 10)).collect());
    assert_eq!(xlen(&server, "handover"), 0);
    // The dead consumer is gone from the group.
    let consumers: redis::Value =
        server.cmd(&["XINFO", "CONSUMERS", "turret:wb:{handover}", "flushers"]);
    assert!(
        matches!(&consumers, redis::Value::Array(c) if c.len() == 1),
        "{consumers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_is_retried_with_the_same_batch_and_nothing_is_lost_or_doubled() {
    let server = RedisServer::start();
    let db = Arc::new(Mutex::new(Db {
        fail: 4,
        ..Db::default()
    }));
    let q = views("retry")
        .redis(connect(&server).await, Recorder::new(&db, 0))
        .unwrap();
    for n in 0..250u64 {
        q.write(n % 10, 1).await.unwrap();
    }
    eventually("250 views applied", Duration::from_secs(15), || {
        total(&db) == 250
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    q.shutdown().await;
    let db = db.lock().unwrap();
    assert_eq!(db.totals, (0..10).map(|k| (k, 25)).collect());
    // The first batch was delivered five times (four failures), always with one id.
    let first = &db.deliveries[0].1;
    assert_eq!(db.deliveries.iter().filter(|d| &d.1 == first).count(), 5);
    assert_eq!(db.deliveries.len(), db.applied.len() + 4);
    assert_eq!(xlen(&server, "retry"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_stay_pending_while_the_sink_fails() {
    let server = RedisServer::start();
    let db = Arc::new(Mutex::new(Db {
        fail_always: true,
        ..Db::default()
    }));
    let q = views("down")
        .shutdown_timeout(Duration::from_millis(100))
        .redis(connect(&server).await, Recorder::new(&db, 0))
        .unwrap();
    for n in 0..30u64 {
        q.write(n, 1).await.unwrap();
    }
    eventually("three failed deliveries", Duration::from_secs(10), || {
        db.lock().unwrap().deliveries.len() >= 3
    })
    .await;
    q.shutdown().await;
    assert_eq!(xlen(&server, "down"), 30, "nothing was deleted");
    // The batch it kept failing on is still pending with it (the rest never left the stream).
    let in_flight = db.lock().unwrap().deliveries[0].2 as i64;
    assert!(in_flight >= 1);
    let pending: redis::Value = server.cmd(&["XPENDING", "turret:wb:{down}", "flushers"]);
    assert!(
        matches!(&pending, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(in_flight))),
        "{pending:?}"
    );
    // A new instance (the database back) flushes them.
    db.lock().unwrap().fail_always = false;
    let q = views("down")
        .redis(connect(&server).await, Recorder::new(&db, 1))
        .unwrap();
    eventually("30 views applied", Duration::from_secs(15), || {
        total(&db) == 30
    })
    .await;
    q.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_backlog_bound_writes_fail_and_the_stream_never_grows_past_it() {
    let server = RedisServer::start();
    let db = Arc::new(Mutex::new(Db {
        fail_always: true,
        ..Db::default()
    }));
    let q = views("bounded")
        .max_batch(10)
        .max_backlog(50)
        .shutdown_timeout(Duration::from_millis(100))
        .redis(connect(&server).await, Recorder::new(&db, 0))
        .unwrap();
    let (mut accepted, mut full) = (0, 0);
    for n in 0..80u64 {
        match q.write(n, 1).await {
            Ok(()) => accepted += 1,
            Err(WriteError::Full { max_backlog }) => {
                assert_eq!(max_backlog, 50);
                full += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(xlen(&server, "bounded") <= 50);
    }
    assert_eq!((accepted, full), (50, 30));
    assert_eq!(xlen(&server, "bounded"), 50);
    // Once the sink recovers, the backlog drains and writes are accepted again.
    db.lock().unwrap().fail_always = false;
    eventually("the backlog drained", Duration::from_secs(15), || {
        total(&db) == 50
    })
    .await;
    eventually("the stream emptied", Duration::from_secs(5), || {
        xlen(&server, "bounded") == 0
    })
    .await;
    q.write(1, 1).await.unwrap();
    q.shutdown().await;
    assert_eq!(total(&db), 51);
}

/// Adds raw entries to a queue's stream, as another program (or a bug) might.
fn xadd(server: &RedisServer, name: &str, fields: &[(&str, &[u8])]) {
    let mut conn = server.connection();
    let mut cmd = redis::cmd("XADD");
    cmd.arg(format!("turret:wb:{{{name}}}")).arg("*");
    for (f, v) in fields {
        cmd.arg(*f).arg(*v);
    }
    let _: String = cmd.query(&mut conn).unwrap();
}

fn entry<K: serde::Serialize, V: serde::Serialize>(key: K, value: V) -> Vec<u8> {
    postcard::to_allocvec(&(key, value)).unwrap()
}

#[derive(Clone, Default)]
struct Items(Arc<Mutex<Vec<BatchItems>>>);

/// One batch's items.
type BatchItems = Vec<(u64, String)>;

impl Sink<u64, String> for Items {
    type Error = String;
    async fn flush(&self, batch: &Batch<u64, String>) -> Result<(), String> {
        self.0.lock().unwrap().push(batch.items().to_vec());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_rules_apply_within_a_batch() {
    let server = RedisServer::start();
    let cases: [(&str, Merge<String>, BatchItems); 3] = [
        (
            "last",
            Merge::LastWins,
            vec![(1, "b".into()), (2, "c".into())],
        ),
        (
            "fold",
            Merge::fold(|a: String, b: String| a + &b),
            vec![(1, "ab".into()), (2, "c".into())],
        ),
        (
            "all",
            Merge::KeepAll,
            vec![(1, "a".into()), (2, "c".into()), (1, "b".into())],
        ),
    ];
    for (name, merge, expected) in cases {
        for (k, v) in [(1u64, "a"), (2, "c"), (1, "b")] {
            xadd(&server, name, &[("d", &entry(k, v))]);
        }
        let sink = Items::default();
        let q = WriteBehind::<u64, String>::builder(name)
            .flush_interval(Duration::from_millis(50))
            .merge(merge)
            .redis(connect(&server).await, sink.clone())
            .unwrap();
        eventually("one batch", Duration::from_secs(10), || {
            !sink.0.lock().unwrap().is_empty()
        })
        .await;
        q.shutdown().await;
        assert_eq!(*sink.0.lock().unwrap(), [expected], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_entries_are_skipped_and_acknowledged_without_blocking_the_queue() {
    let server = RedisServer::start();
    xadd(&server, "garbage", &[("d", &entry(1u64, 5i64))]);
    xadd(
        &server,
        "garbage",
        &[("d", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")],
    );
    xadd(&server, "garbage", &[("other", b"x")]);
    xadd(&server, "garbage", &[("d", b"")]);
    xadd(&server, "garbage", &[("d", &entry(u64::MAX, ()))]); // the item is missing
    xadd(&server, "garbage", &[("d", &entry(2u64, 7i64))]);
    // A batch of garbage only.
    for _ in 0..3 {
        xadd(&server, "garbage", &[("d", b"\x80")]);
    }
    let db = Arc::new(Mutex::new(Db::default()));
    let q = views("garbage")
        .max_batch(6)
        .redis(connect(&server).await, Recorder::new(&db, 0))
        .unwrap();
    eventually("the good entries applied", Duration::from_secs(10), || {
        total(&db) == 12
    })
    .await;
    eventually(
        "every entry acknowledged and deleted",
        Duration::from_secs(10),
        || xlen(&server, "garbage") == 0,
    )
    .await;
    // The queue still works.
    q.write(3, 1).await.unwrap();
    eventually("a new write applied", Duration::from_secs(10), || {
        total(&db) == 13
    })
    .await;
    q.shutdown().await;
    let db = db.lock().unwrap();
    assert_eq!(db.totals, HashMap::from([(1, 5), (2, 7), (3, 1)]));
    // The garbage-only batch reached no sink.
    assert_eq!(db.deliveries.iter().map(|d| d.2).sum::<usize>(), 6 + 1);
}

#[test]
fn a_stable_consumer_name_flushes_its_own_pending_batch_at_restart() {
    let server = RedisServer::start();
    let db = Arc::new(Mutex::new(Db::default()));
    let dying = tokio::runtime::Runtime::new().unwrap();
    let hang = Arc::new(tokio::sync::Notify::new());
    dying.block_on(async {
        let mut sink = Recorder::new(&db, 0);
        sink.hang = Some(hang.clone());
        let q = views("restart")
            .claim_idle(Duration::from_secs(60))
            .consumer("shop-1")
            .redis(connect(&server).await, sink)
            .unwrap();
        for n in 0..20u64 {
            q.write(n % 4, 1).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), hang.notified())
            .await
            .unwrap();
        std::mem::forget(q);
    });
    dying.shutdown_background();
    let first = db.lock().unwrap().deliveries[0].1.clone();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let q = views("restart")
            .claim_idle(Duration::from_secs(60))
            .consumer("shop-1")
            .redis(connect(&server).await, Recorder::new(&db, 1))
            .unwrap();
        // Far sooner than claim_idle: its own pending list is read first.
        eventually("20 views applied", Duration::from_secs(10), || {
            total(&db) == 20
        })
        .await;
        q.shutdown().await;
    });
    let db = db.lock().unwrap();
    assert_eq!(db.deliveries[1].1, first, "the same batch, the same id");
    assert_eq!(db.applied.len(), db.deliveries.len() - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_redis_cluster_applies_every_write_once() {
    let cluster = RedisCluster::start(3);
    let db = Arc::new(Mutex::new(Db::default()));
    let mut queues = Vec::new();
    for i in 0..2 {
        let redis = turret_testkit::connect!(&cluster, configure).await;
        queues.push(
            views("cluster-views")
                .redis(redis, Recorder::new(&db, i))
                .unwrap(),
        );
    }
    for n in 0..400u64 {
        queues[(n % 2) as usize].write(n % 20, 1).await.unwrap();
    }
    eventually("400 views applied", Duration::from_secs(20), || {
        total(&db) == 400
    })
    .await;
    for q in &queues {
        q.shutdown().await;
    }
    let db = db.lock().unwrap();
    assert_eq!(db.totals, (0..20).map(|k| (k, 20)).collect());
    let ids: HashSet<&String> = db.deliveries.iter().map(|d| &d.1).collect();
    assert_eq!(ids.len(), db.deliveries.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_while_redis_is_down_is_a_typed_error_and_flushing_resumes_after() {
    let mut server = RedisServer::start();
    let db = Arc::new(Mutex::new(Db::default()));
    let q = views("outage")
        .redis(connect(&server).await, Recorder::new(&db, 0))
        .unwrap();
    q.write(1, 1).await.unwrap();
    eventually("the first view applied", Duration::from_secs(10), || {
        total(&db) == 1
    })
    .await;
    server.stop();
    assert!(matches!(q.write(1, 1).await, Err(WriteError::Redis(_))));
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while q.write(2, 1).await.is_err() {
        assert!(Instant::now() < deadline, "writes never accepted again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(
        "the view after the restart applied",
        Duration::from_secs(15),
        || total(&db) == 2,
    )
    .await;
    q.shutdown().await;
}
