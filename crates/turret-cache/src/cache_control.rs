//! `Cache-Control` parsing (RFC 9111 §5.2), private and total: any bytes give a value.

use http::{HeaderMap, header};

/// RFC 9111 §1.2.2: a delta-seconds too large to represent is sent as 2^31.
pub(crate) const DELTA_SECONDS_MAX: u64 = 2_147_483_648;

/// A directive whose argument is delta-seconds (RFC 9111 §1.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Delta {
    /// Not present.
    #[default]
    Absent,
    /// Present once with a valid argument, clamped to [`DELTA_SECONDS_MAX`].
    Seconds(u64),
    /// Present but missing or invalid argument, or present more than once. RFC 9111 §4.2.1:
    /// the cache may treat such a response as stale, which we do.
    Invalid,
}

/// A directive that may carry a list of field names (`private="f"`, `no-cache="f"`,
/// RFC 9111 §5.2.2.4 and §5.2.2.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Qualified {
    /// Not present.
    #[default]
    Absent,
    /// Present without an argument (or with an unusable one): the whole response.
    Unqualified,
    /// Present with field names only (lower-cased).
    Fields(Vec<String>),
}

impl Qualified {
    fn merge(&mut self, arg: Option<Result<Vec<u8>, ()>>) {
        let fields = match arg {
            Some(Ok(v)) => {
                let list: Vec<String> = String::from_utf8_lossy(&v)
                    .split(',')
                    .map(|f| f.trim().to_ascii_lowercase())
                    .filter(|f| !f.is_empty())
                    .collect();
                if list.is_empty() { None } else { Some(list) }
            }
            _ => None,
        };
        *self = match (std::mem::take(self), fields) {
            (Qualified::Unqualified, _) | (_, None) => Qualified::Unqualified,
            (Qualified::Absent, Some(f)) => Qualified::Fields(f),
            (Qualified::Fields(mut a), Some(b)) => {
                a.extend(b);
                Qualified::Fields(a)
            }
        };
    }

    pub(crate) fn is_unqualified(&self) -> bool {
        matches!(self, Qualified::Unqualified)
    }

    pub(crate) fn fields(&self) -> &[String] {
        match self {
            Qualified::Fields(f) => f,
            _ => &[],
        }
    }
}

/// The directives of every `Cache-Control` line of a message, combined. Unknown directives are
/// ignored (RFC 9111 §5.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct CacheControl {
    pub(crate) max_age: Delta,
    pub(crate) s_maxage: Delta,
    pub(crate) min_fresh: Delta,
    pub(crate) no_store: bool,
    pub(crate) no_cache: Qualified,
    pub(crate) private: Qualified,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) only_if_cached: bool,
    /// Request: `max-stale` (RFC 9111 §5.2.1.2); `Invalid` is "present without a value":
    /// any staleness is accepted.
    pub(crate) max_stale: Delta,
    /// RFC 5861 §3 (response).
    pub(crate) stale_while_revalidate: Delta,
    /// RFC 5861 §4 (request or response).
    pub(crate) stale_if_error: Delta,
}

