//! `Cache-Control` (RFC 9111 §5.2) on responses and requests, through the response cache.
#![no_main]

use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use turret_fuzz::{append, assert_valid, pieces, through_cache};

fuzz_target!(|data: &[u8]| {
    let pieces = pieces(data);
    // Every piece a response Cache-Control line (several lines are one list).
    let mut response = HeaderMap::new();
    for p in &pieces {
        append(&mut response, "cache-control", p);
    }
    for s in through_cache(Method::GET, &HeaderMap::new(), 200, &response, 3, 30) {
        assert_valid(s);
    }
    // The same as request directives against a stored response.
    let mut request = HeaderMap::new();
    for p in &pieces {
        append(&mut request, "cache-control", p);
    }
    let mut stored = HeaderMap::new();
    append(
        &mut stored,
        "cache-control",
        b"max-age=60, stale-while-revalidate=30",
    );
    append(&mut stored, "etag", b"\"v1\"");
    for s in through_cache(Method::GET, &request, 200, &stored, 3, 40) {
        assert_valid(s);
    }
});
