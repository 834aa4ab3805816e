//! Per-user limits on the sync routes, so that one account (a runaway client, a script with a
//! stolen token) cannot starve the others: requests a minute (`governor`) and requests in
//! flight at once. Past either, the answer is 429 `rate_limited` with `Retry-After`, which a
//! client honours like any other. And per client address, the credentials refused
//! ([`RefusedCredentials`]): a client sending tokens that are not valid costs a session
//! lookup each, and past a rate waits before any more are looked at.
//!
//! It owns counting per user and per address only; it must not know what a request does.
//! Counts are per node (they protect the node and the database connections it holds), and in
//! memory: losing them on restart is harmless.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};

use crate::authn::ClientIp;
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
    /// Bytes of large answers held for clients that have not taken them yet ([`Held`]), all
    /// users together, and the most there may be.
    held: AtomicUsize,
    held_max: usize,
}

/// A request let in; dropping it (whatever the outcome) frees its slot. A large answer holds
/// it until the client has taken most of it (`sync.rs`).
#[must_use]
pub struct Admission {
    limits: Arc<UserLimits>,
    user: UserId,
}

impl Drop for Admission {
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

/// A large answer's bytes counted against the node's budget ([`Admission::hold`]), with its
/// request's admission: dropping it (once the client has taken the answer, or its connection
/// is gone) frees both.
#[must_use]
pub struct Held {
    admission: Admission,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        (self.admission.limits.held).fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Admission {
    /// Counts an answer of `bytes` that the node will hold until its client takes it against
    /// the node's budget of such answers (all users' together): past it, 503 `unavailable`
    /// with `Retry-After`. The first while none is held passes whatever its size, so that no
    /// answer is too large ever to be sent.
    pub fn hold(self, bytes: usize) -> Result<Held, ApiError> {
        let held = &self.limits.held;
        let before = held.fetch_add(bytes, Ordering::Relaxed);
        if before > 0 && before.saturating_add(bytes) > self.limits.held_max {
            held.fetch_sub(bytes, Ordering::Relaxed);
            return Err(ApiError {
                retry_after: Some(2),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "this node holds too many answers not yet taken by their clients; try again",
                )
            });
        }
        Ok(Held {
            admission: self,
            bytes,
        })
    }
}

impl UserLimits {
    /// `per_minute` requests a minute per user with bursts of a fifth of that (0: no rate
    /// limit), at most `concurrency` at once, and at most `held_max` bytes of large answers
    /// held for all users' clients together ([`Admission::hold`]).
    pub fn new(per_minute: u32, concurrency: u32, held_max: usize) -> Self {
        let rate = NonZeroU32::new(per_minute).map(|rate| {
            let burst = NonZeroU32::new(per_minute / 5).unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::keyed(governor::Quota::per_minute(rate).allow_burst(burst))
        });
        Self {
            rate,
            in_flight: Mutex::new(HashMap::new()),
            concurrency: concurrency.max(1),
            held: AtomicUsize::new(0),
            held_max,
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
    pub fn admit(self: &Arc<Self>, user: UserId) -> Result<Admission, ApiError> {
        let admission = {
            let mut in_flight = self.lock();
            let n = in_flight.entry(user).or_insert(0);
            if *n >= self.concurrency {
                return Err(too_many(1));
            }
            *n += 1;
            Admission {
                limits: Arc::clone(self),
                user,
            }
        };
        if let Some(rate) = &self.rate {
            if rate.len() >= TRACKED_USERS_MAX {
                rate.retain_recent();
            }
            if let Err(not_until) = rate.check_key(&user) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(too_many(seconds(wait)));
            }
        }
        Ok(admission)
    }
}

fn too_many(retry_after_secs: u64) -> ApiError {
    ApiError::rate_limited(retry_after_secs)
        .with_message("too many requests for this user at once or this minute; try again later")
}

/// Whole seconds to wait, rounded up (a `Retry-After`).
pub(crate) fn seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Credentials a client address may have refused a minute, and at once, before it waits.
const REFUSED_PER_MINUTE: u32 = 120;
const REFUSED_BURST: u32 = 60;
const HELD: &str =
    "too many requests with credentials that are not valid from this address; try again later";
/// Client addresses tracked at once before the idle ones are swept. Past it a new address is
/// not held: so many at once is a flood from many machines, which no per-address limit stops.
const TRACKED_ADDRESSES_MAX: usize = 10_000;

/// Credentials refused per client address. A client sending tokens that are not valid (guessed,
/// forged, or a script replaying old ones) costs a session lookup each, a database read where
/// the node does not remember the token. Past [`REFUSED_PER_MINUTE`] (bursts of
/// [`REFUSED_BURST`]) its address is held: its requests are answered 429 with `Retry-After`
/// before any credentials are looked at, until the rate allows one more.
pub struct RefusedCredentials {
    rate: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses held, and until when.
    held: Mutex<HashMap<IpAddr, <DefaultClock as Clock>::Instant>>,
    /// Whether any is (the one check of every request while none is).
    any_held: AtomicBool,
}

impl Default for RefusedCredentials {
    fn default() -> Self {
        let rate = NonZeroU32::new(REFUSED_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(REFUSED_BURST).unwrap_or(NonZeroU32::MIN);
        Self {
            rate: governor::RateLimiter::keyed(
                governor::Quota::per_minute(rate).allow_burst(burst),
            ),
            held: Mutex::new(HashMap::new()),
            any_held: AtomicBool::new(false),
        }
    }
}

impl RefusedCredentials {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, <DefaultClock as Clock>::Instant>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Before a request's credentials are looked at: 429 with the seconds to wait while its
    /// address is held. Without an address (a router driven without a socket) nothing is.
    pub fn check(&self, ip: ClientIp) -> Result<(), ApiError> {
        let Some(ip) = ip.0.filter(|_| self.any_held.load(Ordering::Relaxed)) else {
            return Ok(());
        };
        let now = DefaultClock::default().now();
        let mut held = self.lock();
        match held.get(&ip) {
            Some(until) if *until > now => {
                let wait = seconds(until.duration_since(now));
                Err(ApiError::rate_limited(wait).with_message(HELD))
            }
            Some(_) => {
                held.remove(&ip);
                self.any_held.store(!held.is_empty(), Ordering::Relaxed);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A request's credentials were refused as not valid: counted against its address, which
    /// is held once past the rate.
    pub fn refused(&self, ip: ClientIp) {
        let Some(ip) = ip.0 else { return };
        if self.rate.len() >= TRACKED_ADDRESSES_MAX {
            self.rate.retain_recent();
        }
        let Err(not_until) = self.rate.check_key(&ip) else {
            return;
        };
        let mut held = self.lock();
        if held.len() >= TRACKED_ADDRESSES_MAX {
            let now = DefaultClock::default().now();
            held.retain(|_, until| *until > now);
        }
        if held.len() < TRACKED_ADDRESSES_MAX {
            held.insert(ip, not_until.earliest_possible());
            self.any_held.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_past_its_refused_credentials_waits_and_others_do_not() {
        let refused = RefusedCredentials::default();
        let guesser = ClientIp(Some(IpAddr::from([192, 0, 2, 1])));
        let other = ClientIp(Some(IpAddr::from([192, 0, 2, 2])));
        // The burst, then one more counted: from then on held, before any lookup.
        for n in 0..=REFUSED_BURST {
            assert!(
                refused.check(guesser).is_ok(),
                "refusal {n} is within the burst"
            );
            refused.refused(guesser);
        }
        let held = refused.check(guesser).expect_err("held past the burst");
        assert_eq!(held.status.as_u16(), 429);
        assert!(
            held.retry_after.is_some_and(|s| (1..=2).contains(&s)),
            "{held:?}"
        );
        assert!(refused.check(other).is_ok(), "another address is not held");
        assert!(
            refused.check(ClientIp(None)).is_ok(),
            "nor a request without an address"
        );
        refused.refused(other);
        assert!(refused.check(other).is_ok(), "one refusal holds nobody");
    }

    #[test]
    fn a_user_gets_so_many_requests_at_once_and_others_are_untouched() {
        let limits = Arc::new(UserLimits::new(0, 2, usize::MAX));
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
    fn large_answers_held_for_all_users_together_are_bounded() {
        let limits = Arc::new(UserLimits::new(0, 4, 1_000));
        // The first answer passes whatever its size, so none is too large ever to be sent.
        let huge = limits.admit(1).unwrap().hold(5_000).expect("the first");
        let refused = limits
            .admit(2)
            .unwrap()
            .hold(1)
            .err()
            .expect("past the budget");
        assert_eq!(
            (refused.status.as_u16(), refused.code, refused.retry_after),
            (503, "unavailable", Some(2))
        );
        assert!(
            limits.lock().get(&2).is_none(),
            "the refused request's slot was freed"
        );
        drop(huge);
        assert_eq!(limits.held.load(Ordering::Relaxed), 0);
        // Another user's answers count against the same budget.
        let a = limits.admit(1).unwrap().hold(600).expect("within");
        let b = limits
            .admit(2)
            .unwrap()
            .hold(400)
            .expect("up to the budget");
        assert!(limits.admit(3).unwrap().hold(1).is_err(), "one byte more");
        assert_eq!(
            limits.lock().get(&1),
            Some(&1),
            "a held answer keeps its slot"
        );
        drop((a, b));
        assert_eq!(limits.held.load(Ordering::Relaxed), 0);
        assert!(limits.lock().is_empty(), "every slot freed with its answer");
    }

    #[test]
    fn past_its_burst_a_user_waits_for_the_rate_and_others_do_not() {
        // Ten a minute: bursts of two, then one every six seconds.
        let limits = Arc::new(UserLimits::new(10, 1, usize::MAX));
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
