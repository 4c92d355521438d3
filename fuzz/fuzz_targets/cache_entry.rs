//! The stored cache entry decoder: bytes read back from Redis are untrusted. Any input is an
//! error or a whole entry, and whatever decodes encodes back to the same entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turret_cache::CachedResponse;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = CachedResponse::decode(data) {
        let again = CachedResponse::decode(&entry.encode()).expect("an encoded entry decodes");
        assert_eq!(again, entry);
    }
});
