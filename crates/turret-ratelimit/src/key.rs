//! Who a request is counted against.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::{HeaderName, Request};
use ipnet::IpNet;

/// Why a key could not be extracted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingKey {
    what: &'static str,
}

impl MissingKey {
    /// A missing key source, named for the log line (e.g. "header x-api-key").
    pub fn new(what: &'static str) -> Self {
        Self { what }
    }

    /// What was missing.
    pub fn what(&self) -> &'static str {
        self.what
    }
}

impl fmt::Display for MissingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate-limit key source missing: {}", self.what)
    }
}

/// Extracts the key a request is counted against.
///
/// Implemented for closures `Fn(&Request<B>) -> Option<String>`.
pub trait KeyExtractor<B>: Clone + Send + Sync + 'static {
    /// The key, or what is missing.
    fn extract(&self, req: &Request<B>) -> Result<String, MissingKey>;
}

impl<B, F> KeyExtractor<B> for F
where
    F: Fn(&Request<B>) -> Option<String> + Clone + Send + Sync + 'static,
{
    fn extract(&self, req: &Request<B>) -> Result<String, MissingKey> {
        self(req).ok_or(MissingKey::new("key closure returned None"))
    }
}

/// The peer's IP address, from a `SocketAddr` request extension, or from axum's
/// `ConnectInfo<SocketAddr>` (feature `axum`; serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`).
///
/// IPv6 clients are grouped by prefix ([`PeerIp::ipv6_prefix`], /64 by default: one ordinary
/// IPv6 allocation is one client, not 2^64 of them); IPv4 clients are keyed by their address,
/// and IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) count as IPv4.
///
/// ```
/// use turret_ratelimit::{KeyExtractor, PeerIp};
///
/// let from = |peer: &str| {
///     let mut req = http::Request::new(());
///     req.extensions_mut().insert(peer.parse::<std::net::SocketAddr>().unwrap());
///     PeerIp::new().extract(&req).unwrap()
/// };
/// assert_eq!(from("[2001:db8:1:2::7]:443"), "2001:db8:1:2::/64");
/// assert_eq!(from("[2001:db8:1:2:ffff::1]:443"), "2001:db8:1:2::/64");
/// assert_eq!(from("[::ffff:192.0.2.1]:443"), "192.0.2.1");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIp {
    v6: Ipv6Prefix,
}

impl PeerIp {
    /// Keys by the peer address, IPv6 by its /64.
    pub fn new() -> Self {
        Self::default()
    }

    /// Groups IPv6 clients by their first `bits` bits (1 to 128; 128 keys each address on its
    /// own). Default 64. IPv4 is unaffected.
    pub fn ipv6_prefix(mut self, bits: u8) -> Result<Self, InvalidIpv6Prefix> {
        self.v6 = Ipv6Prefix::new(bits)?;
        Ok(self)
    }
}

/// The IPv6 prefix length that groups clients: 1 to 128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ipv6Prefix(u8);

impl Default for Ipv6Prefix {
    fn default() -> Self {
        Self(DEFAULT_IPV6_PREFIX)
    }
}

/// The IPv6 prefix length clients are grouped by unless configured: /64, the size of one
/// ordinary IPv6 subnet (RFC 4291 §2.5.4; what an ISP hands one customer's network at least).
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

impl Ipv6Prefix {
    fn new(bits: u8) -> Result<Self, InvalidIpv6Prefix> {
        if (1..=128).contains(&bits) {
            Ok(Self(bits))
        } else {
            Err(InvalidIpv6Prefix { bits })
        }
    }

    /// The key of an address: IPv4 (mapped or not) as the address, IPv6 as its network and
    /// prefix length (`2001:db8::/64`), or the bare address at /128.
    fn key(self, ip: IpAddr) -> String {
        match canonical(ip) {
            IpAddr::V6(v6) if self.0 < 128 => {
                let mask = u128::MAX << (128 - u32::from(self.0));
                let net = std::net::Ipv6Addr::from(u128::from(v6) & mask);
                format!("{net}/{}", self.0)
            }
            ip => ip_key(ip),
        }
    }
}

/// An IPv6 prefix length outside 1–128 (0 would put every IPv6 client in one bucket: use
/// [`GlobalKey`] for one quota shared by all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidIpv6Prefix {
    bits: u8,
}

