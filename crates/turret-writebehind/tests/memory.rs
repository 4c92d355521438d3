//! The in-process queue.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use turret_writebehind::{Batch, Merge, Sink, WriteBehind, WriteError};

#[derive(Clone, Default)]
struct Counts {
    totals: Arc<Mutex<HashMap<u32, u64>>>,
    batches: Arc<Mutex<Vec<(String, usize)>>>,
    failures_left: Arc<Mutex<usize>>,
}

impl Sink<u32, u64> for Counts {
    type Error = &'static str;
    async fn flush(&self, batch: &Batch<u32, u64>) -> Result<(), Self::Error> {
        self.batches
            .lock()
            .unwrap()
            .push((batch.id().to_string(), batch.entries()));
        {
            let mut left = self.failures_left.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err("database down");
            }
        }
        let mut totals = self.totals.lock().unwrap();
        for (k, v) in batch.items() {
            *totals.entry(*k).or_default() += v;
        }
        Ok(())
    }
}

fn counter() -> turret_writebehind::WriteBehindBuilder<u32, u64> {
    WriteBehind::<u32, u64>::builder("counts").merge(Merge::fold(|a, b| a + b))
}

#[tokio::test]
async fn shutdown_flushes_everything_queued_and_then_refuses_writes() {
    let sink = Counts::default();
    let q = counter()
        .flush_interval(Duration::from_secs(3600))
        .claim_idle(Duration::from_secs(7200))
        .max_batch(100)
        .memory(sink.clone())
        .unwrap();
    for n in 0..1050u32 {
        q.write(n % 10, 2).await.unwrap();
    }
    q.shutdown().await;
    let totals = sink.totals.lock().unwrap().clone();
    assert_eq!(totals, (0..10).map(|k| (k, 210)).collect());
    let batches = sink.batches.lock().unwrap().clone();
    assert!(batches.iter().all(|b| b.1 <= 100), "{batches:?}");
    assert_eq!(batches.iter().map(|b| b.1).sum::<usize>(), 1050);
    assert!(matches!(q.write(1, 1).await, Err(WriteError::Closed)));
}

#[tokio::test]
async fn dropping_every_handle_flushes_in_the_background() {
    let sink = Counts::default();
    let q = counter()
        .flush_interval(Duration::from_secs(3600))
        .claim_idle(Duration::from_secs(7200))
        .memory(sink.clone())
        .unwrap();
    q.write(4, 1).await.unwrap();
    let clone = q.clone();
    drop(q);
    clone.write(4, 1).await.unwrap();
    drop(clone);
    for _ in 0..200 {
        if sink.totals.lock().unwrap().get(&4) == Some(&2) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not flushed after the last handle dropped");
}

#[tokio::test]
async fn the_backlog_bound_refuses_writes_until_a_flush_frees_room() {
    let sink = Counts::default();
    *sink.failures_left.lock().unwrap() = 3;
    let q = counter()
        .flush_interval(Duration::from_millis(20))
        .max_batch(5)
        .max_backlog(20)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .memory(sink.clone())
        .unwrap();
    let mut accepted = 0;
    for _ in 0..30 {
        match q.write(1, 1).await {
            Ok(()) => accepted += 1,
            Err(WriteError::Full { max_backlog: 20 }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(accepted, 20);
    q.shutdown().await;
    assert_eq!(sink.totals.lock().unwrap().get(&1), Some(&20));
    // The failed batch was retried with one id.
    let batches = sink.batches.lock().unwrap();
    assert_eq!(batches[0].0, batches[3].0);
    assert_ne!(batches[0].0, batches[4].0);
}

#[tokio::test]
async fn a_bad_configuration_is_refused() {
    let bad = [
        counter().max_batch(0).memory(Counts::default()).err(),
        counter().max_batch(10_000).memory(Counts::default()).err(),
        counter()
            .max_batch(100)
            .max_backlog(10)
            .memory(Counts::default())
            .err(),
        counter()
            .flush_interval(Duration::ZERO)
            .memory(Counts::default())
            .err(),
        counter()
            .flush_interval(Duration::from_secs(20))
            .claim_idle(Duration::from_secs(30))
            .memory(Counts::default())
            .err(),
        WriteBehind::<u32, u64>::builder("")
            .memory(Counts::default())
            .err(),
    ];
    for (i, e) in bad.iter().enumerate() {
        assert!(e.is_some(), "case {i} accepted");
    }
}
