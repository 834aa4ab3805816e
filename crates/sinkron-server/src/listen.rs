//! Serving connections: what a connection may cost, and how serving ends.
//!
//! It owns the accept loop over the listener: at most `max_connections` open at once (past
//! that, new ones wait in the kernel's queue, costing the process no file handle), a
//! connection that sends no complete request head within `idle_timeout` closed (a half-sent
//! header, or a kept-alive connection left idle), and a shutdown that refuses new
//! connections at once, lets open requests finish, and ends within `grace` whatever clients
//! do. An answer the client stops taking must be taken within `write_timeout`, or the
//! connection is closed ([`WriteDeadline`]). It must not know about requests: they are all the
//! router's.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
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
    /// How long the client has to take an answer once it stops taking it.
    pub write_timeout: Duration,
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
        let stream = WriteDeadline::new(stream, limits.write_timeout);
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

/// A connection's socket with a deadline on what the server writes. Once the socket takes no
/// more (the client reads nothing, or too little), the client has `limit` to take everything
/// the server is writing, until the server's next flush completes; then the write fails and
/// the connection is closed. Without it a client that asks for its data and never reads the
/// answer holds that answer (a page: up to megabytes) in the node's memory for as long as it
/// keeps the connection open: a hundred such pulls held 400 MB. A client that takes its
/// answers, however slowly each byte comes, meets no deadline while the socket takes them.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Running since the socket first took no more after the last completed flush.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// The socket took nothing: pending until it does, or an error once the deadline passed.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let deadline = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not take the answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.stall(cx),
            written => written,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stall(cx),
            written => written,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            // Everything written so far was taken: the next stall starts a new deadline.
            self.stalled = None;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
