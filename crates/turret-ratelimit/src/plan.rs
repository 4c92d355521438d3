//! Quotas that apply together ([`Plan`]), and the plans a policy chooses from per request and
//! changes at run time ([`Plans`]).

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{Arc, OnceLock},
};

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::{Algorithm, ParseQuotaError, Quota, policy::PolicyMetrics, policy::sanitize_name};

/// One named quota of a [`Plan`]: one item of `RateLimit-Policy`, and its own state (in
/// memory and on Redis) per client key.
#[derive(Clone)]
pub struct Limit {
    name: Arc<str>,
    quota: Quota,
    /// `"name"`, the start of the `RateLimit` item.
    pub(crate) quoted_name: Box<[u8]>,
    /// `X-RateLimit-Limit`.
    pub(crate) limit_field: HeaderValue,
}

impl Limit {
    /// A quota named `name` (printable ASCII; other characters become `_`).
    pub fn new(name: &str, quota: Quota) -> Self {
        let name: Arc<str> = sanitize_name(name).into();
        Self {
            quoted_name: format!("\"{name}\"").into_bytes().into(),
            limit_field: HeaderValue::from(quota.count()),
            name,
            quota,
        }
    }

    /// The limit's name, as it appears in the header fields.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// This limit's part of its state's key under `policy`: empty for a limit named as the
    /// policy (a policy of one quota keeps the keys it always had).
    pub(crate) fn part<'a>(&'a self, policy: &str) -> &'a str {
        if *self.name == *policy {
            ""
        } else {
            &self.name
        }
    }

    /// `"name";q=…;w=…`, this limit's item of `RateLimit-Policy`.
    fn policy_item(&self) -> String {
        let window = self.quota.period().as_micros().div_ceil(1_000_000).max(1);
        format!("\"{}\";q={};w={window}", self.name, self.quota.count())
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .finish()
    }
}

impl PartialEq for Limit {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.quota == other.quota
    }
}

impl Eq for Limit {}

/// A named set of quotas that all apply to a request: it is admitted only if every one
/// admits it, and a refused request spends nothing on any of them (all-or-nothing).
///
/// ```
/// use turret_ratelimit::{Plan, Quota};
///
/// // 10 a second for bursts and 1,000 a day.
/// let free = Plan::new("free", Quota::per_second(10))
///     .and("free-daily", Quota::per_hour(1000 / 24));
/// assert_eq!(free.limits().len(), 2);
///
/// // From a flag: every quota of the list applies; several get names from their windows.
/// let plan: Plan = "5/1s,20/60s".parse().unwrap();
/// let names: Vec<_> = plan.limits().iter().map(|l| l.name()).collect();
/// assert_eq!(names, ["default-1s", "default-60s"]);
/// assert_eq!("100/60s".parse::<Plan>().unwrap().limits()[0].name(), "default");
///
/// // A plan ten times as large, under its own name (its own state).
/// let partner = plan.scaled("partner", 10);
/// assert_eq!(partner.limits()[1].quota().count(), 200);
/// ```
#[derive(Clone)]
pub struct Plan(Arc<PlanInner>);

struct PlanInner {
    name: Arc<str>,
    limits: Box<[Limit]>,
    /// `RateLimit-Policy`: every limit's item.
    policy_field: HeaderValue,
    /// Whether every limit is GCRA (delay mode reserves GCRA slots only).
    all_gcra: bool,
    /// The metrics of the policy that first used this plan, and that policy's name.
    metrics: OnceLock<(Arc<str>, Arc<PolicyMetrics>)>,
}

impl Plan {
    /// A plan of one quota, named `name` (the limit has the plan's name).
    pub fn new(name: &str, quota: Quota) -> Self {
        Self::build(sanitize_name(name).into(), vec![Limit::new(name, quota)])
    }

