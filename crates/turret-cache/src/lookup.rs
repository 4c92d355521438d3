//! What storage holds for one request: the stored response (or hit-for-miss marker) that
//! answers it, if any (RFC 9111 §4).

use std::{sync::Arc, time::Duration};

use http::HeaderMap;

use crate::{
    CachedResponse, Policy, StorageError, Variants,
    cache_control::{CacheControl, Delta},
    layer::Shared,
};

/// What one GET or HEAD needs for its decisions.
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) policy: Arc<Policy>,
    pub(crate) key: String,
    /// The request's `Cache-Control`.
    pub(crate) directives: CacheControl,
    pub(crate) head: bool,
}

/// The outcome of a storage look-up.
pub(crate) enum Lookup {
    /// A stored response fresh enough for the request, and its freshness left.
    Fresh(Arc<CachedResponse>, Duration),
    /// Stored, but stale or too old for the request: serve stale if allowed, else
    /// revalidate.
    Stale(Arc<CachedResponse>, &'static str),
    /// Nothing stored fits; the `Cache-Status` member says why.
    Miss(&'static str),
    /// No stored response fits, and a hit-for-miss marker says the URL answered
    /// uncacheably: straight to the origin, without coalescing or the fill lease.
    Pass,
}

/// RFC 9111 §4: among the stored responses whose Vary secondary key matches, the newest.
/// The request's `max-age` and `min-fresh` (§5.2.1.1, §5.2.1.3) narrow what is fresh enough;
/// invalid values are ignored (request directives are advisory). A request `no-cache`
/// (`force`) makes any match need validation. A fresh hit-for-miss marker applies when no
/// stored response matches, or only a stale one older than the marker. `remote`: the answer
/// came from the storage asynchronously (see [`Shared::storage_ok`]).
pub(crate) fn select(
    shared: &Shared,
    result: Result<Variants, StorageError>,
    remote: bool,
    req: &HeaderMap,
    directives: &CacheControl,
    force: bool,
    now: Duration,
) -> Lookup {
    let variants = match result {
        Ok(v) => {
            if remote {
                shared.storage_ok();
            }
            v
        }
        Err(e) => {
            shared.storage_error("get", &e);
            return Lookup::Miss("fwd=miss");
        }
    };
    let mut best: Option<&Arc<CachedResponse>> = None;
    let mut marker: Option<&Arc<CachedResponse>> = None;
    let mut any_response = false;
    for v in variants.iter() {
        let is_marker = v.is_marker();
        any_response |= !is_marker;
        if !v.matches(req) {
            continue;
        }
        let slot = if is_marker { &mut marker } else { &mut best };
        // The newest; the last of equals, as `max_by_key` would.
        if slot.is_none_or(|b| v.response_time() >= b.response_time()) {
            *slot = Some(v);
        }
    }
    let marker = marker.filter(|m| m.ttl(now).is_some());
    match best {
        None if marker.is_some() => Lookup::Pass,
        None if !any_response => Lookup::Miss("fwd=miss"),
        None => Lookup::Miss("fwd=vary-miss"),
        Some(entry) => match entry.ttl(now) {
            None if marker.is_some_and(|m| m.response_time() >= entry.response_time()) => {
                Lookup::Pass
            }
            None => Lookup::Stale(entry.clone(), "fwd=stale"),
            Some(_) if force => Lookup::Stale(entry.clone(), "fwd=request"),
            Some(ttl) => {
                let too_old = matches!(directives.max_age, Delta::Seconds(max) if entry.age(now).as_secs() > max);
                let too_close =
                    matches!(directives.min_fresh, Delta::Seconds(min) if ttl.as_secs() < min);
                if too_old || too_close {
                    Lookup::Stale(entry.clone(), "fwd=request")
                } else {
                    Lookup::Fresh(entry.clone(), ttl)
                }
            }
        },
    }
}
