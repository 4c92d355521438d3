//! In-memory keyed decision: turret's memory backend against governor's keyed limiter.

use std::{hint::black_box, num::NonZeroU32};

use criterion::{Criterion, criterion_group, criterion_main};
use turret_ratelimit::{MemoryBackend, Quota};

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255))
        .collect()
}

fn decision(c: &mut Criterion) {
    // A quota no benchmark loop can exhaust, so every decision is the admit path.
    let quota = Quota::per_second(1_000_000_000);
    for n in [1usize, 100_000] {
        let keys = keys(n);
        let mut group = c.benchmark_group(format!("keyed decision, {n} keys"));

        let turret = MemoryBackend::new();
        let mut i = 0;
        group.bench_function("turret memory GCRA", |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(turret.decide_now("default", &keys[i], &quota, 1).allowed)
            })
        });

        let governor = governor::RateLimiter::keyed(governor::Quota::per_second(
            NonZeroU32::new(1_000_000_000).unwrap(),
        ));
        let mut j = 0;
        group.bench_function("governor keyed (dashmap)", |b| {
            b.iter(|| {
                j = (j + 1) % keys.len();
                black_box(governor.check_key(&keys[j]).is_ok())
            })
        });
        group.finish();
    }
}

criterion_group!(benches, decision);
criterion_main!(benches);
