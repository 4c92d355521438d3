//! How the layer makes an entity-tag from a buffered response body.

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Makes the opaque part of an entity-tag from a whole response body.
///
/// The returned string is the tag *without* quotes and without `W/`: the layer adds the quotes
/// and, when configured with [`ConditionalLayer::weak_etags`](crate::ConditionalLayer::weak_etags),
/// the `W/` prefix. A value with a character outside `%x21 / %x23-7E` (RFC 9110 §8.8.3), or
/// `None`, means "no ETag for this response".
///
/// The body arrives as the chunks the inner service produced, so a hash can be fed chunk by
/// chunk without copying. Implemented for closures `Fn(&[u8]) -> Option<String>`, which see the
/// chunks joined into one slice.
///
/// A strong tag must change whenever the bytes change (RFC 9110 §8.8.3); a maker that
/// ignores part of the body (a timestamp, say) must be used with weak ETags.
pub trait MakeEtag {
    /// The opaque-tag for `body`, or `None` for no ETag.
    fn make_etag(&self, body: &[Bytes]) -> Option<String>;
}

impl<F> MakeEtag for F
where
    F: Fn(&[u8]) -> Option<String>,
{
    fn make_etag(&self, body: &[Bytes]) -> Option<String> {
        match body {
            [] => self(&[]),
            [one] => self(one),
            many => self(&many.concat()),
        }
    }
}

/// The default [`MakeEtag`]: the first 128 bits of the body's SHA-256, in unpadded base64url
/// (22 characters): `hello world` gets `"uU0nuZNNPgilLlLX2n2r-g"`.
///
/// 128 bits make an accidental collision between two versions of one resource negligible
/// (birthday bound 2⁶⁴), and keep the tag short on the wire.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sha256Etag;

impl MakeEtag for Sha256Etag {
    fn make_etag(&self, body: &[Bytes]) -> Option<String> {
        let mut hasher = Sha256::new();
        for chunk in body {
            hasher.update(chunk);
        }
        let digest = hasher.finalize();
        Some(base64url(&digest[..16]))
    }
}

/// Unpadded base64url (RFC 4648 §5): every output character is a valid `etagc`.
fn base64url(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3F;
            out.push(char::from(ALPHABET[idx as usize]));
        }
    }
    out
}

/// Builds the `ETag` field value from a maker's output, or `None` if it is not a valid
/// opaque-tag body.
pub(crate) fn field_value(opaque: &str, weak: bool) -> Option<http::HeaderValue> {
    if !opaque
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x7E).contains(&b))
    {
        return None;
    }
    // Written once, at its exact length, and handed over without a copy.
    let prefix: &[u8] = if weak { b"W/\"" } else { b"\"" };
    let mut value = Vec::with_capacity(prefix.len() + opaque.len() + 1);
    value.extend_from_slice(prefix);
    value.extend_from_slice(opaque.as_bytes());
    value.push(b'"');
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        // RFC 4648 §10 vectors, without padding.
        for (input, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), want);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn sha256_tag_does_not_depend_on_chunking() {
        let whole = Sha256Etag.make_etag(&[Bytes::from_static(b"hello world")]);
        let split = Sha256Etag.make_etag(&[
            Bytes::from_static(b"hello"),
            Bytes::from_static(b" "),
            Bytes::from_static(b"world"),
        ]);
        assert_eq!(whole, split);
        // sha256("hello world") = b94d27b9934d3e08a52e52d7da7dabfa...
        assert_eq!(whole.as_deref(), Some("uU0nuZNNPgilLlLX2n2r-g"));
    }

    #[test]
    fn closures_see_the_joined_body() {
        let len = |b: &[u8]| Some(b.len().to_string());
        assert_eq!(
            len.make_etag(&[Bytes::from_static(b"ab"), Bytes::from_static(b"c")]),
            Some("3".into())
        );
    }

    #[test]
    fn field_value_rejects_invalid_characters() {
        assert_eq!(field_value("abc", false).unwrap(), "\"abc\"");
        assert_eq!(field_value("abc", true).unwrap(), "W/\"abc\"");
        assert!(field_value("a\"b", false).is_none());
        assert!(field_value("a b", false).is_none());
    }
}
