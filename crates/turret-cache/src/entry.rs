//! [`CachedResponse`]: a stored response, its Vary secondary key, and its binary encoding.

use std::{error::Error as StdError, fmt, sync::OnceLock, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use crate::freshness;

/// A response as the cache stores it: status, header fields, body, the times the request was
/// sent and the response received (for the age calculation of RFC 9111 §4.2.3), and the
/// request's values of the fields its `Vary` names (the secondary key, RFC 9111 §4.1).
#[derive(Clone)]
pub struct CachedResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    request_time: Duration,
    response_time: Duration,
    lifetime: Duration,
    initial_age: Duration,
    vary: Vec<(HeaderName, Option<Bytes>)>,
    tags: Vec<String>,
    /// Facts every look-up reads of the stored fields, found on the first one.
    facts: OnceLock<Facts>,
    /// The fields of a full hit, kept from the second hit on (see
    /// [`hit_headers`](Self::hit_headers)); `hit_once` is set by the first.
    hit_template: OnceLock<HeaderMap>,
    hit_once: OnceLock<()>,
}

impl PartialEq for CachedResponse {
    fn eq(&self, other: &Self) -> bool {
        self.status == other.status
            && self.headers == other.headers
            && self.body == other.body
            && self.request_time == other.request_time
            && self.response_time == other.response_time
            && self.lifetime == other.lifetime
            && self.initial_age == other.initial_age
            && self.vary == other.vary
            && self.tags == other.tags
    }
}

impl Eq for CachedResponse {}

/// `X-Cache`, and `Cache-Status` (RFC 9211).
pub(crate) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The field that makes a stored entry a hit-for-miss marker: "this URL answered
/// uncacheably" (its value says why). Never sent: markers are never served, and the field is
/// removed from origin responses before they are stored, so an origin cannot forge one.
pub(crate) const HIT_FOR_MISS: HeaderName = HeaderName::from_static("turret-hit-for-miss");

/// What every look-up reads of the stored fields (see [`CachedResponse::facts`]).
#[derive(Clone, Copy)]
pub(crate) struct Facts {
    /// `Vary: *` (never matches a request).
    pub(crate) vary_star: bool,
    /// An upstream cache's `Cache-Status` was stored (a hit appends to it).
    pub(crate) upstream_status: bool,
}

/// The fields of a full hit: the stored ones plus `Age`, `X-Cache`, (when no upstream cache
/// sent one) `Cache-Status`, whose values a hit replaces in place, and (when the status has a
/// body and none was stored) `Content-Length`, so that no layer or server inserting it
/// regrows the map.
fn hit_template(status: StatusCode, headers: &HeaderMap, body_len: usize) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 4);
    for (name, value) in headers {
        out.append(name, value.clone());
    }
    out.insert(header::AGE, HeaderValue::from_static("0"));
    out.insert(X_CACHE, HeaderValue::from_static("HIT"));
    if !headers.contains_key(CACHE_STATUS) {
        out.insert(CACHE_STATUS, HeaderValue::from_static("turret; hit"));
    }
    // RFC 9110 §8.6: never on a 1xx or 204 (nor a 304, which a full hit is not).
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if !bodiless && !headers.contains_key(header::CONTENT_LENGTH) {
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    }
    out
}

impl fmt::Debug for CachedResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("request_time", &self.request_time)
            .field("response_time", &self.response_time)
            .field("lifetime", &self.lifetime)
            .field("initial_age", &self.initial_age)
            .field("vary", &self.vary)
            .field("tags", &self.tags)
            .finish()
    }
}

