//! The load benchmark driver: starts a real redis-server, then each scenario as its own
//! server process on loopback, drives it with `wrk` (keep-alive, fixed concurrency, a
//! warm-up that requests every id in turn, the median of several measured runs), measures
//! the Redis round-trip limit with `redis-benchmark`, and writes a Markdown table and two
//! SVG charts.
//!
//! ```text
//! cargo build --release -p turret-bench
//! target/release/turret-bench [--duration 3] [--warmup 2] [--connections 64,400] [--repeat 3]
//!                             [--scenarios raw,turret-cache-memory,…] [--out-dir docs/benchmarks]
//!                             [--no-redis-benchmark] [--quiet 30 [--quiet-limit 900]]
//!                             [--pairs 5]   # the ratio targets as pairs of fresh starts
//! target/release/turret-bench --charts-from docs/benchmarks/results.tsv   # redraw the charts
//! ```
//! `scripts/bench` does both and installs `wrk` and `redis-server` when they are missing.
//!
//! Per scenario and concurrency: requests/s, p50/p95/p99/p99.9 (wrk's latency histogram,
//! read in a Lua `done` hook), the ratio to the ceiling (`raw`, or `raw-<n>ms` for scenarios
//! with that origin delay) of the same run, origin calls per request (the server's
//! `/__origin_calls` before and after), Redis commands per request (`INFO commandstats`
//! deltas, commands run by scripts included), the CPU time the server, wrk and redis-server
//! each spent per request, the server's peak RSS, and the share of the CPU that other
//! processes used meanwhile.
//!
//! The write scenarios (`views-direct`, `views-writebehind-redis`, `views-writebehind-memory`;
//! `--scenarios views` names all three) are not in the default run: `POST /views/{id}` on a
//! SQLite file database, directly or through write-behind. Their rows also go to a section of
//! their own (accepted writes/s against `views-direct`, Redis commands per accepted write),
//! and after a scenario's last run the driver flushes its queue and checks that the database
//! counts exactly the writes answered `204`.
//!
//! `--pairs N` measures the ratio targets instead (those whose two scenarios are selected):
//! N pairs of fresh server starts each, the scenario and its base one after the other, and
//! writes the median of the per-pair ratios with their range to `paired.md`. One start of a
//! server moves its row by about ±10% on two shared cores, more than most goals' margins.
//!
//! `--quiet N`, on a machine others use: before each scenario, wait until no `rustc` has
//! run and other processes used under 3% of the CPU for N seconds in a row (3 s before each
//! measured run), at most `--quiet-limit` seconds (900) per wait, and measure a disturbed run
//! again (twice per row at most).

mod charts;
mod load;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use turret_testkit::RedisServer;

/// The rate of `turret-redis-delay` (as in `bench-server`).
const DELAY_RATE: u32 = 2000;

/// The rate-limit and conditional scenarios (origin delay 0 ms).
const LAYERS: &[&str] = &[
    "raw",
    "turret-memory",
    "turret-memory-no-fields",
    "tower-governor",
    "turret-redis-gcra",
    "turret-redis-gcra-many-keys",
    "turret-redis-gcra-two-quotas",
    "turret-redis-delay",
    "turret-redis-fixed",
    "incr-expire",
    "turret-conditional",
];

/// The response caches and their peers; each also runs with a 2 ms origin (`-2ms`).
const CACHES: &[&str] = &[
    "turret-cache-memory",
    "turret-cache-tiered",
    "turret-cache-redis",
    "redis-cache-aside",
    "http-cache-tower-server",
];

/// The full stack and the FastAPI peers (origin delay 0 ms).
const FULL_STACK: &[&str] = &["turret-full-stack", "fastapi-stack", "fastapi"];

/// The write scenarios (`POST /views/{id}` on SQLite, directly or through write-behind):
/// not in the default run; named with `--scenarios`, or all of them as `views`.
const VIEWS: &[&str] = &[
    "views-direct",
    "views-direct-normal",
    "views-writebehind-redis",
    "views-writebehind-memory",
];

fn is_views(scenario: &str) -> bool {
    scenario.starts_with("views-")
}

/// The controls: a ceiling or a peer sending the same fields as a layer, as constants, next
/// to the scenario they are a control for (rows measured minutes apart drift on a shared
/// machine). `raw-plus-5-headers`: the origin with the rate limiter's five fields;
/// `raw-plus-cache-headers`: with the three a cache hit adds; the same three on the
/// hand-written cache-aside's hits.
const CONTROLS: &[(&str, &str)] = &[
    ("turret-memory", "raw-plus-5-headers"),
    ("turret-cache-memory", "raw-plus-cache-headers"),
    ("redis-cache-aside", "redis-cache-aside-plus-cache-headers"),
];

fn default_scenarios() -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for s in LAYERS.iter().chain(CACHES) {
        all.push(s.to_string());
        if let Some((_, control)) = CONTROLS.iter().find(|(after, _)| after == s) {
            all.push(control.to_string());
        }
    }
    // Every layer with Redis, and the Python stack teams run instead (with Python's own
    // ceiling: FastAPI without Redis).
    all.extend(FULL_STACK.iter().map(|s| s.to_string()));
    all.push("raw-2ms".into());
    all.extend(CACHES.iter().map(|s| format!("{s}-2ms")));
    // The stampede layer: concurrent identical GETs share one origin call, no cache.
    all.push("turret-coalesce-2ms".into());
    all
}

/// Measured runs: random ids.
const MEASURE_LUA: &str = r#"math.randomseed(os.time())
request = function() return wrk.format('GET', '/items/' .. math.random(0, 999)) end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("TURRET-SUMMARY %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency:percentile(99.9),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"#;

/// Warm-up: every id in turn, over and over, so each one is requested (and cached) before
/// the measured period, whatever the rate.
const WARM_LUA: &str = r#"local n = 0
request = function()
  n = n + 1
  return wrk.format('GET', '/items/' .. (n % 1000))
end
"#;

/// The write scenarios' measured runs: one view of a random product per request. The summary
/// adds the responses that were not 2xx/3xx (`errors.status`).
const VIEWS_MEASURE_LUA: &str = r#"math.randomseed(os.time())
request = function() return wrk.format('POST', '/views/' .. math.random(0, 999)) end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("TURRET-SUMMARY %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency:percentile(99.9),
    e.connect + e.read + e.write + e.status + e.timeout, e.status))
