//! Shared by the fault tests (`tests/faults_*.rs`): Redis handles with a short command
//! timeout and a fast circuit breaker, a closed-loop load driver that records every request,
//! and the kill / pause scenarios every layer goes through.
//!
//! Every number the scenarios measure is printed on one `[faults]` line per test (run with
//! `--nocapture` to see them); `docs/reliability.md` records the last results.

#![allow(dead_code, unreachable_pub)]

pub mod layers;

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http::{Request, Response};
use tower::{ServiceExt, util::BoxCloneSyncService};
use turret::redis::{BreakerConfig, BreakerState, Redis, RedisConfig};
use turret_testkit::RedisServer;

/// Per-command timeout of every handle in the fault tests (the default is 50 ms; 150 ms keeps
/// a healthy but busy 2-core CI machine from timing out by accident).
pub const CMD_TIMEOUT: Duration = Duration::from_millis(150);
/// Breaker cool-down: how long an open breaker refuses before one probe goes through.
pub const COOL_DOWN: Duration = Duration::from_millis(400);
/// Consecutive failures that open the breaker.
pub const FAILURES: u32 = 3;
/// Scheduling slack on two shared cores, added to every latency bound.
pub const SLACK: Duration = Duration::from_millis(250);
/// Allowance for the connection to be remade after Redis comes back.
pub const RECONNECT: Duration = Duration::from_secs(1);
/// No request may take longer than this, whatever happens to Redis: past it, it "hung".
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between two requests of one load task.
pub const THINK: Duration = Duration::from_millis(2);

/// How long a layer may take to be back to normal once Redis is back: twice the breaker
/// cool-down plus the reconnect allowance.
pub fn recovery_deadline() -> Duration {
    COOL_DOWN * 2 + RECONNECT
}

/// The fault tests' Redis configuration for `url` (one node or `redis+cluster://`).
pub fn config(url: &str) -> RedisConfig {
    RedisConfig::from_url(url)
        .expect("a valid Redis URL")
        .command_timeout(CMD_TIMEOUT)
        .breaker(BreakerConfig {
            failure_threshold: FAILURES,
            cool_down: COOL_DOWN,
        })
}

/// A connected handle: each layer instance gets its own (its own connection and breaker).
pub async fn connect(url: &str) -> Redis {
    Redis::connect(config(url))
        .await
        .expect("connect to the test Redis")
}

/// Runs a blocking test-kit call (kill, restart, pause) without stalling the runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A layer stack over an origin, type-erased.
pub type Svc<B, E = std::convert::Infallible> = BoxCloneSyncService<Request<()>, Response<B>, E>;

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// The service returned an error.
    Err,
    /// No answer within [`REQUEST_DEADLINE`].
    Hung,
}

impl Outcome {
    pub fn is_5xx(self) -> bool {
        matches!(self, Outcome::Status(500..=599))
    }
}

/// Sends one request through `svc` and keeps its status.
pub async fn outcome<B, E>(svc: &Svc<B, E>, req: Request<()>) -> Outcome
where
    B: Send + 'static,
    E: Send + 'static,
{
    match tokio::time::timeout(REQUEST_DEADLINE, svc.clone().oneshot(req)).await {
        Ok(Ok(res)) => Outcome::Status(res.status().as_u16()),
        Ok(Err(_)) => Outcome::Err,
        Err(_) => Outcome::Hung,
    }
}

/// Request number `i` of a load, sent through a layer.
pub type SendFn = Arc<dyn Fn(u64) -> BoxFut<Outcome> + Send + Sync>;

/// A load sender over `svc`: request `i` is `make(i)`.
pub fn sender<B, E>(
    svc: Svc<B, E>,
    make: impl Fn(u64) -> Request<()> + Send + Sync + 'static,
) -> SendFn
where
    B: Send + 'static,
    E: Send + 'static,
{
    let svc = Arc::new(svc);
    Arc::new(move |i| {
        let svc = svc.clone();
        let req = make(i);
        Box::pin(async move { outcome(&svc, req).await })
    })
}

/// The phases of a fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Redis healthy.
    Healthy,
    /// Redis killed or paused.
    Fault,
    /// Redis restarted, or its pause over.
    Restored,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Healthy,
            1 => Phase::Fault,
            _ => Phase::Restored,
        }
    }
}

/// One request of a load.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub started: Instant,
    pub latency: Duration,
    pub outcome: Outcome,
    /// The phase when the request was sent and when its answer came.
    pub sent_in: Phase,
    pub answered_in: Phase,
}

impl Sample {
    pub fn ended(&self) -> Instant {
        self.started + self.latency
    }
}