impl CachedResponse {
    /// A response to store; `request_headers` gives the secondary key for the fields its
    /// `Vary` lists. Times are since the Unix epoch; `initial_age` is the corrected initial
    /// age of RFC 9111 §4.2.3 and `lifetime` the freshness lifetime of §4.2.1.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        request_headers: &HeaderMap,
        request_time: Duration,
        response_time: Duration,
        lifetime: Duration,
        initial_age: Duration,
    ) -> Self {
        let mut vary: Vec<(HeaderName, Option<Bytes>)> = Vec::new();
        for value in headers.get_all(header::VARY) {
            for name in value.as_bytes().split(|&b| b == b',') {
                if let Ok(name) = HeaderName::from_bytes(name.trim_ascii())
                    && !vary.iter().any(|(n, _)| *n == name)
                {
                    let v = field_lines(request_headers, &name);
                    vary.push((name, v));
                }
            }
        }
        Self {
            status,
            facts: OnceLock::new(),
            hit_template: OnceLock::new(),
            hit_once: OnceLock::new(),
            headers,
            body,
            request_time,
            response_time,
            lifetime,
            initial_age,
            vary,
            tags: Vec::new(),
        }
    }

    /// This response with its invalidation tags (see [`tags`](Self::tags)).
    pub(crate) fn with_tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    /// The invalidation tags this response was stored with (from the policy or a
    /// `Surrogate-Key` / `Cache-Tag` response field); a storage indexes them so that
    /// [`CacheStorage::invalidate_tag`](crate::CacheStorage::invalidate_tag) finds it.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// A copy that is stale from `at` on (a soft purge): its freshness lifetime is cut to
    /// its age at `at`, so it can still be served stale (RFC 5861) or revalidated, never as
    /// fresh. Unchanged when it was already stale by then.
    pub fn stale_at(&self, at: Duration) -> CachedResponse {
        let mut out = self.clone();
        out.lifetime = self.lifetime.min(self.age(at));
        out
    }

    /// A copy with the header fields and times of a revalidation (RFC 9111 §4.3.4): the
    /// stored fields are updated from the 304 (`headers`), the body and Vary key are kept.
    pub(crate) fn revalidated(
        &self,
        headers: HeaderMap,
        request_time: Duration,
        response_time: Duration,
        lifetime: Duration,
        initial_age: Duration,
    ) -> CachedResponse {
        CachedResponse {
            status: self.status,
            facts: OnceLock::new(),
            hit_template: OnceLock::new(),
            hit_once: OnceLock::new(),
            headers,
            body: self.body.clone(),
            request_time,
            response_time,
            lifetime,
            initial_age,
            vary: self.vary.clone(),
            tags: self.tags.clone(),
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stored header fields.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Facts about the stored fields, found on the first call.
    pub(crate) fn facts(&self) -> Facts {
        *self.facts.get_or_init(|| Facts {
            vary_star: freshness::vary_has_star(&self.headers),
            upstream_status: self.headers.contains_key(CACHE_STATUS),
        })
    }

    /// The fields of a full hit (the stored ones plus `Age`, `X-Cache`, `Content-Length`
    /// and, unless an upstream cache sent one, `Cache-Status`, with placeholder values to
    /// replace). Made for the first hit; from the second on, made once, kept and cloned —
    /// so a response decoded from Redis for one hit makes them once, not twice.
    pub(crate) fn hit_headers(&self) -> HeaderMap {
        if let Some(template) = self.hit_template.get() {
            return template.clone();
        }
        let make = || hit_template(self.status, &self.headers, self.body.len());
        if self.hit_once.set(()).is_ok() {
            return make();
        }
        self.hit_template.get_or_init(make).clone()
    }

    /// Whether this is a hit-for-miss marker, not a response (an empty body is checked
    /// first: it is free, and real entries almost always have a body).
    pub(crate) fn is_marker(&self) -> bool {
        self.body.is_empty() && self.headers.contains_key(HIT_FOR_MISS)
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// When the request that produced this response was sent (since the Unix epoch).
    pub fn request_time(&self) -> Duration {
        self.request_time
    }

    /// When the response was received (since the Unix epoch).
    pub fn response_time(&self) -> Duration {
        self.response_time
    }

    /// The freshness lifetime (RFC 9111 §4.2.1, or the layer's default TTL).
    pub fn freshness_lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The current age at `now` (RFC 9111 §4.2.3: corrected initial age + resident time).
    pub fn age(&self, now: Duration) -> Duration {
        self.initial_age
            .saturating_add(now.saturating_sub(self.response_time))
    }

    /// Freshness left at `now`; `None` when stale (RFC 9111 §4.2).
    pub fn ttl(&self, now: Duration) -> Option<Duration> {
        self.lifetime
            .checked_sub(self.age(now))
            .filter(|left| !left.is_zero())
    }

    /// Whether a request with `request_headers` selects this response (RFC 9111 §4.1): every
    /// field named by `Vary` has the same field lines, byte for byte and in the same order,
    /// as the request that stored it; an absent field matches only an absent field, and
    /// `Vary: *` never matches. (§4.1 allows, never requires, matching values that differ
    /// in whitespace or in how they are split into lines; a handler can tell those apart, so
    /// they select different variants.)
    pub fn matches(&self, request_headers: &HeaderMap) -> bool {
        !self.facts().vary_star
            && self
                .vary
                .iter()
                .all(|(name, stored)| same_field_lines(request_headers, name, stored.as_ref()))
    }

    /// Whether `other` has the same Vary secondary key (so it replaces this one).
    pub(crate) fn same_secondary_key(&self, other: &CachedResponse) -> bool {
        self.vary == other.vary
    }

    /// A 128-bit digest of the Vary secondary key (FNV-1a over a length-prefixed form):
    /// equal for equal keys ([`same_secondary_key`](Self::same_secondary_key)), and the same
    /// on every instance and release, so storages shared by a fleet name a variant by it.
    /// Not collision-resistant: a collision only makes two variants replace each other.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn secondary_key_digest(&self) -> [u8; 16] {
        const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
        const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
        let mut h = OFFSET;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u128::from(b);
                h = h.wrapping_mul(PRIME);
            }
        };
        for (name, value) in &self.vary {
            feed(&(name.as_str().len() as u64).to_be_bytes());
            feed(name.as_str().as_bytes());
            match value {
                None => feed(&[0]),
                Some(v) => {
                    feed(&[1]);
                    feed(&(v.len() as u64).to_be_bytes());
                    feed(v);
                }
            }
        }
        h.to_be_bytes()
    }

    /// An estimate of the memory this entry holds, in bytes.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, Bytes::len) + 32)
            .sum();
        let tags: usize = self.tags.iter().map(|t| t.len() + 24).sum();
        // The hit template holds the same values again (shared bytes, own map).
        std::mem::size_of::<Self>() + 2 * headers + vary + tags + self.body.len()
    }

    /// The compact binary form (length-prefixed, versioned), for storages that keep bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(None)
    }

    /// [`encode`](Self::encode) with the body LZ4-compressed when it is at least `threshold`
    /// bytes and compression makes it smaller (feature `compression`).
    #[cfg(feature = "compression")]
    pub fn encode_compressed(&self, threshold: usize) -> Vec<u8> {
        self.encode_with(Some(threshold))
    }

    fn encode_with(&self, compress_over: Option<usize>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.weight());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        put_varint(&mut out, millis(self.request_time));
        put_varint(&mut out, millis(self.response_time));
        put_varint(&mut out, millis(self.lifetime));
        put_varint(&mut out, millis(self.initial_age));
        put_varint(&mut out, self.headers.len() as u64);
        for (name, value) in &self.headers {
            put_bytes(&mut out, name.as_str().as_bytes());
            put_bytes(&mut out, value.as_bytes());
        }
        put_varint(&mut out, self.vary.len() as u64);
        for (name, value) in &self.vary {
            put_bytes(&mut out, name.as_str().as_bytes());
            match value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    put_bytes(&mut out, v);
                }
            }
        }
        put_varint(&mut out, self.tags.len() as u64);
        for tag in &self.tags {
            put_bytes(&mut out, tag.as_bytes());
        }
        put_body(&mut out, &self.body, compress_over);
        out
    }

    /// Reads what [`encode`](Self::encode) wrote. Corrupt, truncated or foreign bytes give
    /// an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_with(bytes, Bytes::copy_from_slice)
    }

    /// [`decode`](Self::decode) from bytes the response may keep: the body, header values
    /// and Vary values are slices of `bytes`, not copies.
    pub fn decode_shared(bytes: Bytes) -> Result<Self, DecodeError> {
        Self::decode_with(&bytes, |part| bytes.slice_ref(part))
    }

    /// Decodes `bytes`, making each kept part with `keep` (a slice of `bytes`).
    fn decode_with(bytes: &[u8], keep: impl Fn(&[u8]) -> Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(DecodeError("not a turret cache entry (bad magic)"));
        }
        let status = u16::from_be_bytes([r.byte()?, r.byte()?]);
        let status = StatusCode::from_u16(status).map_err(|_| DecodeError("invalid status"))?;
        let request_time = Duration::from_millis(r.varint()?);
        let response_time = Duration::from_millis(r.varint()?);
        let lifetime = Duration::from_millis(r.varint()?);
        let initial_age = Duration::from_millis(r.varint()?);
        let count = r.count()?;
        let mut headers = HeaderMap::with_capacity(count.min(64));
        for _ in 0..count {
            let name = HeaderName::from_bytes(r.bytes()?)
                .map_err(|_| DecodeError("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(keep(r.bytes()?))
                .map_err(|_| DecodeError("invalid header value"))?;
            headers.append(name, value);
        }
        let count = r.count()?;
        let mut vary = Vec::with_capacity(count.min(16));
        for _ in 0..count {
            let name =
                HeaderName::from_bytes(r.bytes()?).map_err(|_| DecodeError("invalid vary name"))?;
            let value = match r.byte()? {
                0 => None,
                1 => Some(keep(r.bytes()?)),
                _ => return Err(DecodeError("invalid vary flag")),
            };
            vary.push((name, value));
        }
        let count = r.count()?;
        let mut tags = Vec::with_capacity(count.min(16));
        for _ in 0..count {
            let tag = std::str::from_utf8(r.bytes()?).map_err(|_| DecodeError("invalid tag"))?;
            tags.push(tag.to_owned());
        }
        let body = match r.byte()? {
            BODY_RAW => keep(r.bytes()?),
            BODY_LZ4 => decompress(&mut r)?,
            _ => return Err(DecodeError("invalid body encoding")),
        };
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Self {
            status,
            facts: OnceLock::new(),
            hit_template: OnceLock::new(),
            hit_once: OnceLock::new(),
            headers,
            body,
            request_time,
            response_time,
            lifetime,
            initial_age,
            vary,
            tags,
        })
    }
}

