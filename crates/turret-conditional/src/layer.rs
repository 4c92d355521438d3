//! [`ConditionalLayer`]: the configuration.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use tower_layer::Layer;

use crate::{
    Conditional, MakeEtag, MakeResourceKey, PathAndQuery, Sha256Etag, ValidatorSource,
    ValidatorStore,
    rejection::OnRejection,
    store::{DynSource, erase_source},
};

/// The default bound on a body the layer buffers to compute an ETag: 1 MiB.
pub const DEFAULT_MAX_BODY_SIZE: u64 = 1024 * 1024;

/// Where unsafe requests' preconditions are decided before the handler runs.
#[derive(Clone, Default)]
pub(crate) enum Backend {
    /// Nowhere: writes go to the handler with their preconditions unevaluated.
    #[default]
    None,
    /// A user's [`ValidatorSource`].
    Source(DynSource),
    /// The built-in store.
    Store(ValidatorStore),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::None => f.write_str("None"),
            Backend::Source(_) => f.write_str("Source(..)"),
            Backend::Store(s) => f.debug_tuple("Store").field(s).finish(),
        }
    }
}

/// The per-layer settings shared (in an `Arc`) by every clone of the service.
#[derive(Debug, Clone)]
pub(crate) struct Config<E> {
    pub(crate) make_etag: E,
    pub(crate) weak: bool,
    pub(crate) max_body_size: u64,
    pub(crate) etag_statuses: Vec<StatusCode>,
    pub(crate) etag_methods: Vec<Method>,
    pub(crate) require_precondition: bool,
    pub(crate) backend: Backend,
    pub(crate) write_etags: bool,
    pub(crate) on_rejection: OnRejection,
}

/// Applies [`Conditional`] to a service: ETag generation and RFC 9110 precondition
/// evaluation (304, 412, 428). See the [crate documentation](crate).
#[derive(Debug, Clone)]
pub struct ConditionalLayer<K = PathAndQuery, E = Sha256Etag> {
    pub(crate) config: Config<E>,
    pub(crate) make_key: K,
}

impl Default for ConditionalLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ConditionalLayer {
    /// Strong SHA-256 ETags for 200 responses to GET and HEAD with a known-size body up to
    /// 1 MiB; preconditions on GET/HEAD evaluated against the response; no validator store.
    pub fn new() -> Self {
        Self {
            config: Config {
                make_etag: Sha256Etag,
                weak: false,
                max_body_size: DEFAULT_MAX_BODY_SIZE,
                etag_statuses: vec![StatusCode::OK],
                etag_methods: vec![Method::GET, Method::HEAD],
                require_precondition: false,
                backend: Backend::None,
                write_etags: true,
                on_rejection: OnRejection::default(),
            },
            make_key: PathAndQuery,
        }
    }
}

impl<K, E> ConditionalLayer<K, E> {
    /// Makes generated ETags weak (`W/"…"`). Use it when a layer *inside* this one (nearer
    /// the handler) is followed by one that re-encodes the body, e.g. compression placed
    /// outside this layer, so that one tag covers several content-codings (RFC 9110 §8.8.3).
    pub fn weak_etags(mut self, weak: bool) -> Self {
        self.config.weak = weak;
        self
    }

    /// The largest body (by its exact `size_hint`) the layer buffers to compute an ETag.
    /// Larger bodies and bodies of unknown size stream through untouched, without an ETag.
    pub fn max_body_size(mut self, bytes: u64) -> Self {
        self.config.max_body_size = bytes;
        self
    }

