//! The slow path of a GET or HEAD, after a look-up that is not a fresh hit: decide (serve
//! stale, refresh in the background, revalidate or fetch), reach the origin once per key
//! (coalesced in the process, behind the fill lease in the fleet), and answer from that
//! exchange.

use std::sync::{Arc, Mutex, MutexGuard};

use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body::Body;
use tower_service::Service;

use crate::{
    CachedResponse, Purge, ResponseBody, StorageFuture, Variants,
    admit::windows,
    cache_control::{CacheControl, Delta},
    fill::{Fill, Stored, store, store_revalidated},
    future::ResponseFuture,
    lease::LeaseOutcome,
    lookup::{Ctx, Lookup, select},
    policy::Outcome,
    range,
    respond::{
        annotate, cannot_revalidate, from_storage, gateway_timeout, hit, push_u64, reuse,
        serve_stale, staleness,
    },
    validate,
};

/// The inner service as the slow path holds it: a coalesced fill and a background refresh
/// run on spawned tasks, so the service, its future and its error are `Send + 'static`.
pub(crate) trait Inner<ReqBody, B>:
    Service<Request<ReqBody>, Response = Response<B>, Future: Send + 'static, Error: Send + 'static>
    + Send
    + 'static
{
}

impl<S, ReqBody, B> Inner<ReqBody, B> for S where
    S: Service<
            Request<ReqBody>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Send + 'static,
        > + Send
        + 'static
{
}

/// The `Cache-Status` member of a request sent on by a hit-for-miss marker.
const PASS_MEMBER: &str = "fwd=miss; detail=hit-for-miss";

/// GET/HEAD after a look-up that was not a fresh hit: waits for the look-up's answer (a
/// synchronous storage has it already), then decides.
pub(crate) fn looked_up<S, ReqBody, B>(
    ctx: Ctx,
    inner: S,
    req: Request<ReqBody>,
    force: bool,
    mut pending: StorageFuture<Variants>,
) -> ResponseFuture<S::Future, B, S::Error>
where
    S: Inner<ReqBody, B>,
    ReqBody: Default + Send + 'static,
    B: Body<Error: Send + 'static> + Send + 'static,
{
    let answered = pending.take_ready();
    ResponseFuture::boxed(Box::pin(async move {
        // Only an answer that had to be waited for says the storage is reachable again.
        let remote = answered.is_none();
        let result = match answered {
            Some(result) => result,
            None => pending.await,
        };
        let now = ctx.shared.clock.now();
        let found = select(
            &ctx.shared,
            result,
            remote,
            req.headers(),
            &ctx.directives,
            force,
            now,
        );
        decide(ctx, inner, req, found).await
    }))
}