/// The request's value of `name` for the Vary secondary key: every field line exactly as
/// received, in order, each length-prefixed (so two different lists of lines never give the
/// same bytes); `None` when the field is absent.
fn field_lines(headers: &HeaderMap, name: &HeaderName) -> Option<Bytes> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut out = Vec::new();
    for value in values {
        put_bytes(&mut out, value.as_bytes());
    }
    Some(Bytes::from(out))
}

/// Whether the request's lines of `name` are the `stored` ones ([`field_lines`]), compared
/// without copying them.
fn same_field_lines(headers: &HeaderMap, name: &HeaderName, stored: Option<&Bytes>) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(stored) = stored else {
        return values.next().is_none();
    };
    let mut lines = Reader(stored);
    let mut any = false;
    for value in values {
        any = true;
        match lines.bytes() {
            Ok(line) if line == value.as_bytes() => {}
            _ => return false,
        }
    }
    any && lines.0.is_empty()
}

/// "TRC" and the encoding version (3: tags, body encoding byte).
const MAGIC: &[u8] = b"TRC\x03";

const BODY_RAW: u8 = 0;
const BODY_LZ4: u8 = 1;

/// The largest body a compressed entry may claim: a corrupt length must not make the decoder
/// allocate gigabytes (the layer never stores more than its `max_entry_size` anyway).
#[cfg(feature = "compression")]
const MAX_DECOMPRESSED: u64 = 256 * 1024 * 1024;

