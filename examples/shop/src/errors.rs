//! Errors as JSON: `{"error": "<code>", "message": "<what to fix>"}` with the right status.
//!
//! A client mistake is never a 500 and never a panic: malformed syntax (a query parameter
//! that is not a number, JSON that does not parse, an id that is not an integer) is `400`,
//! well-formed input that breaks a rule (a negative price, a missing field, an unknown
//! category) is `422`, an unknown product, category or route is `404`, a body over the
//! limit (axum's default, 2 MB) is `413`. Error responses carry
//! `Cache-Control: no-store`, so no cache keeps them.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

/// An error answered to the client.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// `400`: the request is malformed.
    BadRequest(String),
    /// `404`: no such resource.
    NotFound(String),
    /// `412`: the `If-Match` the client sent is not the current version.
    PreconditionFailed(String),
    /// `413`: the body is larger than the shop reads (RFC 9110 §15.5.14).
    ContentTooLarge(String),
    /// `415`: the body is not `application/json`.
    UnsupportedMediaType(String),
    /// `422`: well-formed, but breaks a rule.
    Unprocessable(String),
    /// `503`: a dependency cannot take the request now; `Retry-After: 1`.
    Unavailable(String),
    /// `500`: the database failed. The details go to the log, not to the client.
    Internal(String),
}

impl ApiError {
    /// `404` for `what` (e.g. "product 7").
    pub(crate) fn not_found(what: impl std::fmt::Display) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    fn parts(&self) -> (StatusCode, &'static str, &str) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::PreconditionFailed(m) => {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed", m)
            }
            ApiError::ContentTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "content_too_large", m),
            ApiError::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m,
            ),
            ApiError::Unprocessable(m) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", m)
            }
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the database failed; try again",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "request failed");
        }
        let (status, code, message) = self.parts();
        let mut res = error_response(status, code, message);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

/// A JSON error response that no cache stores.
pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let mut res = (status, Json(json!({ "error": code, "message": message }))).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::Unprocessable(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(e.body_text()),
            JsonRejection::MissingJsonContentType(e) => {
                ApiError::UnsupportedMediaType(e.body_text())
            }
            // A body over the limit is not malformed: 413, not 400.
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::ContentTooLarge(other.body_text())
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

/// Parses a path id: a positive integer, or `400`.
pub(crate) fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::BadRequest(format!(
            "`{raw}` is not a valid {what} id (a positive integer)"
        ))),
    }
}

/// The fallback for unknown routes: `404` in JSON.
pub(crate) async fn route_not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// The fallback for a known route and an unsupported method: `405` in JSON.
pub(crate) async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not support this method",
    )
}
