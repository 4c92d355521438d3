//! HTTP dates in all three forms (RFC 9110 §5.6.7): request preconditions against a
//! handler's `Last-Modified`, and the cache's `Expires`, `Date` and `Last-Modified`.
#![no_main]

use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use turret_fuzz::{append, assert_valid, through_cache, through_conditional};

fuzz_target!(|data: &[u8]| {
    let mut response = HeaderMap::new();
    append(
        &mut response,
        "last-modified",
        b"Sun, 06 Nov 1994 08:49:37 GMT",
    );
    for (method, field) in [
        (Method::GET, "if-modified-since"),
        (Method::GET, "if-unmodified-since"),
        (Method::PUT, "if-unmodified-since"),
        (Method::GET, "if-range"),
    ] {
        let mut request = HeaderMap::new();
        append(&mut request, field, data);
        if field == "if-range" {
            append(&mut request, "range", b"bytes=0-3");
        }
        let status = through_conditional(method.clone(), &request, 200, &response);
        assert!(
            [200, 206, 304, 412].contains(&status.as_u16()),
            "{method} {field}: {status}"
        );
    }
    // The handler's own Last-Modified is fuzzed too.
    let mut handler = HeaderMap::new();
    append(&mut handler, "last-modified", data);
    let mut request = HeaderMap::new();
    append(
        &mut request,
        "if-modified-since",
        b"Sun, 06 Nov 1994 08:49:37 GMT",
    );
    assert_valid(through_conditional(Method::GET, &request, 200, &handler));
    // The cache's dates: freshness from Expires − Date, validation by Last-Modified.
    for field in ["expires", "date", "last-modified"] {
        let mut response = HeaderMap::new();
        append(&mut response, field, data);
        if field != "expires" {
            append(&mut response, "expires", b"Sun, 06 Nov 2094 08:49:37 GMT");
        }
        let mut request = HeaderMap::new();
        append(&mut request, "if-modified-since", data);
        for s in through_cache(Method::GET, &request, 200, &response, 3, 60) {
            assert_valid(s);
        }
    }
});