fn put_body(out: &mut Vec<u8>, body: &[u8], compress_over: Option<usize>) {
    #[cfg(feature = "compression")]
    if let Some(threshold) = compress_over
        && body.len() >= threshold
    {
        let compressed = lz4_flex::block::compress(body);
        if compressed.len() < body.len() {
            out.push(BODY_LZ4);
            put_varint(out, body.len() as u64);
            put_bytes(out, &compressed);
            return;
        }
    }
    #[cfg(not(feature = "compression"))]
    let _ = compress_over;
    out.push(BODY_RAW);
    put_bytes(out, body);
}

#[cfg(feature = "compression")]
fn decompress(r: &mut Reader<'_>) -> Result<Bytes, DecodeError> {
    let len = r.varint()?;
    if len > MAX_DECOMPRESSED {
        return Err(DecodeError("compressed body too large"));
    }
    let compressed = r.bytes()?;
    let len = usize::try_from(len).map_err(|_| DecodeError("compressed body too large"))?;
    let body = lz4_flex::block::decompress(compressed, len)
        .map_err(|_| DecodeError("corrupt compressed body"))?;
    if body.len() != len {
        return Err(DecodeError("compressed body length mismatch"));
    }
    Ok(Bytes::from(body))
}

#[cfg(not(feature = "compression"))]
fn decompress(_: &mut Reader<'_>) -> Result<Bytes, DecodeError> {
    Err(DecodeError(
        "compressed body: build turret-cache with the `compression` feature",
    ))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.0.len() {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DecodeError("varint overflow"));
            }
            n |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(DecodeError("varint overflow"))
    }

    /// A length or count that cannot exceed the bytes left (each item takes at least one).
    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.0.len())
            .ok_or(DecodeError("length exceeds input"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.count()?;
        self.take(n)
    }
}

