//! Filling the storage: a response stored as admitted, a hit-for-miss marker for an answer
//! that may not be stored, and a stored response updated by a 304 (RFC 9111 §4.3.4).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::Body;

use turret_body::Tee;

use crate::{
    CachedResponse, Purge, ResponseBody,
    admit::{self, admit, response_directives, stored_headers, tags},
    body::collect,
    entry::HIT_FOR_MISS,
    lookup::Ctx,
    validate,
};

/// How an exchange reaches the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// A miss or a revalidation for a client: behind the fleet's fill lease (for a miss),
    /// leaving a hit-for-miss marker when the answer may not be stored.
    Client,
    /// A background refresh: no lease wait (its own lease was taken), a marker when
    /// uncacheable.
    Refresh,
    /// Sent on by a hit-for-miss marker (or released by a fill that left one): no lease,
    /// no new marker.
    Pass,
}

/// What a fill left in storage.
pub(crate) enum Stored {
    Entry(Arc<CachedResponse>),
    /// The response may not be stored: a hit-for-miss marker was.
    Marker(Arc<CachedResponse>),
    Nothing,
}

/// Stores the response when RFC 9111 §3 allows, and its body's exact size is known and
/// within the limit. Anything else streams through untouched, and leaves a hit-for-miss
/// marker when it is the URL's answer rather than a failure.
pub(crate) async fn store<B: Body>(
    ctx: &Ctx,
    request_headers: &HeaderMap,
    request_time: Duration,
    res: Response<B>,
    fill: Fill,
) -> (Stored, Response<ResponseBody<B>>) {
    let shared = &ctx.shared;
    let key = &ctx.key;
    let response_time = shared.clock.now();
    let (mut parts, body) = res.into_parts();
    let tags = tags(ctx, &parts.headers);
    if !parts.headers.contains_key(header::DATE) {
        // RFC 9110 §6.6.1: a recipient that caches a response without `Date` adds the time
        // it received it, so that every reuse carries when it was made, not when it is sent.
        insert_date(&mut parts.headers, response_time);
    }
    if !shared.expose_tags {
        for name in &shared.tag_fields {
            parts.headers.remove(name);
        }
    }
    let admitted = admit(
        ctx,
        parts.status,
        &parts.headers,
        request_headers,
        request_time,
        response_time,
    )
    .and_then(|admission| match body.size_hint().exact() {
        Some(size) if size <= shared.max_entry_size.min(shared.stream_above) => {
            Ok((admission, false))
        }
        Some(size) if size <= shared.max_entry_size => Ok((admission, true)),
        Some(_) => Err("too-large"),
        // Of unknown length: streamed, and stored if it ends within the bound.
        None => Ok((admission, true)),
    });
    let admission = match admitted {
        Ok((admission, true)) => {
            return (
                Stored::Nothing,
                stream_fill(
                    ctx,
                    request_headers,
                    request_time,
                    response_time,
                    admission,
                    tags,
                    parts,
                    body,
                ),
            );
        }
        Ok((admission, false)) => admission,
        Err(why) => {
            tracing::debug!(%key, why, "response not stored");
            let stored = match fill {
                Fill::Pass => Stored::Nothing,
                Fill::Client | Fill::Refresh => {
                    mark_uncacheable(ctx, parts.status, why, tags, request_headers, response_time)
                        .await
                }
            };
            return (
                stored,
                Response::from_parts(parts, ResponseBody::inner(body)),
            );
        }
    };
    let collected = collect(body, shared.max_entry_size).await;
    let Some(bytes) = collected.storable_bytes() else {
        tracing::debug!(%key, "response not stored: body error or trailers");
        return (
            Stored::Nothing,
            Response::from_parts(parts, collected.into_body()),
        );
    };
    let entry = Arc::new(entry_of(
        ctx,
        parts.status,
        &parts.headers,
        &admission,
        bytes,
        request_headers,
        (request_time, response_time),
        tags,
    ));
    let stored = match put(ctx, entry, admission.ttl).await {
        Some(entry) => Stored::Entry(entry),
        None => Stored::Nothing,
    };
    (stored, Response::from_parts(parts, collected.into_body()))
}

