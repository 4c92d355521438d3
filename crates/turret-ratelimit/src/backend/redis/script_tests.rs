//! The multi-limit scripts against the one they replaced (#18): on a real redis-server, the
//! same replies, the same writes (with their expiries, as Redis received them) and the same
//! stored state, on randomised plans of mixed algorithms, delay mode, stored states, batches
//! and times.

use std::time::Duration;

use turret_redis::redis::{self, Value};
use turret_testkit::RedisServer;

use super::{decision, multi_outcomes, multi_params};
use crate::{Algorithm, Limit, Outcome, Plan, Quota};

/// The multi-limit script of d30631c, byte for byte: the reference.
const BEFORE: &str = include_str!("multi_before_18.lua");

/// Its SHA-1 then (`ratelimit_multi`), so the reference cannot drift unnoticed.
const BEFORE_SHA1: &str = "df6b19feac628c27da525e0c6fe990435fb7cd3f";

/// Where an instrumented script reads the time from.
const CLOCK: &str = "turret-diff-test:time";

/// The arguments `BEFORE` took before the costs: limit count, maximum delay, then four
/// numbers per limit.
fn before_params(limits: &[Limit], max_delay_us: u64) -> Vec<u64> {
    let mut params = vec![limits.len() as u64, max_delay_us];
    for l in limits {
        let q = l.quota();
        match q.algorithm() {
            Algorithm::Gcra => params.extend([
                1,
                q.emission_interval_micros(),
                q.tolerance_micros(),
                u64::from(q.count()),
            ]),
            alg => params.extend([
                match alg {
                    Algorithm::FixedWindow => 2,
                    Algorithm::SlidingWindow => 3,
                    _ => 4,
                },
                q.period_micros(),
                u64::from(q.count()),
                0,
            ]),
        }
    }
    params
}

/// A reply of the scripts now in the form `BEFORE` replied: an admitted request's
/// {remaining, reset} per limit become {1, remaining, reset, -1}, a refused request's -1
/// its delay 0.
fn as_before(reply: &Value, limits: usize) -> Value {
    let Value::Array(items) = reply else {
        return reply.clone();
    };
    let mut out = Vec::new();
    let mut rest = &items[..];
    while let Some((first, tail)) = rest.split_first() {
        if matches!(first, Value::Int(i) if *i >= 0) {
            out.push(first.clone());
            for d in tail[..2 * limits.min(tail.len() / 2)].chunks(2) {
                out.extend([Value::Int(1), d[0].clone(), d[1].clone(), Value::Int(-1)]);
            }
            rest = &tail[(2 * limits).min(tail.len())..];
        } else {
            out.push(Value::Int(0));
            let these = (4 * limits).min(tail.len());
            out.extend(tail[..these].iter().cloned());
            rest = &tail[these..];
        }
    }
    Value::Array(out)
}

/// `BEFORE`'s reply decoded as the backend decoded it.
fn outcomes_before(reply: &Value, limits: &[Limit]) -> Option<Vec<Outcome>> {
    let Value::Array(items) = reply else {
        return None;
    };
    items
        .chunks_exact(1 + 4 * limits.len())
        .map(|r| {
            let Value::Int(delay) = r[0] else {
                return None;
            };
            let decisions = r[1..]
                .chunks_exact(4)
                .zip(limits)
                .map(|(d, l)| decision(d, l.quota()))
                .collect::<Option<Vec<_>>>()?;
            Some(Outcome::new(
                decisions,
                Duration::from_micros(delay.max(0) as u64),
            ))
        })
        .collect()
}

