//! The in-process queue: a bounded `VecDeque`, lost on a crash, flushed on shutdown.

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{sync::Notify, time::Instant};

use crate::{
    Batch, BatchId, Sink, WriteError,
    flush::{Health, deliver},
    queue::{Core, QueueItem, QueueKey, Settings},
};

/// Process-wide: makes memory batch ids of two queues of one process differ.
static QUEUES: AtomicU64 = AtomicU64::new(0);

/// The batch-id component of the `n`th memory queue of this process: `m{random}.{n}`. Random
/// per queue, not the process id: a restarted process (in a container, often pid 1 again)
/// must never repeat an id a sink has recorded, or the sink would skip its batch as applied.
fn instance_name(n: u64) -> String {
    format!("m{:016x}.{n}", rand::random::<u64>())
}

pub(crate) struct Queue<K, V> {
    items: Mutex<VecDeque<(K, V, Instant)>>,
    /// Accepted and not flushed yet: queued plus the batch in flight.
    backlog: AtomicU64,
    /// Identifies this queue in its batch ids.
    instance: String,
}

impl<K, V> Queue<K, V> {
    pub(crate) fn new() -> Self {
        let n = QUEUES.fetch_add(1, Ordering::Relaxed);
        Self {
            items: Mutex::new(VecDeque::new()),
            backlog: AtomicU64::new(0),
            instance: instance_name(n),
        }
    }

    pub(crate) fn push(
        &self,
        settings: &Settings<V>,
        wake: &Notify,
        key: K,
        item: V,
    ) -> Result<(), WriteError> {
        let mut items = self.items.lock().map_err(|_| WriteError::Closed)?;
        if self.backlog.load(Ordering::Acquire) >= settings.max_backlog {
            return Err(WriteError::Full {
                max_backlog: settings.max_backlog,
            });
        }
        self.backlog.fetch_add(1, Ordering::AcqRel);
        items.push_back((key, item, Instant::now()));
        if items.len() == settings.max_batch {
            wake.notify_one();
        }
        Ok(())
    }

    /// Up to `max_batch` items, oldest first.
    fn take(&self, max: usize) -> Vec<(K, V)> {
        let Ok(mut items) = self.items.lock() else {
            return Vec::new();
        };
        let n = items.len().min(max);
        items.drain(..n).map(|(k, v, _)| (k, v)).collect()
    }

    fn oldest_age(&self) -> f64 {
        self.items
            .lock()
            .ok()
            .and_then(|items| items.front().map(|(_, _, at)| at.elapsed().as_secs_f64()))
            .unwrap_or(0.0)
    }
}

impl<K: QueueKey, V: QueueItem> Queue<K, V> {
    pub(crate) async fn run<S: Sink<K, V>>(&self, core: &Core<K, V>, sink: &S) {
        let settings = &core.settings;
        let mut health = Health::new(&settings.name);
        let mut seq = 0u64;
        loop {
            core.idle(settings.flush_interval).await;
            loop {
                metrics::gauge!("turret_writebehind_backlog", "queue" => settings.name.clone())
                    .set(self.backlog.load(Ordering::Acquire) as f64);
                metrics::gauge!("turret_writebehind_oldest_pending_seconds", "queue" => settings.name.clone())
                    .set(self.oldest_age());
                let writes = self.take(settings.max_batch);
                let entries = writes.len();
                if entries == 0 {
                    break;
                }
                seq += 1;
                let id = BatchId::new(&settings.name, &format!("{}-{seq}", self.instance), entries);
                let batch = Batch::new(id, settings.merge.apply(writes), entries);
                let delivered = deliver(
                    sink,
                    &batch,
                    settings,
                    &mut health,
                    || core.give_up_at(),
                    settings.claim_idle,
                    || async {},
                )
                .await;
                self.backlog.fetch_sub(entries as u64, Ordering::AcqRel);
                if !delivered {
                    let lost = entries + self.take(usize::MAX).len();
                    self.backlog.store(0, Ordering::Release);
                    tracing::error!(queue = %settings.name, lost, "write-behind shut down while the sink was failing: the memory queue's unflushed writes are lost");
                    return;
                }
                if entries < settings.max_batch && !core.is_closed() {
                    break;
                }
            }
            if core.is_closed() {
                metrics::gauge!("turret_writebehind_backlog", "queue" => settings.name.clone())
                    .set(0.0);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::instance_name;

    /// A process restarted with the same pid and the same queue count (pid 1 in a container)
    /// must not repeat the batch ids of its previous life: a sink that recorded them would
    /// skip the new batches as already applied and lose their writes.
    #[test]
    fn a_restarted_process_never_repeats_a_memory_batch_id() {
        let first_life = instance_name(0);
        let second_life = instance_name(0);
        assert_ne!(first_life, second_life);
        assert!(first_life.starts_with('m') && first_life.ends_with(".0"));
    }
}
