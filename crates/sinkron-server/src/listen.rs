//! Serving connections: what a connection may cost, and how serving ends.
//!
//! It owns the accept loop over the listener: at most `max_connections` open at once (past
//! that, new ones wait in the kernel's queue, costing the process no file handle), a
//! connection that sends no complete request head within `idle_timeout` closed (a half-sent
//! header, or a kept-alive connection left idle), and a shutdown that refuses new
//! connections at once, lets open requests finish, and ends within `grace` whatever clients
//! do. It must not know about requests: they are all the router's.

use std::future::Future;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::util::MapRequest;

/// File handles kept for everything but client connections (database, logs, key files).
const RESERVED_FILES: u64 = 64;
/// How long to wait before accepting again after an accept error (out of file handles).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What one server process allows its clients.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub grace: Duration,
}

/// The default connection cap: the process's open-file limit (raised to its hard limit
/// first, as far as the system allows) less what the server needs for itself.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain FFI calls with a valid pointer to a local struct.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let usable = soft.saturating_sub(RESERVED_FILES).max(16);
    usize::try_from(usable).unwrap_or(usize::MAX)
}

/// Serves `app` on `listener` until `shutdown` resolves, then for at most `limits.grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = std::sync::Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only (the protocol's; TLS and HTTP/2 end at a proxy). Telling versions apart
    // (hyper-util's `auto`) reads the first bytes without a timeout: a silent socket would
    // be held forever.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A free slot first: at the cap, connections wait in the kernel's queue.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file handles, or a connection reset while queued: not fatal.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Every request knows the address it came from (`ConnectInfo`, for per-client limits).
        let service = TowerToHyperService::new(MapRequest::new(
            app.clone(),
            move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        // No upgrades: the protocol is plain requests (no WebSockets).
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away mid-request is not the server's error.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.grace) => {
            tracing::warn!(
                grace_secs = limits.grace.as_secs(),
                "connections still open after the grace period; closing them"
            );
        }
    }
}
