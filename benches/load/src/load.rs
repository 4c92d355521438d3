//! Other work on the machine during a measurement: the CPU time not spent by the processes
//! of the run (the driver and the `wrk` it waited for, the scenario server, redis-server),
//! from `/proc` (Linux; elsewhere nothing is measured and every run counts as quiet), and
//! whether a `rustc` is running. The same samples give each process's CPU time per request
//! ([`cpu_per_request`]): what the server, wrk and Redis each spent on a request, which a
//! ratio of requests/s between two scenarios on shared cores cannot tell apart.

use std::time::{Duration, Instant};

/// `USER_HZ`: the unit of `/proc/stat` and `/proc/<pid>/stat` CPU times on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// A run during which other processes used more than this share of the machine's CPU is
/// disturbed.
pub(crate) const DISTURBED: f64 = 0.03;

/// The processes of the run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe {
    pub(crate) server: u32,
    pub(crate) redis: u32,
}

/// CPU ticks of the whole machine (busy) and of the run's processes, at one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    at: Instant,
    busy: u64,
    /// The server's process tree, the driver with the children it waited for (`wrk`), and
    /// redis-server, in ticks.
    server: u64,
    driver: u64,
    redis: u64,
    pub(crate) rustc: bool,
}

impl Sample {
    fn ours(&self) -> u64 {
        self.server + self.driver + self.redis
    }
}

/// CPU time per request between two samples, in µs: the server, the driver with `wrk`
/// (the driver itself sleeps while `wrk` runs), and redis-server. One tick is 10 ms, so
/// over a 3 s run of 100k requests the resolution is ~0.1 µs.
pub(crate) fn cpu_per_request(a: &Sample, b: &Sample, requests: u64) -> [f64; 3] {
    let per = |x: u64, y: u64| {
        y.saturating_sub(x) as f64 * 1e6 / TICKS_PER_SECOND / requests.max(1) as f64
    };
    [
        per(a.server, b.server),
        per(a.driver, b.driver),
        per(a.redis, b.redis),
    ]
}

fn machine_busy() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    // user nice system idle iowait irq softirq steal …
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
}

/// utime + stime (+ the children's it waited for, with `children`).
fn process_ticks(pid: &str, children: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name is in parentheses and may hold spaces: count fields after it.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // rest[0] is field 3 (state): utime = field 14 → rest[11], stime 15, cutime 16, cstime 17.
    let own = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    if children {
        own + f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0)
    } else {
        own
    }
}

/// `pid` and every process below it (the workers of a multi-process server), from
/// `/proc/<pid>/task/<tid>/children`.
pub(crate) fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", tree[i])) else {
            i += 1;
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                tree.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    tree
}

/// Whether a process named `rustc` exists.
pub(crate) fn rustc_running() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|entry| {
        entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            && std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "rustc")
    })
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

impl Probe {
    pub(crate) fn sample(&self) -> Sample {
        let server: u64 = process_tree(self.server)
            .iter()
            .map(|pid| process_ticks(&pid.to_string(), false))
            .sum();
        Sample {
            at: Instant::now(),
            busy: machine_busy(),
            server,
            driver: process_ticks("self", true),
            redis: process_ticks(&self.redis.to_string(), false),
            rustc: rustc_running(),
        }
    }

    /// Waits until the machine has been quiet (no `rustc`, other processes under
    /// [`DISTURBED`]) for `quiet` in a row, at most `limit`; returns how long it waited.
    pub(crate) fn wait_for_quiet(&self, quiet: Duration, limit: Duration) -> Duration {
        let started = Instant::now();
        let mut quiet_since = Instant::now();
        let mut said = false;
        while quiet_since.elapsed() < quiet && started.elapsed() < limit {
            let a = self.sample();
            std::thread::sleep(Duration::from_secs(1));
            let b = self.sample();
            let share = other_share(&a, &b);
            if a.rustc || b.rustc || share > DISTURBED {
                quiet_since = Instant::now();
                if !said {
                    eprint!(
                        " [waiting for a quiet machine: other processes use {:.0}% of the CPU{}]",
                        share * 100.0,
                        if b.rustc { ", rustc running" } else { "" }
                    );
                    said = true;
                }
            }
        }
        started.elapsed()
    }
}

/// The share of the machine's CPU capacity used by processes other than the run's between
/// two samples.
pub(crate) fn other_share(a: &Sample, b: &Sample) -> f64 {
    let seconds = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    let busy = b.busy.saturating_sub(a.busy) as f64;
    let ours = b.ours().saturating_sub(a.ours()) as f64;
    ((busy - ours).max(0.0) / TICKS_PER_SECOND / seconds / cores()).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let probe = Probe {
            server: std::process::id(),
            redis: std::process::id(),
        };
        let a = probe.sample();
        // Burn a little CPU: it is ours, so the share of others stays a share.
        let mut x = 0u64;
        for i in 0..100_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = probe.sample();
        let share = other_share(&a, &b);
        assert!((0.0..=1.0).contains(&share));
        // 100M multiply-adds take well over a tick (10 ms): the driver's CPU per "request" is seen.
        let [_, driver, _] = cpu_per_request(&a, &b, 1);
        assert!(driver >= 1e4, "{driver} µs");
    }

    #[test]
    fn finds_the_children_of_a_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        // The kernel's `children` lists may miss a child while other processes are created
        // or reaped at the same moment (proc(5): "not reliable"; the other tests spawn
        // processes in parallel): read again for a while.
        let mut tree = process_tree(std::process::id());
        for _ in 0..100 {
            if tree.contains(&child.id()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            tree = process_tree(std::process::id());
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(tree[0], std::process::id());
        assert!(tree.contains(&child.id()), "{tree:?}");
    }
}
