//! The primary cache key (RFC 9111 §2): scheme, host, path and normalised query.
//!
//! The key must tell apart every two requests the application can tell apart, or one
//! client's response is served to another (cache poisoning). The query is keyed as the
//! handler reads it (`application/x-www-form-urlencoded`, as axum's `Query` and
//! `serde_urlencoded` decode it), and every part taken from the client is escaped so that no
//! byte of one part can pass for another part or for a different request.

use std::borrow::Cow;

use http::{HeaderMap, Uri, header};
use percent_encoding::percent_decode;

use crate::QueryKey;

/// The key of the request target: `scheme://host[:port]/path?query`, method-independent.
///
/// - The host comes from the URI authority or else the `Host` field, ASCII-lower-cased
///   (RFC 9110 §4.2.3), its bytes outside the host syntax `%XX`-escaped; an authority's
///   userinfo stays (escaped, case kept). When the target has an authority and a `Host`
///   field disagrees with it, the field is appended as `#host=…` (RFC 9112 §3.2.2 says to
///   ignore it, a handler reading it would not).
/// - The path is kept as received.
/// - The query is the list of (name, value) pairs `application/x-www-form-urlencoded`
///   decodes (split on `&`, empty segments dropped, `+` as space, `%XX` decoded to bytes,
///   `a` the same as `a=`), filtered by `query` on the decoded name, sorted stably by
///   decoded name (repeated names keep their order), and re-encoded canonically:
///   `name=value` joined by `&`, space as `+`, and `%`, `&`, `+`, `#`, controls, non-ASCII
///   (and `=` in names) as upper-case `%XX`. Two different decoded lists never give the same
///   key; spellings of the same list always do.
pub(crate) fn primary_key(uri: &Uri, headers: &HeaderMap, query: &QueryKey) -> String {
    let mut key = String::new();
    push_primary_key(&mut key, uri, headers, query);
    key
}

/// [`primary_key`] appended to `out` (a reused buffer).
pub(crate) fn push_primary_key(out: &mut String, uri: &Uri, headers: &HeaderMap, query: &QueryKey) {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host_field = headers.get(header::HOST).map(|h| h.as_bytes());
    let path = uri.path();
    let query_len = uri.query().map_or(0, |q| q.len() + 1);
    let host_len = uri
        .authority()
        .map_or(host_field.map_or(0, <[u8]>::len), |a| a.as_str().len());
    out.reserve(scheme.len() + 3 + host_len + path.len() + 1 + query_len);
    push_lowercase(out, scheme);
    out.push_str("://");
    match uri.authority() {
        Some(authority) => push_authority(out, authority.as_str()),
        None => push_host(out, host_field.unwrap_or_default()),
    }
    out.push_str(if path.is_empty() { "/" } else { path });
    if let Some(q) = uri.query() {
        push_query(out, q, query);
    }
    if let (Some(authority), Some(host)) = (uri.authority(), host_field)
        && !host.eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        // No other part of the key holds a `#`: the suffix cannot be confused with them.
        out.push_str("#host=");
        push_host(out, host);
    }
}

fn push_lowercase(out: &mut String, s: &str) {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        out.push_str(&s.to_ascii_lowercase());
    } else {
        out.push_str(s);
    }
}

/// A byte a host (reg-name, IP literal, port) holds as is: unreserved, sub-delims, `:`, `[`,
/// `]`. Everything else (`/`, `?`, `#`, `@`, `%`, space, controls, non-ASCII) is escaped, so
/// a `Host` field cannot end the host part of the key early nor pass for another host.
fn host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]".contains(&b)
}

/// `host` lower-cased, bytes outside [`host_byte`] as `%XX`.
fn push_host(out: &mut String, host: &[u8]) {
    if host
        .iter()
        .all(|&b| host_byte(b) && !b.is_ascii_uppercase())
    {
        // All ASCII (checked above), so valid UTF-8.
        out.push_str(std::str::from_utf8(host).unwrap_or_default());
        return;
    }
    for &b in host {
        if host_byte(b) {
            out.push(char::from(b.to_ascii_lowercase()));
        } else {
            push_pct(out, b);
        }
    }
}