    /// The quotas of `quotas`, all applying, named after the plan: one quota takes the plan's
    /// name; several take `NAME-WINDOW` (`default-1s`, `default-60s`, `default-1h`; a
    /// repeated window adds `-2`, `-3`…). `None` when `quotas` is empty.
    pub fn from_quotas(name: &str, quotas: impl IntoIterator<Item = Quota>) -> Option<Self> {
        let name = sanitize_name(name);
        let quotas: Vec<Quota> = quotas.into_iter().collect();
        if quotas.is_empty() {
            return None;
        }
        let limits = if quotas.len() == 1 {
            vec![Limit::new(&name, quotas[0])]
        } else {
            let mut seen: Vec<String> = Vec::new();
            quotas
                .iter()
                .map(|q| {
                    let base = format!("{name}-{}", window_name(q));
                    let mut n = base.clone();
                    let mut i = 1;
                    while seen.contains(&n) {
                        i += 1;
                        n = format!("{base}-{i}");
                    }
                    seen.push(n.clone());
                    Limit::new(&n, *q)
                })
                .collect()
        };
        Some(Self::build(name.into(), limits))
    }

    /// Adds a quota named `limit`, which applies as well. A name already in the plan gets
    /// `-2` (`-3`…) added, so that each limit keeps its own state.
    pub fn and(self, limit: &str, quota: Quota) -> Self {
        let mut limits = self.0.limits.to_vec();
        let base = sanitize_name(limit);
        let mut name = base.clone();
        let mut i = 1;
        while limits.iter().any(|l| *l.name == *name) {
            i += 1;
            name = format!("{base}-{i}");
        }
        limits.push(Limit::new(&name, quota));
        Self::build(self.0.name.clone(), limits)
    }

    /// This plan's quotas with their counts and bursts multiplied by `factor` (saturating),
    /// as a plan named `name` whose limits are named after it as in
    /// [`from_quotas`](Self::from_quotas) (so their state is their own).
    pub fn scaled(&self, name: &str, factor: u32) -> Self {
        let quotas = self.0.limits.iter().map(|l| {
            let q = l.quota;
            Quota::per(q.period(), q.count().saturating_mul(factor))
                .burst(q.burst_size().saturating_mul(factor))
                .with_algorithm(q.algorithm())
        });
        Self::from_quotas(name, quotas).unwrap_or_else(|| self.clone())
    }

    /// `COUNT/PERIOD[,COUNT/PERIOD…]` as a plan named `name`, as [`from_quotas`](Self::from_quotas)
    /// names its limits.
    pub fn parse(name: &str, s: &str) -> Result<Self, ParseQuotaError> {
        let quotas = s
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<Quota>, _>>()?;
        // `split` gives at least one piece, and each piece parsed.
        Ok(
            Self::from_quotas(name, quotas)
                .unwrap_or_else(|| Plan::new(name, Quota::per_second(0))),
        )
    }

    /// Every limit's algorithm set to `algorithm`.
    pub fn with_algorithm(&self, algorithm: Algorithm) -> Self {
        let limits = self
            .0
            .limits
            .iter()
            .map(|l| Limit::new(&l.name, l.quota.with_algorithm(algorithm)))
            .collect();
        Self::build(self.0.name.clone(), limits)
    }

    fn build(name: Arc<str>, limits: Vec<Limit>) -> Self {
        let items: Vec<String> = limits.iter().map(Limit::policy_item).collect();
        let policy_field = HeaderValue::from_str(&items.join(", "))
            .unwrap_or_else(|_| HeaderValue::from_static("\"default\""));
        let all_gcra = limits
            .iter()
            .all(|l| l.quota.algorithm() == Algorithm::Gcra);
        Self(Arc::new(PlanInner {
            name,
            limits: limits.into(),
            policy_field,
            all_gcra,
            metrics: OnceLock::new(),
        }))
    }

    /// The plan's name (in metrics, as the `plan` label).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Its limits, in order.
    pub fn limits(&self) -> &[Limit] {
        &self.0.limits
    }

    /// Whether every limit is GCRA, which delay mode needs (other algorithms have no slot to
    /// reserve).
    pub fn is_all_gcra(&self) -> bool {
        self.0.all_gcra
    }

    pub(crate) fn policy_field(&self) -> &HeaderValue {
        &self.0.policy_field
    }

    /// The plan's metrics under policy `policy`.
    pub(crate) fn metrics(&self, policy: &Arc<str>) -> Arc<PolicyMetrics> {
        let (owner, metrics) = self.0.metrics.get_or_init(|| {
            (
                policy.clone(),
                Arc::new(PolicyMetrics::new(policy, &self.0.name)),
            )
        });
        if **owner == **policy {
            metrics.clone()
        } else {
            // A plan shared by two policies: the second one's handles are made per call.
            Arc::new(PolicyMetrics::new(policy, &self.0.name))
        }
    }
}

