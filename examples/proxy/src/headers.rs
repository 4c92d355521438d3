//! The header fields a proxy changes: hop-by-hop fields removed in both directions
//! (RFC 9110 §7.6.1), and the forwarding fields added to requests (RFC 9110 §7.6.3 `Via`,
//! RFC 7239 `Forwarded`, the de-facto `X-Forwarded-For` / `-Host` / `-Proto`).

use std::net::IpAddr;

use http::{
    HeaderMap, HeaderName, HeaderValue, Version,
    header::{
        CONNECTION, FORWARDED, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING,
        UPGRADE, VIA,
    },
};

/// The fields that are always hop-by-hop (RFC 9110 §7.6.1, plus the proxy authentication
/// fields of §11.7, which are for this proxy, not for the origin or the client).
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The pseudonym this proxy uses in `Via` (RFC 9110 §7.6.3).
pub(crate) const VIA_PSEUDONYM: &str = "turret-proxy";

/// RFC 9110 §7.6.1: removes `Connection`, every field its values name (any number of
/// `Connection` lines, comma-separated), and the fields that are hop-by-hop by definition.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Whether `Transfer-Encoding` names any coding but `chunked` (RFC 9112 §6.1; a list, any
/// number of lines, empty elements ignored, parameters after `;`).
pub(crate) fn has_transfer_coding_but_chunked(headers: &HeaderMap) -> bool {
    transfer_codings(headers).any(|name| !name.eq_ignore_ascii_case(b"chunked"))
}

/// The transfer-coding names in `Transfer-Encoding`, in order (`gzip;q=1` → `gzip`).
pub(crate) fn transfer_codings(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .filter(|element| !element.trim_ascii().is_empty())
        .map(|element| {
            element
                .split(|b| *b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii()
        })
}

/// Adds what the origin needs to know about the client: `X-Forwarded-For` and `Forwarded`
/// get the peer appended (after any values the client sent: the origin decides whom to
/// trust), `X-Forwarded-Host` / `X-Forwarded-Proto` are set to the client's `Host` and
/// `http`, and `Via` gets this proxy appended.
pub(crate) fn add_forwarding(
    headers: &mut HeaderMap,
    peer: IpAddr,
    client_host: Option<&HeaderValue>,
    version: Version,
) {
    let peer = peer.to_canonical();
    append_to_list(headers, X_FORWARDED_FOR, &peer.to_string());

    // RFC 7239 §4–§6: an IPv6 node is bracketed and quoted; `host` is always quoted here
    // (a port's `:` is not a token character).
    let mut element = match peer {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    };
    if let Some(host) = client_host.and_then(|h| h.to_str().ok()) {
        element.push_str(";host=");
        push_quoted(&mut element, host);
    }
    element.push_str(";proto=http");
    append_to_list(headers, FORWARDED, &element);

    match client_host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));

    let received = if version == Version::HTTP_10 {
        "1.0"
    } else {
        "1.1"
    };
    append_to_list(headers, VIA, &format!("{received} {VIA_PSEUDONYM}"));
}

/// Appends `value` to the comma-separated list in `name`, folding existing lines into one
/// (RFC 9110 §5.3). A value that cannot be a field value leaves the field unchanged.
fn append_to_list(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let mut combined = Vec::new();
    for existing in headers.get_all(&name) {
        combined.extend_from_slice(existing.as_bytes());
        combined.extend_from_slice(b", ");
    }
    combined.extend_from_slice(value.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&combined) {
        headers.insert(name, v);
    }
}

/// `s` as an RFC 9110 §5.6.4 quoted-string.
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in fields {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Foo"),
            ("connection", " x-bar ,,"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-authenticate", "Basic"),
            ("x-end-to-end", "kept"),
            ("cache-control", "max-age=60"),
        ]);
        remove_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["cache-control", "x-end-to-end"]);
    }

    #[test]
    fn connection_values_that_are_not_field_names_are_ignored() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_bytes(b"close, \xff\xfe, (bad), ").unwrap(),
        );
        h.insert("close", HeaderValue::from_static("x"));
        h.insert("x-kept", HeaderValue::from_static("y"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_fields_append_the_peer_and_name_the_client_host() {
        let mut h = map(&[("x-forwarded-for", "203.0.113.9"), ("via", "1.1 edge")]);
        let host = HeaderValue::from_static("shop.example:8080");
        add_forwarding(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            Some(&host),
            Version::HTTP_11,
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(
            h["forwarded"],
            "for=127.0.0.1;host=\"shop.example:8080\";proto=http"
        );
        assert_eq!(h["x-forwarded-host"], "shop.example:8080");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["via"], "1.1 edge, 1.1 turret-proxy");
    }

    #[test]
    fn ipv6_peers_are_bracketed_and_mapped_ipv4_is_plain() {
        let mut h = HeaderMap::new();
        add_forwarding(
            &mut h,
            "2001:db8::1".parse().unwrap(),
            None,
            Version::HTTP_10,
        );
        assert_eq!(h["forwarded"], "for=\"[2001:db8::1]\";proto=http");
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h["via"], "1.0 turret-proxy");
        assert!(!h.contains_key("x-forwarded-host"));

        let mut h = HeaderMap::new();
        add_forwarding(
            &mut h,
            "::ffff:192.0.2.1".parse().unwrap(),
            None,
            Version::HTTP_11,
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
    }

    #[test]
    fn quoted_hosts_escape_quotes_and_backslashes() {
        let mut s = String::new();
        push_quoted(&mut s, r#"a"b\c"#);
        assert_eq!(s, r#""a\"b\\c""#);
    }
}
