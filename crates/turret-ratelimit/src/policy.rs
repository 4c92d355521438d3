//! Which requests a quota applies to.

use std::{fmt, sync::Arc, time::Duration};

use http::{Extensions, HeaderMap, Method, Uri};

use crate::{Plan, Plans, Quota};

/// The parts of a request a cost function, matcher or plan selector may look at.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (what middleware before this one inserted: an authenticated tenant,
    /// an API key's plan).
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `req`.
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

type CostFn = Arc<dyn Fn(RequestHead<'_>) -> u32 + Send + Sync>;
type SelectFn = Arc<dyn for<'a> Fn(RequestHead<'a>) -> Option<&'a str> + Send + Sync>;

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Exact(Arc<str>),
    Prefix(Arc<str>),
}

/// The default of [`Policy::max_waiting`]: requests of one key held at once in delay mode.
pub const DEFAULT_MAX_WAITING: u32 = 64;

/// A named set of quotas and the requests it applies to.
///
/// A policy applies a [`Plan`] to each request: by default one quota
/// ([`Policy::new`]); several that must all admit ([`Plan::and`]); or a plan chosen per
/// request from [`Plans`] that can change at run time ([`Policy::with_plans`]).
///
/// ```
/// use std::time::Duration;
/// use http::Method;
/// use turret_ratelimit::{Plan, Policy, Quota};
///
/// let writes = Policy::new("writes", Quota::per_minute(10))
///     .methods([Method::POST, Method::PUT, Method::DELETE])
///     .path_prefix("/api/");
/// let reports = Policy::new("reports", Quota::per_hour(100))
///     .path("/reports")
///     .cost(|req| if req.uri.query().is_some_and(|q| q.contains("full")) { 10 } else { 1 });
/// // 10 a second and 1,000 an hour, both; a request over the rate waits up to 2 s for
/// // its turn instead of being refused.
/// let api = Policy::with_plan(
///     "api",
///     Plan::new("api-1s", Quota::per_second(10)).and("api-1h", Quota::per_hour(1000)),
/// )
/// .delay(Duration::from_secs(2));
/// ```
#[derive(Clone)]
pub struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) plans: Plans,
    select: Option<SelectFn>,
    methods: Option<Arc<[Method]>>,
    path: PathMatch,
    pub(crate) shadow: bool,
    cost: Option<CostFn>,
    pub(crate) delay: Option<Duration>,
    pub(crate) max_waiting: u32,
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

#[derive(Debug)]
pub(crate) struct PolicyMetrics {
    pub(crate) allowed: metrics::Counter,
    pub(crate) limited: metrics::Counter,
    pub(crate) shadow_limited: metrics::Counter,
    pub(crate) delayed: metrics::Counter,
    pub(crate) backend_errors: metrics::Counter,
    pub(crate) latency: metrics::Histogram,
}

impl PolicyMetrics {
    /// The handles of one policy and plan (`policy` and `plan` labels).
    pub(crate) fn new(policy: &str, plan: &str) -> Self {
        let (p, n) = (policy.to_owned(), plan.to_owned());
        Self {
            allowed: metrics::counter!("turret_ratelimit_decisions_total", "policy" => p.clone(), "plan" => n.clone(), "outcome" => "allowed"),
            limited: metrics::counter!("turret_ratelimit_decisions_total", "policy" => p.clone(), "plan" => n.clone(), "outcome" => "limited"),
            shadow_limited: metrics::counter!("turret_ratelimit_decisions_total", "policy" => p.clone(), "plan" => n.clone(), "outcome" => "shadow_limited"),
            delayed: metrics::counter!("turret_ratelimit_delayed_total", "policy" => p.clone(), "plan" => n.clone()),
            backend_errors: metrics::counter!("turret_ratelimit_backend_errors_total", "policy" => p.clone(), "plan" => n.clone()),
            latency: metrics::histogram!("turret_ratelimit_decision_seconds", "policy" => p, "plan" => n),
        }
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("plans", &self.plans)
            .field("selects_plan", &self.select.is_some())
            .field("methods", &self.methods)
            .field("path", &self.path)
            .field("shadow", &self.shadow)
            .field("weighted", &self.cost.is_some())
            .field("delay", &self.delay)
            .finish()
    }
}

impl Policy {
    /// A policy named `name` (used in keys, headers and metrics) applying one quota. The
    /// name is made of printable ASCII; other characters are replaced by `_`.
    pub fn new(name: &str, quota: Quota) -> Self {
        Self::with_plan(name, Plan::new(name, quota))
    }

    /// A policy applying every quota of `plan` (all must admit a request).
    pub fn with_plan(name: &str, plan: Plan) -> Self {
        Self::with_plans(name, Plans::new(plan))
    }

    /// A policy choosing each request's plan from `plans` (a handle that changes them at run
    /// time): a key's override, else the plan [`select_plan`](Self::select_plan) names,
    /// else the default.
    pub fn with_plans(name: &str, plans: Plans) -> Self {
        Self {
            name: sanitize_name(name).into(),
            plans,
            select: None,
            methods: None,
            path: PathMatch::Any,
            shadow: false,
            cost: None,
            delay: None,
            max_waiting: DEFAULT_MAX_WAITING,
        }
    }

    /// Names each request's plan, e.g. from an extension that authentication set or a
    /// header; a name that is not in the [`Plans`] (or `None`) gets the default. A client
    /// may send any header, so a plan named by a header is a plan a client can choose.
    ///
    /// ```
    /// use turret_ratelimit::{Plan, Plans, Policy, Quota};
    ///
    /// #[derive(Clone)]
    /// struct Tier(&'static str); // inserted by the authentication layer
    ///
    /// let plans = Plans::new(Plan::new("free", Quota::per_minute(60)))
    ///     .with(Plan::new("pro", Quota::per_minute(600)));
    /// let policy = Policy::with_plans("api", plans)
    ///     .select_plan(|req| req.extensions.get::<Tier>().map(|t| t.0));
    /// # let _ = policy;
    /// ```
    pub fn select_plan<F>(mut self, select: F) -> Self
    where
        F: for<'a> Fn(RequestHead<'a>) -> Option<&'a str> + Send + Sync + 'static,
    {
        self.select = Some(Arc::new(select));
        self
    }

    /// Delay mode (nginx's `limit_req … delay=`): a request over the rate waits up to `max`
    /// for its turn instead of being refused; beyond `max`, or with
    /// [`max_waiting`](Self::max_waiting) requests of its key already waiting, it is refused
    /// as without. The turn is reserved when it is decided (on Redis, by the script, so
    /// the fleet spaces requests at the rate); a waiting request that is dropped (its client
    /// gone) gives its turn back. Applies to plans whose quotas are all
    /// [GCRA](crate::Algorithm::Gcra) (the others have no turn to reserve, and refuse).
    pub fn delay(mut self, max: Duration) -> Self {
        self.delay = (!max.is_zero()).then_some(max);
        self
    }

    /// In delay mode, at most this many requests of one key wait at once in this instance
    /// (default [`DEFAULT_MAX_WAITING`]); more are decided without a delay.
    pub fn max_waiting(mut self, max: u32) -> Self {
        self.max_waiting = max;
        self
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

    /// The plans the policy chooses from: a handle; changes through it apply from the next
    /// decision.
    pub fn plans(&self) -> &Plans {
        &self.plans
    }

    /// The plan for a request with this head and key.
    pub(crate) fn plan_for(&self, head: RequestHead<'_>, key: &str) -> Plan {
        let selected = self.select.as_ref().and_then(|f| f(head));
        self.plans.choose(selected, key)
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
}