end
"#;

/// The write scenarios' warm-up: every product in turn.
const VIEWS_WARM_LUA: &str = r#"local n = 0
request = function()
  n = n + 1
  return wrk.format('POST', '/views/' .. (n % 1000))
end
"#;

struct Options {
    duration: u64,
    warmup: u64,
    connections: Vec<u32>,
    repeat: usize,
    scenarios: Vec<String>,
    out_dir: PathBuf,
    redis_benchmark: bool,
    charts_from: Option<PathBuf>,
    quiet: u64,
    quiet_limit: u64,
    /// `--pairs N`: measure the ratio targets as N pairs of fresh server starts instead.
    pairs: usize,
}

fn options() -> Options {
    let mut o = Options {
        duration: 3,
        warmup: 2,
        connections: vec![64, 400],
        repeat: 3,
        scenarios: default_scenarios(),
        out_dir: PathBuf::from("docs/benchmarks"),
        redis_benchmark: true,
        charts_from: None,
        quiet: 0,
        quiet_limit: 900,
        pairs: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--duration" => o.duration = value.parse().expect("--duration seconds"),
            "--warmup" => o.warmup = value.parse().expect("--warmup seconds"),
            "--connections" => {
                o.connections = value
                    .split(',')
                    .map(|c| c.parse().expect("--connections"))
                    .collect()
            }
            "--repeat" => o.repeat = value.parse().expect("--repeat n"),
            "--scenarios" => {
                o.scenarios = value
                    .split(',')
                    .flat_map(|s| match s {
                        "views" => VIEWS.iter().map(|v| v.to_string()).collect(),
                        _ => vec![s.to_owned()],
                    })
                    .collect()
            }
            "--out-dir" => o.out_dir = PathBuf::from(value),
            "--charts-from" => o.charts_from = Some(PathBuf::from(value)),
            "--quiet" => o.quiet = value.parse().expect("--quiet seconds"),
            "--quiet-limit" => o.quiet_limit = value.parse().expect("--quiet-limit seconds"),
            "--pairs" => o.pairs = value.parse().expect("--pairs n"),
            "--no-redis-benchmark" => {
                o.redis_benchmark = false;
                i += 1;
                continue;
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    o
}

#[derive(Debug, Clone, Default)]
struct Run {
    rps: f64,
    requests: u64,
    /// p50, p95, p99, p99.9 in ms.
    latency: [f64; 4],
    errors: u64,
    /// Responses with a status of 400 or more (the write scenarios' summary only).
    status_errors: u64,
    redis_per_request: f64,
    /// Per command name, calls per request (those ≥ 0.005).
    commands: Vec<(String, f64)>,
    origin_per_request: f64,
    /// The share of the CPU other processes used during the measured period.
    other_cpu: f64,
    /// CPU time per request in µs: the server, wrk, redis-server (`load::cpu_per_request`).
    cpu: [f64; 3],
    /// Other processes used more than `load::DISTURBED` of the CPU, or a `rustc` ran.
    disturbed: bool,
}

/// Reads the `TURRET-SUMMARY` line the Lua `done` hook prints.
fn parse_wrk(out: &str) -> Run {
    let mut run = Run::default();
    let Some(line) = out.lines().find_map(|l| l.strip_prefix("TURRET-SUMMARY ")) else {
        eprintln!("wrk printed no summary:\n{out}");
        run.latency = [f64::NAN; 4];
        return run;
    };
    let n: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if n.len() < 7 {
        run.latency = [f64::NAN; 4];
        return run;
    }
    run.requests = n[0];
    run.rps = n[0] as f64 / (n[1] as f64 / 1e6).max(1e-9);
    for i in 0..4 {
        run.latency[i] = n[2 + i] as f64 / 1000.0;
    }
    run.errors = n[6];
    run.status_errors = n.get(7).copied().unwrap_or(0);
    run
}

fn wrk(port: u16, connections: u32, seconds: u64, script: &Path) -> String {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "-s",
        ])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("run wrk (apt-get install wrk, or use scripts/bench)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Python interpreter of the FastAPI peer's virtualenv: `TURRET_BENCH_PYTHON`, or
/// `target/bench-venv/bin/python` (where `scripts/bench` installs it).
fn python() -> PathBuf {
    std::env::var_os("TURRET_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench-venv/bin/python"))
}

/// The FastAPI peer's server, beside this crate's sources.
const FASTAPI_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fastapi/app.py");

fn is_python(scenario: &str) -> bool {
    scenario.starts_with("fastapi")
}

/// Starts a scenario's server and waits until it answers.
fn spawn_server(scenario: &str, port: u16, redis_url: &str) -> Child {
    let mut command = if is_python(scenario) {
        let mut c = Command::new(python());
        // Its shared counter files go to the run's own directory.
        c.arg(FASTAPI_APP).env("TMPDIR", tempfile_dir());
        c
    } else {
        Command::new(
            std::env::current_exe()
                .expect("own path")
                .with_file_name("bench-server"),
        )
    };
    let mut child = command
        .args([scenario, &port.to_string(), redis_url])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("start the {scenario} server: {e} (build with scripts/bench, which also installs the FastAPI virtualenv)")
        });
    let started = Instant::now();
    while !answers(port) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the {scenario} server exited at start: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the {scenario} server did not answer within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Stops a server. (The FastAPI peer's workers exit when they see their parent gone.)
fn stop_server(mut server: Child) {
    let _ = server.kill();
    let _ = server.wait();
}

/// The reply to `GET /__origin_calls`, which every scenario's server answers outside its
/// middleware.
fn origin_reply(port: u16) -> Option<String> {
    http_get(port, "/__origin_calls", Duration::from_secs(5))
}

/// One `GET` on a fresh connection: the whole reply.
fn http_get(port: u16, path: &str, timeout: Duration) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    Some(reply)
}

/// What a write scenario's database holds after its queue was flushed (`/__views_total`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct ViewsCheck {
    /// The views the database counts.
    in_db: i64,
    /// The writes the server answered `204` for, warm-up included.
    accepted: u64,
    /// How long the final flush took.
    flush_ms: u64,
}