/// `source` on a clock the test sets (`TIME` reads a hash instead), every command other than
/// a read logged with its arguments as Redis received them (`ECHO` converts a Lua number as
/// the write itself does), and its keys persisted at the end: expiries are compared through
/// the logged arguments, not left to the real clock between the two runs. Returns
/// `{reply, log}`.
fn instrumented(source: &str) -> String {
    assert_eq!(
        source.matches("redis.call('TIME')").count(),
        1,
        "one clock read"
    );
    let body = source
        .replace(
            "redis.call('TIME')",
            &format!("redis.call('HMGET', '{CLOCK}', 's', 'u')"),
        )
        .replace("redis.call(", "__rc(");
    format!(
        "local __log = {{}}
local __reads = {{HMGET = true, GET = true, MGET = true, ZCARD = true, ZRANGE = true}}
local function __rc(...)
  local a = {{...}}
  if not __reads[a[1]] then
    for i = 1, #a do a[i] = redis.call('ECHO', a[i]) end
    __log[#__log + 1] = table.concat(a, ' ')
  end
  return redis.call(...)
end
local function __main()
{body}
end
local __out = __main()
for i = 1, #KEYS do redis.call('PERSIST', KEYS[i]) end
return {{__out, __log}}"
    )
}

/// SplitMix64: a reproducible stream from one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Gcra,
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::SlidingLog,
];

fn quota(rng: &mut Rng, algorithm: Algorithm) -> Quota {
    // A sliding log adds one member per unit admitted: small counts only.
    let count = if algorithm == Algorithm::SlidingLog {
        rng.pick(&[0, 1, 2, 3, 5, 8, 20])
    } else {
        rng.pick(&[
            0,
            1,
            1,
            2,
            3,
            5,
            10,
            20,
            100,
            1000,
            1_000_000,
            1_000_000_000,
        ])
    };
    let period = rng.pick(&[
        1_000,
        1_500,
        50_000,
        1_000_000,
        1_000_000,
        60_000_000,
        3_600_000_000,
        86_400_000_000,
        1_000_000_000_000,
    ]);
    let q = Quota::per(Duration::from_micros(period), count).with_algorithm(algorithm);
    if algorithm == Algorithm::Gcra && rng.below(3) == 0 {
        q.burst(rng.pick(&[0, 1, 2, count / 2, count.saturating_mul(2)]))
    } else {
        q
    }
}

fn plan(rng: &mut Rng) -> Plan {
    let n = rng.pick(&[1, 2, 2, 2, 3]);
    let all_gcra = rng.below(2) == 0;
    let mut limits = (0..n).map(|i| {
        let alg = if all_gcra {
            Algorithm::Gcra
        } else {
            rng.pick(&ALGORITHMS)
        };
        (format!("l{i}"), quota(rng, alg))
    });
    let (name, q) = limits.next().unwrap();
    let mut plan = Plan::new(&name, q);
    for (name, q) in limits.collect::<Vec<_>>() {
        plan = plan.and(&name, q);
    }
    plan
}

fn costs(rng: &mut Rng, plan: &Plan) -> Vec<u32> {
    let counts: Vec<u32> = plan.limits().iter().map(|l| l.quota().count()).collect();
    let log = plan
        .limits()
        .iter()
        .any(|l| l.quota().algorithm() == Algorithm::SlidingLog);
    let n = rng.pick(&[1, 1, 1, 2, 3, 8, 32]);
    (0..n)
        .map(|_| {
            let count = rng.pick(&counts);
            let c = match rng.below(10) {
                0 => 0,
                1 => count,
                2 => count.saturating_add(1),
                3 => count / 2,
                4 => 1 + rng.below(5) as u32,
                5 if !log => 1 + rng.below(1_000_000) as u32,
                _ => 1,
            };
            if log { c.min(25) } else { c }
        })
        .collect()
}

fn step_us(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0 => 0,
        1 => 1,
        2 => rng.below(1_000),
        3 => rng.below(100_000),
        4 => rng.below(2_000_000),
        5 => rng.below(100_000_000),
        6 => rng.below(100_000_000_000),
        _ => rng.below(10_000),
    }
}

/// The script's reply and log, or `None` for an error.
fn run(
    con: &mut redis::Connection,
    sha1: &str,
    keys: &[String],
    params: &[u64],
    costs: &[u32],
) -> Option<(Value, Vec<String>)> {
    let reply: redis::RedisResult<(Value, Vec<String>)> = redis::cmd("EVALSHA")
        .arg(sha1)
        .arg(keys.len())
        .arg(keys)
        .arg(params)
        .arg(costs)
        .query(con);
    reply.ok()
}

