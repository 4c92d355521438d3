//! Any bytes in any conditional field: no panic, and a valid response.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::Full;
use proptest::prelude::*;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use turret_conditional::{ConditionalLayer, ValidatorStore};

const FIELDS: [header::HeaderName; 6] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::HEAD),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::POST),
        Just(Method::PATCH),
        Just(Method::OPTIONS),
    ]
}

/// Field values: arbitrary bytes that a `HeaderValue` can hold, plus near-valid ones.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        "(W/)?\"[!#-~]{0,8}\"(, *(W/)?\"[!#-~]{0,8}\"){0,3}".prop_map(String::into_bytes),
        Just(b"*".to_vec()),
        Just(b"Sun, 06 Nov 1994 08:49:37 GMT".to_vec()),
        Just(b"Sunday, 06-Nov-94 08:49:37 GMT".to_vec()),
        Just(b"Sun Nov  6 08:49:37 1994".to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn any_conditional_field_gives_a_valid_response(
        method in method(),
        fields in proptest::collection::vec((0..FIELDS.len(), value()), 0..6),
        handler_etag in prop_oneof![Just(None), value().prop_map(Some)],
        status in prop_oneof![Just(200u16), Just(404), Just(206)],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let handler_etag = handler_etag.and_then(|v| HeaderValue::from_bytes(&v).ok());
        let res = rt.block_on(async move {
            let svc = ServiceBuilder::new()
                .layer(ConditionalLayer::new().validator_store(ValidatorStore::memory()))
                .service(service_fn(move |_req: Request<()>| {
                    let etag = handler_etag.clone();
                    async move {
                        let mut res = Response::new(Full::<Bytes>::from("body"));
                        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        if let Some(etag) = etag {
                            res.headers_mut().insert(header::ETAG, etag);
                        }
                        Ok::<_, Infallible>(res)
                    }
                }));
            let mut req = Request::builder().method(method).uri("/x");
            for (i, v) in &fields {
                if let Ok(v) = HeaderValue::from_bytes(v) {
                    req = req.header(&FIELDS[*i], v);
                }
            }
            svc.oneshot(req.body(()).unwrap()).await.unwrap()
        });
        let s = res.status().as_u16();
        prop_assert!([200, 206, 304, 404, 412].contains(&s), "status {}", s);
    }
}
