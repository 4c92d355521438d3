//! Parsing of the conditional request fields (RFC 9110 §8.8.3, §13.1) and HTTP dates (§5.6.7).
//!
//! Everything here takes untrusted bytes and never panics: a malformed member of an entity-tag
//! list is skipped, a malformed date is "invalid" and the caller ignores the field as the RFC
//! says.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, header};

/// One entity-tag (RFC 9110 §8.8.3): `[W/] DQUOTE *etagc DQUOTE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntityTag {
    pub(crate) weak: bool,
    /// The opaque-tag *including* its double quotes, so it can be compared and written back.
    pub(crate) opaque: Vec<u8>,
}

impl EntityTag {
    /// Strong comparison (§8.8.3.2): both strong and the opaque-tags equal octet for octet.
    pub(crate) fn strong_eq(&self, other: &EntityTag) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison (§8.8.3.2): the opaque-tags equal, whatever `W/` says.
    pub(crate) fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }

    /// Parses exactly one entity-tag (surrounding OWS allowed), as in an `ETag` field value.
    pub(crate) fn parse(bytes: &[u8]) -> Option<EntityTag> {
        let bytes = trim_ows(bytes);
        let (tag, rest) = parse_entity_tag(bytes)?;
        if rest.is_empty() { Some(tag) } else { None }
    }

    /// The field-value form: `W/"x"` or `"x"`.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.opaque.len() + 2);
        if self.weak {
            out.extend_from_slice(b"W/");
        }
        out.extend_from_slice(&self.opaque);
        out
    }
}

/// `etagc = %x21 / %x23-7E / obs-text` (RFC 9110 §8.8.3).
pub(crate) fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7E).contains(&b) || b >= 0x80
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// Parses one entity-tag at the start of `b`; returns it and what follows.
fn parse_entity_tag(b: &[u8]) -> Option<(EntityTag, &[u8])> {
    let (weak, b) = match b.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, b),
    };
    let body = b.strip_prefix(b"\"")?;
    let end = body.iter().position(|&c| c == b'"')?;
    if !body[..end].iter().all(|&c| is_etagc(c)) {
        return None;
    }
    let opaque = b[..end + 2].to_vec();
    Some((EntityTag { weak, opaque }, &body[end + 1..]))
}

/// The value of `If-Match` / `If-None-Match`: `"*" / #entity-tag` (RFC 9110 §13.1.1, §13.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EtagList {
    /// `*`: any current representation.
    Any,
    /// The well-formed members (possibly none: a wholly malformed field matches nothing).
    Tags(Vec<EntityTag>),
}

impl EtagList {
    /// Parses every field line of `name`; `None` when the field is absent.
    ///
    /// `*` counts only when it is the field's only member. Malformed members (and a `*` mixed
    /// with entity-tags, which the grammar does not allow) are skipped: they match nothing.
    pub(crate) fn from_headers(headers: &HeaderMap, name: &header::HeaderName) -> Option<EtagList> {
        let mut values = headers.get_all(name).iter().peekable();
        values.peek()?;
        let mut tags = Vec::new();
        let mut members = 0usize;
        let mut star = false;
        for value in values {
            parse_list_into(value.as_bytes(), &mut tags, &mut members, &mut star);
        }
        if star && members == 1 {
            Some(EtagList::Any)
        } else {
            Some(EtagList::Tags(tags))
        }
    }

    /// Whether this list matches `current` under strong comparison (`If-Match`, §13.1.1).
    /// `None` means there is no current representation: only ever false.
    pub(crate) fn matches_strong(&self, current: Option<&Current>) -> bool {
        let Some(current) = current else { return false };
        match self {
            EtagList::Any => true,
            EtagList::Tags(tags) => current
                .etag
                .as_ref()
                .is_some_and(|cur| tags.iter().any(|t| t.strong_eq(cur))),
        }
    }

    /// Whether this list matches `current` under weak comparison (`If-None-Match`, §13.1.2).
    pub(crate) fn matches_weak(&self, current: Option<&Current>) -> bool {
        let Some(current) = current else { return false };
        match self {
            EtagList::Any => true,
            EtagList::Tags(tags) => current
                .etag
                .as_ref()
                .is_some_and(|cur| tags.iter().any(|t| t.weak_eq(cur))),
        }
    }
}

/// Splits a `#entity-tag` list (RFC 9110 §5.6.1: empty members and OWS around commas allowed).
/// An opaque-tag may itself contain commas, so this scans rather than splitting on `,`.
fn parse_list_into(mut b: &[u8], tags: &mut Vec<EntityTag>, members: &mut usize, star: &mut bool) {
    loop {
        // Skip OWS and empty list members.
        while let [b' ' | b'\t' | b',', rest @ ..] = b {
            b = rest;
        }
        if b.is_empty() {
            return;
        }
        *members += 1;
        let next = if let Some(rest) = b.strip_prefix(b"*") {
            let after = trim_ows(rest);
            if after.is_empty() || after[0] == b',' {
                *star = true;
                Some(rest)
            } else {
                None
            }
        } else if let Some((tag, rest)) = parse_entity_tag(b) {
            let after = trim_start_ows(rest);
            if after.is_empty() || after[0] == b',' {
                tags.push(tag);
                Some(after)
            } else {
                None
            }
        } else {
            None
        };
        b = match next {
            Some(rest) => rest,
            // Malformed member: resynchronise on the next comma.
            None => match b.iter().position(|&c| c == b',') {
                Some(i) => &b[i + 1..],
                None => return,
            },
        };
    }
}