/// What a key holds, whatever its type.
fn state(con: &mut redis::Connection, key: &str) -> Value {
    let kind: String = redis::cmd("TYPE").arg(key).query(con).unwrap();
    let value: Value = match kind.as_str() {
        "none" => Value::Nil,
        "string" => redis::cmd("GET").arg(key).query(con).unwrap(),
        "hash" => {
            let mut fields: Vec<(String, String)> =
                redis::cmd("HGETALL").arg(key).query(con).unwrap();
            fields.sort();
            Value::Array(
                fields
                    .into_iter()
                    .flat_map(|(f, v)| [f, v])
                    .map(|s| Value::BulkString(s.into_bytes()))
                    .collect(),
            )
        }
        "zset" => redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(con)
            .unwrap(),
        other => panic!("{key} is a {other}"),
    };
    Value::Array(vec![Value::SimpleString(kind), value])
}

/// What a comparison ran: calls, and the reference's decisions in them.
#[derive(Debug, Default)]
struct Seen {
    calls: u64,
    admitted: u64,
    delayed: u64,
    refused: u64,
    errors: u64,
}

/// Runs `cases` randomised cases of `plan` / `costs` / time steps through the reference and
/// through `call` (the script and arguments deciding a job now), and returns the first
/// difference, if any.
fn differences(
    server: &RedisServer,
    seed: u64,
    cases: u64,
    new_source: impl Fn(&[Limit], u64) -> (String, Vec<u64>),
) -> Result<Seen, String> {
    let mut con = server.connection();
    let load = |con: &mut redis::Connection, source: &str| -> String {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(source)
            .query(con)
            .unwrap()
    };
    let before = load(&mut con, &instrumented(BEFORE));
    let mut loaded = std::collections::HashMap::new();
    let mut rng = Rng(seed);
    let mut seen = Seen::default();
    for case in 0..cases {
        let plan = plan(&mut rng);
        let limits = plan.limits();
        let max_delay_us = if plan.is_all_gcra() && rng.below(2) == 0 {
            rng.pick(&[1, 1_000, 100_000, 5_000_000, 1_000_000_000_000])
        } else {
            0
        };
        let (source, params) = new_source(limits, max_delay_us);
        let sha1 = loaded
            .entry(source.clone())
            .or_insert_with(|| load(&mut con, &instrumented(&source)))
            .clone();
        let old_params = before_params(limits, max_delay_us);
        let keys = |side: &str| -> Vec<String> {
            (0..limits.len())
                .map(|i| format!("{{diff/{side}{case}}}:{i}"))
                .collect()
        };
        let (old_keys, new_keys) = (keys("o"), keys("n"));
        let mut now: u64 = 1_796_000_000_000_000 + rng.below(1_000_000_000_000);
        if rng.below(4) == 0 {
            now -= now % 100_000_000;
        }
        for step in 0..1 + rng.below(12) {
            now += step_us(&mut rng);
            let costs = costs(&mut rng, &plan);
            let _: () = redis::cmd("HSET")
                .arg(CLOCK)
                .arg("s")
                .arg(now / 1_000_000)
                .arg("u")
                .arg(now % 1_000_000)
                .query(&mut con)
                .unwrap();
            let old = run(&mut con, &before, &old_keys, &old_params, &costs);
            let new = run(&mut con, &sha1, &new_keys, &params, &costs);
            seen.calls += 1;
            let old = old.map(|(reply, log)| {
                let log: Vec<String> = log
                    .into_iter()
                    .map(|l| l.replace(&format!("{{diff/o{case}}}"), &format!("{{diff/n{case}}}")))
                    .collect();
                (reply, log)
            });
            let what = || {
                format!(
                    "case {case} step {step} at {now}: {limits:?}, max delay {max_delay_us} µs, costs {costs:?}"
                )
            };
            match &old {
                Some((Value::Array(r), _)) => {
                    for d in r.chunks(1 + 4 * limits.len()) {
                        let int = |v: &Value| match v {
                            Value::Int(i) => *i,
                            _ => panic!("{v:?}"),
                        };
                        let delay = int(&d[0]);
                        let admitted = d[1..].chunks(4).all(|l| int(&l[0]) == 1);
                        seen.delayed += u64::from(delay > 0);
                        seen.admitted += u64::from(admitted);
                        seen.refused += u64::from(!admitted);
                    }
                }
                _ => seen.errors += 1,
            }
            // The replies, number for number, and what the backend reads in them.
            if let (Some((o, _)), Some((n, _))) = (&old, &new) {
                let o = outcomes_before(o, limits);
                let Value::Array(items) = n else {
                    return Err(format!("{}\nnot an array: {n:?}", what()));
                };
                let n = multi_outcomes(items, limits, costs.len());
                if o.is_none() || o != n {
                    return Err(format!(
                        "{}\ndecoded before: {o:?}\ndecoded now:    {n:?}",
                        what()
                    ));
                }
            }
            let new = new.map(|(reply, log)| (as_before(&reply, limits.len()), log));
            if old != new {
                return Err(format!("{}\nbefore: {old:?}\nnow:    {new:?}", what()));
            }
            for (o, n) in old_keys.iter().zip(&new_keys) {
                let (o, n) = (state(&mut con, o), state(&mut con, n));
                if o != n {
                    return Err(format!(
                        "{}\nstored before: {o:?}\nstored now:    {n:?}",
                        what()
                    ));
                }
            }
        }
    }
    Ok(seen)
}

