//! The run's trace: every event, hashed as it happens (two runs of a seed must hash the same),
//! and the last few kept as text for the failure report.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::hash::Hasher;

/// FNV-1a, 64 bit: stable across platforms and Rust versions, unlike `DefaultHasher`.
#[derive(Clone, Debug)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[derive(Debug)]
pub struct Trace {
    tail: VecDeque<String>,
    tail_max: usize,
    hash: Fnv,
    line: String,
}

impl Trace {
    pub fn new(tail_max: usize) -> Self {
        Trace {
            tail: VecDeque::with_capacity(tail_max),
            tail_max,
            hash: Fnv(0xcbf2_9ce4_8422_2325),
            line: String::new(),
        }
    }

    /// Records one event at virtual time `at_ms` (relative to the run's start).
    pub fn event(&mut self, at_ms: u64, what: std::fmt::Arguments<'_>) {
        self.line.clear();
        let _ = write!(
            self.line,
            "{:>8}.{:03} {}",
            at_ms / 1000,
            at_ms % 1000,
            what
        );
        self.hash.write(self.line.as_bytes());
        self.hash.write(b"\n");
        if self.tail.len() == self.tail_max {
            self.tail.pop_front();
        }
        self.tail.push_back(self.line.clone());
    }

    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    pub fn tail(&self) -> impl Iterator<Item = &str> {
        self.tail.iter().map(String::as_str)
    }
}
