//! Cache keys built safely from untrusted parts.

use std::{fmt, fmt::Write as _};

use sha2::{Digest, Sha256};

/// Longest escaped part kept verbatim; longer parts are replaced by a hash.
const MAX_PART_LEN: usize = 128;

/// A cache key made of a trusted name and untrusted parts (request parameters, user ids).
///
/// Parts are percent-escaped (every byte outside `A–Z a–z 0–9 - . _ ~`), joined with `:`,
/// and replaced by `#` + 128 bits of their SHA-256 beyond 128 escaped bytes, so that no two
/// different part lists give the same key and no part can be arbitrarily long.
///
/// ```
/// use turret_stampede::CacheKey;
///
/// let key = CacheKey::new("sales_report").part("2024-01-01").part("a:b c");
/// assert_eq!(key.as_str(), "sales_report:2024-01-01:a%3Ab%20c");
/// assert_ne!(
///     CacheKey::new("q").part("a:b").part("c"),
///     CacheKey::new("q").part("a").part("b:c"),
/// );
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// Starts a key with a trusted name (e.g. the query's name).
    pub fn new(name: &str) -> Self {
        let mut key = String::with_capacity(name.len() + 32);
        push_escaped(&mut key, name.as_bytes());
        Self(key)
    }

    /// Adds one untrusted part.
    pub fn part(mut self, part: impl AsRef<[u8]>) -> Self {
        self.0.push(':');
        push_escaped(&mut self.0, part.as_ref());
        self
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for CacheKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn push_escaped(out: &mut String, part: &[u8]) {
    let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if part.is_empty() {
        out.push('%');
        return;
    }
    let len: usize = part.iter().map(|&b| if safe(b) { 1 } else { 3 }).sum();
    if len > MAX_PART_LEN {
        out.push('#');
        for b in &Sha256::digest(part)[..16] {
            let _ = write!(out, "{b:02x}");
        }
        return;
    }
    for &b in part {
        if safe(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_parts_stay_one_part_and_bounded() {
        let key = CacheKey::new("q")
            .part("{x}\n*:")
            .part(vec![0xffu8; 10_000]);
        assert_eq!(key.as_str().matches(':').count(), 2, "{key}");
        assert!(key.as_str().len() < 80, "{key}");
        assert!(key.as_str().bytes().all(|b| b.is_ascii_graphic()));
        assert_ne!(CacheKey::new("q").part(""), CacheKey::new("q").part("%"));
    }
}
