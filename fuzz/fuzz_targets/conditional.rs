//! Every field the conditional layer reads, at once: `If-Match`, `If-None-Match`,
//! `If-Modified-Since`, `If-Unmodified-Since`, `If-Range`, `Range`, and the handler's
//! validators; any method and status.
#![no_main]

use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use turret_fuzz::{append, method, pieces};

const REQUEST: [&str; 6] = [
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "range",
];

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let mut request = HeaderMap::new();
    let mut response = HeaderMap::new();
    for p in pieces(rest) {
        let Some((&selector, value)) = p.split_first() else {
            continue;
        };
        match selector % 8 {
            6 => append(&mut response, "etag", value),
            7 => append(&mut response, "last-modified", value),
            s => append(&mut request, REQUEST[usize::from(s)], value),
        }
    }
    let status = [200, 201, 204, 206, 304, 404, 412, 500][usize::from(head >> 5)];
    let got = turret_fuzz::through_conditional(method(head), &request, status, &response);
    assert!(
        [200, 201, 204, 206, 304, 404, 412, 428, 500].contains(&got.as_u16()),
        "{got}"
    );
});
