//! Application policy: per-route [`Policy`], the [`MakeCacheKey`] trait, and route patterns.

use std::{
    fmt,
    sync::{Arc, OnceLock},
    time::Duration,
};

use http::{HeaderMap, HeaderName, Method, Uri};

use crate::key;

/// Which query parameters are part of the primary key.
///
/// Names are compared with the names the handler reads: the query is decoded as
/// `application/x-www-form-urlencoded` (`%XX` escapes, `+` as a space), so `categ%6fry=9` is
/// the parameter `category` for [`Only`](Self::Only) and [`Ignore`](Self::Ignore) as it is for
/// axum's `Query`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QueryKey {
    /// Every parameter, sorted by name (the default).
    #[default]
    All,
    /// Only these parameters (sorted by name); others (tracking, cache busters) are ignored.
    /// The handler must read no other parameter, or the key misses what its answer depends on.
    Only(Vec<String>),
    /// Every parameter except these.
    Ignore(Vec<String>),
    /// No parameter: `/products?utm=x` and `/products` share one entry.
    None,
}

impl QueryKey {
    /// Whether the parameter with this decoded name is part of the key. A name that is not
    /// UTF-8 is compared as the handler sees it (lossily decoded) for `Only`; `Ignore` drops
    /// only exactly its names (keeping one more parameter never shares an entry wrongly).
    pub(crate) fn keeps(&self, name: &[u8]) -> bool {
        match self {
            QueryKey::All => true,
            QueryKey::Only(names) => match std::str::from_utf8(name) {
                Ok(name) => names.iter().any(|n| n == name),
                Err(_) => {
                    let lossy = String::from_utf8_lossy(name);
                    names.iter().any(|n| *n == lossy)
                }
            },
            QueryKey::Ignore(names) => !names.iter().any(|n| n.as_bytes() == name),
            QueryKey::None => false,
        }
    }
}

/// What the cache does for a group of routes (see [`ResponseCacheLayer::route`]).
///
/// Every RFC 9111 rule still applies: a policy adds defaults for handlers that send no
/// caching fields, it never stores what the response forbids.
///
/// ```
/// use std::time::Duration;
/// use turret_cache::{Policy, QueryKey};
///
/// let products = Policy::new("products")
///     .ttl(Duration::from_secs(300))
///     .query(QueryKey::Only(vec!["skip".into(), "limit".into(), "category".into()]))
///     .tags(["products"])
///     .stale_while_revalidate(Duration::from_secs(30));
/// # let _ = products;
/// ```
///
/// [`ResponseCacheLayer::route`]: crate::ResponseCacheLayer::route
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) only_headers: bool,
    pub(crate) bypass: bool,
    pub(crate) query: QueryKey,
    pub(crate) key_headers: Vec<HeaderName>,
    pub(crate) tags: Vec<String>,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) metrics: Arc<OnceLock<Counters>>,
}

/// What happened to a request, for `turret_cache_requests_total{outcome, policy}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Collapsed,
    Bypass,
    Method,
    OnlyIfCached,
    /// A stale response that must be revalidated, and the origin unreachable: 504.
    MustRevalidate,
}

const OUTCOMES: [&str; 9] = [
    "hit",
    "miss",
    "stale",
    "revalidated",
    "collapsed",
    "bypass",
    "method",
    "only-if-cached",
    "must-revalidate",
];

/// The policy's counters, registered on first use (so a recorder installed after the layer
/// was built still sees them), then incremented without allocating.
#[derive(Debug)]
pub(crate) struct Counters {
    requests: [metrics::Counter; 9],
    pub(crate) stored_bytes: metrics::Counter,
}

impl Policy {
    pub(crate) fn count(&self, outcome: Outcome) {
        let counters = self.metrics.get_or_init(|| {
            let policy = if self.name.is_empty() {
                "default".to_owned()
            } else {
                self.name.to_string()
            };
            Counters {
                requests: OUTCOMES.map(|o| {
                    metrics::counter!("turret_cache_requests_total", "outcome" => o, "policy" => policy.clone())
                }),
                stored_bytes: metrics::counter!("turret_cache_stored_bytes_total", "policy" => policy),
            }
        });
        counters.requests[outcome as usize].increment(1);
    }

    pub(crate) fn stored(&self, bytes: usize) {
        if let Some(c) = self.metrics.get() {
            c.stored_bytes.increment(bytes as u64);
        }
    }

    /// A policy with a name (a label of the cache's metrics and debug events).
    pub fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            ..Self::default()
        }
    }

    /// The freshness lifetime of responses that send no `max-age`, `s-maxage` or `Expires`
    /// (for a heuristically cacheable status, RFC 9110 §15.1). Overrides the layer's
    /// [`default_ttl`](crate::ResponseCacheLayer::default_ttl).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self.only_headers = false;
        self
    }

    /// Store only what the response's own caching fields allow: no default TTL, even when
    /// the layer has one.
    pub fn only_headers(mut self) -> Self {
        self.ttl = None;
        self.only_headers = true;
        self
    }

    /// Never look up nor store: requests pass through (`Cache-Status: fwd=bypass`).
    pub fn bypass(mut self) -> Self {
        self.bypass = true;
        self
    }

    /// Which query parameters are part of the key (default: all, sorted).
    pub fn query(mut self, query: QueryKey) -> Self {
        self.query = query;
        self
    }

    /// Request fields that select a variant as if the response listed them in `Vary`
    /// (e.g. `accept-language` for a handler that forgets to send `Vary`).
    pub fn key_headers<I>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = HeaderName>,
    {
        self.key_headers = names.into_iter().collect();
        self
    }

    /// Tags given to every response stored under this policy, in addition to those of a
    /// `Surrogate-Key` / `Cache-Tag` response field.
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// RFC 5861 `stale-while-revalidate` for responses that do not send one.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// RFC 5861 `stale-if-error` for responses that do not send one.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A path pattern: `/products` (exactly), `/products/*` (anything below `/products/`, and
/// `/products` itself) or `*` (every path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern(String);

