//! The stampede cache's stored value (a postcard envelope) read back from a store: bytes
//! from Redis are untrusted. Any bytes are a miss that recomputes, or a value.
#![no_main]

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use turret_fuzz::block_on;
use turret_stampede::{
    StampedeCache,
    store::{Entry, ValueStore},
};

fuzz_target!(|data: &[u8]| {
    block_on(async {
        let cache = StampedeCache::new();
        for key in ["s", "v", "t"] {
            cache
                .store()
                .put(
                    key,
                    Entry {
                        bytes: Bytes::copy_from_slice(data),
                        fence: 0,
                        ttl: Duration::from_secs(60),
                        tags: &[],
                    },
                )
                .await
                .unwrap();
        }
        let _ = cache.peek::<String>("s").await;
        let _ = cache.peek::<Vec<u64>>("v").await;
        let _ = cache.peek::<(u8, Option<String>, f64)>("t").await;
        let _: String = cache
            .get_or_compute("s", Duration::from_secs(60), || async {
                Ok::<_, Infallible>(String::from("fresh"))
            })
            .await
            .unwrap();
    });
});
