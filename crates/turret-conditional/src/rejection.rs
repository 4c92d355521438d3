//! The layer's own refusals (412, 428): what their bodies say, and the RFC 9457 default.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// The media type of an RFC 9457 problem details object.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The layer's default body for its own `412 Precondition Failed` and `428 Precondition
/// Required`: a small RFC 9457 problem details object, `application/problem+json`, with
/// `type` (`about:blank`: the status says it all), `title`, `status` and `detail`.
///
/// ```
/// use http::{StatusCode, header};
/// use turret_conditional::problem_json;
///
/// let res = problem_json(StatusCode::PRECONDITION_FAILED);
/// assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
/// assert_eq!(res.headers()[header::CONTENT_TYPE], "application/problem+json");
/// let body = std::str::from_utf8(res.body()).unwrap();
/// assert!(body.starts_with(r#"{"type":"about:blank","title":"Precondition Failed","status":412,"#));
/// ```
///
/// Any other status gets the same shape with its canonical reason as the title and no
/// detail.
pub fn problem_json(status: StatusCode) -> Response<Bytes> {
    let detail = match status {
        StatusCode::PRECONDITION_FAILED => Some(
            "A precondition of the request (If-Match, If-Unmodified-Since or If-None-Match) \
             is false for the current representation of the target: get it again, then retry.",
        ),
        StatusCode::PRECONDITION_REQUIRED => Some(
            "This request must be conditional: send If-Match with the ETag of the \
             representation it changes.",
        ),
        _ => None,
    };
    let title = status.canonical_reason().unwrap_or("Error");
    let mut body = format!(
        r#"{{"type":"about:blank","title":"{title}","status":{}"#,
        status.as_u16()
    );
    if let Some(detail) = detail {
        body.push_str(&format!(r#","detail":"{detail}""#));
    }
    body.push('}');
    let mut res = Response::new(Bytes::from(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res
}

/// The hook that builds the layer's 412 and 428 responses.
#[derive(Clone)]
pub(crate) struct OnRejection(Arc<dyn Fn(StatusCode) -> Response<Bytes> + Send + Sync>);

impl OnRejection {
    pub(crate) fn new(f: impl Fn(StatusCode) -> Response<Bytes> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The refusal with `status`, whatever status the hook set.
    pub(crate) fn build(&self, status: StatusCode) -> Response<Bytes> {
        let mut res = (self.0)(status);
        *res.status_mut() = status;
        res
    }
}

impl Default for OnRejection {
    fn default() -> Self {
        Self::new(problem_json)
    }
}

impl fmt::Debug for OnRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnRejection(..)")
    }
}
