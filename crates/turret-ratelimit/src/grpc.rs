//! The `grpc-status-details-bin` of a refusal: a `google.rpc.Status` carrying one
//! `google.rpc.RetryInfo`, so that gRPC clients' retry policies learn when to come back.
//!
//! The message is small and fixed in shape, so it is written by hand (protobuf wire format:
//! <https://protobuf.dev/programming-guides/encoding/>) rather than with a protobuf runtime:
//!
//! ```text
//! google.rpc.Status    { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
//! google.protobuf.Any  { string type_url = 1; bytes value = 2; }
//! google.rpc.RetryInfo { google.protobuf.Duration retry_delay = 1; }
//! google.protobuf.Duration { int64 seconds = 1; int32 nanos = 2; }
//! ```
//!
//! gRPC's `-bin` metadata is base64 (RFC 4648 §4, the standard alphabet); the gRPC HTTP/2
//! protocol says implementations should emit it unpadded and must accept both forms.

use std::time::Duration;

use http::HeaderValue;

/// The `type_url` of a packed `google.rpc.RetryInfo`.
const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The `grpc-status-details-bin` value for status `code` with `message` and a retry delay.
pub(crate) fn status_details(code: i32, message: &str, retry_delay: Duration) -> HeaderValue {
    let bytes = encode_status(code, message, retry_delay);
    HeaderValue::try_from(base64_unpadded(&bytes))
        .expect("the base64 alphabet is valid header value text")
}

/// `google.rpc.Status { code, message, details: [Any(RetryInfo { retry_delay })] }`.
fn encode_status(code: i32, message: &str, retry_delay: Duration) -> Vec<u8> {
    // Duration: the whole seconds, then the rest in nanoseconds (0 ≤ nanos < 10^9). Both
    // fields are omitted when zero, as proto3 does.
    let mut duration = Vec::new();
    let seconds = i64::try_from(retry_delay.as_secs()).unwrap_or(i64::MAX);
    if seconds != 0 {
        varint_field(&mut duration, 1, seconds as u64);
    }
    if retry_delay.subsec_nanos() != 0 {
        varint_field(&mut duration, 2, u64::from(retry_delay.subsec_nanos()));
    }
    let mut retry_info = Vec::new();
    bytes_field(&mut retry_info, 1, &duration);
    let mut any = Vec::new();
    bytes_field(&mut any, 1, RETRY_INFO_TYPE.as_bytes());
    bytes_field(&mut any, 2, &retry_info);

    let mut status = Vec::new();
    if code != 0 {
        // int32: a negative value is sign-extended to 64 bits (never here: codes are 0..=16).
        varint_field(&mut status, 1, i64::from(code) as u64);
    }
    if !message.is_empty() {
        bytes_field(&mut status, 2, message.as_bytes());
    }
    bytes_field(&mut status, 3, &any);
    status
}

/// A field of wire type 0 (varint).
fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    varint(out, u64::from(field) << 3);
    varint(out, value);
}

/// A field of wire type 2 (length-delimited).
fn bytes_field(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    varint(out, (u64::from(field) << 3) | 2);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Base 128 varint: seven bits a byte, least significant group first, the high bit set on
/// every byte but the last.
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Base64 with the standard alphabet (RFC 4648 §4), without `=` padding.
fn base64_unpadded(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        // 1 byte → 2 characters, 2 → 3, 3 → 4.
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 0x3f]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_test_vectors_without_padding() {
        // RFC 4648 §10, with the padding removed.
        for (input, expected) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_unpadded(input.as_bytes()), expected);
        }
        assert_eq!(base64_unpadded(&[0xfb, 0xff]), "+/8");
    }

    #[test]
    fn varints_follow_the_protobuf_encoding_examples() {
        let enc = |v| {
            let mut out = Vec::new();
            varint(&mut out, v);
            out
        };
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(150), [0x96, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
    }

    #[test]
    fn status_with_retry_info_has_the_expected_bytes() {
        let bytes = encode_status(8, "hi", Duration::new(3, 5));
        let type_url = RETRY_INFO_TYPE.as_bytes();
        let mut expected = vec![0x08, 8, 0x12, 2, b'h', b'i'];
        // details: Any { type_url, value: RetryInfo { Duration { 3, 5 } } }
        let duration = [0x08, 3, 0x10, 5];
        let retry_info = [&[0x0a, duration.len() as u8][..], &duration].concat();
        let any = [
            &[0x0a, type_url.len() as u8][..],
            type_url,
            &[0x12, retry_info.len() as u8],
            &retry_info,
        ]
        .concat();
        expected.extend_from_slice(&[0x1a, any.len() as u8]);
        expected.extend_from_slice(&any);
        assert_eq!(bytes, expected);
    }
}
