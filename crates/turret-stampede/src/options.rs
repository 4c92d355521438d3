//! [`Options`]: what one cache-aside call or write-through stores with.

use std::time::Duration;

/// The settings of one [`fetch`](crate::StampedeCache::fetch) or
/// [`set`](crate::StampedeCache::set): how long the value is fresh, how long past that it is
/// still served while one caller refreshes it, and the tags it can be invalidated by.
///
/// ```
/// use std::time::Duration;
/// use turret_stampede::Options;
///
/// let options = Options::ttl(Duration::from_secs(600))
///     .grace(Duration::from_secs(60))
///     .tag("category:7");
/// assert_eq!(options.get_ttl(), Duration::from_secs(600));
/// assert_eq!(options.get_grace(), Some(Duration::from_secs(60)));
/// assert_eq!(options.get_tags(), ["category:7"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    ttl: Duration,
    grace: Option<Duration>,
    tags: Vec<String>,
}

impl Options {
    /// Fresh for `ttl`; the cache's grace window; no tags.
    pub fn ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            grace: None,
            tags: Vec::new(),
        }
    }

    /// Served for `grace` past its freshness while one caller recomputes it (instead of the
    /// cache's [`grace`](crate::StampedeCache::grace)).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// Adds a tag to invalidate the value by.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds tags to invalidate the value by.
    pub fn tags<I: IntoIterator<Item = T>, T: Into<String>>(mut self, tags: I) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// The freshness lifetime.
    pub fn get_ttl(&self) -> Duration {
        self.ttl
    }

    /// The grace window, if set here (`None`: the cache's).
    pub fn get_grace(&self) -> Option<Duration> {
        self.grace
    }

    /// The tags.
    pub fn get_tags(&self) -> &[String] {
        &self.tags
    }
}
