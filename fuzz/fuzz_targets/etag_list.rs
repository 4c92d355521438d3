//! Entity-tag lists (`If-Match`, `If-None-Match`, `If-Range`, RFC 9110 §8.8.3, §13.1), and
//! the handler's own `ETag`, through the conditional layer and the response cache.
#![no_main]

use http::{HeaderMap, Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use turret_fuzz::{append, assert_valid, pieces, through_cache, through_conditional};

fuzz_target!(|data: &[u8]| {
    let pieces = pieces(data);
    let handler_etag: &[u8] = pieces.first().copied().unwrap_or(b"\"v1\"");
    let list = pieces.get(1).copied().unwrap_or(data);
    let mut response = HeaderMap::new();
    append(&mut response, "etag", handler_etag);
    append(&mut response, "cache-control", b"max-age=60");
    for (method, field) in [
        (Method::GET, "if-none-match"),
        (Method::GET, "if-match"),
        (Method::PUT, "if-match"),
        (Method::DELETE, "if-none-match"),
        (Method::GET, "if-range"),
    ] {
        let mut request = HeaderMap::new();
        append(&mut request, field, list);
        if field == "if-range" {
            append(&mut request, "range", b"bytes=0-3");
        }
        let status = through_conditional(method.clone(), &request, 200, &response);
        assert!(
            [200, 206, 304, 412].contains(&status.as_u16()),
            "{method} {field}: {status}"
        );
        if method == Method::GET {
            for s in through_cache(Method::GET, &request, 200, &response, 2, 0) {
                assert_valid(s);
                assert_ne!(s, StatusCode::INTERNAL_SERVER_ERROR);
            }
        }
    }
});