/// A URI authority: `userinfo@` (case kept, escaped like a host, so it holds no `@`) and the
/// host lower-cased.
fn push_authority(out: &mut String, authority: &str) {
    match authority.rsplit_once('@') {
        None => push_host(out, authority.as_bytes()),
        Some((userinfo, host)) => {
            for &b in userinfo.as_bytes() {
                if host_byte(b) {
                    out.push(char::from(b));
                } else {
                    push_pct(out, b);
                }
            }
            out.push('@');
            push_host(out, host.as_bytes());
        }
    }
}

fn push_pct(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// A byte the canonical query holds as is in a name (and in a value, with `=`): visible
/// ASCII except the ones form decoding gives a meaning (`%`, `&`, `+`, `=`) and `#`.
fn query_literal(b: u8) -> bool {
    matches!(b, 0x21..=0x7e) && !matches!(b, b'%' | b'&' | b'+' | b'=' | b'#')
}

fn push_query(out: &mut String, query: &str, keep: &QueryKey) {
    if *keep == QueryKey::None {
        return;
    }
    if is_canonical(query, keep) {
        // The common case: copied as is, nothing decoded, sorted or allocated.
        if !query.is_empty() {
            out.push('?');
            out.push_str(query);
        }
        return;
    }
    push_decoded_query(out, query, keep);
}

/// Whether `query` is already what [`push_decoded_query`] would write: every segment a
/// `name=value` of literal bytes (a value may also hold `=` and `+`), names sorted, all kept.
fn is_canonical(query: &str, keep: &QueryKey) -> bool {
    // `None` rather than an empty slice: comparing with an empty slice's dangling pointer
    // costs glibc's AVX-512 `memcmp` a fault-suppressed masked load (~180 ns on a Xeon
    // here) even for zero bytes; the names compared below point into the query.
    let mut previous: Option<&[u8]> = None;
    query.as_bytes().split(|&b| b == b'&').all(|segment| {
        let Some(eq) = segment.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (name, value) = (&segment[..eq], &segment[eq + 1..]);
        let ok = name.iter().all(|&b| query_literal(b))
            && value
                .iter()
                .all(|&b| query_literal(b) || b == b'=' || b == b'+')
            && previous.is_none_or(|previous| previous <= name)
            && keep.keeps(name);
        previous = Some(name);
        ok
    })
}

/// A decoded (name, value).
type Pair<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// The query as decoded (name, value) byte pairs, filtered, sorted stably by name and
/// re-encoded canonically (see [`primary_key`]).
fn push_decoded_query(out: &mut String, query: &str, keep: &QueryKey) {
    let mut pairs: Vec<Pair<'_>> = query
        .as_bytes()
        .split(|&b| b == b'&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (name, value) = match segment.iter().position(|&b| b == b'=') {
                Some(eq) => (&segment[..eq], &segment[eq + 1..]),
                None => (segment, &[][..]),
            };
            (form_decode(name), form_decode(value))
        })
        .filter(|(name, _)| keep.keeps(name))
        .collect();
    // By the name as the handler compares it: decoded as UTF-8, lossily. Names it cannot
    // tell apart (`%A9` and `%C3` are both U+FFFD to it) keep their order, so that first- or
    // last-wins handlers see the same value under one key.
    pairs.sort_by(|a, b| String::from_utf8_lossy(&a.0).cmp(&String::from_utf8_lossy(&b.0)));
    for (i, (name, value)) in pairs.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        push_form(out, name, false);
        out.push('=');
        push_form(out, value, true);
    }
}

/// `application/x-www-form-urlencoded` decoding of one name or value, to bytes: `+` is a
/// space, `%XX` a byte, a `%` not followed by two hex digits itself. (The handler then
/// decodes the bytes as UTF-8, lossily; keeping them distinct here is strictly finer.)
fn form_decode(s: &[u8]) -> Cow<'_, [u8]> {
    if s.contains(&b'+') {
        let spaced: Vec<u8> = s
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        Cow::Owned(percent_decode(&spaced).collect())
    } else {
        percent_decode(s).into()
    }
}

