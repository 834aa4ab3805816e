//! Per-user limits on the sync routes, so that one account (a runaway client, a script with a
//! stolen token) cannot starve the others: requests a minute (`governor`) and requests in
//! flight at once. Past either, the answer is 429 `rate_limited` with `Retry-After`, which a
//! client honours like any other.
//!
//! It owns counting per user only; it must not know what a request does. Counts are per node
//! (they protect the node and the database connections it holds), and in memory: losing them
//! on restart is harmless.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};

use governor::clock::{Clock, DefaultClock};

use crate::error::ApiError;
use crate::store::UserId;

/// Users whose request rate is tracked before idle entries are swept.
const TRACKED_USERS_MAX: usize = 100_000;

/// The limits of one node.
pub struct UserLimits {
    /// `None`: no rate limit.
    rate: Option<governor::DefaultKeyedRateLimiter<UserId>>,
    /// Requests in flight per user; a user with none has no entry.
    in_flight: Mutex<HashMap<UserId, u32>>,
    concurrency: u32,
}

/// A request let in; dropping it (whatever the outcome) frees its slot.
#[must_use]
pub struct Admission<'a> {
    limits: &'a UserLimits,
    user: UserId,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.limits.lock();
        if let Some(n) = in_flight.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.user);
            }
        }
    }
}

impl UserLimits {
    /// `per_minute` requests a minute per user with bursts of a fifth of that (0: no rate
    /// limit), and at most `concurrency` at once.
    pub fn new(per_minute: u32, concurrency: u32) -> Self {
        let rate = NonZeroU32::new(per_minute).map(|rate| {
            let burst = NonZeroU32::new(per_minute / 5).unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::keyed(governor::Quota::per_minute(rate).allow_burst(burst))
        });
        Self {
            rate,
            in_flight: Mutex::new(HashMap::new()),
            concurrency: concurrency.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, u32>> {
        // Each update is one step, so the map is consistent even after a panic.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets one request of `user` in, or answers 429 with the seconds to wait. A request
    /// refused for being one too many at once spends none of the user's rate.
    pub fn admit(&self, user: UserId) -> Result<Admission<'_>, ApiError> {
        let admission = {
            let mut in_flight = self.lock();
            let n = in_flight.entry(user).or_insert(0);
            if *n >= self.concurrency {
                return Err(too_many(1));
            }
            *n += 1;
            Admission { limits: self, user }
        };
        if let Some(rate) = &self.rate {
            if rate.len() >= TRACKED_USERS_MAX {
                rate.retain_recent();
            }
            if let Err(not_until) = rate.check_key(&user) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(too_many(secs));
            }
        }
        Ok(admission)
    }
}

fn too_many(retry_after_secs: u64) -> ApiError {
    ApiError::rate_limited(retry_after_secs)
        .with_message("too many requests for this user at once or this minute; try again later")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_so_many_requests_at_once_and_others_are_untouched() {
        let limits = UserLimits::new(0, 2);
        let first = limits.admit(1).expect("first");
        let second = limits.admit(1).expect("second");
        let third = limits.admit(1).err().expect("a third at once is refused");
        assert_eq!((third.status.as_u16(), third.retry_after), (429, Some(1)));
        assert!(limits.admit(2).is_ok(), "another user is let in");
        drop(first);
        drop(limits.admit(1).expect("a slot was freed"));
        drop(second);
        assert!(limits.lock().is_empty(), "no entry is kept for idle users");
        for _ in 0..1_000 {
            drop(limits.admit(7).expect("a zero rate is no rate limit"));
        }
    }

    #[test]
    fn past_its_burst_a_user_waits_for_the_rate_and_others_do_not() {
        // Ten a minute: bursts of two, then one every six seconds.
        let limits = UserLimits::new(10, 1);
        let first = limits.admit(1).expect("first");
        assert!(limits.admit(1).is_err(), "one at once");
        drop(first);
        drop(
            limits
                .admit(1)
                .expect("the refusal at once spent none of the rate"),
        );
        let wait = limits.admit(1).err().expect("past the burst");
        assert!(
            wait.retry_after.is_some_and(|s| (1..=6).contains(&s)),
            "{wait:?}"
        );
        assert!(limits.lock().is_empty(), "a refusal holds no slot");
        drop(limits.admit(2).expect("another user has its own burst"));
    }
}
