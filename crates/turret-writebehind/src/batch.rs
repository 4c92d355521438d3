//! What the sink receives: a batch of merged items with a stable id, and the merge rules.

use std::{collections::HashMap, fmt, hash::Hash, sync::Arc};

/// The stable identity of a batch: the same batch delivered twice (a retry after a sink
/// failure, or another instance flushing the entries a dead one left pending) carries the
/// same id, so a sink that records the id in the same transaction as its effect applies it
/// exactly once.
///
/// On Redis it is derived from the stream entries the batch covers: `{queue}/{first entry
/// id}/{entries}` (each entry belongs to exactly one batch, for ever: see the crate docs).
/// In memory it is `{queue}/m{random}.{n}-{sequence}/{entries}` (random per queue start, so a
/// restarted process never repeats an id), stable across the retries of
/// one process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(String);

impl BatchId {
    pub(crate) fn new(queue: &str, first: &str, entries: usize) -> Self {
        Self(format!("{queue}/{first}/{entries}"))
    }

    /// The id as text (at most a few dozen bytes), e.g. to store in a database column.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A batch handed to the [`Sink`](crate::Sink): the items of up to `max_batch` writes,
/// merged per key by the queue's [`Merge`] rule, in the order each key was first written.
#[derive(Debug, Clone)]
pub struct Batch<K, V> {
    id: BatchId,
    items: Vec<(K, V)>,
    entries: usize,
}

impl<K, V> Batch<K, V> {
    pub(crate) fn new(id: BatchId, items: Vec<(K, V)>, entries: usize) -> Self {
        Self { id, items, entries }
    }

    /// The batch's stable id (see [`BatchId`]).
    pub fn id(&self) -> &BatchId {
        &self.id
    }

    /// The merged items: one per key unless the rule is [`Merge::KeepAll`].
    pub fn items(&self) -> &[(K, V)] {
        &self.items
    }

    /// How many writes (queue entries) the batch covers, undecodable ones included.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Whether the batch holds no item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

type FoldFn<V> = dyn Fn(V, V) -> V + Send + Sync;

/// How the items written for one key within a batch become one.
pub enum Merge<V> {
    /// The last write of the key wins (e.g. a user's latest preferences).
    LastWins,
    /// `f(earlier, later)` folds the writes of a key in order (e.g. summing view counts).
    Fold(Arc<FoldFn<V>>),
    /// No merging: every write reaches the sink (e.g. an audit log).
    KeepAll,
}

impl<V> Merge<V> {
    /// A fold: `Merge::fold(|a, b| a + b)` sums counter increments.
    pub fn fold(f: impl Fn(V, V) -> V + Send + Sync + 'static) -> Self {
        Merge::Fold(Arc::new(f))
    }

    /// Merges `writes`, in write order, into the batch's items.
    pub(crate) fn apply<K: Eq + Hash + Clone>(&self, writes: Vec<(K, V)>) -> Vec<(K, V)> {
        let fold: &FoldFn<V> = match self {
            Merge::KeepAll => return writes,
            Merge::LastWins => &|_, later| later,
            Merge::Fold(f) => f.as_ref(),
        };
        let mut at: HashMap<K, usize> = HashMap::with_capacity(writes.len());
        let mut out: Vec<(K, Option<V>)> = Vec::with_capacity(writes.len());
        for (key, value) in writes {
            match at.get(&key) {
                Some(&i) => {
                    let slot = &mut out[i].1;
                    let merged = match slot.take() {
                        Some(earlier) => fold(earlier, value),
                        None => value,
                    };
                    *slot = Some(merged);
                }
                None => {
                    at.insert(key.clone(), out.len());
                    out.push((key, Some(value)));
                }
            }
        }
        out.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }
}

impl<V> Clone for Merge<V> {
    fn clone(&self) -> Self {
        match self {
            Merge::LastWins => Merge::LastWins,
            Merge::Fold(f) => Merge::Fold(f.clone()),
            Merge::KeepAll => Merge::KeepAll,
        }
    }
}

impl<V> fmt::Debug for Merge<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Merge::LastWins => "LastWins",
            Merge::Fold(_) => "Fold(..)",
            Merge::KeepAll => "KeepAll",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_write_wins_per_key_in_first_write_order() {
        let merged = Merge::LastWins.apply(vec![("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]);
        assert_eq!(merged, [("a", 3), ("b", 5), ("c", 4)]);
    }

    #[test]
    fn a_fold_sums_the_writes_of_each_key() {
        let merged =
            Merge::fold(|a: i64, b| a + b).apply(vec![(7, 1), (8, 1), (7, 1), (7, 2), (9, 5)]);
        assert_eq!(merged, [(7, 4), (8, 1), (9, 5)]);
    }

    #[test]
    fn a_fold_sees_writes_in_order() {
        let merged = Merge::fold(|a: String, b: String| format!("{a}{b}")).apply(vec![
            ("k", "x".to_owned()),
            ("k", "y".to_owned()),
            ("k", "z".to_owned()),
        ]);
        assert_eq!(merged, [("k", "xyz".to_owned())]);
    }

    #[test]
    fn keep_all_keeps_every_write() {
        let writes = vec![("a", 1), ("a", 2), ("b", 3)];
        assert_eq!(Merge::KeepAll.apply(writes.clone()), writes);
    }

    #[test]
    fn batch_ids_name_the_queue_first_entry_and_count() {
        let id = BatchId::new("views", "1700000000000-3", 42);
        assert_eq!(id.as_str(), "views/1700000000000-3/42");
        assert_ne!(id, BatchId::new("views", "1700000000000-3", 41));
    }
}