impl CacheControl {
    /// Parses every `Cache-Control` line of `headers` (RFC 9111 §5.2: a list, names
    /// case-insensitive, arguments as token or quoted-string).
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            for member in split_list(value.as_bytes()) {
                cc.apply(member);
            }
        }
        cc
    }

    fn apply(&mut self, member: &[u8]) {
        let (name, arg) = match member.iter().position(|&b| b == b'=') {
            Some(i) => (trim(&member[..i]), Some(parse_arg(trim(&member[i + 1..])))),
            None => (member, None),
        };
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return;
        }
        let name = name.to_ascii_lowercase();
        match name.as_slice() {
            b"max-age" => set_delta(&mut self.max_age, arg),
            b"s-maxage" => set_delta(&mut self.s_maxage, arg),
            b"min-fresh" => set_delta(&mut self.min_fresh, arg),
            b"no-store" => self.no_store = true,
            b"no-cache" => self.no_cache.merge(arg),
            b"private" => self.private.merge(arg),
            b"public" => self.public = true,
            b"must-revalidate" => self.must_revalidate = true,
            b"proxy-revalidate" => self.proxy_revalidate = true,
            b"only-if-cached" => self.only_if_cached = true,
            b"max-stale" => set_delta(&mut self.max_stale, arg),
            b"stale-while-revalidate" => set_delta(&mut self.stale_while_revalidate, arg),
            b"stale-if-error" => set_delta(&mut self.stale_if_error, arg),
            _ => {}
        }
    }

    /// Whether the response forbids serving it stale (RFC 9111 §4.2.4): `no-cache`,
    /// `must-revalidate`, and for a shared cache `proxy-revalidate` and `s-maxage`.
    pub(crate) fn forbids_stale(&self) -> bool {
        self.no_cache.is_unqualified()
            || self.must_revalidate
            || self.proxy_revalidate
            || !matches!(self.s_maxage, Delta::Absent)
    }

    /// A targeted cache-control field (RFC 9213 §2): a Structured Field Dictionary with the
    /// `Cache-Control` directives as keys. `None` when it is not a valid dictionary, in which
    /// case the field is ignored (§2.1). Integers are delta-seconds (negative is invalid),
    /// `private` / `no-cache` may carry a String of field names.
    pub(crate) fn from_targeted(value: &[u8]) -> Option<Self> {
        let dict = sfv::Parser::new(value).parse::<sfv::Dictionary>().ok()?;
        let mut cc = CacheControl::default();
        for (key, entry) in &dict {
            if !targeted_type_fits(key.as_str(), entry) {
                // §2.1: a known directive with a value of the wrong type makes the whole
                // field invalid, so it is ignored and `Cache-Control` applies.
                return None;
            }
            let arg = match entry {
                sfv::ListEntry::Item(item) => match &item.bare_item {
                    sfv::BareItem::Boolean(true) => None,
                    sfv::BareItem::Boolean(false) => continue,
                    sfv::BareItem::Integer(n) => Some(
                        u64::try_from(i64::from(*n))
                            .map(|n| n.to_string().into_bytes())
                            .map_err(|_| ()),
                    ),
                    sfv::BareItem::String(s) => Some(Ok(s.as_str().as_bytes().to_vec())),
                    sfv::BareItem::Token(t) => Some(Ok(t.as_str().as_bytes().to_vec())),
                    _ => Some(Err(())),
                },
                sfv::ListEntry::InnerList(_) => Some(Err(())),
            };
            let name = key.as_str().as_bytes();
            match arg {
                None => cc.apply(name),
                Some(Ok(v)) => {
                    let mut member = name.to_vec();
                    member.push(b'=');
                    let quoted = v.iter().any(|b| !is_tchar(*b));
                    if quoted {
                        member.push(b'"');
                        for b in v {
                            if b == b'"' || b == b'\\' {
                                member.push(b'\\');
                            }
                            member.push(b);
                        }
                        member.push(b'"');
                    } else {
                        member.extend_from_slice(&v);
                    }
                    cc.apply(&member);
                }
                Some(Err(())) => cc.apply(&[name, b"="].concat()),
            }
        }
        Some(cc)
    }
}

/// Whether a targeted field's member has the type RFC 9213 §2.1 gives its directive: an
/// Integer for the delta-seconds directives, a Boolean for the flags, a Boolean or a String
/// for `private` and `no-cache`. Unknown directives may have any type (they are ignored).
fn targeted_type_fits(name: &str, entry: &sfv::ListEntry) -> bool {
    let sfv::ListEntry::Item(item) = entry else {
        return !is_known_directive(name);
    };
    match name {
        "max-age"
        | "s-maxage"
        | "min-fresh"
        | "max-stale"
        | "stale-while-revalidate"
        | "stale-if-error" => matches!(item.bare_item, sfv::BareItem::Integer(_)),
        "private" | "no-cache" => matches!(
            item.bare_item,
            sfv::BareItem::Boolean(_) | sfv::BareItem::String(_)
        ),
        "no-store" | "public" | "must-revalidate" | "proxy-revalidate" | "only-if-cached"
        | "no-transform" | "immutable" | "must-understand" => {
            matches!(item.bare_item, sfv::BareItem::Boolean(_))
        }
        _ => true,
    }
}

fn is_known_directive(name: &str) -> bool {
    matches!(
        name,
        "max-age"
            | "s-maxage"
            | "min-fresh"
            | "max-stale"
            | "stale-while-revalidate"
            | "stale-if-error"
            | "private"
            | "no-cache"
            | "no-store"
            | "public"
            | "must-revalidate"
            | "proxy-revalidate"
            | "only-if-cached"
            | "no-transform"
            | "immutable"
            | "must-understand"
    )
}

