//! The load benchmark driver: starts a real redis-server, then each scenario as its own
//! server process on loopback, drives it with `wrk` (keep-alive, fixed concurrency, a
//! warm-up, the median of several runs) and writes a Markdown table.
//!
//! ```text
//! cargo build --release -p turret-bench
//! target/release/turret-bench [--duration 10] [--connections 64,400] [--repeat 3]
//!                             [--scenarios raw,turret-memory,…] [--out docs/benchmarks/ratelimit.md]
//! ```
//! `scripts/bench` does both and installs `wrk` when it is missing.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use turret_testkit::RedisServer;

const ALL: &[&str] = &[
    "raw",
    "raw-plus-5-headers",
    "turret-memory",
    "turret-memory-no-fields",
    "tower-governor",
    "turret-redis-gcra",
    "turret-redis-fixed",
    "incr-expire",
    "turret-conditional",
];

const LUA: &str = "math.randomseed(os.time())\n\
request = function() return wrk.format('GET', '/items/' .. math.random(0, 999)) end\n";

struct Options {
    duration: u64,
    connections: Vec<u32>,
    repeat: usize,
    scenarios: Vec<String>,
    out: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        duration: 10,
        connections: vec![64, 400],
        repeat: 3,
        scenarios: ALL.iter().map(|s| s.to_string()).collect(),
        out: PathBuf::from("docs/benchmarks/ratelimit.md"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--duration" => o.duration = value.parse().expect("--duration seconds"),
            "--connections" => {
                o.connections = value
                    .split(',')
                    .map(|c| c.parse().expect("--connections"))
                    .collect()
            }
            "--repeat" => o.repeat = value.parse().expect("--repeat n"),
            "--scenarios" => o.scenarios = value.split(',').map(str::to_owned).collect(),
            "--out" => o.out = PathBuf::from(value),
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
    p50: f64,
    p99: f64,
    redis_per_request: f64,
    scripts_per_request: f64,
    errors: u64,
}

fn millis(s: &str) -> f64 {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn parse_wrk(out: &str) -> Run {
    let mut run = Run::default();
    for line in out.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            run.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("50%") {
            run.p50 = millis(v);
        } else if let Some(v) = line.strip_prefix("99%") {
            run.p99 = millis(v);
        } else if line.starts_with("Non-2xx or 3xx responses:")
            || line.starts_with("Socket errors:")
        {
            run.errors += line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    run
}

fn wrk(port: u16, connections: u32, seconds: u64, script: &std::path::Path) -> String {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
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

fn spawn_server(scenario: &str, port: u16, redis_url: &str) -> Child {
    let exe = std::env::current_exe()
        .expect("own path")
        .with_file_name("bench-server");
    let mut child = Command::new(exe)
        .args([scenario, &port.to_string(), redis_url])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn bench-server (build it with cargo build --release -p turret-bench)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server output");
    assert_eq!(
        line.trim(),
        "ready",
        "bench-server {scenario} did not start"
    );
    child
}

/// Commands Redis processed (those a script runs count too), and scripts it ran.
fn redis_commands(server: &RedisServer) -> (u64, u64) {
    let stats: String = server.cmd(&["INFO", "stats"]);
    let total = stats
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let commandstats: String = server.cmd(&["INFO", "commandstats"]);
    let scripts = commandstats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    (total, scripts)
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs[runs.len() / 2].clone()
}

fn main() {
    let o = options();
    let redis = RedisServer::start();
    let dir = tempfile_dir();
    let script = dir.join("items.lua");
    std::fs::write(&script, LUA).expect("write wrk script");

    let mut rows: Vec<(String, u32, Run, f64)> = Vec::new();
    let total = o.scenarios.len() * o.connections.len();
    let mut done = 0;
    for scenario in &o.scenarios {
        let port = free_port();
        let mut server = spawn_server(scenario, port, &redis.url());
        for &c in &o.connections {
            done += 1;
            eprint!("[{done}/{total}] {scenario} c={c}: warm-up… ");
            let _ = std::io::stderr().flush();
            wrk(port, c, 2, &script);
            let mut runs = Vec::new();
            for _ in 0..o.repeat {
                let (commands0, scripts0) = redis_commands(&redis);
                let mut run = parse_wrk(&wrk(port, c, o.duration, &script));
                let (commands1, scripts1) = redis_commands(&redis);
                let requests = (run.rps * o.duration as f64).max(1.0);
                // The two INFO commands count too.
                run.redis_per_request = (commands1 - commands0).saturating_sub(2) as f64 / requests;
                run.scripts_per_request = (scripts1 - scripts0) as f64 / requests;
                runs.push(run);
            }
            let run = median(runs);
            eprintln!("{:.0} req/s, p99 {:.2} ms", run.rps, run.p99);
            rows.push((scenario.clone(), c, run, peak_rss_mib(server.id())));
        }
        let _ = server.kill();
        let _ = server.wait();
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut md = String::new();
    md.push_str(
        "| scenario | connections | req/s | × raw | p50 ms | p99 ms | Redis cmds/req | scripts/req | errors | peak RSS MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (scenario, c, run, rss) in &rows {
        let raw = rows
            .iter()
            .find(|(s, rc, _, _)| s == "raw" && rc == c)
            .map_or(f64::NAN, |(_, _, r, _)| r.rps);
        md.push_str(&format!(
            "| {scenario} | {c} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} |\n",
            run.rps,
            run.rps / raw,
            run.p50,
            run.p99,
            run.redis_per_request,
            run.scripts_per_request,
            run.errors,
            rss
        ));
    }
    println!("{md}");
    if let Some(parent) = o.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&o.out, md).expect("write the results table");
    eprintln!("wrote {}", o.out.display());
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("turret-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