/// `tasks` tasks each sending requests one after another (a pause of [`THINK`] between
/// two), recording each one, plus a sampler of the runtime's live task count.
pub struct Load {
    stop: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    samples: Arc<Mutex<Vec<Sample>>>,
    alive: Arc<Mutex<Vec<(Instant, Phase, usize)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(tasks: usize, send: SendFn) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(0));
        let samples = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
        let alive = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let (stop, held, phase, samples, next, send) = (
                stop.clone(),
                held.clone(),
                phase.clone(),
                samples.clone(),
                next.clone(),
                send.clone(),
            );
            handles.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if held.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let sent_in = Phase::from_u8(phase.load(Ordering::Relaxed));
                    let started = Instant::now();
                    let outcome = tokio::time::timeout(REQUEST_DEADLINE, send(i))
                        .await
                        .unwrap_or(Outcome::Hung);
                    let latency = started.elapsed();
                    let answered_in = Phase::from_u8(phase.load(Ordering::Relaxed));
                    samples.lock().unwrap().push(Sample {
                        started,
                        latency,
                        outcome,
                        sent_in,
                        answered_in,
                    });
                    tokio::time::sleep(THINK).await;
                }
            }));
        }
        {
            let (stop, phase, alive) = (stop.clone(), phase.clone(), alive.clone());
            let metrics = tokio::runtime::Handle::current().metrics();
            handles.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let p = Phase::from_u8(phase.load(Ordering::Relaxed));
                    alive
                        .lock()
                        .unwrap()
                        .push((Instant::now(), p, metrics.num_alive_tasks()));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        Self {
            stop,
            held,
            phase,
            samples,
            alive,
            tasks: handles,
        }
    }

    /// Holds the tasks (each finishes its request in flight, then idles) or lets them go on.
    pub fn hold(&self, held: bool) {
        self.held.store(held, Ordering::Relaxed);
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// Stops the tasks (each finishes its request in flight) and returns what they saw.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a load task panicked");
        }
        let samples = std::mem::take(&mut *self.samples.lock().unwrap());
        let alive = std::mem::take(&mut *self.alive.lock().unwrap());
        Report { samples, alive }
    }
}

/// What a load saw.
pub struct Report {
    pub samples: Vec<Sample>,
    pub alive: Vec<(Instant, Phase, usize)>,
}

impl Report {
    pub fn sent_in(&self, phase: Phase) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.sent_in == phase)
    }

    pub fn hung(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| s.outcome == Outcome::Hung)
            .count()
    }

    /// The outcomes of `samples` not allowed by `ok`, with a count each.
    pub fn unexpected<'a>(
        samples: impl Iterator<Item = &'a Sample>,
        ok: impl Fn(Outcome) -> bool,
    ) -> Vec<(Outcome, usize)> {
        let mut out: Vec<(Outcome, usize)> = Vec::new();
        for s in samples.filter(|s| !ok(s.outcome)) {
            match out.iter_mut().find(|(o, _)| *o == s.outcome) {
                Some((_, n)) => *n += 1,
                None => out.push((s.outcome, 1)),
            }
        }
        out
    }

    /// The longest time in `[from, to]` during which no request was answered.
    pub fn max_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut ends: Vec<Instant> = self
            .samples
            .iter()
            .map(Sample::ended)
            .filter(|e| *e >= from && *e <= to)
            .collect();
        ends.sort();
        let mut last = from;
        let mut gap = Duration::ZERO;
        for e in ends.into_iter().chain([to]) {
            gap = gap.max(e.saturating_duration_since(last));
            last = e;
        }
        gap
    }

    /// The largest number of live runtime tasks sampled in `phase`.
    pub fn max_alive(&self, phase: Phase) -> usize {
        self.alive
            .iter()
            .filter(|(_, p, _)| *p == phase)
            .map(|(_, _, n)| *n)
            .max()
            .unwrap_or(0)
    }
}

