//! The server side: accepts HTTP/1.1 connections, checks and prepares each request for the
//! origin ([`Front`]), and runs it through the cache and [`Forward`]:
//!
//! ```text
//! client → Front: check framing, prepare (hop-by-hop out, forwarding fields in, target → origin) → cache → Forward → origin
//! ```
//!
//! **The cache key.** The cache keys by the request's target URI (scheme, host, path,
//! query). `prepare` rewrites the target to the origin's absolute URI
//! (`http://{origin}/path?query`) *before* the cache, so the key's host is always the
//! origin's authority, whatever `Host` the client sent: `localhost:8080` and
//! `127.0.0.1:8080` share one entry, a client cannot multiply entries by varying `Host`,
//! and the `Location` / `Content-Location` the origin writes with its own host invalidate
//! the right entries (RFC 9111 §4.4). This is nginx's default too (`proxy_cache_key
//! $scheme$proxy_host$request_uri`). The client's `Host` still reaches the origin, in
//! `X-Forwarded-Host` and `Forwarded: host=`; an origin that builds responses from it should
//! say `Vary: X-Forwarded-Host`, which the cache honours (the field is added before it).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderValue, Request, Uri, Version, header};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use turret_cache::{PurgeService, ResponseCacheLayer};

use crate::{config::Origin, forward::Forward, front::Front, headers};

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections may finish their requests after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `listener` (with `PURGE` answered by `purge` when given) until `shutdown` resolves, then lets open connections finish (at most
/// 10 s).
pub(crate) async fn serve(
    listener: TcpListener,
    origin: Origin,
    cache: ResponseCacheLayer,
    purge: Option<PurgeService>,
    forward: Forward,
    shutdown: impl Future<Output = ()>,
) {
    let service = ServiceBuilder::new().layer(cache).service(forward);
    let origin = Arc::new(origin);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let per_connection = Front::new(service.clone(), purge.clone(), origin.clone(), peer);
        let conn = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(per_connection),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
        }
    }
}

/// Turns the client's request into the origin's: hop-by-hop fields removed (RFC 9110
/// §7.6.1), forwarding fields added, the target made `http://{origin}{path?query}` and
/// `Host` the origin's, HTTP/1.1. The body is untouched (it streams).
pub(crate) fn prepare<B>(mut req: Request<B>, origin: &Origin, peer: SocketAddr) -> Request<B> {
    let client_host = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| req.headers().get(header::HOST).cloned());
    let version = req.version();
    let headers = req.headers_mut();
    headers::remove_hop_by_hop(headers);
    headers::add_forwarding(headers, peer.ip(), client_host.as_ref(), version);
    headers.insert(header::HOST, origin.host.clone());
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    // Fails only for targets that are not origin-form (`*`, CONNECT's authority-form),
    // which `Front` has answered with 501 already.
    if target.starts_with('/')
        && let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(origin.authority.clone())
            .path_and_query(target)
            .build()
    {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_11;
    req
}
