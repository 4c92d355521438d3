//! RFC 9213 targeted fields (`CDN-Cache-Control` and the layer's own), structured-field
//! dictionaries that replace `Cache-Control` when valid.
#![no_main]

use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use turret_fuzz::{append, assert_valid, pieces, through_cache};

fuzz_target!(|data: &[u8]| {
    for name in ["cdn-cache-control", "turret-cache-control"] {
        let mut response = HeaderMap::new();
        append(&mut response, "cache-control", b"max-age=60");
        for p in pieces(data) {
            append(&mut response, name, p);
        }
        for s in through_cache(Method::GET, &HeaderMap::new(), 200, &response, 3, 45) {
            assert_valid(s);
        }
    }
});