/// Bytes that are not a [`CachedResponse`] in the current encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "corrupt cache entry: {}", self.0)
    }
}

impl StdError for DecodeError {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> CachedResponse {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.append(
            header::VARY,
            HeaderValue::from_static("Accept-Encoding, accept-language"),
        );
        headers.append(
            HeaderName::from_static("x-multi"),
            HeaderValue::from_static("a"),
        );
        headers.append(
            HeaderName::from_static("x-multi"),
            HeaderValue::from_static("b"),
        );
        let mut req = HeaderMap::new();
        req.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, br"),
        );
        CachedResponse::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(b"hello"),
            &req,
            Duration::from_millis(1_700_000_000_123),
            Duration::from_millis(1_700_000_000_456),
            Duration::from_secs(60),
            Duration::from_secs(3),
        )
        .with_tags(vec!["products".into(), "product:7".into()])
    }

    #[test]
    fn soft_purge_makes_the_copy_stale_from_then_on() {
        let e = sample();
        let at = e.response_time() + Duration::from_secs(10);
        let purged = e.stale_at(at);
        assert!(e.ttl(at).is_some());
        assert_eq!(purged.ttl(at), None);
        assert_eq!(
            purged.ttl(at - Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(purged.body(), e.body());
        assert_eq!(purged.tags(), e.tags());
    }

    #[test]
    fn encoding_round_trips() {
        let e = sample();
        assert_eq!(CachedResponse::decode(&e.encode()), Ok(e));
    }

    #[test]
    fn shared_decoding_keeps_slices_of_the_reply() {
        let e = sample();
        let bytes = Bytes::from(e.encode());
        let shared = CachedResponse::decode_shared(bytes.clone()).unwrap();
        assert_eq!(shared, e);
        let range = bytes.as_ptr_range();
        assert!(
            range.contains(&shared.body().as_ptr()),
            "the body is a slice of the reply, not a copy"
        );
        let template = hit_template(e.status(), e.headers(), e.body().len());
        assert_eq!(shared.hit_headers(), template, "made for the first hit");
        assert_eq!(shared.hit_headers(), template, "kept from the second");
        assert_eq!(shared.hit_headers(), template);
        for n in 0..bytes.len() {
            assert!(CachedResponse::decode_shared(bytes.slice(..n)).is_err());
        }
    }

    #[test]
    fn truncated_or_foreign_bytes_are_errors() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(CachedResponse::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        assert!(CachedResponse::decode(b"{\"json\":true}").is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(CachedResponse::decode(&long).is_err());
    }

    fn varied(name: &'static str, lines: &[&'static [u8]]) -> CachedResponse {
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, HeaderValue::from_static(name));
        CachedResponse::new(
            StatusCode::OK,
            headers,
            Bytes::new(),
            &request_with(name, lines),
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        )
    }

    fn request_with(name: &'static str, lines: &[&'static [u8]]) -> HeaderMap {
        let mut req = HeaderMap::new();
        for line in lines {
            req.append(name, HeaderValue::from_bytes(line).unwrap());
        }
        req
    }

    #[test]
    fn vary_selects_only_the_same_field_lines_rfc9111_4_1() {
        let e = sample();
        let mut req = HeaderMap::new();
        req.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, br"),
        );
        assert!(e.matches(&req));
        req.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br"));
        assert!(!e.matches(&req));
        // RFC 9111 §4.1 allows (never requires) matching values that differ in whitespace or
        // line breaks; a handler reading the field can tell them apart (`headers.get` is the
        // first line only), so they select different variants.
        let tenant = varied("x-tenant", &[b"victim"]);
        assert!(tenant.matches(&request_with("x-tenant", &[b"victim"])));
        for other in [
            &[&b",victim"[..]][..],
            &[b"", b"victim"],
            &[b"victim", b""],
            &[b"victim,"],
            &[b"vic", b"tim"],
        ] {
            assert!(
                !tenant.matches(&request_with("x-tenant", other)),
                "{other:?}"
            );
        }
        let accept = varied("accept", &[b"text/html, application/json"]);
        assert!(accept.matches(&request_with("accept", &[b"text/html, application/json"])));
        for other in [
            &[&b"text/html"[..], b"application/json"][..],
            &[b"text/html,application/json"],
            &[b"text/html ,application/json"],
        ] {
            assert!(!accept.matches(&request_with("accept", other)), "{other:?}");
        }
        let two = varied("accept", &[b"text/html", b"application/json"]);
        assert!(two.matches(&request_with(
            "accept",
            &[b"text/html", b"application/json"]
        )));
        assert!(!two.matches(&request_with(
            "accept",
            &[b"application/json", b"text/html"]
        )));
        assert!(!two.matches(&request_with("accept", &[b"text/html"])));
        assert!(!two.matches(&request_with(
            "accept",
            &[b"text/html", b"application/json", b"x"]
        )));
        assert!(!two.same_secondary_key(&accept));
        assert_ne!(two.secondary_key_digest(), accept.secondary_key_digest());
        // An empty field is present: it matches only an empty field.
        let empty = varied("x-tenant", &[b""]);
        assert!(empty.matches(&request_with("x-tenant", &[b""])));
        assert!(!empty.matches(&HeaderMap::new()));
        assert!(!varied("x-tenant", &[]).matches(&request_with("x-tenant", &[b""])));
    }

    #[test]
    fn vary_absent_matches_only_absent_rfc9111_4_1() {
        let e = sample();
        let mut req = HeaderMap::new();
        req.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, br"),
        );
        req.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("en"));
        // Accept-Language was absent when stored.
        assert!(!e.matches(&req));
        assert!(!e.matches(&HeaderMap::new()));
    }

    #[test]
    fn vary_star_never_matches_rfc9111_4_1() {
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, HeaderValue::from_static("accept, *"));
        let e = CachedResponse::new(
            StatusCode::OK,
            headers,
            Bytes::new(),
            &HeaderMap::new(),
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        assert!(!e.matches(&HeaderMap::new()));
    }

    #[test]
    fn age_and_ttl_follow_resident_time_rfc9111_4_2_3() {
        let e = sample();
        let received = e.response_time();
        assert_eq!(e.age(received), Duration::from_secs(3));
        assert_eq!(
            e.ttl(received + Duration::from_secs(7)),
            Some(Duration::from_secs(50))
        );
        assert_eq!(e.ttl(received + Duration::from_secs(57)), None);
        assert_eq!(e.ttl(received + Duration::from_secs(600)), None);
    }

    #[cfg(feature = "compression")]
    #[test]
    fn compressed_bodies_round_trip_and_shrink() {
        let mut e = sample();
        e.body = Bytes::from(br#"{"id":7,"name":"widget"},"#.repeat(200));
        let plain = e.encode();
        let small = e.encode_compressed(1024);
        assert!(
            small.len() * 4 < plain.len(),
            "{} vs {}",
            small.len(),
            plain.len()
        );
        assert_eq!(CachedResponse::decode(&small), Ok(e.clone()));
        // Under the threshold, or incompressible: stored raw.
        assert_eq!(e.encode_compressed(1 << 20), plain);
        for n in 0..small.len() {
            assert!(CachedResponse::decode(&small[..n]).is_err(), "prefix {n}");
        }
    }

    #[cfg(feature = "compression")]
    #[test]
    fn a_compressed_entry_claiming_a_huge_body_is_an_error() {
        let mut bytes = sample().encode();
        // Rewrite the body as "LZ4, 2^40 bytes, 1 byte of data".
        let body_at = bytes.len() - sample().body().len() - 2;
        bytes.truncate(body_at);
        bytes.push(BODY_LZ4);
        put_varint(&mut bytes, 1 << 40);
        put_bytes(&mut bytes, b"x");
        assert!(CachedResponse::decode(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_does_not_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = CachedResponse::decode(&bytes);
        }

        #[test]
        fn decoding_a_corrupted_entry_does_not_panic(i in 0usize..4096, b in any::<u8>()) {
            let mut bytes = sample().encode();
            let i = i % bytes.len();
            bytes[i] = b;
            if let Ok(e) = CachedResponse::decode(&bytes) {
                // Whatever decodes is a whole entry again.
                prop_assert_eq!(CachedResponse::decode(&e.encode()), Ok(e));
            }
        }

        #[test]
        fn any_body_and_times_round_trip(body in prop::collection::vec(any::<u8>(), 0..512), t in any::<u64>(), s in 100u16..1000) {
            let e = CachedResponse::new(StatusCode::from_u16(s).unwrap(), HeaderMap::new(), Bytes::from(body), &HeaderMap::new(), Duration::from_millis(t), Duration::from_millis(t / 2), Duration::from_millis(t / 3), Duration::from_millis(t / 5));
            prop_assert_eq!(CachedResponse::decode(&e.encode()), Ok(e));
        }
    }
}