impl fmt::Display for InvalidIpv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IPv6 prefix /{} is not between /1 and /128 (the default /64 groups one subnet; /128 \
             keys each address)",
            self.bits
        )
    }
}

impl std::error::Error for InvalidIpv6Prefix {}

/// What `PeerIp` and `ClientIp` say when a request carries no peer address, naming the fix
/// for this build: without the `axum` feature axum's `ConnectInfo` cannot be read at all.
#[cfg(not(feature = "axum"))]
pub(crate) const NO_PEER_ADDRESS: &str = "peer address: the request has no SocketAddr extension, \
     and this build cannot read axum's ConnectInfo<SocketAddr>. With axum: turn on the `axum` \
     feature of `turret` (or of `turret-ratelimit`) and serve with \
     into_make_service_with_connect_info::<SocketAddr>(); with hyper or tonic: insert the peer's \
     SocketAddr as a request extension";
/// What `PeerIp` and `ClientIp` say when a request carries no peer address, naming the fix.
#[cfg(feature = "axum")]
pub(crate) const NO_PEER_ADDRESS: &str = "peer address: the request has neither a \
     ConnectInfo<SocketAddr> nor a SocketAddr extension. With axum: serve with \
     into_make_service_with_connect_info::<SocketAddr>(); with hyper or tonic: insert the peer's \
     SocketAddr as a request extension";

pub(crate) fn peer_ip<B>(req: &Request<B>) -> Option<IpAddr> {
    if let Some(addr) = req.extensions().get::<SocketAddr>() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    None
}

impl<B> KeyExtractor<B> for PeerIp {
    fn extract(&self, req: &Request<B>) -> Result<String, MissingKey> {
        peer_ip(req)
            .map(|ip| self.v6.key(ip))
            .ok_or(MissingKey::new(NO_PEER_ADDRESS))
    }
}

/// The client's IP address behind trusted reverse proxies.
///
/// The forwarding header is consulted only when the peer itself is a trusted proxy, and only
/// the one your proxies write ([`ForwardingHeader`]: `X-Forwarded-For` by default, or RFC 7239
/// `Forwarded` `for=`): a header the proxy does not rewrite is the client's to forge. The
/// chain is walked from the right — the hop the trusted proxy appended — skipping trusted proxies; the first
/// untrusted address is the client. Entries a client wrote on the left can never be chosen
/// while an untrusted hop stands to their right, so a client cannot pick its own key.
/// A malformed entry stops the walk at the last good hop. The client found is keyed as by
/// [`PeerIp`]: IPv6 by its /64 ([`ClientIp::ipv6_prefix`]), IPv4 (mapped too) by its address.
///
/// ```
/// use turret_ratelimit::{ClientIp, KeyExtractor};
///
/// let key = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert("10.0.0.2:4000".parse::<std::net::SocketAddr>().unwrap());
/// req.headers_mut().insert("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.9".parse().unwrap());
/// assert_eq!(key.extract(&req).unwrap(), "203.0.113.7");
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: Arc<[IpNet]>,
    header: ForwardingHeader,
    v6: Ipv6Prefix,
}

/// Which forwarding header the trusted proxies append to (see [`ClientIp::header`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardingHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, AWS ALB, most load balancers): the default.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…` (Envoy and others when configured so).
    Forwarded,
}