/// The canonical encoding of a decoded name or value: space as `+`, [`query_literal`]
/// bytes (and `=` in a value) as is, every other byte as upper-case `%XX`.
fn push_form(out: &mut String, bytes: &[u8], value: bool) {
    for &b in bytes {
        if b == b' ' {
            out.push('+');
        } else if query_literal(b) || (value && b == b'=') {
            out.push(char::from(b));
        } else {
            push_pct(out, b);
        }
    }
}

/// The absolute target of a `Location` / `Content-Location` value when it names the same
/// origin as the request (RFC 9111 §4.4: never invalidate across origins).
pub(crate) fn same_origin_target(request_origin: (&str, &str), location: &str) -> Option<Uri> {
    let uri: Uri = location.parse().ok()?;
    let (scheme, host) = request_origin;
    let same = match uri.authority() {
        None => uri.path().starts_with('/'),
        Some(authority) => {
            uri.scheme_str()
                .unwrap_or(scheme)
                .eq_ignore_ascii_case(scheme)
                && authority.as_str().eq_ignore_ascii_case(host)
        }
    };
    if !same {
        return None;
    }
    at_origin(scheme, host, &uri)
}

/// The absolute URI of a request (for invalidating its target).
pub(crate) fn absolute(uri: &Uri, headers: &HeaderMap) -> Option<Uri> {
    let (scheme, host) = origin(uri, headers);
    at_origin(scheme, host, uri)
}

/// `uri`'s path and query at `scheme://host`.
fn at_origin(scheme: &str, host: &str, uri: &Uri) -> Option<Uri> {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme(scheme)
        .authority(host)
        .path_and_query(path_and_query)
        .build()
        .ok()
}

