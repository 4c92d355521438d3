//! A Redis Cluster of 3 masters and 3 replicas from the test kit: the master serving every
//! layer's hot key is `SIGKILL`ed under load, its replica takes over, and every layer carries
//! on; while the cluster fails over, each answers as its failure mode says.

#![cfg(feature = "full")]

mod common;

use std::time::{Duration, Instant};

use common::{
    Layer, Load, Outcome, Phase, Report, blocking, connect, layers, recovery_deadline, until,
};
use turret::{cache::RedisStorage, ratelimit::FailureMode, redis::Redis};
use turret_testkit::{RedisCluster, RedisServer};

/// Load tasks per layer (six layers share two cores with six Redis processes).
const TASKS: usize = 6;
/// How long the cluster may take to promote a replica (node timeout 2 s in the test kit,
/// then the replica's election).
const FAILOVER: Duration = Duration::from_secs(15);

/// The first of `/{prefix}0`, `/{prefix}1`… whose Redis key (made by `key`) is served by
/// the master on `port`.
fn on_master(
    cluster: &RedisCluster,
    port: u16,
    prefix: &str,
    key: impl Fn(&str) -> String,
) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|name| cluster.master_of(&key(name)).port() == port)
        .expect("a key on the chosen master")
}

/// The hash slot of `key`, asked of a node that is up.
fn slot(node: &RedisServer, key: &str) -> u16 {
    node.cmd(&["CLUSTER", "KEYSLOT", key])
}

/// Whether every node but `dead` says the cluster is ok and one of them serves `slot` as
/// master; that node's port.
fn failed_over(cluster: &RedisCluster, dead: u16, slot: u16) -> Option<u16> {
    let alive = cluster.nodes().iter().filter(|n| n.port() != dead);
    let mut master = None;
    for node in alive {
        let info: String = node.cmd(&["CLUSTER", "INFO"]);
        if !info.contains("cluster_state:ok") {
            return None;
        }
        let nodes: String = node.cmd(&["CLUSTER", "NODES"]);
        let serves = nodes
            .lines()
            .find(|l| l.contains("myself") && l.contains("master"))
            .is_some_and(|line| {
                line.split_whitespace().skip(8).any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
                })
            });
        if serves {
            master = Some(node.port());
        }
    }
    master
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_under_load_and_every_layer_carries_on() {
    let mut cluster = blocking(|| RedisCluster::start_with_replicas(3, 1));
    let url = cluster.url();
    let keys: Redis = connect(&url).await;

    // The master of the rate limiter's hot key is killed; every other layer's hot key is
    // chosen on the same master.
    let limiter_key = layers::limiter_hot_key(&keys);
    let victim = cluster.master_of(&limiter_key).port();
    let storage = RedisStorage::new(keys.clone());
    let cache_hot = on_master(&cluster, victim, "hot", |p| {
        storage.entry_key(&format!("http://shop.example/{p}"))
    });
    let tiered_hot = on_master(&cluster, victim, "tiered", |p| {
        storage.entry_key(&format!("http://shop.example/{p}"))
    });
    let cond_hot = on_master(&cluster, victim, "doc", |p| {
        keys.key("cond").tag(format!("/{p}")).build()
    });
    let stampede_hot = on_master(&cluster, victim, "hot", |k| keys.key("val").tag(k).build());
    let victim_slot = slot(&cluster.nodes()[0], &limiter_key);

    let layers: Vec<Layer> = vec![
        layers::limiter(&url, FailureMode::Open, false).await,
        layers::limiter(&url, FailureMode::Closed, false).await,
        layers::cache(&url, false, &cache_hot).await,
        layers::cache(&url, true, &tiered_hot).await,
        layers::conditional(&url, &cond_hot).await,
        layers::stampede(&url, &stampede_hot).await,
    ];
    for (i, layer) in layers.iter().enumerate() {
        assert!(
            (layer.normal)(i as u64).await,
            "{}: the normal-operation check fails on a healthy cluster",
            layer.name
        );
    }
    let loads: Vec<Load> = layers
        .iter()
        .map(|l| Load::start(TASKS, l.send.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    for load in &loads {
        load.set_phase(Phase::Fault);
    }
    let killed = Instant::now();
    let index = cluster
        .nodes()
        .iter()
        .position(|n| n.port() == victim)
        .unwrap();
    blocking(|| cluster.nodes_mut()[index].stop());
    let mut promoted = None;
    while promoted.is_none() {
        if killed.elapsed() > FAILOVER {
            let state: Vec<String> = cluster
                .nodes()
                .iter()
                .filter(|n| n.port() != victim)
                .map(|n| {
                    let nodes: String = n.cmd(&["CLUSTER", "NODES"]);
                    let info: String = n.cmd(&["CLUSTER", "INFO"]);
                    let state = info
                        .lines()
                        .find(|l| l.starts_with("cluster_state"))
                        .unwrap_or("")
                        .to_owned();
                    let log =
                        std::fs::read_to_string(n.dir().join("redis.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(12).collect();
                    format!(
                        "node {}: {state}\n{nodes}\nlog: {}",
                        n.port(),
                        tail.join("\n  ")
                    )
                })
                .collect();
            panic!(
                "no replica took over within {FAILOVER:?} (victim {victim}, slot {victim_slot}):\n{}",
                state.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        promoted = blocking(|| failed_over(&cluster, victim, victim_slot));
    }
    let failover = killed.elapsed();
    for load in &loads {
        load.set_phase(Phase::Restored);
    }

    // Every layer back to its normal, Redis-backed, fleet-wide job.
    let mut recovered = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let mut n = 1000 * (i as u64 + 1);
        let after = until(recovery_deadline(), async || {
            n += 1;
            (layer.normal)(n).await
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "{}: not back to normal within {:?} of the failover",
                layer.name,
                recovery_deadline()
            )
        });
        recovered.push(after);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut lines = Vec::new();
    for ((layer, load), after) in layers.iter().zip(loads).zip(recovered) {
        let name = layer.name;
        let report: Report = load.finish().await;
        assert_eq!(report.hung(), 0, "{name}: requests got no answer");
        let healthy = Report::unexpected(
            report
                .samples
                .iter()
                .filter(|s| s.answered_in == Phase::Healthy),
            layer.healthy,
        );
        assert!(
            healthy.is_empty(),
            "{name}: on a healthy cluster: {healthy:?}"
        );
        let failing: Vec<_> = report
            .samples
            .iter()
            .filter(|s| s.answered_in != Phase::Healthy)
            .collect();
        let bad = Report::unexpected(failing.iter().copied(), |o| {
            (layer.degraded)(o) || (layer.healthy)(o)
        });
        assert!(
            bad.is_empty(),
            "{name}: during the failover: {bad:?}, outside the failure mode"
        );
        let degraded = failing
            .iter()
            .filter(|s| !(layer.healthy)(s.outcome))
            .count();
        let five_xx = failing.iter().filter(|s| s.outcome.is_5xx()).count();
        let slowest = failing.iter().map(|s| s.latency).max().unwrap_or_default();
        lines.push(format!(
            "{name}: {} requests during the failover ({degraded} degraded, {five_xx} 5xx, slowest {slowest:?}), back to normal {after:?} after it",
            failing.len()
        ));
        if (layer.degraded)(Outcome::Status(200)) {
            assert_eq!(five_xx, 0, "{name} (fail open): 5xx during the failover");
        }
    }
    eprintln!(
        "[faults] cluster: master on port {victim} killed; replica on port {} promoted {failover:?} later",
        promoted.unwrap()
    );
    for line in lines {
        eprintln!("[faults] cluster: {line}");
    }
}