fn trim_start_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    b
}

/// Parses an HTTP-date in any of the three forms of RFC 9110 §5.6.7 (IMF-fixdate, obsolete
/// RFC 850, asctime). A list of dates, non-ASCII bytes or an impossible date is invalid.
pub(crate) fn parse_http_date(value: &HeaderValue) -> Option<SystemTime> {
    let s = value.to_str().ok()?;
    httpdate::parse_http_date(s).ok()
}

/// A date field that must appear once: several field lines make it a list, which
/// RFC 9110 §13.1.3 / §13.1.4 say to ignore.
fn single_date(headers: &HeaderMap, name: &header::HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_http_date(first)
}

/// Truncates to whole seconds: HTTP dates have one-second resolution (§5.6.7).
pub(crate) fn to_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// From whole seconds since the epoch.
pub(crate) fn from_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The validators of the selected representation, as the layer compares them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Current {
    pub(crate) etag: Option<EntityTag>,
    /// Whole seconds since the epoch.
    pub(crate) last_modified: Option<u64>,
}

impl Current {
    /// The validators a response carries (`ETag`, `Last-Modified`); malformed ones are none.
    pub(crate) fn from_response_headers(headers: &HeaderMap) -> Current {
        Current {
            etag: headers
                .get(header::ETAG)
                .and_then(|v| EntityTag::parse(v.as_bytes())),
            last_modified: headers
                .get(header::LAST_MODIFIED)
                .and_then(parse_http_date)
                .map(to_secs),
        }
    }
}

/// `If-Range` (RFC 9110 §13.1.5): an entity-tag or an HTTP-date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IfRange {
    Tag(EntityTag),
    /// Whole seconds since the epoch.
    Date(u64),
    /// Neither: never matches.
    Invalid,
}

impl IfRange {
    /// Whether the range request may be served as a range (§13.1.5): a strong exact ETag match,
    /// or a date equal to a Last-Modified that is a strong validator (at least one second
    /// older than `now`, §8.8.2.2).
    pub(crate) fn matches(&self, current: Option<&Current>, now: SystemTime) -> bool {
        let Some(current) = current else { return false };
        match self {
            IfRange::Tag(tag) => current.etag.as_ref().is_some_and(|c| tag.strong_eq(c)),
            IfRange::Date(date) => current
                .last_modified
                .is_some_and(|lm| lm == *date && to_secs(now) > lm),
            IfRange::Invalid => false,
        }
    }
}

/// The conditional fields of one request, parsed once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Conditions {
    pub(crate) if_match: Option<EtagList>,
    /// Present and valid (an invalid or list value is ignored, §13.1.4).
    pub(crate) if_unmodified_since: Option<u64>,
    pub(crate) if_none_match: Option<EtagList>,
    /// Present, valid and single (§13.1.3).
    pub(crate) if_modified_since: Option<u64>,
    /// Only set when the request also has `Range` (§13.1.5).
    pub(crate) if_range: Option<IfRange>,
}

impl Conditions {
    pub(crate) fn from_headers(h: &HeaderMap) -> Conditions {
        let if_range = if h.contains_key(header::RANGE) {
            let mut values = h.get_all(header::IF_RANGE).iter();
            values.next().map(|first| {
                if values.next().is_some() {
                    IfRange::Invalid
                } else if let Some(tag) = EntityTag::parse(first.as_bytes()) {
                    IfRange::Tag(tag)
                } else if let Some(date) = parse_http_date(first) {
                    IfRange::Date(to_secs(date))
                } else {
                    IfRange::Invalid
                }
            })
        } else {
            None
        };
        Conditions {
            if_match: EtagList::from_headers(h, &header::IF_MATCH),
            if_unmodified_since: single_date(h, &header::IF_UNMODIFIED_SINCE).map(to_secs),
            if_none_match: EtagList::from_headers(h, &header::IF_NONE_MATCH),
            if_modified_since: single_date(h, &header::IF_MODIFIED_SINCE).map(to_secs),
            if_range,
        }
    }

    /// Whether any precondition that decides a write is present (If-Match, a valid
    /// If-Unmodified-Since, If-None-Match).
    pub(crate) fn guards_write(&self) -> bool {
        self.if_match.is_some()
            || self.if_unmodified_since.is_some()
            || self.if_none_match.is_some()
    }

    /// Whether anything here can change a response to a safe request.
    pub(crate) fn any(&self) -> bool {
        self.guards_write() || self.if_modified_since.is_some()
    }
}

