//! Invalidation: [`CacheInvalidator`] from application code, and `Invalidate`, what a
//! successful unsafe request invalidates (RFC 9111 §4.4).

use std::{fmt, sync::Arc};

use http::{HeaderMap, Uri, header};

use crate::{Purge, StorageFuture, key, layer::Shared};

/// Invalidates stored responses by URI, tag or application event, from handler code, a job
/// or a queue consumer. Get one from [`ResponseCacheLayer::invalidator`]; clones are cheap
/// and share the layer's storage (so with a Redis or two-tier storage, an invalidation on
/// one instance reaches every instance).
///
/// A hard invalidation removes the responses: the next request is a miss. A soft purge
/// keeps them, stale: the next request revalidates with the origin, and a
/// `stale-while-revalidate` window lets clients get the old copy meanwhile.
///
/// ```
/// use turret_cache::ResponseCacheLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = ResponseCacheLayer::new().on_event("product-updated", ["products"]);
/// let invalidator = layer.invalidator();
/// // In a handler, after the database write:
/// invalidator.invalidate_tag("product:7").await.unwrap();
/// invalidator.emit("product-updated").await.unwrap();
/// # }
/// ```
///
/// [`ResponseCacheLayer::invalidator`]: crate::ResponseCacheLayer::invalidator
#[derive(Clone)]
pub struct CacheInvalidator {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for CacheInvalidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheInvalidator").finish_non_exhaustive()
    }
}

impl CacheInvalidator {
    /// Removes every stored response for the absolute `uri` (its key as a GET with that
    /// target and host, under the policy of its path, every Vary variant). Returns how many
    /// keys held responses (1 or 0).
    pub fn invalidate(&self, uri: &Uri) -> StorageFuture<usize> {
        self.by_uri(uri, Purge::Remove)
    }

    /// Marks every stored response for `uri` stale (a soft purge); returns how many keys
    /// held responses.
    pub fn soft_purge(&self, uri: &Uri) -> StorageFuture<usize> {
        self.by_uri(uri, Purge::MarkStale(self.shared.clock.now()))
    }

    /// Removes every stored response tagged `tag`; returns how many keys held them.
    pub fn invalidate_tag(&self, tag: &str) -> StorageFuture<usize> {
        tracing::debug!(tag, "invalidating a tag");
        metrics::counter!("turret_cache_tag_invalidations_total").increment(1);
        self.shared.storage.invalidate_tag(tag, Purge::Remove)
    }

    /// Marks every stored response tagged `tag` stale (a soft purge); returns how many keys
    /// held them.
    pub fn soft_purge_tag(&self, tag: &str) -> StorageFuture<usize> {
        tracing::debug!(tag, "soft-purging a tag");
        metrics::counter!("turret_cache_tag_invalidations_total").increment(1);
        self.shared
            .storage
            .invalidate_tag(tag, Purge::MarkStale(self.shared.clock.now()))
    }

    /// Removes every stored response carrying any of `tags`; returns how many keys held
    /// them (a key with two of the tags counts twice on Redis, once it is gone in memory).
    pub fn invalidate_tags<I, T>(&self, tags: I) -> StorageFuture<usize>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        join(
            tags.into_iter()
                .map(|t| self.invalidate_tag(t.as_ref()))
                .collect(),
        )
    }

    /// Invalidates the tags registered for `event` with
    /// [`ResponseCacheLayer::on_event`](crate::ResponseCacheLayer::on_event); nothing for an
    /// unknown event.
    pub fn emit(&self, event: &str) -> StorageFuture<usize> {
        match self.shared.events.get(event) {
            Some(tags) => self.invalidate_tags(tags),
            None => {
                tracing::debug!(event, "no cache tags registered for this event");
                StorageFuture::ready(Ok(0))
            }
        }
    }

    fn by_uri(&self, uri: &Uri, purge: Purge) -> StorageFuture<usize> {
        let policies = &self.shared.policies;
        let policy = policies.for_path(uri.path());
        match policies.key(policy, uri, &HeaderMap::new()) {
            Some(key) => {
                tracing::debug!(%key, ?purge, "invalidating on request of the application");
                self.shared.storage.invalidate(&key, purge)
            }
            None => StorageFuture::ready(Ok(0)),
        }
    }
}

/// All of `pending`, in order, their counts summed; the first error is returned after every
/// one ran.
pub(crate) fn join(mut pending: Vec<StorageFuture<usize>>) -> StorageFuture<usize> {
    let mut first_error = None;
    let mut total = 0;
    pending.retain_mut(|f| match f.take_ready() {
        Some(Ok(n)) => {
            total += n;
            false
        }
        Some(Err(e)) => {
            first_error.get_or_insert(e);
            false
        }
        None => true,
    });
    if pending.is_empty() {
        return StorageFuture::ready(first_error.map_or(Ok(total), Err));
    }
    StorageFuture::new(async move {
        for f in pending {
            match f.await {
                Ok(n) => total += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(total), Err)
    })
}

/// What to invalidate after a successful unsafe request (RFC 9111 §4.4, and the layer's
/// write rules).
pub(crate) struct Invalidate {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: Option<String>,
    pub(crate) origin: (String, String),
    pub(crate) tags: Vec<String>,
}

/// Starts invalidating the target URI, same-origin `Location` / `Content-Location`, and the
/// tags of the layer's write rules.
pub(crate) fn invalidations(inv: &Invalidate, headers: &HeaderMap) -> Vec<StorageFuture<usize>> {
    let policies = &inv.shared.policies;
    let origin = (inv.origin.0.as_str(), inv.origin.1.as_str());
    let mut keys: Vec<String> = inv.key.iter().cloned().collect();
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let location = headers.get(&name).and_then(|v| v.to_str().ok());
        if let Some(target) = location.and_then(|l| key::same_origin_target(origin, l)) {
            let policy = policies.for_path(target.path());
            if let Some(k) = policies.key(policy, &target, &HeaderMap::new())
                && !keys.contains(&k)
            {
                keys.push(k);
            }
        }
    }
    tracing::debug!(
        ?keys,
        tags = ?inv.tags,
        "invalidating after an unsafe request (RFC 9111 §4.4)"
    );
    metrics::counter!("turret_cache_invalidations_total").increment(keys.len() as u64);
    let storage = &inv.shared.storage;
    keys.iter()
        .map(|k| storage.invalidate(k, Purge::Remove))
        .chain(
            inv.tags
                .iter()
                .map(|t| storage.invalidate_tag(t, Purge::Remove)),
        )
        .collect()
}