impl Pattern {
    pub(crate) fn new(pattern: &str) -> Self {
        Self(pattern.to_owned())
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        let p = self.0.as_str();
        if p == "*" {
            return true;
        }
        match p.strip_suffix("/*") {
            Some(base) => {
                path == base
                    || (path.len() > base.len()
                        && path.starts_with(base)
                        && path.as_bytes()[base.len()] == b'/')
            }
            None => path == p,
        }
    }
}

/// Builds the primary key of a request, replacing the default `scheme://host/path?query`.
///
/// Return `None` to bypass the cache for this request. The key must include everything the
/// response depends on that the response's `Vary` does not name, or the cache serves one
/// user's response to another: the host always, and e.g. a tenant id taken from the path.
///
/// It must also never give two requests the handler can tell apart the same key: take each
/// part as the handler reads it (query parameters decoded as
/// `application/x-www-form-urlencoded`, the way axum's `Query` does, not compared still
/// percent-encoded), and join the parts so that none can pass for another (escape the
/// separators in client bytes, or length-prefix them; `format!("{a}:{b}")` makes `a = "x:y"`
/// and `b = "z"` the key of `a = "x"` and `b = "y:z"`).
/// Invalidation (RFC 9111 §4.4, [`ResponseCacheLayer::invalidate`]) asks for the key of a
/// GET to the target URI.
///
/// [`ResponseCacheLayer::invalidate`]: crate::ResponseCacheLayer::invalidate
pub trait MakeCacheKey: Send + Sync + 'static {
    /// The key of a GET or HEAD request, or `None` to bypass the cache.
    fn make_key(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<String>;
}

impl<F> MakeCacheKey for F
where
    F: Fn(&Method, &Uri, &HeaderMap) -> Option<String> + Send + Sync + 'static,
{
    fn make_key(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<String> {
        self(method, uri, headers)
    }
}

/// The routes' policies in order, the default policy, and the key maker.
#[derive(Clone, Default)]
pub(crate) struct Policies {
    pub(crate) routes: Vec<(Pattern, Arc<Policy>)>,
    pub(crate) default: Arc<Policy>,
    pub(crate) make_key: Option<Arc<dyn MakeCacheKey>>,
    /// Tags invalidated after a successful unsafe request to a matching path.
    pub(crate) write_rules: Vec<(Pattern, Vec<String>)>,
}

impl fmt::Debug for Policies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policies")
            .field("routes", &self.routes)
            .field("default", &self.default)
            .field("make_key", &self.make_key.is_some())
            .field("write_rules", &self.write_rules)
            .finish()
    }
}

impl Policies {
    /// The first route policy whose pattern matches `path`, or the default.
    pub(crate) fn for_path(&self, path: &str) -> &Arc<Policy> {
        self.routes
            .iter()
            .find(|(p, _)| p.matches(path))
            .map_or(&self.default, |(_, policy)| policy)
    }

    /// The primary key of a GET to `uri` under `policy`.
    pub(crate) fn key(&self, policy: &Policy, uri: &Uri, headers: &HeaderMap) -> Option<String> {
        match &self.make_key {
            Some(make) => make.make_key(&Method::GET, uri, headers),
            None => Some(key::primary_key(uri, headers, &policy.query)),
        }
    }

    /// The tags a successful unsafe request to `path` invalidates.
    pub(crate) fn write_tags(&self, path: &str) -> Vec<String> {
        let mut tags = Vec::new();
        for (pattern, t) in &self.write_rules {
            if pattern.matches(path) {
                tags.extend(t.iter().cloned());
            }
        }
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_prefix_and_all() {
        let exact = Pattern::new("/products");
        assert!(exact.matches("/products"));
        assert!(!exact.matches("/products/7"));
        let below = Pattern::new("/products/*");
        assert!(below.matches("/products"));
        assert!(below.matches("/products/7"));
        assert!(!below.matches("/productsx"));
        assert!(!below.matches("/categories"));
        assert!(Pattern::new("*").matches("/anything"));
    }

    #[test]
    fn first_matching_route_wins() {
        let policies = Policies {
            routes: vec![
                (
                    Pattern::new("/products/top-selling"),
                    Arc::new(Policy::new("top")),
                ),
                (
                    Pattern::new("/products/*"),
                    Arc::new(Policy::new("products")),
                ),
            ],
            ..Policies::default()
        };
        assert_eq!(policies.for_path("/products/top-selling").name(), "top");
        assert_eq!(policies.for_path("/products/7").name(), "products");
        assert_eq!(policies.for_path("/health").name(), "");
    }

    #[test]
    fn query_key_filters() {
        assert!(QueryKey::All.keeps(b"a"));
        assert!(!QueryKey::None.keeps(b"a"));
        assert!(QueryKey::Only(vec!["a".into()]).keeps(b"a"));
        assert!(!QueryKey::Only(vec!["a".into()]).keeps(b"b"));
        assert!(!QueryKey::Ignore(vec!["utm".into()]).keeps(b"utm"));
        // A name the handler decodes lossily is kept when that is a name it reads.
        assert!(QueryKey::Only(vec!["a\u{fffd}".into()]).keeps(b"a\xff"));
        assert!(QueryKey::Ignore(vec!["a\u{fffd}".into()]).keeps(b"a\xff"));
    }
}
