//! `Forwarded` (RFC 7239) and `X-Forwarded-For` through the rate limiter's `ClientIp`, and
//! any API key through `HeaderKey` and the layer. A peer that is not a trusted proxy is
//! always its own key; the layer always answers.
#![no_main]

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt, service_fn};
use turret_fuzz::{block_on, pieces};
use turret_ratelimit::{ClientIp, HeaderKey, KeyExtractor, Quota, RateLimitLayer};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let peer: IpAddr = match flags % 4 {
        0 => "10.0.0.2".parse().unwrap(),
        1 => "203.0.113.9".parse().unwrap(),
        2 => "::ffff:10.0.0.3".parse().unwrap(),
        _ => "2001:db8::7".parse().unwrap(),
    };
    let trusted = ClientIp::trusting(["10.0.0.0/8", "2001:db8::/32"]).unwrap();
    let mut req = Request::new(());
    req.extensions_mut().insert(SocketAddr::new(peer, 4000));
    for (i, p) in pieces(rest).into_iter().enumerate() {
        let Ok(v) = HeaderValue::from_bytes(p) else {
            continue;
        };
        let name = match (i + usize::from(flags >> 2)) % 3 {
            0 => "forwarded",
            1 => "x-forwarded-for",
            _ => "x-api-key",
        };
        req.headers_mut().append(name, v);
    }
    let client = trusted
        .client_ip(&req)
        .expect("a peer address gives a client");
    let canonical_peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    if !matches!(flags % 4, 0 | 2 | 3) {
        assert_eq!(client, canonical_peer, "an untrusted peer is its own key");
    }
    let key = trusted.extract(&req).expect("a key");
    assert!(key.parse::<IpAddr>().is_ok(), "{key}");

    block_on(async {
        let ok = service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        });
        let by_key = RateLimitLayer::new(Quota::per_minute(1))
            .key(HeaderKey::new("x-api-key"))
            .layer(ok);
        let mut copy = Request::new(());
        *copy.headers_mut() = req.headers().clone();
        let status = by_key.oneshot(copy).await.unwrap().status();
        assert!([200, 500].contains(&status.as_u16()), "{status}");
        let by_ip = RateLimitLayer::new(Quota::per_minute(1))
            .key(trusted)
            .layer(ok);
        let status = by_ip.oneshot(req).await.unwrap().status();
        assert_eq!(status.as_u16(), 200);
    });
});
