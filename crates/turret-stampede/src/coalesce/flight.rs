//! The table of in-flight requests: what makes two requests identical, what a leader hands
//! its followers, and the guard that hands it over (or releases them) exactly once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures_util::future::{FutureExt as _, Shared};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header};
use tokio::sync::oneshot;

/// The middleware's configuration: which requests share a flight and how big a shared
/// response may be.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) headers: Vec<HeaderName>,
    pub(crate) max_body: usize,
}

/// Marks a response that was fanned out from another request's inner call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesced;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RequestKey {
    method: Method,
    uri: Uri,
    /// The `Host` lines: an origin-form target has no authority, and one service may answer
    /// for several hosts.
    host: Vec<HeaderValue>,
    headers: Vec<Vec<HeaderValue>>,
}

impl RequestKey {
    /// The key of `req`: method, URI, `Host` and the values of the configured `headers`.
    pub(crate) fn of<B>(req: &Request<B>, headers: &[HeaderName]) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: req
                .headers()
                .get_all(header::HOST)
                .iter()
                .cloned()
                .collect(),
            headers: headers
                .iter()
                .map(|name| req.headers().get_all(name).iter().cloned().collect())
                .collect(),
        }
    }
}

/// A collected response, shared by the waiters.
#[derive(Debug)]
pub(crate) struct SharedResponse {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
}

#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Response(Arc<SharedResponse>),
    /// Make your own call.
    Release,
}

pub(crate) type Waiting = Shared<oneshot::Receiver<Outcome>>;

/// The requests in flight that others may join, by key.
#[derive(Debug, Default)]
pub(crate) struct Flights(Mutex<HashMap<RequestKey, Waiting>>);

/// What [`Flights::join`] made of a request.
#[derive(Debug)]
pub(crate) enum Joined {
    /// An identical request is in flight: wait for its outcome.
    Follow(Waiting),
    /// The first: make the inner call, then finish the guard.
    Lead(LeaderGuard),
}

impl Flights {
    /// Joins the flight of `key`, or starts one (the caller leads it).
    pub(crate) fn join(self: &Arc<Self>, key: RequestKey) -> Joined {
        let mut flights = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = flights.get(&key) {
            return Joined::Follow(waiting.clone());
        }
        let (tx, rx) = oneshot::channel();
        flights.insert(key.clone(), rx.shared());
        drop(flights);
        Joined::Lead(LeaderGuard {
            flights: Arc::clone(self),
            key: Some(key),
            tx: Some(tx),
        })
    }

    /// How many flights others may join.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn remove(&self, key: &RequestKey) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// Resolves the waiters of one in-flight request: with the response, or with a release
/// when dropped first.
pub(crate) struct LeaderGuard {
    flights: Arc<Flights>,
    key: Option<RequestKey>,
    tx: Option<oneshot::Sender<Outcome>>,
}

impl std::fmt::Debug for LeaderGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderGuard")
            .field("key", &self.key)
            .finish()
    }
}

impl LeaderGuard {
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if let Some(key) = self.key.take() {
            // Remove first: a request arriving from now on leads a new call.
            self.flights.remove(&key);
        }
        if let Some(tx) = self.tx.take() {
            if matches!(outcome, Outcome::Release) {
                metrics::counter!("turret_stampede_coalesce_releases_total").increment(1);
            }
            let _ = tx.send(outcome);
        }
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        self.finish(Outcome::Release);
    }
}
