use std::sync::Arc;

use http::HeaderName;
use tower_layer::Layer;

use super::{flight::Config, service::Coalesce};

/// Default bound of a fanned-out body: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// Applies [`Coalesce`] to a service (see the [module docs](crate::coalesce)).
///
/// Each service the layer wraps gets its own table of in-flight requests, shared by that
/// service's clones.
#[derive(Debug, Clone)]
pub struct CoalesceLayer {
    config: Arc<Config>,
}

impl Default for CoalesceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CoalesceLayer {
    /// Requests are identical when method, URI and `Host` are; bodies up to 1 MiB are fanned
    /// out.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                headers: Vec::new(),
                max_body: DEFAULT_MAX_BODY,
            }),
        }
    }

    /// Requests must also agree on this header (all its values, in order) to share a call:
    /// every header the response varies on, and any credential (`authorization`, `cookie`)
    /// that changes what the inner service answers. (A response whose `Vary` names a header
    /// not given here is not shared: the waiters make their own calls.)
    pub fn vary_on(mut self, header: HeaderName) -> Self {
        Arc::make_mut(&mut self.config).headers.push(header);
        self
    }

    /// The largest body fanned out to waiters (default 1 MiB); bigger or unsized bodies
    /// release the waiters to make their own calls.
    pub fn max_body(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).max_body = bytes;
        self
    }
}

impl<S> Layer<S> for CoalesceLayer {
    type Service = Coalesce<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Coalesce::with_config(inner, self.config.clone())
    }
}

impl<S> Coalesce<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        CoalesceLayer::new().layer(inner)
    }

    /// A layer making this middleware.
    pub fn layer() -> CoalesceLayer {
        CoalesceLayer::new()
    }
}
