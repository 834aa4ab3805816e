//! The optional push channel (`--poke sse`, off by default): `GET /api/user/me/events` is a
//! stream of Server-Sent Events that says "pull now" when the user's version rises, so a
//! browser's leader tab can pull at once instead of at its next poll.
//!
//! A poke carries no data but the new version (`data: 42`): a client already at it does not
//! pull. Polling stays the source of truth: a stream that drops, or a poke that is lost,
//! costs only the wait until the next poll. Pokes come from this node's pushes and, on
//! PostgreSQL, from every other node's (their announcements, `store/pg_cache.rs`).
//!
//! Bounded: at most [`STREAMS_PER_USER`] streams per user and `--poke-streams-max` per node
//! (past either, 429 with `Retry-After`); a stream ends after [`STREAM_SECS`] (the client
//! reconnects, and its session is checked again) and at shutdown. It owns fanning versions
//! out to streams only; it must not know what a version holds.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream};
use tokio::sync::watch;

use crate::authn::AuthUser;
use crate::error::ApiError;
use crate::store::UserId;
use crate::AppState;

/// Streams one user may hold on one node (a few browsers; each browser holds one).
pub const STREAMS_PER_USER: usize = 4;
/// How long one stream lasts before the client is asked to reconnect.
pub const STREAM_SECS: u64 = 600;
/// A comment this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(25);
/// How long a browser waits before reconnecting a stream that ended (`retry:`).
const RETRY: Duration = Duration::from_secs(3);

/// Every open stream's user, and the version it was last told.
pub struct Pokes {
    users: Mutex<HashMap<UserId, Watched>>,
    streams: Mutex<usize>,
    streams_max: usize,
    /// Flips to true at shutdown: every stream ends.
    closing: watch::Sender<bool>,
}

struct Watched {
    version: watch::Sender<u64>,
    streams: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pokes {
    pub fn new(streams_max: usize) -> Self {
        Self {
            users: Mutex::default(),
            streams: Mutex::new(0),
            streams_max,
            closing: watch::Sender::new(false),
        }
    }

    /// The user's version rose to `version`: every stream of the user says so (once).
    pub fn poke(&self, user_id: UserId, version: u64) {
        if let Some(watched) = lock(&self.users).get(&user_id) {
            watched.version.send_if_modified(|v| {
                let later = version > *v;
                *v = (*v).max(version);
                later
            });
        }
    }

    /// Ends every stream (shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Open streams on this node.
    pub fn open(&self) -> usize {
        *lock(&self.streams)
    }

    fn subscribe(self: &Arc<Self>, user_id: UserId, version: u64) -> Option<Subscription> {
        let mut streams = lock(&self.streams);
        let mut users = lock(&self.users);
        if *streams >= self.streams_max {
            return None;
        }
        let watched = users.entry(user_id).or_insert_with(|| Watched {
            version: watch::Sender::new(version),
            streams: 0,
        });
        if watched.streams >= STREAMS_PER_USER {
            return None;
        }
        watched.streams += 1;
        *streams += 1;
        let mut seen = watched.version.subscribe();
        // What the user's version is now is what the client is told first.
        watched.version.send_if_modified(|v| {
            let later = version > *v;
            *v = (*v).max(version);
            later
        });
        seen.mark_changed();
        Some(Subscription {
            pokes: self.clone(),
            user_id,
            seen,
            closing: self.closing.subscribe(),
        })
    }
}

/// One stream's hold on [`Pokes`]; dropping it (the client went away) frees its place.
struct Subscription {
    pokes: Arc<Pokes>,
    user_id: UserId,
    seen: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut streams = lock(&self.pokes.streams);
        let mut users = lock(&self.pokes.users);
        *streams = streams.saturating_sub(1);
        if let Some(watched) = users.get_mut(&self.user_id) {
            watched.streams = watched.streams.saturating_sub(1);
            if watched.streams == 0 {
                users.remove(&self.user_id);
            }
        }
    }
}

impl Subscription {
    /// The next version to tell, or `None` when the stream is to end.
    async fn next(&mut self) -> Option<u64> {
        if *self.closing.borrow() {
            return None;
        }
        tokio::select! {
            changed = self.seen.changed() => {
                changed.ok()?;
                Some(*self.seen.borrow_and_update())
            }
            _ = self.closing.wait_for(|closing| *closing) => None,
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/user/me/events", get(events))
}

/// `GET /api/user/me/events`: 404 unless `--poke sse`.
async fn events(State(state): State<AppState>, user: AuthUser) -> Result<Response, ApiError> {
    let Some(pokes) = &state.pokes else {
        return Err(ApiError::from_status(axum::http::StatusCode::NOT_FOUND));
    };
    let subscription = pokes
        .subscribe(user.user_id, user.version)
        .ok_or_else(|| ApiError::rate_limited(RETRY.as_secs()))?;
    Ok(Sse::new(stream_of(subscription))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// The events of one stream: `retry:` first, then one `poke` per new version, until
/// [`STREAM_SECS`] have passed or the node shuts down.
fn stream_of(subscription: Subscription) -> impl Stream<Item = Result<Event, Infallible>> {
    let end = tokio::time::Instant::now() + Duration::from_secs(STREAM_SECS);
    stream::unfold(
        (subscription, true),
        move |(mut subscription, first)| async move {
            if first {
                let hello = Event::default().retry(RETRY).comment("sinkron pokes");
                return Some((Ok(hello), (subscription, false)));
            }
            let version = tokio::time::timeout_at(end, subscription.next())
                .await
                .ok()??;
            let poke = Event::default().event("poke").data(version.to_string());
            Some((Ok(poke), (subscription, false)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_is_told_the_current_version_then_each_rise_once() {
        let pokes = Arc::new(Pokes::new(10));
        let mut s = pokes.subscribe(7, 3).expect("room");
        assert_eq!(s.next().await, Some(3));
        pokes.poke(7, 5);
        pokes.poke(7, 4);
        pokes.poke(8, 9);
        assert_eq!(s.next().await, Some(5));
        pokes.poke(7, 5);
        pokes.close();
        assert_eq!(s.next().await, None, "no second 5; the shutdown ends it");
    }

    #[tokio::test]
    async fn streams_are_bounded_per_user_and_per_node_and_freed_when_dropped() {
        let pokes = Arc::new(Pokes::new(STREAMS_PER_USER + 1));
        let held: Vec<_> = (0..STREAMS_PER_USER)
            .map(|_| pokes.subscribe(1, 0).expect("room"))
            .collect();
        assert!(pokes.subscribe(1, 0).is_none(), "per user");
        let other = pokes.subscribe(2, 0).expect("room for another user");
        assert!(pokes.subscribe(3, 0).is_none(), "per node");
        assert_eq!(pokes.open(), STREAMS_PER_USER + 1);
        drop(held);
        drop(other);
        assert_eq!(pokes.open(), 0);
        assert!(
            lock(&pokes.users).is_empty(),
            "no user kept without a stream"
        );
        assert!(pokes.subscribe(1, 0).is_some());
    }
}