/// A window as part of a name: `1s`, `60s`, `500ms`; whole hours and days as `1h`, `1d`.
fn window_name(q: &Quota) -> String {
    let p = q.period();
    let secs = p.as_secs();
    if p.subsec_nanos() != 0 {
        format!("{}ms", p.as_millis())
    } else if secs >= 86_400 && secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else if secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else {
        format!("{secs}s")
    }
}

impl PartialEq for Plan {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.name == other.0.name && self.0.limits == other.0.limits)
    }
}

impl Eq for Plan {}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("name", &self.0.name)
            .field("limits", &self.0.limits)
            .finish()
    }
}

/// `COUNT/PERIOD[,COUNT/PERIOD…]`: a plan named `default` (see [`Plan::parse`]).
impl FromStr for Plan {
    type Err = ParseQuotaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Plan::parse("default", s)
    }
}

/// The plans a policy chooses from, shared by every clone and changeable at run time: a
/// default, named plans a request can select (a tenant's tier, an API key's plan), and
/// overrides for single client keys.
///
/// A request gets, in this order: its key's override; the named plan its policy's
/// [`select_plan`](crate::Policy::select_plan) function names; the default. A change is seen
/// from the next decision on, in every instance using this handle; on Redis the quota
/// travels with each call, so a fleet has no stale copy to wait for.
///
/// ```
/// use turret_ratelimit::{Plan, Plans, Policy, Quota};
///
/// let plans = Plans::new(Plan::new("free", Quota::per_minute(60)))
///     .with(Plan::new("pro", Quota::per_minute(600)));
/// let policy = Policy::with_plans("api", plans.clone())
///     .select_plan(|req| req.headers.get("x-plan").and_then(|v| v.to_str().ok()));
///
/// // At run time: a key gets ten times the default, and the default is lowered.
/// plans.override_key("key-42", plans.default_plan().scaled("partner", 10));
/// plans.set_default(Plan::new("free", Quota::per_minute(30)));
/// assert_eq!(plans.default_plan().limits()[0].quota().count(), 30);
/// # let _ = policy;
/// ```
#[derive(Clone)]
pub struct Plans(Arc<ArcSwap<Table>>);

#[derive(Clone)]
struct Table {
    default: Plan,
    named: HashMap<Arc<str>, Plan>,
    keys: HashMap<Box<str>, Plan>,
}

impl Plans {
    /// Plans with `default` and nothing else.
    pub fn new(default: Plan) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(Table {
            default,
            named: HashMap::new(),
            keys: HashMap::new(),
        })))
    }

    /// Adds a plan a request can select by its name (builder form of [`set`](Self::set)).
    pub fn with(self, plan: Plan) -> Self {
        self.set(plan);
        self
    }

    fn change(&self, f: impl Fn(&mut Table)) {
        self.0.rcu(|table| {
            let mut table = Table::clone(table);
            f(&mut table);
            table
        });
    }

    /// Replaces the default plan.
    pub fn set_default(&self, plan: Plan) {
        self.change(|t| t.default = plan.clone());
    }

    /// Adds the plan, or replaces the one of the same name.
    pub fn set(&self, plan: Plan) {
        self.change(|t| {
            t.named.insert(plan.0.name.clone(), plan.clone());
        });
    }

    /// Removes the named plan; requests selecting it get the default. Whether it was there.
    pub fn remove(&self, name: &str) -> bool {
        let found = self.0.load().named.contains_key(name);
        self.change(|t| {
            t.named.remove(name);
        });
        found
    }

    /// Requests with this client key get `plan`, whatever they select.
    pub fn override_key(&self, key: &str, plan: Plan) {
        self.change(|t| {
            t.keys.insert(key.into(), plan.clone());
        });
    }

    /// Removes a key's override. Whether there was one.
    pub fn clear_override(&self, key: &str) -> bool {
        let found = self.0.load().keys.contains_key(key);
        self.change(|t| {
            t.keys.remove(key);
        });
        found
    }

    /// The default plan.
    pub fn default_plan(&self) -> Plan {
        self.0.load().default.clone()
    }

    /// The named plan.
    pub fn get(&self, name: &str) -> Option<Plan> {
        self.0.load().named.get(name).cloned()
    }

    /// The plan a request with `key` that selected `selected` gets.
    pub fn choose(&self, selected: Option<&str>, key: &str) -> Plan {
        let table = self.0.load();
        if !table.keys.is_empty()
            && let Some(plan) = table.keys.get(key)
        {
            return plan.clone();
        }
        if let Some(name) = selected
            && let Some(plan) = table.named.get(name)
        {
            return plan.clone();
        }
        table.default.clone()
    }
}