/// Cheap test before parsing anything: does the request carry a conditional field at all?
pub(crate) fn has_conditional_fields(h: &HeaderMap) -> bool {
    h.contains_key(header::IF_MATCH)
        || h.contains_key(header::IF_NONE_MATCH)
        || h.contains_key(header::IF_MODIFIED_SINCE)
        || h.contains_key(header::IF_UNMODIFIED_SINCE)
        || h.contains_key(header::IF_RANGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(weak: bool, s: &str) -> EntityTag {
        EntityTag {
            weak,
            opaque: format!("\"{s}\"").into_bytes(),
        }
    }

    fn list(v: &[&'static str]) -> Option<EtagList> {
        let mut h = HeaderMap::new();
        for s in v {
            h.append(header::IF_MATCH, HeaderValue::from_static(s));
        }
        EtagList::from_headers(&h, &header::IF_MATCH)
    }

    #[test]
    fn parses_single_tags() {
        assert_eq!(EntityTag::parse(b"\"abc\""), Some(tag(false, "abc")));
        assert_eq!(EntityTag::parse(b"W/\"abc\""), Some(tag(true, "abc")));
        assert_eq!(EntityTag::parse(b" \"\" "), Some(tag(false, "")));
        assert_eq!(EntityTag::parse(b"w/\"abc\""), None, "W/ is case-sensitive");
        assert_eq!(EntityTag::parse(b"abc"), None);
        assert_eq!(EntityTag::parse(b"\"a b\""), None, "SP is not etagc");
        assert_eq!(EntityTag::parse(b"\"abc"), None);
        assert_eq!(EntityTag::parse(b"\"a\"\"b\""), None);
        assert_eq!(
            EntityTag::parse(b"\"\x80\xff\""),
            Some(EntityTag {
                weak: false,
                opaque: b"\"\x80\xff\"".to_vec()
            }),
            "obs-text is allowed"
        );
    }

    #[test]
    fn comparison_follows_the_rfc_table() {
        // RFC 9110 §8.8.3.2 example table.
        let (w1, w2, s1) = (tag(true, "1"), tag(true, "2"), tag(false, "1"));
        assert!(!w1.strong_eq(&w1) && w1.weak_eq(&w1));
        assert!(!w1.strong_eq(&w2) && !w1.weak_eq(&w2));
        assert!(!w1.strong_eq(&s1) && w1.weak_eq(&s1));
        assert!(s1.strong_eq(&s1) && s1.weak_eq(&s1));
    }

    #[test]
    fn parses_lists() {
        assert_eq!(list(&["*"]), Some(EtagList::Any));
        assert_eq!(list(&[" * "]), Some(EtagList::Any));
        assert_eq!(
            list(&["\"a\", W/\"b\",,\"c,d\""]),
            Some(EtagList::Tags(vec![
                tag(false, "a"),
                tag(true, "b"),
                tag(false, "c,d")
            ]))
        );
        assert_eq!(
            list(&["\"a\"", "\"b\""]),
            Some(EtagList::Tags(vec![tag(false, "a"), tag(false, "b")]))
        );
        assert_eq!(
            list(&["garbage, \"ok\", \"bad"]),
            Some(EtagList::Tags(vec![tag(false, "ok")]))
        );
        assert_eq!(
            list(&["*, \"a\""]),
            Some(EtagList::Tags(vec![tag(false, "a")])),
            "`*` mixed with tags is not `*`"
        );
        assert_eq!(list(&["nonsense"]), Some(EtagList::Tags(vec![])));
        assert_eq!(list(&[]), None);
    }

    #[test]
    fn parses_all_three_date_forms() {
        let want = Some(from_secs(784_111_777));
        for s in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(&HeaderValue::from_static(s)), want, "{s}");
        }
        for s in [
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
            "Sun, 31 Feb 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(&HeaderValue::from_static(s)), None, "{s}");
        }
    }

    #[test]
    fn a_repeated_date_field_is_a_list_and_ignored() {
        let mut h = HeaderMap::new();
        let d = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        h.append(header::IF_MODIFIED_SINCE, d.clone());
        assert_eq!(
            Conditions::from_headers(&h).if_modified_since,
            Some(784_111_777)
        );
        h.append(header::IF_MODIFIED_SINCE, d);
        assert_eq!(Conditions::from_headers(&h).if_modified_since, None);
    }

    #[test]
    fn if_range_needs_range_and_a_strong_exact_match() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"a\""));
        assert_eq!(Conditions::from_headers(&h).if_range, None);
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        let ir = Conditions::from_headers(&h).if_range.unwrap();
        let now = SystemTime::now();
        let cur = Current {
            etag: Some(tag(false, "a")),
            last_modified: Some(100),
        };
        assert!(ir.matches(Some(&cur), now));
        let weak = Current {
            etag: Some(tag(true, "a")),
            ..cur.clone()
        };
        assert!(!ir.matches(Some(&weak), now));
        assert!(!ir.matches(None, now));
        let date = IfRange::Date(100);
        assert!(date.matches(Some(&cur), now));
        assert!(
            !date.matches(Some(&cur), from_secs(100)),
            "LM not yet strong"
        );
        assert!(!IfRange::Date(101).matches(Some(&cur), now));
    }
}
