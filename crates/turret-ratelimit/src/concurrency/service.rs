//! The concurrency-limit service: keys a request and asks the backend for a slot.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::{
    backend::{Acquire, ConcurrencyBackend},
    body::PermitBody,
    future::{ConcurrencyFuture, Info, plain},
};
use crate::{FailureMode, KeyExtractor, MissingKeyAction};

/// Settings shared by every clone of the layer and its services.
#[derive(Debug)]
pub(crate) struct Shared<K, Bk> {
    pub(crate) name: Arc<str>,
    pub(crate) max: u32,
    pub(crate) key: K,
    pub(crate) backend: Bk,
    pub(crate) exempt: Vec<String>,
    pub(crate) failure: FailureMode,
    pub(crate) missing: MissingKeyAction,
    pub(crate) policy_header: HeaderValue,
}

impl<K: Clone, Bk: Clone> Clone for Shared<K, Bk> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            max: self.max,
            key: self.key.clone(),
            backend: self.backend.clone(),
            exempt: self.exempt.clone(),
            failure: self.failure,
            missing: self.missing,
            policy_header: self.policy_header.clone(),
        }
    }
}

/// The concurrency-limit middleware: see [`ConcurrencyLimitLayer`](crate::ConcurrencyLimitLayer).
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S, K, Bk> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<K, Bk>>,
}

impl<S, K, Bk> ConcurrencyLimit<S, K, Bk> {
    turret_body::inner_service_accessors!();
}

impl<S, K, Bk, ReqBody, ResBody> Service<Request<ReqBody>> for ConcurrencyLimit<S, K, Bk>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Body,
    K: KeyExtractor<ReqBody>,
    Bk: ConcurrencyBackend,
{
    type Response = Response<PermitBody<ResBody>>;
    type Error = S::Error;
    type Future = ConcurrencyFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let s = &self.shared;
        if s.exempt.iter().any(|p| p == req.uri().path()) {
            return ConcurrencyFuture::calling(self.inner.call(req), None);
        }
        let key = match s.key.extract(&req) {
            Ok(k) => k,
            Err(missing) => match s.missing {
                MissingKeyAction::Reject => {
                    tracing::error!(policy = %s.name, %missing, "concurrency limit: no key for this request; answering 500");
                    crate::service::report_missing_key(
                        &crate::service::MISSING_KEY_REPORTED,
                        &s.name,
                        &missing,
                    );
                    return ConcurrencyFuture::ready(plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        crate::service::MISSING_KEY_BODY,
                    ));
                }
                MissingKeyAction::SharedKey => String::from("__missing_key__"),
            },
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let acquire = s.backend.acquire(&s.name, &key, s.max);
        let info = Info {
            policy_header: s.policy_header.clone(),
            name: s.name.clone(),
            failure: s.failure,
        };
        match acquire {
            Acquire::Ready(result) => ConcurrencyFuture::decided(result, req, inner, &info),
            Acquire::Pending(fut) => ConcurrencyFuture::acquiring(fut, req, inner, info),
        }
    }
}
