//! In-flight counts in this process.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::{Acquire, ConcurrencyBackend, Permit};

/// In-flight counts in this process. Only keys with requests in flight are kept, so the
/// map is bounded by the number of requests in flight.
#[derive(Debug, Clone, Default)]
pub struct MemoryConcurrency {
    counts: Arc<Counts>,
}

type Counts = Mutex<HashMap<(Arc<str>, Arc<str>), u32>>;

impl MemoryConcurrency {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys with requests in flight.
    pub fn len(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ConcurrencyBackend for MemoryConcurrency {
    fn acquire(&self, policy: &str, key: &str, max: u32) -> Acquire {
        let id: (Arc<str>, Arc<str>) = (policy.into(), key.into());
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.get(&id).copied().unwrap_or(0);
        if n >= max {
            return Acquire::Ready(Ok(None));
        }
        counts.insert(id.clone(), n + 1);
        let table = self.counts.clone();
        Acquire::Ready(Ok(Some(Permit::new(n + 1, move || {
            let mut counts = table.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&id);
                }
            }
        }))))
    }
}
