//! What `#[cached]` expansions name (not a public API: no stability promise).

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use std::time::Duration;

pub use crate::{CacheKey, Options, StampedeCache};

/// The default key's argument hash: SHA-256 over each argument's postcard encoding,
/// length-prefixed (so argument boundaries cannot shift), hex of the first 16 bytes. Stable
/// across processes, platforms and releases of turret as long as the arguments' `Serialize`
/// output is (postcard's format is stable within its major version) — never `std::hash`.
#[derive(Debug, Clone)]
pub struct ArgHasher {
    sha: Sha256,
    failed: bool,
}

impl Default for ArgHasher {
    fn default() -> Self {
        Self::new()
    }
}

static UNKEYABLE_REPORTED: AtomicBool = AtomicBool::new(false);

impl ArgHasher {
    /// An empty hash.
    pub fn new() -> Self {
        Self {
            sha: Sha256::new(),
            failed: false,
        }
    }

    /// Adds one argument.
    pub fn arg<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match postcard::to_allocvec(value) {
            Ok(bytes) => {
                self.sha.update((bytes.len() as u64).to_le_bytes());
                self.sha.update(&bytes);
            }
            Err(_) => self.failed = true,
        }
        self
    }

    /// The key part. An argument that does not serialise (postcard refuses a sequence of
    /// unknown length) makes a key no other call shares: the call computes and nothing it
    /// stores is ever read, which is slow but never wrong (counted, logged once).
    pub fn finish(self) -> String {
        let digest: [u8; 16] = if self.failed {
            metrics::counter!("turret_stampede_cached_unkeyable_total").increment(1);
            if !UNKEYABLE_REPORTED.swap(true, Ordering::Relaxed) {
                tracing::warn!("a #[cached] argument does not serialise: that call is not cached");
            }
            rand::random()
        } else {
            let full = self.sha.finalize();
            let mut first = [0u8; 16];
            first.copy_from_slice(&full[..16]);
            first
        };
        let mut hex = String::with_capacity(33);
        hex.push(if self.failed { '!' } else { '#' });
        for b in digest {
            hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::ArgHasher;

    #[test]
    fn the_hash_is_pinned_and_separates_arguments() {
        let h = ArgHasher::new().arg(&42u64).arg("x").finish();
        // Pinned: a change here changes every default key in every deployed fleet.
        assert_eq!(h, "#dfd773630e1df875d4742fddfa4da694"); // sha256(le64(1) 2a le64(2) 01 78)[..16]
        assert_eq!(h.len(), 33);
        assert_ne!(h, ArgHasher::new().arg("x").arg(&42u64).finish());
        assert_ne!(
            ArgHasher::new().arg("ab").arg("c").finish(),
            ArgHasher::new().arg("a").arg("bc").finish()
        );
    }
}
