//! The engine's deadlines: one table, one entry per [`Timer`].
//!
//! Each entry is set where the decision is made (a write arms [`Timer::Push`], an answer arms
//! [`Timer::Poll`], a failure arms [`Timer::Retry`], losing the leader lock stops the poll) and
//! is the only record of that deadline. [`TimerTable::next`] (the engine's `poll_timeout`) and
//! [`TimerTable::expired`] (what the engine fires at the end of every input, a timeout
//! included) read the same entries through the same `ready` predicate, so the deadline the
//! driver is given is exactly the one that fires: an engine that asks to be woken acts when
//! woken.
//!
//! Times are the device's milliseconds since the epoch; `0` means "at once". The table knows
//! nothing of what the timers do.

/// A deadline of the engine. The order is the precedence when several are due at once: only
/// one regular request is in flight at a time, so the first due timer is the one that sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// The outbox is due: shortly after the last write of a burst, never much later than its
    /// first, at once for writes left over (a restart, a sign-in, a push that failed or did
    /// not take them all).
    Push,
    /// A push was acknowledged without the server's state, so its writes stay in view until
    /// an answer shows that state: ask for it (a pull, or an empty push with the cursor).
    State,
    /// A pull is wanted at once: a trigger (focus, online, sign-in), the next page, a reset.
    Pull,
    /// The leader's next background pull, an interval after the last one.
    Poll,
    /// The backoff after a failed request. It fires nothing itself: every other timer waits
    /// for it.
    Retry,
    /// A signed-out session to end on the server, apart from the user's requests: it has
    /// its own backoff and waits for no other request.
    EndSession,
}

impl Timer {
    const ALL: [Timer; 6] = [
        Timer::Push,
        Timer::State,
        Timer::Pull,
        Timer::Poll,
        Timer::Retry,
        Timer::EndSession,
    ];
}

/// One deadline per [`Timer`], in a fixed array.
#[derive(Clone, Debug, Default)]
pub(super) struct TimerTable {
    deadlines: [Option<u64>; Timer::ALL.len()],
}

impl TimerTable {
    pub(super) fn set(&mut self, timer: Timer, at: u64) {
        self.deadlines[timer as usize] = Some(at);
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    pub(super) fn get(&self, timer: Timer) -> Option<u64> {
        self.deadlines[timer as usize]
    }

    pub(super) fn is_set(&self, timer: Timer) -> bool {
        self.get(timer).is_some()
    }

    /// The device clock went back `ms`: every deadline moves back with it, so a clock set
    /// back an hour does not hold a push, a retry or a poll for an hour.
    pub(super) fn shift_back(&mut self, ms: u64) {
        for at in self.deadlines.iter_mut().flatten() {
            *at = at.saturating_sub(ms);
        }
    }

    /// When `timer` fires: its deadline, or the end of the retry's backoff if that is later.
    fn fires_at(&self, timer: Timer) -> Option<u64> {
        let at = self.get(timer)?;
        Some(match timer {
            Timer::Retry | Timer::EndSession => at,
            _ => at.max(self.get(Timer::Retry).unwrap_or(0)),
        })
    }

    /// The earliest time a timer fires among those `ready` to act, if any: the engine's
    /// `poll_timeout`.
    pub(super) fn next(&self, ready: &dyn Fn(Timer) -> bool) -> Option<u64> {
        let mut next: Option<u64> = None;
        for t in Timer::ALL {
            if t != Timer::Retry && ready(t) {
                if let Some(at) = self.fires_at(t) {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        next
    }

    /// The first timer, in order of precedence, that is `ready` to act and whose time has
    /// come by `now`.
    pub(super) fn expired(&self, now: u64, ready: &dyn Fn(Timer) -> bool) -> Option<Timer> {
        Timer::ALL.into_iter().find(|&t| {
            t != Timer::Retry && ready(t) && self.fires_at(t).is_some_and(|at| at <= now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_deadline_is_the_earliest_ready_one_held_by_the_retry() {
        let mut table = TimerTable::default();
        assert_eq!(table.next(&|_| true), None);
        table.set(Timer::Poll, 500);
        table.set(Timer::Push, 300);
        assert_eq!(table.next(&|_| true), Some(300));
        assert_eq!(table.next(&|t| t != Timer::Push), Some(500));
        table.set(Timer::Retry, 400);
        assert_eq!(table.next(&|_| true), Some(400));
        assert_eq!(table.expired(399, &|_| true), None);
        assert_eq!(table.expired(400, &|_| true), Some(Timer::Push));
        assert_eq!(table.expired(500, &|t| t != Timer::Push), Some(Timer::Poll));
        table.stop(Timer::Retry);
        table.stop(Timer::Push);
        assert_eq!(table.next(&|_| true), Some(500));
    }

    #[test]
    fn a_retry_alone_is_no_deadline() {
        let mut table = TimerTable::default();
        table.set(Timer::Retry, 100);
        assert_eq!(table.next(&|_| true), None);
        assert_eq!(table.expired(1_000, &|_| true), None);
    }

    #[test]
    fn the_first_due_timer_in_precedence_fires() {
        let mut table = TimerTable::default();
        table.set(Timer::Poll, 10);
        table.set(Timer::Pull, 0);
        table.set(Timer::State, 0);
        assert_eq!(table.expired(10, &|_| true), Some(Timer::State));
        assert_eq!(table.expired(10, &|t| t != Timer::State), Some(Timer::Pull));
    }

    #[test]
    fn a_clock_set_back_moves_every_deadline_back() {
        let mut table = TimerTable::default();
        table.set(Timer::Push, 1_000);
        table.set(Timer::Pull, 0);
        table.set(Timer::Retry, 5_000);
        table.shift_back(2_000);
        assert_eq!(table.get(Timer::Push), Some(0));
        assert_eq!(table.get(Timer::Pull), Some(0));
        assert_eq!(table.get(Timer::Retry), Some(3_000));
        assert_eq!(table.get(Timer::Poll), None);
    }
}
