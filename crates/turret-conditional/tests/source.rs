//! A `ValidatorSource` says what it knows about a write's target: current validators, no
//! current representation, or "let the handler answer" (RFC 9110 §13.1, §13.2.1).

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use turret_conditional::{BoxError, ConditionalLayer, ResourceState, Target, Validators};

/// `/items` is a collection (exists, no validator); `/items/1` exists at `"v1"`; `/items/2`
/// does not exist, and a PUT creates it; anything else is unknown to the source. The handler
/// answers 404 for `/items/2` unless it is a PUT (201), and 400 for anything unknown.
async fn source(target: Target) -> Result<ResourceState, BoxError> {
    Ok(match target.resource() {
        "/items" => ResourceState::Current(Validators::new()),
        "/items/1" => {
            ResourceState::Current(Validators::new().with_etag(HeaderValue::from_static("\"v1\"")))
        }
        "/items/2" if target.method() == Method::PUT => ResourceState::Absent,
        _ => ResourceState::Unknown,
    })
}

async fn status(method: Method, uri: &str, field: header::HeaderName, value: &str) -> StatusCode {
    let svc = ServiceBuilder::new()
        .layer(ConditionalLayer::new().validator_source(source))
        .service(service_fn(|req: Request<()>| async move {
            let status = match (req.method(), req.uri().path()) {
                (_, "/items" | "/items/1") => StatusCode::OK,
                (&Method::PUT, "/items/2") => StatusCode::CREATED,
                (_, "/items/2") => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            let mut res = Response::new(Full::<Bytes>::default());
            *res.status_mut() = status;
            Ok::<_, Infallible>(res)
        }));
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(field, value)
        .body(())
        .unwrap();
    svc.oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn an_unknown_target_leaves_preconditions_to_the_handler_rfc9110_13_2_1() {
    for (method, uri, want) in [
        (Method::DELETE, "/items/2", StatusCode::NOT_FOUND),
        (Method::PATCH, "/items/2", StatusCode::NOT_FOUND),
        (Method::PUT, "/items/abc", StatusCode::BAD_REQUEST),
    ] {
        for (field, value) in [
            (header::IF_MATCH, "\"v1\""),
            (header::IF_MATCH, "*"),
            (header::IF_NONE_MATCH, "*"),
            (header::IF_UNMODIFIED_SINCE, "Sat, 01 Jan 2000 00:00:00 GMT"),
        ] {
            assert_eq!(
                status(method.clone(), uri, field.clone(), value).await,
                want,
                "{method} {uri} {field}: {value}"
            );
        }
    }
}

#[tokio::test]
async fn a_target_a_put_would_create_fails_if_match_rfc9110_13_1_1() {
    for value in ["\"v1\"", "*"] {
        assert_eq!(
            status(Method::PUT, "/items/2", header::IF_MATCH, value).await,
            StatusCode::PRECONDITION_FAILED,
            "{value}"
        );
    }
    // Create-only: `If-None-Match: *` is true.
    assert_eq!(
        status(Method::PUT, "/items/2", header::IF_NONE_MATCH, "*").await,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_collection_that_exists_without_a_validator_rfc9110_13_1_1_13_1_2() {
    let post = |field, value| status(Method::POST, "/items", field, value);
    assert_eq!(post(header::IF_MATCH, "*").await, StatusCode::OK);
    assert_eq!(
        post(header::IF_MATCH, "\"v1\"").await,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        post(header::IF_NONE_MATCH, "*").await,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(post(header::IF_NONE_MATCH, "\"v1\"").await, StatusCode::OK);
}

#[tokio::test]
async fn an_existing_target_is_compared_with_its_validators_rfc9110_13_1_1() {
    let put = |field, value| status(Method::PUT, "/items/1", field, value);
    assert_eq!(put(header::IF_MATCH, "\"v1\"").await, StatusCode::OK);
    assert_eq!(
        put(header::IF_MATCH, "\"v0\"").await,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        put(header::IF_NONE_MATCH, "*").await,
        StatusCode::PRECONDITION_FAILED
    );
}

#[tokio::test]
async fn the_source_is_told_the_method_and_the_resource() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(
            ConditionalLayer::new().validator_source(move |target: Target| {
                record.lock().unwrap().push(target.clone());
                async { Ok::<_, BoxError>(ResourceState::Unknown) }
            }),
        )
        .service(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }));
    let req = Request::delete("/items/7?x=1")
        .header(header::IF_MATCH, "\"v1\"")
        .body(())
        .unwrap();
    assert_eq!(svc.oneshot(req).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        *seen.lock().unwrap(),
        [Target::new(Method::DELETE, "/items/7?x=1")]
    );
}