impl fmt::Debug for Plans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0.load();
        f.debug_struct("Plans")
            .field("default", &t.default)
            .field("named", &t.named.len())
            .field("key_overrides", &t.keys.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lists_name_their_limits_by_window_and_keep_them_distinct() {
        let p = Plan::parse("api", "5/1s,20/60s,7/1s,50/500ms").unwrap();
        let names: Vec<_> = p.limits().iter().map(Limit::name).collect();
        assert_eq!(names, ["api-1s", "api-60s", "api-1s-2", "api-500ms"]);
        assert_eq!(
            p.policy_field(),
            "\"api-1s\";q=5;w=1, \"api-60s\";q=20;w=60, \"api-1s-2\";q=7;w=1, \"api-500ms\";q=50;w=1"
        );
        let one = Plan::parse("api", "100/60s").unwrap();
        assert_eq!(one.limits()[0].name(), "api");
        assert_eq!(one.policy_field(), "\"api\";q=100;w=60");
        let err = Plan::parse("api", "5/1s,,20/60s").unwrap_err();
        assert!(err.to_string().starts_with("invalid quota \"\""), "{err}");
        assert!(Plan::parse("api", "5/1s,20/60y").is_err());
        assert!(Plan::from_quotas("x", []).is_none());
    }

    #[test]
    fn and_keeps_names_unique() {
        let p = Plan::new("p", Quota::per_second(1)).and("p", Quota::per_minute(5));
        assert_eq!(p.limits()[1].name(), "p-2");
        assert!(p.is_all_gcra());
        let p = p.with_algorithm(Algorithm::FixedWindow);
        assert!(!p.is_all_gcra());
    }

    #[test]
    fn scaled_multiplies_count_and_burst() {
        let p = Plan::new("free", Quota::per_second(10).burst(2))
            .and("daily", Quota::per(Duration::from_secs(86_400), 1000));
        let s = p.scaled("partner", 10);
        assert_eq!(s.name(), "partner");
        assert_eq!(s.limits()[0].quota().count(), 100);
        assert_eq!(s.limits()[0].quota().burst_size(), 20);
        assert_eq!(s.limits()[1].quota().count(), 10_000);
        assert_eq!(s.limits()[1].name(), "partner-1d");
        assert_eq!(
            Plan::parse("p", "1/1h,1/90m").unwrap().limits()[0].name(),
            "p-1h"
        );
    }

    #[test]
    fn a_request_gets_its_key_override_then_its_selection_then_the_default() {
        let plans = Plans::new(Plan::new("free", Quota::per_minute(1)))
            .with(Plan::new("pro", Quota::per_minute(2)));
        assert_eq!(plans.choose(None, "k").name(), "free");
        assert_eq!(plans.choose(Some("pro"), "k").name(), "pro");
        assert_eq!(plans.choose(Some("nope"), "k").name(), "free");
        plans.override_key("k", Plan::new("vip", Quota::per_minute(3)));
        assert_eq!(plans.choose(Some("pro"), "k").name(), "vip");
        assert_eq!(plans.choose(Some("pro"), "other").name(), "pro");
        assert!(plans.clear_override("k"));
        assert!(!plans.clear_override("k"));
        assert!(plans.remove("pro"));
        assert_eq!(plans.choose(Some("pro"), "k").name(), "free");
        // A clone is the same handle.
        let clone = plans.clone();
        clone.set_default(Plan::new("free", Quota::per_minute(9)));
        assert_eq!(plans.default_plan().limits()[0].quota().count(), 9);
    }
}
