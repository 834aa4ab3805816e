//! A small seeded random source (SplitMix64) for jitter and client ids.
//!
//! The seed comes from outside (the browser's `crypto.getRandomValues`, the OS, or a
//! simulation seed), so the engine stays deterministic under test.

use alloc::string::String;
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`.
    pub(crate) fn below_or_equal(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next_u64();
        }
        self.next_u64() % (max + 1)
    }

    /// A fresh client id: 16 lowercase hex digits (64 random bits).
    pub(crate) fn client_id(&mut self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut n = self.next_u64();
        let mut id = String::with_capacity(16);
        for _ in 0..16 {
            id.push(HEX[(n & 0xf) as usize] as char);
            n >>= 4;
        }
        id
    }
}