    /// The response statuses that get a generated ETag (default: 200).
    pub fn etag_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.config.etag_statuses = statuses.into_iter().collect();
        self
    }

    /// The request methods whose responses get a generated ETag (default: GET, HEAD). A
    /// successful PUT or PATCH gets one anyway, unless [`write_etags`](Self::write_etags) is
    /// off (see [the crate docs](crate#the-etag-of-a-write)); listing another method (POST)
    /// makes the layer hash its response bodies too.
    ///
    /// With HEAD in the list, the inner service is asked for a GET in place of each HEAD (its
    /// body hashed when needed, then dropped), so that a HEAD carries the GET's fields, ETag
    /// and `Content-Length` included (RFC 9110 §9.3.2; see the [crate docs](crate#head)).
    /// Without HEAD, HEADs pass through as they are.
    pub fn etag_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.etag_methods = methods.into_iter().collect();
        self
    }

    /// Answers unsafe requests (any method but GET, HEAD, OPTIONS, TRACE, CONNECT) that carry
    /// none of `If-Match`, `If-Unmodified-Since`, `If-None-Match` with
    /// `428 Precondition Required` (RFC 6585 §3), before the handler runs.
    pub fn require_precondition(mut self, require: bool) -> Self {
        self.config.require_precondition = require;
        self
    }

    /// Whether a successful `PUT` or `PATCH` response gets the new `ETag` when the handler
    /// did not set one (default: yes), so that the client can send it in its next `If-Match`
    /// without a GET first. See [the crate docs](crate#the-etag-of-a-write).
    pub fn write_etags(mut self, enabled: bool) -> Self {
        self.config.write_etags = enabled;
        self
    }

    /// Builds the layer's own `412 Precondition Failed` and `428 Precondition Required`
    /// responses (default: [`problem_json`](crate::problem_json), a small RFC 9457 problem
    /// details object). The hook gets the status; the layer keeps that status whatever the
    /// response says. A `304` never has a body.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Response, StatusCode, header};
    /// use turret_conditional::ConditionalLayer;
    ///
    /// let layer = ConditionalLayer::new().on_rejection(|status: StatusCode| {
    ///     let mut res = Response::new(Bytes::from(format!(r#"{{"error":{}}}"#, status.as_u16())));
    ///     res.headers_mut()
    ///         .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    ///     res
    /// });
    /// # let _ = layer;
    /// ```
    pub fn on_rejection<F>(mut self, f: F) -> Self
    where
        F: Fn(StatusCode) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.config.on_rejection = OnRejection::new(f);
        self
    }

    /// Uses the built-in [`ValidatorStore`] (memory or Redis) to decide unsafe requests'
    /// preconditions atomically before the handler runs, and to record validators. A write
    /// to a resource the store has no record of first learns its validators with a GET
    /// through the inner service.
    pub fn validator_store(mut self, store: ValidatorStore) -> Self {
        self.config.backend = Backend::Store(store);
        self
    }

    /// Uses a [`ValidatorSource`] of your own (e.g. a row version in the database) to decide
    /// unsafe requests' preconditions before the handler runs.
    pub fn validator_source<V>(mut self, source: V) -> Self
    where
        V: ValidatorSource + Send + Sync + 'static,
    {
        self.config.backend = Backend::Source(erase_source(source));
        self
    }

    /// Replaces how ETags are made from buffered bodies.
    pub fn make_etag<E2: MakeEtag>(self, make_etag: E2) -> ConditionalLayer<K, E2> {
        let Config {
            weak,
            max_body_size,
            etag_statuses,
            etag_methods,
            require_precondition,
            backend,
            write_etags,
            on_rejection,
            ..
        } = self.config;
        ConditionalLayer {
            config: Config {
                make_etag,
                weak,
                max_body_size,
                etag_statuses,
                etag_methods,
                require_precondition,
                backend,
                write_etags,
                on_rejection,
            },
            make_key: self.make_key,
        }
    }

    /// Replaces how a request's resource key is made (default: [`PathAndQuery`]).
    pub fn resource_key<K2: MakeResourceKey>(self, make_key: K2) -> ConditionalLayer<K2, E> {
        ConditionalLayer {
            config: self.config,
            make_key,
        }
    }
}

impl<S, K: Clone, E: Clone> Layer<S> for ConditionalLayer<K, E> {
    type Service = Conditional<S, K, E>;

    fn layer(&self, inner: S) -> Self::Service {
        Conditional {
            inner,
            make_key: self.make_key.clone(),
            config: Arc::new(self.config.clone()),
        }
    }
}