/// The entry to store for a response: its stored fields (§3.1, plus the policy's key
/// fields as `Vary`), `bytes`, the request's fields for Vary, the exchange's times.
#[allow(clippy::too_many_arguments)]
fn entry_of(
    ctx: &Ctx,
    status: StatusCode,
    headers: &HeaderMap,
    admission: &admit::Admission,
    bytes: Bytes,
    request_headers: &HeaderMap,
    (request_time, response_time): (Duration, Duration),
    tags: Vec<String>,
) -> CachedResponse {
    let mut stored = stored_headers(headers, &admission.cc, ctx.shared.rules.set_cookie);
    for name in &ctx.policy.key_headers {
        stored.append(
            header::VARY,
            HeaderValue::from_str(name.as_str()).unwrap_or(HeaderValue::from_static("*")),
        );
    }
    CachedResponse::new(
        status,
        stored,
        bytes,
        request_headers,
        request_time,
        response_time,
        admission.lifetime,
        admission.initial_age,
    )
    .with_tags(tags)
}

/// A streaming fill: the body goes to the client frame by frame as the origin sends it,
/// and a [`Tee`] keeps a copy — at most `max_entry_size`, within the layer's budget of fill
/// bytes in flight. A copy that completes is stored (on a spawned task); one that passes a
/// bound, ends in an error or trailers, or whose client goes away first is dropped, and the
/// body still streams. With the budget spent, the response passes through uncached.
#[allow(clippy::too_many_arguments)]
fn stream_fill<B: Body>(
    ctx: &Ctx,
    request_headers: &HeaderMap,
    request_time: Duration,
    response_time: Duration,
    admission: admit::Admission,
    tags: Vec<String>,
    parts: http::response::Parts,
    body: B,
) -> Response<ResponseBody<B>> {
    let budget = ctx.shared.fill_budget.clone();
    if budget.used() >= budget.limit() {
        metrics::counter!("turret_cache_streamed_fills_total", "outcome" => "budget").increment(1);
        tracing::debug!(key = %ctx.key, "fill budget spent: streamed uncached");
        return Response::from_parts(parts, ResponseBody::inner(body));
    }
    // What the entry needs, taken now: the tee hands over the bytes from inside the body.
    let entry_ctx = Ctx {
        shared: ctx.shared.clone(),
        policy: ctx.policy.clone(),
        key: ctx.key.clone(),
        directives: ctx.directives.clone(),
        head: false,
    };
    let (status, headers, request_headers) =
        (parts.status, parts.headers.clone(), request_headers.clone());
    let started = ctx.shared.clock.now();
    let gauge_budget = budget.clone();
    let tee = Tee::new(ctx.shared.max_entry_size, budget, move |bytes| {
        // Read when a fill ends: the bytes the other fills still hold.
        metrics::gauge!("turret_cache_fill_bytes_in_flight").set(gauge_budget.used() as f64);
        let Some(bytes) = bytes else {
            metrics::counter!("turret_cache_streamed_fills_total", "outcome" => "abandoned")
                .increment(1);
            tracing::debug!(key = %entry_ctx.key, "streaming fill abandoned: not stored");
            return;
        };
        let ttl = admission.ttl;
        let entry = Arc::new(entry_of(
            &entry_ctx,
            status,
            &headers,
            &admission,
            bytes,
            &request_headers,
            (request_time, response_time),
            tags,
        ));
        metrics::counter!("turret_cache_streamed_fills_total", "outcome" => "stored").increment(1);
        let took = entry_ctx.shared.clock.now().saturating_sub(started);
        tracing::debug!(key = %entry_ctx.key, ?took, "streaming fill complete");
        // A synchronous storage (memory) has stored it when `put` returns: the next request
        // is a hit. Another finishes on a task of its own.
        let mut pending = entry_ctx
            .shared
            .storage
            .put(&entry_ctx.key, entry.clone(), ttl);
        match pending.take_ready() {
            Some(result) => {
                put_done(&entry_ctx, entry, ttl, result);
            }
            None => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let result = pending.await;
                        put_done(&entry_ctx, entry, ttl, result);
                    });
                }
            }
        }
    });
    Response::from_parts(parts, ResponseBody::tee(body, tee))
}

