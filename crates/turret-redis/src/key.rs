//! Safe Redis keys from untrusted parts.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// Longest escaped part kept verbatim; longer parts are replaced by a hash.
pub const MAX_PART_LEN: usize = 128;

/// Builds a prefixed, optionally hash-tagged Redis key from untrusted parts.
///
/// A key has the shape `{prefix}{kind}:{{tag}}:{part}:{part}…`. The prefix and kind are
/// trusted configuration; the tag and parts may come straight from a request (a client IP,
/// an API key, a URL) and are escaped so that they can never:
///
/// - add a `{` or `}` and so move the key to another cluster hash slot,
/// - add a `:` and so step into another key's namespace,
/// - carry `*`, `?`, `[`, `]`, whitespace, control bytes or NUL.
///
/// Every byte outside `A–Z a–z 0–9 - . _ ~ / @ + = ! $ & ' ( ) ,` is written as `%XX`.
/// An escaped part longer than [`MAX_PART_LEN`] is replaced by `#` and the first 128 bits
/// of its SHA-256 in hex (`#` never appears in an escaped part, so the two cannot collide).
/// An empty part is written as `%`.
///
/// All keys built with the same tag hash to the same Redis Cluster slot, so one script may
/// touch all of them.
///
/// ```
/// use turret_redis::KeyBuilder;
///
/// let key = KeyBuilder::new("turret:", "rl").tag("10.0.0.1").part("api:v1").build();
/// assert_eq!(key, "turret:rl:{10.0.0.1}:api%3Av1");
///
/// let hostile = KeyBuilder::new("turret:", "rl").tag("}{x}\n*").build();
/// assert_eq!(hostile, "turret:rl:{%7D%7Bx%7D%0A%2A}");
/// ```
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    key: String,
}

impl KeyBuilder {
    /// Starts a key under `prefix` (trusted, e.g. `turret:`) for a `kind` of data (trusted,
    /// e.g. `rl` for the rate limiter).
    pub fn new(prefix: &str, kind: &str) -> Self {
        let mut key = String::with_capacity(prefix.len() + kind.len() + 48);
        key.push_str(prefix);
        key.push_str(kind);
        Self { key }
    }

    /// Adds the hash tag: keys with the same tag live in the same cluster slot.
    /// Call it at most once, before any [`part`](Self::part).
    pub fn tag(mut self, tag: impl AsRef<[u8]>) -> Self {
        self.key.push_str(":{");
        push_escaped(&mut self.key, tag.as_ref());
        self.key.push('}');
        self
    }

    /// Adds one `:`-separated part.
    pub fn part(mut self, part: impl AsRef<[u8]>) -> Self {
        self.key.push(':');
        push_escaped(&mut self.key, part.as_ref());
        self
    }

    /// The finished key.
    pub fn build(self) -> String {
        self.key
    }
}

fn is_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'/'
                | b'@'
                | b'+'
                | b'='
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b','
        )
}

/// Appends the escaped form of `part` (see [`KeyBuilder`]).
pub fn push_escaped(out: &mut String, part: &[u8]) {
    if part.is_empty() {
        out.push('%');
        return;
    }
    let escaped_len: usize = part.iter().map(|&b| if is_safe(b) { 1 } else { 3 }).sum();
    if escaped_len > MAX_PART_LEN {
        let digest = Sha256::digest(part);
        out.push('#');
        for b in &digest[..16] {
            let _ = write!(out, "{b:02x}");
        }
        return;
    }
    for &b in part {
        if is_safe(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_tag(key: &str) -> Option<&str> {
        // Redis Cluster: the tag is between the first `{` and the first `}` after it.
        let open = key.find('{')?;
        let close = key[open + 1..].find('}')? + open + 1;
        (close > open + 1).then(|| &key[open + 1..close])
    }

    #[test]
    fn hostile_parts_cannot_change_slot_or_namespace() {
        let nasty: [&[u8]; 7] = [
            b"{evil}",
            b"}{",
            b"a:b:c",
            b"*?[]",
            b"line\nbreak\r\0nul",
            b"\xff\xfe non-utf8",
            b"",
        ];
        for n in nasty {
            let key = KeyBuilder::new("p:", "k").tag(n).part(n).build();
            let tag = slot_tag(&key).expect("tag present and non-empty");
            assert!(!tag.contains(['{', '}', ':']), "{key}");
            assert_eq!(key.matches('{').count(), 1, "{key}");
            assert_eq!(key.matches('}').count(), 1, "{key}");
            assert_eq!(key.matches(':').count(), 3, "{key}");
            assert!(
                key.bytes().all(|b| b.is_ascii_graphic()),
                "only printable ASCII: {key:?}"
            );
        }
    }

    #[test]
    fn long_parts_are_hashed_to_bounded_length() {
        let long = vec![b'a'; 64 * 1024];
        let key = KeyBuilder::new("p:", "k").tag(&long).part(&long).build();
        assert!(key.len() < 100, "{}", key.len());
        let other = KeyBuilder::new("p:", "k")
            .tag(b"b".repeat(64 * 1024))
            .build();
        assert_ne!(slot_tag(&key), slot_tag(&other));
    }

    #[test]
    fn distinct_parts_give_distinct_keys() {
        let a = KeyBuilder::new("p:", "k").part("a:b").part("c").build();
        let b = KeyBuilder::new("p:", "k").part("a").part("b:c").build();
        assert_ne!(a, b);
        let e = KeyBuilder::new("p:", "k").part("").build();
        let pct = KeyBuilder::new("p:", "k").part("%").build();
        assert_ne!(e, pct);
    }
}
