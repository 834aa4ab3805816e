//! The client clock rule.
//!
//! A device clock can be wrong by hours and can jump backwards. Newest-wins stays meaningful
//! because a client never stamps a write below `max(now, highest updatedAt it has seen + 1)`:
//! whatever it has seen, its next write is newer. On top of that the clock learns the offset
//! to the server's clock from each response, so a device that is an hour fast stops writing
//! from the future once it has talked to the server.

/// A client's write clock. Time comes in as an argument; this type reads no clock itself.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// The highest `updatedAt` seen so far, from any source, including our own stamps.
    seen_max: u64,
    /// `server time - local time`, learned from the last server response.
    offset_ms: i64,
}

impl Clock {
    /// The stamp for a write made at local time `now_ms`; strictly above every stamp seen.
    pub fn stamp(&mut self, now_ms: u64) -> u64 {
        let corrected = now_ms.saturating_add_signed(self.offset_ms);
        let stamp = corrected.max(self.seen_max.saturating_add(1));
        self.seen_max = stamp;
        stamp
    }

    /// The stamp for a write that continues what this device knew, as of its last sync at
    /// local time `known_ms` (`None`: none since the page opened, so as of the newest stamp
    /// it holds), and the copy it replaces (stamped `after`): just above both, however late
    /// it is made, so that whatever was written elsewhere since wins over it. Seen like any
    /// stamp: the device's later writes go above it.
    pub fn as_of(&mut self, known_ms: Option<u64>, after: u64) -> u64 {
        let known = known_ms.map_or(self.seen_max, |t| t.saturating_add_signed(self.offset_ms));
        let stamp = known.max(after) + 1;
        self.observe(stamp);
        stamp
    }

    /// Notes a timestamp seen on a record from elsewhere.
    pub fn observe(&mut self, updated_at: u64) {
        self.seen_max = self.seen_max.max(updated_at);
    }

    /// Learns the server's clock from a response received at local time `now_ms`.
    pub fn sync_to_server(&mut self, now_ms: u64, server_time_ms: u64) {
        let offset = server_time_ms as i128 - now_ms as i128;
        self.offset_ms = offset.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    }

    pub fn seen_max(&self) -> u64 {
        self.seen_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_follow_the_local_clock_when_it_is_ahead() {
        let mut clock = Clock::default();
        assert_eq!(clock.stamp(1_000), 1_000);
        assert_eq!(clock.stamp(2_000), 2_000);
    }

    #[test]
    fn a_clock_jumping_backwards_never_stamps_below_what_it_has_seen() {
        let mut clock = Clock::default();
        assert_eq!(clock.stamp(10_000), 10_000);
        assert_eq!(clock.stamp(5_000), 10_001);
        assert_eq!(clock.stamp(5_000), 10_002);
    }

    #[test]
    fn a_slow_device_writes_after_what_it_has_seen() {
        let mut clock = Clock::default();
        clock.observe(1_000_000);
        assert_eq!(clock.stamp(10), 1_000_001);
    }

    #[test]
    fn the_server_offset_corrects_a_fast_device() {
        let mut clock = Clock::default();
        // The device is an hour fast.
        clock.sync_to_server(3_600_000 + 500, 500);
        assert_eq!(clock.stamp(3_600_000 + 600), 600);
    }
}