/// The `q`-quantile (0..=1) of some latencies.
pub fn quantile(latencies: impl Iterator<Item = Duration>, q: f64) -> Duration {
    let mut v: Vec<Duration> = latencies.collect();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

/// Polls `check` every 20 ms for up to `within`; the time it took to hold, if it did.
pub async fn until(within: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (polling every millisecond, so that it is seen as it happens) until `redis`'s
/// breaker is open; the time it took.
pub async fn breaker_opens(redis: &Redis, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while redis.breaker_state() != BreakerState::Open {
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Some(start.elapsed())
}

/// A layer under test, as the scenarios see it.
pub struct Layer {
    pub name: &'static str,
    /// The handle whose breaker guards the loaded instance.
    pub redis: Redis,
    /// Request `i` of the load.
    pub send: SendFn,
    /// What a request may get while Redis is healthy.
    pub healthy: fn(Outcome) -> bool,
    /// What a request may get while Redis is down or paused.
    pub degraded: fn(Outcome) -> bool,
    /// Whether the layer does its normal (Redis-backed, fleet-wide) job; `n` numbers the
    /// attempt so that each one can use fresh keys. Must hold while Redis is healthy and
    /// fail while it is down: the scenarios check both.
    pub normal: Arc<dyn Fn(u64) -> BoxFut<bool> + Send + Sync>,
}

/// Load tasks per layer.
pub const TASKS: usize = 16;

/// What [`kill_and_restart`] measured.
#[derive(Debug)]
pub struct KillReport {
    pub requests: usize,
    pub sent_while_down: usize,
    pub five_xx_while_down: usize,
    pub breaker_open_after: Duration,
    /// `n` requests sent one after another while the breaker was open, and their total time
    /// (without the slowest, which may have been the breaker's probe).
    pub fast: (usize, Duration),
    pub fast_slowest: Duration,
    pub max_latency_while_down: Duration,
    pub recovered_after: Duration,
}

/// Redis `SIGKILL`ed under load, then restarted: see `tests/faults_redis_down.rs`.
pub async fn kill_and_restart(server: &mut RedisServer, layer: &Layer) -> KillReport {
    let name = layer.name;
    let mut attempt = 0u64;
    let mut normal = async || {
        attempt += 1;
        (layer.normal)(attempt).await
    };
    assert!(
        normal().await,
        "{name}: the normal-operation check fails with Redis healthy"
    );

    let load = Load::start(TASKS, layer.send.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    load.set_phase(Phase::Fault);
    let kill = Instant::now();
    blocking(|| server.stop());
    let down_from = Instant::now();
    let breaker_open_after = breaker_opens(&layer.redis, Duration::from_secs(3))
        .await
        .unwrap_or_else(|| panic!("{name}: the breaker did not open within 3 s of the kill"))
        + down_from.duration_since(kill);

    // With the breaker open, requests cost no Redis round trip: 50 of them in a row (the
    // load held meanwhile, so that only the layer's own work counts) take less than one
    // command timeout. One of them may be the breaker's probe, bounded by the timeout: it is
    // counted apart.
    load.hold(true);
    const N: u64 = 50;
    let mut outcomes = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..N {
        let start = Instant::now();
        outcomes.push((layer.send)(1_000_000_000 + i).await);
        latencies.push(start.elapsed());
    }
    load.hold(false);
    latencies.sort();
    let slowest = latencies.pop().unwrap_or_default();
    let fast: Duration = latencies.iter().sum();
    assert!(
        fast < CMD_TIMEOUT,
        "{name}: {} requests with the breaker open took {fast:?}, more than one command timeout ({CMD_TIMEOUT:?})",
        N - 1
    );
    assert!(
        slowest <= CMD_TIMEOUT + SLACK,
        "{name}: a request with the breaker open took {slowest:?}"
    );
    let bad: Vec<_> = outcomes.iter().filter(|o| !(layer.degraded)(**o)).collect();
    assert!(bad.is_empty(), "{name}: with the breaker open: {bad:?}");
    assert_ne!(
        layer.redis.breaker_state(),
        BreakerState::Closed,
        "{name}: the breaker closed with Redis down"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !normal().await,
        "{name}: the normal-operation check passes with Redis down"
    );

    blocking(|| server.restart());
    load.set_phase(Phase::Restored);
    let recovered_after = until(recovery_deadline(), &mut normal)
        .await
        .unwrap_or_else(|| {
            panic!(
                "{name}: not back to normal within {:?} of the restart",
                recovery_deadline()
            )
        });
    let back_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.finish().await;

    check_common(name, &report, layer);
    let down: Vec<&Sample> = report
        .sent_in(Phase::Fault)
        .filter(|s| s.started >= down_from)
        .collect();
    let max_latency_while_down = down.iter().map(|s| s.latency).max().unwrap_or_default();
    assert!(
        !down.is_empty(),
        "{name}: no request was answered while Redis was down"
    );
    let after: Vec<_> = Report::unexpected(
        report.samples.iter().filter(|s| s.started > back_at),
        layer.healthy,
    );
    assert!(
        after.is_empty(),
        "{name}: once back to normal, requests still got {after:?}"
    );
    KillReport {
        requests: report.samples.len(),
        sent_while_down: down.len(),
        five_xx_while_down: down.iter().filter(|s| s.outcome.is_5xx()).count(),
        breaker_open_after,
        fast: ((N - 1) as usize, fast),
        fast_slowest: slowest,
        max_latency_while_down,
        recovered_after,
    }
}

/// Checks shared by the scenarios: nothing hung, healthy requests healthy, degraded ones as
/// the failure mode says.
fn check_common(name: &str, report: &Report, layer: &Layer) {
    assert_eq!(
        report.hung(),
        0,
        "{name}: requests got no answer within {REQUEST_DEADLINE:?}"
    );
    let healthy = Report::unexpected(
        report
            .samples
            .iter()
            .filter(|s| s.answered_in == Phase::Healthy),
        layer.healthy,
    );
    assert!(
        healthy.is_empty(),
        "{name}: with Redis healthy, requests got {healthy:?}"
    );
    let degraded = Report::unexpected(
        report
            .samples
            .iter()
            .filter(|s| s.answered_in != Phase::Healthy),
        |o| (layer.degraded)(o) || (layer.healthy)(o),
    );
    assert!(
        degraded.is_empty(),
        "{name}: with Redis failing, requests got {degraded:?}, outside the failure mode"
    );
}

/// What [`pause`] measured.
#[derive(Debug)]
pub struct PauseReport {
    pub healthy_p50: Duration,
    pub healthy_max: Duration,
    pub paused_max: Duration,
    pub sent_while_paused: usize,
    pub max_gap: Duration,
    pub alive_healthy: usize,
    pub alive_paused: usize,
    pub recovered_after: Duration,
}

/// How long the scenario pauses Redis.
pub const PAUSE: Duration = Duration::from_secs(2);

/// Redis paused (`CLIENT PAUSE … ALL`) under load: see `tests/faults_pause.rs`.
pub async fn pause(server: &RedisServer, layer: &Layer) -> PauseReport {
    let name = layer.name;
    let mut attempt = 0u64;
    let mut normal = async || {
        attempt += 1;
        (layer.normal)(attempt).await
    };
    assert!(
        normal().await,
        "{name}: the normal-operation check fails with Redis healthy"
    );

    let load = Load::start(TASKS, layer.send.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    blocking(|| server.pause(PAUSE));
    let paused_at = Instant::now();
    load.set_phase(Phase::Fault);
    tokio::time::sleep(PAUSE).await;
    load.set_phase(Phase::Restored);
    let recovered_after = until(recovery_deadline(), &mut normal)
        .await
        .unwrap_or_else(|| {
            panic!(
                "{name}: not back to normal within {:?} of the pause's end",
                recovery_deadline()
            )
        });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = load.finish().await;

    check_common(name, &report, layer);
    let healthy: Vec<Duration> = report
        .samples
        .iter()
        .filter(|s| s.answered_in == Phase::Healthy)
        .map(|s| s.latency)
        .collect();
    let paused: Vec<&Sample> = report.sent_in(Phase::Fault).collect();
    let paused_max = paused.iter().map(|s| s.latency).max().unwrap_or_default();
    // The bounds are not latencies to meet (a shared 2-core machine stalls for hundreds of
    // milliseconds at times) but what tells "gave up after the command timeout" from "waited
    // for Redis": a request that waits for Redis is answered only when the pause ends.
    // Half the pause is more than six command timeouts.
    let bound = PAUSE / 2;
    // The command timeout respected: every request sent in the pause's first quarter (it
    // would wait for Redis at least three quarters of the pause) is answered within half of it.
    let early: Vec<&&Sample> = paused
        .iter()
        .filter(|s| s.started < paused_at + PAUSE / 4)
        .collect();
    assert!(
        !early.is_empty(),
        "{name}: no request was sent in the first quarter of the pause"
    );
    let early_max = early.iter().map(|s| s.latency).max().unwrap_or_default();
    assert!(
        early_max < bound,
        "{name}: a request sent early in the pause took {early_max:?}: it waited for Redis, not for the command timeout ({CMD_TIMEOUT:?})"
    );
    // Steady: answers keep coming during the whole pause (with requests waiting for Redis,
    // none would come until its end).
    let max_gap = report.max_gap(paused_at, paused_at + PAUSE);
    assert!(
        max_gap < bound,
        "{name}: no request was answered for {max_gap:?} during the pause"
    );
    // No pile-up: the runtime's live tasks stay at their healthy level.
    let (alive_healthy, alive_paused) = (
        report.max_alive(Phase::Healthy),
        report.max_alive(Phase::Fault),
    );
    assert!(
        alive_paused <= alive_healthy + TASKS,
        "{name}: {alive_paused} live tasks during the pause, {alive_healthy} before"
    );
    PauseReport {
        healthy_p50: quantile(healthy.iter().copied(), 0.5),
        healthy_max: healthy.iter().copied().max().unwrap_or_default(),
        paused_max,
        sent_while_paused: paused.len(),
        max_gap,
        alive_healthy,
        alive_paused,
        recovered_after,
    }
}