/// The scripts and arguments the backend sends for a job.
fn current(limits: &[Limit], max_delay_us: u64) -> (String, Vec<u64>) {
    let (script, params) = multi_params(limits, max_delay_us);
    (script.source().to_owned(), params.to_vec())
}

#[test]
fn the_reference_is_the_script_before_18() {
    assert_eq!(
        turret_redis::Script::new("before", BEFORE).sha1(),
        BEFORE_SHA1
    );
}

#[test]
fn multi_limit_scripts_decide_and_store_as_the_script_before_them() {
    let server = RedisServer::start();
    let seen = differences(&server, 18, 4_000, current).unwrap_or_else(|e| panic!("{e}"));
    // The cases are a stream from a fixed seed: the same ones every time, of every kind.
    assert!(seen.calls > 20_000, "{seen:?}");
    assert!(seen.admitted > 20_000 && seen.refused > 20_000, "{seen:?}");
    assert!(seen.delayed > 1_000, "{seen:?}");
    assert_eq!(seen.errors, 0, "{seen:?}");
}

#[test]
fn the_comparison_sees_a_changed_script() {
    // The comparison must fail on scripts that differ from the reference: here in an
    // admitted request's reset in delay mode, a window's refusal, and a TAT's expiry.
    let server = RedisServer::start();
    for (from, to) in [
        (
            "out[k + 2 * i + 1] = diff + delay",
            "out[k + 2 * i + 1] = diff",
        ),
        (
            "return 0, left, l.reset, retry",
            "return 0, left, l.reset + 1, retry",
        ),
        (
            "redis.call('SET', KEYS[i], v, 'PX', px)",
            "redis.call('SET', KEYS[i], v, 'PX', px + 1)",
        ),
    ] {
        let result = differences(&server, 18, 4_000, |limits, max_delay_us| {
            let (source, params) = current(limits, max_delay_us);
            (source.replacen(from, to, 1), params)
        });
        assert!(result.is_err(), "{from} → {to} went unnoticed");
        let (gcra, _) = current(&plan_of(Algorithm::Gcra), 0);
        let (multi, _) = current(&plan_of(Algorithm::FixedWindow), 0);
        assert_eq!(
            gcra.matches(from).count() + multi.matches(from).count(),
            1,
            "{from}"
        );
    }
}

/// Two limits, the second of `algorithm`.
fn plan_of(algorithm: Algorithm) -> Vec<Limit> {
    Plan::new("a", Quota::per_second(1))
        .and("b", Quota::per_second(1).with_algorithm(algorithm))
        .limits()
        .to_vec()
}
