//! A hash that stays the same on every platform and Rust release, for
//! what is written to disk: directory names of Python environments and
//! worker sources, snapshot checksums. (`std`'s `DefaultHasher` may change
//! between releases; a toolchain update would then rebuild every
//! environment and reject every snapshot.)
//!
//! ```
//! use dspex_core::hash::StableHasher;
//!
//! let mut h = StableHasher::new();
//! h.write_part("general");
//! h.write_part("dspy==3.4.1");
//! assert_eq!(h.hex().len(), 16);
//! assert_eq!(dspex_core::hash::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
//! ```

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits, of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = StableHasher::new();
    h.write(bytes);
    h.finish()
}

/// FNV-1a, 64 bits, fed incrementally.
#[derive(Debug, Clone, Copy)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher::new()
    }
}

impl StableHasher {
    /// An empty hash.
    pub fn new() -> StableHasher {
        StableHasher(OFFSET)
    }

    /// Add bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }

    /// Add one part of a list, with a separator, so `["ab", "c"]` and
    /// `["a", "bc"]` differ.
    pub fn write_part(&mut self, part: &str) {
        self.write(part.as_bytes());
        self.write(&[0xff]);
    }

    /// The hash.
    pub fn finish(&self) -> u64 {
        self.0
    }

    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}