/// The scheme and host used in a request's key.
pub(crate) fn origin<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> (&'a str, &'a str) {
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    (uri.scheme_str().unwrap_or("http"), host)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn key(uri: &str, host: Option<&'static str>) -> String {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(header::HOST, HeaderValue::from_static(host));
        }
        primary_key(&uri.parse().unwrap(), &h, &QueryKey::All)
    }

    fn same_origin_key(o: (&str, &str), location: &str) -> Option<String> {
        same_origin_target(o, location).map(|u| primary_key(&u, &HeaderMap::new(), &QueryKey::All))
    }

    #[test]
    fn host_is_always_part_of_the_key() {
        assert_eq!(key("/a", Some("Example.com")), "http://example.com/a");
        assert_ne!(key("/a", Some("a.example")), key("/a", Some("b.example")));
        assert_eq!(
            key("https://x.example:8443/a", None),
            "https://x.example:8443/a"
        );
    }

    #[test]
    fn query_parameters_are_sorted_by_name_stably() {
        assert_eq!(key("/p?b=2&a=1&&a=0", Some("h")), "http://h/p?a=1&a=0&b=2");
        assert_eq!(key("/p?b=2&a=1", Some("h")), key("/p?a=1&b=2", Some("h")));
        assert_ne!(key("/p?a=1", Some("h")), key("/p?a=2", Some("h")));
        assert_ne!(key("/p", Some("h")), key("/q", Some("h")));
    }

    #[test]
    fn policy_query_filters_parameters() {
        let h = HeaderMap::new();
        let uri: Uri = "http://h/p?utm=1&b=2&a=1".parse().unwrap();
        let only = QueryKey::Only(vec!["a".into()]);
        assert_eq!(primary_key(&uri, &h, &only), "http://h/p?a=1");
        let ignore = QueryKey::Ignore(vec!["utm".into()]);
        assert_eq!(primary_key(&uri, &h, &ignore), "http://h/p?a=1&b=2");
        assert_eq!(primary_key(&uri, &h, &QueryKey::None), "http://h/p");
    }

    #[test]
    fn location_invalidation_stays_on_the_origin_rfc9111_4_4() {
        let o = ("http", "h.example");
        assert_eq!(
            same_origin_key(o, "/items/1").as_deref(),
            Some("http://h.example/items/1")
        );
        assert_eq!(
            same_origin_key(o, "http://H.example/x?b&a").as_deref(),
            Some("http://h.example/x?a=&b=")
        );
        assert_eq!(same_origin_key(o, "http://evil.example/x"), None);
        assert_eq!(same_origin_key(o, "https://h.example/x"), None);
        assert_eq!(same_origin_key(o, "relative"), None);
    }

    fn keyed(uri: &str, query: &QueryKey) -> String {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("shop.example"));
        primary_key(&uri.parse().unwrap(), &h, query)
    }

    fn shop_products() -> QueryKey {
        QueryKey::Only(vec!["skip".into(), "limit".into(), "category".into()])
    }

    #[test]
    fn only_keeps_parameters_by_the_name_the_handler_decodes() {
        let only = shop_products();
        let plain = keyed("/products?skip=11", &only);
        for poison in [
            "/products?skip=11&categ%6fry=9",
            "/products?skip=11&categ%6Fry=9",
            "/products?skip=11&%63ategory=3",
            "/products?skip=11&lim%69t=1",
            "/products?skip=11&lim%69t",
            "/products?%73kip=11&limit=1",
        ] {
            assert_ne!(keyed(poison, &only), plain, "{poison}");
        }
        // The same parameters, spelled otherwise: one entry.
        assert_eq!(
            keyed("/products?%73kip=11&utm=x&category=%39", &only),
            keyed("/products?category=9&skip=11", &only)
        );
        // `Ignore` drops a name however it is spelled, and keeps what the handler reads.
        let ignore = QueryKey::Ignore(vec!["utm".into()]);
        assert_eq!(keyed("/p?a=1&ut%6d=x", &ignore), keyed("/p?a=1", &ignore));
        assert_ne!(keyed("/p?a=1&ut%6d+=x", &ignore), keyed("/p?a=1", &ignore));
    }

    #[test]
    fn the_query_is_keyed_as_form_urlencoded_decodes_it() {
        let all = QueryKey::All;
        // Duplicates keep their order however they are spelled: a first-wins or last-wins
        // handler sees a different value.
        assert_ne!(keyed("/p?a=1&%61=2", &all), keyed("/p?%61=2&a=1", &all));
        // An escaped `&`, `=` or `+` is data, not syntax.
        assert_ne!(keyed("/p?a=1%26b=2", &all), keyed("/p?a=1&b=2", &all));
        assert_ne!(keyed("/p?a%3D1=2", &all), keyed("/p?a=1=2", &all));
        assert_ne!(keyed("/p?a=%2B", &all), keyed("/p?a=+", &all));
        assert_ne!(keyed("/p?a=%2525", &all), keyed("/p?a=%25", &all));
        // A `%` that starts no escape is itself (as form decoding has it).
        assert_eq!(keyed("/p?a=%25", &all), keyed("/p?a=%", &all));
        assert_eq!(keyed("/p?a=%zz", &all), keyed("/p?a=%25zz", &all));
        // Spellings of one decoded list share an entry.
        assert_eq!(keyed("/p?a=+", &all), keyed("/p?a=%20", &all));
        assert_eq!(keyed("/p?a", &all), keyed("/p?a=", &all));
        assert_eq!(
            keyed("/p?b=%7e&a=%C3%A9", &all),
            keyed("/p?a=%c3%a9&&b=~", &all)
        );
        assert_eq!(keyed("/p?", &all), keyed("/p", &all));
        assert_eq!(keyed("/p?b=1&a=2", &all), "http://shop.example/p?a=2&b=1");
    }

    fn host_key(host: &[u8], uri: &str) -> String {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_bytes(host).unwrap());
        primary_key(&uri.parse().unwrap(), &h, &QueryKey::All)
    }

    #[test]
    fn every_host_header_keeps_its_own_key() {
        let keys = [
            host_key(b"h\xff.example", "/p"),
            host_key(b"h\xfe.example", "/p"),
            host_key(b"", "/p"),
            host_key(b"h.example/x", "/p"),
            host_key(b"h.example", "/x/p"),
            host_key(b"h.example?a=1", "/p"),
            host_key(b"evil@h.example", "/p"),
            host_key(b"h.example", "/p"),
            host_key(b"h.example%2fx", "/p"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(host_key(b"H.Example", "/p"), host_key(b"h.example", "/p"));
    }

    #[test]
    fn an_absolute_target_and_a_disagreeing_host_field_do_not_share_a_key_rfc9112_3_2_2() {
        let clean = host_key(b"shop.example", "http://shop.example/p");
        assert_eq!(clean, "http://shop.example/p");
        assert_eq!(host_key(b"SHOP.example", "http://shop.example/p"), clean);
        assert_ne!(host_key(b"evil.example", "http://shop.example/p"), clean);
        assert_eq!(key("http://shop.example/p", None), clean);
        // Userinfo is not dropped from the key (the URI the handler sees has it).
        assert_ne!(key("http://u@shop.example/p", None), clean);
    }

    /// Decoded bytes the generated parameters are made of: letters, the bytes form encoding
    /// gives a meaning (`%`, `+`, `=`, `&`, space), `#`, and non-ASCII (`é` and a byte that is
    /// not UTF-8), few enough that names repeat.
    const ALPHABET: &[u8] = b"ab %+=&#~\xc3\xa9\xff";

    /// Names the `Only` / `Ignore` policies of the property tests list.
    fn listed() -> Vec<String> {
        vec![
            "a".into(),
            "a b".into(),
            "+".into(),
            "\u{e9}".into(),
            "".into(),
        ]
    }

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn pairs() -> impl Strategy<Value = Pairs> {
        let part = || prop::collection::vec(prop::sample::select(ALPHABET), 0..3);
        prop::collection::vec((part(), part()), 0..6)
    }

    /// A small deterministic generator for the spelling choices.
    struct Dice(u64);

    impl Dice {
        fn roll(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn escape(out: &mut String, b: u8, dice: &mut Dice) {
        let hex = format!("{b:02X}");
        if dice.roll(2) == 0 {
            out.push('%');
            out.push_str(&hex);
        } else {
            out.push('%');
            out.push_str(&hex.to_ascii_lowercase());
        }
    }

    /// One byte of a name or value, spelled at random among the spellings that decode to it.
    fn spell_byte(out: &mut String, b: u8, in_name: bool, dice: &mut Dice) {
        match b {
            b' ' if dice.roll(2) == 0 => out.push('+'),
            b'%' | b'&' | b'+' | b'#' | b' ' | 0x80..=0xff => escape(out, b, dice),
            b'=' if in_name => escape(out, b, dice),
            _ if dice.roll(3) == 0 => escape(out, b, dice),
            _ => out.push(char::from(b)),
        }
    }

    /// A query string whose form decoding is `pairs`, spelled at random: bytes escaped or not,
    /// hex digits of either case, spaces as `+` or `%20`, `a` for `a=`, empty segments.
    fn spell(pairs: &Pairs, seed: u64) -> String {
        let mut dice = Dice(seed | 1);
        let mut out = String::new();
        for (name, value) in pairs {
            if !out.is_empty() || dice.roll(4) == 0 {
                out.push('&');
            }
            if dice.roll(5) == 0 {
                out.push('&');
            }
            for &b in name {
                spell_byte(&mut out, b, true, &mut dice);
            }
            if !value.is_empty() || name.is_empty() || dice.roll(2) == 0 {
                out.push('=');
            }
            for &b in value {
                spell_byte(&mut out, b, false, &mut dice);
            }
        }
        out
    }

    /// What a handler reading the query with `form_urlencoded::parse` (axum's `Query`) can
    /// tell apart under `keep`: the parameters it reads, each name's values in order.
    fn handler_view(query: &str, keep: &QueryKey) -> Vec<(String, String)> {
        let listed = |n: &str| listed().iter().any(|l| l == n);
        let mut view: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .filter(|(n, _)| match keep {
                QueryKey::All => true,
                QueryKey::Only(_) => listed(n),
                QueryKey::Ignore(_) => !listed(n),
                QueryKey::None => false,
            })
            .collect();
        view.sort_by(|a, b| a.0.cmp(&b.0));
        view
    }

    fn policies() -> [QueryKey; 3] {
        [
            QueryKey::All,
            QueryKey::Only(listed()),
            QueryKey::Ignore(listed()),
        ]
    }

    /// `pairs` changed a little (so that near misses are tried): two neighbours swapped, one
    /// byte changed, a pair dropped or repeated.
    fn mutate(mut pairs: Pairs, how: u8, at: usize, byte: u8) -> Pairs {
        if pairs.is_empty() {
            pairs.push((vec![byte], Vec::new()));
            return pairs;
        }
        let i = at % pairs.len();
        match how % 5 {
            0 if pairs.len() > 1 => {
                let j = (i + 1) % pairs.len();
                pairs.swap(i, j);
            }
            1 => pairs[i].1.push(byte),
            2 => {
                let name = &mut pairs[i].0;
                match name.last_mut() {
                    Some(last) => *last = byte,
                    None => name.push(byte),
                }
            }
            3 => {
                pairs.remove(i);
            }
            _ => {
                let copy = pairs[i].clone();
                pairs.insert(0, copy);
            }
        }
        pairs
    }

    #[test]
    fn names_the_handler_decodes_alike_keep_their_order() {
        // Both names are U+FFFD to a lossy UTF-8 decoder: to the handler these are one
        // repeated name in two orders, so two requests, never one key.
        let h = HeaderMap::new();
        let a: Uri = "http://h/p?%A9&%C3=a".parse().unwrap();
        let b: Uri = "http://h/p?%C3=a&%A9".parse().unwrap();
        assert_ne!(
            primary_key(&a, &h, &QueryKey::All),
            primary_key(&b, &h, &QueryKey::All)
        );
    }

    proptest! {
        #[test]
        fn parameters_the_handler_tells_apart_never_share_a_key(
            a in pairs(),
            other in pairs(),
            mutation in (any::<bool>(), any::<u8>(), any::<usize>(), prop::sample::select(ALPHABET)),
            seeds in (any::<u64>(), any::<u64>()),
        ) {
            let (independent, how, at, byte) = mutation;
            let b = if independent { other } else { mutate(a.clone(), how, at, byte) };
            let (qa, qb) = (spell(&a, seeds.0), spell(&b, seeds.1));
            for keep in policies() {
                if handler_view(&qa, &keep) != handler_view(&qb, &keep) {
                    prop_assert_ne!(
                        keyed(&format!("/p?{qa}"), &keep),
                        keyed(&format!("/p?{qb}"), &keep),
                        "{:?}: {:?} and {:?}", keep, qa, qb
                    );
                }
            }
        }

        #[test]
        fn spellings_of_the_same_parameters_share_a_key(
            params in pairs(),
            seeds in (any::<u64>(), any::<u64>()),
            order in any::<u64>(),
        ) {
            // Another order that keeps each name's values in order — the name as the
            // handler sees it (lossy UTF-8): `%A9` and `%FF` are one name to it.
            let mut reordered = params.clone();
            reordered.sort_by_key(|(name, _)| {
                String::from_utf8_lossy(name)
                    .bytes()
                    .fold(order, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
            });
            let (qa, qb) = (spell(&params, seeds.0), spell(&reordered, seeds.1));
            for keep in policies() {
                prop_assert_eq!(
                    keyed(&format!("/p?{qa}"), &keep),
                    keyed(&format!("/p?{qb}"), &keep),
                    "{:?}: {:?} and {:?}", keep, qa, qb
                );
            }
        }

        #[test]
        fn the_fast_path_gives_the_decoded_key(query in "[ab=&+%2~]{0,12}") {
            for keep in policies() {
                let mut fast = String::new();
                push_query(&mut fast, &query, &keep);
                let mut decoded = String::new();
                push_decoded_query(&mut decoded, &query, &keep);
                prop_assert_eq!(&fast, &decoded, "{:?}: {:?}", keep, query);
            }
        }

        #[test]
        fn parameter_order_does_not_change_the_key(params in prop::collection::btree_map("[a-z]{1,4}", "[a-z0-9]{0,4}", 0..6), seed in any::<u64>()) {
            let pairs: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut shuffled = pairs.clone();
            let len = shuffled.len().max(1);
            shuffled.rotate_left((seed as usize) % len);
            let a = key(&format!("/p?{}", pairs.join("&")), Some("h"));
            let b = key(&format!("/p?{}", shuffled.join("&")), Some("h"));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn any_location_value_does_not_panic(location in ".{0,64}") {
            let _ = same_origin_target(("http", "h"), &location);
        }
    }
}