/// After the look-up: a hit, a stale response (served, refreshed in the background, or
/// revalidated), or a miss.
async fn decide<S, ReqBody, B>(
    ctx: Ctx,
    inner: S,
    req: Request<ReqBody>,
    found: Lookup,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Inner<ReqBody, B>,
    ReqBody: Default + Send + 'static,
    B: Body<Error: Send + 'static> + Send + 'static,
{
    let now = ctx.shared.clock.now();
    match found {
        Lookup::Fresh(entry, ttl) => Ok(hit(
            &ctx.policy,
            &ctx.key,
            ctx.head,
            &entry,
            ttl,
            now,
            req.headers(),
        )),
        Lookup::Stale(entry, member) => {
            let windows = windows(&ctx, entry.headers());
            let stale_for = staleness(&entry, now);
            // RFC 9111 §5.2.1.2: the client accepts a stale response.
            let client_accepts = match ctx.directives.max_stale {
                Delta::Absent => false,
                Delta::Invalid => true,
                Delta::Seconds(s) => stale_for.as_secs() <= s,
            };
            if entry.ttl(now).is_none() && client_accepts && !windows.forbidden {
                return Ok(serve_stale(&ctx, &entry, now, req.headers(), "hit"));
            }
            if ctx.directives.only_if_cached {
                return Ok(gateway_timeout(&ctx));
            }
            if ctx.head {
                return forward_head(&ctx, inner, req, member, &entry).await;
            }
            // RFC 5861 §3: serve it now, refresh once in the background.
            if entry.ttl(now).is_none()
                && !windows.while_revalidate.is_zero()
                && stale_for <= windows.while_revalidate
                && tokio::runtime::Handle::try_current().is_ok()
            {
                let res = serve_stale(
                    &ctx,
                    &entry,
                    now,
                    req.headers(),
                    "hit; detail=stale-while-revalidate",
                );
                refresh_in_background(ctx, inner, req, entry);
                return Ok(res);
            }
            forward_get(ctx, inner, req, member, Some(entry)).await
        }
        Lookup::Miss(_) | Lookup::Pass if ctx.directives.only_if_cached => {
            Ok(gateway_timeout(&ctx))
        }
        Lookup::Miss(member) if ctx.head => forward_plain(&ctx, inner, req, member).await,
        Lookup::Miss(member) => forward_get(ctx, inner, req, member, None).await,
        Lookup::Pass if ctx.head => forward_plain(&ctx, inner, req, PASS_MEMBER).await,
        Lookup::Pass => forward_pass(ctx, inner, req).await,
    }
}

/// A GET for a URL that answered uncacheably (a fresh hit-for-miss marker): sent on at once
/// with the client's own conditionals (the origin evaluates them), neither coalesced nor
/// behind the fill lease; a response that may be stored now is stored, replacing the marker.
async fn forward_pass<S, ReqBody, B>(
    ctx: Ctx,
    inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    ReqBody: Default,
    B: Body,
{
    metrics::counter!("turret_cache_hit_for_miss_total").increment(1);
    tracing::debug!(key = %ctx.key, "hit-for-miss: straight to the origin");
    let client = req.headers().clone();
    let done = exchange(&ctx, inner, req, None, Fill::Pass).await;
    finish(&ctx, done, PASS_MEMBER, None, &client)
}

/// Forwards without storing (a HEAD: no body to store).
async fn forward_plain<S, ReqBody, B>(
    ctx: &Ctx,
    mut inner: S,
    req: Request<ReqBody>,
    member: &'static str,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body,
{
    ctx.policy.count(Outcome::Miss);
    let mut res = inner.call(req).await?.map(ResponseBody::inner);
    annotate(&ctx.shared, &mut res, member, "MISS");
    Ok(res)
}

/// A HEAD for a stale stored GET: forwarded; a 200 whose validators or length differ from the
/// stored response's invalidates it (RFC 9111 §4.3.5: the stored GET is outdated).
async fn forward_head<S, ReqBody, B>(
    ctx: &Ctx,
    inner: S,
    req: Request<ReqBody>,
    member: &'static str,
    stored: &CachedResponse,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body,
{
    let res = forward_plain(ctx, inner, req, member).await?;
    if res.status() == StatusCode::OK {
        let differs = [header::ETAG, header::LAST_MODIFIED, header::CONTENT_LENGTH]
            .iter()
            .any(|name| {
                let new = res.headers().get(name);
                new.is_some() && new != stored.headers().get(name)
            });
        if differs {
            tracing::debug!(key = %ctx.key, "a HEAD shows the stored GET is outdated");
            if let Err(e) = ctx.shared.storage.invalidate(&ctx.key, Purge::Remove).await {
                ctx.shared.storage_error("invalidate", &e);
            }
        }
    }
    Ok(res)
}

/// Removes the key from the set of running refreshes when the refresh ends.
struct Refreshing {
    set: Arc<Mutex<std::collections::HashSet<String>>>,
    key: String,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.key);
    }
}

/// Starts the one background revalidation of `key` in this process (and, with a fill
/// lease, in the fleet); nothing when one already runs.
fn refresh_in_background<S, ReqBody, B>(
    ctx: Ctx,
    inner: S,
    mut req: Request<ReqBody>,
    entry: Arc<CachedResponse>,
) where
    S: Inner<ReqBody, B>,
    ReqBody: Default + Send + 'static,
    B: Body<Error: Send + 'static> + Send + 'static,
{
    if !lock(&ctx.shared.refreshing).insert(ctx.key.clone()) {
        return;
    }
    let guard = Refreshing {
        set: ctx.shared.refreshing.clone(),
        key: ctx.key.clone(),
    };
    validate::add_validators(req.headers_mut(), entry.headers());
    tokio::spawn(async move {
        let _guard = guard;
        let held = match &ctx.shared.lease {
            Some(lease) => match lease.try_lead(format!("refresh:{}", ctx.key)).await {
                Some(held) => Some(held),
                None => {
                    tracing::debug!(key = %ctx.key, "another instance refreshes this key");
                    return;
                }
            },
            None => None,
        };
        tracing::debug!(key = %ctx.key, "stale-while-revalidate refresh");
        // The outcome is in storage (or logged); nobody waits for the response.
        let _ = exchange(&ctx, inner, req, Some(entry), Fill::Refresh).await;
        drop(held);
    });
}

/// Locks `m` even when poisoned: its holders make one change per lock, so it stays whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One exchange with the origin: the response for the request that made it, what was
/// stored, and whether it was a revalidation answered with 304.
struct Exchange<B: Body, E> {
    entry: Option<Arc<CachedResponse>>,
    res: Result<Response<ResponseBody<B>>, E>,
    /// `Some(status)` when the origin was asked; `None` when the answer came from what
    /// another instance stored while this one waited for its lease.
    origin_status: Option<StatusCode>,
    /// A 304 updated the stored response.
    revalidated: bool,
    /// The hit-for-miss marker this exchange left (its response may not be stored).
    marker: Option<Arc<CachedResponse>>,
}

/// Where the leader's exchange leaves its own response.
type Slot<B, E> = Arc<Mutex<Option<Exchange<B, E>>>>;

/// A GET that needs the origin: a miss, or a stale response to revalidate. With
/// coalescing, the first such request for `key` makes the exchange (on a spawned task) and
/// the others wait for it, then reuse what it stored when their Vary key matches; otherwise
/// (nothing stored, an error, another variant) they are released at once and make their own.
async fn forward_get<S, ReqBody, B>(
    ctx: Ctx,
    inner: S,
    mut req: Request<ReqBody>,
    member: &'static str,
    stale: Option<Arc<CachedResponse>>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Inner<ReqBody, B>,
    ReqBody: Default + Send + 'static,
    B: Body<Error: Send + 'static> + Send + 'static,
{
    let client = req.headers().clone();
    match &stale {
        Some(entry) if validate::has_validator(entry.headers()) => {
            validate::add_validators(req.headers_mut(), entry.headers());
        }
        _ => validate::strip_client_conditionals(req.headers_mut()),
    }
    // The whole representation is asked for, to be stored; the client's range is answered
    // from it (RFC 9111 §3.4 allows it; Varnish does the same).
    req.headers_mut().remove(header::RANGE);
    req.headers_mut().remove(header::IF_RANGE);
    let ctx = Arc::new(ctx);
    let Some(flights) = ctx.shared.flights.clone() else {
        let done = exchange(&ctx, inner, req, stale.clone(), Fill::Client).await;
        return finish(&ctx, done, member, stale.as_deref(), &client);
    };
    let out: Slot<B, S::Error> = Arc::new(Mutex::new(None));
    let mut own = Some((inner, req));
    let shared = flights
        .call(ctx.key.clone(), || {
            let started = own.take();
            let (ctx, out, stale) = (ctx.clone(), out.clone(), stale.clone());
            async move {
                let Some((inner, req)) = started else {
                    return Ok(None);
                };
                let done = exchange(&ctx, inner, req, stale, Fill::Client).await;
                // What it stored, or the marker that releases the waiters to the origin.
                let entry = done.entry.clone().or_else(|| done.marker.clone());
                *lock(&out) = Some(done);
                Ok(entry)
            }
        })
        .await;
    match own {
        // This request led the flight: its own response (with any fields not stored).
        None => {
            let done = lock(&out).take();
            match (done, shared) {
                (Some(done), Ok(_)) => finish(&ctx, done, member, stale.as_deref(), &client),
                (_, Err(e)) => std::panic::resume_unwind(Box::new(format!(
                    "the inner service of the response cache failed: {e}"
                ))),
                (None, Ok(_)) => std::panic::resume_unwind(Box::new(
                    "the response cache's fill ended without a response",
                )),
            }
        }
        Some((inner, req)) => {
            let now = ctx.shared.clock.now();
            match &shared {
                // The fill was uncacheable: every waiter goes to the origin at once, in
                // parallel, without taking the fill lease in turn.
                Ok(Some(entry)) if entry.is_marker() => {
                    let done = exchange(&ctx, inner, req, None, Fill::Pass).await;
                    return finish(&ctx, done, PASS_MEMBER, None, &client);
                }
                Ok(Some(entry)) if entry.matches(&client) => {
                    tracing::debug!(key = %ctx.key, "served from a coalesced exchange");
                    let res =
                        range::apply(entry, &client, false, reuse(entry, now, false, &client));
                    return Ok(collapsed(&ctx, res, member));
                }
                _ => {}
            }
            let done = exchange(&ctx, inner, req, stale.clone(), Fill::Client).await;
            finish(&ctx, done, member, stale.as_deref(), &client)
        }
    }
}

/// A response made from another request's exchange: counted and annotated `collapsed`.
fn collapsed<B>(ctx: &Ctx, mut res: Response<B>, member: &str) -> Response<B> {
    ctx.policy.count(Outcome::Collapsed);
    annotate(
        &ctx.shared,
        &mut res,
        &format!("{member}; collapsed"),
        "MISS",
    );
    res
}

/// The answer to one request from its exchange: stale on error when allowed
/// (RFC 5861 §4), a 504 when a `must-revalidate` response cannot be revalidated
/// (RFC 9111 §5.2.2.2), a 304 when the client's copy is current, else the origin's response.
fn finish<B: Body, E>(
    ctx: &Ctx,
    done: Exchange<B, E>,
    member: &'static str,
    stale: Option<&CachedResponse>,
    client: &HeaderMap,
) -> Result<Response<ResponseBody<B>>, E> {
    let now = ctx.shared.clock.now();
    let failed = match &done.res {
        Err(_) => true,
        Ok(res) => matches!(res.status().as_u16(), 500 | 502 | 503 | 504),
    };
    if failed && let Some(entry) = stale {
        let windows = windows(ctx, entry.headers());
        if !windows.forbidden
            && !windows.if_error.is_zero()
            && staleness(entry, now) <= windows.if_error
        {
            let status = done.res.as_ref().map_or(0, |r| r.status().as_u16());
            let detail = if status == 0 {
                "fwd=stale; detail=stale-if-error".to_owned()
            } else {
                format!("fwd=stale; fwd-status={status}; detail=stale-if-error")
            };
            return Ok(serve_stale(ctx, entry, now, client, &detail));
        }
        if done.res.is_err() && windows.forbidden {
            tracing::debug!(key = %ctx.key, "must-revalidate and the origin failed: 504");
            return Ok(cannot_revalidate(ctx));
        }
    }
    let Exchange {
        entry,
        res,
        origin_status,
        revalidated,
        marker: _,
    } = done;
    let mut res = res?;
    let Some(origin_status) = origin_status else {
        // Filled by another instance while this one waited for the lease: `res` is already
        // the stored response; only a client whose copy is current gets a 304 instead.
        let res = match &entry {
            Some(entry) if validate::is_conditional(client) => reuse(entry, now, false, client),
            _ => res,
        };
        let res = match &entry {
            Some(entry) => range::apply(entry, client, false, res),
            None => res,
        };
        return Ok(collapsed(ctx, res, member));
    };
    if let Some(entry) = &entry
        && validate::is_conditional(client)
        && validate::client_copy_is_current(entry.headers(), client)
    {
        res = reuse(entry, now, false, client);
    }
    if let Some(entry) = &entry {
        res = range::apply(entry, client, false, res);
    }
    let mut member = member.to_owned();
    if stale.is_some() {
        member.push_str("; fwd-status=");
        push_u64(&mut member, u64::from(origin_status.as_u16()));
    }
    if entry.is_some() {
        member.push_str("; stored");
    }
    if revalidated {
        ctx.policy.count(Outcome::Revalidated);
        annotate(&ctx.shared, &mut res, &member, "REVALIDATED");
    } else {
        ctx.policy.count(Outcome::Miss);
        annotate(&ctx.shared, &mut res, &member, "MISS");
    }
    Ok(res)
}

/// Calls the origin (after taking the fleet-wide fill lease, when there is one and this is
/// a miss) and stores what RFC 9111 allows: a 304 to a revalidation updates the stored
/// response (§4.3.3, §4.3.4), anything else is stored when §3 allows it.
async fn exchange<S, ReqBody, B>(
    ctx: &Ctx,
    mut inner: S,
    req: Request<ReqBody>,
    stale: Option<Arc<CachedResponse>>,
    fill: Fill,
) -> Exchange<B, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    ReqBody: Default,
    B: Body,
{
    let shared = &ctx.shared;
    let mut held = None;
    if fill == Fill::Client
        && stale.is_none()
        && let Some(lease) = &shared.lease
    {
        let deadline = tokio::time::Instant::now() + shared.lease_wait;
        let lease_key = format!("fill:{}", ctx.key);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let outcome = lease.lead_or_wait(lease_key.clone(), left).await;
            let last = match outcome {
                LeaseOutcome::Unavailable => break,
                LeaseOutcome::Lead(guard) => {
                    held = Some(guard);
                    true
                }
                LeaseOutcome::Released => false,
                LeaseOutcome::TimedOut => true,
            };
            // Another instance may have filled meanwhile (before we took the lease, or
            // while we waited): read what it stored.
            let result = shared.storage.get(&ctx.key).await;
            let now = shared.clock.now();
            match select(
                shared,
                result,
                true,
                req.headers(),
                &CacheControl::default(),
                false,
                now,
            ) {
                Lookup::Fresh(entry, _) => {
                    return Exchange {
                        res: Ok(from_storage(&entry, now, false)),
                        entry: Some(entry),
                        origin_status: None,
                        revalidated: false,
                        marker: None,
                    };
                }
                // The holder's answer was uncacheable: no point waiting for the next one.
                Lookup::Pass => break,
                _ if last => break,
                _ => {}
            }
        }
    }
    let failed = |e| Exchange {
        entry: None,
        res: Err(e),
        origin_status: None,
        revalidated: false,
        marker: None,
    };
    let mut request_time = shared.clock.now();
    let mut request_headers = req.headers().clone();
    // A revalidation keeps its head (a GET has no content to consume): a 304 that selects no
    // stored response cannot answer it (RFC 9111 §4.3.4), so it is sent again without the
    // cache's conditions.
    let (parts, body) = req.into_parts();
    let again = stale.as_ref().map(|_| parts.clone());
    let mut res = match inner.call(Request::from_parts(parts, body)).await {
        Ok(res) => res,
        Err(e) => return failed(e),
    };
    if let (Some(stored), Some(mut parts)) = (&stale, again)
        && res.status() == StatusCode::NOT_MODIFIED
        && !validate::selects(stored.headers(), res.headers())
    {
        tracing::debug!(
            key = %ctx.key,
            "a 304 that selects no stored response (RFC 9111 §4.3.4): asking again unconditionally"
        );
        drop(res);
        validate::strip_client_conditionals(&mut parts.headers);
        request_time = shared.clock.now();
        request_headers = parts.headers.clone();
        if let Err(e) = std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
            return failed(e);
        }
        res = match inner
            .call(Request::from_parts(parts, ReqBody::default()))
            .await
        {
            Ok(res) => res,
            Err(e) => return failed(e),
        };
    }
    let status = res.status();
    let done = match stale {
        Some(stale)
            if status == StatusCode::NOT_MODIFIED
                && validate::selects(stale.headers(), res.headers()) =>
        {
            let (parts, _) = res.into_parts();
            let entry =
                store_revalidated(ctx, &stale, &parts.headers, &request_headers, request_time)
                    .await;
            let now = shared.clock.now();
            let res = from_storage(&entry, now, false);
            Exchange {
                entry: Some(entry),
                res: Ok(res),
                origin_status: Some(status),
                revalidated: true,
                marker: None,
            }
        }
        _ => {
            let (stored, res) = store(ctx, &request_headers, request_time, res, fill).await;
            let (entry, marker) = match stored {
                Stored::Entry(entry) => (Some(entry), None),
                Stored::Marker(marker) => (None, Some(marker)),
                Stored::Nothing => (None, None),
            };
            Exchange {
                entry,
                res: Ok(res),
                origin_status: Some(status),
                revalidated: false,
                marker,
            }
        }
    };
    drop(held);
    done
}