impl ViewsCheck {
    fn parse(body: &str) -> Option<Self> {
        let mut f = body.split_whitespace();
        Some(Self {
            in_db: f.next()?.parse().ok()?,
            accepted: f.next()?.parse().ok()?,
            flush_ms: f.next()?.parse().ok()?,
        })
    }

    fn holds(&self) -> bool {
        u64::try_from(self.in_db) == Ok(self.accepted)
    }
}

/// Flushes a write scenario's queue and reads its database's count.
fn views_check(port: u16) -> Option<ViewsCheck> {
    let reply = http_get(port, "/__views_total", Duration::from_secs(120))?;
    ViewsCheck::parse(reply.split("\r\n\r\n").nth(1)?)
}

/// Whether the server answers yet.
fn answers(port: u16) -> bool {
    origin_reply(port).is_some_and(|r| r.starts_with("HTTP/1.1 200"))
}

/// The server's count of origin handler calls.
fn origin_calls(port: u16) -> u64 {
    origin_reply(port)
        .and_then(|reply| {
            reply
                .split("\r\n\r\n")
                .nth(1)
                .and_then(|body| body.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Commands Redis processed (those a script runs count too), and calls per command.
fn redis_commands(server: &RedisServer) -> (u64, BTreeMap<String, u64>) {
    let stats: String = server.cmd(&["INFO", "stats"]);
    let total = stats
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let commandstats: String = server.cmd(&["INFO", "commandstats"]);
    let per_command = commandstats
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect();
    (total, per_command)
}

/// The peak RSS of a server: of each of its processes, summed (the FastAPI peer runs one
/// worker process per core).
fn peak_rss_mib(pid: u32) -> f64 {
    let kb: Vec<f64> = load::process_tree(pid)
        .iter()
        .filter_map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .collect();
    if kb.is_empty() {
        f64::NAN
    } else {
        kb.iter().sum::<f64>() / 1024.0
    }
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let disturbed = runs.iter().any(|r| r.disturbed);
    let other = runs.iter().map(|r| r.other_cpu).fold(0.0, f64::max);
    let mut run = runs[runs.len() / 2].clone();
    run.disturbed = disturbed;
    run.other_cpu = other;
    run
}

fn redis_pid(server: &RedisServer) -> u32 {
    let info: String = server.cmd(&["INFO", "server"]);
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `raw-2ms` → the ceiling for `…-2ms` scenarios; `raw` for the rest.
fn ceiling_of(scenario: &str) -> String {
    match scenario.rsplit_once('-') {
        Some((_, suffix))
            if suffix
                .strip_suffix("ms")
                .is_some_and(|n| n.parse::<u64>().is_ok()) =>
        {
            format!("raw-{suffix}")
        }
        _ => "raw".into(),
    }
}

fn delay_of(scenario: &str) -> &str {
    match scenario.rsplit_once('-') {
        Some((_, suffix))
            if suffix
                .strip_suffix("ms")
                .is_some_and(|n| n.parse::<u64>().is_ok()) =>
        {
            suffix
        }
        _ => "0ms",
    }
}

struct Row {
    scenario: String,
    connections: u32,
    run: Run,
    rss: f64,
}

/// A `redis-benchmark` result.
struct RoundTrip {
    test: String,
    connections: u32,
    rps: f64,
    /// p50, p95, p99 in ms.
    latency: [f64; 3],
}

fn redis_benchmark(port: u16, connections: u32, requests: u32, args: &[&str]) -> Vec<RoundTrip> {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-c",
            &connections.to_string(),
            "-n",
            &requests.to_string(),
            "--csv",
        ])
        .args(args)
        .output();
    let Ok(out) = out else {
        eprintln!("redis-benchmark not found: no round-trip rows");
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
            // test, rps, avg, min, p50, p95, p99, max
            (f.len() >= 8).then(|| RoundTrip {
                test: f[0].split_whitespace().next().unwrap_or(f[0]).to_owned(),
                connections,
                rps: f[1].parse().unwrap_or(f64::NAN),
                latency: [
                    f[4].parse().unwrap_or(f64::NAN),
                    f[5].parse().unwrap_or(f64::NAN),
                    f[6].parse().unwrap_or(f64::NAN),
                ],
            })
        })
        .collect()
}

/// One throughput and one latency chart per origin delay: `throughput.svg` and
/// `latency.svg` for 0 ms, `throughput-2ms.svg` and `latency-2ms.svg` for 2 ms.
fn write_charts(dir: &Path, points: &[charts::Point]) {
    std::fs::create_dir_all(dir).expect("create the output directory");
    let mut delays: Vec<&str> = Vec::new();
    for p in points {
        if !delays.contains(&delay_of(&p.scenario)) {
            delays.push(delay_of(&p.scenario));
        }
    }
    for delay in delays {
        let group: Vec<charts::Point> = points
            .iter()
            .filter(|p| delay_of(&p.scenario) == delay)
            .cloned()
            .collect();
        let suffix = if delay == "0ms" {
            String::new()
        } else {
            format!("-{delay}")
        };
        let origin = delay.replace("ms", " ms");
        std::fs::write(
            dir.join(format!("throughput{suffix}.svg")),
            charts::throughput_svg(
                &group,
                &format!("Throughput ÷ the ceiling (axum, no middleware), origin {origin}"),
            ),
        )
        .expect("write the throughput chart");
        std::fs::write(
            dir.join(format!("latency{suffix}.svg")),
            charts::latency_svg(
                &group,
                &format!("Latency percentiles (wrk, keep-alive), origin {origin}"),
            ),
        )
        .expect("write the latency chart");
        eprintln!(
            "wrote throughput{suffix}.svg, latency{suffix}.svg in {}",
            dir.display()
        );
    }
}

fn main() {
    let o = options();
    if let Some(tsv) = &o.charts_from {
        let text = std::fs::read_to_string(tsv).expect("read the points");
        write_charts(&o.out_dir, &charts::read_tsv(&text));
        return;
    }
    let started = Instant::now();
    let redis = RedisServer::start();
    let dir = tempfile_dir();
    let measure = dir.join("measure.lua");
    let warm = dir.join("warm.lua");
    let views_measure = dir.join("views-measure.lua");
    let views_warm = dir.join("views-warm.lua");
    for (path, script) in [
        (&measure, MEASURE_LUA),
        (&warm, WARM_LUA),
        (&views_measure, VIEWS_MEASURE_LUA),
        (&views_warm, VIEWS_WARM_LUA),
    ] {
        std::fs::write(path, script).expect("write wrk script");
    }
    if o.pairs > 0 {
        let md = paired(&o, &redis, &measure, &warm, started);
        std::fs::create_dir_all(&o.out_dir).expect("create the output directory");
        std::fs::write(o.out_dir.join("paired.md"), &md).expect("write paired.md");
        eprintln!("{md}\nwrote {}", o.out_dir.join("paired.md").display());
        return;
    }
    let mut checks: Vec<(String, Option<ViewsCheck>)> = Vec::new();

    let steps = o.scenarios.len() * o.connections.len();
    let per_step = o.warmup + o.duration * o.repeat as u64;
    eprintln!(
        "{} scenarios × {} concurrencies: {}s warm-up + {} × {}s measured each, about {} min",
        o.scenarios.len(),
        o.connections.len(),
        o.warmup,
        o.repeat,
        o.duration,
        (steps as u64 * per_step + 30).div_ceil(60)
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut step = 0;
    let mut disturbed_runs = 0;
    let mut measured_runs = 0;
    let mut waited = Duration::ZERO;
    let redis_pid = redis_pid(&redis);
    for scenario in &o.scenarios {
        // Every scenario starts from an empty Redis: caches fill during the warm-up.
        let _: String = redis.cmd(&["FLUSHALL"]);
        let port = free_port();
        if is_python(scenario) && !python().exists() {
            eprintln!(
                "{scenario}: skipped, no Python virtualenv at {} (scripts/bench installs it)",
                python().display()
            );
            continue;
        }
        let server = spawn_server(scenario, port, &redis.url());
        let (measure, warm) = if is_views(scenario) {
            (&views_measure, &views_warm)
        } else {
            (&measure, &warm)
        };
        let probe = load::Probe {
            server: server.id(),
            redis: redis_pid,
        };
        let quiet = |seconds: u64| {
            if o.quiet == 0 {
                return Duration::ZERO;
            }
            probe.wait_for_quiet(
                Duration::from_secs(seconds),
                Duration::from_secs(o.quiet_limit),
            )
        };
        for &c in &o.connections {
            step += 1;
            let elapsed = started.elapsed().as_secs();
            eprint!("[{step}/{steps} {elapsed:>3}s] {scenario} c={c}:");
            let _ = std::io::stderr().flush();
            waited += quiet(o.quiet);
            eprint!(" warm-up");
            let _ = std::io::stderr().flush();
            wrk(port, c, o.warmup, warm);
            let mut runs = Vec::new();
            let mut again = 0;
            while runs.len() < o.repeat {
                waited += quiet(o.quiet.min(3));
                eprint!(", run {}", runs.len() + 1);
                let _ = std::io::stderr().flush();
                let calls0 = origin_calls(port);
                let (commands0, per0) = redis_commands(&redis);
                let mut run = measured(&probe, port, c, o.duration, measure);
                let (commands1, per1) = redis_commands(&redis);
                let calls1 = origin_calls(port);
                measured_runs += 1;
                if run.disturbed && o.quiet > 0 && again < 2 {
                    again += 1;
                    eprint!(
                        " (disturbed: others used {:.0}% of the CPU; again)",
                        run.other_cpu * 100.0
                    );
                    waited += quiet(o.quiet);
                    continue;
                }
                disturbed_runs += usize::from(run.disturbed);
                let requests = run.requests.max(1) as f64;
                // The first snapshot's two INFO commands count too.
                run.redis_per_request = (commands1 - commands0).saturating_sub(2) as f64 / requests;
                run.commands = per1
                    .iter()
                    .filter(|(name, _)| name.as_str() != "info")
                    .map(|(name, &n)| {
                        let before = per0.get(name).copied().unwrap_or(0);
                        (
                            name.to_uppercase(),
                            n.saturating_sub(before) as f64 / requests,
                        )
                    })
                    .filter(|(_, per)| *per >= 0.005)
                    .collect();
                run.origin_per_request = calls1.saturating_sub(calls0) as f64 / requests;
                runs.push(run);
            }
            let run = median(runs);
            eprintln!(
                ": {:.0} req/s, p99 {:.2} ms, origin {:.3}/req, Redis {:.2}/req, CPU µs/req {:.1} / {:.1} / {:.1}, others {:.0}% CPU{}",
                run.rps,
                run.latency[2],
                run.origin_per_request,
                run.redis_per_request,
                run.cpu[0],
                run.cpu[1],
                run.cpu[2],
                run.other_cpu * 100.0,
                if run.disturbed { " (disturbed)" } else { "" }
            );
            rows.push(Row {
                scenario: scenario.clone(),
                connections: c,
                run,
                rss: f64::NAN,
            });
        }
        let rss = peak_rss_mib(server.id());
        for row in rows.iter_mut().filter(|r| &r.scenario == scenario) {
            row.rss = rss;
        }
        if is_views(scenario) {
            let check = views_check(port);
            match &check {
                Some(c) => eprintln!(
                    "{scenario}: {} writes accepted, the database counts {} ({}; final flush {} ms)",
                    c.accepted,
                    c.in_db,
                    if c.holds() { "equal" } else { "DIFFERENT" },
                    c.flush_ms
                ),
                None => eprintln!("{scenario}: no answer from /__views_total"),
            }
            checks.push((scenario.clone(), check));
        }
        stop_server(server);
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut round_trips = Vec::new();
    if o.redis_benchmark {
        eprint!("redis-benchmark: GET (1 KB values) and EVALSHA of `return 1`");
        let _ = std::io::stderr().flush();
        let sha: String = redis.cmd(&["SCRIPT", "LOAD", "return 1"]);
        if o.quiet > 0 {
            let probe = load::Probe {
                server: 0,
                redis: redis_pid,
            };
            waited += probe.wait_for_quiet(
                Duration::from_secs(o.quiet),
                Duration::from_secs(o.quiet_limit),
            );
        }
        for &c in &o.connections {
            eprint!(", c={c}");
            let _ = std::io::stderr().flush();
            round_trips.extend(
                redis_benchmark(redis.port(), c, 200_000, &["-t", "set,get", "-d", "1024"])
                    .into_iter()
                    .filter(|r| r.test == "GET"),
            );
            round_trips.extend(redis_benchmark(
                redis.port(),
                c,
                200_000,
                &["EVALSHA", &sha, "0"],
            ));
        }
        eprintln!();
    }
    let total = started.elapsed();

    let mut md = report(
        &o,
        &rows,
        &round_trips,
        total,
        waited,
        disturbed_runs,
        measured_runs,
    );
    md.push_str(&views_report(&rows, &checks));
    println!("{md}");
    std::fs::create_dir_all(&o.out_dir).expect("create the output directory");
    let results = o.out_dir.join("results.md");
    std::fs::write(&results, md).expect("write the results table");

    // The charts compare GET scenarios with their ceiling; the write scenarios have none.
    let points: Vec<charts::Point> = rows
        .iter()
        .filter(|r| !is_views(&r.scenario))
        .map(|r| charts::Point {
            scenario: r.scenario.clone(),
            connections: r.connections,
            ratio: r.run.rps / ceiling_rps(&rows, &r.scenario, r.connections),
            latency: r.run.latency,
        })
        .collect();
    std::fs::write(o.out_dir.join("results.tsv"), charts::to_tsv(&points))
        .expect("write results.tsv");
    write_charts(&o.out_dir, &points);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "wrote {}, results.tsv and the charts; {:.0}s in all",
        results.display(),
        total.as_secs_f64()
    );
}

/// Writes a write scenario's server answered `204` (2xx) for, per second, as wrk saw them.
/// The date and time, UTC, to the minute (`date -u`).
fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The CPU's model name (`/proc/cpuinfo`).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default()
}

/// One measured `wrk` run, with the CPU the run's processes and the others used meanwhile.
fn measured(probe: &load::Probe, port: u16, c: u32, seconds: u64, script: &Path) -> Run {
    let before = probe.sample();
    let mut run = parse_wrk(&wrk(port, c, seconds, script));
    let after = probe.sample();
    run.other_cpu = load::other_share(&before, &after);
    run.cpu = load::cpu_per_request(&before, &after, run.requests);
    run.disturbed = before.rustc || after.rustc || run.other_cpu > load::DISTURBED;
    run
}

/// One fresh start of a scenario's server: an empty Redis, the warm-up, one measured run.
fn one_start(
    o: &Options,
    redis: &RedisServer,
    scenario: &str,
    c: u32,
    measure: &Path,
    warm: &Path,
) -> Run {
    let _: String = redis.cmd(&["FLUSHALL"]);
    let port = free_port();
    let server = spawn_server(scenario, port, &redis.url());
    let probe = load::Probe {
        server: server.id(),
        redis: redis_pid(redis),
    };
    wrk(port, c, o.warmup, warm);
    if o.quiet > 0 {
        probe.wait_for_quiet(
            Duration::from_secs(o.quiet.min(3)),
            Duration::from_secs(o.quiet_limit),
        );
    }
    let run = measured(&probe, port, c, o.duration, measure);
    stop_server(server);
    std::thread::sleep(Duration::from_millis(200));
    run
}

/// The middle value (the mean of the two middle ones for an even count); NaN for none.
fn middle(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// `--pairs N`: every ratio target whose two scenarios are selected, measured as N pairs of
/// fresh server starts, the scenario and its base one after the other (the order swapped
/// every other pair), each with its warm-up and one measured run. A server start moves a
/// row by ±10% on the shared two cores (which worker the connections land on, how often a
/// worker parks), more than most goals' margins; the median of N per-pair ratios samples
/// that instead of taking one start's luck.
fn paired(
    o: &Options,
    redis: &RedisServer,
    measure: &Path,
    warm: &Path,
    started: Instant,
) -> String {
    let selected = |s: &str| o.scenarios.iter().any(|x| x == s);
    let chosen: Vec<_> = RATIOS
        .iter()
        .filter(|(_, a, b, _)| selected(a) && selected(b))
        .filter(|(_, a, b, _)| !(is_python(a) || is_python(b)) || python().exists())
        .collect();
    eprintln!(
        "{} targets × {} concurrencies × {} pairs: {}s warm-up + {}s measured per start",
        chosen.len(),
        o.connections.len(),
        o.pairs,
        o.warmup,
        o.duration
    );
    let mut md = format!(
        "Generated by `turret-bench --pairs {}` on {}: {} cores ({}). Each target: {} pairs of \
         fresh server starts, the scenario and its base one after the other (the order swapped \
         every other pair), {}s warm-up and one {}s run each; the ratio is the median of the \
         per-pair ratios, with their range. CPU: the server's CPU µs per request, medians of \
         the starts. Disturbed: runs during which a `rustc` ran or other processes used over \
         {:.0}% of the CPU (not measured again).\n\n\
         | target | conns | ratio (median) | range | goal | met | server CPU µs/req (scenario / base) | disturbed runs |\n\
         |---|---:|---:|---|---:|---|---:|---:|\n",
        o.pairs,
        utc_now(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        o.pairs,
        o.warmup,
        o.duration,
        load::DISTURBED * 100.0
    );
    for &&(label, a, b, goal) in &chosen {
        for &c in &o.connections {
            let (mut ratios, mut cpu_a, mut cpu_b, mut disturbed) = (vec![], vec![], vec![], 0);
            for i in 0..o.pairs {
                let elapsed = started.elapsed().as_secs();
                eprint!("[{elapsed:>4}s] {label}, c={c}, pair {}:", i + 1);
                let order = if i % 2 == 0 { [a, b] } else { [b, a] };
                let mut rps = [0.0; 2];
                for s in order {
                    let run = one_start(o, redis, s, c, measure, warm);
                    eprint!(" {s} {:.0}", run.rps);
                    disturbed += usize::from(run.disturbed);
                    if s == a {
                        rps[0] = run.rps;
                        cpu_a.push(run.cpu[0]);
                    } else {
                        rps[1] = run.rps;
                        cpu_b.push(run.cpu[0]);
                    }
                }
                let ratio = rps[0] / rps[1];
                eprintln!(": {ratio:.2}");
                if ratio.is_finite() {
                    ratios.push(ratio);
                }
            }
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let ratio = middle(ratios);
            md.push_str(&format!(
                "| {label} | {c} | {ratio:.2} | {lo:.2}–{hi:.2} | ≥ {goal:.2} | {} | {:.1} / {:.1} | {disturbed} |\n",
                if ratio >= goal { "yes" } else { "**no**" },
                middle(cpu_a),
                middle(cpu_b),
            ));
        }
    }
    md.push_str(&format!(
        "\n{:.0}s in all.\n",
        started.elapsed().as_secs_f64()
    ));
    md
}

fn accepted_rps(run: &Run) -> f64 {
    run.rps * (run.requests.saturating_sub(run.status_errors) as f64 / run.requests.max(1) as f64)
}

fn accepted_of(rows: &[Row], scenario: &str, c: u32) -> f64 {
    rows.iter()
        .find(|r| r.scenario == scenario && r.connections == c)
        .map_or(f64::NAN, |r| accepted_rps(&r.run))
}

/// The write scenarios' section: accepted writes per second against the direct `UPDATE`,
/// Redis commands per accepted write, and whether the database counts every accepted write.
fn views_report(rows: &[Row], checks: &[(String, Option<ViewsCheck>)]) -> String {
    let views: Vec<&Row> = rows.iter().filter(|r| is_views(&r.scenario)).collect();
    if views.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Writes: view counting on SQLite\n\n\
         `POST /views/{id}` over 1,000 products, a SQLite file database (WAL; the direct \
         scenarios on sqlx's default pool of 10 connections). `views-direct`: one `UPDATE … SET views = views + 1` per request, \
         SQLite's default `synchronous = FULL` (each commit synced to disk); \
         `views-direct-normal`: the same with `synchronous = NORMAL`; `views-writebehind-*`: \
         write-behind (fold: sum; one `synchronous = FULL` transaction per batch of up to \
         4,096 writes, recording the batch id), the queue on a Redis Stream or in memory. \
         Accepted: answered \
         `204` (a full queue answers `503`). Redis/write: commands Redis processed per accepted \
         write, the flusher's included.\n\n\
         | scenario | conns | accepted writes/s | × views-direct | p50 ms | p99 ms | Redis/write | Redis commands/write | non-2xx or errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---|---:|\n",
    );
    for r in &views {
        let run = &r.run;
        // Per accepted write: the server's count of them (`/__origin_calls`) in the period.
        let per_write = |per_request: f64| per_request / run.origin_per_request.max(1e-9);
        let commands: Vec<String> = run
            .commands
            .iter()
            .map(|(name, per)| format!("{name} {:.3}", per_write(*per)))
            .collect();
        md.push_str(&format!(
            "| {}{} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
            r.scenario,
            if run.disturbed { " †" } else { "" },
            r.connections,
            accepted_rps(run),
            Ratio(accepted_rps(run) / accepted_of(rows, "views-direct", r.connections)),
            run.latency[0],
            run.latency[2],
            per_write(run.redis_per_request),
            if commands.is_empty() {
                "–".to_owned()
            } else {
                commands.join(", ")
            },
            run.errors
        ));
    }
    md.push_str("\nThe database after the last run and a final flush:\n\n");
    for (scenario, check) in checks {
        md.push_str(&match check {
            Some(c) => format!(
                "- `{scenario}`: {} writes accepted (warm-up included), the database counts {} \
                 (final flush {} ms): {}\n",
                c.accepted,
                c.in_db,
                c.flush_ms,
                if c.holds() { "equal" } else { "**different**" }
            ),
            None => format!("- `{scenario}`: **no answer** from `/__views_total`\n"),
        });
    }
    md
}

fn ceiling_rps(rows: &[Row], scenario: &str, c: u32) -> f64 {
    let ceiling = ceiling_of(scenario);
    rows.iter()
        .find(|r| r.scenario == ceiling && r.connections == c)
        .map_or(f64::NAN, |r| r.run.rps)
}

/// Whether the row of `scenario` at `c` counts a disturbed run.
fn disturbed(rows: &[Row], scenario: &str, c: u32) -> bool {
    rows.iter()
        .any(|r| r.scenario == scenario && r.connections == c && r.run.disturbed)
}

fn rps_of(rows: &[Row], scenario: &str, c: u32) -> f64 {
    rows.iter()
        .find(|r| r.scenario == scenario && r.connections == c)
        .map_or(f64::NAN, |r| r.run.rps)
}

fn report(
    o: &Options,
    rows: &[Row],
    round_trips: &[RoundTrip],
    total: Duration,
    waited: Duration,
    disturbed_runs: usize,
    measured_runs: usize,
) -> String {
    let mut md = String::new();
    let date = utc_now();
    let cpu = cpu_model();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    md.push_str(&format!(
        "Generated by `turret-bench` on {date}: {cores} cores ({cpu}), server, wrk (`-t1`) and \
         redis-server on the same machine over loopback. {}s warm-up (every id in turn), then the \
         median of {} runs of {}s per row; whole run {:.0}s, of which {:.0}s waiting for a quiet \
         machine. {} of the {} measured runs were disturbed (a `rustc` ran, or other processes \
         used over {:.0}% of the CPU){}.\n\n",
        o.warmup,
        o.repeat,
        o.duration,
        total.as_secs_f64(),
        waited.as_secs_f64(),
        disturbed_runs,
        measured_runs,
        load::DISTURBED * 100.0,
        if o.quiet > 0 {
            "; those were measured again, at most twice per row, and the rows still counting one \
             are marked †"
        } else {
            "; rows counting one are marked †"
        }
    ));
    md.push_str(
        "× ceiling: requests/s over `raw` (or `raw-2ms` for the 2 ms origin) at the same \
         concurrency. Origin/req: handler calls per request in the measured period. Redis/req: \
         commands Redis processed per request (commands inside scripts included). CPU µs/req: \
         the CPU time (user + system, from `/proc`, 10 ms ticks) the scenario's server, wrk and \
         redis-server each spent per request in the median run: on two shared cores, what a \
         layer costs the server apart from what wrk and Redis spend on the same requests. \
         Others: the largest share of the CPU other processes used during a measured run of \
         the row.\n\n",
    );
    md.push_str(
        "| scenario | origin | conns | req/s | × ceiling | p50 ms | p95 ms | p99 ms | p99.9 ms | origin/req | Redis/req | Redis commands/req | CPU µs/req: server / wrk / Redis | errors | peak RSS MiB | others CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let run = &r.run;
        let commands: Vec<String> = run
            .commands
            .iter()
            .map(|(name, per)| format!("{name} {per:.2}"))
            .collect();
        md.push_str(&format!(
            "| {}{} | {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {} | {:.1} / {:.1} / {:.1} | {} | {:.1} | {:.0}% |\n",
            r.scenario,
            if run.disturbed { " †" } else { "" },
            delay_of(&r.scenario),
            r.connections,
            run.rps,
            Ratio(run.rps / ceiling_rps(rows, &r.scenario, r.connections)),
            run.latency[0],
            run.latency[1],
            run.latency[2],
            run.latency[3],
            run.origin_per_request,
            run.redis_per_request,
            if commands.is_empty() {
                "–".to_owned()
            } else {
                commands.join(", ")
            },
            run.cpu[0],
            run.cpu[1],
            run.cpu[2],
            run.errors,
            r.rss,
            run.other_cpu * 100.0
        ));
    }
    for t in round_trips {
        md.push_str(&format!(
            "| redis-benchmark {} | – | {} | {:.0} | – | {:.2} | {:.2} | {:.2} | – | – | 1.00 | {} 1.00 | – | 0 | – | – |\n",
            if t.test == "GET" {
                "GET (1 KB value)".to_owned()
            } else {
                "EVALSHA (`return 1`)".to_owned()
            },
            t.connections,
            t.rps,
            t.latency[0],
            t.latency[1],
            t.latency[2],
            t.test
        ));
    }

    let targets = targets(o, rows);
    if !targets.is_empty() {
        md.push_str("\n| target | measured | goal | reached |\n|---|---:|---:|---|\n");
        for t in targets {
            let (sign, reached) = match t.goal {
                Goal::AtLeast(g) => ("≥ ", t.value >= g),
                Goal::Below(g) => ("< ", t.value < g),
                Goal::Exactly(g) => ("= ", (t.value - g).abs() < 0.05),
            };
            let goal = match t.goal {
                Goal::AtLeast(g) | Goal::Below(g) | Goal::Exactly(g) => g,
            };
            md.push_str(&format!(
                "| {} | {:.2} | {sign}{goal:.2} | {} |\n",
                t.label,
                t.value,
                match (t.disturbed, reached) {
                    (true, _) => "undecided (a disturbed row †)",
                    (false, true) => "yes",
                    (false, false) => "**no**",
                }
            ));
        }
    }
    md
}

/// A ratio with two decimals, or `–` when it has no base (the ceiling was not run).
struct Ratio(f64);

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_finite() {
            write!(f, "{:.2}", self.0)
        } else {
            f.write_str("–")
        }
    }
}

/// What a target asks of its measured value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Goal {
    AtLeast(f64),
    Below(f64),
    Exactly(f64),
}

struct Target {
    label: String,
    value: f64,
    goal: Goal,
    /// A row it is computed from counts a disturbed run: not decided.
    disturbed: bool,
}

/// The targets of issues 6 and 8 that this run can decide: ratios of two scenarios at the
/// same concurrency, Redis commands per cache hit, the full stack's p99.
/// The ratio targets: label, scenario, base, goal (the scenario's requests/s at least `goal`
/// times the base's at the same concurrency).
const RATIOS: &[(&str, &str, &str, f64)] = &[
    (
        "memory cache hit ÷ ceiling",
        "turret-cache-memory",
        "raw",
        1.0,
    ),
    (
        "tiered cache hit ÷ ceiling",
        "turret-cache-tiered",
        "raw",
        1.0,
    ),
    (
        "Redis cache hit ÷ redis-rs cache-aside",
        "turret-cache-redis",
        "redis-cache-aside",
        1.0,
    ),
    (
        "Redis cache hit ÷ cache-aside sending the hit's three fields",
        "turret-cache-redis",
        "redis-cache-aside-plus-cache-headers",
        1.0,
    ),
    (
        "memory cache hit ÷ http-cache-tower-server",
        "turret-cache-memory",
        "http-cache-tower-server",
        1.0,
    ),
    // The controls send the same fields as the layer, as constants: a ratio to them is
    // what the layer's own work costs, apart from wrk parsing more bytes on the same
    // cores.
    (
        "memory cache hit ÷ raw-plus-cache-headers",
        "turret-cache-memory",
        "raw-plus-cache-headers",
        1.0,
    ),
    (
        "tiered cache hit ÷ raw-plus-cache-headers",
        "turret-cache-tiered",
        "raw-plus-cache-headers",
        1.0,
    ),
    (
        "memory rate limiter ÷ ceiling",
        "turret-memory",
        "raw",
        0.97,
    ),
    (
        "memory rate limiter ÷ raw-plus-5-headers",
        "turret-memory",
        "raw-plus-5-headers",
        0.97,
    ),
    (
        "memory rate limiter ÷ tower_governor",
        "turret-memory",
        "tower-governor",
        1.0,
    ),
    (
        "Redis fixed window ÷ INCR+EXPIRE limiter",
        "turret-redis-fixed",
        "incr-expire",
        1.0,
    ),
    (
        "Redis GCRA ÷ INCR+EXPIRE limiter",
        "turret-redis-gcra",
        "incr-expire",
        0.9,
    ),
    (
        "Redis GCRA, two quotas ÷ one quota",
        "turret-redis-gcra-two-quotas",
        "turret-redis-gcra",
        0.9,
    ),
    (
        "Redis GCRA, 1,000 keys ÷ INCR+EXPIRE limiter",
        "turret-redis-gcra-many-keys",
        "incr-expire",
        0.9,
    ),
    (
        "ETag layer (1 KB) ÷ ceiling",
        "turret-conditional",
        "raw",
        0.95,
    ),
    (
        "full stack with Redis ÷ FastAPI stack",
        "turret-full-stack",
        "fastapi-stack",
        15.0,
    ),
];

fn targets(o: &Options, rows: &[Row]) -> Vec<Target> {
    let mut targets = Vec::new();
    let ratios = RATIOS;
    for &c in &o.connections {
        for &(label, scenario, base, goal) in ratios {
            let ratio = rps_of(rows, scenario, c) / rps_of(rows, base, c);
            if ratio.is_finite() {
                targets.push(Target {
                    label: format!("{label}, c={c}"),
                    value: ratio,
                    goal: Goal::AtLeast(goal),
                    disturbed: disturbed(rows, scenario, c) || disturbed(rows, base, c),
                });
            }
        }
        let row = |scenario: &str| {
            rows.iter()
                .find(|r| r.scenario == scenario && r.connections == c)
        };
        if row("turret-redis-delay").is_some() {
            // Delay mode serves the configured rate: no more (the rate holds), and no less
            // (waiting requests are admitted at their turns, none refused).
            let served = accepted_of(rows, "turret-redis-delay", c) / f64::from(DELAY_RATE);
            let disturbed = disturbed(rows, "turret-redis-delay", c);
            targets.push(Target {
                label: format!("delay mode on Redis: served ÷ configured rate (at least), c={c}"),
                value: served,
                goal: Goal::AtLeast(0.95),
                disturbed,
            });
            targets.push(Target {
                label: format!("delay mode on Redis: served ÷ configured rate (below), c={c}"),
                value: served,
                goal: Goal::Below(1.02),
                disturbed,
            });
        }
        if let Some(r) = row("turret-cache-redis") {
            targets.push(Target {
                label: format!("Redis commands per Redis cache hit, c={c}"),
                value: r.run.redis_per_request,
                goal: Goal::Exactly(1.0),
                disturbed: false,
            });
        }
        for (label, scenario) in [
            (
                "write-behind on Redis ÷ direct SQLite UPDATE, accepted writes/s",
                "views-writebehind-redis",
            ),
            (
                "write-behind in memory ÷ direct SQLite UPDATE, accepted writes/s",
                "views-writebehind-memory",
            ),
        ] {
            for (base, base_label) in [
                ("views-direct", ""),
                ("views-direct-normal", " (synchronous = NORMAL)"),
            ] {
                let ratio = accepted_of(rows, scenario, c) / accepted_of(rows, base, c);
                if ratio.is_finite() {
                    targets.push(Target {
                        label: format!("{label}{base_label}, c={c}"),
                        value: ratio,
                        goal: Goal::AtLeast(10.0),
                        disturbed: disturbed(rows, scenario, c) || disturbed(rows, base, c),
                    });
                }
            }
        }
        if let Some(r) = row("turret-full-stack").filter(|_| c == 400) {
            targets.push(Target {
                label: format!("full stack with Redis, p99 ms, c={c}"),
                value: r.run.latency[2],
                goal: Goal::Below(10.0),
                disturbed: r.run.disturbed,
            });
            if let Some(raw) = row("raw") {
                targets.push(Target {
                    label: format!("full stack p99 ÷ the ceiling's own p99, c={c}"),
                    value: r.run.latency[2] / raw.run.latency[2],
                    goal: Goal::Below(1.5),
                    disturbed: r.run.disturbed || raw.run.disturbed,
                });
            }
        }
    }
    targets
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("turret-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_follow_the_origin_delay() {
        assert_eq!(ceiling_of("turret-cache-redis-2ms"), "raw-2ms");
        assert_eq!(ceiling_of("raw-2ms"), "raw-2ms");
        assert_eq!(ceiling_of("turret-memory"), "raw");
        assert_eq!(ceiling_of("raw-plus-5-headers"), "raw");
        assert_eq!(delay_of("http-cache-tower-server-2ms"), "2ms");
        assert_eq!(delay_of("incr-expire"), "0ms");
    }

    #[test]
    fn the_middle_of_the_pair_ratios() {
        assert!(middle(vec![]).is_nan());
        assert_eq!(middle(vec![0.9]), 0.9);
        assert_eq!(middle(vec![1.2, 0.8, 1.0]), 1.0);
        assert!((middle(vec![1.2, 0.8, 1.0, 0.9]) - 0.95).abs() < 1e-12);
    }

    #[test]
    fn every_ratio_target_names_scenarios_of_the_default_run() {
        let all = default_scenarios();
        for (label, a, b, _) in RATIOS {
            assert!(all.iter().any(|s| s == a), "{label}: {a}");
            assert!(all.iter().any(|s| s == b), "{label}: {b}");
        }
    }

    #[test]
    fn reads_the_lua_summary() {
        let run = parse_wrk("Running 3s test\nTURRET-SUMMARY 300000 3000000 450 900 1300 4000 2\n");
        assert_eq!(run.requests, 300_000);
        assert!((run.rps - 100_000.0).abs() < 1e-6);
        assert_eq!(run.latency, [0.45, 0.9, 1.3, 4.0]);
        assert_eq!(run.errors, 2);
        assert_eq!(run.status_errors, 0);
    }

    #[test]
    fn accepted_writes_leave_out_the_failed_statuses() {
        let run = parse_wrk("TURRET-SUMMARY 30000 3000000 450 900 1300 4000 1500 1200\n");
        assert_eq!((run.errors, run.status_errors), (1500, 1200));
        assert!((accepted_rps(&run) - 9_600.0).abs() < 1e-6);
    }

    #[test]
    fn the_views_check_reads_the_total_and_compares() {
        let check = ViewsCheck::parse("1200 1200 35").unwrap();
        assert_eq!(
            check,
            ViewsCheck {
                in_db: 1200,
                accepted: 1200,
                flush_ms: 35
            }
        );
        assert!(check.holds());
        assert!(!ViewsCheck::parse("1201 1200 35").unwrap().holds());
        assert!(!ViewsCheck::parse("-1 0 0").unwrap().holds());
        assert_eq!(ViewsCheck::parse("12 x"), None);
    }
}
