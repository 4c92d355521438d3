//! Which requests a quota applies to.

use std::{fmt, sync::Arc, sync::OnceLock};

use http::{HeaderMap, HeaderValue, Method, Uri};

use crate::Quota;

/// The parts of a request a cost function or matcher may look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
}

type CostFn = Arc<dyn Fn(RequestHead<'_>) -> u32 + Send + Sync>;

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Exact(Arc<str>),
    Prefix(Arc<str>),
}

/// A named quota and the requests it applies to.
///
/// ```
/// use http::Method;
/// use turret_ratelimit::{Policy, Quota};
///
/// let writes = Policy::new("writes", Quota::per_minute(10))
///     .methods([Method::POST, Method::PUT, Method::DELETE])
///     .path_prefix("/api/");
/// let reports = Policy::new("reports", Quota::per_hour(100))
///     .path("/reports")
///     .cost(|req| if req.uri.query().is_some_and(|q| q.contains("full")) { 10 } else { 1 });
/// ```
#[derive(Clone)]
pub struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) quota: Quota,
    methods: Option<Arc<[Method]>>,
    path: PathMatch,
    pub(crate) shadow: bool,
    cost: Option<CostFn>,
    pub(crate) fields: Arc<HeaderFields>,
    pub(crate) metrics: Arc<OnceLock<PolicyMetrics>>,
}

/// A policy name as it may appear in a Structured Field string: printable ASCII, with `"`
/// and `\\` (and anything else) replaced by `_`.
pub(crate) fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The parts of a policy's header fields that never change, made once.
#[derive(Debug)]
pub(crate) struct HeaderFields {
    /// `RateLimit-Policy: "name";q=…;w=…`.
    pub(crate) policy: HeaderValue,
    /// `"name"`, the start of `RateLimit`.
    pub(crate) quoted_name: Vec<u8>,
    /// `X-RateLimit-Limit`.
    pub(crate) limit: HeaderValue,
}

impl HeaderFields {
    /// `name` is already restricted to printable ASCII without `"` and `\\`.
    fn new(name: &str, quota: &Quota) -> Self {
        let window = quota.period().as_micros().div_ceil(1_000_000).max(1);
        let policy = format!("\"{name}\";q={};w={window}", quota.count());
        Self {
            policy: HeaderValue::from_str(&policy)
                .unwrap_or_else(|_| HeaderValue::from_static("\"default\"")),
            quoted_name: format!("\"{name}\"").into_bytes(),
            limit: HeaderValue::from(quota.count()),
        }
    }
}

#[derive(Debug)]
pub(crate) struct PolicyMetrics {
    pub(crate) allowed: metrics::Counter,
    pub(crate) limited: metrics::Counter,
    pub(crate) shadow_limited: metrics::Counter,
    pub(crate) backend_errors: metrics::Counter,
    pub(crate) latency: metrics::Histogram,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("methods", &self.methods)
            .field("path", &self.path)
            .field("shadow", &self.shadow)
            .field("weighted", &self.cost.is_some())
            .finish()
    }
}

impl Policy {
    /// A policy named `name` (used in keys, headers and metrics). The name is made of
    /// printable ASCII; other characters are replaced by `_`.
    pub fn new(name: &str, quota: Quota) -> Self {
        let name = sanitize_name(name);
        let fields = Arc::new(HeaderFields::new(&name, &quota));
        Self {
            name: name.into(),
            quota,
            methods: None,
            path: PathMatch::Any,
            shadow: false,
            cost: None,
            fields,
            metrics: Arc::default(),
        }
    }

    /// Applies only to these methods.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// Applies only to this exact path.
    pub fn path(mut self, path: &str) -> Self {
        self.path = PathMatch::Exact(path.into());
        self
    }

    /// Applies only to paths starting with `prefix`.
    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.path = PathMatch::Prefix(prefix.into());
        self
    }

    /// Report-only: decides, counts and sets headers, but never refuses. For dark-launching
    /// a quota and watching `turret_ratelimit_decisions_total{outcome="shadow_limited"}`.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Weighs each request: it spends `cost(request)` of the quota (default 1).
    pub fn cost<F>(mut self, cost: F) -> Self
    where
        F: Fn(RequestHead<'_>) -> u32 + Send + Sync + 'static,
    {
        self.cost = Some(Arc::new(cost));
        self
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy's quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    pub(crate) fn matches(&self, head: RequestHead<'_>) -> bool {
        if let Some(methods) = &self.methods
            && !methods.contains(head.method)
        {
            return false;
        }
        match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => head.uri.path() == &**p,
            PathMatch::Prefix(p) => head.uri.path().starts_with(&**p),
        }
    }

    pub(crate) fn cost_of(&self, head: RequestHead<'_>) -> u32 {
        self.cost.as_ref().map_or(1, |f| f(head))
    }

    pub(crate) fn metrics(&self) -> &PolicyMetrics {
        self.metrics.get_or_init(|| {
            let p = self.name.to_string();
            PolicyMetrics {
                allowed: metrics::counter!("turret_ratelimit_decisions_total", "policy" => p.clone(), "outcome" => "allowed"),
                limited: metrics::counter!("turret_ratelimit_decisions_total", "policy" => p.clone(), "outcome" => "limited"),
                shadow_limited: metrics::counter!("turret_ratelimit_decisions_total", "policy" => p.clone(), "outcome" => "shadow_limited"),
                backend_errors: metrics::counter!("turret_ratelimit_backend_errors_total", "policy" => p.clone()),
                latency: metrics::histogram!("turret_ratelimit_decision_seconds", "policy" => p),
            }
        })
    }
}
