//! The server's say over how often clients poll: every pull answer (a `304` included)
//! carries `Sinkron-Poll-Interval: SECS`, the interval this node wants. It is `--poll-interval`
//! while the node is calm; when the sync requests in flight at once reach
//! `--poll-busy-requests` within a second, it doubles (up to `--poll-interval-max`), and after
//! ten calm seconds in a row (under half the threshold) it halves back towards the base. A
//! million clients that obey slow down within one of their intervals, without a deploy.
//!
//! It only counts and answers a number; the engine decides what to do with it (within the
//! app's own interval and a ceiling, with jitter). The count is per node: it protects the
//! node and what it holds (its database connections). Evaluated at most once a second by
//! whichever request comes first, on the server's clock: no task, and tests drive it with a
//! virtual clock.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use axum::http::HeaderValue;

pub use sinkron_core::protocol::POLL_INTERVAL_HEADER;

/// Calm seconds in a row before the interval halves.
const CALM_SECS: u32 = 10;

/// The pacing of one node.
pub struct Pacer {
    /// The intervals it may ask for: the base, doubled up to the most (the last).
    levels: Vec<(u32, HeaderValue)>,
    busy: u32,
    /// The index into `levels` answered now.
    level: AtomicUsize,
    in_flight: AtomicU32,
    /// The most in flight at once since the last evaluation.
    peak: AtomicU32,
    calm: AtomicU32,
    /// When it was last evaluated (ms, the server's clock); a request that finds it a
    /// second old evaluates.
    evaluated_ms: AtomicU64,
}

/// A request being counted; dropping it ends it.
#[must_use]
pub struct InFlight<'a>(&'a Pacer);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pacer {
    /// Asks for `base_secs` while calm, at most `max_secs`, busy at `busy` requests in
    /// flight at once.
    pub fn new(base_secs: u32, max_secs: u32, busy: u32) -> Pacer {
        let base = base_secs.max(1);
        let max = max_secs.max(base);
        let mut levels = Vec::new();
        let mut secs = base;
        loop {
            levels.push((secs, HeaderValue::from(secs)));
            if secs >= max {
                break;
            }
            secs = secs.saturating_mul(2).min(max);
        }
        Pacer {
            levels,
            busy: busy.max(1),
            level: AtomicUsize::new(0),
            in_flight: AtomicU32::new(0),
            peak: AtomicU32::new(0),
            calm: AtomicU32::new(0),
            evaluated_ms: AtomicU64::new(0),
        }
    }

    /// Counts a sync request from now until the guard drops; evaluates the load if the last
    /// evaluation is a second old.
    pub fn enter(&self, now_ms: u64) -> InFlight<'_> {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
        let last = self.evaluated_ms.load(Ordering::Relaxed);
        if now_ms >= last.saturating_add(1000)
            && self
                .evaluated_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.evaluate(now_ms.saturating_sub(last));
        }
        InFlight(self)
    }

    /// The interval to ask for now, as the header's value.
    pub fn header(&self) -> &HeaderValue {
        &self.levels[self.level.load(Ordering::Relaxed)].1
    }

    /// The interval asked for now, in seconds.
    pub fn interval_secs(&self) -> u32 {
        self.levels[self.level.load(Ordering::Relaxed)].0
    }

    fn evaluate(&self, elapsed_ms: u64) {
        // The next second's peak counts the requests that enter in it (each counts all
        // those in flight then).
        let peak = self.peak.swap(0, Ordering::Relaxed);
        let seconds = u32::try_from(elapsed_ms / 1000).unwrap_or(u32::MAX);
        let (level, calm) = next_level(
            self.level.load(Ordering::Relaxed),
            self.levels.len() - 1,
            self.calm.load(Ordering::Relaxed),
            peak,
            self.busy,
            seconds,
        );
        self.level.store(level, Ordering::Relaxed);
        self.calm.store(calm, Ordering::Relaxed);
    }
}

/// The rule, from the last `seconds` (a quiet node is evaluated late: every second without a
/// request was calm): busy (`peak` at `busy` or more) doubles the interval at once; ten calm
/// seconds in a row (`peak` under half of `busy`) halve it; in between it holds.
fn next_level(
    level: usize,
    top: usize,
    calm: u32,
    peak: u32,
    busy: u32,
    seconds: u32,
) -> (usize, u32) {
    if peak >= busy {
        return ((level + 1).min(top), 0);
    }
    if peak.saturating_mul(2) >= busy {
        return (level, 0);
    }
    let calm = calm.saturating_add(seconds.max(1));
    if level > 0 && calm >= CALM_SECS {
        (level - 1, 0)
    } else {
        (level, calm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_seconds_double_the_interval_up_to_the_most_and_calm_ones_halve_it() {
        let pacer = Pacer::new(30, 300, 4);
        let levels: Vec<u32> = pacer.levels.iter().map(|(s, _)| *s).collect();
        assert_eq!(levels, [30, 60, 120, 240, 300]);
        assert_eq!(pacer.header(), "30");

        let mut now = 1_000_000;
        // Four requests at once within a second: busy.
        let held: Vec<_> = (0..4).map(|_| pacer.enter(now)).collect();
        now += 1000;
        drop(pacer.enter(now));
        assert_eq!(pacer.interval_secs(), 60);
        // Still four in flight next second: busy again, and so on up to the most.
        for expected in [120, 240, 300, 300] {
            now += 1000;
            drop(pacer.enter(now));
            assert_eq!(pacer.interval_secs(), expected);
        }
        drop(held);
        assert_eq!(pacer.header(), "300");
        // Two at once (half the threshold) holds it; one (calm) for ten seconds halves it.
        now += 1000;
        let two = (pacer.enter(now), pacer.enter(now));
        now += 1000;
        drop(pacer.enter(now));
        assert_eq!(pacer.interval_secs(), 300);
        drop(two);
        for _ in 0..9 {
            now += 1000;
            drop(pacer.enter(now));
            assert_eq!(pacer.interval_secs(), 300, "not before ten calm seconds");
        }
        now += 1000;
        drop(pacer.enter(now));
        assert_eq!(pacer.interval_secs(), 240);
        // A quiet node (no request for a minute) counts the minute as calm.
        now += 60_000;
        drop(pacer.enter(now));
        assert_eq!(pacer.interval_secs(), 120);
    }

    #[test]
    fn within_a_second_it_is_evaluated_once() {
        let pacer = Pacer::new(30, 300, 2);
        let now = 5_000;
        let a = pacer.enter(now);
        let b = pacer.enter(now + 999);
        assert_eq!(pacer.interval_secs(), 30);
        drop((a, b));
        drop(pacer.enter(now + 1000));
        assert_eq!(pacer.interval_secs(), 60);
        drop(pacer.enter(now + 1500));
        assert_eq!(pacer.interval_secs(), 60);
    }

    #[test]
    fn a_base_at_or_above_the_most_never_moves() {
        let pacer = Pacer::new(60, 30, 1);
        let held = pacer.enter(0);
        drop(pacer.enter(1000));
        drop(held);
        assert_eq!(pacer.interval_secs(), 60);
    }
}