impl ClientIp {
    /// Trusts these proxies (CIDRs like `10.0.0.0/8`, or single addresses).
    pub fn trusting<I, S>(cidrs: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let trusted = cidrs
            .into_iter()
            .map(|c| {
                let c = c.as_ref().trim();
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{c}` is not a CIDR or IP address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            trusted: trusted.into(),
            header: ForwardingHeader::default(),
            v6: Ipv6Prefix::default(),
        })
    }

    /// Groups IPv6 clients by their first `bits` bits (1 to 128), as [`PeerIp::ipv6_prefix`].
    /// Default 64. Which proxies are trusted is decided on whole addresses, never on the prefix.
    pub fn ipv6_prefix(mut self, bits: u8) -> Result<Self, InvalidIpv6Prefix> {
        self.v6 = Ipv6Prefix::new(bits)?;
        Ok(self)
    }

    /// The header the trusted proxies append the client address to (default
    /// [`ForwardingHeader::XForwardedFor`]). The other one is ignored: a client could write it.
    pub fn header(mut self, header: ForwardingHeader) -> Self {
        self.header = header;
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request: see the type's docs.
    pub fn client_ip<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = canonical(peer_ip(req)?);
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let chain: Vec<Option<IpAddr>> = match self.header {
            ForwardingHeader::Forwarded => req
                .headers()
                .get_all(http::header::FORWARDED)
                .iter()
                .flat_map(|v| split_list(v.as_bytes()))
                .map(forwarded_for)
                .collect(),
            ForwardingHeader::XForwardedFor => req
                .headers()
                .get_all(HeaderName::from_static("x-forwarded-for"))
                .iter()
                .flat_map(|v| split_list(v.as_bytes()))
                .map(parse_node)
                .collect(),
        };
        let mut client = peer;
        for hop in chain.into_iter().rev() {
            match hop {
                Some(ip) => {
                    client = canonical(ip);
                    if !self.is_trusted(client) {
                        break;
                    }
                }
                None => break,
            }
        }
        Some(client)
    }
}

impl<B> KeyExtractor<B> for ClientIp {
    fn extract(&self, req: &Request<B>) -> Result<String, MissingKey> {
        self.client_ip(req)
            .map(|ip| self.v6.key(ip))
            .ok_or(MissingKey::new(NO_PEER_ADDRESS))
    }
}

/// The value of a request header (an API key, a user id), or metadata of a gRPC request.
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
    what: &'static str,
}

impl HeaderKey {
    /// Keys requests by this header's value. The name must be a static, valid header name.
    pub fn new(name: &'static str) -> Self {
        Self {
            name: HeaderName::from_static(name),
            what: name,
        }
    }
}

impl<B> KeyExtractor<B> for HeaderKey {
    fn extract(&self, req: &Request<B>) -> Result<String, MissingKey> {
        let value = req
            .headers()
            .get(&self.name)
            .filter(|v| !v.is_empty())
            .ok_or(MissingKey::new(self.what))?;
        // Distinct byte strings stay distinct keys: a value that is not UTF-8 is kept as NUL
        // (never in a header value) and its bytes in hex.
        Ok(match std::str::from_utf8(value.as_bytes()) {
            Ok(text) => text.to_owned(),
            Err(_) => {
                use std::fmt::Write as _;
                let mut key = String::from("\0");
                for b in value.as_bytes() {
                    let _ = write!(key, "{b:02x}");
                }
                key
            }
        })
    }
}

/// One key for every request: a global limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalKey;

impl<B> KeyExtractor<B> for GlobalKey {
    fn extract(&self, _: &Request<B>) -> Result<String, MissingKey> {
        Ok(String::from("global"))
    }
}

/// The key text of an address: what `Display` writes, without the formatter's cost for IPv4
/// (it sits on every request's path).
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Splits a comma-separated header value, ignoring commas inside quoted strings.
fn split_list(value: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in value.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push(value[start..i].trim_ascii());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim_ascii());
    out.retain(|s| !s.is_empty());
    out
}

/// The `for=` node of one `Forwarded` element (RFC 7239 §4, §6). `None` when absent or not
/// an IP address (`unknown`, obfuscated identifiers, garbage).
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    element
        .split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .find_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            pair[..eq]
                .eq_ignore_ascii_case(b"for")
                .then(|| parse_node(pair[eq + 1..].trim_ascii()))
                .flatten()
        })
}

/// A node: `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:80"`, `2001:db8::1` (X-Forwarded-For).
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    let node = std::str::from_utf8(node).ok()?.trim();
    let node = node
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(node);
    if let Some(rest) = node.strip_prefix('[') {
        let end = rest.find(']')?;
        return rest[..end].parse().ok();
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    // IPv4 with a port.
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn req(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::new(());
        r.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        for (k, v) in headers {
            r.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        r
    }

    fn proxies() -> ClientIp {
        ClientIp::trusting(["10.0.0.0/8", "::1"]).unwrap()
    }

    #[test]
    fn forged_header_from_an_untrusted_peer_is_ignored() {
        let r = req(
            "198.51.100.1:1234",
            &[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2")],
        );
        assert_eq!(proxies().extract(&r).unwrap(), "198.51.100.1");
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        // The client prepended a forged 6.6.6.6; the proxies appended the truth.
        let r = req(
            "10.0.0.1:1",
            &[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.1.1")],
        );
        assert_eq!(proxies().extract(&r).unwrap(), "203.0.113.9");
        // Several header lines form one list, in order.
        let r = req(
            "10.0.0.1:1",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        );
        assert_eq!(proxies().extract(&r).unwrap(), "203.0.113.9");
    }

    #[test]
    fn only_the_configured_forwarding_header_is_read() {
        let r = req(
            "10.0.0.1:1",
            &[
                ("x-forwarded-for", "7.7.7.7"),
                (
                    "forwarded",
                    "for=6.6.6.6, for=\"[2001:db8::7]:443\";proto=https, For=10.2.2.2",
                ),
            ],
        );
        // Behind a proxy that appends X-Forwarded-For, a client-written Forwarded is ignored.
        assert_eq!(proxies().extract(&r).unwrap(), "7.7.7.7");
        let forwarded = proxies().header(ForwardingHeader::Forwarded);
        assert_eq!(forwarded.extract(&r).unwrap(), "2001:db8::/64");
        let exact = forwarded.ipv6_prefix(128).unwrap();
        assert_eq!(exact.extract(&r).unwrap(), "2001:db8::7");
    }

    #[test]
    fn distinct_header_key_bytes_are_distinct_keys() {
        let key = HeaderKey::new("x-api-key");
        let with = |v: &[u8]| {
            let mut r = Request::new(());
            r.headers_mut()
                .insert("x-api-key", http::HeaderValue::from_bytes(v).unwrap());
            key.extract(&r).unwrap()
        };
        let (a, b, c) = (
            with(b"key\xff"),
            with(b"key\xfe"),
            with("key\u{FFFD}".as_bytes()),
        );
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(with(b"plain"), "plain");
    }

    #[test]
    fn all_trusted_chain_gives_the_leftmost() {
        let r = req("10.0.0.1:1", &[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(proxies().extract(&r).unwrap(), "10.9.9.9");
    }

    #[test]
    fn malformed_hop_stops_at_the_last_good_one() {
        let r = req(
            "10.0.0.1:1",
            &[("x-forwarded-for", "6.6.6.6, garbage, 10.3.3.3")],
        );
        assert_eq!(proxies().extract(&r).unwrap(), "10.3.3.3");
        let r = req("10.0.0.1:1", &[("forwarded", "for=unknown")]);
        assert_eq!(proxies().extract(&r).unwrap(), "10.0.0.1");
    }

    #[test]
    fn ipv4_with_port_and_mapped_v6() {
        let r = req(
            "[::ffff:10.0.0.1]:1",
            &[("x-forwarded-for", "203.0.113.9:5555")],
        );
        assert_eq!(proxies().extract(&r).unwrap(), "203.0.113.9");
    }

    #[test]
    fn header_and_peer_keys() {
        let r = req("192.0.2.1:9", &[("x-api-key", "abc")]);
        assert_eq!(HeaderKey::new("x-api-key").extract(&r).unwrap(), "abc");
        assert!(HeaderKey::new("x-user").extract(&r).is_err());
        assert_eq!(PeerIp::new().extract(&r).unwrap(), "192.0.2.1");
        assert!(PeerIp::new().extract(&Request::new(())).is_err());
        assert!(ClientIp::trusting(["nope"]).is_err());
    }

    #[cfg(feature = "axum")]
    #[test]
    fn peer_ip_reads_axum_connect_info() {
        let mut r = Request::new(());
        r.extensions_mut().insert(axum::extract::ConnectInfo(
            "192.0.2.44:80".parse::<SocketAddr>().unwrap(),
        ));
        assert_eq!(PeerIp::new().extract(&r).unwrap(), "192.0.2.44");
    }

    #[test]
    fn ipv6_clients_in_one_prefix_share_a_key_and_other_prefixes_do_not() {
        let peer = |ip: &str| PeerIp::new().extract(&req(ip, &[])).unwrap();
        assert_eq!(
            peer("[2001:db8:aa:bb::1]:1"),
            peer("[2001:db8:aa:bb:ffff:ffff:ffff:ffff]:2")
        );
        assert_eq!(peer("[2001:db8:aa:bb::1]:1"), "2001:db8:aa:bb::/64");
        assert_ne!(peer("[2001:db8:aa:bb::1]:1"), peer("[2001:db8:aa:bc::1]:1"));
        // A configured /48 groups more; /128 keys each address.
        let p48 = PeerIp::new().ipv6_prefix(48).unwrap();
        let r = |ip: &str| req(ip, &[]);
        assert_eq!(
            p48.extract(&r("[2001:db8:aa:bb::1]:1")).unwrap(),
            p48.extract(&r("[2001:db8:aa:ff::1]:1")).unwrap()
        );
        assert_eq!(
            p48.extract(&r("[2001:db8:aa::]:1")).unwrap(),
            "2001:db8:aa::/48"
        );
        let p128 = PeerIp::new().ipv6_prefix(128).unwrap();
        assert_ne!(
            p128.extract(&r("[2001:db8::1]:1")).unwrap(),
            p128.extract(&r("[2001:db8::2]:1")).unwrap()
        );
        // An odd length masks inside a group of 16 bits.
        let p1 = PeerIp::new().ipv6_prefix(1).unwrap();
        assert_eq!(p1.extract(&r("[ffff::1]:1")).unwrap(), "8000::/1");
        // ClientIp groups the client it finds the same way (and IPv4 stays whole).
        let behind = |xff: &str| proxies().extract(&req("10.0.0.1:1", &[("x-forwarded-for", xff)]));
        assert_eq!(behind("2001:db8:1:2::9").unwrap(), "2001:db8:1:2::/64");
        assert_eq!(behind("2001:db8:1:2::9"), behind("2001:db8:1:2:abcd::1"));
        assert_ne!(behind("2001:db8:1:2::9"), behind("2001:db8:1:3::9"));
        assert_eq!(behind("203.0.113.9").unwrap(), "203.0.113.9");
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_the_ipv4_address() {
        for prefix in [1, 64, 128] {
            let peer = PeerIp::new().ipv6_prefix(prefix).unwrap();
            let mapped = peer.extract(&req("[::ffff:192.0.2.1]:1", &[])).unwrap();
            let v4 = peer.extract(&req("192.0.2.1:1", &[])).unwrap();
            assert_eq!(mapped, v4);
            assert_eq!(v4, "192.0.2.1");
            // Another IPv4 address in the mapped range's /64 is another client.
            let other = peer.extract(&req("[::ffff:192.0.2.2]:1", &[])).unwrap();
            assert_ne!(other, v4);
        }
        let behind = proxies().extract(&req(
            "10.0.0.1:1",
            &[("x-forwarded-for", "::ffff:198.51.100.3")],
        ));
        assert_eq!(behind.unwrap(), "198.51.100.3");
    }

    #[test]
    fn ipv6_prefix_outside_1_to_128_is_rejected_with_a_clear_error() {
        for bits in [0, 129, 255] {
            let err = PeerIp::new().ipv6_prefix(bits).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("/{bits} is not between /1 and /128")),
                "{err}"
            );
            assert!(proxies().ipv6_prefix(bits).is_err());
        }
        assert!(PeerIp::new().ipv6_prefix(128).is_ok());
        assert!(PeerIp::new().ipv6_prefix(1).is_ok());
    }

    #[test]
    fn ip_key_matches_display() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "192.0.2.1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_key(ip), ip.to_string());
        }
    }

    proptest! {
        #[test]
        fn ip_key_matches_display_for_every_v4(a: u8, b: u8, c: u8, d: u8) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d));
            prop_assert_eq!(ip_key(ip), ip.to_string());
        }

        #[test]
        fn any_forwarding_header_bytes_never_panic(
            xff in proptest::collection::vec(any::<u8>(), 0..200),
            fwd in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut r = Request::new(());
            r.extensions_mut().insert("10.0.0.1:1".parse::<SocketAddr>().unwrap());
            if let Ok(v) = http::HeaderValue::from_bytes(&xff) {
                r.headers_mut().insert("x-forwarded-for", v);
            }
            if let Ok(v) = http::HeaderValue::from_bytes(&fwd) {
                r.headers_mut().insert("forwarded", v);
            }
            let ip = proxies().client_ip(&r);
            prop_assert!(ip.is_some());
        }
    }
}