/// RFC 9111 §4.2.1: a duplicate or invalid delta-seconds makes the directive [`Delta::Invalid`].
fn set_delta(slot: &mut Delta, arg: Option<Result<Vec<u8>, ()>>) {
    *slot = match (*slot, arg) {
        (Delta::Absent, Some(Ok(v))) => {
            parse_delta_seconds(&v).map_or(Delta::Invalid, Delta::Seconds)
        }
        _ => Delta::Invalid,
    };
}

/// RFC 9111 §1.2.2: `delta-seconds = 1*DIGIT`; a value too large clamps to 2^31.
pub(crate) fn parse_delta_seconds(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in v {
        n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
        if n >= DELTA_SECONDS_MAX {
            return Some(DELTA_SECONDS_MAX);
        }
    }
    Some(n)
}

/// A token argument as is, a quoted-string unescaped (RFC 9110 §5.6.4); `Err` when malformed.
fn parse_arg(arg: &[u8]) -> Result<Vec<u8>, ()> {
    match arg.first() {
        None => Err(()),
        Some(b'"') => {
            let mut out = Vec::new();
            let mut i = 1;
            while i < arg.len() {
                match arg[i] {
                    b'\\' if i + 1 < arg.len() => {
                        out.push(arg[i + 1]);
                        i += 2;
                    }
                    b'"' => return if i + 1 == arg.len() { Ok(out) } else { Err(()) },
                    b => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            Err(())
        }
        Some(_) if arg.iter().all(|&b| is_tchar(b)) => Ok(arg.to_vec()),
        Some(_) => Err(()),
    }
}

/// Splits a list field value at commas outside quoted strings (RFC 9110 §5.6.1), trimming
/// whitespace and skipping empty members.
pub(crate) fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut members = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in value.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == b',' && !quoted {
            members.push(&value[start..i]);
            start = i + 1;
        }
    }
    members.push(&value[start..]);
    members.into_iter().map(trim).filter(|m| !m.is_empty())
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn cc(lines: &[&str]) -> CacheControl {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(header::CACHE_CONTROL, HeaderValue::from_str(l).unwrap());
        }
        CacheControl::from_headers(&h)
    }

    #[test]
    fn names_are_case_insensitive_rfc9111_5_2() {
        let c = cc(&["Max-Age=60, NO-STORE, Public"]);
        assert_eq!(c.max_age, Delta::Seconds(60));
        assert!(c.no_store && c.public);
    }

    #[test]
    fn arguments_may_be_quoted_strings_rfc9111_5_2() {
        assert_eq!(cc(&["max-age=\"30\""]).max_age, Delta::Seconds(30));
        assert_eq!(
            cc(&["private=\"Set-Cookie, x-user\""]).private,
            Qualified::Fields(vec!["set-cookie".into(), "x-user".into()])
        );
    }

    #[test]
    fn lines_are_combined_rfc9110_5_3() {
        let c = cc(&["max-age=5", "s-maxage=10"]);
        assert_eq!(
            (c.max_age, c.s_maxage),
            (Delta::Seconds(5), Delta::Seconds(10))
        );
    }

    #[test]
    fn duplicate_delta_directive_is_invalid_rfc9111_4_2_1() {
        assert_eq!(cc(&["max-age=5, max-age=5"]).max_age, Delta::Invalid);
        assert_eq!(cc(&["s-maxage=5", "s-maxage=9"]).s_maxage, Delta::Invalid);
    }

    #[test]
    fn invalid_delta_seconds_is_invalid_rfc9111_1_2_2() {
        for v in [
            "max-age=-1",
            "max-age=1.5",
            "max-age=",
            "max-age",
            "max-age=abc",
            "max-age=+5",
            "max-age=\"5",
        ] {
            assert_eq!(cc(&[v]).max_age, Delta::Invalid, "{v}");
        }
    }

    #[test]
    fn delta_seconds_overflow_clamps_to_2_pow_31_rfc9111_1_2_2() {
        assert_eq!(
            cc(&["max-age=99999999999999999999999999"]).max_age,
            Delta::Seconds(DELTA_SECONDS_MAX)
        );
        assert_eq!(
            cc(&["max-age=2147483647"]).max_age,
            Delta::Seconds(2_147_483_647)
        );
    }

    #[test]
    fn unknown_directives_are_ignored_rfc9111_5_2_3() {
        let c = cc(&["foo=\"a, max-age=1\", bar, max-age=7, baz=\"x\\\"y\""]);
        assert_eq!(c.max_age, Delta::Seconds(7));
        assert_eq!(
            c,
            CacheControl {
                max_age: Delta::Seconds(7),
                ..Default::default()
            }
        );
    }

    #[test]
    fn unqualified_private_wins_over_qualified_rfc9111_5_2_2_7() {
        assert_eq!(
            cc(&["private=\"a\", private"]).private,
            Qualified::Unqualified
        );
        assert_eq!(cc(&["no-cache"]).no_cache, Qualified::Unqualified);
        assert_eq!(
            cc(&["no-cache=\"a\"", "no-cache=b"]).no_cache,
            Qualified::Fields(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn request_directives_are_parsed_rfc9111_5_2_1() {
        let c = cc(&["max-age=0, min-fresh=20, only-if-cached, no-cache"]);
        assert_eq!(
            (c.max_age, c.min_fresh),
            (Delta::Seconds(0), Delta::Seconds(20))
        );
        assert!(c.only_if_cached);
        assert_eq!(c.no_cache, Qualified::Unqualified);
    }

    #[test]
    fn targeted_fields_are_sf_dictionaries_rfc9213_2_1() {
        let c = CacheControl::from_targeted(b"max-age=60, must-revalidate").unwrap();
        assert_eq!(c.max_age, Delta::Seconds(60));
        assert!(c.must_revalidate);
        let c = CacheControl::from_targeted(b"private=\"set-cookie\", no-cache").unwrap();
        assert_eq!(c.private.fields(), ["set-cookie"]);
        assert!(c.no_cache.is_unqualified());
        // A negative integer is an invalid delta: stale.
        assert_eq!(
            CacheControl::from_targeted(b"max-age=-1").unwrap().max_age,
            Delta::Invalid
        );
        // Not a dictionary (a quoted string cannot be a key): the field is ignored.
        assert_eq!(CacheControl::from_targeted(b"\"max-age\"=60"), None);
        assert_eq!(CacheControl::from_targeted(b"max-age=\"60"), None);
    }

    #[test]
    fn a_known_directive_of_the_wrong_type_invalidates_the_targeted_field_rfc9213_2_1() {
        for field in [
            &b"max-age=\"10000\""[..],
            b"max-age=10000, s-maxage=?1",
            b"max-age=60, no-store=1",
            b"max-age=60, private=tok",
            b"max-age=60, must-revalidate=\"yes\"",
            b"max-age=(1 2)",
            b"max-age=1.5",
        ] {
            assert_eq!(
                CacheControl::from_targeted(field),
                None,
                "{}",
                String::from_utf8_lossy(field)
            );
        }
        // Unknown directives may carry any type; booleans may be false.
        let c = CacheControl::from_targeted(b"max-age=60, x-ext=\"a\", no-store=?0").unwrap();
        assert_eq!(c.max_age, Delta::Seconds(60));
        assert!(!c.no_store);
    }

    #[test]
    fn empty_members_and_whitespace_are_skipped_rfc9110_5_6_1() {
        let c = cc(&[" , ,\tno-store ,, "]);
        assert!(c.no_store);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..4)) {
            let mut h = HeaderMap::new();
            for l in lines {
                if let Ok(v) = HeaderValue::from_bytes(&l) {
                    h.append(header::CACHE_CONTROL, v);
                }
            }
            let c = CacheControl::from_headers(&h);
            if let Delta::Seconds(n) = c.max_age {
                prop_assert!(n <= DELTA_SECONDS_MAX);
            }
        }

        #[test]
        fn any_targeted_field_parses_without_panicking(value in prop::collection::vec(any::<u8>(), 0..96)) {
            if let Some(c) = CacheControl::from_targeted(&value)
                && let Delta::Seconds(n) = c.max_age
            {
                prop_assert!(n <= DELTA_SECONDS_MAX);
            }
        }

        #[test]
        fn targeted_dictionaries_mean_what_cache_control_means(age in 0u64..1_000_000, no_store in any::<bool>()) {
            let field = format!("max-age={age}{}", if no_store { ", no-store" } else { "" });
            let c = CacheControl::from_targeted(field.as_bytes()).unwrap();
            prop_assert_eq!(c.max_age, Delta::Seconds(age));
            prop_assert_eq!(c.no_store, no_store);
        }

        #[test]
        fn delta_seconds_round_trip(n in 0u64..DELTA_SECONDS_MAX) {
            prop_assert_eq!(parse_delta_seconds(n.to_string().as_bytes()), Some(n));
        }
    }
}
