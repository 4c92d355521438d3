//! The stored form of a value: a small header, then the value, both in postcard.

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Bumped whenever the layout changes; an entry of another version reads as a miss.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// What the cache knows about a stored value besides the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) version: u8,
    /// When the value was computed (ms since the Unix epoch).
    pub(crate) computed_at_ms: u64,
    /// How long the computation took (XFetch's Δ), in ms.
    pub(crate) delta_ms: u64,
    /// When the value stops being fresh (ms since the Unix epoch).
    pub(crate) expires_at_ms: u64,
    /// The fencing token of the lease it was written under (0: written without a lease).
    pub(crate) fence: u64,
}

#[derive(Debug)]
pub(crate) enum DecodeError {
    Version(u8),
    Postcard,
}

pub(crate) fn encode<T: Serialize>(header: &Header, value: &T) -> Result<Bytes, postcard::Error> {
    let buf = postcard::to_extend(header, Vec::with_capacity(64))?;
    Ok(Bytes::from(postcard::to_extend(value, buf)?))
}

/// Reads the header only (untrusted bytes: never panics).
pub(crate) fn decode_header(bytes: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    let (header, rest) =
        postcard::take_from_bytes::<Header>(bytes).map_err(|_| DecodeError::Postcard)?;
    if header.version != FORMAT_VERSION {
        return Err(DecodeError::Version(header.version));
    }
    Ok((header, rest))
}

/// Reads a whole entry (untrusted bytes: never panics).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(Header, T), DecodeError> {
    let (header, rest) = decode_header(bytes)?;
    let (value, tail) = postcard::take_from_bytes::<T>(rest).map_err(|_| DecodeError::Postcard)?;
    if !tail.is_empty() {
        return Err(DecodeError::Postcard);
    }
    Ok((header, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            version: FORMAT_VERSION,
            computed_at_ms: 1_700_000_000_000,
            delta_ms: 250,
            expires_at_ms: 1_700_000_060_000,
            fence: 1_700_000_000_000_123,
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&header(), &(String::from("report"), vec![1u32, 2, 3])).unwrap();
        let (h, v): (Header, (String, Vec<u32>)) = decode(&bytes).unwrap();
        assert_eq!(h, header());
        assert_eq!(v, (String::from("report"), vec![1, 2, 3]));
        assert!(bytes.len() < 40, "compact: {} bytes", bytes.len());
    }

    #[test]
    fn garbage_and_other_versions_are_errors_not_panics() {
        let good = encode(&header(), &String::from("x")).unwrap();
        for bad in [
            &b""[..],
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            &good[..good.len() - 1],
            b"not postcard at all",
        ] {
            assert!(decode::<String>(bad).is_err(), "{bad:?}");
        }
        let mut other = header();
        other.version = 9;
        let bytes = encode(&other, &String::from("x")).unwrap();
        assert!(matches!(
            decode::<String>(&bytes),
            Err(DecodeError::Version(9))
        ));
        // The right header with a value of another type.
        assert!(decode::<(u64, u64, u64)>(&good).is_err());
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert!(decode::<String>(&trailing).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(1);
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 97).map(|_| rng.random()).collect();
            let _ = decode::<Vec<String>>(&bytes);
            let _ = decode::<(u8, Option<String>)>(&bytes);
        }
    }
}