/// Leaves a hit-for-miss marker for the URL (no `Vary`: it applies to every request no
/// stored response matches) when `why` is the URL's answer ([`admit::leaves_marker`]).
async fn mark_uncacheable(
    ctx: &Ctx,
    status: StatusCode,
    why: &'static str,
    tags: Vec<String>,
    request_headers: &HeaderMap,
    response_time: Duration,
) -> Stored {
    let lifetime = ctx.shared.hit_for_miss;
    if !admit::leaves_marker(status, why, lifetime) {
        return Stored::Nothing;
    }
    let mut headers = HeaderMap::new();
    headers.insert(HIT_FOR_MISS, HeaderValue::from_static(why));
    let marker = Arc::new(
        CachedResponse::new(
            StatusCode::OK,
            headers,
            Bytes::new(),
            request_headers,
            response_time,
            response_time,
            lifetime,
            Duration::ZERO,
        )
        .with_tags(tags),
    );
    match ctx
        .shared
        .storage
        .put(&ctx.key, marker.clone(), lifetime)
        .await
    {
        Ok(()) => {
            tracing::debug!(key = %ctx.key, why, ?lifetime, "hit-for-miss marker stored");
            Stored::Marker(marker)
        }
        Err(e) => {
            ctx.shared.storage_error("put", &e);
            Stored::Nothing
        }
    }
}

/// Stores `entry` for `ttl`: the entry when it was stored (a storage error is logged).
async fn put(ctx: &Ctx, entry: Arc<CachedResponse>, ttl: Duration) -> Option<Arc<CachedResponse>> {
    let result = ctx.shared.storage.put(&ctx.key, entry.clone(), ttl).await;
    put_done(ctx, entry, ttl, result)
}

/// A put's outcome: counted and logged; the entry when it was stored.
fn put_done(
    ctx: &Ctx,
    entry: Arc<CachedResponse>,
    ttl: Duration,
    result: Result<(), crate::StorageError>,
) -> Option<Arc<CachedResponse>> {
    match result {
        Ok(()) => {
            tracing::debug!(key = %ctx.key, lifetime = ?entry.freshness_lifetime(), ?ttl, "response stored");
            ctx.policy.stored(entry.body().len());
            Some(entry)
        }
        Err(e) => {
            ctx.shared.storage_error("put", &e);
            None
        }
    }
}

/// RFC 9111 §4.3.4: the stored response with the 304's fields, fresh again from the
/// revalidation's times. Kept even when the update cannot be stored (it answers this
/// request: the origin said it is current).
pub(crate) async fn store_revalidated(
    ctx: &Ctx,
    stale: &CachedResponse,
    not_modified: &HeaderMap,
    request_headers: &HeaderMap,
    request_time: Duration,
) -> Arc<CachedResponse> {
    let response_time = ctx.shared.clock.now();
    let mut headers = validate::updated_headers(stale.headers(), not_modified);
    if !not_modified.contains_key(header::DATE) {
        // RFC 9110 §6.6.1, as for a fill: the 304 was made when it was received.
        insert_date(&mut headers, response_time);
    }
    // The merged fields obey the storing rules like a fill's (§3.1): no Connection-listed or
    // proxy-authentication fields, none named by a qualified private / no-cache, and no
    // Set-Cookie unless stored without it — otherwise one client's fields reach others.
    let (cc, _) = response_directives(&ctx.shared, &headers);
    headers = stored_headers(&headers, &cc, ctx.shared.rules.set_cookie);
    if !ctx.shared.expose_tags {
        for name in &ctx.shared.tag_fields {
            headers.remove(name);
        }
    }
    match admit(
        ctx,
        stale.status(),
        &headers,
        request_headers,
        request_time,
        response_time,
    ) {
        Ok(a) => {
            let entry = Arc::new(stale.revalidated(
                headers,
                request_time,
                response_time,
                a.lifetime,
                a.initial_age,
            ));
            put(ctx, entry.clone(), a.ttl).await;
            entry
        }
        Err(why) => {
            tracing::debug!(key = %ctx.key, why, "revalidated response no longer storable");
            if let Err(e) = ctx.shared.storage.invalidate(&ctx.key, Purge::Remove).await {
                ctx.shared.storage_error("invalidate", &e);
            }
            Arc::new(stale.revalidated(
                headers,
                request_time,
                response_time,
                Duration::ZERO,
                Duration::ZERO,
            ))
        }
    }
}

/// Sets `Date` to `at` (since the Unix epoch).
fn insert_date(headers: &mut HeaderMap, at: Duration) {
    let date = httpdate::fmt_http_date(std::time::UNIX_EPOCH + at);
    if let Ok(date) = HeaderValue::from_str(&date) {
        headers.insert(header::DATE, date);
    }
}
