//! Every field the response cache reads, on both sides at once: Cache-Control, targeted
//! fields, Expires, Date, Age, validators, Vary, tags, Set-Cookie, Location; request
//! directives and conditionals; any method and status.
#![no_main]

use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use turret_fuzz::{append, assert_valid, method, pieces, through_cache};

const RESPONSE: [&str; 13] = [
    "cache-control",
    "cdn-cache-control",
    "turret-cache-control",
    "expires",
    "date",
    "age",
    "etag",
    "last-modified",
    "vary",
    "surrogate-key",
    "set-cookie",
    "location",
    "content-location",
];
const REQUEST: [&str; 8] = [
    "cache-control",
    "pragma",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-range",
    "authorization",
    "accept-language",
];

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let Some((&code, rest)) = rest.split_first() else {
        return;
    };
    let mut request = HeaderMap::new();
    let mut response = HeaderMap::new();
    for (i, p) in pieces(rest).into_iter().enumerate() {
        let Some((&selector, value)) = p.split_first() else {
            continue;
        };
        if i % 2 == 0 {
            append(
                &mut response,
                RESPONSE[usize::from(selector) % RESPONSE.len()],
                value,
            );
        } else {
            append(
                &mut request,
                REQUEST[usize::from(selector) % REQUEST.len()],
                value,
            );
        }
    }
    let status =
        [200, 203, 204, 206, 301, 304, 404, 410, 429, 500, 502, 503][usize::from(code) % 12];
    for s in through_cache(
        method(head),
        &request,
        status,
        &response,
        3,
        u64::from(head >> 3),
    ) {
        assert_valid(s);
    }
});
